"""Tests for rtfm_env.data.shards: atomic shards and manifest, their checks and the manifest hash."""

import json
import os
import struct
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import save_file

from rtfm_env.data import shards as sh
from rtfm_env.geometry import Intrinsics, RobotState

INTR = Intrinsics(8, 6, 60.0)


def make_episode(episode: int, n: int, intr: Intrinsics = INTR) -> sh.Episode:
    """A synthetic episode whose frame pixels encode (episode, step)."""
    states = [RobotState(0.1 * k, -0.2 * k, 0.05 * k) for k in range(n)]
    frames = np.zeros((n, intr.height, intr.width, 3), dtype=np.uint8)
    frames[..., 0] = episode
    frames[..., 1] = np.arange(n)[:, None, None]
    return sh.Episode(
        info=sh.EpisodeInfo(episode, seed=100 + episode, trajectory_seed=200 + episode, kind="loop", n_frames=n),
        frames=frames,
        poses=np.stack([s.pose() for s in states]),
        states=np.stack([s.as_array() for s in states]),
        actions=np.r_[-1, np.ones(n - 1, dtype=int)],
        collided=np.zeros(n, dtype=bool),
    )


def write(tmp_path, index=0, split="train", episodes=None, env_id="MiniWorld-OneRoom-v0"):
    episodes = episodes if episodes is not None else [make_episode(0, 5), make_episode(1, 3)]
    path = tmp_path / sh.shard_name(env_id, index)
    entry = sh.write_shard(path, episodes, env_id=env_id, split=split, shard_index=index, intrinsics=INTR)
    return path, entry


def test_round_trip(tmp_path):
    """A written shard reads back with the same tensors, metadata and a manifest entry matching the file."""
    eps = [make_episode(0, 5), make_episode(3, 4)]
    path, entry = write(tmp_path, index=2, episodes=eps)
    header, t = sh.read_shard(path)
    assert (header.env_id, header.split, header.shard_index, header.n_frames) == ("MiniWorld-OneRoom-v0", "train", 2, 9)
    assert header.intrinsics == INTR
    assert [e.episode for e in header.episodes] == [0, 3] and header.episodes[1].seed == 103
    np.testing.assert_array_equal(t["frames"], np.concatenate([e.frames for e in eps]))
    np.testing.assert_array_equal(t["poses"], np.concatenate([e.poses for e in eps]))
    np.testing.assert_array_equal(t["episode"], [0] * 5 + [3] * 4)
    np.testing.assert_array_equal(t["step"], [0, 1, 2, 3, 4, 0, 1, 2, 3])
    np.testing.assert_array_equal(t["actions"][[0, 5]], [-1, -1])
    assert t["poses"].dtype == np.float64 and t["frames"].dtype == np.uint8
    np.testing.assert_array_equal(header.episode_rows(), [0, 5, 9])
    assert entry.file == path.name and entry.bytes == path.stat().st_size == header.size
    assert entry.sha256 == sh.sha256_file(path) and (entry.frames, entry.episodes) == (9, 2)


def test_identical_input_gives_identical_bytes(tmp_path):
    """Writing the same episodes twice gives byte-identical shards (what resuming relies on)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = write(tmp_path / "a")
    _, b = write(tmp_path / "b")
    assert a.sha256 == b.sha256


def test_reader_reads_single_frames(tmp_path):
    """ShardReader returns single frames and the small tensors; an out-of-range row raises IndexError."""
    path, _ = write(tmp_path)
    reader = sh.ShardReader(path)
    assert len(reader) == 8
    np.testing.assert_array_equal(reader.frame(6)[0, 0], [1, 1, 0])
    np.testing.assert_array_equal(reader.frames([0, 7])[:, 0, 0, 1], [0, 2])
    assert reader.poses.shape == (8, 4, 4) and reader.collided.dtype == bool
    with pytest.raises(IndexError, match="row 8"):
        reader.frame(8)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    """If the final rename fails, the previous shard is intact and no temp file is left behind."""
    path, entry = write(tmp_path)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(sh.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, episodes=[make_episode(7, 2)])
    monkeypatch.undo()
    assert sh.sha256_file(path) == entry.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_remove_stale_temp_files(tmp_path):
    """Temp files of an interrupted write are removed; shards and other files are kept."""
    path, _ = write(tmp_path)
    (tmp_path / ".tmp-x.safetensors.abc").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("keep")
    removed = sh.remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".tmp-x.safetensors.abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "notes.txt"])


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])


def _append(path):
    with open(path, "ab") as f:
        f.write(b"\0" * 4)


def _garbage(path):
    path.write_bytes(os.urandom(200))


def _empty(path):
    path.write_bytes(b"")


def _huge_header_length(path):
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 10**9) + data[8:])


def _not_json(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"\xff" * n + data[8 + n :])


def _foreign(path):
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path))


def _rewrite_meta(**changes):
    def corrupt(path):
        _, t = sh.read_shard(path)
        meta = sh.read_shard_header(path).meta | changes
        save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(meta)})

    return corrupt


def _drop_tensor(path):
    header, t = sh.read_shard(path)
    del t["collided"]
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(header.meta)})


def _wrong_dtype(path):
    header, t = sh.read_shard(path)
    t["poses"] = t["poses"].astype(np.float32)
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(header.meta)})


def _wrong_frame_size(path):
    header, t = sh.read_shard(path)
    t["frames"] = np.zeros((8, 4, 4, 3), np.uint8)
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(header.meta)})


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_truncate, "truncated"),
        (_append, "trailing bytes"),
        (_garbage, "not a safetensors shard"),
        (_empty, "too short"),
        (_huge_header_length, "not a safetensors shard or truncated"),
        (_not_json, "not JSON"),
        (_foreign, "foreign safetensors file"),
        (_rewrite_meta(format="other-format"), "foreign shard"),
        (_rewrite_meta(version=99), "unsupported shard format version 99"),
        (_rewrite_meta(split="test"), "unknown split"),
        (_rewrite_meta(episodes=[]), "no episodes"),
        (_rewrite_meta(intrinsics={"width": 8}), "malformed"),
        (_drop_tensor, "missing tensor 'collided'"),
        (_wrong_dtype, "tensor 'poses' is F32"),
        (_wrong_frame_size, "tensor 'frames'"),
    ],
)
def test_bad_shards_raise_naming_the_file(tmp_path, corrupt, message):
    """Every kind of corrupt, truncated or foreign shard raises ShardFormatError naming the file."""
    path, _ = write(tmp_path)
    corrupt(path)
    with pytest.raises(sh.ShardFormatError, match=message) as err:
        sh.read_shard(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_rows_inconsistent_with_metadata_raise(tmp_path):
    """A shard whose episode/step rows disagree with its metadata is refused on read."""
    path, _ = write(tmp_path)
    header, t = sh.read_shard(path)
    t["step"] = t["step"][::-1].copy()
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(header.meta)})
    sh.read_shard_header(path)  # the header alone is consistent
    for read in (sh.read_shard, sh.ShardReader):
        with pytest.raises(sh.ShardFormatError, match="episode/step rows"):
            read(path)


def test_missing_shard_raises(tmp_path):
    """A missing shard file raises ShardFormatError naming it."""
    with pytest.raises(sh.ShardFormatError, match="missing"):
        sh.read_shard_header(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": np.zeros((5, 6, 8, 3), np.float32)}, "frames must be uint8"),
        ({"frames": np.zeros((5, 8, 6, 3), np.uint8)}, r"frames has shape \(5, 8, 6, 3\)"),
        ({"poses": np.full((5, 4, 4), np.nan)}, "poses contain NaN"),
        ({"states": np.zeros((5, 4))}, "states has shape"),
        ({"actions": np.zeros(4)}, "actions has shape"),
    ],
)
def test_write_rejects_bad_episodes(tmp_path, change, message):
    """write_shard refuses arrays of the wrong shape or dtype and non-finite poses, writing nothing."""
    ep = replace(make_episode(0, 5), **change)
    with pytest.raises(ValueError, match=message):
        write(tmp_path, episodes=[ep])
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_split_and_empty(tmp_path):
    """write_shard refuses an unknown split (listing the valid ones) and an empty episode list."""
    with pytest.raises(ValueError, match=r"valid splits: \['train', 'heldout'\]"):
        write(tmp_path, split="test")
    with pytest.raises(ValueError, match="at least one episode"):
        write(tmp_path, episodes=[])


@pytest.mark.parametrize("bad", ["", "a/b", ".hidden"])
def test_shard_name_rejects_bad_env_ids(bad):
    """Env ids that cannot be a file name in the recording root are refused."""
    with pytest.raises(ValueError):
        sh.shard_name(bad, 0)


def _manifest(tmp_path, n=2):
    entries = [write(tmp_path, index=i)[1] for i in range(n)]
    return sh.Manifest(split="train", config={"seed": 0}, shards=entries, complete=True)


def test_manifest_round_trip_and_hash(tmp_path):
    """The manifest reads back equal; its hash ignores entry order and follows content changes."""
    m = _manifest(tmp_path)
    sh.write_manifest(tmp_path, m)
    back = sh.read_manifest(tmp_path)
    assert back.shards == m.shards and back.config == {"seed": 0} and back.complete and back.split == "train"
    h = sh.manifest_hash(tmp_path)
    assert h == m.shard_hash() and len(h) == 64
    sh.write_manifest(tmp_path, replace(m, shards=m.shards[::-1]))
    assert sh.manifest_hash(tmp_path) == h
    sh.write_manifest(tmp_path, replace(m, shards=[replace(m.shards[0], sha256="0" * 64), m.shards[1]]))
    assert sh.manifest_hash(tmp_path) != h


def test_missing_manifest_raises_file_not_found(tmp_path):
    """Reading a directory without a manifest raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        sh.read_manifest(tmp_path)


def _edit_manifest(fn):
    def corrupt(root):
        path = root / sh.MANIFEST_NAME
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda root: (root / sh.MANIFEST_NAME).write_text("{not json"), "not valid JSON"),
        (lambda root: (root / sh.MANIFEST_NAME).write_text("[1, 2]"), "foreign manifest"),
        (_edit_manifest(lambda d: d.update(format="something-else")), "foreign manifest"),
        (_edit_manifest(lambda d: d.update(version=7)), "unsupported manifest version 7"),
        (_edit_manifest(lambda d: d.pop("shards")), "malformed"),
        (_edit_manifest(lambda d: d["shards"][0].pop("sha256")), "malformed"),
        (_edit_manifest(lambda d: d.update(split="val")), "unknown split 'val'"),
        (_edit_manifest(lambda d: d["shards"][0].update(split="heldout")), "listed as split 'heldout'"),
        (_edit_manifest(lambda d: d["shards"][0].update(file="../x.safetensors")), "not a shard file name"),
        (_edit_manifest(lambda d: d["shards"].append(d["shards"][0])), "twice"),
        (_edit_manifest(lambda d: d.update(config=[])), "config must be a JSON object"),
    ],
)
def test_bad_manifests_raise(tmp_path, corrupt, message):
    """Corrupt, foreign or inconsistent manifests raise ShardFormatError naming manifest.json."""
    sh.write_manifest(tmp_path, _manifest(tmp_path))
    corrupt(tmp_path)
    with pytest.raises(sh.ShardFormatError, match=message) as err:
        sh.read_manifest(tmp_path)
    assert "manifest.json" in str(err.value)
