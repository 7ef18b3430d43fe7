"""Hardening of rtfm_env.memory (issue 15): verified and bounded files, atomic adds, safe writes."""

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from rtfm_env import memory as memory_module
from rtfm_env.geometry import Intrinsics, camera_pose, make_pose
from rtfm_env.memory import (
    FORMAT_VERSION,
    MAX_ID,
    MAX_RETRIEVAL_SAMPLES,
    MAX_SIDE,
    MAX_TRANSLATION,
    STALE_TEMP_MAX_SECONDS,
    STALE_TEMP_SECONDS,
    MemoryConfig,
    MemoryFormatError,
    SpatialMemory,
    UnverifiedMemoryWarning,
    payload_sha256,
    remove_stale_temp_files,
)

INTR = Intrinsics(16, 12)
REPO = Path(__file__).resolve().parents[1]


def frame(value: int = 0, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.full((*shape, 3), value % 256, dtype=np.uint8)


def depth_map(value: float, shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def small_memory(n: int = 8, capacity: int | None = 8) -> SpatialMemory:
    rng = np.random.default_rng(0)
    mem = SpatialMemory(capacity=capacity)
    for i in range(n):
        pose = camera_pose(*rng.uniform(0.0, 5.0, 2), rng.uniform(-math.pi, math.pi))
        depth = depth_map(1.0 + i) if i % 3 else None
        mem.add(frame(i), pose, INTR, "observed" if i % 2 else "generated", step=i, depth=depth)
    return mem


def meta_of(path: Path) -> dict:
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


def rewrite(src: Path, dst: Path, tensors=None, metadata=None, resign: bool = True, drop=()) -> Path:
    """A copy of a memory file with tensors/metadata replaced, re-signed unless ``resign`` is False."""
    t = load_file(str(src))
    t.update(tensors or {})
    meta = {**meta_of(src), **(metadata or {})}
    for key in drop:
        meta.pop(key, None)
    if resign and "sha256" in meta:
        meta["sha256"] = payload_sha256(meta, t)
    save_file(t, str(dst), metadata=meta)
    return dst


def split_file(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_file(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes((len(text) if length is None else length).to_bytes(8, "little") + text + data)
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.rtfm"
    small_memory().save(path)
    return path


# --------------------------------------------------------------------------------------
# Item 2: verified files
# --------------------------------------------------------------------------------------


def test_saved_files_are_version_3_with_a_sha256_of_the_payload(good):
    """A save writes version 3 and a sha256 that equals the documented payload hash."""
    meta = meta_of(good)
    assert meta["version"] == FORMAT_VERSION == "3"
    assert meta["sha256"] == payload_sha256(meta, load_file(str(good)))
    # The hash does not depend on the order safetensors lays tensors out in, only on content.
    t = load_file(str(good))
    assert payload_sha256(meta, dict(reversed(list(t.items())))) == meta["sha256"]
    t["frames"][0, 0, 0, 0] ^= 1
    assert payload_sha256(meta, t) != meta["sha256"]
    assert payload_sha256({**meta, "next_id": "999"}, load_file(str(good))) != meta["sha256"]


@pytest.mark.parametrize("where", ["frames", "poses", "depth", "step", "every_byte_of_data"])
def test_flipped_bits_in_the_data_are_caught(good, tmp_path, where):
    """Any changed byte of tensor data (a pixel flip, a pose, depth, a step) fails the checksum."""
    header, data = split_file(good)
    bad = tmp_path / "flipped.rtfm"
    if where == "every_byte_of_data":
        rng = np.random.default_rng(1)
        positions = rng.choice(len(data), size=min(40, len(data)), replace=False)
    else:
        begin, end = header[where]["data_offsets"]
        positions = [begin + (end - begin) // 3]
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x10
        join_file(bad, header, bytes(corrupt))
        with pytest.raises(MemoryFormatError, match=r"flipped.rtfm.*checksum mismatch"):
            SpatialMemory.load(bad)


@pytest.mark.parametrize(
    "metadata",
    [{"next_id": "1000"}, {"config": json.dumps({**MemoryConfig(capacity=8).to_dict(), "candidates": 31})}],
)
def test_edited_metadata_is_caught(good, tmp_path, metadata):
    """Metadata edited without re-signing fails the checksum."""
    bad = rewrite(good, tmp_path / "edited.rtfm", metadata=metadata, resign=False)
    with pytest.raises(MemoryFormatError, match=r"edited.rtfm.*checksum mismatch"):
        SpatialMemory.load(bad)


@pytest.mark.parametrize("sha", [None, "", "abc", "G" * 64, "A" * 64])
def test_version_3_needs_a_well_formed_sha256(good, tmp_path, sha):
    """A version 3 file with no sha256, or a malformed one, is refused."""
    bad = tmp_path / "nosha.rtfm"
    if sha is None:
        rewrite(good, bad, drop=("sha256",))
    else:
        rewrite(good, bad, metadata={"sha256": sha}, resign=False)
    with pytest.raises(MemoryFormatError, match=r"nosha.rtfm.*sha256"):
        SpatialMemory.load(bad)


@pytest.mark.parametrize("version", ["1", "2"])
def test_older_versions_load_with_an_unverified_warning(good, tmp_path, version):
    """Version 1 and 2 files (no checksum) load, with an UnverifiedMemoryWarning naming the file."""
    t = load_file(str(good))
    if version == "1":
        del t["depth"], t["has_depth"]
    meta = {**meta_of(good), "version": version}
    del meta["sha256"]
    old = tmp_path / f"v{version}.rtfm"
    save_file(t, str(old), metadata=meta)
    with pytest.warns(UnverifiedMemoryWarning, match=rf"v{version}.rtfm is a version {version} .*without a checksum"):
        mem = SpatialMemory.load(old)
    ref = SpatialMemory.load(good)
    assert mem.ids.tolist() == ref.ids.tolist() and np.array_equal(mem.frames(mem.ids), ref.frames(ref.ids))
    if version == "2":
        assert np.array_equal(mem.depths(mem.ids), ref.depths(ref.ids), equal_nan=True)
    # Saving it again writes a verified version 3 file that loads without a warning.
    again = tmp_path / "again.rtfm"
    mem.save(again)
    assert meta_of(again)["version"] == "3"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpatialMemory.load(again)
    # An old file's values are bounded all the same.
    t = load_file(str(old))
    poses = t["poses"]
    poses[0, :3, 3] = [1e150, 0.0, 0.0]
    save_file({**t, "poses": poses}, str(old), metadata=meta)
    with pytest.raises(MemoryFormatError, match="farther than"):
        SpatialMemory.load(old)


# --------------------------------------------------------------------------------------
# Item 2: bounded values (files re-signed, so only the bounds can catch them)
# --------------------------------------------------------------------------------------


def _config(**changes) -> str:
    return json.dumps({**MemoryConfig(capacity=8).to_dict(), **changes})


@pytest.mark.parametrize(
    "case, match",
    [
        ("pose_1e150", "farther than"),
        ("pose_2e6", "farther than"),
        ("fov_3e-307", "fov_y"),
        ("fov_180", "fov_y"),
        ("next_id_1e30", "next_id"),
        ("next_id_2**62", "next_id"),
        ("next_id_below_max_id", "next_id"),
        ("next_id_not_decimal", "next_id"),
        ("grid_100000", "grid"),
        ("candidates_huge", "candidates"),
        ("buffer_size_huge", "buffer_size"),
        ("capacity_huge", "capacity"),
        ("capacity_below_frames", "capacity"),
        ("depths_many", "depths"),
        ("depths_strings", "depths"),
        ("depths_bool", "depths"),
        ("near_nan", "near"),
        ("bool_setting", "grid"),
        ("budget", "exceeds the bound"),
        ("novelty_tiny", "novelty_angle"),
        ("config_not_object", "config"),
        ("resolution_huge", "resolution"),
        ("resolution_mismatch", "expected"),
        ("query_mismatch", "query intrinsics"),
        ("query_huge", "query_intrinsics"),
        ("query_missing", "query intrinsics"),
        ("step_huge", "steps"),
        ("step_below_-1", "steps"),
        ("source_code", "source"),
        ("has_depth_flag_2", "has_depth"),
        ("has_depth_more_than_rows", "depth"),
        ("depth_zero", "depth"),
        ("negative_id", "ids"),
        ("extra_tensor", "unexpected tensors"),
    ],
)
def test_out_of_bounds_values_are_refused(good, tmp_path, case, match):
    """Every value of a file is bounded: known corruptions that loaded silently before are refused."""
    t = load_file(str(good))
    n = len(t["ids"])
    bad = tmp_path / f"{case}.rtfm"
    tensors, metadata = {}, {}
    if case == "pose_1e150":
        poses = t["poses"]
        poses[2, 0, 3] = 1e150
        tensors["poses"] = poses
    elif case == "pose_2e6":
        poses = t["poses"]
        poses[2, :3, 3] = [1.2e6, 1.2e6, 0.0]  # each coordinate under 1e6, the distance above
        tensors["poses"] = poses
    elif case == "fov_3e-307":
        tensors["fov_y"] = np.full(n, 3e-307)
    elif case == "fov_180":
        tensors["fov_y"] = np.full(n, 180.0)
    elif case == "next_id_1e30":
        metadata["next_id"] = str(10**30)
    elif case == "next_id_2**62":
        metadata["next_id"] = str(MAX_ID)
    elif case == "next_id_below_max_id":
        metadata["next_id"] = str(int(t["ids"][-1]))
    elif case == "next_id_not_decimal":
        metadata["next_id"] = " 1_000"
    elif case == "grid_100000":
        metadata["config"] = _config(grid=100000)
    elif case == "candidates_huge":
        metadata["config"] = _config(candidates=10**7)
    elif case == "buffer_size_huge":
        metadata["config"] = _config(buffer_size=10**9)
    elif case == "capacity_huge":
        metadata["config"] = _config(capacity=10**12)
    elif case == "capacity_below_frames":
        metadata["config"] = _config(capacity=n - 1)
    elif case == "depths_many":
        metadata["config"] = _config(depths=[1.0] * 1000)
    elif case == "depths_strings":
        metadata["config"] = _config(depths=["1.0", "2.0"])
    elif case == "depths_bool":
        metadata["config"] = _config(depths=[True])
    elif case == "near_nan":
        metadata["config"] = _config(near=float("nan"))
    elif case == "bool_setting":
        metadata["config"] = _config(grid=True)
    elif case == "budget":
        metadata["config"] = _config(candidates=4096, grid=64)
    elif case == "novelty_tiny":
        metadata["config"] = _config(novelty_angle=1e-300)
    elif case == "config_not_object":
        metadata["config"] = "[1, 2]"
    elif case == "resolution_huge":
        metadata["resolution"] = json.dumps([10**9, 16])
    elif case == "resolution_mismatch":
        metadata["resolution"] = json.dumps([12, 15])
    elif case == "query_mismatch":
        metadata["query_intrinsics"] = json.dumps({"width": 15, "height": 12, "fov_y": 60.0})
    elif case == "query_huge":
        metadata["query_intrinsics"] = json.dumps({"width": 10**9, "height": 12, "fov_y": 60.0})
    elif case == "query_missing":
        metadata["query_intrinsics"] = "null"
    elif case == "step_huge":
        tensors["step"] = np.full(n, 2**63 - 1, dtype=np.int64)
    elif case == "step_below_-1":
        tensors["step"] = np.full(n, -2, dtype=np.int64)
    elif case == "source_code":
        tensors["source"] = np.full(n, 7, dtype=np.uint8)
    elif case == "has_depth_flag_2":
        flags = t["has_depth"]
        flags[flags == 1] = 2
        tensors["has_depth"] = flags
    elif case == "has_depth_more_than_rows":
        tensors["has_depth"] = np.ones(n, dtype=np.uint8)
    elif case == "depth_zero":
        tensors["depth"] = np.zeros_like(t["depth"])
    elif case == "negative_id":
        ids = t["ids"]
        ids[0] = -5
        tensors["ids"] = ids
    elif case == "extra_tensor":
        tensors["payload"] = np.zeros(10, np.uint8)
    rewrite(good, bad, tensors=tensors, metadata=metadata)
    with pytest.raises(MemoryFormatError, match=rf"{re.escape(case)}.rtfm.*{match}"):
        SpatialMemory.load(bad)


@pytest.mark.parametrize(
    "case",
    [
        "header_length_huge",
        "header_length_past_eof",
        "header_not_object",
        "header_deeply_nested",
        "shape_beyond_file",
        "offsets_beyond_file",
        "offsets_overlap",
        "trailing_bytes",
        "unknown_dtype",
        "shape_not_ints",
        "metadata_not_strings",
    ],
)
def test_headers_are_checked_against_the_file_size_before_reading(good, tmp_path, case):
    """A header that declares more than the file holds is refused without allocating it."""
    header, data = split_file(good)
    bad = tmp_path / f"{case}.rtfm"
    length = None
    if case == "header_length_huge":
        length = 2**62
    elif case == "header_length_past_eof":
        length = len(json.dumps(header, separators=(",", ":"))) + len(data) + 100
    elif case == "header_not_object":
        header = [header]
    elif case == "header_deeply_nested":
        bad.write_bytes((200_001).to_bytes(8, "little") + b"[" * 100_000 + b"]" * 100_000 + b" ")
    elif case == "shape_beyond_file":
        header["frames"]["shape"] = [10**6, 4096, 4096, 3]
    elif case == "offsets_beyond_file":
        begin, _ = header["frames"]["data_offsets"]
        header["frames"]["shape"] = [10**6, 4096, 4096, 3]
        header["frames"]["data_offsets"] = [begin, begin + 10**6 * 4096 * 4096 * 3]
    elif case == "offsets_overlap":
        header["poses"]["data_offsets"] = header["frames"]["data_offsets"][:1] * 2
        header["poses"]["shape"] = [0, 4, 4]
    elif case == "trailing_bytes":
        data = data + b"\0" * 64
    elif case == "unknown_dtype":
        header["ids"]["dtype"] = "C128"
    elif case == "shape_not_ints":
        header["ids"]["shape"] = [8.0]
    elif case == "metadata_not_strings":
        header["__metadata__"]["next_id"] = 8
    if case != "header_deeply_nested":
        join_file(bad, header, data, length)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryFormatError, match=f"{case}.rtfm"):
            SpatialMemory.load(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * bad.stat().st_size + (2 << 20), f"loading a {bad.stat().st_size}-byte file allocated {peak}"


def test_loading_allocates_about_the_file_size(tmp_path):
    """A good file loads with allocations of the order of its own size."""
    mem = SpatialMemory()
    for i in range(40):
        pose, depth = camera_pose(i * 0.1, 0.0, 0.0), depth_map(2.0, (64, 64))
        mem.add(frame(i, (64, 64)), pose, Intrinsics(64, 64), "observed", depth=depth)
    path = tmp_path / "m.rtfm"
    mem.save(path)
    tracemalloc.start()
    try:
        SpatialMemory.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * path.stat().st_size + (1 << 20)


# --------------------------------------------------------------------------------------
# Item 2: bounded settings and adds
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"grid": 100000}, r"grid must be an integer in \[1, 256\]"),
        ({"candidates": 10**6}, "candidates"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"buffer_size": 10**8}, "buffer_size"),
        ({"capacity": 10**10}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"grid": True}, "grid"),
        ({"grid": 6.0}, "grid"),
        ({"near": True}, "near"),
        ({"near": float("nan")}, "near"),
        ({"near": 1e-300}, "near"),
        ({"direction_scale": float("inf")}, "direction_scale"),
        ({"distance_scale": 1e300}, "distance_scale"),
        ({"redundancy_tolerance": 5e-324}, "redundancy_tolerance"),
        ({"novelty_angle": 1e-300}, "novelty_angle"),
        ({"novelty_angle": 181.0}, "novelty_angle"),
        ({"generated_weight": 0.0}, "generated_weight"),
        ({"min_gain": 1.0}, "min_gain"),
        ({"occlusion_tolerance": float("inf")}, "occlusion_tolerance"),
        ({"depths": (1.0,) * 65}, "depths"),
        ({"depths": ("1", "2")}, "depths"),
        ({"depths": "12"}, "depths"),
        ({"depths": (1e7,)}, "depths"),
        ({"depths": 3.0}, "depths"),
        ({"candidates": 4096, "grid": 64}, f"exceeds the bound {MAX_RETRIEVAL_SAMPLES}"),
    ],
)
def test_config_values_are_bounded(changes, match):
    """Every setting has bounds; bools are not numbers; the retrieval work has a budget."""
    with pytest.raises(ValueError, match=match):
        MemoryConfig(**changes)


def test_config_accepts_numpy_numbers_and_stores_plain_ones():
    """Numpy ints and floats are accepted and stored as Python numbers, so configs stay JSON-ready."""
    cfg = MemoryConfig(capacity=np.int64(5), near=np.float32(0.25), depths=np.array([1.0, 2.0]))
    assert type(cfg.capacity) is int and type(cfg.near) is float and cfg.depths == (1.0, 2.0)
    assert MemoryConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_tall_query_images_keep_retrieval_bounded():
    """A very tall query camera does not blow up the sampled points (rows are capped)."""
    mem = SpatialMemory()
    mem.add(frame(), camera_pose(0.0, 0.0, 0.0), INTR, "observed")
    t0 = time.perf_counter()
    assert mem.retrieve(camera_pose(0.1, 0.0, 0.0), 2, Intrinsics(1, MAX_SIDE * 1000)) in ([], [0])
    assert time.perf_counter() - t0 < 5.0
    pts = mem._sample_points(Intrinsics(1, MAX_SIDE * 1000))
    assert pts.shape[1] <= 4 * mem.config.grid**2 * len(mem.config.depths)


# --------------------------------------------------------------------------------------
# Item 3: atomic adds
# --------------------------------------------------------------------------------------


def far_pose(distance: float) -> np.ndarray:
    return make_pose(np.eye(3), [distance, 0.0, 0.0])


def test_a_huge_translation_is_refused_before_anything_is_stored(tmp_path):
    """The issue's case: a rigid pose 1e200 m away is refused; the full memory stays saveable and loadable."""
    mem = small_memory(8, capacity=8)
    before = (len(mem), mem.ids.tolist(), mem.next_id)
    for distance in (1e200, 1e154, 2e6, MAX_TRANSLATION * (1 + 1e-9)):
        with pytest.raises(ValueError, match=r"pose puts the camera .* m from the origin"):
            mem.add(frame(), far_pose(distance), INTR, "observed")
        assert (len(mem), mem.ids.tolist(), mem.next_id) == before
    path = tmp_path / "m.rtfm"
    mem.save(path)
    assert len(SpatialMemory.load(path)) == 8
    assert mem.add(frame(), far_pose(MAX_TRANSLATION), INTR, "observed") == 8  # the bound itself is allowed
    with pytest.raises(ValueError, match="query pose puts the camera"):
        mem.retrieve(far_pose(1e200), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"intrinsics": Intrinsics(16, 12, 1e-5)}, "fov_y"),
        ({"intrinsics": Intrinsics(16, 12, 179.99999)}, "fov_y"),
        ({"step": 2**63}, "step"),
        ({"step": np.int64(-1)}, "step"),
        ({"step": np.bool_(True)}, "step"),
        ({"source": np.array(["observed"])}, "source"),
        ({"source": b"observed"}, "source"),
        ({"frame": np.zeros((1, MAX_SIDE + 1, 3), np.uint8), "intrinsics": Intrinsics(MAX_SIDE + 1, 1)}, "side"),
    ],
)
def test_adds_out_of_bounds_are_refused(kwargs, match):
    """Field of view, step, source and frame size are bounded at add, as load bounds them."""
    mem = SpatialMemory(capacity=3)
    args = {"frame": frame(), "pose": camera_pose(0, 0, 0), "intrinsics": INTR, "source": "observed", "step": 1}
    with pytest.raises(ValueError, match=match):
        mem.add(**{**args, **kwargs})
    assert len(mem) == 0 and mem.next_id == 0 and mem.resolution is None


def test_ids_are_bounded(tmp_path):
    """A memory whose ids reach MAX_ID refuses further adds with a clear error, and still saves."""
    mem = small_memory(2, capacity=None)
    mem._next_id = MAX_ID - 2
    assert mem.add(frame(), camera_pose(1, 1, 0), INTR, "observed") == MAX_ID - 2
    with pytest.raises(ValueError, match="every frame id"):
        mem.add(frame(), camera_pose(1, 1, 0), INTR, "observed")
    assert len(mem) == 3 and mem.next_id == MAX_ID - 1
    mem.save(tmp_path / "m.rtfm")
    assert SpatialMemory.load(tmp_path / "m.rtfm").next_id == MAX_ID - 1


def test_a_failure_while_storing_is_undone(monkeypatch, tmp_path):
    """Even an unexpected error in the middle of storing (here a MemoryError in the index) leaves no trace."""
    mem = small_memory(6, capacity=6)
    snap = observable(mem, tmp_path)

    def broken_append(key):
        raise MemoryError("simulated")

    monkeypatch.setattr(mem._index, "append", broken_append)
    with pytest.raises(MemoryError):
        mem.add(frame(), camera_pose(2, 2, 0), INTR, "observed", depth=depth_map(3.0))
    monkeypatch.undo()
    assert observable(mem, tmp_path) == snap
    empty = SpatialMemory()
    monkeypatch.setattr(empty._index, "append", broken_append)
    with pytest.raises(MemoryError):
        empty.add(frame(), camera_pose(2, 2, 0), INTR, "observed")
    monkeypatch.undo()
    assert empty.resolution is None and len(empty) == 0 and empty.next_id == 0
    assert empty.add(frame(shape=(8, 8)), camera_pose(0, 0, 0), Intrinsics(8, 8), "observed") == 0


QUERIES = [camera_pose(1.0, 1.0, 0.0), camera_pose(3.0, 2.0, 2.0), camera_pose(0.5, 3.5, -1.5)]


def observable(mem: SpatialMemory, tmp: Path) -> dict:
    """Everything one can see of a memory, plus its eviction state and its saved file's bytes."""
    ids = mem.ids
    path = Path(tmp) / "snapshot.rtfm"
    mem.save(path)
    data = path.read_bytes()
    back = SpatialMemory.load(path)
    assert back.ids.tolist() == ids.tolist() and back.next_id == mem.next_id
    index = mem._index
    return {
        "len": len(mem),
        "ids": ids.tolist(),
        "next_id": mem.next_id,
        "resolution": mem.resolution,
        "frames": mem.frames(ids).tobytes(),
        "poses": mem.poses(ids).tobytes(),
        "depths": mem.depths(ids).tobytes(),
        "has_depth": mem.has_depth(ids).tolist(),
        "sources": mem.sources(ids),
        "steps": mem.steps(ids),
        "intrinsics": mem.intrinsics_of(ids),
        "query_intrinsics": mem._query_intrinsics,
        "retrieve": [mem.retrieve(q, 3) for q in QUERIES],
        "nearest": [mem.nearest(q, 4) for q in QUERIES],
        "loaded_retrieve": [back.retrieve(q, 3) for q in QUERIES],
        "file": data,
        "heap": list(mem._heap),
        "link": dict(mem._link),
        "linked_by": {k: set(v) for k, v in mem._linked_by.items() if v},
        "index": (index.n, index.n_live, index.buffer_start, [(t.n, s) for t, s in index.trees]),
        "slots": (mem._n, mem._n_depth_rows, dict(mem._slot_of)),
    }


INVALID_KINDS = [
    "frame_dtype",
    "frame_shape",
    "frame_resolution",
    "nan_pose",
    "huge_translation",
    "far_translation",
    "scaled_pose",
    "depth_nan",
    "depth_shape",
    "depth_zero",
    "source",
    "step_negative",
    "step_huge",
    "step_bool",
    "fov_tiny",
    "intrinsics_size",
    "intrinsics_type",
]


def invalid_args(kind: str, mem: SpatialMemory) -> dict:
    if kind == "frame_resolution" and mem.resolution is None:
        kind = "frame_shape"  # any resolution is fine for the first frame
    args = {"frame": frame(7), "pose": camera_pose(1.0, 1.0, 0.3), "intrinsics": INTR, "source": "observed"}
    if kind == "frame_dtype":
        args["frame"] = np.zeros((12, 16, 3), np.float32)
    elif kind == "frame_shape":
        args["frame"] = np.zeros((12, 16, 4), np.uint8)
    elif kind == "frame_resolution":
        args["frame"], args["intrinsics"] = frame(shape=(8, 8)), Intrinsics(8, 8)
    elif kind == "nan_pose":
        args["pose"] = np.full((4, 4), np.nan)
    elif kind == "huge_translation":
        args["pose"] = far_pose(1e200)
    elif kind == "far_translation":
        args["pose"] = make_pose(np.eye(3), [8e5, 8e5, 0.0])
    elif kind == "scaled_pose":
        args["pose"] = np.diag([2.0, 2.0, 2.0, 1.0])
    elif kind == "depth_nan":
        args["depth"] = depth_map(np.nan)
    elif kind == "depth_shape":
        args["depth"] = np.ones((12, 15), np.float32)
    elif kind == "depth_zero":
        args["depth"] = depth_map(0.0)
    elif kind == "source":
        args["source"] = "rendered"
    elif kind == "step_negative":
        args["step"] = -3
    elif kind == "step_huge":
        args["step"] = 2**70
    elif kind == "step_bool":
        args["step"] = True
    elif kind == "fov_tiny":
        args["intrinsics"] = Intrinsics(16, 12, 3e-307)
    elif kind == "intrinsics_size":
        args["intrinsics"] = Intrinsics(15, 12)
    elif kind == "intrinsics_type":
        args["intrinsics"] = (16, 12)
    return args


valid_op = st.tuples(
    st.just("valid"),
    st.integers(0, 4),  # x cell
    st.integers(0, 4),  # y cell
    st.integers(0, 3),  # heading quarter
    st.sampled_from(["observed", "generated"]),
    st.one_of(st.none(), st.integers(0, 50)),
    st.booleans(),  # with depth
)
invalid_op = st.tuples(st.just("invalid"), st.sampled_from(INVALID_KINDS))


@given(
    ops=st.lists(st.one_of(valid_op, invalid_op), min_size=1, max_size=24),
    capacity=st.one_of(st.none(), st.integers(1, 6)),
    buffer_size=st.integers(1, 4),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_failed_adds_change_nothing(ops, capacity, buffer_size):
    """Random valid and invalid adds against a capacity: a failed add changes nothing.

    After each failed add, every observable state, the eviction state and the saved file are exactly
    as before, and the memory then goes on exactly like a twin that never saw the failed adds.
    """
    mem = SpatialMemory(capacity=capacity, buffer_size=buffer_size)
    twin = SpatialMemory(capacity=capacity, buffer_size=buffer_size)
    with tempfile.TemporaryDirectory() as tmp:
        for op in ops:
            if op[0] == "valid":
                _, x, y, quarter, source, step, with_depth = op
                args = {
                    "frame": frame(x * 5 + y),
                    "pose": camera_pose(0.7 * x, 0.7 * y, quarter * math.pi / 2),
                    "intrinsics": INTR,
                    "source": source,
                    "step": step,
                    "depth": depth_map(0.5 + x + y) if with_depth else None,
                }
                assert mem.add(**args) == twin.add(**args)
                continue
            before = observable(mem, tmp)
            with pytest.raises((ValueError, TypeError)):
                mem.add(**invalid_args(op[1], mem))
            assert observable(mem, tmp) == before, f"add with {op[1]} changed the memory"
            if capacity is not None:
                assert len(mem) <= capacity
        a, b = observable(mem, tmp), observable(twin, tmp)
        assert a == b


# --------------------------------------------------------------------------------------
# Item 4: safe writes
# --------------------------------------------------------------------------------------


def test_save_refuses_a_device_and_leaves_it_alone():
    """/dev/null is refused with a clear error, and stays the character device it was."""
    before = os.lstat("/dev/null")
    with pytest.raises(ValueError, match=r"/dev/null.*a device"):
        small_memory(2).save("/dev/null")
    with pytest.raises(ValueError, match=r"/dev/null.*a device"):
        memory_module.check_save_path("/dev/null")  # the same check, for callers that validate paths early
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_save_refuses_a_directory_and_leaves_it_alone(tmp_path):
    """An existing directory is refused and keeps its contents; no temp file is left next to it."""
    target = tmp_path / "world.rtfm"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    for given_path in (target, str(target) + "/"):
        with pytest.raises(ValueError, match=r"world.rtfm.*a directory"):
            small_memory(2).save(given_path)
    assert target.is_dir() and os.listdir(target) == ["keep.txt"] and (target / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["world.rtfm"]


@pytest.mark.parametrize("to", ["directory", "regular_file", "device", "nothing"])
def test_save_refuses_symbolic_links(tmp_path, to):
    """Symbolic links are refused whatever they point to (documented: links are never followed)."""
    target = {"directory": tmp_path / "d", "regular_file": tmp_path / "f.rtfm", "device": Path("/dev/null")}
    link = tmp_path / "link.rtfm"
    if to == "directory":
        target[to].mkdir()
    elif to == "regular_file":
        small_memory(3).save(target[to])
    dest = target.get(to, tmp_path / "missing")
    os.symlink(dest, link)
    before = dest.read_bytes() if to == "regular_file" else None
    with pytest.raises(ValueError, match=r"link.rtfm.*symbolic link"):
        small_memory(2).save(link)
    assert link.is_symlink() and os.readlink(link) == str(dest)
    if before is not None:
        assert dest.read_bytes() == before


def test_save_refuses_a_fifo(tmp_path):
    """A FIFO is refused (opening it would block), not replaced."""
    fifo = tmp_path / "pipe.rtfm"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe.rtfm.*FIFO"):
        small_memory(2).save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_saved_files_get_ordinary_permissions(tmp_path, umask):
    """Saved files are 0o666 minus the umask, also when they replace a file of other permissions."""
    path = tmp_path / "m.rtfm"
    path.write_bytes(b"old")
    os.chmod(path, 0o600 if umask != 0o077 else 0o644)
    old = os.umask(umask)
    try:
        small_memory(2).save(path)
        fresh = tmp_path / "fresh.rtfm"
        small_memory(2).save(fresh)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    assert len(SpatialMemory.load(path)) == 2


KILLED_SAVE = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from rtfm_env import memory
    from rtfm_env.geometry import Intrinsics, camera_pose

    rng = np.random.default_rng(0)
    mem = memory.SpatialMemory()
    for i in range(int(sys.argv[2])):
        frame = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        mem.add(frame, camera_pose(i * 0.01, 0.0, 0.0), Intrinsics(128, 128), "observed")
    real = memory._write_safetensors

    def written_then_hang(f, tensors, metadata):
        real(f, tensors, metadata)  # the whole payload is in the temp file ...
        f.flush()
        print("WRITTEN", os.readlink(f"/proc/self/fd/{f.fileno()}"), flush=True)
        time.sleep(600)  # ... and the process is killed before the rename

    memory._write_safetensors = written_then_hang
    print("SAVING", flush=True)
    mem.save(sys.argv[1])
    """
)


def _start_killed_save(path: Path, frames: int) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, str(path), str(frames)], stdout=subprocess.PIPE, text=True, env=env
    )
    line = ""
    deadline = time.monotonic() + 120
    while not line.startswith("WRITTEN") and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"the saving process exited with {proc.returncode}")
    assert line.startswith("WRITTEN"), "the saving process did not reach its write"
    return proc, Path(line.split(" ", 1)[1].strip())


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_temp_files_of_killed_saves_are_removed_by_a_later_save(tmp_path):
    """A save killed with SIGKILL leaves a temp file that a later save to the directory removes once stale.

    The old file stays intact; the temp file is removed once not modified for STALE_TEMP_SECONDS with
    its writer gone.
    """
    path = tmp_path / "world.rtfm"
    small_memory(3).save(path)
    before = path.read_bytes()
    proc, tmp = _start_killed_save(path, 300)  # 300 frames of 128x128: a 15 MB file
    try:
        assert tmp.exists() and tmp.parent == tmp_path and tmp.name.startswith(".world.rtfm.")
        assert tmp.name.endswith(".tmp") and f".{proc.pid}." in tmp.name
        assert tmp.stat().st_size > 300 * 128 * 128 * 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert path.read_bytes() == before and len(SpatialMemory.load(path)) == 3
    assert tmp.exists(), "kill -9 leaves the temp file behind"

    other = tmp_path / "other.rtfm"  # another save into the same directory
    small_memory(2).save(other)
    assert tmp.exists(), "a temp file modified less than STALE_TEMP_SECONDS ago is kept"
    _age(tmp, STALE_TEMP_SECONDS + 60)
    small_memory(2).save(other)
    assert not tmp.exists(), "the stale temp file of a dead writer is removed"
    assert sorted(os.listdir(tmp_path)) == ["other.rtfm", "world.rtfm"]
    assert path.read_bytes() == before


def test_a_live_writers_temp_file_is_never_removed(tmp_path):
    """A temp file whose writer (by the PID in its name) is alive is kept, even when unmodified for a while.

    Only after STALE_TEMP_MAX_SECONDS (the PID may have been reused) is it removed.
    """
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ours = tmp_path / f".w.rtfm.{os.getpid()}.{'a' * 12}.tmp"
        theirs = tmp_path / f".w.rtfm.{sleeper.pid}.{'b' * 12}.tmp"
        for p in (ours, theirs):
            small_memory(2).save(tmp_path / "src.rtfm")
            p.write_bytes((tmp_path / "src.rtfm").read_bytes()[:100])  # a save's first bytes
            _age(p, STALE_TEMP_SECONDS + 60)
        assert remove_stale_temp_files(tmp_path) == []
        small_memory(2).save(tmp_path / "w.rtfm")
        assert ours.exists() and theirs.exists()
        _age(theirs, STALE_TEMP_MAX_SECONDS + 60)
        assert remove_stale_temp_files(tmp_path) == [theirs]
    finally:
        sleeper.kill()
        sleeper.wait(30)


def test_only_memory_temp_files_are_removed(tmp_path):
    """Cleanup removes stale save temp files (this version's and earlier names) and nothing else.

    Only regular files that are empty or hold a memory header go; other files, links and young files stay.
    """
    small_memory(2).save(tmp_path / "src.rtfm")
    header = (tmp_path / "src.rtfm").read_bytes()[:300]
    dead_pid = 2**22 + 12345  # above the usual pid_max, so no such process
    files = {
        f".a.rtfm.{dead_pid}.{'c' * 12}.tmp": (header, True),  # this version's name, writer gone
        ".b.rtfm.x1y2z3_q.tmp": (header, True),  # an earlier version's mkstemp name
        ".c.rtfm.abcdefgh.tmp": (b"", True),  # killed before it wrote anything
        ".tmpAb12Cd": (header, True),  # safetensors' own temp file, from saves of earlier versions
        ".tmpXy34Zw": (b"", False),  # an empty .tmpXXXXXX may be any program's
        ".tmpQq56Rr": (b"not ours", False),
        ".d.txt.abcdefgh.tmp": (b"someone else's data", False),  # a matching name but not a memory
        "e.rtfm.abcdefgh.tmp": (header, False),  # no leading dot: not a save's temp name
        ".f.rtfm.abcdefgh.tmp.bak": (header, False),
        ".g.rtfm.ABCDEFGH.tmp": (header, False),  # not mkstemp's alphabet
        "kept.rtfm": (header, False),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
        _age(tmp_path / name, STALE_TEMP_SECONDS + 60)
    young = tmp_path / f".y.rtfm.{dead_pid}.{'d' * 12}.tmp"
    young.write_bytes(header)
    link = tmp_path / ".l.rtfm.abcdefgh.tmp"
    os.symlink(tmp_path / "kept.rtfm", link)
    small_memory(2).save(tmp_path / "new.rtfm")
    for name, (_, removed) in files.items():
        assert (tmp_path / name).exists() != removed, name
    assert young.exists() and link.is_symlink() and (tmp_path / "kept.rtfm").exists()


def test_save_over_a_regular_file_still_works_and_failed_saves_leave_nothing(tmp_path, monkeypatch):
    """The ordinary case: a regular file is replaced; a save that fails leaves the old file and no temp file."""
    path = tmp_path / "m.rtfm"
    small_memory(3).save(path)
    small_memory(5).save(path)
    assert len(SpatialMemory.load(path)) == 5
    before = path.read_bytes()

    def full_disk(f, tensors, metadata):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(memory_module, "_write_safetensors", full_disk)
    with pytest.raises(OSError, match="No space"):
        small_memory(7).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.rtfm"]
