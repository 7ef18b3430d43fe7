"""Tests for rtfm_env.data.trajectories: seeded generators that revisit poses through Scene.move."""

import math
from itertools import islice

import numpy as np
import pytest

from rtfm_env.data import trajectories as tr
from rtfm_env.geometry import (
    DiscreteAction,
    Intrinsics,
    KinematicsConfig,
    RobotState,
    angle_difference,
    apply_discrete,
)
from rtfm_env.scenes.base import Scene, TopDownMap

KINDS = list(tr.TRAJECTORY_KINDS)
RADIUS = 0.4  # metres, MiniWorld's robot radius


class BoxRoom(Scene):
    """An empty rectangular room: the robot's centre must stay RADIUS inside the walls."""

    def __init__(self, width: float = 10.0, depth: float = 10.0, kinematics: KinematicsConfig | None = None) -> None:
        self.width, self.depth = width, depth
        self.kinematics = kinematics or KinematicsConfig()
        self.intrinsics = Intrinsics(8, 8)
        self.env_id = "BoxRoom"
        self.blocked = 0

    def reset(self, seed: int) -> RobotState:
        self.seed = seed
        return RobotState(self.width / 2, self.depth / 2, 0.0)

    def is_free(self, x: float, z: float) -> bool:
        return RADIUS <= x <= self.width - RADIUS and RADIUS <= z <= self.depth - RADIUS

    def move(self, state, action):
        new = apply_discrete(state, action, self.kinematics)
        if not self.is_free(new.x, new.z):
            self.blocked += 1
            return state, True
        return new, False

    def render(self, pose):
        return None

    def geodesic_distance(self, a, b):
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))

    def shortest_path(self, a, b):
        return np.stack([a, b])

    def top_down_map(self):
        free = np.ones((int(self.depth), int(self.width)), dtype=bool)
        return TopDownMap(free, 0.0, 0.0, 1.0, np.zeros((8, 8, 3), np.uint8))

    def sample_free_state(self, rng):
        return RobotState(rng.uniform(RADIUS, self.width - RADIUS), rng.uniform(RADIUS, self.depth - RADIUS), 0.0)


@pytest.fixture(scope="module")
def oneroom():
    """MiniWorld's OneRoom (an open 10 m room) through the project's MiniWorldScene."""
    from rtfm_env.scenes import MiniWorldScene

    scene = MiniWorldScene("MiniWorld-OneRoom-v0", width=16, height=16)
    yield scene
    scene.close()


def _scene(name, request):
    if name == "box":
        scene = BoxRoom()
        return scene, scene.reset(0)
    scene = request.getfixturevalue("oneroom")
    return scene, scene.reset(3)


def _pose_close(a: RobotState, b: RobotState, pos_tol: float = 0.1, yaw_tol_deg: float = 5.0) -> bool:
    close_heading = abs(angle_difference(a.yaw, b.yaw)) < math.radians(yaw_tol_deg)
    return math.hypot(a.x - b.x, a.z - b.z) < pos_tol and close_heading


@pytest.mark.parametrize("kind", KINDS)
def test_rollout_shapes_and_start(kind):
    """A rollout has n frames, starts at the start state and marks frame 0 as reached by no action."""
    scene = BoxRoom()
    start = scene.reset(0)
    traj = tr.rollout(kind, scene, start, 50, seed=1)
    assert len(traj) == 50 and traj.kind == kind
    assert traj.states[0] == start and traj.actions[0] == tr.NO_ACTION
    assert traj.poses().shape == (50, 4, 4) and traj.state_array().shape == (50, 5)
    assert set(traj.actions[1:]) <= {DiscreteAction.FORWARD, DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT}
    np.testing.assert_allclose(traj.poses()[7], traj.states[7].pose())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_trajectory(kind):
    """The same seed gives the same trajectory; another seed gives a different one."""
    scene = BoxRoom()
    start = scene.reset(0)
    a = tr.rollout(kind, scene, start, 80, seed=5)
    b = tr.rollout(kind, scene, start, 80, seed=5)
    c = tr.rollout(kind, scene, start, 80, seed=6)
    np.testing.assert_array_equal(a.state_array(), b.state_array())
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.state_array(), c.state_array())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("room", [(10.0, 10.0), (1.3, 6.0)])
def test_generators_stay_in_free_space(kind, room):
    """Every state is free, also in a corridor barely wider than the robot, where moves get blocked."""
    scene = BoxRoom(*room)
    traj = tr.rollout(kind, scene, scene.reset(0), 150, seed=2)
    assert all(scene.is_free(s.x, s.z) for s in traj.states)
    for i in np.flatnonzero(traj.collided):
        assert traj.states[i] == traj.states[i - 1]


@pytest.mark.parametrize("scene_name", ["box", "oneroom"])
@pytest.mark.parametrize("kind", ["out_and_back", "loop", "turn360"])
def test_planned_returns_reach_the_earlier_pose(scene_name, kind, request):
    """Every step marked as a return lies within 0.1 m and 5 degrees of the frame it returns to."""
    scene, start = _scene(scene_name, request)
    traj = tr.rollout(kind, scene, start, 200, seed=11)
    marked = np.flatnonzero(traj.returns_to >= 0)
    assert len(marked) >= 2, f"{kind} made {len(marked)} planned returns in 200 steps"
    for j in marked:
        i = int(traj.returns_to[j])
        assert i < j
        assert _pose_close(traj.states[i], traj.states[j]), (i, j, traj.states[i], traj.states[j])


@pytest.mark.parametrize("scene_name", ["box", "oneroom"])
@pytest.mark.parametrize("kind", ["out_and_back", "loop"])
def test_returns_after_going_away(scene_name, kind, request):
    """Out-and-back and loops come back to a pose after really leaving it (>= 0.5 m away in between)."""
    scene, start = _scene(scene_name, request)
    traj = tr.rollout(kind, scene, start, 200, seed=4)
    xz = traj.state_array()[:, :2]
    found = 0
    for j in np.flatnonzero(traj.returns_to >= 0):
        i = int(traj.returns_to[j])
        if np.linalg.norm(xz[i:j] - xz[i], axis=1).max() >= 0.5:
            found += 1
    assert found >= 1


def test_out_and_back_faces_the_start_heading_again():
    """A single out-and-back cycle ends at its first pose, having gone out and turned around twice."""
    scene = BoxRoom()
    start = scene.reset(0)
    steps = list(islice(tr.out_and_back(scene, start, seed=0, min_out=5, max_out=5, max_relocate=0), 60))
    j = next(k for k, s in enumerate(steps) if s.returns_to is not None)
    first = steps[j].returns_to
    before = start if first == 0 else steps[first - 1].state
    assert _pose_close(before, steps[j].state, 1e-6, 1e-6)
    # 5 forward out, 12 turns, 5 back, 12 turns after facing the chosen heading.
    assert [s.action for s in steps[first : j + 1]].count(DiscreteAction.FORWARD) == 10
    assert j + 1 - first == 5 + 12 + 5 + 12


def test_turn360_revisits_every_heading():
    """A full turn in place revisits each of the 24 headings of the first rotation, at the same spot."""
    scene = BoxRoom()
    start = scene.reset(0)
    steps = list(islice(tr.turn360(scene, start, seed=0, max_rotations=1, max_relocate=0), 48))
    states = [start] + [s.state for s in steps]
    assert _pose_close(states[0], states[24], 1e-6, 1e-6)
    for k in range(24):  # the next rotation (either direction) sees every heading again
        assert any(_pose_close(states[k], states[m], 1e-6, 1e-6) for m in range(24, 48))
    yaws = np.array([s.yaw for s in states[:24]])
    gaps = np.sort(np.mod(yaws - yaws[0], 2 * math.pi))
    np.testing.assert_allclose(np.diff(gaps), math.radians(15), atol=1e-9)


def test_random_walk_has_momentum_and_avoids_walls():
    """The random walk mostly goes forward, turns in same-direction runs and never bumps into a wall."""
    scene = BoxRoom()
    traj = tr.rollout("random_walk", scene, scene.reset(0), 400, seed=3)
    actions = traj.actions[1:]
    assert scene.blocked == 0 and not traj.collided.any()
    assert (actions == DiscreteAction.FORWARD).mean() > 0.5
    turns = actions != DiscreteAction.FORWARD
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, turns.astype(int), 0]) != 0))[::2]
    assert runs.max() >= 3  # turns come in runs, not as isolated jitter


def test_random_walk_revisits_places():
    """A long random walk in a room passes within 0.1 m and 5 degrees of an earlier pose."""
    scene = BoxRoom(4.0, 4.0)
    traj = tr.rollout("random_walk", scene, scene.reset(0), 600, seed=0)
    s = traj.state_array()
    d = np.hypot(s[:, None, 0] - s[None, :, 0], s[:, None, 1] - s[None, :, 1])
    h = np.abs(angle_difference(s[:, None, 2], s[None, :, 2]))
    i, j = np.nonzero((d < 0.1) & (h < math.radians(5)))
    assert np.any(j - i > 10)


def test_unknown_kind_lists_valid_kinds():
    """An unknown trajectory kind raises KeyError naming the valid kinds."""
    scene = BoxRoom()
    with pytest.raises(KeyError, match="valid kinds.*out_and_back"):
        tr.make_trajectory("zigzag", scene, scene.reset(0), 0)


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("random_walk", {"p_forward": 1.5}),
        ("random_walk", {"max_turn_run": 0}),
        ("out_and_back", {"min_out": 5, "max_out": 2}),
        ("loop", {"min_side": 0}),
        ("turn360", {"max_rotations": 0}),
    ],
)
def test_bad_options_raise(kind, kwargs):
    """Out-of-range generator options raise ValueError when the generator starts."""
    scene = BoxRoom()
    with pytest.raises(ValueError):
        next(tr.make_trajectory(kind, scene, scene.reset(0), 0, **kwargs))


def test_turn_step_must_divide_a_quarter_turn():
    """A turn step that cannot make a quarter turn in whole steps is refused (no return could be exact)."""
    scene = BoxRoom(kinematics=KinematicsConfig(turn_step=math.radians(25.0)))
    with pytest.raises(ValueError, match="turn_step"):
        next(tr.loop(scene, scene.reset(0), 0))


def test_rollout_needs_a_frame():
    """A rollout of fewer than one frame is refused."""
    scene = BoxRoom()
    with pytest.raises(ValueError, match="n_frames"):
        tr.rollout("loop", scene, scene.reset(0), 0, seed=0)
