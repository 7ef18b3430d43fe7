"""``RTFM/Explore-v0``: see as much of the floor as possible, through an rtfm-sim camera."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.tasks import Episode, Task, line_of_sight
from rtfm_env.geometry import DiscreteAction, RobotState, angle_difference
from rtfm_env.scenes.base import Scene, TopDownMap

__all__ = ["ExploreTask", "ExploreEnv", "visible_cells"]


def visible_cells(
    top_down: TopDownMap, state: RobotState, fov_x: float, view_range: float, cells: np.ndarray | None = None
) -> np.ndarray:
    """Which free cells of ``top_down`` the camera at ``state`` sees.

    A cell is seen when its centre lies within ``view_range`` of the camera, within the
    horizontal field of view around the heading, and the straight floor segment to it crosses
    only free cells (walls occlude). Camera height and pitch are ignored: this is the 2-D
    visibility that exploration rewards are usually built on.

    Args:
        top_down: the scene's floor plan; its free cells are the floor.
        state: the robot; its camera is at (x, z) facing yaw.
        fov_x: horizontal field of view, radians.
        view_range: metres.
        cells: (F, 2) (row, col) of the cells to test; all free cells (``np.argwhere(free)``) when None.

    Returns:
        (F,) bool, one per cell of ``cells``.
    """
    if cells is None:
        cells = np.argwhere(top_down.free)
    x, z = top_down.cell_to_world(cells[:, 0], cells[:, 1])  # (F,) each
    dx, dz = x - state.x, z - state.z
    distance = np.hypot(dx, dz)
    bearing = np.arctan2(-dz, dx)  # yaw convention: direction (cos, -sin) in (x, z)
    in_view = (distance <= view_range) & (np.abs(angle_difference(bearing, state.yaw)) <= 0.5 * fov_x)
    # The cell the camera stands in is seen whatever its bearing.
    in_view |= distance <= 0.5 * top_down.cell
    seen = np.zeros(len(cells), dtype=bool)
    candidates = np.flatnonzero(in_view)
    targets = np.stack([x[candidates], z[candidates]], axis=-1)
    seen[candidates] = line_of_sight(top_down, np.array([state.x, state.z]), targets)
    return seen


class ExploreTask(Task):
    """Cover the floor: every step earns the floor area first seen in it.

    The floor is the free cells of the scene's top-down map (where the robot's centre may
    stand: walls and entities inflated by the robot's radius, so floor right against a wall
    does not count, and corners occlude slightly more than the real walls do). After each
    move, the cells seen from the new pose (:func:`visible_cells`) join the seen set; the
    start view's cells are seen at reset and earn nothing.

    Reward per step: ``area_reward`` per square metre of newly seen floor, plus
    ``slack_reward`` (negative). Stop is a no-op (the robot stays; the episode goes on), kept so
    the action space is the navigation tasks' Discrete(4). The task never terminates.
    """

    actions = (DiscreteAction.STOP, DiscreteAction.FORWARD, DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT)

    def __init__(self, view_range: float = 5.0, area_reward: float = 0.1, slack_reward: float = -0.01) -> None:
        """Configure the task.

        Args:
            view_range: metres; floor farther from the camera does not count as seen.
            area_reward: reward per square metre of newly seen floor.
            slack_reward: reward added every step (negative: a cost of time).
        """
        for name, value in {"view_range": view_range, "area_reward": area_reward, "slack_reward": slack_reward}.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if view_range <= 0:
            raise ValueError(f"view_range must be > 0 metres, got {view_range}")
        self.view_range = float(view_range)  # metres
        self.area_reward = float(area_reward)  # reward per square metre
        self.slack_reward = float(slack_reward)
        self.fov_x = math.nan  # radians, the scene camera's horizontal field of view
        self.top_down: TopDownMap | None = None
        self.cells = np.zeros((0, 2), dtype=np.int64)  # (F, 2) (row, col) of the free cells
        self.seen = np.zeros(0, dtype=bool)  # (F,) whether each free cell has been seen
        self.new_area = 0.0  # square metres first seen by the last step

    @property
    def cell_area(self) -> float:
        """Square metres of one grid cell."""
        return 0.0 if self.top_down is None else self.top_down.cell**2

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """No entries beyond the view and the pose: the agent explores from what it sees."""
        return {}

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """No task entries."""
        return {}

    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Take the layout's floor and see what the start view sees."""
        self.top_down = scene.top_down_map()
        self.cells = np.argwhere(self.top_down.free)
        if len(self.cells) == 0:
            raise RuntimeError(f"scene {scene.env_id!r} (seed {scene.seed}) has no free floor to explore")
        self.fov_x = math.radians(scene.intrinsics.fov_x)
        self.seen = self._visible(episode.state)
        self.new_area = 0.0

    def step(self, scene: Scene, episode: Episode, action: int) -> tuple[float, bool]:
        """Reward the floor area seen for the first time from the new pose; never terminate."""
        visible = self._visible(episode.state)
        new = visible & ~self.seen
        self.seen |= visible
        self.new_area = float(new.sum()) * self.cell_area
        return self.area_reward * self.new_area + self.slack_reward, False

    def metrics(self, scene: Scene, episode: Episode) -> dict[str, Any]:
        """The coverage (fraction of the floor seen), seen_area and new_area (m^2)."""
        return {
            "coverage": float(self.seen.mean()) if len(self.seen) else 0.0,
            "seen_area": float(self.seen.sum()) * self.cell_area,  # square metres
            "new_area": self.new_area,  # square metres, first seen by the last step
        }

    def seen_mask(self) -> np.ndarray:
        """The seen cells as a (rows, cols) bool grid of the top-down map."""
        if self.top_down is None:
            raise RuntimeError("ExploreTask has no floor yet: call reset(scene, episode, rng) first")
        mask = np.zeros(self.top_down.free.shape, dtype=bool)
        mask[self.cells[self.seen, 0], self.cells[self.seen, 1]] = True
        return mask

    def map_overlay(self) -> dict[str, Any]:
        """The seen floor, tinted."""
        return {"seen": self.seen_mask()}

    def _visible(self, state: RobotState) -> np.ndarray:
        return visible_cells(self.top_down, state, self.fov_x, self.view_range, self.cells)


class ExploreEnv(RTFMEnv):
    """Explore a MiniWorld layout, seeing through a ground-truth or learned camera; reward is new floor seen.

    ## Description

    Coverage-driven exploration (as in Chen et al., 2019, "Learning Exploration Policies for
    Navigation"; Chaplot et al., 2020, "Learning to Explore using Active Neural SLAM"): the
    robot earns the floor area it sees for the first time. Seen floor is computed from the
    scene's free-space map, not from the camera's pixels, so the reward is the same with both
    cameras: a free cell is seen when it lies within ``view_range`` metres and the camera's
    horizontal field of view, with a clear straight line to it across free cells.

    ## Action Space

    ``Discrete(4)``: 0 stop (a no-op here: the robot stays and the episode goes on), 1 forward
    0.25 m, 2 turn left 15 degrees, 3 turn right 15 degrees.

    ## Observation Space

    ``Dict``:

    - ``rgb``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the camera's view.
    - ``pose``: ``Box(float32, (4, 4))``, the camera-to-world pose (world y up, metres).

    ## Rewards

    ``area_reward`` (0.1) per square metre of floor first seen by the step (a FourRooms layout
    has about 120 m^2 of floor where the robot's centre may stand, so a full sweep earns about
    12), plus
    ``-0.01`` per step. The start view's floor is seen at reset and earns nothing.

    ## Starting State

    The scene's start state for the layout, drawn from the env's generator at every reset
    unless ``scene_seed`` fixes it.

    ## Episode End

    Termination: never (stop does not end the episode).

    Truncation: after ``max_steps`` actions.

    ``info`` reports ``coverage`` (fraction of the floor seen, in [0, 1]), ``seen_area`` and
    ``new_area`` (m^2), ``collisions``, ``collided``, ``path_length`` (m), ``steps`` and
    ``scene_seed``.

    ## Arguments

    ```python
    env = gym.make("RTFM/Explore-v0", scene="MiniWorld-FourRooms-v0", camera="ground_truth",
                   view_range=5.0, area_reward=0.1, max_steps=500)
    ```

    - ``view_range``: metres of floor the camera counts as seen (5.0).
    - ``area_reward``: reward per square metre of newly seen floor (0.1).
    - the world and camera arguments of every id, described in
      :class:`rtfm_env.envs.base.RTFMEnv`.

    ``render_mode="rgb_array"`` draws the view beside the map with the seen floor tinted,
    the trajectory and the robot.

    ## Version History

    - v0: initial version.
    """

    def __init__(self, view_range: float = 5.0, area_reward: float = 0.1, **kwargs: Any) -> None:
        """Build the env; see the class docstring's Arguments section."""
        super().__init__(ExploreTask(view_range=view_range, area_reward=area_reward), **kwargs)
