"""The env an agent is trained and evaluated on: one config, one ``make_env`` thunk.

Training (``agents/train_ppo.py``) and evaluation (``agents/evaluate.py``) build their envs
from the same :class:`EnvConfig`, so a policy is always evaluated on the task it was trained
on, and the config saved beside a policy is enough to rebuild that task.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import rtfm_env  # noqa: F401 (registers the RTFM/* ids)
from rtfm_env.cameras import CAMERAS

__all__ = [
    "POLICY_KEYS",
    "GOAL_KEYS",
    "EnvConfig",
    "PolicyObservation",
    "make_env",
    "policy_observation",
    "goal_key",
    "parse_bool",
    "flag_type",
]

#: The observation entries a learned PointNav policy reads. ``pose`` is left out: it is the exact
#: camera-to-world pose, privileged state that a robot with a camera and a GPS+compass lacks.
POLICY_KEYS = ("rgb", "pointgoal")

#: The goal entries a policy may read besides ``rgb``, one per task: PointNav's GPS+compass
#: point goal, ObjectNav's goal kind (an index, no direction to it), ImageNav's goal image (a
#: view taken at the goal: no direction or distance either).
GOAL_KEYS = ("pointgoal", "objectgoal", "imagegoal")


@dataclass
class EnvConfig:
    """The navigation task an agent runs on (``gym.make`` kwargs plus the goal range)."""

    env_id: str = "RTFM/PointNav-v0"  # a registered RTFM/* id with rgb + a goal entry of GOAL_KEYS
    scene: str = "MiniWorld-OneRoom-v0"  # MiniWorld env id of the layouts
    camera: str = "ground_truth"  # a name from rtfm_env.cameras.CAMERAS
    resolution: int = 64  # pixels, square view
    max_steps: int = 64  # actions before truncation
    success_distance: float = 0.5  # metres; a stop this close to the goal (geodesic) succeeds
    min_goal_distance: float = 1.0  # metres, least geodesic start-to-goal distance
    max_goal_distance: float = 3.0  # metres, largest geodesic start-to-goal distance
    landmarks: bool = False  # ImageNav only: ObjectNav's coloured objects in the layout, in view in the goal image
    depth: bool = False  # add the camera's depth observation (mapping policies: agents.localiser)

    def __post_init__(self) -> None:
        if self.env_id not in gym.registry:
            rtfm_ids = sorted(i for i in gym.registry if i.startswith("RTFM/"))
            raise KeyError(f"unknown env id {self.env_id!r}; registered RTFM ids: {rtfm_ids}")
        if self.camera not in CAMERAS:
            raise ValueError(f"unknown camera {self.camera!r}; valid cameras: {sorted(CAMERAS)}")
        for name in ("success_distance", "min_goal_distance", "max_goal_distance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number of metres, got {value!r}")
        for name in ("landmarks", "depth"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.landmarks and self.env_id != "RTFM/ImageNav-v0":
            raise ValueError(f"landmarks=True is an RTFM/ImageNav-v0 setting; {self.env_id} has none")
        if self.min_goal_distance > self.max_goal_distance:
            raise ValueError(
                f"min_goal_distance ({self.min_goal_distance}) must be <= max_goal_distance ({self.max_goal_distance})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise KeyError(f"unknown EnvConfig keys {unknown}; valid: {sorted(valid)}")
        return cls(**data)


def goal_key(keys: Any) -> str:
    """The goal entry of :data:`GOAL_KEYS` among ``keys`` (an observation or a Dict space's keys).

    Raises:
        KeyError: none of them is there (the message names them).
    """
    for key in GOAL_KEYS:
        if key in keys:
            return key
    raise KeyError(
        f"observation lacks a goal entry; a policy needs 'rgb' and one of {list(GOAL_KEYS)}, got {sorted(keys)}"
    )


def policy_observation(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The policy's view of an env observation: ``rgb`` channel-first (3, H, W) and the goal entry.

    The goal is ``pointgoal`` (float32), on ObjectNav ``objectgoal`` (an int64 index), on
    ImageNav ``imagegoal`` (uint8, channel-first like ``rgb``).
    Channel-first is what SB3's CNN expects; doing it here (rather than with SB3's
    ``VecTransposeImage``) keeps one observation format for training, saving and acting.
    """
    if "rgb" not in observation:
        raise KeyError(f"observation lacks ['rgb']; a policy needs {list(POLICY_KEYS)}, got {sorted(observation)}")
    key = goal_key(observation)
    rgb = np.asarray(observation["rgb"])
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"observation['rgb'] must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    goal = observation[key]
    if key == "pointgoal":
        goal = np.asarray(goal, dtype=np.float32)
    elif key == "objectgoal":
        goal = np.int64(goal)
    else:
        goal = np.asarray(goal)
        if goal.shape != rgb.shape or goal.dtype != np.uint8:
            raise ValueError(
                f"observation['imagegoal'] must be {rgb.shape} uint8 like rgb, got {goal.shape} {goal.dtype}"
            )
        goal = np.ascontiguousarray(goal.transpose(2, 0, 1))
    return {"rgb": np.ascontiguousarray(rgb.transpose(2, 0, 1)), key: goal}


class PolicyObservation(gym.ObservationWrapper):
    """Keeps ``rgb`` (channel-first) and the goal entry (:data:`GOAL_KEYS`) of an RTFM env's observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if (
            not isinstance(space, spaces.Dict)
            or "rgb" not in space.spaces
            or not any(k in space.spaces for k in GOAL_KEYS)
        ):
            raise ValueError(
                f"PolicyObservation needs a Dict observation space with 'rgb' and one of {list(GOAL_KEYS)}, got {space}"
            )
        key = goal_key(space.spaces)
        h, w, c = space["rgb"].shape
        image = spaces.Box(0, 255, shape=(c, h, w), dtype=np.uint8)
        self.observation_space = spaces.Dict({"rgb": image, key: image if key == "imagegoal" else space[key]})

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """See :func:`policy_observation`."""
        return policy_observation(observation)


def parse_bool(text: str) -> bool:
    """A command line's boolean: true/false, yes/no, 1/0 (any case)."""
    low = str(text).strip().lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def flag_type(default: Any) -> Callable[[str], Any]:
    """The argparse ``type`` of a config field with this default (``bool("False")`` is True, so booleans are parsed)."""
    return parse_bool if isinstance(default, bool) else type(default)


def make_env(config: EnvConfig, *, policy_view: bool = False, **kwargs: Any) -> Callable[[], gym.Env]:
    """A thunk that builds one env of ``config`` (the form vector envs take).

    Args:
        config: the task.
        policy_view: wrap with :class:`PolicyObservation` (what a learned policy reads).
        **kwargs: more ``gym.make`` kwargs (e.g. a shared frame model as ``checkpoint``).
    """

    def thunk() -> gym.Env:
        env = gym.make(
            config.env_id,
            scene=config.scene,
            camera=config.camera,
            resolution=config.resolution,
            max_steps=config.max_steps,
            success_distance=config.success_distance,
            # Passed only when set, so ids without these arguments keep working.
            **({"landmarks": True} if config.landmarks else {}),
            **({"depth": True} if config.depth else {}),
            **kwargs,
        )
        task = env.unwrapped.task
        # The goal range is not a gym.make kwarg; short episodes need near goals, so it is set
        # on the task before the first reset draws a goal.
        if not hasattr(task, "max_goal_distance"):
            env.close()
            raise ValueError(f"{config.env_id} has no goal distance range; agents/ needs a point-goal task")
        task.min_goal_distance = float(config.min_goal_distance)
        task.max_goal_distance = float(config.max_goal_distance)
        return PolicyObservation(env) if policy_view else env

    return thunk
