"""The agent interface and the non-learned baselines.

An agent is reset at the start of an episode and then maps each observation to an action,
as habitat-lab's ``Agent``. Learned baselines (PPO) implement the same two methods.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np

from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.geometry import DiscreteAction

__all__ = ["Agent", "RandomAgent", "ShortestPathAgent"]


class Agent(ABC):
    """Maps observations to actions within one episode."""

    def reset(self) -> None:  # noqa: B027 (stateless agents need no reset)
        """Forget the last episode."""

    @abstractmethod
    def act(self, observation: dict[str, Any]) -> int:
        """The action for ``observation``."""


class RandomAgent(Agent):
    """Uniformly random actions from the env's action space, seeded."""

    def __init__(self, action_space: gym.spaces.Space, seed: int | None = None) -> None:
        self.action_space = copy.deepcopy(action_space)  # its own generator, not the env's
        self.action_space.seed(seed)

    def act(self, observation: dict[str, Any]) -> int:
        """A random action (the observation is ignored)."""
        return int(self.action_space.sample())


class ShortestPathAgent(Agent):
    """The oracle: follows the scene's geodesic path to the goal and stops on it.

    It reads privileged state from the env (the scene, the robot state and the goal), so it is
    the upper bound that learned agents are compared against, not a fair competitor.

    Args:
        env: an RTFM navigation env (wrapped or not); its ``unwrapped`` must expose ``scene``,
            ``state`` and ``task.goal``.
    """

    def __init__(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        for attr in ("scene", "state", "task"):
            if not hasattr(type(self.env), attr) and attr not in vars(self.env):
                raise TypeError(f"ShortestPathAgent needs an RTFM env exposing {attr!r}; got {type(self.env).__name__}")
        task = self.env.task
        if not hasattr(task, "success_distance"):
            raise ValueError(f"ShortestPathAgent needs a goal point; task {type(task).__name__} has none")
        self.follower = ShortestPathFollower(self.env.scene, stop_distance=0.9 * task.success_distance)

    def act(self, observation: dict[str, Any]) -> int:
        """The follower's action from the env's current state.

        On a task that also asks for a heading at the goal (Revisit's ``start_heading``), the
        agent turns towards it before stopping.
        """
        goal = self.env.task.goal
        if goal is None:
            raise ValueError(f"ShortestPathAgent needs a goal point; task {type(self.env.task).__name__} has none")
        action = self.follower.act(self.env.state, np.asarray(goal))
        heading = observation.get("start_heading") if isinstance(observation, dict) else None
        if action == DiscreteAction.STOP and heading is not None:
            half_turn = self.env.scene.kinematics.turn_step / 2  # radians
            error = float(np.asarray(heading).reshape(-1)[0])  # radians, positive = to the left
            if abs(error) > half_turn:
                return DiscreteAction.TURN_LEFT if error > 0 else DiscreteAction.TURN_RIGHT
        return action
