"""Tests of the camera node in a recorded world: ``rtfm-camera -p world:=FILE`` drives with the file's walls.

The node runs in a subprocess (the ``camera_node`` fixture of test_ros_camera_node, which always
stops it); the world file is a FourRooms walk with MiniWorld's own free-space grid.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")

from test_ros_camera_node import _depth_array, _pose_matrix, camera_node  # noqa: E402, F401  (a fixture)
from test_scenes_recorded import write_miniworld_world  # noqa: E402

from rtfm_env.geometry import pose_to_state, ros_to_world  # noqa: E402
from rtfm_env.scenes import RecordedScene  # noqa: E402


def _rtfm_camera() -> list[str]:
    """The installed ``rtfm-camera`` entry point, as a command line."""
    exe = Path(sys.executable).with_name("rtfm-camera")
    path = str(exe) if exe.is_file() else shutil.which("rtfm-camera")
    if path is None:
        pytest.skip("rtfm-camera is not installed (pip install -e '.[ros]')")
    return [path, "--ros-args"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A world file with a free-space map: a FourRooms walk (seed 0)."""
    path = tmp_path_factory.mktemp("worlds") / "lab.rtfm"
    scene, _ = write_miniworld_world(path)
    scene.close()
    return path


def _xz(msg) -> tuple[float, float]:
    """World floor point (x, z) of the robot in a camera/pose message."""
    state = pose_to_state(ros_to_world(_pose_matrix(msg)))
    return state.x, state.z


def test_world_file_publishes_and_stops_at_the_grids_walls(camera_node, world):  # noqa: F811
    """world:=FILE camera:=reprojection: image, depth, camera info; driving forward ends at a wall of the grid."""
    scene = RecordedScene(world)
    n = camera_node(command=_rtfm_camera(), world=str(world), camera="reprojection", rate_hz=20.0, seed=0)
    n.spin_until(lambda: len(n.depths) >= 2 and len(n.infos) >= 2 and n.poses, 30.0, "depth and camera info")
    image = n.images[-1][1]
    assert (image.encoding, image.width, image.height) == ("rgb8", 64, 64)
    depth = _depth_array(n.depths[-1])
    assert depth.shape == (64, 64) and (np.isfinite(depth) & (depth > 0)).mean() > 0.3
    assert n.infos[-1].k[0] > 0 and (n.infos[-1].width, n.infos[-1].height) == (64, 64)
    start = scene.reset(0)
    assert _xz(n.poses[0]) == pytest.approx((start.x, start.z), abs=1e-6)  # the recorded scene's seeded start

    n.spin_for(8.0, each=n.twist(2.0, 0.0))  # FourRooms is about 14 m across: 16 m ends at a wall
    last = n.odoms[-10:]
    assert all(o.twist.twist.linear.x == 0.0 for o in last), "robot still moving after 8 s at 2 m/s"
    positions = [(o.pose.pose.position.x, o.pose.pose.position.y) for o in last]
    assert positions[0] == positions[-1]
    stopped = pose_to_state(ros_to_world(_pose_matrix(n.poses[-1])))
    assert np.hypot(stopped.x - start.x, stopped.z - start.z) > 0.5
    assert all(scene.is_free(*_xz(p)) for p in n.poses)  # never inside an occupied cell
    _, collided = scene.move(stopped, (2.0, 0.0, 0.05))  # the next frame's step is blocked by the grid
    assert collided


def test_scene_file_with_a_map_is_the_recorded_world(camera_node, world):  # noqa: F811
    """scene:=FILE with a map: the node starts at the recorded scene's seeded start and publishes."""
    scene = RecordedScene(world)
    n = camera_node(scene=str(world), camera="reprojection", rate_hz=10.0, seed=4)
    start = scene.reset(4)
    n.spin_until(lambda: bool(n.poses), 10.0, "camera/pose")
    assert _xz(n.poses[0]) == pytest.approx((start.x, start.z), abs=1e-6)
    n.images_keep_coming()
