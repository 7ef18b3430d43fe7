"""Gymnasium envs: a scene, a camera and a task composed by :class:`RTFMEnv`."""

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.pointnav import PointNavEnv
from rtfm_env.envs.tasks import WORLD_BOUND, Episode, PointNavTask, Task

__all__ = ["RTFMEnv", "PointNavEnv", "Task", "PointNavTask", "Episode", "WORLD_BOUND"]
