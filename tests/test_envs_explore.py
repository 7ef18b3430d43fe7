"""Tests of rtfm_env.envs.explore: 2-D visibility and RTFM/Explore-v0's rewards, coverage and episode end."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import viz
from rtfm_env.envs.explore import ExploreEnv, visible_cells
from rtfm_env.geometry import RobotState
from rtfm_env.scenes.base import TopDownMap

STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3
FOV = math.radians(60.0)


@pytest.fixture(scope="module")
def env():
    """One Explore env with rendering, shared by the module; MiniWorld envs are costly to create."""
    env = gym.make("RTFM/Explore-v0", render_mode="rgb_array")
    yield env.unwrapped
    env.close()


def _room() -> TopDownMap:
    """A 4 m x 4 m room of 0.1 m cells with a wall column at x = 2.0-2.1 m from z = 0 to 3 m."""
    free = np.ones((40, 40), dtype=bool)
    free[:30, 20] = False
    return TopDownMap(free=free, origin_x=0.0, origin_z=0.0, cell=0.1, image=np.zeros((4, 4, 3), dtype=np.uint8))


def test_visible_cells_lie_in_the_view_wedge():
    """Seen cells lie within range and half the field of view; in-wedge cells with a clear view are all seen."""
    room = _room()
    state = RobotState(0.55, 3.55, 0.0)  # facing +x, below the wall's end
    seen = visible_cells(room, state, FOV, view_range=1.5)
    cells = np.argwhere(room.free)
    x, z = room.cell_to_world(cells[:, 0], cells[:, 1])
    distance = np.hypot(x - state.x, z - state.z)
    bearing = np.abs(np.arctan2(-(z - state.z), x - state.x))
    assert seen.any()
    assert np.all(distance[seen] <= 1.5 + 1e-9)
    assert np.all((bearing[seen] <= FOV / 2 + 1e-9) | (distance[seen] <= 0.05 + 1e-9))
    wedge = (distance <= 1.4) & (bearing <= FOV / 2 - 0.05) & (z >= 3.1)  # nothing in the way there
    assert seen[wedge].all()


def test_walls_occlude_the_cells_behind_them():
    """Cells right behind the wall are not seen; the same cells are seen once the wall is gone."""
    room = _room()
    state = RobotState(1.05, 1.05, 0.0)  # facing +x, straight at the wall
    cells = np.argwhere(room.free)
    x, _ = room.cell_to_world(cells[:, 0], cells[:, 1])
    behind = x > 2.1
    assert not visible_cells(room, state, FOV, 5.0)[behind].any()
    open_room = TopDownMap(np.ones_like(room.free), 0.0, 0.0, 0.1, room.image)
    open_cells = np.argwhere(open_room.free)
    ox, _ = open_room.cell_to_world(open_cells[:, 0], open_cells[:, 1])
    assert visible_cells(open_room, state, FOV, 5.0)[ox > 2.1].sum() > 100


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2, math.pi, -math.pi / 2])
def test_visible_cells_turn_with_the_heading(yaw):
    """In an open room the seen cells lie on the side the robot faces."""
    room = TopDownMap(np.ones((40, 40), dtype=bool), 0.0, 0.0, 0.1, np.zeros((4, 4, 3), dtype=np.uint8))
    state = RobotState(2.0, 2.0, yaw)
    seen = visible_cells(room, state, FOV, 1.5)
    cells = np.argwhere(room.free)
    x, z = room.cell_to_world(cells[:, 0], cells[:, 1])
    ahead = (x - state.x) * math.cos(yaw) + (z - state.z) * -math.sin(yaw)
    assert np.all(ahead[seen] > -0.1)
    assert seen.sum() > 50


def test_rewards_are_new_area_minus_slack_and_coverage_grows(env):
    """Each reward is 0.1 per new m^2 minus 0.01; coverage never falls and matches the seen area."""
    _, info = env.reset(seed=0)
    free_area = env.task.top_down.free.sum() * env.task.cell_area
    assert 0.0 < info["coverage"] < 1.0 and info["new_area"] == 0.0
    rng = np.random.default_rng(0)
    for action in rng.choice([FORWARD, FORWARD, LEFT, RIGHT], size=40):
        previous = info
        _, reward, terminated, truncated, info = env.step(int(action))
        assert not terminated and not truncated
        assert reward == pytest.approx(0.1 * info["new_area"] - 0.01)
        assert info["seen_area"] == pytest.approx(previous["seen_area"] + info["new_area"])
        assert info["coverage"] >= previous["coverage"]
        assert info["seen_area"] == pytest.approx(info["coverage"] * free_area)


def test_a_full_turn_then_another_sees_nothing_new(env):
    """Turning 360 degrees in place sees new floor; a second full turn sees none and only pays the slack."""
    _, info = env.reset(seed=3)
    start_area = info["seen_area"]
    first = [env.step(LEFT)[1] for _ in range(24)]
    assert env.episode.state.x == env.episode.start.x
    assert sum(first) > -0.24 and env.task.seen.sum() * env.task.cell_area > start_area
    second = [env.step(LEFT)[1] for _ in range(24)]
    assert second == pytest.approx([-0.01] * 24)


def test_stop_is_a_no_op_and_only_truncation_ends(env):
    """A stop keeps the pose and does not end the episode; the episode ends by truncation at max_steps."""
    obs, _ = env.reset(seed=1)
    state = env.state
    after, reward, terminated, truncated, info = env.step(STOP)
    assert not terminated and not truncated
    assert env.state == state and reward == pytest.approx(-0.01)
    np.testing.assert_array_equal(after["rgb"], obs["rgb"])
    short = gym.make("RTFM/Explore-v0", max_steps=4)
    try:
        short.reset(seed=1)
        ends = [short.step(STOP)[2:4] for _ in range(4)]
    finally:
        short.close()
    assert ends == [(False, False)] * 3 + [(False, True)]


def test_render_tints_the_seen_floor(env):
    """render() shows the seen floor tinted on the map, and more of it after a full turn."""
    env.reset(seed=3)

    def tinted(frame):
        seen = np.array(viz.COLORS["seen"], dtype=float)
        return int((np.abs(frame[:, 260:].astype(float) - seen).max(axis=-1) < 80).sum())

    before = tinted(env.render())
    for _ in range(12):
        env.step(LEFT)
    assert tinted(env.render()) > before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"view_range": 0.0}, "view_range"),
        ({"view_range": math.inf}, "view_range"),
        ({"area_reward": "x"}, "area_reward"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    """Bad Explore arguments raise ValueError naming them, before a scene is made."""
    with pytest.raises(ValueError, match=match):
        ExploreEnv(**kwargs)
