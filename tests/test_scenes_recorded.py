"""Tests of rtfm_env.scenes.recorded: a world file's free-space grid as a scene, without a renderer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rtfm_env import worlds
from rtfm_env.cameras import GroundTruthCamera, ReprojectionCamera
from rtfm_env.geometry import DiscreteAction, Intrinsics, KinematicsConfig, RobotState, apply_discrete, camera_pose
from rtfm_env.memory import MemoryFormatError, SpatialMemory
from rtfm_env.scenes import MiniWorldScene, NoFreeSpaceError, RecordedScene, WorldFileError, grid, miniworld
from rtfm_env.scenes.recorded import looks_like_file

CELL = 0.1  # metres per cell of the synthetic grids


def path_cells(top_down, xz: np.ndarray, spacing: float = 0.05) -> np.ndarray:
    """uint8 grid of the map's shape, 1 on the cells a polyline through floor points ``xz`` (N, 2) crosses."""
    points = [xz[0]]
    for a, b in zip(xz[:-1], xz[1:], strict=True):
        n = max(1, math.ceil(float(np.linalg.norm(b - a)) / spacing))
        points += [a + (b - a) * k / n for k in range(1, n + 1)]
    points = np.asarray(points)
    rows, cols = top_down.world_to_cell(points[:, 0], points[:, 1])
    known = np.zeros(top_down.free.shape, dtype=np.uint8)
    inside = (rows >= 0) & (rows < known.shape[0]) & (cols >= 0) & (cols < known.shape[1])
    known[rows[inside], cols[inside]] = 1
    return known


def world_info(top_down, frames: int, cam_height: float = 1.5, radius: float = 0.4, method: str = "path") -> dict:
    """The ``info`` of a world file whose free space is ``top_down``'s grid (the builder's format)."""
    rows, cols = top_down.free.shape
    return {
        "kind": "rtfm-world",
        "world_version": 1,
        "source": {"kind": "test"},
        "frames": frames,
        "time_span": None,
        "bounds": {
            "x": [top_down.origin_x, top_down.origin_x + cols * top_down.cell],
            "z": [top_down.origin_z, top_down.origin_z + rows * top_down.cell],
        },
        "cam_height": cam_height,
        "free_space": {
            "origin_x": top_down.origin_x,
            "origin_z": top_down.origin_z,
            "cell": top_down.cell,
            "method": method,
            "height_band": [0.1, 1.6],
            "robot_radius": radius,
        },
    }


def write_miniworld_world(
    path: Path, env_id: str = "MiniWorld-FourRooms-v0", seed: int = 0, kind: str = "walk", resolution: int = 64
) -> tuple[MiniWorldScene, SpatialMemory]:
    """A world file of a MiniWorld recording, with MiniWorld's own free-space grid and the walk's path as known free.

    Returns the scene (reset to ``seed``: the caller closes it) and the saved memory.
    """
    scene = MiniWorldScene(env_id, resolution, resolution, 60.0)
    start = scene.reset(seed)
    memory = worlds.build_memory(scene, kind, start.pose())
    top = scene.top_down_map()
    poses = memory.poses(memory.ids)
    known = path_cells(top, poses[:, [0, 2], 3]) & top.free.astype(np.uint8)
    attachments = {"free_space": top.free.astype(np.uint8), "known_free": known}
    memory.save(path, attachments=attachments, info=world_info(top, len(memory), radius=scene.radius))
    return scene, memory


class _Grid:
    """A TopDownMap-like grid for synthetic worlds."""

    def __init__(self, free: np.ndarray, origin_x: float = 0.0, origin_z: float = 0.0, cell: float = CELL) -> None:
        self.free, self.origin_x, self.origin_z, self.cell = free, origin_x, origin_z, cell


def write_grid_world(
    path: Path,
    free: np.ndarray,
    known: np.ndarray | None = None,
    frame_xz: tuple[float, float] = (1.0, 1.0),
    attachments: dict | None = None,
    info: dict | None = None,
) -> Path:
    """A small world file: two 16x16 RGB-D frames at ``frame_xz`` and the given grid (cell 0.1 m, origin 0)."""
    memory = SpatialMemory()
    rng = np.random.default_rng(0)
    for yaw in (0.0, math.pi / 2):
        pose = camera_pose(frame_xz[0], frame_xz[1], yaw, 1.2)
        frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        memory.add(frame, pose, Intrinsics(16, 16, 70.0), "observed", step=0, depth=np.full((16, 16), 2.0, np.float32))
    g = _Grid(free)
    if attachments is None:
        attachments = {"free_space": free.astype(np.uint8)}
        if known is not None:
            attachments["known_free"] = known.astype(np.uint8)
    memory.save(
        path, attachments=attachments, info=world_info(g, len(memory), cam_height=1.2) if info is None else info
    )
    return path


def walled_room() -> np.ndarray:
    """A 4 m x 4 m free room (40 x 40 cells, a border of walls) split at x = 2 m by a one-cell wall with no door."""
    free = np.zeros((40, 40), dtype=bool)
    free[1:39, 1:39] = True
    free[:, 20] = False  # cells x in [2.0, 2.1)
    return free


@pytest.fixture(scope="module")
def fourrooms_world(tmp_path_factory):
    """A world file of a FourRooms walk (seed 0) with MiniWorld's grid, and the MiniWorld scene it came from."""
    path = tmp_path_factory.mktemp("worlds") / "fourrooms.rtfm"
    scene, memory = write_miniworld_world(path)
    yield path, scene, memory
    scene.close()


# --------------------------------------------------------------------------------------
# Reading a world
# --------------------------------------------------------------------------------------


def test_scene_reads_the_grid_intrinsics_and_metadata(fourrooms_world):
    """env_id, intrinsics, camera height, radius and the top-down map come from the file."""
    path, mw, memory = fourrooms_world
    scene = RecordedScene(path)
    assert scene.env_id == "world:fourrooms" and "fourrooms.rtfm" in repr(scene)
    assert scene.intrinsics == Intrinsics(64, 64, 60.0) and scene.cam_height == 1.5 and scene.radius == mw.radius
    top, expected = scene.top_down_map(), mw.top_down_map()
    np.testing.assert_array_equal(top.free, expected.free)
    assert (top.origin_x, top.origin_z, top.cell) == (expected.origin_x, expected.origin_z, expected.cell)
    assert top.image.dtype == np.uint8 and top.image.ndim == 3 and top.image.shape[2] == 3
    assert top.image.shape[0] / top.image.shape[1] == pytest.approx(top.free.shape[0] / top.free.shape[1])
    assert scene.known_free.any() and not (scene.known_free & ~top.free).any()
    assert scene.info["kind"] == "rtfm-world"


def test_miniworld_scene_uses_the_shared_grid_graph():
    """MiniWorld's free-space graph is the shared one (rtfm_env.scenes.grid), not a copy."""
    assert miniworld._FreeSpace is grid.FreeSpace


# --------------------------------------------------------------------------------------
# Navigation
# --------------------------------------------------------------------------------------


def test_geodesic_distance_and_paths_equal_miniworlds_on_the_same_grid(fourrooms_world):
    """On MiniWorld's own grid, geodesic distances and shortest paths are MiniWorld's, exactly."""
    path, mw, _ = fourrooms_world
    scene = RecordedScene(path)
    rng = np.random.default_rng(1)
    checked_through_doors = 0
    for _ in range(40):
        a, b = mw.sample_free_state(rng), mw.sample_free_state(rng)
        pa, pb = np.array([a.x, a.z]), np.array([b.x, b.z])
        d = scene.geodesic_distance(pa, pb)
        assert d == mw.geodesic_distance(pa, pb)
        np.testing.assert_array_equal(scene.shortest_path(pa, pb), mw.shortest_path(pa, pb))
        checked_through_doors += d > np.linalg.norm(pb - pa) + 1e-6
    assert checked_through_doors >= 5  # FourRooms: many pairs are in different rooms


def test_is_free_is_the_grid(fourrooms_world):
    """is_free is True exactly in free cells; outside the grid it is False; NaN is refused."""
    path, mw, _ = fourrooms_world
    scene = RecordedScene(path)
    top = scene.top_down_map()
    rows, cols = top.free.shape
    rng = np.random.default_rng(2)
    xs = rng.uniform(top.origin_x - 1, top.origin_x + cols * top.cell + 1, 300)
    zs = rng.uniform(top.origin_z - 1, top.origin_z + rows * top.cell + 1, 300)
    r, c = top.world_to_cell(xs, zs)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    for x, z, i, j, ok in zip(xs, zs, r, c, inside, strict=True):
        assert scene.is_free(x, z) == (ok and bool(top.free[i, j]))
    with pytest.raises(ValueError, match="finite"):
        scene.is_free(math.nan, 0.0)


def test_discrete_moves_have_miniworlds_kinematics_and_stop_at_walls(tmp_path):
    """Forward steps of 0.25 m and 15-degree turns as MiniWorld; a blocked forward keeps the position."""
    scene = RecordedScene(write_grid_world(tmp_path / "room.rtfm", walled_room()))
    state = RobotState(1.0, 2.0, 0.0, 1.2)  # facing +x, towards the wall at x = 2.0 m
    kin = KinematicsConfig()
    for action in (DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT, DiscreteAction.FORWARD):
        moved, collided = scene.move(state, action)
        assert moved == apply_discrete(state, action, kin) and not collided
    for _ in range(3):  # 1.0 -> 1.75 m: still free (the wall's cells begin at 2.0 m)
        state, collided = scene.move(state, DiscreteAction.FORWARD)
        assert not collided
    assert state.x == pytest.approx(1.75)
    blocked, collided = scene.move(state, DiscreteAction.FORWARD)  # 2.0 m is the wall
    assert collided and (blocked.x, blocked.z) == (state.x, state.z)
    turned, collided = scene.move(state, DiscreteAction.TURN_LEFT)
    assert not collided and turned.yaw == pytest.approx(kin.turn_step)
    with pytest.raises(ValueError, match="unknown discrete action"):
        scene.move(state, 99)
    with pytest.raises(ValueError, match="integer id"):
        scene.move(state, 1.5)


def test_velocity_commands_are_checked_along_the_path(tmp_path):
    """A long (v, omega, dt) command cannot tunnel through a one-cell wall; free arcs integrate as geometry."""
    scene = RecordedScene(write_grid_world(tmp_path / "room.rtfm", walled_room()))
    state = RobotState(1.0, 2.0, 0.0, 1.2)
    moved, collided = scene.move(state, (10.0, 0.0, 0.2))  # 2 m: would land at x = 3.0 m, beyond the wall
    assert collided and (moved.x, moved.z) == (state.x, state.z)
    moved, collided = scene.move(state, (1.0, 0.5, 0.5))
    assert not collided and math.hypot(moved.x - state.x, moved.z - state.z) == pytest.approx(0.5, rel=0.01)
    moved, collided = scene.move(state, (0.0, 1.0, 0.5))  # a turn in place never collides
    assert not collided and moved.yaw == pytest.approx(0.5)
    with pytest.raises(ValueError):
        scene.move(state, (math.nan, 0.0, 0.1))
    with pytest.raises(ValueError, match="dt"):
        scene.move(state, (1.0, 0.0, -0.1))


def test_unreachable_side_is_infinitely_far(tmp_path):
    """Across a wall with no door: geodesic distance inf and no path."""
    scene = RecordedScene(write_grid_world(tmp_path / "room.rtfm", walled_room()))
    a, b = np.array([1.0, 2.0]), np.array([3.0, 2.0])
    assert scene.geodesic_distance(a, b) == math.inf
    assert scene.shortest_path(a, b).shape == (0, 2)
    assert scene.geodesic_distance(a, np.array([1.5, 3.0])) == pytest.approx(math.hypot(0.5, 1.0))


def test_starts_are_seeded_and_in_known_free_cells(fourrooms_world):
    """reset(seed) is reproducible, lands in known-free cells and faces as the nearest recorded camera."""
    path, _, memory = fourrooms_world
    scene = RecordedScene(path)
    top = scene.top_down_map()
    starts = [scene.reset(seed) for seed in range(12)]
    assert [scene.reset(seed) for seed in range(12)] == starts
    assert len({(s.x, s.z) for s in starts}) == 12
    assert scene.seed == 11 and scene.start_state == starts[-1]
    poses = memory.poses(memory.ids)
    for s in starts:
        r, c = top.world_to_cell(s.x, s.z)
        assert scene.known_free[r, c] and scene.is_free(s.x, s.z)
        assert (s.cam_height, s.pitch) == (1.5, 0.0)
        nearest = poses[np.argmin(np.hypot(poses[:, 0, 3] - s.x, poses[:, 2, 3] - s.z))]
        forward = -nearest[:3, 2]
        assert s.yaw == pytest.approx(math.atan2(-forward[2], forward[0]))
    with pytest.raises(ValueError, match="seed"):
        scene.reset(-1)


def test_free_states_and_goals_are_drawn_in_the_known_free_region(fourrooms_world):
    """sample_free_state and sample_goal stay in known-free cells; goals respect the geodesic range."""
    path, _, _ = fourrooms_world
    scene = RecordedScene(path)
    top = scene.top_down_map()
    rng = np.random.default_rng(3)
    start = scene.reset(0)
    start_xz = np.array([start.x, start.z])
    for _ in range(20):
        s = scene.sample_free_state(rng)
        r, c = top.world_to_cell(s.x, s.z)
        assert scene.known_free[r, c]
        goal = scene.sample_goal(rng, start_xz, 1.0, 4.0)
        r, c = top.world_to_cell(goal[0], goal[1])
        assert scene.known_free[r, c]
        assert 1.0 <= scene.geodesic_distance(start_xz, goal) <= 4.0
    a = scene.sample_free_state(np.random.default_rng(5))
    assert scene.sample_free_state(np.random.default_rng(5)) == a
    with pytest.raises(TypeError, match="Generator"):
        scene.sample_free_state(5)


def test_known_free_region_defaults_to_all_free_cells(tmp_path):
    """Without a known_free attachment, starts may be any free cell of the main free space."""
    free = walled_room()
    scene = RecordedScene(write_grid_world(tmp_path / "room.rtfm", free))
    np.testing.assert_array_equal(scene.known_free, free)
    # The two halves hold as many cells; starts stay in one of them, so goals are always reachable.
    sides = {scene.reset(seed).x < 2.0 for seed in range(10)}
    assert len(sides) == 1


# --------------------------------------------------------------------------------------
# No renderer
# --------------------------------------------------------------------------------------


def test_render_is_none_and_ground_truth_refuses(fourrooms_world):
    """Render and render_depth give None; the ground-truth camera and the regimes refuse the scene."""
    path, _, _ = fourrooms_world
    scene = RecordedScene(path)
    pose = scene.reset(0).pose()
    assert scene.render(pose) is None and scene.render_depth(pose) is None
    with pytest.raises(RuntimeError, match="no ground-truth renderer"):
        GroundTruthCamera().reset(scene, pose)
    with pytest.raises(RuntimeError, match="no ground-truth (RGB-D )?renderer"):
        worlds.build_memory(scene, "walk", pose)
    camera = ReprojectionCamera(world=path)  # the file itself is what a memory camera shows
    frame, depth = camera.reset_rgbd(scene, pose)
    assert frame.shape == (64, 64, 3) and depth.shape == (64, 64)


# --------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------


def _plain_memory(path: Path) -> Path:
    memory = SpatialMemory()
    memory.add(np.zeros((16, 16, 3), np.uint8), camera_pose(1.0, 1.0, 0.0), Intrinsics(16, 16, 60.0), "observed")
    memory.save(path)
    return path


def test_a_memory_without_a_map_is_refused_with_how_to_build_one(tmp_path):
    """A saved memory (no free-space attachment or info) raises NoFreeSpaceError naming the file and the builder."""
    path = _plain_memory(tmp_path / "saved.rtfm")
    with pytest.raises(NoFreeSpaceError, match=r"saved\.rtfm.*no attachment 'free_space'.*rtfm-env world build"):
        RecordedScene(path)
    free = walled_room()
    no_info = write_grid_world(tmp_path / "noinfo.rtfm", free, info={"kind": "rtfm-world"})
    with pytest.raises(NoFreeSpaceError, match=r"noinfo\.rtfm.*no info\['free_space'\].*rtfm-env world build"):
        RecordedScene(no_info)


def _bad_info(**free_space: object) -> dict:
    info = world_info(_Grid(walled_room()), 2)
    info["free_space"].update(free_space)
    return info


@pytest.mark.parametrize(
    "attachments, info, message",
    [
        ({"free_space": walled_room().astype(np.float32)}, None, "2-D uint8"),
        ({"free_space": walled_room().astype(np.uint8) * 2}, None, "2-D uint8 grid of 0 and 1"),
        ({"free_space": np.zeros((40, 40), np.uint8)}, None, "no free cell"),
        ({"free_space": np.ones(40, np.uint8)}, None, "2-D"),
        (
            {"free_space": walled_room().astype(np.uint8), "known_free": np.ones((4, 4), np.uint8)},
            None,
            "known_free",
        ),
        (
            {"free_space": walled_room().astype(np.uint8), "known_free": np.zeros((40, 40), np.uint8)},
            None,
            "both free and known_free",
        ),
        ({"free_space": walled_room().astype(np.uint8)}, _bad_info(cell=0.0), "cell"),
        ({"free_space": walled_room().astype(np.uint8)}, _bad_info(cell="0.1"), "cell"),
        ({"free_space": walled_room().astype(np.uint8)}, _bad_info(origin_x=None), "origin_x"),
        ({"free_space": walled_room().astype(np.uint8)}, _bad_info(origin_z=True), "origin_z"),
    ],
    ids=[
        "float grid",
        "values 2",
        "empty map",
        "1-D",
        "known shape",
        "known empty",
        "cell 0",
        "cell str",
        "origin_x none",
        "origin_z bool",
    ],
)
def test_malformed_maps_are_refused_clearly(tmp_path, attachments, info, message):
    """A malformed grid or grid metadata raises WorldFileError naming the file and the problem."""
    path = write_grid_world(tmp_path / "bad.rtfm", walled_room(), attachments=attachments, info=info)
    with pytest.raises(WorldFileError, match=message) as err:
        RecordedScene(path)
    assert "bad.rtfm" in str(err.value) and "rtfm-env world build" in str(err.value)
    assert not isinstance(err.value, NoFreeSpaceError)


def test_missing_and_corrupt_files_are_refused(tmp_path):
    """No file: FileNotFoundError; not a memory: MemoryFormatError; a non-path: TypeError."""
    with pytest.raises(FileNotFoundError, match="nowhere.rtfm"):
        RecordedScene(tmp_path / "nowhere.rtfm")
    junk = tmp_path / "junk.rtfm"
    junk.write_bytes(json.dumps({"not": "a memory"}).encode())
    with pytest.raises(MemoryFormatError, match="junk.rtfm"):
        RecordedScene(junk)
    with pytest.raises(TypeError, match="path"):
        RecordedScene(5)


def test_looks_like_file_tells_paths_from_miniworld_ids(tmp_path):
    """Names with a directory part or a suffix, or existing files, are files; MiniWorld ids are not."""
    assert looks_like_file("world.rtfm") and looks_like_file("./w") and looks_like_file(str(tmp_path / "x"))
    assert not looks_like_file("MiniWorld-FourRooms-v0") and not looks_like_file("Maze") and not looks_like_file("")
