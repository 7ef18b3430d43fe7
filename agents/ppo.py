"""PPO baseline on stable-baselines3: a MultiInputPolicy over the view (rgb) and the point goal.

Read top to bottom, as cleanrl's ``ppo.py``:

1. **Envs**: ``make_env`` thunks (``agents/envs.py``) in a vector env; with the model camera,
   :class:`BatchedCameraVecEnv` makes one batched frame-model call per step for all envs.
2. **Policy**: :class:`PPOConfig` (hyperparameters) -> :func:`policy_kwargs` -> SB3's
   ``MultiInputActorCriticPolicy``: a CNN on the (3, H, W) view and a flatten of the point goal,
   concatenated, then separate policy and value MLPs.
3. **Algorithm**: :func:`build_ppo`, SB3's PPO (clipped surrogate, GAE, value and entropy terms).
4. **Persistence**: :func:`save_policy` / :func:`load_policy` write and read the policy as
   safetensors weights plus a JSON description (spaces, policy kwargs, hyperparameters, env),
   never SB3's pickled zip. A load rebuilds the SB3 policy and loads its state dict strictly.
5. **Acting**: :class:`PPOAgent`, the two-method :class:`~agents.base.Agent` over a saved policy.

Training from the command line is ``agents/train_ppo.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from copy import deepcopy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import safetensors.torch
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from agents.base import Agent
from agents.envs import EnvConfig, make_env, policy_observation
from rtfm_env.cameras import ModelCamera, observe_many
from rtfm_env.model.checkpoint import CheckpointError, read_verified_safetensors

__all__ = [
    "FORMAT",
    "PPOConfig",
    "BatchedCameraVecEnv",
    "make_vec_env",
    "policy_kwargs",
    "build_ppo",
    "save_policy",
    "load_policy",
    "PPOAgent",
    "PolicyFileError",
]

#: The ``format`` tag of a saved policy's JSON, checked on load.
FORMAT = "rtfm-sim-ppo-policy/1"
WEIGHTS_FILE = "policy.safetensors"
META_FILE = "policy.json"


class PolicyFileError(CheckpointError):
    """A saved policy that is missing, corrupt, or does not match what it is loaded for."""


# ----------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """PPO hyperparameters (SB3 names) and the policy network's sizes."""

    learning_rate: float = 3e-4  # Adam step size, constant
    n_steps: int = 128  # env steps per env per rollout
    batch_size: int = 64  # samples per minibatch
    n_epochs: int = 4  # passes over each rollout
    gamma: float = 0.99  # discount per step
    gae_lambda: float = 0.95  # GAE's bias-variance trade-off
    clip_range: float = 0.2  # PPO's ratio clip
    ent_coef: float = 0.01  # entropy bonus weight (keeps early exploration)
    vf_coef: float = 0.5  # value loss weight
    max_grad_norm: float = 0.5  # global gradient norm clip
    cnn_output_dim: int = 128  # features from the view's CNN (SB3's NatureCNN)
    net_arch: tuple[int, ...] = (64, 64)  # hidden sizes of the policy and of the value MLP
    # Initial logit offset of the "stop" action. With uniform initial actions an episode ends
    # after ~4 steps (a stop is drawn 1 time in 4), no goal is ever reached, and PPO settles on
    # stopping at once (it costs least); -3 makes early episodes walk (p(stop) ~ 1.6%).
    stop_bias: float = -3.0

    def __post_init__(self) -> None:
        self.net_arch = tuple(int(x) for x in self.net_arch)
        for name in ("learning_rate", "gamma", "gae_lambda", "clip_range", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("n_steps", "batch_size", "n_epochs", "cnn_output_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not math.isfinite(self.stop_bias):
            raise ValueError(f"stop_bias must be finite, got {self.stop_bias!r}")
        if not self.net_arch or min(self.net_arch) < 1:
            raise ValueError(f"net_arch must list positive layer sizes, got {self.net_arch!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (net_arch as a list)."""
        data = asdict(self)
        data["net_arch"] = list(self.net_arch)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise KeyError(f"unknown PPOConfig keys {unknown}; valid: {sorted(valid)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------
# Envs (plumbing)
# ----------------------------------------------------------------------------------------


class BatchedCameraVecEnv(DummyVecEnv):
    """SB3's ``DummyVecEnv`` whose model cameras generate the frames of all envs in one call.

    Each step runs every env's ``begin_step`` (move, score), then one
    :func:`~rtfm_env.cameras.observe_many` over the model cameras whose pose changed, then
    each env's ``end_step``; autoreset, ``terminal_observation`` and ``TimeLimit.truncated``
    are as ``DummyVecEnv``. With any other camera it is ``DummyVecEnv`` itself.
    """

    def __init__(self, env_fns: list) -> None:
        super().__init__(env_fns)
        self.cores = [env.unwrapped for env in self.envs]
        self.batched = all(isinstance(core.camera, ModelCamera) for core in self.cores) and all(
            hasattr(core, "begin_step") for core in self.cores
        )

    def step_wait(self):  # noqa: D102 (DummyVecEnv's contract)
        if not self.batched:
            return super().step_wait()
        poses = [core.begin_step(action) for core, action in zip(self.cores, self.actions, strict=True)]
        moved = [i for i, pose in enumerate(poses) if pose is not None]
        frames: dict[int, np.ndarray] = {}
        if moved:
            out = observe_many([self.cores[i].camera for i in moved], [poses[i][None] for i in moved])
            frames = {i: batch[0] for i, batch in zip(moved, out, strict=True)}
        for i, env in enumerate(self.envs):
            obs, reward, terminated, truncated, info = self.cores[i].end_step(frames.get(i))
            obs = env.observation(obs)  # the PolicyObservation wrapper, outermost
            self.buf_rews[i], self.buf_infos[i] = reward, info
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = env.reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), deepcopy(self.buf_infos)


def make_vec_env(config: EnvConfig, n_envs: int) -> VecEnv:
    """``n_envs`` envs of ``config`` as an SB3 vector env with the policy's observations.

    With the model camera all envs share one frame model (loaded once) and generate batched.
    """
    if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    extra: dict[str, Any] = {}
    if config.camera == "model":
        extra["checkpoint"] = ModelCamera(resolution=config.resolution).model
    thunks = [make_env(config, policy_view=True, **extra) for _ in range(int(n_envs))]
    return BatchedCameraVecEnv(thunks)


# ----------------------------------------------------------------------------------------
# Policy and algorithm
# ----------------------------------------------------------------------------------------


def policy_kwargs(config: PPOConfig) -> dict[str, Any]:
    """SB3 ``MultiInputActorCriticPolicy`` kwargs for ``config`` (all JSON-describable)."""
    return {
        "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
        "features_extractor_kwargs": {"cnn_output_dim": int(config.cnn_output_dim)},
    }


def build_ppo(env: VecEnv, config: PPOConfig, seed: int, device: str = "cpu") -> PPO:
    """SB3 PPO with a MultiInputPolicy on ``env`` (rgb channel-first + pointgoal).

    The "stop" action's initial logit is offset by ``config.stop_bias`` (see :class:`PPOConfig`).
    """
    model = PPO(
        "MultiInputPolicy",
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs=policy_kwargs(config),
        seed=seed,
        device=device,
        verbose=0,
    )
    task = getattr(env.get_attr("unwrapped")[0], "task", None)
    names = task.action_names if task is not None else ()
    if "stop" in names:
        with torch.no_grad():
            model.policy.action_net.bias[names.index("stop")] += config.stop_bias
    return model


# ----------------------------------------------------------------------------------------
# Persistence: safetensors + JSON, never pickle
# ----------------------------------------------------------------------------------------


def _space_to_json(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: _space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):

        def bound(a: np.ndarray) -> float | list:
            # One number when uniform (an image's 0..255), else the full array.
            return float(a.flat[0]) if np.all(a == a.flat[0]) else a.astype(np.float64).tolist()

        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": bound(space.low),
            "high": bound(space.high),
        }
    raise TypeError(f"cannot describe a {type(space).__name__} space; supported: Dict, Discrete, Box")


def _space_from_json(data: dict[str, Any]) -> spaces.Space:
    kind = data.get("type")
    if kind == "Dict":
        return spaces.Dict({k: _space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        shape = tuple(int(x) for x in data["shape"])
        low = np.broadcast_to(np.asarray(data["low"], dtype=dtype), shape)
        high = np.broadcast_to(np.asarray(data["high"], dtype=dtype), shape)
        return spaces.Box(low, high, shape=shape, dtype=dtype)
    raise ValueError(f"unknown space type {kind!r}; valid: ['Box', 'Dict', 'Discrete']")


def _replace_dir(tmp: Path, directory: Path) -> None:
    """Swap ``tmp`` in as ``directory``; an existing one is kept until the new one is in place."""
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old)


def save_policy(
    policy: MultiInputActorCriticPolicy,
    directory: str | os.PathLike,
    ppo: PPOConfig,
    env: EnvConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``policy`` to ``directory`` as ``policy.safetensors`` + ``policy.json``, atomically.

    The JSON holds what :func:`load_policy` needs to rebuild the network (observation and
    action spaces, policy kwargs via ``ppo``), the env it was trained on, the weights' size and
    SHA-256, and ``extra`` (e.g. timesteps trained). Both files are written in a temporary
    directory beside ``directory`` and swapped in, so an existing policy is never half-replaced.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    data = safetensors.torch.save(state)
    meta = {
        "format": FORMAT,
        "policy_class": "MultiInputActorCriticPolicy",
        "observation_space": _space_to_json(policy.observation_space),
        "action_space": _space_to_json(policy.action_space),
        "ppo": ppo.to_dict(),
        "env": env.to_dict(),
        "weights": {"file": WEIGHTS_FILE, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(data)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_policy(directory: str | os.PathLike, device: str = "cpu") -> tuple[MultiInputActorCriticPolicy, dict]:
    """Rebuild the SB3 policy saved by :func:`save_policy` and load its weights (strict).

    Returns:
        (policy in eval mode, the JSON metadata).

    Raises:
        FileNotFoundError: no directory or no ``policy.json`` in it.
        PolicyFileError: a JSON of another format, weights that are truncated, corrupt or from
            another save, or weights that do not fit the described network.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no saved policy at {directory}: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyFileError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PolicyFileError(f"{meta_path} is not a saved PPO policy (format {found!r}, expected {FORMAT!r})")
    try:
        observation_space = _space_from_json(meta["observation_space"])
        action_space = _space_from_json(meta["action_space"])
        config = PPOConfig.from_dict(meta["ppo"])
    except (KeyError, TypeError, ValueError) as e:
        raise PolicyFileError(f"{meta_path} does not describe a policy: {e}") from e
    weights = directory / meta.get("weights", {}).get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (named by {meta_path})")
    state = read_verified_safetensors(weights, meta.get("weights"), meta_path, required=True)
    policy = MultiInputActorCriticPolicy(
        observation_space, action_space, lr_schedule=lambda _: config.learning_rate, **policy_kwargs(config)
    )
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PolicyFileError(f"{weights} does not fit the network described in {meta_path}: {e}") from e
    policy.set_training_mode(False)
    return policy.to(device), meta


# ----------------------------------------------------------------------------------------
# Acting
# ----------------------------------------------------------------------------------------


class PPOAgent(Agent):
    """A saved PPO policy as an :class:`~agents.base.Agent` (reads only ``rgb`` and ``pointgoal``).

    Args:
        directory: a policy saved by :func:`save_policy`.
        deterministic: take the most likely action instead of sampling.
        device: torch device for the network.
        blind: replace every view by a uniform mid-grey frame (an ablation: how much of the
            policy's behaviour comes from the view rather than from the point goal).
    """

    #: The uniform value of a blind agent's frames (mid-grey).
    BLIND_VALUE = 128

    def __init__(
        self, directory: str | os.PathLike, deterministic: bool = True, device: str = "cpu", blind: bool = False
    ) -> None:
        self.policy, self.meta = load_policy(directory, device=device)
        self.env_config = EnvConfig.from_dict(self.meta["env"])
        self.deterministic = bool(deterministic)
        self.blind = bool(blind)

    def act(self, observation: dict[str, Any]) -> int:
        """The policy's action for one env observation."""
        obs = policy_observation(observation)
        if self.blind:
            obs["rgb"] = np.full_like(obs["rgb"], self.BLIND_VALUE)
        action, _ = self.policy.predict(obs, deterministic=self.deterministic)
        return int(action)

    def check_env(self, env: gym.Env) -> None:
        """Raise if ``env``'s policy observations differ from the ones the policy was trained on."""
        saved = self.policy.observation_space
        rgb = env.observation_space["rgb"].shape
        if (rgb[2], rgb[0], rgb[1]) != saved["rgb"].shape:
            raise ValueError(
                f"the env's rgb is {rgb} but the policy was trained on (H, W, C) = "
                f"{tuple(saved['rgb'].shape[i] for i in (1, 2, 0))}"
            )
        if env.action_space != self.policy.action_space:
            raise ValueError(
                f"the env's actions {env.action_space} differ from the policy's {self.policy.action_space}"
            )
