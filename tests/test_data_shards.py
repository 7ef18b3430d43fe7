"""Tests for rtfm_env.data.shards: atomic shards and manifest, their checks and the manifest hash."""

import hashlib
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


def make_depth(episode: int, n: int, intr: Intrinsics = INTR) -> np.ndarray:
    """Synthetic depth (n, H, W) float32 metres: a ramp over 0.05-40 m with a row of inf (nothing hit)."""
    rng = np.random.default_rng(episode)
    depth = rng.uniform(0.05, 40.0, size=(n, intr.height, intr.width)).astype(np.float32)
    depth[:, 0] = np.inf
    return depth


def make_episode(episode: int, n: int, intr: Intrinsics = INTR, depth: bool = True) -> sh.Episode:
    """A synthetic episode whose frame pixels encode (episode, step), with depth unless ``depth=False``."""
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
        depth=make_depth(episode, n, intr) if depth else None,
    )


def write_v1_shard(path, episodes, env_id="MiniWorld-OneRoom-v0", split="train", shard_index=0, intr=INTR):
    """A format version 1 shard built by hand as the version 1 writer made them (no depth tensor or flag)."""
    tensors = {
        "frames": np.concatenate([e.frames for e in episodes]),
        "poses": np.concatenate([e.poses for e in episodes]).astype(np.float64),
        "episode": np.concatenate([np.full(e.info.n_frames, e.info.episode, np.int32) for e in episodes]),
        "step": np.concatenate([np.arange(e.info.n_frames, dtype=np.int32) for e in episodes]),
        "states": np.concatenate([e.states for e in episodes]).astype(np.float64),
        "actions": np.concatenate([e.actions for e in episodes]).astype(np.int32),
        "collided": np.concatenate([e.collided for e in episodes]).astype(np.uint8),
    }
    meta = {
        "format": "rtfm-posed-frames", "version": 1, "env_id": env_id, "split": split, "shard_index": shard_index,
        "intrinsics": intr.to_dict(), "state_fields": ["x", "z", "yaw", "cam_height", "pitch"],
        "episodes": [
            {"episode": e.info.episode, "seed": e.info.seed, "trajectory_seed": e.info.trajectory_seed,
             "kind": e.info.kind, "n_frames": e.info.n_frames}
            for e in episodes
        ],
    }
    save_file(tensors, str(path), metadata={"rtfm": json.dumps(meta, sort_keys=True)})
    data = path.read_bytes()
    return sh.ShardEntry(path.name, env_id, split, shard_index, len(episodes), len(tensors["step"]), len(data),
                         hashlib.sha256(data).hexdigest())


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


def test_depth_round_trips_at_float16_precision(tmp_path):
    """Depth comes back as float32 metres within float16's 2^-11 relative precision, inf kept as inf."""
    eps = [make_episode(0, 5), make_episode(3, 4)]
    eps[0].depth[1, 2, 3] = 10.0 + 1 / 3  # ~10 m: error below 5 mm
    eps[0].depth[2, 2, 3] = sh.DEPTH_MAX  # the largest finite depth stays finite
    eps[0].depth[3, 2, 3] = 0.0
    path, _ = write(tmp_path, episodes=eps)
    header, t = sh.read_shard(path)
    assert header.version == sh.FORMAT_VERSION == 2 and header.has_depth and header.meta["depth"] is True
    want = np.concatenate([e.depth for e in eps])
    assert t["depth"].dtype == np.float32 and t["depth"].shape == (9, INTR.height, INTR.width)
    np.testing.assert_array_equal(np.isinf(t["depth"]), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(t["depth"][finite], want[finite], rtol=2.0**-11, atol=0)
    assert abs(t["depth"][1, 2, 3] - (10.0 + 1 / 3)) < 5e-3 and t["depth"][2, 2, 3] == sh.DEPTH_MAX
    assert t["depth"][3, 2, 3] == 0.0
    reader = sh.ShardReader(path)
    assert reader.has_depth
    np.testing.assert_array_equal(reader.depth(6), t["depth"][6])
    np.testing.assert_array_equal(reader.depths([8, 0]), t["depth"][[8, 0]])
    assert reader.depth(0).dtype == np.float32
    with pytest.raises(IndexError, match="row 9"):
        reader.depth(9)


def test_depth_costs_two_bytes_per_pixel(tmp_path):
    """Depth adds N x H x W float16 values to a shard and nothing else."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, with_depth = write(tmp_path / "a")
    _, without = write(tmp_path / "b", episodes=[make_episode(0, 5, depth=False), make_episode(1, 3, depth=False)])
    extra = with_depth.bytes - without.bytes
    assert 8 * INTR.height * INTR.width * 2 <= extra < 8 * INTR.height * INTR.width * 2 + 200  # + header growth


def test_shard_without_depth(tmp_path):
    """Episodes without depth give a version 2 shard flagged depth-less; asking its reader for depth says so."""
    path, _ = write(tmp_path, episodes=[make_episode(0, 5, depth=False), make_episode(1, 3, depth=False)])
    header, t = sh.read_shard(path)
    assert header.version == 2 and not header.has_depth and header.meta["depth"] is False and "depth" not in t
    reader = sh.ShardReader(path)
    assert not reader.has_depth
    np.testing.assert_array_equal(reader.frame(6)[0, 0], [1, 1, 0])
    with pytest.raises(sh.NoDepthError, match="--no-depth.*re-record") as err:
        reader.depth(0)
    assert str(path) in str(err.value) and isinstance(err.value, sh.ShardFormatError)


def test_depth_on_some_episodes_only_refused(tmp_path):
    """A shard holds depth for every episode or for none."""
    with pytest.raises(ValueError, match=r"episodes \[1\] have no depth"):
        write(tmp_path, episodes=[make_episode(0, 5), make_episode(1, 3, depth=False)])
    assert list(tmp_path.iterdir()) == []


def test_version_1_shard_still_reads(tmp_path):
    """A hand-built version 1 shard (no depth) reads: same tensors, has_depth False, depth asks to re-record."""
    eps = [make_episode(0, 5, depth=False), make_episode(3, 4, depth=False)]
    path = tmp_path / sh.shard_name("MiniWorld-OneRoom-v0", 0)
    entry = write_v1_shard(path, eps)
    header, t = sh.read_shard(path)
    assert header.version == 1 and not header.has_depth and "depth" not in t
    assert header.n_frames == 9 and header.size == entry.bytes
    np.testing.assert_array_equal(t["frames"], np.concatenate([e.frames for e in eps]))
    np.testing.assert_array_equal(t["poses"], np.concatenate([e.poses for e in eps]))
    reader = sh.ShardReader(path)
    np.testing.assert_array_equal(reader.frames([0, 8])[:, 0, 0], [[0, 0, 0], [3, 3, 0]])
    with pytest.raises(sh.NoDepthError, match="format version 1 has no depth.*re-record") as err:
        reader.depth(0)
    assert str(path) in str(err.value)


def test_version_1_manifest_still_reads(tmp_path):
    """A version 1 manifest reads, keeping its version."""
    entry = write_v1_shard(tmp_path / sh.shard_name("MiniWorld-OneRoom-v0", 0), [make_episode(0, 3, depth=False)])
    sh.write_manifest(tmp_path, sh.Manifest(split="train", config={"format_version": 1}, shards=[entry], version=1))
    m = sh.read_manifest(tmp_path)
    assert m.version == 1 and m.shards == [entry]


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


def _save(path, t, meta):
    """Re-save tensors as read_shard returned them (depth back to its stored float16) with ``meta``."""
    if "depth" in t and t["depth"].dtype == np.float32:
        t = t | {"depth": t["depth"].astype(np.float16)}
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(meta)})


def _rewrite_meta(**changes):
    def corrupt(path):
        _, t = sh.read_shard(path)
        meta = sh.read_shard_header(path).meta | changes
        _save(path, t, meta)

    return corrupt


def _drop_tensor(name):
    def corrupt(path):
        header, t = sh.read_shard(path)
        del t[name]
        _save(path, t, header.meta)

    return corrupt


def _wrong_dtype(path):
    header, t = sh.read_shard(path)
    t["poses"] = t["poses"].astype(np.float32)
    _save(path, t, header.meta)


def _wrong_frame_size(path):
    header, t = sh.read_shard(path)
    t["frames"] = np.zeros((8, 4, 4, 3), np.uint8)
    _save(path, t, header.meta)


def _depth_as_float32(path):
    header, t = sh.read_shard(path)
    save_file(t, str(path), metadata={sh.METADATA_KEY: json.dumps(header.meta)})


def _wrong_depth_size(path):
    header, t = sh.read_shard(path)
    t["depth"] = np.zeros((8, 4, 4), np.float32)
    _save(path, t, header.meta)


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
        (_rewrite_meta(version=99), "unsupported shard format version 99; this code reads versions 1, 2"),
        (_rewrite_meta(version=1), "unexpected tensor 'depth' in a version 1 shard"),
        (_rewrite_meta(depth=False), "unexpected tensor 'depth'"),
        (_rewrite_meta(depth="yes"), "'depth' must be true or false"),
        (_rewrite_meta(split="test"), "unknown split"),
        (_rewrite_meta(episodes=[]), "no episodes"),
        (_rewrite_meta(intrinsics={"width": 8}), "malformed"),
        (_drop_tensor("collided"), "missing tensor 'collided'"),
        (_drop_tensor("depth"), "missing tensor 'depth'"),
        (_wrong_dtype, "tensor 'poses' is F32"),
        (_wrong_frame_size, "tensor 'frames'"),
        (_depth_as_float32, "tensor 'depth' is F32"),
        (_wrong_depth_size, r"tensor 'depth' is F16 \[8, 4, 4\]"),
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
    _save(path, t, header.meta)
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
        ({"depth": np.ones((5, 8, 6), np.float32)}, r"depth has shape \(5, 8, 6\), expected \(5, 6, 8\)"),
        ({"depth": np.ones((5, 6, 8, 1), np.float32)}, "depth has shape"),
        ({"depth": np.ones((5, 6, 8), np.int32)}, "depth must be floating-point metres, got int32"),
        ({"depth": np.full((5, 6, 8), np.nan, np.float32)}, "depth contains NaN"),
        ({"depth": np.full((5, 6, 8), -0.5, np.float32)}, "depth contains negative values"),
        ({"depth": np.full((5, 6, 8), -np.inf, np.float32)}, "depth contains negative values"),
        ({"depth": np.full((5, 6, 8), 1e5, np.float64)}, "beyond the 65504 m"),
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
