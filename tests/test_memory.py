"""Tests for rtfm_env.memory: storage, retrieval, the pose index, eviction and files."""

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from rtfm_env import memory as memory_module
from rtfm_env.geometry import Intrinsics, camera_pose, make_pose
from rtfm_env.memory import (
    MemoryConfig,
    MemoryFormatError,
    SpatialMemory,
    UnverifiedMemoryWarning,
    payload_sha256,
    pose_keys,
)

INTR = Intrinsics(16, 12)  # 4:3, 60 degrees vertical field of view


def frame(value: int = 0, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.full((*shape, 3), value % 256, dtype=np.uint8)


def random_poses(rng: np.random.Generator, n: int, area: float = 10.0) -> list[np.ndarray]:
    return [camera_pose(*rng.uniform(0.0, area, 2), rng.uniform(-math.pi, math.pi)) for _ in range(n)]


def brute_nearest(mem: SpatialMemory, pose: np.ndarray, m: int) -> list[int]:
    ids = mem.ids
    keys = pose_keys(mem.poses(ids), mem.config.direction_scale)
    d = np.sum((keys - pose_keys(pose, mem.config.direction_scale)) ** 2, axis=1)
    return [int(i) for i in ids[np.lexsort((ids, d))[:m]]]


def filled_memory(n: int = 40, seed: int = 0, **config) -> SpatialMemory:
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(**config)
    for i, pose in enumerate(random_poses(rng, n)):
        intr = Intrinsics(16, 12, 60.0 if i % 3 else 75.0)
        mem.add(frame(i), pose, intr, "generated" if i % 2 else "observed", step=None if i % 5 == 0 else i)
    return mem


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


def test_empty_memory():
    """An empty memory has length 0 and retrieves nothing."""
    mem = SpatialMemory()
    assert len(mem) == 0 and mem.resolution is None and mem.ids.size == 0
    assert mem.retrieve(camera_pose(0, 0, 0), 4) == []
    assert mem.retrieve(camera_pose(0, 0, 0), 4, INTR, fill=True) == []
    assert mem.nearest(camera_pose(0, 0, 0), 5) == []


def test_add_and_accessors_round_trip():
    """Stored frames, poses, intrinsics, sources and steps come back for their ids, batched."""
    mem = SpatialMemory()
    poses = [camera_pose(1, 2, 0.3), camera_pose(-4, 1, 2.0, pitch=0.2), camera_pose(0, 0, -1)]
    ids = [
        mem.add(frame(10), poses[0], INTR, "observed", step=0),
        mem.add(frame(20), poses[1], Intrinsics(16, 12, 90.0), "generated"),
        mem.add(frame(30), poses[2], INTR, "observed", step=7),
    ]
    assert ids == [0, 1, 2] and len(mem) == 3 and 1 in mem and 3 not in mem
    order = [2, 0]
    assert mem.frames(order).shape == (2, 12, 16, 3)
    assert mem.frames(order)[:, 0, 0, 0].tolist() == [30, 10]
    np.testing.assert_array_equal(mem.poses(order), np.stack([poses[2], poses[0]]))
    assert mem.sources([0, 1, 2]) == ["observed", "generated", "observed"]
    assert mem.steps([0, 1, 2]) == [0, None, 7]
    assert mem.intrinsics_of([1, 0]) == [Intrinsics(16, 12, 90.0), INTR]
    entry = mem.get(1)
    assert entry.id == 1 and entry.source == "generated" and entry.step is None
    assert entry.frame[0, 0, 0] == 20 and entry.intrinsics.fov_y == 90.0
    np.testing.assert_array_equal(entry.pose, poses[1])
    assert mem.resolution == (12, 16) and mem.ids.tolist() == [0, 1, 2]


def test_returned_arrays_are_copies():
    """Changing a returned frame does not change the memory."""
    mem = SpatialMemory()
    mem.add(frame(5), camera_pose(0, 0, 0), INTR, "observed")
    out = mem.frames([0])
    out[:] = 99
    assert mem.frames([0])[0, 0, 0, 0] == 5


@pytest.mark.parametrize(
    "bad_frame, message",
    [
        (np.zeros((12, 16, 3), dtype=np.float32), "uint8"),
        (np.zeros((12, 16), dtype=np.uint8), "(H, W, 3)"),
        (np.zeros((12, 16, 4), dtype=np.uint8), "(H, W, 3)"),
        (np.zeros((0, 16, 3), dtype=np.uint8), "(H, W, 3)"),
        ([[[0, 0, 0]]], "numpy array"),
    ],
)
def test_bad_frames_raise(bad_frame, message):
    """Frames of the wrong type, dtype or shape are rejected with a message naming the problem."""
    mem = SpatialMemory()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mem.add(bad_frame, camera_pose(0, 0, 0), INTR, "observed")
    assert len(mem) == 0


def test_resolution_mismatch_names_both_shapes():
    """A frame of another resolution than the first one is rejected, naming both shapes."""
    mem = SpatialMemory()
    mem.add(frame(), camera_pose(0, 0, 0), INTR, "observed")
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(12, 16, 3\)"):
        mem.add(frame(shape=(8, 8)), camera_pose(0, 0, 0), Intrinsics(8, 8), "observed")


@pytest.mark.parametrize(
    "pose, message",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([2.0, 2.0, 2.0, 1.0]), "rotation"),
        (np.eye(3), "4x4"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "rotation"),
    ],
)
def test_bad_poses_raise(pose, message):
    """NaN, scaled, reflected or wrongly shaped poses are rejected by add and retrieve."""
    mem = SpatialMemory()
    with pytest.raises(ValueError, match=message):
        mem.add(frame(), pose, INTR, "observed")
    mem.add(frame(), camera_pose(0, 0, 0), INTR, "observed")
    with pytest.raises(ValueError, match=message):
        mem.retrieve(pose, 2)


def test_bad_metadata_raise():
    """Unknown sources list the valid ones; bad steps, intrinsics and k are rejected."""
    mem = SpatialMemory()
    pose = camera_pose(0, 0, 0)
    with pytest.raises(ValueError, match=r"unknown source 'rendered'.*\['observed', 'generated'\]"):
        mem.add(frame(), pose, INTR, "rendered")
    for step in (-1, 1.5, True):
        with pytest.raises(ValueError, match="step"):
            mem.add(frame(), pose, INTR, "observed", step=step)
    with pytest.raises(ValueError, match="16x12.*8x8"):
        mem.add(frame(shape=(8, 8)), pose, INTR, "observed")
    with pytest.raises(TypeError, match="Intrinsics"):
        mem.add(frame(), pose, (16, 12), "observed")
    assert len(mem) == 0
    mem.add(frame(), pose, INTR, "observed")
    for k in (-1, 2.0, None):
        with pytest.raises(ValueError, match="k must be"):
            mem.retrieve(pose, k)
    assert mem.retrieve(pose, 0) == []


def test_unknown_and_evicted_ids_raise_key_error():
    """Accessors raise KeyError naming an unknown id, and say when an id was evicted."""
    mem = SpatialMemory(capacity=1)
    mem.add(frame(), camera_pose(0, 0, 0), INTR, "observed")
    mem.add(frame(), camera_pose(5, 5, 0), INTR, "observed")
    with pytest.raises(KeyError, match="frame id 0 was evicted"):
        mem.frames([0])
    with pytest.raises(KeyError, match="unknown frame id 7"):
        mem.poses([1, 7])
    with pytest.raises(KeyError, match="unknown frame id -1"):
        mem.get(-1)
    with pytest.raises(TypeError, match="integers"):
        mem.frames(["a"])


def test_config_validation():
    """Bad settings and unknown setting names fail with the valid choices listed."""
    with pytest.raises(ValueError, match="valid settings: .*capacity"):
        SpatialMemory(capacity_frames=3)
    for bad in ({"capacity": 0}, {"candidates": 0}, {"depths": ()}, {"novelty_angle": 0.0}, {"near": -1.0}):
        with pytest.raises(ValueError):
            MemoryConfig(**bad)
    with pytest.raises(ValueError, match="valid keys"):
        MemoryConfig.from_dict({"bogus": 1})
    cfg = MemoryConfig(capacity=5, depths=[1, 2])
    assert cfg.depths == (1.0, 2.0) and MemoryConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------


def test_retrieve_returns_frames_that_see_the_query_view():
    """A query facing +x gets the frames near it facing +x, not those facing away or far off."""
    mem = SpatialMemory()
    good = {
        mem.add(frame(), camera_pose(5.0, 5.0, 0.1), INTR, "observed"),
        mem.add(frame(), camera_pose(4.7, 5.3, -0.2), INTR, "observed"),
        mem.add(frame(), camera_pose(5.4, 4.8, 0.0), INTR, "observed"),
    }
    blind = {  # see none of the query's view
        mem.add(frame(), camera_pose(5.0, 5.0, math.pi), INTR, "observed"),  # same spot, facing away
        mem.add(frame(), camera_pose(4.0, 5.0, math.pi), INTR, "observed"),  # behind, facing away
        mem.add(frame(), camera_pose(5.0, 5.0, math.pi / 2), INTR, "observed"),  # same spot, facing -z
        mem.add(frame(), camera_pose(20.0, 5.0, 0.0), INTR, "observed"),  # far ahead, same heading
        mem.add(frame(), camera_pose(5.0, 20.0, 0.0), INTR, "observed"),  # far to the side
    }
    # 2 m ahead looking back: its frustum holds the query's near points, but it sees their far sides.
    facing_back = mem.add(frame(), camera_pose(7.0, 5.0, math.pi), INTR, "observed")
    query = camera_pose(5.0, 5.0, 0.0)
    assert set(mem.retrieve(query, 3)) == good
    assert set(mem.retrieve(query, 10)) <= good | {facing_back}  # frames that see nothing are never picked
    assert mem.retrieve(query, 1) == [min(good)]  # the frame at the query spot, almost the same heading
    filled = mem.retrieve(query, 9, fill=True)
    assert set(filled[:3]) == good and set(filled) == good | blind | {facing_back}
    # The same memory answers the opposite question the other way round.
    away = mem.retrieve(camera_pose(5.0, 5.0, math.pi), 2)
    assert len(away) == 2 and not set(away) & good


def test_retrieve_deduplicates_near_identical_frames():
    """Many near-copies of one view plus a few distinct relevant views: k picks cover different views."""
    rng = np.random.default_rng(3)
    mem = SpatialMemory()
    copies = {
        mem.add(frame(), camera_pose(*(5.0 + rng.normal(0, 0.002, 2)), rng.normal(0, 0.002)), INTR, "observed")
        for _ in range(25)
    }
    distinct = {
        mem.add(frame(), camera_pose(5.0, 3.8, 0.35), INTR, "observed"),  # 1.2 m to the right, turned in
        mem.add(frame(), camera_pose(5.0, 6.2, -0.35), INTR, "observed"),  # 1.2 m to the left, turned in
        mem.add(frame(), camera_pose(6.5, 5.0, 0.0), INTR, "observed"),  # 1.5 m ahead, same heading
    }
    picks = mem.retrieve(camera_pose(5.0, 5.0, 0.0), 4)
    assert len(picks) == 4 and len(set(picks) & copies) == 1 and set(picks) - copies == distinct
    assert picks[0] in copies  # the best single view is one of the copies at the query pose


def test_retrieve_fewer_stored_than_k():
    """With fewer usable frames than k, retrieve returns all of them (and fill tops up)."""
    mem = SpatialMemory()
    a = mem.add(frame(), camera_pose(0, 0, 0), INTR, "observed")
    b = mem.add(frame(), camera_pose(-1, 0.5, 0), INTR, "observed")
    c = mem.add(frame(), camera_pose(0, 0, math.pi), INTR, "observed")  # facing away
    assert sorted(mem.retrieve(camera_pose(0, 0, 0), 8)) == [a, b]
    assert sorted(mem.retrieve(camera_pose(0, 0, 0), 8, fill=True)) == [a, b, c]


def test_retrieve_is_deterministic_and_independent_of_index_shape():
    """The same contents give the same ids, whatever the buffer size and however often asked."""
    rng = np.random.default_rng(11)
    poses = random_poses(rng, 300, area=6.0)
    poses += [poses[i] for i in range(0, 300, 4)]  # exact duplicates make ties
    mems = []
    for buffer_size in (1, 7, 256):
        mem = SpatialMemory(buffer_size=buffer_size)
        for i, pose in enumerate(poses):
            mem.add(frame(i), pose, INTR, "observed")
        mems.append(mem)
    for query in random_poses(rng, 40, area=6.0):
        results = [mem.retrieve(query, 4) for mem in mems]
        assert results[0] == results[1] == results[2] == mems[0].retrieve(query, 4)
        assert len(results[0]) == len(set(results[0]))


def test_retrieve_uses_query_intrinsics():
    """A wider query camera sees more, so frames off to the side become relevant."""
    mem = SpatialMemory()
    side = mem.add(frame(), camera_pose(0.0, 0.0, 0.9), INTR, "observed")  # turned 52 degrees left
    query = camera_pose(0.0, 0.0, 0.0)
    narrow, wide = Intrinsics(16, 12, 10.0), Intrinsics(16, 12, 120.0)
    assert mem.retrieve(query, 2, narrow) == []
    assert mem.retrieve(query, 2, wide) == [side]


# --------------------------------------------------------------------------------------
# The pose index
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [1, 5, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_index_matches_brute_force_across_incremental_adds(buffer_size, seed):
    """After every stage of incremental adds, nearest() equals a brute-force search, ties included."""
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(buffer_size=buffer_size)
    checkpoints = {1, 2, 9, 70, 400, 1200}
    pool = random_poses(rng, 200, area=8.0)
    for n in range(1, max(checkpoints) + 1):
        # Every third pose repeats an earlier one exactly, so distance ties are common.
        pose = pool[rng.integers(len(pool))] if n % 3 == 0 else random_poses(rng, 1, area=8.0)[0]
        mem.add(frame(n), pose, INTR, "observed")
        if n in checkpoints:
            for query in random_poses(rng, 8, area=8.0) + [pool[0]]:
                for m in (1, 6, 50):
                    assert mem.nearest(query, m) == brute_nearest(mem, query, m)


@given(
    cells=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60),
    query=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
    m=st.integers(1, 12),
    buffer_size=st.integers(1, 8),
)
@settings(max_examples=60, deadline=None)
def test_index_matches_brute_force_on_a_lattice(cells, query, m, buffer_size):
    """On poses from a small lattice (many exact ties), nearest() equals brute force."""

    def pose(c):
        return camera_pose(float(c[0]), float(c[1]), c[2] * math.pi / 2)

    mem = SpatialMemory(buffer_size=buffer_size)
    for c in cells:
        mem.add(frame(), pose(c), INTR, "observed")
    assert mem.nearest(pose(query), m) == brute_nearest(mem, pose(query), m)


# --------------------------------------------------------------------------------------
# Capacity and eviction
# --------------------------------------------------------------------------------------


def test_eviction_keeps_far_away_frames():
    """After many adds in one spot plus a few elsewhere, the far-away frames survive."""
    rng = np.random.default_rng(5)
    mem = SpatialMemory(capacity=20)
    far = []
    for i in range(300):
        pose = camera_pose(*rng.uniform(0.0, 1.0, 2), rng.uniform(-0.3, 0.3))
        mem.add(frame(i), pose, INTR, "observed", step=i)
        if i % 60 == 10:
            far.append(mem.add(frame(), camera_pose(10.0 + 5 * len(far), -8.0, 1.0), INTR, "observed"))
    assert len(mem) == 20
    assert all(i in mem for i in far)
    with pytest.raises(KeyError, match="evicted"):
        mem.frames([0])


@pytest.mark.parametrize("generated_first", [True, False])
def test_eviction_prefers_generated_when_equally_redundant(generated_first):
    """Of an observed and a generated frame at one pose, the generated one is evicted."""
    mem = SpatialMemory(capacity=2)
    spot = camera_pose(1.0, 1.0, 0.5)
    order = ["generated", "observed"] if generated_first else ["observed", "generated"]
    ids = {source: mem.add(frame(), spot, INTR, source) for source in order}
    other = mem.add(frame(), camera_pose(9.0, 9.0, 0.0), INTR, "observed")
    assert sorted(mem.ids.tolist()) == sorted([ids["observed"], other])


def test_eviction_of_same_source_keeps_the_newer_frame():
    """Of two observed frames at one pose, the older is evicted."""
    mem = SpatialMemory(capacity=2)
    spot = camera_pose(1.0, 1.0, 0.5)
    old = mem.add(frame(), spot, INTR, "observed")
    new = mem.add(frame(), spot, INTR, "observed")
    mem.add(frame(), camera_pose(-7.0, 3.0, 0.0), INTR, "observed")
    assert old not in mem and new in mem


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_eviction_removes_a_frame_of_the_closest_pair(seed):
    """Each evicted frame has the smallest nearest-neighbour distance; the index stays exact."""
    rng = np.random.default_rng(seed)
    mem = SpatialMemory(capacity=25, buffer_size=4)  # a small buffer makes compaction frequent
    tol, scale = mem.config.redundancy_tolerance, mem.config.direction_scale
    live: dict[int, np.ndarray] = {}
    for i in range(400):
        pose = random_poses(rng, 1, area=4.0)[0]
        live[mem.add(frame(), pose, INTR, "generated" if rng.random() < 0.3 else "observed")] = pose
        evicted = set(live) - set(mem.ids.tolist())
        if i < 25:
            assert not evicted
            continue
        assert len(evicted) == 1 and len(mem) == 25
        ids = sorted(live)
        keys = pose_keys(np.stack([live[j] for j in ids]), scale)
        dist = np.sqrt(((keys[:, None] - keys[None]) ** 2).sum(-1)) + np.diag(np.full(len(ids), np.inf))
        nn = dist.min(axis=1)
        victim = evicted.pop()
        assert math.floor(nn[ids.index(victim)] / tol) == math.floor(nn.min() / tol)
        del live[victim]
        if i % 50 == 0:
            query = random_poses(rng, 1, area=4.0)[0]
            assert mem.nearest(query, 7) == brute_nearest(mem, query, 7)
    assert mem._n <= 25 + max(25, 4) + 1  # compaction keeps dead slots bounded


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    """Frames, poses, intrinsics, sources, steps, ids, config and retrieval survive a round trip."""
    mem = filled_memory(60, capacity=45, candidates=20)
    path = tmp_path / "mem.safetensors"
    mem.save(path)
    loaded = SpatialMemory.load(path)
    ids = mem.ids
    assert len(ids) == 45 and ids.tolist() != list(range(45))  # evictions left gaps
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_array_equal(loaded.frames(ids), mem.frames(ids))
    np.testing.assert_array_equal(loaded.poses(ids), mem.poses(ids))
    assert loaded.intrinsics_of(ids) == mem.intrinsics_of(ids)
    assert loaded.sources(ids) == mem.sources(ids) and loaded.steps(ids) == mem.steps(ids)
    assert loaded.config == mem.config and loaded.next_id == mem.next_id
    for query in random_poses(np.random.default_rng(9), 30):
        assert loaded.retrieve(query, 4) == mem.retrieve(query, 4)
        assert loaded.nearest(query, 9) == mem.nearest(query, 9)
    # Both go on identically: the next id, and eviction keeps the closest-pair policy.
    pose = camera_pose(3.0, 3.0, 0.0)
    assert loaded.add(frame(), pose, INTR, "observed") == mem.add(frame(), pose, INTR, "observed")
    assert len(loaded) == len(mem) == 45


def test_save_load_empty(tmp_path):
    """An empty memory round-trips and then accepts frames."""
    path = tmp_path / "empty.safetensors"
    SpatialMemory(capacity=3).save(path)
    loaded = SpatialMemory.load(path)
    assert len(loaded) == 0 and loaded.config.capacity == 3 and loaded.resolution is None
    assert loaded.add(frame(), camera_pose(0, 0, 0), INTR, "observed") == 0


def _meta(path):
    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def _rewrite(src, dst, tensors=None, metadata=None, resign=True):
    """Copy a memory file with some tensors or metadata replaced; re-signed (a valid sha256) unless told not to."""
    t = load_file(str(src))
    t.update(tensors or {})
    meta = {**_meta(src), **(metadata or {})}
    if resign and "sha256" in meta:
        meta["sha256"] = payload_sha256(meta, t)
    save_file(t, str(dst), metadata=meta)


@pytest.mark.parametrize(
    "case",
    [
        "random_bytes",
        "empty_file",
        "truncated",
        "foreign_safetensors",
        "no_metadata",
        "future_version",
        "bad_config",
        "wrong_dtype",
        "missing_tensor",
        "non_rigid_pose",
        "ids_not_increasing",
        "over_capacity",
    ],
)
def test_load_rejects_bad_files(tmp_path, case):
    """Corrupt, truncated, foreign, future or inconsistent files raise MemoryFormatError naming the file.

    Edited files are re-signed (their sha256 recomputed), so each case reaches the check made for it.
    """
    good = tmp_path / "good.safetensors"
    filled_memory(12, capacity=12).save(good)
    bad = tmp_path / f"{case}.safetensors"
    raw = good.read_bytes()
    if case == "random_bytes":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "empty_file":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif case == "foreign_safetensors":
        save_file({"weight": np.zeros((3, 3), np.float32)}, str(bad), metadata={"format": "pt"})
    elif case == "no_metadata":
        save_file({"weight": np.zeros((3, 3), np.float32)}, str(bad))
    elif case == "future_version":
        _rewrite(good, bad, metadata={"version": "4"})
    elif case == "bad_config":
        _rewrite(good, bad, metadata={"config": "{not json"})
    elif case == "wrong_dtype":
        _rewrite(good, bad, tensors={"poses": load_file(str(good))["poses"].astype(np.float32)})
    elif case == "missing_tensor":
        t = load_file(str(good))
        del t["step"]
        save_file(t, str(bad), metadata=_meta(good))
    elif case == "non_rigid_pose":
        poses = load_file(str(good))["poses"]
        poses[3, :3, :3] *= 2.0
        _rewrite(good, bad, tensors={"poses": poses})
    elif case == "ids_not_increasing":
        ids = load_file(str(good))["ids"]
        ids[[0, 1]] = ids[[1, 0]]
        _rewrite(good, bad, tensors={"ids": ids})
    elif case == "over_capacity":
        _rewrite(good, bad, metadata={"config": '{"capacity": 5}'})
    with pytest.raises(MemoryFormatError, match=str(bad.name)):
        SpatialMemory.load(bad)


def test_load_missing_file(tmp_path):
    """A path with no file raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        SpatialMemory.load(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("fail_in", ["write", "replace"])
def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch, fail_in):
    """A save that fails midway leaves the previous file intact and no temporary file behind."""
    path = tmp_path / "mem.safetensors"
    old = filled_memory(10)
    old.save(path)
    before = path.read_bytes()

    def broken_write(f, tensors, metadata):
        f.write(b"partial")
        raise OSError("disk full")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    if fail_in == "write":
        monkeypatch.setattr(memory_module, "_write_safetensors", broken_write)
    else:
        monkeypatch.setattr(memory_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        filled_memory(30, seed=4).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mem.safetensors"]
    assert len(SpatialMemory.load(path)) == 10


def test_pose_keys():
    """Index keys are the camera centre and the scaled viewing direction."""
    pose = make_pose(np.eye(3), [1.0, 2.0, 3.0])  # identity rotation looks down -z
    np.testing.assert_allclose(pose_keys(pose, 2.0), [1.0, 2.0, 3.0, 0.0, 0.0, -2.0])
    np.testing.assert_allclose(pose_keys(camera_pose(0, 0, 0), 1.0)[3:], [1.0, 0.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------------------
# Depth (RGB-D frames)
# --------------------------------------------------------------------------------------


def depth_map(value: float, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def test_depth_round_trips_as_float16_metres(tmp_path):
    """Depth comes back as float32 metres within float16 precision, inf kept, NaN for frames without depth."""
    mem = SpatialMemory()
    d = np.linspace(0.1, 30.0, 12 * 16, dtype=np.float32).reshape(12, 16)
    d[0, 0] = np.inf
    d[0, 1] = 1e6  # beyond float16: stored as inf
    a = mem.add(frame(1), camera_pose(0, 0, 0), INTR, "observed", depth=d)
    b = mem.add(frame(2), camera_pose(1, 0, 0), INTR, "observed")
    got = mem.depths([a, b])
    assert got.dtype == np.float32 and got.shape == (2, 12, 16)
    finite = np.isfinite(d) & (d < 1e5)
    assert np.allclose(got[0][finite], d[finite], rtol=2**-10)
    assert np.isinf(got[0, 0, 0]) and np.isinf(got[0, 0, 1])
    assert np.isnan(got[1]).all()
    assert mem.has_depth([a, b]).tolist() == [True, False]
    assert mem.get(b).depth is None and np.allclose(mem.get(a).depth[finite], d[finite], rtol=2**-10)
    path = tmp_path / "rgbd.rtfm"
    mem.save(path)
    back = SpatialMemory.load(path)
    assert np.array_equal(back.depths([a, b]), got, equal_nan=True)
    assert back.has_depth([a, b]).tolist() == [True, False]


def test_version_1_files_load_without_depth(tmp_path):
    """A file in the previous format (no depth tensors, version 1) still loads, every frame without depth."""
    mem = filled_memory(6)
    good, old = tmp_path / "good.rtfm", tmp_path / "old.rtfm"
    mem.save(good)
    t = load_file(str(good))
    del t["depth"], t["has_depth"]
    meta = {**_meta(good), "version": "1"}
    del meta["sha256"]
    save_file(t, str(old), metadata=meta)
    with pytest.warns(UnverifiedMemoryWarning, match=r"old.rtfm is a version 1 .*unverified"):
        back = SpatialMemory.load(old)
    assert len(back) == 6 and not back.has_depth(back.ids).any()
    assert np.isnan(back.depths(back.ids)).all()
    assert np.array_equal(back.frames(back.ids), mem.frames(mem.ids))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((12, 15), np.float32), "shape"),
        (np.full((12, 16), np.nan, np.float32), "NaN"),
        (np.full((12, 16), -1.0, np.float32), "> 0"),
        (np.zeros((12, 16), np.float32), "> 0"),
        (np.ones((12, 16), np.uint16), "floating"),
        ([[1.0] * 16] * 12, "numpy array"),
    ],
)
def test_bad_depth_is_refused_and_changes_nothing(bad, match):
    """Depth of the wrong shape or type, NaN, negative or zero: a ValueError naming it, the memory untouched."""
    mem = SpatialMemory(capacity=3)
    mem.add(frame(0), camera_pose(0, 0, 0), INTR, "observed", depth=depth_map(2.0))
    with pytest.raises(ValueError, match=match):
        mem.add(frame(1), camera_pose(1, 0, 0), INTR, "observed", depth=bad)
    assert len(mem) == 1 and mem.next_id == 1 and mem.ids.tolist() == [0]


def test_corrupt_depth_in_a_file_is_refused(tmp_path):
    """A file whose depth holds NaN, or whose has_depth flags disagree with the depth rows, is refused."""
    mem = SpatialMemory()
    mem.add(frame(0), camera_pose(0, 0, 0), INTR, "observed", depth=depth_map(2.0))
    good, bad = tmp_path / "good.rtfm", tmp_path / "bad.rtfm"
    mem.save(good)
    _rewrite(good, bad, tensors={"depth": np.full((1, 12, 16), np.nan, np.float16)})
    with pytest.raises(MemoryFormatError, match="depth"):
        SpatialMemory.load(bad)
    _rewrite(good, bad, tensors={"has_depth": np.zeros(1, np.uint8)})
    with pytest.raises(MemoryFormatError, match="depth"):
        SpatialMemory.load(bad)


def test_retrieval_skips_a_view_whose_sight_of_the_target_is_blocked():
    """A nearer frame that sees a wall in front of the query's view loses to a farther one with a clear view."""
    query = camera_pose(0.0, 0.0, 0.0)
    mem = SpatialMemory()
    blocked = mem.add(frame(1), camera_pose(-1.0, 0.0, 0.0), INTR, "observed", depth=depth_map(0.5))
    clear = mem.add(frame(2), camera_pose(-1.6, 0.0, 0.0), INTR, "observed", depth=depth_map(np.inf))
    assert mem.retrieve(query, 1) == [clear]
    # Without depth the nearer view wins: the blocking is known only from depth.
    plain = SpatialMemory()
    plain.add(frame(1), camera_pose(-1.0, 0.0, 0.0), INTR, "observed")
    plain.add(frame(2), camera_pose(-1.6, 0.0, 0.0), INTR, "observed")
    assert plain.retrieve(query, 1) == [blocked]


def test_retrieval_ignores_points_behind_the_wall_the_query_faces():
    """Points past the surface that the nearest view sees do not count, so a view of the far side does not win."""
    query = camera_pose(0.0, 0.0, 0.0)  # faces +x; a wall 1.5 m ahead
    mem = SpatialMemory(depths=(1.0, 4.0))
    near = mem.add(frame(1), camera_pose(-0.1, 0.0, 0.0), INTR, "observed", depth=depth_map(1.6))
    # A view from the other side of the wall, looking on: it sees the 4 m points only.
    far = mem.add(frame(2), camera_pose(2.0, 0.0, 0.0), INTR, "observed", depth=depth_map(np.inf))
    assert mem.retrieve(query, 2) == [near]
    assert far not in mem.retrieve(query, 2)


def test_retrieval_prefers_observed_frames_over_generated_ones():
    """A generated frame at the query pose ranks below an observed frame that sees the same view."""
    query = camera_pose(0.0, 0.0, 0.0)
    mem = SpatialMemory()
    observed = mem.add(frame(1), camera_pose(-0.3, 0.0, 0.0), INTR, "observed")
    generated = mem.add(frame(2), query, INTR, "generated")
    assert mem.retrieve(query, 1) == [observed]
    assert mem.retrieve(query, 2)[0] == observed and generated in mem.retrieve(query, 2, fill=True)


def test_depth_costs_nothing_for_frames_without_it(tmp_path):
    """Depth rows exist only for frames with depth, through eviction, compaction and a reload."""
    mem = SpatialMemory(capacity=40, buffer_size=16)
    rng = np.random.default_rng(0)
    poses = random_poses(rng, 300)
    with_depth = {}
    for i, pose in enumerate(poses):
        d = depth_map(1.0 + i) if i % 10 == 0 else None
        fid = mem.add(frame(i), pose, INTR, "observed" if d is not None else "generated", depth=d)
        if d is not None:
            with_depth[fid] = d
    assert mem._depth_rows is not None and len(mem._depth_rows) <= 64  # rows for the few frames with depth
    for fid in mem.ids:
        got = mem.depths([fid])[0]
        if fid in with_depth:
            assert np.allclose(got, with_depth[int(fid)], rtol=2**-10)
        else:
            assert np.isnan(got).all()
    path = tmp_path / "sparse.rtfm"
    mem.save(path)
    back = SpatialMemory.load(path)
    assert np.array_equal(back.depths(back.ids), mem.depths(mem.ids), equal_nan=True)


def test_world_attachments_and_info_round_trip(tmp_path):
    """A world file's arrays and info are saved beside the frames, checksummed, and kept by a re-save."""
    mem = filled_memory(5)
    grid = (np.arange(12).reshape(3, 4) % 2).astype(np.uint8)
    info = {"kind": "recorded", "source": "bag", "bounds": [0.0, 1.5]}
    path = tmp_path / "world.rtfm"
    mem.save(path, attachments={"free_space": grid}, info=info)
    back = SpatialMemory.load(path)
    assert np.array_equal(back.attachments["free_space"], grid) and back.info == info
    again = tmp_path / "again.rtfm"
    back.save(again)  # a loaded world keeps its attachments
    assert np.array_equal(SpatialMemory.load(again).attachments["free_space"], grid)
    assert SpatialMemory.load(again).info == info
    plain = tmp_path / "plain.rtfm"
    mem.save(plain)
    assert SpatialMemory.load(plain).attachments == {} and SpatialMemory.load(plain).info == {}
    for bad in ({"Free": grid}, {"g": grid.astype(np.int8)}, {"g": np.full(3, np.nan, np.float32)}, {"g": [1]}):
        with pytest.raises(ValueError, match="attachment"):
            mem.save(tmp_path / "bad.rtfm", attachments=bad)
    with pytest.raises(ValueError, match="info must be a JSON object"):
        mem.save(tmp_path / "bad.rtfm", info=["x"])
    assert not (tmp_path / "bad.rtfm").exists()
