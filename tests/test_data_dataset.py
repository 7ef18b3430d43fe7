"""Tests for rtfm_env.data.dataset: context selection, determinism, splits and shard checks."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch.utils.data import DataLoader

from rtfm_env.data import shards as sh
from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.geometry import Intrinsics, RobotState

INTR = Intrinsics(8, 6, 60.0)
ENV = "MiniWorld-OneRoom-v0"
OUT_AND_BACK = [0, 1, 2, 3, 4, 3, 2, 1, 0]  # x positions; the last frame revisits the first


def episode(ep: int, xs, yaws=None, depth: bool = True) -> sh.Episode:
    """A synthetic episode along x; frame pixels encode (episode, step), depth is 1 + step + 0.01 * episode m.

    Depth's top row is inf (nothing hit); ``depth=False`` records none.
    """
    yaws = np.zeros(len(xs)) if yaws is None else yaws
    states = [RobotState(float(x), 0.0, float(y)) for x, y in zip(xs, yaws, strict=True)]
    n = len(states)
    frames = np.zeros((n, INTR.height, INTR.width, 3), dtype=np.uint8)
    frames[..., 0] = ep
    frames[..., 1] = np.arange(n)[:, None, None]
    return sh.Episode(
        info=sh.EpisodeInfo(ep, seed=ep, trajectory_seed=ep, kind="out_and_back", n_frames=n),
        frames=frames,
        poses=np.stack([s.pose() for s in states]),
        states=np.stack([s.as_array() for s in states]),
        actions=np.r_[-1, np.ones(n - 1, dtype=int)],
        collided=np.zeros(n, dtype=bool),
        depth=_depth(ep, n) if depth else None,
    )


def _depth(ep: int, n: int) -> np.ndarray:
    depth = np.broadcast_to(1.0 + np.arange(n, dtype=np.float32)[:, None, None] + 0.01 * ep,
                            (n, INTR.height, INTR.width)).copy()
    depth[:, 0] = np.inf
    return depth


def make_recording(root, shards, split="train", env=ENV):
    """Write shards (each a list of episodes) and their manifest under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [
        sh.write_shard(root / sh.shard_name(env, i), eps, env_id=env, split=split, shard_index=i, intrinsics=INTR)
        for i, eps in enumerate(shards)
    ]
    sh.write_manifest(root, sh.Manifest(split=split, config={"note": "synthetic"}, shards=entries, complete=True))
    return root


@pytest.fixture
def recording(tmp_path):
    """Two shards: episodes 0 and 1 (out and back, 9 frames) and episode 2 (a line of 12 frames)."""
    return make_recording(
        tmp_path / "rec", [[episode(0, OUT_AND_BACK), episode(1, OUT_AND_BACK)], [episode(2, np.arange(12) * 0.5)]]
    )


def test_item_shapes_and_dtypes(recording):
    """Items hold K context frames/poses and a target, with the documented shapes and dtypes."""
    ds = PosedFrameDataset(recording, n_context=3)
    assert len(ds) == 9 + 9 + 12
    item = ds[4]
    assert item["context_frames"].shape == (3, 6, 8, 3) and item["context_frames"].dtype == torch.uint8
    assert item["context_poses"].shape == (3, 4, 4) and item["context_poses"].dtype == torch.float64
    assert item["target_frame"].shape == (6, 8, 3) and item["target_frame"].dtype == torch.uint8
    assert item["target_pose"].shape == (4, 4) and item["target_pose"].dtype == torch.float64
    torch.testing.assert_close(item["intrinsics"], torch.tensor([8.0, 6.0, 60.0], dtype=torch.float64))
    assert item["env_id"] == ENV and ds.intrinsics == INTR


def test_depth_matches_frames_and_steps(recording):
    """Target and context depth are float32 metres of the same rows as the frames, inf kept, has_depth set."""
    ds = PosedFrameDataset(recording, n_context=3, seed=1)
    assert ds.has_depth
    for i in range(len(ds)):
        item = ds[i]
        assert item["target_depth"].shape == (6, 8) and item["target_depth"].dtype == torch.float32
        assert item["context_depth"].shape == (3, 6, 8) and item["context_depth"].dtype == torch.float32
        assert item["has_depth"].dtype == torch.bool and bool(item["has_depth"])
        ep, steps = int(item["target_frame"][0, 0, 0]), item["context_steps"].numpy()
        want_target = 1.0 + int(item["target_step"]) + 0.01 * ep
        # float16 storage: within 2^-11 relative
        torch.testing.assert_close(item["target_depth"][1:], torch.full((5, 8), want_target), rtol=2.0**-11, atol=0)
        want_ctx = torch.from_numpy(1.0 + steps + 0.01 * ep).float()[:, None, None].expand(3, 5, 8)
        torch.testing.assert_close(item["context_depth"][:, 1:], want_ctx, rtol=2.0**-11, atol=0)
        assert torch.isinf(item["target_depth"][0]).all() and torch.isinf(item["context_depth"][:, 0]).all()


def _with_old_shard(root):
    """Replace shard 1 of ``root`` by a version 1 shard of the same episodes (no depth) and fix the manifest.

    A version 1 shard is a depth-less version 2 shard with version 1 and no ``depth`` flag in
    its metadata (tests/test_data_shards.py builds one entirely by hand).
    """
    path = root / sh.shard_name(ENV, 1)
    sh.write_shard(path, [episode(2, np.arange(12) * 0.5, depth=False)], env_id=ENV, split="train", shard_index=1,
                   intrinsics=INTR)
    header, tensors = sh.read_shard(path)
    meta = {k: v for k, v in header.meta.items() if k != "depth"} | {"version": 1}
    save_file(tensors, str(path), metadata={sh.METADATA_KEY: json.dumps(meta, sort_keys=True)})
    assert sh.read_shard_header(path).version == 1
    m = sh.read_manifest(root)
    m.shards[1] = sh.ShardEntry(path.name, ENV, "train", 1, 1, 12, path.stat().st_size, sh.sha256_file(path))
    sh.write_manifest(root, m)
    return path


def test_version_1_shards_yield_nan_depth_and_batch_with_new_ones(recording):
    """A version 1 shard in a recording reads with NaN depth and has_depth False; items of both collate."""
    old = _with_old_shard(recording)
    ds = PosedFrameDataset(recording, n_context=2)
    assert not ds.has_depth and len(ds) == 9 + 9 + 12
    old_items = [ds[i] for i in range(len(ds)) if int(ds[i]["target_frame"][0, 0, 0]) == 2]
    assert len(old_items) == 12
    for item in old_items:
        assert not bool(item["has_depth"]) and item["target_depth"].shape == (6, 8)
        assert torch.isnan(item["target_depth"]).all() and torch.isnan(item["context_depth"]).all()
        assert item["context_depth"].shape == (2, 6, 8) and item["context_frames"].shape == (2, 6, 8, 3)
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    assert batch["target_depth"].shape == (30, 6, 8) and batch["context_depth"].shape == (30, 2, 6, 8)
    assert batch["has_depth"].tolist() == [True] * 18 + [False] * 12
    assert torch.isfinite(batch["target_depth"][:18, 1:]).all()
    with pytest.raises(sh.NoDepthError, match="1 of 2 shards hold no depth.*format version 1.*re-record") as err:
        PosedFrameDataset(recording, require_depth=True)
    assert old.name in str(err.value)


def test_recording_without_depth(tmp_path):
    """A recording made without depth (version 2, --no-depth) yields NaN depth; require_depth names --no-depth."""
    root = make_recording(tmp_path / "rgb", [[episode(0, OUT_AND_BACK, depth=False)]])
    ds = PosedFrameDataset(root, n_context=2)
    assert not ds.has_depth and not bool(ds[0]["has_depth"]) and torch.isnan(ds[0]["target_depth"]).all()
    with pytest.raises(sh.NoDepthError, match="--no-depth"):
        PosedFrameDataset(root, require_depth=True)


def test_frames_match_poses_and_steps(recording):
    """Each context frame is the frame of the pose and step returned with it, and never the target."""
    ds = PosedFrameDataset(recording, n_context=2, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        steps = item["context_steps"].numpy()
        assert int(item["target_step"]) not in steps and np.all(np.diff(steps) > 0)
        np.testing.assert_array_equal(item["context_frames"][:, 0, 0, 1].numpy(), steps)
        assert int(item["target_frame"][0, 0, 1]) == int(item["target_step"])
        assert len(set(item["context_frames"][:, 0, 0, 0].tolist()) | {int(item["target_frame"][0, 0, 0])}) == 1
        xs = item["context_poses"][:, 0, 3].numpy()
        ep = int(item["target_frame"][0, 0, 0])
        line = OUT_AND_BACK if ep < 2 else np.arange(12) * 0.5
        np.testing.assert_allclose(xs, np.asarray(line, dtype=float)[steps])


def test_nearest_context_includes_revisits(recording):
    """With the whole episode allowed, the last frame of an out-and-back gets its first frame as context."""
    ds = PosedFrameDataset(recording, n_context=1, n_candidates=1)
    last = next(i for i in range(len(ds)) if int(ds[i]["target_step"]) == 8)
    assert ds[last]["context_steps"].tolist() == [0]
    assert torch.equal(ds[last]["context_poses"][0], ds[last]["target_pose"])


@pytest.mark.parametrize(("min_gap", "max_gap"), [(1, 1), (1, 4), (2, 3), (3, None)])
@pytest.mark.parametrize("past_only", [False, True])
def test_gap_bounds(recording, min_gap, max_gap, past_only):
    """Every context frame lies within [min_gap, max_gap] steps of its target (and before it with past_only)."""
    ds = PosedFrameDataset(recording, n_context=1, min_gap=min_gap, max_gap=max_gap, past_only=past_only)
    for i in range(len(ds)):
        item = ds[i]
        gap = int(item["target_step"]) - item["context_steps"].numpy()
        assert np.all(np.abs(gap) >= min_gap) and (max_gap is None or np.all(np.abs(gap) <= max_gap))
        if past_only:
            assert np.all(gap > 0)
    # Targets without enough frames in range are left out rather than given a wrong context.
    expected = sum(
        sum(1 for s in range(n) if any(min_gap <= abs(s - c) <= (max_gap or n) and (c < s or not past_only)
                                       for c in range(n)))
        for n in (9, 9, 12)
    )
    assert len(ds) == expected


def test_deterministic_per_index_seed_and_epoch(recording):
    """The same index, seed and epoch give the same sample; other seeds or epochs change some samples."""
    a = PosedFrameDataset(recording, n_context=2, n_candidates=6, seed=0)
    b = PosedFrameDataset(recording, n_context=2, n_candidates=6, seed=0)
    c = PosedFrameDataset(recording, n_context=2, n_candidates=6, seed=1)

    def steps(ds):
        return [ds[i]["context_steps"].tolist() for i in range(len(ds))]

    assert steps(a) == steps(b) == steps(a)
    assert steps(a) != steps(c)
    b.set_epoch(1)
    assert steps(b) != steps(a)


def test_env_filter(tmp_path):
    """The envs filter keeps the named env (short names work); an unknown one raises KeyError listing envs."""
    root = tmp_path / "rec"
    make_recording(root, [[episode(0, OUT_AND_BACK)]])
    ds = PosedFrameDataset(root, envs=["OneRoom"])
    assert len(ds) == 9
    with pytest.raises(KeyError, match="MiniWorld-OneRoom-v0"):
        PosedFrameDataset(root, envs=["Maze"])


def test_dataloader_batches(recording):
    """The default collate batches items into (B, K, H, W, 3) frames and (B, K, 4, 4) poses."""
    batch = next(iter(DataLoader(PosedFrameDataset(recording, n_context=2), batch_size=4, shuffle=False)))
    assert batch["context_frames"].shape == (4, 2, 6, 8, 3) and batch["target_pose"].shape == (4, 4, 4)
    assert batch["intrinsics"].shape == (4, 3) and len(batch["env_id"]) == 4


def test_lru_cache_stays_bounded(recording):
    """At most cache_size shards stay open while items from every shard are read."""
    ds = PosedFrameDataset(recording, cache_size=1)
    for i in range(len(ds)):
        ds[i]
        assert len(ds._cache) <= 1
    state = ds.__getstate__()
    assert len(state["_cache"]) == 0 and len(ds._cache) == 1


def test_manifest_hash_exposed(recording):
    """The dataset exposes its recording's manifest hash."""
    assert PosedFrameDataset(recording).manifest_hash == sh.manifest_hash(recording)


def test_index_out_of_range(recording):
    """Indices past either end raise IndexError; negative indices count from the end."""
    ds = PosedFrameDataset(recording)
    assert torch.equal(ds[-1]["target_frame"], ds[len(ds) - 1]["target_frame"])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]


# -- refusals --------------------------------------------------------------------------------


def test_split_mismatch_refused(tmp_path):
    """A train dataset refuses a heldout recording and vice versa."""
    heldout = make_recording(tmp_path / "h", [[episode(0, OUT_AND_BACK)]], split="heldout", env="MiniWorld-YMaze-v0")
    train = make_recording(tmp_path / "t", [[episode(0, OUT_AND_BACK)]])
    with pytest.raises(ValueError, match="'heldout' recording; refusing to open it as split 'train'"):
        PosedFrameDataset(heldout, split="train")
    with pytest.raises(ValueError, match="'train' recording"):
        PosedFrameDataset(train, split="heldout")
    assert len(PosedFrameDataset(heldout, split="heldout")) == 9


def test_heldout_shard_in_train_recording_refused(tmp_path, recording):
    """A heldout shard copied into a train recording (manifest edited to match) is refused."""
    other = make_recording(tmp_path / "h", [[episode(0, OUT_AND_BACK)]], split="heldout")
    src = other / sh.shard_name(ENV, 0)
    dst = recording / sh.shard_name(ENV, 1)
    dst.write_bytes(src.read_bytes())
    m = sh.read_manifest(recording)
    entry = sh.read_manifest(other).shards[0]
    m.shards[1] = sh.ShardEntry(dst.name, ENV, "train", 1, entry.episodes, entry.frames, entry.bytes, entry.sha256)
    sh.write_manifest(recording, m)
    with pytest.raises(sh.ShardFormatError, match="'heldout' shard in a 'train' recording") as err:
        PosedFrameDataset(recording)
    assert dst.name in str(err.value)


def test_corrupt_shard_refused_at_construction(recording):
    """A shard overwritten with garbage raises ShardFormatError naming it when the dataset opens."""
    bad = recording / sh.shard_name(ENV, 1)
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(sh.ShardFormatError, match="not a safetensors shard") as err:
        PosedFrameDataset(recording)
    assert str(bad) in str(err.value)


def test_truncated_shard_refused_at_construction(recording):
    """A truncated shard raises ShardFormatError naming it when the dataset opens."""
    bad = recording / sh.shard_name(ENV, 0)
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(sh.ShardFormatError, match="truncated") as err:
        PosedFrameDataset(recording)
    assert str(bad) in str(err.value)


def test_missing_shard_refused(recording):
    """A shard listed in the manifest but missing raises ShardFormatError naming it."""
    (recording / sh.shard_name(ENV, 1)).unlink()
    with pytest.raises(sh.ShardFormatError, match="missing"):
        PosedFrameDataset(recording)


def _flip_frame_byte(path):
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside a tensor's data: header and size stay valid
    path.write_bytes(bytes(data))


def test_sha256_mismatch_detected(recording):
    """A shard whose bytes changed without changing its size fails its manifest sha256 on first access."""
    bad = recording / sh.shard_name(ENV, 1)
    _flip_frame_byte(bad)
    ds = PosedFrameDataset(recording)  # header and size still check out
    with pytest.raises(sh.ShardFormatError, match="does not match the manifest") as err:
        for i in range(len(ds)):
            ds[i]
    assert str(bad) in str(err.value)
    with pytest.raises(sh.ShardFormatError, match="sha256"):
        PosedFrameDataset(recording).verify_all()
    unchecked = PosedFrameDataset(recording, verify=False)
    assert len([unchecked[i] for i in range(len(unchecked))]) == len(unchecked)


def test_shard_not_matching_manifest_entry_refused(recording):
    """A manifest entry whose frame count disagrees with the shard is refused."""
    m = sh.read_manifest(recording)
    m.shards[0] = sh.ShardEntry(**{**m.shards[0].__dict__, "frames": 99})
    sh.write_manifest(recording, m)
    with pytest.raises(sh.ShardFormatError, match="does not match its manifest entry"):
        PosedFrameDataset(recording)


def test_corrupt_and_missing_manifest(recording, tmp_path):
    """A corrupt manifest raises ShardFormatError; a directory without one raises FileNotFoundError."""
    (recording / sh.MANIFEST_NAME).write_text(json.dumps({"format": "not-ours"}))
    with pytest.raises(sh.ShardFormatError, match="foreign manifest"):
        PosedFrameDataset(recording)
    with pytest.raises(FileNotFoundError):
        PosedFrameDataset(tmp_path / "empty")


def test_mixed_intrinsics_refused(tmp_path, recording):
    """Shards of different image sizes cannot form one dataset."""
    big = Intrinsics(4, 4, 60.0)
    ep = episode(5, [0, 1, 2], depth=False)
    ep.frames = np.zeros((3, 4, 4, 3), np.uint8)
    entry = sh.write_shard(recording / sh.shard_name(ENV, 2), [ep], env_id=ENV, split="train", shard_index=2,
                           intrinsics=big)
    m = sh.read_manifest(recording)
    m.shards.append(entry)
    sh.write_manifest(recording, m)
    with pytest.raises(ValueError, match="different intrinsics"):
        PosedFrameDataset(recording)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, "valid splits"),
        ({"n_context": 0}, "n_context"),
        ({"n_context": 3, "n_candidates": 2}, "n_candidates"),
        ({"min_gap": 0}, "min_gap"),
        ({"min_gap": 3, "max_gap": 2}, "max_gap"),
        ({"direction_scale": float("nan")}, "direction_scale"),
        ({"cache_size": 0}, "cache_size"),
        ({"n_context": 20, "n_candidates": 20}, "no frame has 20 context frames"),
    ],
)
def test_bad_arguments(recording, kwargs, message):
    """Bad arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=message):
        PosedFrameDataset(recording, **kwargs)
