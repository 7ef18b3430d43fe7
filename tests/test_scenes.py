"""Tests for rtfm_env.scenes: env id lists, MiniWorldScene (layouts, rendering, motion, free space)."""

import contextlib
import io
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import psutil
import pytest

from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState, camera_pose
from rtfm_env.scenes import (
    HELDOUT_IDS,
    TRAIN_IDS,
    MiniWorldScene,
    Scene,
    TopDownMap,
    miniworld_env_ids,
    resolve_env_id,
)
from rtfm_env.scenes.miniworld import _FreeSpace, pool_stats


@pytest.fixture
def make_scene():
    """Factory for scenes that are closed (returned to the pool) after the test."""
    scenes = []

    def make(env_id="MiniWorld-OneRoom-v0", seed=None, **kw):
        scene = MiniWorldScene(env_id, **kw)
        scenes.append(scene)
        if seed is not None:
            scene.reset(seed)
        return scene

    yield make
    for s in scenes:
        s.close()


def _xz(state):
    return np.array([state.x, state.z])


def _segment_free(scene, a, b, step=0.01):
    n = max(2, int(math.ceil(np.linalg.norm(b - a) / step)) + 1)
    return all(scene.is_free(*(a + t * (b - a))) for t in np.linspace(0.0, 1.0, n))


# --------------------------------------------------------------------------------------
# Env ids and the package import
# --------------------------------------------------------------------------------------


def test_id_lists_are_registered_and_disjoint():
    """TRAIN_IDS and HELDOUT_IDS name registered MiniWorld envs and never overlap."""
    valid = set(miniworld_env_ids())
    assert len(TRAIN_IDS) == 11 and len(HELDOUT_IDS) == 3
    assert set(TRAIN_IDS) <= valid and set(HELDOUT_IDS) <= valid
    assert not set(TRAIN_IDS) & set(HELDOUT_IDS)
    assert all(i.startswith("MiniWorld-") for i in valid) and "MiniWorld-Sidewalk-v0" in valid


def test_resolve_env_id_accepts_short_names_and_rejects_unknown():
    """Short names resolve to full ids; unknown names fail listing the valid ids."""
    assert resolve_env_id("Maze") == "MiniWorld-Maze-v0"
    assert resolve_env_id("MiniWorld-YMaze-v0") == "MiniWorld-YMaze-v0"
    with pytest.raises(ValueError, match="valid ids: .*MiniWorld-Maze-v0"):
        resolve_env_id("NoSuchWorld")


def test_import_sets_headless_before_miniworld():
    """A fresh interpreter importing rtfm_env.scenes renders without a display (headless EGL)."""
    code = (
        "import pyglet, numpy as np\n"
        "from rtfm_env.scenes import MiniWorldScene\n"
        "s = MiniWorldScene('OneRoom', width=16, height=16); st = s.reset(0)\n"
        "print(pyglet.options['headless'], s.render(st.pose()).shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "RTFM_HEADLESS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True (16, 16, 3)"


# --------------------------------------------------------------------------------------
# Construction, pool, lifecycle
# --------------------------------------------------------------------------------------


def test_unknown_env_id_raises_with_valid_ids():
    """An unknown env id is a ValueError that lists the valid ids."""
    with pytest.raises(ValueError, match="MiniWorld-OneRoom-v0"):
        MiniWorldScene("MiniWorld-Atlantis-v0")


@pytest.mark.parametrize(
    "kw",
    [
        {"width": 0},
        {"height": -4},
        {"width": 64.5},
        {"width": True},
        {"fov_y": 0.0},
        {"fov_y": 200.0},
        {"cell": 0.0},
        {"cell": float("nan")},
        {"cam_height": -1.0},
        {"cam_height": float("inf")},
    ],
)
def test_bad_constructor_arguments_raise(kw):
    """Bad sizes, fields of view, cells and camera heights raise ValueError."""
    with pytest.raises(ValueError):
        MiniWorldScene("OneRoom", **kw)


def test_scene_is_a_scene_with_intrinsics(make_scene):
    """MiniWorldScene implements the Scene ABC with the requested intrinsics and full id."""
    scene = make_scene("OneRoom", width=48, height=32, fov_y=75.0)
    assert isinstance(scene, Scene)
    assert scene.env_id == "MiniWorld-OneRoom-v0" and scene.seed is None
    assert (scene.intrinsics.width, scene.intrinsics.height, scene.intrinsics.fov_y) == (48, 32, 75.0)
    scene.reset(3)
    assert scene.seed == 3
    assert scene.render(scene.start_state.pose()).shape == (32, 48, 3)


def test_live_scenes_get_distinct_envs_and_closed_envs_are_reused(make_scene):
    """Two live scenes of one id hold different envs; a closed scene's env goes to the next scene."""
    a, b = make_scene("Hallway"), make_scene("Hallway")
    assert a.miniworld_env is not b.miniworld_env
    env_a = a.miniworld_env
    a.close()
    a.close()  # idempotent
    c = make_scene("Hallway")
    assert c.miniworld_env is env_a
    d = make_scene("Hallway", width=32, height=32)  # another resolution never gets a 64x64 env
    assert d.miniworld_env is not env_a and d.miniworld_env.obs_fb.width == 32


def test_methods_need_a_layout_and_an_open_scene(make_scene):
    """Using a scene before reset, or after close, raises RuntimeError."""
    scene = make_scene("OneRoom")
    with pytest.raises(RuntimeError, match="reset"):
        scene.render(camera_pose(5.0, 5.0, 0.0))
    with pytest.raises(RuntimeError, match="reset"):
        scene.move(RobotState(5.0, 5.0, 0.0), DiscreteAction.FORWARD)
    scene.reset(0)
    scene.close()
    with pytest.raises(RuntimeError, match="closed"):
        scene.render(camera_pose(5.0, 5.0, 0.0))
    with pytest.raises(RuntimeError, match="closed"):
        scene.reset(1)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", None, True])
def test_bad_seed_raises(make_scene, seed):
    """A seed that is not a non-negative integer is refused by reset."""
    with pytest.raises(ValueError, match="seed"):
        make_scene("OneRoom").reset(seed)


# --------------------------------------------------------------------------------------
# Layouts and rendering
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["MiniWorld-OneRoom-v0", "MiniWorld-Maze-v0", "MiniWorld-PutNext-v0"])
def test_same_seed_same_world_bit_identical(make_scene, env_id):
    """Two scenes (two envs) reset with one seed give the same start and bit-identical frames."""
    a, b = make_scene(env_id), make_scene(env_id)
    sa, sb = a.reset(11), b.reset(11)
    assert sa == sb
    other = camera_pose(sa.x, sa.z, sa.yaw + 2.0, 1.2, 0.3)
    for pose in (sa.pose(), other):
        assert np.array_equal(a.render(pose), b.render(pose))
    np.testing.assert_array_equal(a.top_down_map().free, b.top_down_map().free)
    sc = b.reset(12)
    assert sc != sa or not np.array_equal(a.render(sa.pose()), b.render(sa.pose()))


def test_reset_reproduces_an_earlier_layout(make_scene):
    """Resetting back to a seed reproduces its start state and frames exactly."""
    scene = make_scene("FourRooms")
    s1 = scene.reset(5)
    frame = scene.render(s1.pose())
    scene.reset(6)
    assert scene.reset(5) == s1
    assert np.array_equal(scene.render(s1.pose()), frame)


def test_scenes_do_not_draw_each_others_worlds(make_scene):
    """Resetting one scene leaves what another live scene of the same id renders unchanged."""
    a, b = make_scene("PutNext", seed=1), make_scene("PutNext", seed=1)
    s = a.start_state
    poses = [camera_pose(s.x, s.z, s.yaw + k * math.pi / 4) for k in range(8)]
    before = [a.render(p) for p in poses]
    b.reset(2)
    b.render(b.start_state.pose())
    assert all(np.array_equal(a.render(p), f) for p, f in zip(poses, before, strict=True))
    assert not all(np.array_equal(b.render(p), f) for p, f in zip(poses, before, strict=True))


@pytest.mark.parametrize("env_id", ["MiniWorld-FourRooms-v0", "MiniWorld-Sign-v0"])
def test_render_matches_miniworld_agent_view(make_scene, env_id):
    """render(camera_pose(agent state)) is bit-identical to MiniWorld's own agent observation."""
    scene = make_scene(env_id)
    start = scene.reset(3)
    with contextlib.redirect_stdout(io.StringIO()):
        raw = gym.make(env_id, obs_width=64, obs_height=64, disable_env_checker=True).unwrapped
    obs, _ = raw.reset(seed=3)
    if isinstance(obs, dict):  # Sign observes {"obs": image, "goal": colour}
        obs = obs["obs"]
    agent = raw.agent
    assert (start.x, start.z) == (agent.pos[0], agent.pos[2])
    assert np.array_equal(scene.render(start.pose()), obs)
    # MiniWorld's actions: 0 turn left, 1 turn right, 2 forward; its dir is our yaw.
    for action in (0, 0, 2, 2, 1, 1, 1, 2):
        obs, *_ = raw.step(action)
        obs = obs["obs"] if isinstance(obs, dict) else obs
        assert np.array_equal(scene.render(camera_pose(agent.pos[0], agent.pos[2], agent.dir)), obs)
    agent.cam_pitch, agent.cam_height = -20.0, 1.1  # MiniWorld's pitch is in degrees
    pose = camera_pose(agent.pos[0], agent.pos[2], agent.dir, 1.1, math.radians(-20.0))
    assert np.array_equal(scene.render(pose), raw.render_obs())
    raw.close()


@pytest.mark.parametrize(
    ("x", "z", "yaw", "expected"),
    [
        (5.0, 5.0, 0.0, 5.0),  # facing +x: the wall x = 10
        (3.0, 5.0, 0.0, 7.0),
        (5.0, 2.0, math.pi / 2, 2.0),  # facing -z: the wall z = 0
        (5.0, 6.5, -math.pi / 2, 3.5),  # facing +z: the wall z = 10
        (2.5, 5.0, math.pi, 2.5),  # facing -x: the wall x = 0
    ],
)
def test_depth_follows_the_yaw_convention(make_scene, x, z, yaw, expected):
    """Depth along the optical axis to the wall the base faces (cos yaw, 0, -sin yaw) is exact."""
    scene = make_scene("OneRoom", seed=5)  # its box stands near (8.4, 2.6), out of the way
    depth = scene.render_depth(camera_pose(x, z, yaw))
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    # A wall facing the camera is a plane at constant optical depth; the box may hide part of it.
    row = depth[32]
    assert np.median(row) == pytest.approx(expected, abs=1e-4)
    assert np.all(np.isfinite(depth))


def test_depth_is_infinite_at_open_sky(make_scene):
    """Pixels that see no surface (roofless PickupObjects, looking up) have infinite depth."""
    scene = make_scene("PickupObjects", seed=0)
    s = scene.start_state
    depth = scene.render_depth(camera_pose(s.x, s.z, s.yaw, 1.5, math.radians(80)))
    assert np.isinf(depth).mean() > 0.5


@pytest.mark.parametrize(
    "pose",
    [
        np.eye(3),
        np.full((4, 4), np.nan),
        np.vstack([camera_pose(5.0, 5.0, 0.0)[:3], [0.0, 0.0, 0.0, 2.0]]),
        camera_pose(5.0, 5.0, 0.3) @ np.array([[0.8, -0.6, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        camera_pose(5.0, 5.0, 0.3, 1.5, math.pi / 2),
    ],
    ids=["shape", "nan", "bottom-row", "roll", "straight-up"],
)
def test_bad_render_poses_raise(make_scene, pose):
    """Malformed, rolled or vertical poses raise ValueError in render and render_depth."""
    scene = make_scene("OneRoom", seed=0)
    with pytest.raises(ValueError):
        scene.render(pose)
    with pytest.raises(ValueError):
        scene.render_depth(pose)


# --------------------------------------------------------------------------------------
# Motion
# --------------------------------------------------------------------------------------


def test_forward_and_turns_in_open_space(make_scene):
    """Forward moves exactly 0.25 m along (cos yaw, -sin yaw); turns and looks keep the position."""
    scene = make_scene("OneRoom", seed=5)
    state = RobotState(5.0, 5.0, 0.7)
    assert scene.is_free(5.0, 5.0) and scene.is_free(5.0 + 0.25 * math.cos(0.7), 5.0 - 0.25 * math.sin(0.7))
    moved, collided = scene.move(state, DiscreteAction.FORWARD)
    assert not collided
    assert moved.x == pytest.approx(5.0 + 0.25 * math.cos(0.7), abs=1e-12)
    assert moved.z == pytest.approx(5.0 - 0.25 * math.sin(0.7), abs=1e-12)
    turned, collided = scene.move(state, np.int64(DiscreteAction.TURN_LEFT))
    assert not collided and (turned.x, turned.z) == (5.0, 5.0)
    assert turned.yaw == pytest.approx(0.7 + math.radians(15.0))
    looked, _ = scene.move(state, DiscreteAction.LOOK_DOWN)
    assert looked.pitch == pytest.approx(-math.radians(15.0)) and (looked.x, looked.z) == (5.0, 5.0)
    assert scene.move(state, DiscreteAction.STOP) == (state, False)


def test_walking_into_a_wall_is_blocked(make_scene):
    """Forward steps towards a wall stop at the robot's radius; the blocked step keeps position, not yaw."""
    scene = make_scene("OneRoom", seed=0)
    state = RobotState(1.5, 5.0, math.pi)  # facing -x, towards the wall x = 0
    for _ in range(10):
        nxt, collided = scene.move(state, DiscreteAction.FORWARD)
        if collided:
            break
        state = nxt
    assert collided and (nxt.x, nxt.z) == (state.x, state.z)
    assert scene.radius <= state.x < scene.radius + 0.25
    turned, collided = scene.move(state, (0.5, 1.0, 1.0))  # an arc into the wall: blocked, still turns
    assert collided and (turned.x, turned.z) == (state.x, state.z)
    assert turned.yaw == pytest.approx(math.pi + 1.0 - 2 * math.pi)


def test_continuous_commands_follow_the_unicycle(make_scene):
    """Velocity commands move along straight lines and arcs; turning in place keeps the position."""
    scene = make_scene("OneRoom", seed=5)
    state = RobotState(3.0, 3.0, 0.0)
    straight, collided = scene.move(state, (0.5, 0.0, 2.0))
    assert not collided and (straight.x, straight.z) == pytest.approx((4.0, 3.0))
    arc, collided = scene.move(state, [1.0, 1.0, math.pi / 2])  # quarter circle of radius 1, turning left
    assert not collided
    assert (arc.x, arc.z, arc.yaw) == pytest.approx((4.0, 2.0, math.pi / 2))
    spun, collided = scene.move(state, np.array([0.0, -1.0, 1.0]))
    assert not collided and (spun.x, spun.z, spun.yaw) == pytest.approx((3.0, 3.0, -1.0))


def test_long_commands_cannot_tunnel_through_thin_walls(make_scene):
    """A command whose end is free but whose path crosses a wall is blocked (velocity and big steps)."""
    scene = make_scene("Maze", seed=0)
    big_step = make_scene("Maze", seed=0, kinematics=KinematicsConfig(forward_step=3.25))
    rng = np.random.default_rng(0)
    crossings = 0
    for _ in range(400):
        s = scene.sample_free_state(rng)
        s = s.replace(yaw=float(rng.choice([0.0, math.pi / 2, math.pi, -math.pi / 2])))
        a = _xz(s)
        b = a + 3.25 * np.array([math.cos(s.yaw), -math.sin(s.yaw)])
        if not scene.is_free(*b) or scene.is_free(*(0.5 * (a + b))):
            continue
        crossings += 1
        moved, collided = scene.move(s, (3.25, 0.0, 1.0))
        assert collided and (moved.x, moved.z) == (s.x, s.z)
        moved, collided = big_step.move(s, DiscreteAction.FORWARD)
        assert collided and (moved.x, moved.z) == (s.x, s.z)
        if crossings == 5:
            break
    assert crossings == 5


@pytest.mark.parametrize("env_id", ["MiniWorld-Maze-v0", "MiniWorld-PutNext-v0", "MiniWorld-WallGap-v0"])
def test_random_motion_never_leaves_free_space(make_scene, env_id):
    """Hundreds of random discrete and velocity commands keep the robot in free space."""
    scene = make_scene(env_id, seed=2)
    rng = np.random.default_rng(5)
    state, collisions = scene.start_state, 0
    for _ in range(400):
        if rng.random() < 0.5:
            action = int(
                rng.choice([DiscreteAction.FORWARD] * 3 + [DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT])
            )
        else:
            action = (float(rng.uniform(-0.5, 2.0)), float(rng.uniform(-2.0, 2.0)), float(rng.uniform(0.0, 1.5)))
        state, collided = scene.move(state, action)
        collisions += collided
        assert scene.is_free(state.x, state.z)
    assert collisions > 0  # the walk did reach walls


@pytest.mark.parametrize(
    "action",
    [6, -1, 1.0, True, "forward", None, (float("nan"), 0.0, 1.0), (1.0, float("inf"), 1.0), (1.0, 0.0, -1.0), (1, 2)],
)
def test_bad_actions_raise(make_scene, action):
    """Out-of-range or non-integer ids and NaN/inf/negative-dt/short commands raise ValueError."""
    scene = make_scene("OneRoom", seed=0)
    with pytest.raises(ValueError):
        scene.move(RobotState(5.0, 5.0, 0.0), action)


# --------------------------------------------------------------------------------------
# Free space, geodesic distance, sampling
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id", ["MiniWorld-Maze-v0", "MiniWorld-PutNext-v0", "MiniWorld-RoomObjects-v0", "MiniWorld-YMaze-v0"]
)
def test_free_grid_matches_the_collision_test(make_scene, env_id):
    """Every sampled cell of the grid is free exactly where is_free (move's test) says its centre is."""
    scene = make_scene(env_id, seed=4)
    m = scene.top_down_map()
    assert isinstance(m, TopDownMap) and m.free.dtype == bool and 0.1 < m.free.mean() < 0.95
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, m.free.shape[0], 1500), rng.integers(0, m.free.shape[1], 1500)
    xs, zs = m.cell_to_world(rows, cols)
    exact = np.array([scene.is_free(x, z) for x, z in zip(xs, zs, strict=True)])
    np.testing.assert_array_equal(m.free[rows, cols], exact)
    start = scene.start_state
    r, c = m.world_to_cell(start.x, start.z)
    assert scene.is_free(start.x, start.z) and m.free[r, c]


@pytest.mark.parametrize(
    "env_id", ["MiniWorld-Maze-v0", "MiniWorld-PutNext-v0", "MiniWorld-Sign-v0", "MiniWorld-Sidewalk-v0"]
)
def test_is_free_is_miniworlds_own_collision_test(make_scene, env_id):
    """is_free equals MiniWorld's point_inside (some room) and not intersect, at random points."""
    scene = make_scene(env_id, seed=8)
    env = scene.miniworld_env
    rng = np.random.default_rng(1)
    pts = rng.uniform([env.min_x - 0.5, env.min_z - 0.5], [env.max_x + 0.5, env.max_z + 0.5], size=(2000, 2))
    pts[:1000] = rng.uniform(-0.3, 0.3, size=(1000, 2)) + [scene.start_state.x, scene.start_state.z]
    for x, z in pts:
        p = np.array([x, 0.0, z])
        expected = any(r.point_inside(p) for r in env.rooms) and not env.intersect(env.agent, p, env.agent.radius)
        assert scene.is_free(x, z) == expected, (x, z)


def test_top_down_image_is_aligned_with_the_grid(make_scene):
    """The map image shows floor (not sky) under free cells: image and grid share one extent."""
    scene = make_scene("FourRooms", seed=2)
    m = scene.top_down_map()
    h, w = m.image.shape[:2]
    assert m.image.dtype == np.uint8 and m.image.shape[2] == 3
    assert abs(h / w - m.free.shape[0] / m.free.shape[1]) < 0.02
    sky = np.round(np.array(scene.miniworld_env.sky_color) * 255)
    is_sky = np.all(np.abs(m.image.astype(float) - sky) <= 2, axis=-1)
    rows, cols = np.nonzero(m.free)
    pix_r = ((rows + 0.5) * h / m.free.shape[0]).astype(int)
    pix_c = ((cols + 0.5) * w / m.free.shape[1]).astype(int)
    assert is_sky[pix_r, pix_c].mean() < 0.01
    assert is_sky.mean() > 0.1  # the space between FourRooms' rooms is sky from above


def test_geodesic_equals_euclidean_in_an_open_room(make_scene):
    """With a clear straight line the geodesic distance is the Euclidean one, and never below it."""
    scene = make_scene("OneRoom", seed=0)
    rng = np.random.default_rng(1)
    exact = 0
    for _ in range(40):
        a, b = _xz(scene.sample_free_state(rng)), _xz(scene.sample_free_state(rng))
        d, e = scene.geodesic_distance(a, b), float(np.linalg.norm(b - a))
        assert d >= e - 1e-12
        if _segment_free(scene, a, b):
            assert d == pytest.approx(e, rel=0.03, abs=0.2)
            exact += d == e
    assert exact >= 20


def test_geodesic_goes_around_maze_walls(make_scene):
    """Adjacent maze rooms: straight through an opening, otherwise the long way round the walls."""
    scene = make_scene("Maze", seed=0)
    env = scene.miniworld_env
    pitch = env.room_size + env.gap_size
    direct = around = 0
    for j in range(env.num_rows):
        for i in range(env.num_cols - 1):
            a = np.array([i * pitch + 1.5, j * pitch + 1.5])
            b = a + np.array([pitch, 0.0])
            if not (scene.is_free(*a) and scene.is_free(*b)):
                continue  # the box stands there
            d = scene.geodesic_distance(a, b)
            if scene.is_free(*(0.5 * (a + b))):  # the rooms are connected through the gap
                direct += 1
                assert d < 1.2 * pitch
            else:
                around += 1
                assert 1.5 * pitch < d < math.inf
    assert direct > 5 and around > 5


def test_shortest_path_is_free_and_as_long_as_the_geodesic(make_scene):
    """Path waypoints are free, its segments cross only free cells, its length matches the distance."""
    scene = make_scene("Maze", seed=3)
    m = scene.top_down_map()
    rng = np.random.default_rng(2)
    for _ in range(5):
        a = _xz(scene.sample_free_state(rng))
        b = scene.sample_goal(rng, a, 8.0, 20.0)
        path = scene.shortest_path(a, b)
        assert path.shape[1] == 2 and len(path) >= 3
        np.testing.assert_array_equal(path[0], a)
        np.testing.assert_array_equal(path[-1], b)
        assert all(scene.is_free(x, z) for x, z in path)
        for p, q in zip(path[:-1], path[1:], strict=True):
            pts = p + np.linspace(0, 1, 50)[:, None] * (q - p)
            r, c = m.world_to_cell(pts[:, 0], pts[:, 1])
            assert m.free[r, c].all()
        length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
        assert length == pytest.approx(scene.geodesic_distance(a, b), rel=0.05)


def test_shortest_path_within_one_cell_joins_the_two_points(make_scene):
    """Two points in one grid cell: the path is the straight segment between them."""
    scene = make_scene("OneRoom", seed=5)
    a, b = np.array([5.01, 5.01]), np.array([5.04, 5.03])
    np.testing.assert_array_equal(scene.shortest_path(a, b), np.stack([a, b]))
    assert scene.geodesic_distance(a, b) == pytest.approx(np.linalg.norm(b - a))


def test_unreachable_points_give_inf_and_an_empty_path(make_scene):
    """Points in separate free components are infinitely far apart with no path between them."""
    scene = make_scene("OneRoom", seed=0)
    free = np.zeros((20, 30), dtype=bool)
    free[2:18, 2:12] = True
    free[2:18, 15:28] = True  # a wall of three cells between two open regions
    scene._free_space = _FreeSpace(free, 0.0, 0.0, 0.1)
    a, b, c = np.array([0.5, 1.0]), np.array([2.0, 1.0]), np.array([1.0, 0.3])
    assert scene.geodesic_distance(a, b) == math.inf
    assert scene.shortest_path(a, b).shape == (0, 2)
    assert scene.geodesic_distance(a, c) == pytest.approx(np.linalg.norm(c - a))


def test_sample_goal_fails_when_nothing_is_reachable(make_scene):
    """A start whose free space is a single cell has no goal to offer: RuntimeError."""
    scene = make_scene("OneRoom", seed=0)
    free = np.zeros((10, 10), dtype=bool)
    free[5, 5] = True
    scene._free_space = _FreeSpace(free, 0.0, 0.0, 0.1)
    with pytest.raises(RuntimeError, match="reachable"):
        scene.sample_goal(np.random.default_rng(0), np.array([0.55, 0.55]), 0.0, 1.0)


def test_grid_distances_are_accurate_and_never_cut_corners():
    """The 16-connected grid errs by < 3% in any direction and cannot squeeze between diagonal cells."""
    free = np.ones((101, 101), dtype=bool)
    fs = _FreeSpace(free, 0.0, 0.0, 0.1)
    centre = fs.snap(np.array([5.05, 5.05]))
    dist = fs.field(centre)[0]
    r, c = np.nonzero(free)
    euclid = 0.1 * np.hypot(r - 50, c - 50)
    far = euclid > 2.0
    assert np.all(dist[far] >= euclid[far] - 1e-9)
    assert np.max(dist[far] / euclid[far]) < 1.03
    pinch = np.array([[True, False], [False, True]])
    fs = _FreeSpace(pinch, 0.0, 0.0, 1.0)
    assert fs.path(fs.snap(np.array([0.5, 0.5])), fs.snap(np.array([1.5, 1.5]))) is None


@pytest.mark.parametrize("env_id", ["MiniWorld-OneRoom-v0", "MiniWorld-ThreeRooms-v0", "MiniWorld-Maze-v0"])
def test_sample_goal_respects_the_geodesic_range(make_scene, env_id):
    """Sampled goals are free, reachable and at a geodesic distance within [min_d, max_d]."""
    scene = make_scene(env_id, seed=6)
    rng = np.random.default_rng(3)
    start = _xz(scene.start_state)
    for _ in range(10):
        goal = scene.sample_goal(rng, start, 1.0, 6.0)
        assert goal.shape == (2,) and scene.is_free(*goal)
        assert 1.0 <= scene.geodesic_distance(start, goal) <= 6.0


def test_sample_goal_clips_the_range_to_the_layout(make_scene):
    """A range beyond the layout yields the farthest reachable goals instead of failing."""
    scene = make_scene("OneRoom", seed=6)
    start = _xz(scene.start_state)
    goal = scene.sample_goal(np.random.default_rng(0), start, 100.0, 200.0)
    farthest = scene._free_space.field(scene._free_space.snap(start))[0]
    assert scene.geodesic_distance(start, goal) >= np.max(farthest[np.isfinite(farthest)]) - 0.5


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((np.random.default_rng(0), np.array([5.0, 5.0]), 3.0, 1.0), ValueError),
        ((np.random.default_rng(0), np.array([5.0, 5.0]), -1.0, 1.0), ValueError),
        ((np.random.default_rng(0), np.array([5.0, 5.0]), 1.0, float("nan")), ValueError),
        ((np.random.default_rng(0), np.array([5.0, np.nan]), 1.0, 2.0), ValueError),
        ((np.random.default_rng(0), np.array([5.0, 5.0, 0.0]), 1.0, 2.0), ValueError),
        ((0, np.array([5.0, 5.0]), 1.0, 2.0), TypeError),
    ],
)
def test_bad_sampling_arguments_raise(make_scene, args, error):
    """A bad range, start point or generator raises a clear error."""
    scene = make_scene("OneRoom", seed=0)
    with pytest.raises(error):
        scene.sample_goal(*args)


@pytest.mark.parametrize(
    "point", [np.array([np.nan, 1.0]), np.array([1.0, 2.0, 3.0]), np.array([[1.0, 2.0]])], ids=["nan", "3d", "2d"]
)
def test_bad_floor_points_raise(make_scene, point):
    """geodesic_distance, shortest_path and is_free reject malformed points."""
    scene = make_scene("OneRoom", seed=0)
    with pytest.raises(ValueError):
        scene.geodesic_distance(point, np.array([5.0, 5.0]))
    with pytest.raises(ValueError):
        scene.shortest_path(np.array([5.0, 5.0]), point)
    with pytest.raises(ValueError):
        scene.is_free(float("nan"), 1.0)


def test_sample_free_state_covers_reachable_free_space(make_scene):
    """Sampled states are free, reachable from the start, spread over the rooms, with random yaw."""
    scene = make_scene("ThreeRooms", seed=1)
    rng = np.random.default_rng(4)
    start = _xz(scene.start_state)
    states = [scene.sample_free_state(rng) for _ in range(200)]
    assert all(scene.is_free(s.x, s.z) for s in states)
    assert all(scene.geodesic_distance(start, _xz(s)) < math.inf for s in states[:20])
    xs, zs = np.array([s.x for s in states]), np.array([s.z for s in states])
    env = scene.miniworld_env
    assert np.ptp(xs) > 0.6 * (env.max_x - env.min_x) and np.ptp(zs) > 0.6 * (env.max_z - env.min_z)
    yaws = np.array([s.yaw for s in states])
    assert yaws.min() < -2.5 and yaws.max() > 2.5
    assert all(s.cam_height == scene.cam_height and s.pitch == 0.0 for s in states)


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


def test_two_hundred_worlds_keep_memory_bounded():
    """Creating, resetting and closing 200 scenes over 5 ids reuses envs; resident memory stays flat."""
    ids = ["OneRoom", "Hallway", "FourRooms", "TMaze", "PutNext"]
    proc = psutil.Process()

    def created():
        return sum(v["created"] for v in pool_stats().values())

    before = created()
    rss0 = 0
    for i in range(200):
        scene = MiniWorldScene(ids[i % len(ids)])
        state = scene.reset(1000 + i)
        frame = scene.render(state.pose())
        scene.geodesic_distance(_xz(state), _xz(state) + 1.0)
        scene.close()
        assert frame.std() > 0
        if i == 19:
            rss0 = proc.memory_info().rss
    assert created() - before <= len(ids)
    growth_mb = (proc.memory_info().rss - rss0) / 2**20
    assert growth_mb < 150, f"resident memory grew by {growth_mb:.0f} MB over 180 worlds"
