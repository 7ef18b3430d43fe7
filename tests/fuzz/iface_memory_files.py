"""Fuzzing saved spatial-memory files: mutations of a saved file, and saves that must fail safely.

Every mutated file is loaded with :meth:`SpatialMemory.load`. A load that succeeds must give
back exactly what was saved (frames, depths, poses, ids, sources, steps, intrinsics, config,
next id); anything else is a corrupt file accepted silently. Edits re-signed with a correct
SHA-256 (:func:`rtfm_env.memory.payload_sha256`) test the bounds behind the checksum: a pose
moved to 1e150 m or a fov of 3e-307 degrees must be refused, changed pixels may load. Save
cases aim a save at a directory, a FIFO, a symbolic link, or over an existing file after a
failed ``add``; the existing file must survive each (else: file lost).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, FileLost, SilentAcceptance
from mutate import byte_mutation, header_entry_edit, join, json_value, split, tensor

RES = 12


def _memory() -> Any:
    from rtfm_env.geometry import Intrinsics, camera_pose
    from rtfm_env.memory import SpatialMemory

    rng = np.random.default_rng(0)
    mem = SpatialMemory(capacity=16)
    intr = Intrinsics(RES, RES, 60.0)
    for i in range(6):
        frame = rng.integers(0, 256, size=(RES, RES, 3), dtype=np.uint8)
        depth = (rng.uniform(0.5, 8.0, size=(RES, RES)).astype(np.float32) if i % 2 == 0 else None)
        if depth is not None:
            depth[0, 0] = np.inf
        mem.add(frame, camera_pose(x=0.3 * i, z=0.2 * i, yaw=0.4 * i), intr, "observed" if i < 4 else "generated",
                depth=depth, step=i)
    return mem


def snapshot(mem: Any) -> dict[str, Any]:
    """Everything a memory holds, comparable with :func:`same`."""
    ids = [int(i) for i in mem.ids]
    return {"len": len(mem), "ids": ids, "next_id": int(mem.next_id), "config": mem.config.to_dict(),
            "frames": mem.frames(ids), "poses": mem.poses(ids), "depths": mem.depths(ids),
            "sources": list(mem.sources(ids)), "steps": list(mem.steps(ids)),
            "intrinsics": [str(i) for i in mem.intrinsics_of(ids)]}


def same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the fields where two snapshots differ."""
    diff = []
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray):
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                diff.append(key)
        elif x != y:
            diff.append(key)
    return diff


def setup(workdir: Path) -> dict[str, Any]:
    """Save the reference memory file; keep its bytes and content."""
    mem = _memory()
    path = workdir / "original.rtfm"
    mem.save(path)
    return {"dir": workdir, "bytes": path.read_bytes(), "snapshot": snapshot(mem), "memory": mem}


def _load(path: Path) -> Any:
    from rtfm_env.memory import SpatialMemory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpatialMemory.load(path)


def _check_load(path: Path, ref: dict[str, Any], what: str, may_change: bool = False) -> None:
    """Load ``path``; a load that gives anything other than ``ref`` is a silent acceptance."""
    mem = _load(path)
    diff = same(ref, snapshot(mem))
    if diff and not may_change:
        raise SilentAcceptance(f"{what}: loaded without error but {diff} differ from what was saved")


def _resign(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    from rtfm_env.memory import payload_sha256

    metadata = dict(metadata)
    metadata["sha256"] = payload_sha256(metadata, tensors)
    return save(tensors, metadata=metadata)


def _tensors(data: bytes) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    header, payload = split(data)
    meta = dict(header.get("__metadata__", {}))
    return meta, {k: tensor(header, payload, k) for k in header if k != "__metadata__"}


def _semantic_edit(rng: np.random.Generator, data: bytes) -> tuple[str, bytes, bool | None]:
    """A value edit inside the payload, re-signed (or not): (description, bytes, valid)."""
    meta, t = _tensors(data)
    kind = str(rng.choice(["pose_far", "pose_nan", "pose_scale", "fov_tiny", "fov_big", "ids", "source", "step",
                           "has_depth", "depth_neg", "depth_nan", "pixels", "next_id", "config", "resolution"]))
    valid: bool | None = False
    if kind == "pose_far":
        t["poses"][int(rng.integers(0, len(t["poses"]))), 0, 3] = float(rng.choice([1e7, 1e150, 1e300]))
    elif kind == "pose_nan":
        t["poses"][0, 1, 1] = np.nan
    elif kind == "pose_scale":
        t["poses"][0, :3, :3] *= 2.0
    elif kind == "fov_tiny":
        t["fov_y"][0] = float(rng.choice([3e-307, 0.0, -60.0, 1e-9]))
    elif kind == "fov_big":
        t["fov_y"][0] = float(rng.choice([180.0, 1e300, np.inf, np.nan]))
    elif kind == "ids":
        t["ids"][1] = t["ids"][0]
    elif kind == "source":
        t["source"][0] = int(rng.choice([2, 7, 255, -1])) % 256 if t["source"].dtype == np.uint8 else 7
    elif kind == "step":
        t["step"][0] = -5
    elif kind == "has_depth":
        t["has_depth"][1] = 1 - t["has_depth"][1]
    elif kind == "depth_neg":
        t["depth"][0, 0, 1] = -1.0
    elif kind == "depth_nan":
        t["depth"][0, 0, 1] = np.nan
    elif kind == "pixels":
        t["frames"][0, 0, 0, 0] ^= 0xFF
        valid = None  # a re-signed file with other pixels is a valid file
    elif kind == "next_id":
        meta["next_id"] = str(rng.choice([10**30, -1, 2**63, 0]))
    elif kind == "config":
        cfg = json.loads(meta["config"])
        key = sorted(cfg)[int(rng.integers(0, len(cfg)))]
        cfg[key] = json_value(rng)
        meta["config"] = json.dumps(cfg)
        valid = None  # some values of some settings are valid; the load is checked against the bounds
        kind = f"config {key} := {cfg[key]!r}"
    else:
        meta["resolution"] = json.dumps([int(rng.choice([1, 10**6, 0])), RES])
    if rng.random() < 0.25 and kind != "pixels":
        # Not re-signed: the checksum alone must refuse it.
        header, payload = split(data)
        header["__metadata__"] = meta
        from safetensors.numpy import save

        return f"{kind} (checksum left stale)", save(t, metadata={**meta}), False
    return f"{kind} (re-signed)", _resign(meta, t), valid


def _metadata_edit(rng: np.random.Generator, data: bytes) -> tuple[str, bytes, bool | None]:
    header, payload = split(data)
    meta = header.setdefault("__metadata__", {})
    key = str(rng.choice(["format", "version", "config", "next_id", "resolution", "query_intrinsics", "sha256",
                          "extra"]))
    value = json_value(rng)
    if rng.random() < 0.7:
        value = value if isinstance(value, str) else json.dumps(value)
    if key == "extra":
        meta["unexpected"] = value
    else:
        meta[key] = value
    # Relabelled as an older version, the file loads unverified with a warning (as old files do): the
    # content must still be what was saved.
    valid = None if key == "version" and value in ("1", "2") else False
    return f"metadata {key} := {value!r:.60}", join(header, payload), valid


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """One mutated file to load, or one save that must leave an existing file intact."""
    path = Path(ctx["dir"]) / f"case{index}.rtfm"
    data, ref = ctx["bytes"], ctx["snapshot"]
    r = rng.random()
    if r < 0.06:
        return _save_case(rng, index, ctx)
    valid: bool | None = False
    if r < 0.5:
        what, new = byte_mutation(rng, data)
    elif r < 0.65:
        what, new, valid = _metadata_edit(rng, data)
    elif r < 0.78:
        header, payload = split(data)
        what = header_entry_edit(rng, header)
        new = join(header, payload)
    else:
        what, new, valid = _semantic_edit(rng, data)

    def run() -> None:
        path.write_bytes(new)
        try:
            _check_load(path, ref, what, may_change=valid is None)
        finally:
            path.unlink(missing_ok=True)

    if new == data:
        valid = True
    return Case(f"load: {what}", valid, run)


def _save_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """A save that must fail (or succeed) without damaging the existing file."""
    from rtfm_env.geometry import Intrinsics, camera_pose

    workdir = Path(ctx["dir"]) / f"save{index}"
    workdir.mkdir()
    existing = workdir / "world.rtfm"
    existing.write_bytes(ctx["bytes"])
    ref = ctx["snapshot"]
    kind = str(rng.choice(["directory", "fifo", "symlink_file", "symlink_dir", "failed_add_then_save",
                           "missing_dir"]))

    def run() -> None:
        mem = _load(existing)
        if kind == "failed_add_then_save":
            frame = np.zeros((RES, RES, 3), np.uint8)
            try:
                mem.add(frame, camera_pose(x=1e200, z=0.0, yaw=0.0), Intrinsics(RES, RES, 60.0), "observed")
            except (ValueError, TypeError):
                pass
            try:
                mem.add(frame, np.full((4, 4), np.nan), Intrinsics(RES, RES, 60.0), "observed")
            except (ValueError, TypeError):
                pass
            mem.save(existing)
            try:
                again = _load(existing)
            except Exception as e:  # noqa: BLE001
                raise FileLost(f"after failed adds, save() wrote a file that load() refuses: {e}") from e
            if same(ref, snapshot(again)):
                raise SilentAcceptance(f"failed adds changed the memory: {same(ref, snapshot(again))}")
            return
        if kind == "directory":
            target = workdir / "adir"
            target.mkdir()
        elif kind == "fifo":
            target = workdir / "afifo"
            os.mkfifo(target)
        elif kind == "symlink_file":
            target = workdir / "link.rtfm"
            target.symlink_to(existing)
        elif kind == "symlink_dir":
            (workdir / "d").mkdir()
            target = workdir / "dlink"
            target.symlink_to(workdir / "d")
        else:
            target = workdir / "missing" / "world.rtfm"
        try:
            mem.save(target)
        finally:
            if kind == "directory" and not target.is_dir():
                raise FileLost("save replaced a directory")
            if kind == "fifo" and not target.is_fifo():
                raise FileLost("save replaced a FIFO")

    def wrapped() -> None:
        try:
            run()
        finally:
            if kind != "failed_add_then_save":
                check_existing()

    def check_existing() -> None:
        try:
            mem = _load(existing)
        except Exception as e:  # noqa: BLE001
            raise FileLost(f"{kind}: the existing file no longer loads: {type(e).__name__}: {e}") from e
        diff = same(ref, snapshot(mem))
        if diff:
            raise FileLost(f"{kind}: the existing file changed ({diff})")

    return Case(f"save: {kind}", True if kind == "failed_add_then_save" else False, wrapped,
                expected=(OSError,))
