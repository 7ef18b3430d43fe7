"""Tests of rtfm_env.envs.tasks: the floor-grid geometry and the navigation base's argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtfm_env.envs.tasks import NavigationTask, PointNavTask, free_on_grid, free_ray_lengths, line_of_sight
from rtfm_env.geometry import RobotState
from rtfm_env.scenes.base import TopDownMap

CELL = 0.1  # metres


def _room(wall_col: int | None = None, door_rows: tuple[int, int] | None = None) -> TopDownMap:
    """A 4 m x 4 m free room of 0.1 m cells at the origin, optionally split by a wall column with a door."""
    free = np.ones((40, 40), dtype=bool)
    if wall_col is not None:
        free[:, wall_col] = False
        if door_rows is not None:
            free[door_rows[0] : door_rows[1], wall_col] = True
    return TopDownMap(free=free, origin_x=0.0, origin_z=0.0, cell=CELL, image=np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("point", "expected"),
    [((0.05, 0.05), True), ((3.95, 3.95), True), ((2.05, 1.0), False), ((-0.01, 1.0), False), ((1.0, 4.2), False)],
)
def test_free_on_grid_reads_cells_and_treats_outside_as_blocked(point, expected):
    """free_on_grid reads the cell under a point and reports points off the grid as not free."""
    assert free_on_grid(_room(wall_col=20), np.array(point)).item() is expected


def test_line_of_sight_is_blocked_by_a_wall_and_passes_a_door():
    """A wall column blocks sight across it except through its door."""
    room = _room(wall_col=20, door_rows=(18, 22))
    origin = np.array([1.0, 2.0])
    targets = np.array([[3.0, 2.0], [3.0, 0.5], [1.5, 0.5], [3.0, 2.05]])
    np.testing.assert_array_equal(line_of_sight(room, origin, targets), [True, False, True, True])
    assert line_of_sight(room, origin, np.zeros((0, 2))).shape == (0,)


def test_line_of_sight_cannot_step_over_a_one_cell_wall():
    """Segments that cross a one-cell wall at any angle are blocked (samples are at most half a cell apart)."""
    room = _room(wall_col=20)
    angles = np.linspace(-1.2, 1.2, 25)
    targets = np.stack([1.0 + 2.5 * np.cos(angles), 2.0 + 2.5 * np.sin(angles)], axis=-1)
    crossing = targets[:, 0] > 2.1
    assert crossing.any()
    assert not line_of_sight(room, np.array([1.0, 2.0]), targets[crossing]).any()


@pytest.mark.parametrize(
    ("yaw", "expected"),
    [
        (0.0, 1.0),  # +x: the wall at x = 2.0 stops the ray 1 m away
        (math.pi, 1.0),  # -x: the room's edge at x = 0
        (math.pi / 2, 2.0),  # yaw pi/2 faces -z: the edge at z = 0
        (-math.pi / 2, 2.0),  # +z: the edge at z = 4
    ],
)
def test_free_ray_lengths_reach_the_first_blocked_cell(yaw, expected):
    """Ray lengths end at the first non-free cell (within the half-cell sampling)."""
    length = free_ray_lengths(_room(wall_col=20), np.array([1.0, 2.0]), np.array([yaw]), max_range=10.0)
    assert length.shape == (1,)
    assert length[0] == pytest.approx(expected, abs=CELL)


def test_free_ray_lengths_are_capped_at_max_range():
    """A ray in open space stops at max_range."""
    assert free_ray_lengths(_room(), np.array([0.5, 2.0]), np.array([0.0]), max_range=1.5)[0] == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"success_distance": 0.0}, "success_distance"),
        ({"success_distance": math.nan}, "success_distance"),
        ({"waypoint_distance": -1.0}, "waypoint_distance"),
        ({"min_goal_distance": 5.0, "max_goal_distance": 2.0}, "min_goal_distance <= max_goal_distance"),
        ({"slack_reward": "cheap"}, "slack_reward"),
        ({"success_reward": True}, "success_reward"),
    ],
)
def test_navigation_task_rejects_bad_arguments(kwargs, match):
    """Bad NavigationTask arguments (checked by its base for every subclass) raise ValueError naming the argument."""
    assert issubclass(PointNavTask, NavigationTask)
    with pytest.raises(ValueError, match=match):
        PointNavTask(**kwargs)


def test_task_without_reset_has_no_goal():
    """Asking a fresh task for a point goal raises, telling the caller to reset it."""
    with pytest.raises(RuntimeError, match=r"PointNavTask has no goal yet: call reset"):
        PointNavTask().pointgoal(RobotState(0.0, 0.0, 0.0))
