"""Tasks: what an episode is for. Goals, rewards, termination and metrics.

An env composes a :class:`~rtfm_env.scenes.base.Scene` (where the robot may go), a
:class:`~rtfm_env.cameras.Camera` (what it sees) and a :class:`Task` (what it should do). The
env keeps the shared record of the episode (:class:`Episode`: states visited, path length,
collisions); a task reads that record and the scene, and answers with a reward, whether the
episode is over and the metrics to report. Tasks never move the robot; what they have to show
on the env's rendering they hand over as map overlays and extra panels.

:class:`NavigationTask` is the shared logic of goal-reaching tasks (a route of floor goals,
geodesic progress rewards, success on stop, SPL); :class:`PointNavTask` here and the ImageNav
and Revisit tasks beside their envs are short subclasses of it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from rtfm_env.geometry import DiscreteAction, RobotState, angle_difference
from rtfm_env.scenes.base import Scene, TopDownMap

__all__ = [
    "WORLD_BOUND",
    "Episode",
    "Task",
    "NavigationTask",
    "PointNavTask",
    "free_on_grid",
    "line_of_sight",
    "free_ray_lengths",
]

#: Metres. Every position in a scene lies within |x|, |y|, |z| <= WORLD_BOUND; observation
#: spaces are bounded by it (Gymnasium's checker rejects infinite bounds) and envs check it.
WORLD_BOUND = 1000.0


# --------------------------------------------------------------------------------------
# Floor-grid geometry shared by tasks (what a camera can see on the scene's free-space map)
# --------------------------------------------------------------------------------------


def free_on_grid(top_down: TopDownMap, xz: np.ndarray) -> np.ndarray:
    """Whether floor points (..., 2) as (x, z) lie in free cells of ``top_down`` (False off the grid)."""
    xz = np.asarray(xz, dtype=np.float64)
    row, col = top_down.world_to_cell(xz[..., 0], xz[..., 1])
    rows, cols = top_down.free.shape
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    free = np.zeros(xz.shape[:-1], dtype=bool)
    free[inside] = top_down.free[row[inside], col[inside]]
    return free


def line_of_sight(top_down: TopDownMap, origin: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Whether the straight floor segments from ``origin`` (2,) to ``targets`` (N, 2) cross only free cells.

    Every segment is sampled at the same number of points, spaced at most half a cell apart on
    the longest one, so a wall (non-free) cell cannot be stepped over. Points are (x, z) metres.

    Returns:
        (N,) bool.
    """
    origin = np.asarray(origin, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
    if len(targets) == 0:
        return np.zeros(0, dtype=bool)
    offsets = targets - origin  # (N, 2)
    longest = float(np.max(np.hypot(offsets[:, 0], offsets[:, 1])))
    samples = max(2, math.ceil(2.0 * longest / top_down.cell) + 1)
    t = np.linspace(0.0, 1.0, samples)  # (S,)
    points = origin + t[None, :, None] * offsets[:, None, :]  # (N, S, 2)
    return free_on_grid(top_down, points).all(axis=1)


def free_ray_lengths(top_down: TopDownMap, origin: np.ndarray, angles: np.ndarray, max_range: float) -> np.ndarray:
    """Distance in metres from ``origin`` (x, z) to the first non-free cell along each ray, capped at ``max_range``.

    ``angles`` are yaw-convention directions (radians; ray direction (cos a, -sin a) in (x, z)).
    Rays are sampled every half cell.
    """
    angles = np.asarray(angles, dtype=np.float64).reshape(-1)
    step = 0.5 * top_down.cell
    r = np.arange(1, math.ceil(max_range / step) + 1) * step  # (S,)
    direction = np.stack([np.cos(angles), -np.sin(angles)], axis=-1)  # (A, 2)
    points = np.asarray(origin, dtype=np.float64) + r[None, :, None] * direction[:, None, :]  # (A, S, 2)
    blocked = ~free_on_grid(top_down, points)
    first = np.where(blocked.any(axis=1), blocked.argmax(axis=1), len(r))  # index of the first blocked sample
    return np.minimum(first * step, max_range)


@dataclass
class Episode:
    """The shared record of one episode, kept by the env and read by its task."""

    states: list[RobotState]  # every state so far, the start first
    path_length: float = 0.0  # metres travelled by the base on the floor
    collisions: int = 0  # moves blocked by a wall or an entity
    steps: int = 0  # actions taken
    collided: bool = False  # whether the last move was blocked
    scene_seed: int | None = None  # the layout seed of the scene for this episode

    @property
    def state(self) -> RobotState:
        """The current state."""
        return self.states[-1]

    @property
    def start(self) -> RobotState:
        """The state the episode began in."""
        return self.states[0]

    def record(self, state: RobotState, collided: bool) -> None:
        """Append the state reached by one action and update the running totals."""
        prev = self.states[-1]
        self.path_length += math.hypot(state.x - prev.x, state.z - prev.z)
        self.collisions += int(collided)
        self.collided = bool(collided)
        self.steps += 1
        self.states.append(state)


class Task(ABC):
    """Goals, reward, termination and metrics of one kind of episode.

    Attributes:
        actions: the scene move (a :class:`~rtfm_env.geometry.DiscreteAction` id) of each env
            action index; ``DiscreteAction.STOP`` moves nothing.
        action_names: a name per env action index, for messages and docs.
        goal: the goal's floor point (x, z) in metres for maps, or None if the task has none.
        goal_radius: metres around ``goal`` that count as reached (drawn on maps).
    """

    actions: tuple[int, ...]
    goal: np.ndarray | None = None
    goal_radius: float = 0.0

    @property
    def action_space(self) -> spaces.Discrete:
        """The env's action space: one index per entry of :attr:`actions`."""
        return spaces.Discrete(len(self.actions))

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the env actions, in index order."""
        return tuple(DiscreteAction.NAMES[a] for a in self.actions)

    @abstractmethod
    def observation_spaces(self) -> dict[str, spaces.Space]:
        """The task's entries of the env's Dict observation space."""

    @abstractmethod
    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Begin an episode that starts at ``episode.start`` in the freshly reset ``scene``."""

    @abstractmethod
    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """The task's observation entries at ``state`` (fresh arrays, within their spaces)."""

    @abstractmethod
    def step(self, scene: Scene, episode: Episode, action: int) -> tuple[float, bool]:
        """Score the action just recorded in ``episode``; returns (reward, terminated)."""

    @abstractmethod
    def metrics(self, scene: Scene, episode: Episode) -> dict[str, Any]:
        """The task's entries of ``info`` at the current step."""

    def on_frame(self, frame: np.ndarray) -> None:  # noqa: B027 (optional hook: most tasks ignore frames)
        """Called with each new camera frame (the start's at reset, then each changed pose's)."""

    def map_overlay(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`rtfm_env.viz.MapCanvas.draw` for what the task shows on the map."""
        return {"goal": self.goal, "goal_radius": self.goal_radius}

    def render_panels(self) -> tuple[np.ndarray, ...]:
        """Images that ``render()`` puts between the view and the map (none by default)."""
        return ()


class NavigationTask(Task):
    """Shared logic of goal-reaching tasks: follow a route of floor goals, stop at the last one.

    A route is one or more free floor points (x, z). The current goal is :attr:`goal`; the
    robot passes an intermediate goal by coming within ``waypoint_distance`` of it (no action
    needed), and succeeds by calling stop within ``success_distance`` (geodesic) of the last one
    while :meth:`at_final_goal` holds. Subclasses choose the route (:meth:`sample_route`, by
    default one goal as PointNav) and what the agent observes.

    Reward per step (Habitat's PointNav, summed over the route): the decrease of the geodesic
    distance still to go (to the current goal, then along the remaining legs), plus
    ``waypoint_reward`` on passing an intermediate goal, plus ``success_reward`` on a
    successful stop, plus ``slack_reward`` (negative) every step. Any stop ends the episode.

    Metrics: success; SPL = success * l_opt / max(l_opt, path_length) (Anderson et al., 2018);
    SoftSPL = clip(1 - d_T / l_opt, 0, 1) * l_opt / max(l_opt, path_length), where l_opt is the
    geodesic length of the route from the start and d_T the geodesic distance still to go.
    """

    actions = (DiscreteAction.STOP, DiscreteAction.FORWARD, DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT)

    def __init__(
        self,
        success_distance: float = 0.2,
        success_reward: float = 2.5,
        slack_reward: float = -0.01,
        min_goal_distance: float = 1.0,
        max_goal_distance: float = 10.0,
        waypoint_distance: float = 0.5,
        waypoint_reward: float = 1.0,
    ) -> None:
        """Configure the task.

        Args:
            success_distance: metres; a stop closer (geodesic) to the last goal than this succeeds.
            success_reward: reward added on a successful stop.
            slack_reward: reward added every step (negative: a cost of time).
            min_goal_distance: metres, the least geodesic distance of a sampled goal.
            max_goal_distance: metres, the largest geodesic distance of a sampled goal.
            waypoint_distance: metres; coming this close (geodesic) to an intermediate goal passes it.
            waypoint_reward: reward added on passing an intermediate goal.
        """
        values = {
            "success_distance": success_distance,
            "success_reward": success_reward,
            "slack_reward": slack_reward,
            "min_goal_distance": min_goal_distance,
            "max_goal_distance": max_goal_distance,
            "waypoint_distance": waypoint_distance,
            "waypoint_reward": waypoint_reward,
        }
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value}")
        if success_distance <= 0:
            raise ValueError(f"success_distance must be > 0 metres, got {success_distance}")
        if waypoint_distance <= 0:
            raise ValueError(f"waypoint_distance must be > 0 metres, got {waypoint_distance}")
        if not 0 < min_goal_distance <= max_goal_distance:
            raise ValueError(
                f"goal distances must satisfy 0 < min_goal_distance <= max_goal_distance, "
                f"got min={min_goal_distance}, max={max_goal_distance}"
            )
        self.success_distance = float(success_distance)  # metres
        self.success_reward = float(success_reward)
        self.slack_reward = float(slack_reward)
        self.min_goal_distance = float(min_goal_distance)  # metres
        self.max_goal_distance = float(max_goal_distance)  # metres
        self.waypoint_distance = float(waypoint_distance)  # metres
        self.waypoint_reward = float(waypoint_reward)
        self.goal_radius = self.success_distance
        self.goal: np.ndarray | None = None
        self.route: list[np.ndarray] = []  # floor goals (x, z) in order; the last is where to stop
        self.leg = 0  # index in route of the current goal
        self.leg_lengths: list[float] = []  # metres, geodesic route[i] -> route[i + 1]
        self.start_distance = math.nan  # metres, geodesic route length from the start = l_opt
        self.goal_distance = math.nan  # metres, geodesic distance to the current goal
        self.distance = math.nan  # metres, geodesic distance still to go along the route
        self.success = False

    # -- hooks of the subclasses -----------------------------------------------------------

    def sample_route(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> list[np.ndarray]:
        """The episode's floor goals in order; by default one goal at a sampled geodesic distance."""
        return [self.sample_goal(scene, np.array([episode.start.x, episode.start.z]), rng)]

    def at_final_goal(self, state: RobotState) -> bool:
        """Whether a stop at ``state`` succeeds, given that the current goal is the route's last."""
        return self.goal_distance < self.success_distance

    # -- Task -------------------------------------------------------------------------------

    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Sample the route from the start and reset the distances."""
        route = [np.asarray(goal, dtype=np.float64) for goal in self.sample_route(scene, episode, rng)]
        if not route:
            raise RuntimeError(f"{type(self).__name__}.sample_route returned no goals")
        for goal in route:
            if goal.shape != (2,) or not np.all(np.isfinite(goal)):
                raise RuntimeError(f"scene {scene.env_id!r} returned an invalid goal {goal!r}")
        self.route, self.leg, self.goal = route, 0, route[0]
        self.leg_lengths = [float(scene.geodesic_distance(a, b)) for a, b in zip(route[:-1], route[1:], strict=True)]
        self.goal_distance = self._geodesic(scene, episode.start)
        self.start_distance = self.goal_distance + sum(self.leg_lengths)
        if not 0.0 < self.start_distance < math.inf:
            raise RuntimeError(
                f"scene {scene.env_id!r} (seed {scene.seed}) sampled the route {[g.tolist() for g in route]} of "
                f"geodesic length {self.start_distance} from the start; expected a positive finite length"
            )
        self.distance = self.start_distance
        self.success = False

    def step(self, scene: Scene, episode: Episode, action: int) -> tuple[float, bool]:
        """Reward the progress of the last move; pass a reached waypoint; a stop ends the episode."""
        previous = self.distance
        reward = self.slack_reward
        self.goal_distance = self._geodesic(scene, episode.state)
        if self.leg < len(self.route) - 1 and self.goal_distance < self.waypoint_distance:
            self.leg += 1
            self.goal = self.route[self.leg]
            self.goal_distance = self._geodesic(scene, episode.state)
            reward += self.waypoint_reward
        self.distance = self.goal_distance + sum(self.leg_lengths[self.leg :])
        reward += previous - self.distance
        terminated = self.actions[int(action)] == DiscreteAction.STOP
        if terminated and self.leg == len(self.route) - 1 and self.at_final_goal(episode.state):
            self.success = True
            reward += self.success_reward
        return float(reward), terminated

    def metrics(self, scene: Scene, episode: Episode) -> dict[str, Any]:
        """success, spl, soft_spl, distance_to_goal, start_distance_to_goal and the goal."""
        goal = self._require_goal()
        l_opt = self.start_distance
        efficiency = l_opt / max(l_opt, episode.path_length)
        progress = min(max(1.0 - self.distance / l_opt, 0.0), 1.0)
        return {
            "success": bool(self.success),
            "spl": float(self.success) * efficiency,
            "soft_spl": progress * efficiency,
            "distance_to_goal": float(self.goal_distance),  # metres, geodesic, to the current goal
            "start_distance_to_goal": float(l_opt),  # metres, geodesic, the shortest route's length
            "goal": goal.copy(),  # (x, z) metres, the current goal
        }

    # -- helpers ----------------------------------------------------------------------------

    def sample_goal(self, scene: Scene, origin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A free floor point at a geodesic distance in [min_goal_distance, max_goal_distance] from ``origin``.

        The range is clipped to what the layout allows, as the scene's ``sample_goal`` does.
        """
        return np.asarray(
            scene.sample_goal(rng, origin, self.min_goal_distance, self.max_goal_distance), dtype=np.float64
        )

    @staticmethod
    def pointgoal_space() -> spaces.Box:
        """The space of :meth:`pointgoal`: (distance m, heading rad) within the world."""
        max_range = 2.0 * math.sqrt(2.0) * WORLD_BOUND  # metres, the floor diagonal of the world
        low = np.array([0.0, -math.pi], dtype=np.float32)
        high = np.array([max_range, math.pi], dtype=np.float32)
        return spaces.Box(low, high, shape=(2,), dtype=np.float32)

    def pointgoal(self, state: RobotState) -> np.ndarray:
        """(distance m, heading rad in [-pi, pi)) from ``state`` to the current goal, float32.

        Heading 0 is straight ahead; positive is to the left (counter-clockwise seen from above),
        the way a positive yaw change turns the robot. The distance is Euclidean.
        """
        goal = self._require_goal()
        dx, dz = goal[0] - state.x, goal[1] - state.z
        bearing = math.atan2(-dz, dx)  # same convention as yaw: direction (cos, 0, -sin)
        heading = float(angle_difference(bearing, state.yaw))
        return np.array([math.hypot(dx, dz), heading], dtype=np.float32)

    def _geodesic(self, scene: Scene, state: RobotState) -> float:
        return float(scene.geodesic_distance(np.array([state.x, state.z]), self._require_goal()))

    def _require_goal(self) -> np.ndarray:
        if self.goal is None:
            raise RuntimeError(f"{type(self).__name__} has no goal yet: call reset(scene, episode, rng) first")
        return self.goal


class PointNavTask(NavigationTask):
    """Reach a goal point given its distance and direction (Habitat's PointNav with GPS+compass).

    The goal is a free floor point at a geodesic distance in [min_goal_distance,
    max_goal_distance] from the start; the agent must call stop within ``success_distance`` of
    it. Rewards and metrics are :class:`NavigationTask`'s with a one-goal route.
    """

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """``pointgoal``: (distance m, heading rad) to the goal in the agent's frame."""
        return {"pointgoal": self.pointgoal_space()}

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """GPS+compass PointGoal: Euclidean distance and heading (positive: goal on the left)."""
        return {"pointgoal": self.pointgoal(state)}
