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
        self.follower = ShortestPathFollower(self.env.scene, stop_distance=0.9 * self.env.task.success_distance)

    def act(self, observation: dict[str, Any]) -> int:
        """The follower's action from the env's current state (the observation is not needed)."""
        return self.follower.act(self.env.state, np.asarray(self.env.task.goal))
