"""Fuzzing the SpatialMemory API: add, retrieve, frames, poses, depths and the constructor.

Each case calls one method with one argument drawn from a pool of good and hostile values. A
refused ``add`` must leave the memory exactly as it was (length, ids, next id); a refused call
that changed it anyway is a silent acceptance. Every so often the memory is saved and loaded
back, and a memory that no longer round-trips is a lost file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, FileLost, SilentAcceptance

RES = 8
NAN, INF = float("nan"), float("inf")


def setup(workdir: Path) -> dict[str, Any]:
    """Two memories: one unbounded, one with a capacity of 4 (so adds evict)."""
    from rtfm_env.memory import SpatialMemory

    mems = [SpatialMemory(), SpatialMemory(capacity=4)]
    ctx = {"dir": workdir, "mems": mems}
    rng = np.random.default_rng(1)
    for mem in mems:
        for i in range(5):
            kw = _good_add(rng, i)
            mem.add(kw["frame"], kw["pose"], kw["intrinsics"], kw["source"], depth=kw["depth"], step=kw["step"])
    return ctx


def _good_add(rng: np.random.Generator, i: int) -> dict[str, Any]:
    from rtfm_env.geometry import Intrinsics, camera_pose

    return {"frame": rng.integers(0, 256, size=(RES, RES, 3), dtype=np.uint8),
            "pose": camera_pose(x=float(rng.uniform(-5, 5)), z=float(rng.uniform(-5, 5)),
                                yaw=float(rng.uniform(-3, 3))),
            "intrinsics": Intrinsics(RES, RES, 60.0), "source": str(rng.choice(["observed", "generated"])),
            "depth": rng.uniform(0.2, 9.0, size=(RES, RES)).astype(np.float32) if rng.random() < 0.5 else None,
            "step": int(rng.integers(0, 1000)) if rng.random() < 0.5 else None}


def _bad_values(name: str, rng: np.random.Generator) -> list[Any]:
    from rtfm_env.geometry import Intrinsics, camera_pose

    pose = camera_pose(x=1.0, z=1.0, yaw=0.3)
    far, nanpose, scaled, shear = pose.copy(), pose.copy(), pose.copy(), pose.copy()
    far[0, 3] = float(rng.choice([1e7, 1e150, 1e200, 1e308]))
    nanpose[1, 3] = NAN
    scaled[:3, :3] *= 3.0
    shear[3, 0] = 1.0
    return {
        "frame": [np.zeros((RES, RES, 3), np.float32), np.zeros((RES, RES), np.uint8),
                  np.zeros((RES, RES, 4), np.uint8), np.zeros((RES + 1, RES, 3), np.uint8),
                  np.zeros((0, 0, 3), np.uint8), np.zeros((1, 5000, 3), np.uint8), [[[0, 0, 0]]], None, "frame",
                  np.zeros((RES, RES, 3), bool), True],
        "pose": [far, nanpose, scaled, shear, pose[:3], np.full((4, 4), INF), None, "pose", pose.astype(bool),
                 np.zeros((4, 4)), True, pose[None]],
        "intrinsics": [(RES, RES, 60.0), None, "intr", Intrinsics(RES * 2, RES * 2, 60.0), 5],
        "source": ["x", None, 1, True, "", "OBSERVED", b"observed"],
        "depth": [np.full((RES, RES), NAN, np.float32), np.full((RES, RES), -1.0, np.float32),
                  np.zeros((RES, RES), np.float32), np.ones((RES + 1, RES), np.float32), np.ones((RES, RES), np.int64),
                  "depth", True, np.ones((RES, RES, 1), np.float32)],
        "step": [-1, True, 1.5, 2**70, NAN, "3", [1]],
    }[name]


def _state(mem: Any) -> tuple:
    return len(mem), tuple(int(i) for i in mem.ids), int(mem.next_id)


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """One call of the memory API with good or hostile arguments."""
    mem = ctx["mems"][index % 2]
    r = rng.random()
    if index % 97 == 96:
        return _round_trip_case(index, ctx)
    if r < 0.55:
        kwargs = _good_add(rng, index)
        valid: bool | None = True
        what = "add(good)"
        if rng.random() < 0.8:
            name = str(rng.choice(["frame", "pose", "intrinsics", "source", "depth", "step"]))
            pool = _bad_values(name, rng)
            value = pool[int(rng.integers(0, len(pool)))]
            kwargs[name] = value
            valid = False
            what = f"add({name}={_show(value)})"
        before = _state(mem)
        cap = mem.config.capacity

        def run_add() -> None:
            try:
                mem.add(kwargs["frame"], kwargs["pose"], kwargs["intrinsics"], kwargs["source"],
                        depth=kwargs["depth"], step=kwargs["step"])
            except BaseException:
                if _state(mem) != before:
                    raise SilentAcceptance(f"refused add changed the memory: {before[0]} -> {len(mem)} frames, "
                                           f"next_id {before[2]} -> {mem.next_id}") from None
                raise
            if cap is not None and len(mem) > cap:
                raise SilentAcceptance(f"memory over its capacity: {len(mem)} > {cap}")

        return Case(what, valid, run_add)
    if r < 0.75:
        from rtfm_env.geometry import camera_pose

        pose: Any = camera_pose(x=float(rng.uniform(-5, 5)), z=0.0, yaw=0.0)
        k: Any = int(rng.integers(1, 6))
        valid = True
        choice = int(rng.integers(0, 3))
        if choice == 1:
            pool = _bad_values("pose", rng)
            pose = pool[int(rng.integers(0, len(pool)))]
            valid = False
        elif choice == 2:
            k = [0, -1, True, 1.5, NAN, "2", None, 10**9, 2**70][int(rng.integers(0, 9))]
            # k = 0 (nothing) and a k beyond the frames stored (all of them) are answerable.
            valid = True if k == 10**9 else (None if k is None or (type(k) is int and k in (0, 2**70)) else False)

        def run_retrieve() -> None:
            ids = mem.retrieve(pose, k=k)
            if len(ids) > len(mem) or len(set(ids)) != len(ids):
                raise SilentAcceptance(f"retrieve returned {ids} from {len(mem)} frames")

        return Case(f"retrieve(pose={_show(pose)}, k={k!r})", valid, run_retrieve)
    if r < 0.95:
        ids_now = [int(i) for i in mem.ids]
        method = str(rng.choice(["frames", "poses", "depths", "has_depth", "sources", "steps"]))
        pool: list[Any] = [ids_now[:2], [-1], [10**20], [True], ["a"], [1.5], np.array(ids_now[:1]), [], None, 5,
                           [NAN], [ids_now[0], ids_now[0]], np.array([[ids_now[0]]]), [2**70], "01"]
        ids = pool[int(rng.integers(0, len(pool)))]
        valid = True if (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                       and i in ids_now for i in ids)) else None
        if ids is None or isinstance(ids, (int, str, float)) or (isinstance(ids, list) and ids and
                                                                 not isinstance(ids[0], int)):
            valid = False
        if isinstance(ids, list) and ids and isinstance(ids[0], bool):
            valid = False

        def run_read() -> None:
            out = getattr(mem, method)(ids)
            n = len(out)
            want = len(np.asarray(ids).reshape(-1)) if ids is not None and not isinstance(ids, str) else -1
            if n != want:
                raise SilentAcceptance(f"{method}({_show(ids)}) returned {n} items")

        return Case(f"{method}({_show(ids)})", valid, run_read)
    from rtfm_env.memory import SpatialMemory

    key = str(rng.choice(["capacity", "direction_scale", "candidates", "generated_weight", "bogus"]))
    value = [None, -1, 0, True, 10**30, NAN, INF, "4", 1.5, 4][int(rng.integers(0, 10))]
    return Case(f"SpatialMemory({key}={value!r})", None if key != "bogus" else False,
                lambda: SpatialMemory(**{key: value}))


def _round_trip_case(index: int, ctx: dict[str, Any]) -> Case:
    from rtfm_env.memory import SpatialMemory

    def run() -> None:
        for i, mem in enumerate(ctx["mems"]):
            path = Path(ctx["dir"]) / f"rt{i}.rtfm"
            mem.save(path)
            try:
                again = SpatialMemory.load(path)
            except Exception as e:  # noqa: BLE001
                raise FileLost(f"memory {i} after the inputs so far saves a file that load() refuses: {e}") from e
            if len(again) != len(mem):
                raise FileLost(f"memory {i}: {len(mem)} frames saved, {len(again)} loaded")

    return Case("save + load round trip after the inputs so far", True, run)


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        top = float(np.abs(finite).max()) if finite.size and value.dtype.kind in "fiu" else 0
        return f"array{value.shape} {value.dtype} max|.|={top:.3g}"
    return repr(value)[:60]
