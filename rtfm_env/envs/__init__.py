"""Gymnasium envs: a scene, a camera and a task composed by :class:`RTFMEnv`, and their batched vector env."""

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.explore import ExploreEnv, ExploreTask
from rtfm_env.envs.imagenav import ImageNavEnv, ImageNavTask
from rtfm_env.envs.objectnav import ObjectNavEnv, ObjectNavTask
from rtfm_env.envs.pointnav import PointNavEnv
from rtfm_env.envs.revisit import RevisitEnv, RevisitTask
from rtfm_env.envs.tasks import WORLD_BOUND, Episode, NavigationTask, PointNavTask, Task
from rtfm_env.envs.vector import RTFMVectorEnv

__all__ = [
    "RTFMEnv",
    "RTFMVectorEnv",
    "PointNavEnv",
    "ImageNavEnv",
    "ObjectNavEnv",
    "ExploreEnv",
    "RevisitEnv",
    "Task",
    "NavigationTask",
    "PointNavTask",
    "ImageNavTask",
    "ObjectNavTask",
    "ExploreTask",
    "RevisitTask",
    "Episode",
    "WORLD_BOUND",
]
