"""Tests of rtfm_env.free_space: occupancy from posed depth, the path corridor, and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtfm_env.free_space import MAX_CELLS, FreeSpaceError, free_space_grid, path_corridor_grid
from rtfm_env.geometry import Intrinsics, camera_pose

INTR = Intrinsics(64, 64, 60.0)


def wall_depth(distance: float, cam_height: float = 1.5, intr: Intrinsics = INTR) -> np.ndarray:
    """Depth of a level camera facing a wall ``distance`` ahead across a floor at y = 0."""
    v = np.arange(intr.height) + 0.5
    b = -(v - intr.height / 2) / intr.focal  # (H,) ray y per unit of depth
    floor = np.where(b < 0, cam_height / np.maximum(-b, 1e-12), np.inf)  # depth where the ray meets the floor
    row = np.minimum(floor, distance)  # (H,)
    return np.repeat(row[:, None], intr.width, axis=1).astype(np.float32)  # (H, W)


def cell_of(grid, x: float, z: float) -> tuple[int, int]:
    return int(math.floor((z - grid.origin_z) / grid.cell)), int(math.floor((x - grid.origin_x) / grid.cell))


def test_a_wall_ahead_blocks_its_cells_and_inflates_by_the_radius():
    """Floor before the wall is free, cells within the robot radius of it are not, behind it is unknown."""
    pose = camera_pose(0.0, 0.0, math.pi / 2, 1.5)  # yaw pi/2 faces -z
    g = free_space_grid([wall_depth(3.0)], pose[None], INTR.K, cell=0.1, band=(0.1, 1.5), robot_radius=0.4)
    assert g.method == "depth" and g.height_band == (0.1, 1.5)
    assert g.free[cell_of(g, 0.0, -1.5)] and g.free[cell_of(g, 0.0, -2.5)]
    assert not g.free[cell_of(g, 0.0, -2.75)]  # 0.25 m from the wall
    assert not g.free[cell_of(g, 0.0, -3.2)]  # behind the wall: never seen
    assert g.known_free[cell_of(g, 0.0, 0.0)] and g.free[cell_of(g, 0.0, 0.0)]
    assert not g.free[cell_of(g, 0.0, 0.5)]  # behind the camera: never seen
    assert round(g.origin_x / g.cell, 6).is_integer() and round(g.origin_z / g.cell, 6).is_integer()


def test_an_obstacle_below_the_band_does_not_block():
    """A height band starting above a low obstacle lets the robot over it (it is floor to the map)."""
    pose = camera_pose(0.0, 0.0, math.pi / 2, 1.5)
    d = wall_depth(3.0)
    d[50:, :] = np.minimum(d[50:, :], 2.6)  # something low 2.6 m ahead, seen only in the bottom rows
    # where those pixels land: y = 1.5 - 2.6 * (v + 0.5 - 32) / focal, below 0.65 m for v >= 50
    g_low = free_space_grid([d], pose[None], INTR.K, band=(1.0, 1.5), robot_radius=0.3)
    g_all = free_space_grid([d], pose[None], INTR.K, band=(0.05, 1.5), robot_radius=0.3)
    assert g_low.free[cell_of(g_low, 0.0, -2.45)] and not g_all.free[cell_of(g_all, 0.0, -2.45)]


def test_unreachable_pockets_are_dropped():
    """Free cells not connected to the path (seen past an obstacle the robot cannot pass) are not free."""
    pose = camera_pose(0.0, 0.0, math.pi / 2, 1.5)
    d = wall_depth(6.0)
    d[32:38, :] = np.minimum(d[32:38, :], 2.0)  # a full-width bar 2 m ahead at about 1.3-1.5 m height
    g = free_space_grid([d], pose[None], INTR.K, band=(0.1, 1.6), robot_radius=0.4)
    assert g.free[cell_of(g, 0.0, -1.0)]
    assert not g.free[cell_of(g, 0.0, -4.0)]  # observed floor beyond the bar, but cut off from the path


def test_inf_depth_is_no_evidence():
    """Depth that is all inf (nothing hit / no return) carves nothing: the map is refused as empty."""
    pose = camera_pose(0.0, 0.0, 0.0, 1.5)
    with pytest.raises(FreeSpaceError, match="free-space map is empty"):
        free_space_grid([np.full((64, 64), np.inf, np.float32)], pose[None], INTR.K)


def test_path_corridor():
    """Without depth, cells within robot radius + margin of the path are free; the path is known free."""
    poses = np.stack([camera_pose(x, 0.0, 0.0) for x in np.linspace(0.0, 4.0, 17)])
    g = path_corridor_grid(poses, cell=0.1, robot_radius=0.4, margin=0.3)
    assert g.method == "path" and g.height_band is None
    assert g.free[cell_of(g, 2.0, 0.6)] and not g.free[cell_of(g, 2.0, 0.9)]
    assert g.known_free[cell_of(g, 2.05, 0.05)] and not g.known_free[cell_of(g, 2.0, 0.5)]
    assert g.info()["method"] == "path"


def test_jumps_in_the_path_are_not_joined():
    """Two positions far apart (a relocalisation) are not joined by a known-free segment."""
    poses = np.stack([camera_pose(0.0, 0.0, 0.0), camera_pose(5.0, 0.0, 0.0)])
    g = path_corridor_grid(poses, robot_radius=0.2, margin=0.0)
    assert not g.known_free[cell_of(g, 2.5, 0.05)] and not g.free[cell_of(g, 2.5, 0.05)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"band": (1.0, 0.5)}, "height band"),
        ({"cell": 0.0}, "cell must be a positive"),
        ({"robot_radius": float("nan")}, "robot_radius"),
    ],
)
def test_bad_arguments(kwargs, match):
    """Bad settings raise FreeSpaceError naming them."""
    pose = camera_pose(0.0, 0.0, 0.0, 1.5)
    with pytest.raises(FreeSpaceError, match=match):
        free_space_grid([wall_depth(3.0)], pose[None], INTR.K, **kwargs)


def test_bad_poses_and_huge_grids_are_refused():
    """NaN poses and paths spanning more than MAX_CELLS cells fail with FreeSpaceError."""
    with pytest.raises(FreeSpaceError, match="NaN"):
        path_corridor_grid(np.full((2, 4, 4), np.nan))
    poses = np.stack([camera_pose(0.0, 0.0, 0.0), camera_pose(1e5, 1e5, 0.0)])
    with pytest.raises(FreeSpaceError, match=f"more than {MAX_CELLS}"):
        path_corridor_grid(poses)
    with pytest.raises(FreeSpaceError, match="depth maps for"):
        free_space_grid([wall_depth(3.0)] * 2, poses[:1], INTR.K)
