"""Worlds and regimes: what a memory camera's spatial memory holds when an episode starts.

The frame model and the reprojection camera see a world only through the posed RGB-D frames in
their :class:`~rtfm_env.memory.SpatialMemory`. What that memory holds at reset decides how much
of each new frame is reconstruction (something stored saw it) and how much is generation:

- ``"image"``: the start's single observed frame (RTFM starting from one image), or
  ``seed_views`` frames turned in place at the start;
- ``"walk"``: one exploration walk of the layout (a random walk with momentum from the layout's
  start, :data:`WALK_FRAMES` observed RGB-D frames), as a robot's own recording would give;
- ``"scan"``: a dense coverage scan: free floor points on a grid :attr:`ScanConfig.spacing`
  apart times :attr:`ScanConfig.headings` evenly spaced headings, at most
  :attr:`ScanConfig.max_frames` frames (the grid coarsens to fit);
- a path to a saved world file (a memory written by ``save_world`` / ``SpatialMemory.save``).

Walks and scans depend only on the scene id, the layout seed, the intrinsics and their
settings, so they are deterministic and cached in-process (:func:`recording`, an LRU of
:data:`CACHE_SIZE` recordings); every reset builds a fresh memory from the cached frames, so
what one episode generates never leaks into the next.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import transforms3d

from rtfm_env.geometry import Intrinsics, RobotState, check_pose
from rtfm_env.memory import SpatialMemory

if TYPE_CHECKING:  # importing rtfm_env.scenes loads MiniWorld and its OpenGL context
    from rtfm_env.scenes.base import Scene

__all__ = [
    "WORLD_KINDS",
    "DEFAULT_WORLD",
    "WALK_FRAMES",
    "CACHE_SIZE",
    "ScanConfig",
    "Recording",
    "check_world",
    "world_path",
    "scan_poses",
    "recording",
    "build_memory",
    "turn_in_place",
    "clear_cache",
]

#: The regimes a memory camera can start from (besides a world file's path).
WORLD_KINDS = ("image", "walk", "scan")
#: The default regime: the dense scan gives the most faithful camera (see docs/results/closed_loop.md).
DEFAULT_WORLD = "scan"
#: Frames of the ``"walk"`` regime's exploration walk.
WALK_FRAMES = 256
#: Recordings (walks and scans) kept in the in-process cache.
CACHE_SIZE = 16


@dataclass(frozen=True)
class ScanConfig:
    """How the ``"scan"`` regime covers a layout."""

    spacing: float = 1.25  # metres between scanned floor points (a square grid over free space)
    headings: int = 8  # evenly spaced yaws per point (45 degrees apart: 60-degree views overlap)
    max_frames: int = 512  # the grid is coarsened until points * headings fit


@dataclass(frozen=True)
class Recording:
    """Observed posed RGB-D frames of one layout, in the order they were taken."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    depths: np.ndarray  # (N, H, W) float32 metres along the optical axis, inf where nothing was hit
    poses: np.ndarray  # (N, 4, 4) float64 camera-to-world
    intrinsics: Intrinsics


def world_path(world: object) -> Path | None:
    """The file a ``world`` argument names, or None when it names a regime.

    A regime name (:data:`WORLD_KINDS`) is never a path; anything else that is a string or
    path-like names a file, with or without a directory part (``world.rtfm`` and
    ``./world.rtfm`` alike).
    """
    if isinstance(world, str) and world in WORLD_KINDS:
        return None
    if isinstance(world, (str, os.PathLike)):
        return Path(world)
    return None


def check_world(world: object) -> str | Path:
    """Validate a ``world`` argument: a regime name from :data:`WORLD_KINDS` or an existing file.

    Raises:
        ValueError: not a string or path, or a name that is neither a regime nor a file (the
            message lists the regimes).
        FileNotFoundError: never; a missing file is a ``ValueError`` naming it.
    """
    if isinstance(world, bool) or not isinstance(world, (str, os.PathLike)):
        raise ValueError(f"world must be one of {list(WORLD_KINDS)} or a world file's path, got {world!r}")
    path = world_path(world)
    if path is None:
        return str(world)
    if not path.is_file():
        raise ValueError(
            f"world {str(world)!r} is neither a regime {list(WORLD_KINDS)} nor an existing file "
            "(save one with save_world or SpatialMemory.save)"
        )
    return path


def turn_in_place(pose: np.ndarray, n: int) -> np.ndarray:
    """``n`` poses at the camera centre of ``pose``, turned by evenly spaced yaws.

    The first is ``pose`` itself; the i-th is turned left by ``360 * i / n`` degrees about the
    world's vertical axis, so a robot's level camera stays level (and renderable).

    Returns:
        (n, 4, 4) camera-to-world poses.
    """
    pose = check_pose(pose, "pose")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    out = np.repeat(pose[None], n, axis=0)
    for i in range(1, n):
        turn = transforms3d.axangles.axangle2mat([0.0, 1.0, 0.0], 2.0 * math.pi * i / n)
        out[i, :3, :3] = turn @ pose[:3, :3]
    return out


def scan_poses(scene: Scene, config: ScanConfig = ScanConfig(), cam_height: float = 1.5) -> np.ndarray:  # noqa: B008
    """Camera poses of the ``"scan"`` regime for the scene's current layout.

    Floor points are the centres of a square grid ``spacing`` apart (coarsened by factors of
    1.25 until ``points * headings <= max_frames``) whose cell centre is free in the scene's
    :meth:`~rtfm_env.scenes.base.Scene.top_down_map`; each gets ``headings`` evenly spaced yaws.

    Returns:
        (N, 4, 4) camera-to-world poses, points in row-major grid order, headings inner.

    Raises:
        ValueError: the layout has no free floor point on the grid (nothing to scan).
    """
    grid = scene.top_down_map()
    free = np.asarray(grid.free, dtype=bool)
    rows, cols = free.shape
    spacing = float(config.spacing)
    while True:
        xs = np.arange(grid.origin_x + spacing / 2.0, grid.origin_x + cols * grid.cell, spacing)
        zs = np.arange(grid.origin_z + spacing / 2.0, grid.origin_z + rows * grid.cell, spacing)
        xx, zz = np.meshgrid(xs, zs)
        r, c = grid.world_to_cell(xx.ravel(), zz.ravel())
        inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        ok = np.zeros(len(r), dtype=bool)
        ok[inside] = free[r[inside], c[inside]]
        points = np.stack([xx.ravel()[ok], zz.ravel()[ok]], axis=1)
        if len(points) * config.headings <= config.max_frames or len(points) <= 1:
            break
        spacing *= 1.25
    if len(points) == 0:
        free_cells = int(free.sum())
        raise ValueError(
            f"cannot scan scene {scene.env_id!r} (layout seed {scene.seed}): no free floor point on a "
            f"{config.spacing} m grid ({free_cells} free map cells); use world='image' or 'walk'"
        )
    yaws = 2.0 * math.pi * np.arange(config.headings) / config.headings
    states = [RobotState(float(x), float(z), float(y), cam_height) for x, z in points for y in yaws]
    return np.stack([s.pose() for s in states])


def _walk_poses(scene: Scene, start: RobotState, seed: int, n_frames: int) -> np.ndarray:
    from rtfm_env.data.trajectories import rollout

    return rollout("random_walk", scene, start, n_frames, seed).poses()


def _render(scene: Scene, poses: np.ndarray) -> Recording:
    frames, depths = [], []
    for pose in poses:
        frame = scene.render(pose)
        depth = scene.render_depth(pose)
        if frame is None or depth is None:
            raise RuntimeError(
                f"scene {scene.env_id!r} has no ground-truth RGB-D renderer to record a world from; "
                "start from a world file instead (world=PATH)"
            )
        frames.append(frame)
        depths.append(depth)
    return Recording(np.stack(frames), np.stack(depths).astype(np.float32), np.asarray(poses), scene.intrinsics)


_CACHE: OrderedDict[tuple, Recording] = OrderedDict()


def clear_cache() -> None:
    """Forget every cached walk and scan."""
    _CACHE.clear()


def recording(scene: Scene, kind: str, start: RobotState, scan: ScanConfig = ScanConfig()) -> Recording:  # noqa: B008
    """The ``"walk"`` or ``"scan"`` recording of the scene's current layout, cached.

    Args:
        scene: a scene reset to the layout to record (its ``seed`` is the layout seed).
        kind: ``"walk"`` or ``"scan"``.
        start: the layout's start state (the walk starts there; the scan uses its camera height).
        scan: the scan's settings.

    Returns:
        The recording; the same (scene id, scene variant, layout seed, intrinsics, kind,
        settings) give the same frames, from the cache after the first time.
    """
    if kind not in ("walk", "scan"):
        raise ValueError(f"recordings are 'walk' or 'scan', got {kind!r}")
    if scene.seed is None:
        raise RuntimeError(f"scene {scene.env_id!r} has no layout yet: reset it before recording a world")
    settings = (start.as_array().tobytes(),) if kind == "walk" else tuple(asdict(scan).items())
    # A scene that adds to its id's layouts (ObjectNav's objects) names that in ``variant``.
    key = (scene.env_id, getattr(scene, "variant", None), int(scene.seed), scene.intrinsics, kind, settings)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    if kind == "walk":
        poses = _walk_poses(scene, start, int(scene.seed), WALK_FRAMES)
    else:
        poses = scan_poses(scene, scan, start.cam_height)
    rec = _render(scene, poses)
    for array in (rec.frames, rec.depths, rec.poses):
        array.setflags(write=False)  # shared by every memory built from the cache
    _CACHE[key] = rec
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return rec


def build_memory(
    scene: Scene,
    world: str,
    start_pose: np.ndarray,
    *,
    seed_views: int = 1,
    capacity: int | None = None,
    depth: bool = True,
    scan: ScanConfig = ScanConfig(),  # noqa: B008
) -> SpatialMemory:
    """A new spatial memory holding the regime's observed frames for an episode starting at ``start_pose``.

    Args:
        scene: the scene, reset to the episode's layout.
        world: ``"image"``, ``"walk"`` or ``"scan"`` (a world file is loaded by the camera).
        start_pose: (4, 4) camera-to-world pose of the episode's start.
        seed_views: frames at the start turned in place (always stored first, step 0).
        capacity: the memory's capacity (None: unbounded); at least the frames stored here.
        depth: store the observed frames' depth (RGB-D) as well.
        scan: settings of the ``"scan"`` regime.

    Returns:
        The memory: the start's views first, then the walk or scan frames (step 0, observed).

    Raises:
        ValueError: an unknown regime, a scan of a layout with no free space, or a capacity
            smaller than the recording.
        RuntimeError: a scene without a ground-truth renderer.
    """
    if world not in WORLD_KINDS:
        raise ValueError(f"unknown world regime {world!r}; valid regimes: {list(WORLD_KINDS)} or a world file")
    start_pose = check_pose(start_pose, "start pose")
    intrinsics = scene.intrinsics
    views = turn_in_place(start_pose, seed_views)
    first = _render(scene, views) if depth else None
    memory = SpatialMemory(capacity=capacity)
    for i, pose in enumerate(views):
        frame = first.frames[i] if first is not None else scene.render(pose)
        if frame is None:
            raise RuntimeError(
                f"scene {scene.env_id!r} has no ground-truth renderer; a memory camera needs the start's frame "
                "to seed its memory (or a world file: world=PATH)"
            )
        memory.add(frame, pose, intrinsics, "observed", step=0, depth=None if first is None else first.depths[i])
    if world == "image":
        return memory
    from rtfm_env.geometry import pose_to_state

    # The walk belongs to the layout, so it starts from the layout's own start where the scene has one.
    layout_start = getattr(scene, "start_state", None)
    rec = recording(scene, world, layout_start if layout_start is not None else pose_to_state(start_pose), scan)
    if capacity is not None and capacity < len(rec.poses) + len(views):
        raise ValueError(
            f"memory_capacity={capacity} cannot hold the {world!r} regime's {len(rec.poses) + len(views)} frames; "
            "raise it or pass memory_capacity=None"
        )
    for i in range(len(rec.poses)):
        memory.add(
            rec.frames[i], rec.poses[i], intrinsics, "observed", step=0, depth=rec.depths[i] if depth else None
        )
    return memory
