"""Free space of a recorded world: a floor-plan occupancy grid from posed depth frames.

A robot's recording has no mesh, so where the robot may go is read from what its camera saw:

1. every finite depth pixel is back-projected to a world point (world y up, floor at y = 0);
2. points in the *height band* ``[band_lo, band_hi]`` above the floor are obstacles (walls,
   furniture the robot would hit); points below ``band_lo`` are floor;
3. the ray from the camera to every floor or obstacle point carves free space: the cells its
   horizontal projection crosses before the hit are *observed free* (a floor hit's own cell too);
4. a cell is *blocked* when its centre is closer than ``robot_radius`` to an obstacle point (the
   obstacles inflated by the robot, as MiniWorld's own map inflates walls);
5. the cells the recorded camera path crossed are *known free*: the robot stood there;
6. ``free = (observed_free & ~blocked) | known_free``, keeping only the connected components
   (8-connected) that hold known-free cells: a pocket seen through a doorway that the robot
   cannot reach is not free space.

Depth ``inf`` (nothing hit, or no valid return) carries no evidence either way: it neither
carves nor blocks. Without depth, :func:`path_corridor_grid` gives a corridor of
``robot_radius + margin`` around the path instead (method ``"path"``).

The grid follows :class:`rtfm_env.scenes.base.TopDownMap`: cell (i, j) covers world x in
``[origin_x + j * cell, origin_x + (j + 1) * cell)`` and z in ``[origin_z + i * cell, ...)``;
origins are multiples of ``cell``, so grids of the same cell size line up cell for cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "FreeSpaceError",
    "FreeSpaceGrid",
    "MAX_CELLS",
    "free_space_grid",
    "path_corridor_grid",
    "path_cells",
]

#: Largest grid (rows * cols) built; a path spanning more is refused (likely garbage poses).
MAX_CELLS = 4_000_000
#: Consecutive camera positions farther apart than this (metres) are not joined into a path
#: segment when marking known-free cells (the recording jumped: a relocalisation, a gap).
MAX_PATH_STEP = 1.0


class FreeSpaceError(ValueError):
    """The free-space grid cannot be built from these inputs (no poses, an empty map, a huge grid, ...)."""


@dataclass
class FreeSpaceGrid:
    """A floor-plan grid of where the robot's centre may stand (TopDownMap's convention)."""

    free: np.ndarray  # (rows, cols) bool: the robot's centre may stand here
    known_free: np.ndarray  # (rows, cols) bool: the recorded camera path crossed the cell
    origin_x: float  # metres, world x of the grid's corner
    origin_z: float  # metres, world z of the grid's corner
    cell: float  # metres per cell
    method: str  # "depth" (occupancy from depth) or "path" (a corridor around the path)
    height_band: tuple[float, float] | None  # metres above the floor counted as obstacles (depth only)
    robot_radius: float  # metres the obstacles are inflated by

    def info(self) -> dict:
        """The grid's description as stored in a world file's ``info["free_space"]``."""
        return {
            "origin_x": float(self.origin_x),
            "origin_z": float(self.origin_z),
            "cell": float(self.cell),
            "method": self.method,
            "height_band": None if self.height_band is None else [float(v) for v in self.height_band],
            "robot_radius": float(self.robot_radius),
            "free_cells": int(self.free.sum()),
            "known_free_cells": int(self.known_free.sum()),
        }


def _check_poses(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0:
        raise FreeSpaceError(f"free space needs (N >= 1, 4, 4) camera poses, got shape {poses.shape}")
    if not np.all(np.isfinite(poses)):
        raise FreeSpaceError("camera poses hold NaN or infinite values")
    return poses


def _grid_frame(xs: np.ndarray, zs: np.ndarray, cell: float, pad: float) -> tuple[float, float, int, int]:
    """Origin (multiples of ``cell``) and size of a grid covering points x, z with ``pad`` metres around."""
    # Rounded so that an origin reads as the multiple of the cell it is (-5.6, not -5.6000000000000005).
    origin_x = round(math.floor((float(xs.min()) - pad) / cell) * cell, 9)
    origin_z = round(math.floor((float(zs.min()) - pad) / cell) * cell, 9)
    cols = int(math.ceil((float(xs.max()) + pad - origin_x) / cell)) + 1
    rows = int(math.ceil((float(zs.max()) + pad - origin_z) / cell)) + 1
    if rows * cols > MAX_CELLS:
        raise FreeSpaceError(
            f"the free-space grid would be {rows} x {cols} cells of {cell} m (the recording spans "
            f"{xs.max() - xs.min():.3g} x {zs.max() - zs.min():.3g} m), more than {MAX_CELLS}; "
            "check the poses' units, or use a larger cell"
        )
    return origin_x, origin_z, rows, cols


def path_cells(
    positions: np.ndarray, origin_x: float, origin_z: float, cell: float, shape: tuple[int, int]
) -> np.ndarray:
    """Cells crossed by the camera path: every position and the segments between consecutive ones.

    Args:
        positions: (N, 2) world (x, z) of the camera centres, in recording order.
        origin_x: world x of the grid's corner, metres.
        origin_z: world z of the grid's corner, metres.
        cell: metres per cell.
        shape: (rows, cols) of the grid.

    Returns:
        (rows, cols) bool. Segments longer than :data:`MAX_PATH_STEP` are not joined.
    """
    out = np.zeros(shape, dtype=bool)
    pts = [positions]
    if len(positions) > 1:
        a, b = positions[:-1], positions[1:]  # (N-1, 2)
        length = np.linalg.norm(b - a, axis=1)  # (N-1,)
        ok = length <= MAX_PATH_STEP
        n = int(math.ceil(MAX_PATH_STEP / (cell / 4.0))) + 1
        t = np.linspace(0.0, 1.0, n)[None, :, None]  # (1, n, 1)
        seg = a[ok, None, :] + t * (b - a)[ok, None, :]  # (M, n, 2)
        pts.append(seg.reshape(-1, 2))
    p = np.concatenate(pts)
    col = np.floor((p[:, 0] - origin_x) / cell).astype(np.int64)
    row = np.floor((p[:, 1] - origin_z) / cell).astype(np.int64)
    inside = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
    out[row[inside], col[inside]] = True
    return out


def _keep_path_components(free: np.ndarray, known: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(free, structure=np.ones((3, 3), dtype=bool))  # 8-connected
    keep = np.unique(labels[known & free])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def path_corridor_grid(
    poses: np.ndarray, cell: float = 0.1, robot_radius: float = 0.4, margin: float = 0.3
) -> FreeSpaceGrid:
    """Free space without depth: cells within ``robot_radius + margin`` of the camera path.

    Args:
        poses: (N, 4, 4) camera-to-world poses (world y up); only their (x, z) are used.
        cell: metres per cell.
        robot_radius: the robot's radius, metres.
        margin: metres of corridor beyond the robot radius.

    Returns:
        The grid, method ``"path"``; known-free cells are the path's own cells.
    """
    poses = _check_poses(poses)
    _check_positive(cell=cell, robot_radius=robot_radius)
    xz = poses[:, [0, 2], 3]  # (N, 2)
    reach = robot_radius + max(float(margin), 0.0)
    origin_x, origin_z, rows, cols = _grid_frame(xz[:, 0], xz[:, 1], cell, reach + 2 * cell)
    known = path_cells(xz, origin_x, origin_z, cell, (rows, cols))
    dist = ndimage.distance_transform_edt(~known) * cell  # (rows, cols) metres to the nearest path cell
    free = (dist <= reach) | known
    return FreeSpaceGrid(free, known, origin_x, origin_z, cell, "path", None, float(robot_radius))


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)) and v > 0):
            raise FreeSpaceError(f"{name} must be a positive number of metres, got {v!r}")


def free_space_grid(
    depths: np.ndarray | list[np.ndarray],
    poses: np.ndarray,
    intrinsics: np.ndarray,
    cell: float = 0.1,
    band: tuple[float, float] = (0.1, 1.6),
    robot_radius: float = 0.4,
    max_range: float = 10.0,
    max_rays: int = 2048,
) -> FreeSpaceGrid:
    """Occupancy grid from posed depth frames (module docstring: the method, step by step).

    Args:
        depths: N depth maps (H, W) float metres along the optical axis (``inf`` where nothing was
            hit or no valid return; such pixels are ignored), as an (N, H, W) array or a list.
        poses: (N, 4, 4) camera-to-world poses, OpenGL camera axes, world y up with the floor at y = 0.
        intrinsics: (3, 3) or (N, 3, 3) pinhole camera matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
            of the depth maps (computer-vision convention: pixel v grows downwards).
        cell: metres per grid cell.
        band: (low, high) metres above the floor: points in it are obstacles, points below floor.
        robot_radius: obstacles are inflated by this many metres.
        max_range: depth beyond this many metres is ignored (noisy and far from the robot's path).
        max_rays: at most about this many pixels per frame are used (a regular stride).

    Returns:
        The grid, method ``"depth"``.

    Raises:
        FreeSpaceError: mismatched inputs, a band that is not ``0 <= low < high``, a grid too large, or
            an empty map (no observed cell clear of obstacles: the path alone is not a world).
    """
    poses = _check_poses(poses)
    n = len(poses)
    if len(depths) != n:
        raise FreeSpaceError(f"{len(depths)} depth maps for {n} poses")
    _check_positive(cell=cell, robot_radius=robot_radius, max_range=max_range)
    lo, hi = (float(v) for v in band)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
        raise FreeSpaceError(f"the height band must be 0 <= low < high metres above the floor, got {band}")
    ks = np.asarray(intrinsics, dtype=np.float64)
    ks = np.broadcast_to(ks, (n, 3, 3)) if ks.shape == (3, 3) else ks
    if ks.shape != (n, 3, 3) or not np.all(np.isfinite(ks)) or np.any(ks[:, 0, 0] <= 0) or np.any(ks[:, 1, 1] <= 0):
        raise FreeSpaceError(f"intrinsics must be (3, 3) or ({n}, 3, 3) camera matrices with fx, fy > 0")

    cams = poses[:, :3, 3]  # (N, 3)
    hits, kinds, starts = [], [], []  # world points, 0 floor / 1 obstacle, the camera each ray left from
    for i in range(n):
        d = np.asarray(depths[i], dtype=np.float64)  # (H, W)
        if d.ndim != 2:
            raise FreeSpaceError(f"depth map {i} must be (H, W), got shape {d.shape}")
        h, w = d.shape
        stride = max(1, int(math.ceil(math.sqrt(h * w / max_rays))))
        v, u = np.mgrid[stride // 2 : h : stride, stride // 2 : w : stride]  # (h', w') pixel indices
        z = d[v, u]  # (h', w')
        ok = np.isfinite(z) & (z > 0) & (z <= max_range)
        u, v, z = u[ok] + 0.5, v[ok] + 0.5, z[ok]  # (P,)
        fx, fy, cx, cy = ks[i, 0, 0], ks[i, 1, 1], ks[i, 0, 2], ks[i, 1, 2]
        cam = np.stack([(u - cx) / fx * z, -(v - cy) / fy * z, -z], axis=1)  # (P, 3) OpenGL camera frame
        world = cam @ poses[i, :3, :3].T + cams[i]  # (P, 3)
        y = world[:, 1]
        keep = y <= hi  # above the band (ceilings, lamps): no evidence on the floor plan
        hits.append(world[keep])
        kinds.append((y[keep] >= lo).astype(np.uint8))
        starts.append(np.repeat(cams[i : i + 1], int(keep.sum()), axis=0))
    pts = np.concatenate(hits) if hits else np.empty((0, 3))  # (P, 3)
    kind = np.concatenate(kinds) if kinds else np.empty(0, np.uint8)  # (P,)
    start = np.concatenate(starts) if starts else np.empty((0, 3))  # (P, 3)

    xz_path = cams[:, [0, 2]]  # (N, 2)
    all_x = np.concatenate([xz_path[:, 0], pts[:, 0]])
    all_z = np.concatenate([xz_path[:, 1], pts[:, 2]])
    origin_x, origin_z, rows, cols = _grid_frame(all_x, all_z, cell, robot_radius + 2 * cell)
    shape = (rows, cols)

    def cells_of(x: np.ndarray, z: np.ndarray) -> np.ndarray:
        c = np.clip(np.floor((x - origin_x) / cell).astype(np.int64), 0, cols - 1)
        r = np.clip(np.floor((z - origin_z) / cell).astype(np.int64), 0, rows - 1)
        return r * cols + c  # flat cell index

    # Carve: sample each ray's horizontal projection every cell / 2 up to its hit (an obstacle's
    # own cell excluded), in chunks to bound memory.
    observed = np.zeros(rows * cols, dtype=bool)
    step = cell / 2.0
    a, b = start[:, [0, 2]], pts[:, [0, 2]]  # (P, 2)
    length = np.linalg.norm(b - a, axis=1)  # (P,)
    reach = np.where(kind == 1, np.maximum(length - cell, 0.0), length)  # (P,)
    chunk = 8192
    for s in range(0, len(a), chunk):
        aa, bb, ll, rr = a[s : s + chunk], b[s : s + chunk], length[s : s + chunk], reach[s : s + chunk]
        m = int(math.ceil(float(rr.max(initial=0.0)) / step)) + 1
        t = np.arange(m) * step  # (m,) metres along the ray
        direction = (bb - aa) / np.maximum(ll, 1e-9)[:, None]  # (C, 2)
        along = aa[:, None, :] + t[None, :, None] * direction[:, None, :]  # (C, m, 2)
        valid = t[None, :] <= rr[:, None]  # (C, m)
        observed[cells_of(along[..., 0][valid], along[..., 1][valid])] = True
    floor_hits = kind == 0
    observed[cells_of(pts[floor_hits, 0], pts[floor_hits, 2])] = True
    observed = observed.reshape(shape)

    # Inflate: cell centres closer than the robot radius to an obstacle point are blocked.
    blocked = np.zeros(shape, dtype=bool)
    obstacles = pts[kind == 1][:, [0, 2]]  # (Q, 2)
    if len(obstacles):
        q = np.unique(np.floor(obstacles / (cell / 4.0)).astype(np.int64), axis=0)  # thin to cell / 4
        tree = cKDTree((q + 0.5) * (cell / 4.0))
        jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
        centres = np.stack([origin_x + (jj.ravel() + 0.5) * cell, origin_z + (ii.ravel() + 0.5) * cell], axis=1)
        dist, _ = tree.query(centres, distance_upper_bound=robot_radius)
        blocked = (dist < robot_radius).reshape(shape)

    clear = observed & ~blocked
    if not clear.any():
        raise FreeSpaceError(
            f"the free-space map is empty: no observed floor cell is {robot_radius} m (the robot radius) clear of "
            f"the obstacles in the height band {band} m; check the robot radius, the height band and the floor "
            "(or build without depth: a corridor around the path)"
        )
    known = path_cells(xz_path, origin_x, origin_z, cell, shape)
    free = _keep_path_components(clear | known, known)
    return FreeSpaceGrid(free, known, origin_x, origin_z, cell, "depth", (lo, hi), float(robot_radius))
