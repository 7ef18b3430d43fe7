"""Tasks: what an episode is for. Goals, rewards, termination and metrics.

An env composes a :class:`~rtfm_env.scenes.base.Scene` (where the robot may go), a
:class:`~rtfm_env.cameras.Camera` (what it sees) and a :class:`Task` (what it should do). The
env keeps the shared record of the episode (:class:`Episode`: states visited, path length,
collisions); a task reads that record and the scene, and answers with a reward, whether the
episode is over and the metrics to report. Tasks never render and never move the robot.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from rtfm_env.geometry import DiscreteAction, RobotState, angle_difference
from rtfm_env.scenes.base import Scene

__all__ = ["WORLD_BOUND", "Episode", "Task", "PointNavTask"]

#: Metres. Every position in a scene lies within |x|, |y|, |z| <= WORLD_BOUND; observation
#: spaces are bounded by it (Gymnasium's checker rejects infinite bounds) and envs check it.
WORLD_BOUND = 1000.0


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


class PointNavTask(Task):
    """Reach a goal point given its distance and direction (Habitat's PointNav with GPS+compass).

    The goal is a free floor point at a geodesic distance in [min_goal_distance,
    max_goal_distance] from the start (the range is clipped to what the layout allows, as the
    scene's ``sample_goal`` does). The agent must call stop within ``success_distance`` of it.

    Reward per step (Habitat's PointNav): the decrease in geodesic distance to the goal, plus
    ``success_reward`` on a successful stop, plus ``slack_reward`` (negative) every step.

    Metrics: success; SPL = success * l_opt / max(l_opt, path_length) (Anderson et al., 2018);
    SoftSPL = clip(1 - d_T / d_0, 0, 1) * l_opt / max(l_opt, path_length), where l_opt = d_0 is
    the geodesic start-to-goal distance and d_T the current one.
    """

    actions = (DiscreteAction.STOP, DiscreteAction.FORWARD, DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT)

    def __init__(
        self,
        success_distance: float = 0.2,
        success_reward: float = 2.5,
        slack_reward: float = -0.01,
        min_goal_distance: float = 1.0,
        max_goal_distance: float = 10.0,
    ) -> None:
        """Configure the task.

        Args:
            success_distance: metres; a stop closer (geodesic) to the goal than this succeeds.
            success_reward: reward added on a successful stop.
            slack_reward: reward added every step (negative: a cost of time).
            min_goal_distance: metres, the least geodesic start-to-goal distance sampled.
            max_goal_distance: metres, the largest geodesic start-to-goal distance sampled.
        """
        values = {
            "success_distance": success_distance,
            "success_reward": success_reward,
            "slack_reward": slack_reward,
            "min_goal_distance": min_goal_distance,
            "max_goal_distance": max_goal_distance,
        }
        for name, value in values.items():
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value}")
        if success_distance <= 0:
            raise ValueError(f"success_distance must be > 0 metres, got {success_distance}")
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
        self.goal_radius = self.success_distance
        self.goal: np.ndarray | None = None
        self.start_distance = math.nan  # metres, geodesic d_0 = l_opt
        self.distance = math.nan  # metres, geodesic distance now
        self.success = False

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """``pointgoal``: (distance m, heading rad) to the goal in the agent's frame."""
        max_range = 2.0 * math.sqrt(2.0) * WORLD_BOUND  # metres, the floor diagonal of the world
        low = np.array([0.0, -math.pi], dtype=np.float32)
        high = np.array([max_range, math.pi], dtype=np.float32)
        return {"pointgoal": spaces.Box(low, high, shape=(2,), dtype=np.float32)}

    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Sample a reachable goal from the start and reset the distances."""
        start = np.array([episode.start.x, episode.start.z])
        goal = scene.sample_goal(rng, start, self.min_goal_distance, self.max_goal_distance)
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape != (2,) or not np.all(np.isfinite(goal)):
            raise RuntimeError(f"scene {scene.env_id!r} returned an invalid goal {goal!r}")
        self.goal = goal
        self.start_distance = self._geodesic(scene, episode.start)
        if not 0.0 < self.start_distance < math.inf:
            raise RuntimeError(
                f"scene {scene.env_id!r} (seed {scene.seed}) sampled a goal {goal.tolist()} at geodesic "
                f"distance {self.start_distance} from the start; expected a positive finite distance"
            )
        self.distance = self.start_distance
        self.success = False

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """GPS+compass PointGoal: Euclidean distance and heading (positive: goal on the left)."""
        return {"pointgoal": self.pointgoal(state)}

    def pointgoal(self, state: RobotState) -> np.ndarray:
        """(distance m, heading rad in [-pi, pi)) from ``state`` to the goal, float32.

        Heading 0 is straight ahead; positive is to the left (counter-clockwise seen from above),
        the way a positive yaw change turns the robot.
        """
        goal = self._require_goal()
        dx, dz = goal[0] - state.x, goal[1] - state.z
        bearing = math.atan2(-dz, dx)  # same convention as yaw: direction (cos, 0, -sin)
        heading = float(angle_difference(bearing, state.yaw))
        return np.array([math.hypot(dx, dz), heading], dtype=np.float32)

    def step(self, scene: Scene, episode: Episode, action: int) -> tuple[float, bool]:
        """Reward the progress of the last move; a stop ends the episode, a close one succeeds."""
        previous = self.distance
        self.distance = self._geodesic(scene, episode.state)
        reward = (previous - self.distance) + self.slack_reward
        terminated = self.actions[int(action)] == DiscreteAction.STOP
        if terminated and self.distance < self.success_distance:
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
            "distance_to_goal": float(self.distance),  # metres, geodesic
            "start_distance_to_goal": float(l_opt),  # metres, geodesic, the shortest path's length
            "goal": goal.copy(),  # (x, z) metres
        }

    def _geodesic(self, scene: Scene, state: RobotState) -> float:
        return float(scene.geodesic_distance(np.array([state.x, state.z]), self._require_goal()))

    def _require_goal(self) -> np.ndarray:
        if self.goal is None:
            raise RuntimeError("PointNavTask has no goal yet: call reset(scene, episode, rng) first")
        return self.goal
