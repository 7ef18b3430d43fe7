"""The native batched vector env: N rtfm-sim envs stepped together, one camera call per step.

``gymnasium.make_vec("RTFM/PointNav-v0", num_envs=N)`` returns a :class:`PointNavVectorEnv`
(every RTFM id names its class here as its ``vector_entry_point``). Each of the N envs keeps
its own scene, task, episode and generators, exactly as a single env made by ``gym.make``; what
the vector env adds is the batching of the camera: one step moves every robot (``begin_step``),
then produces all the new frames at once (one batched :meth:`FrameModel.generate` call for the
model camera, with one context retrieval per env from that env's own memory; one batched warp for the
reprojection camera; one render per env
for the ground truth), then hands each env its frame (``end_step``). The N model cameras share
one loaded :class:`~rtfm_env.model.sampler.FrameModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array

from rtfm_env.cameras import ModelCamera, ReprojectionCamera, observe_many, reproject_many
from rtfm_env.envs.base import RENDER_MODES, RTFMEnv

__all__ = [
    "RTFMVectorEnv",
    "PointNavVectorEnv",
    "ImageNavVectorEnv",
    "ExploreVectorEnv",
    "RevisitVectorEnv",
    "MAX_NUM_ENVS",
]

#: Most envs one vector env holds: each has its own scene (a MiniWorld env and GL context) and
#: camera, so far more would exhaust memory long before anything ran.
MAX_NUM_ENVS = 1024


class RTFMVectorEnv(VectorEnv[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """N rtfm-sim envs of one task stepped together, with one batched camera call per step.

    ## Description

    A native :class:`gymnasium.vector.VectorEnv` (no process pool) over N single envs of the
    class that the registered id's ``entry_point`` names. Every env is built with the same
    keyword arguments; with ``camera="model"`` the first env loads the frame model and the
    others share it. A step calls ``begin_step`` on each env, generates the frames of all the
    envs whose pose changed in ONE :func:`~rtfm_env.cameras.observe_many` call (model camera)
    or renders them one by one (ground truth), and finishes each env with ``end_step``.

    It behaves as ``gymnasium.make_vec(id, num_envs=N, vectorization_mode="sync")``
    (``SyncVectorEnv`` of the single env): the same seeds give the same observations, rewards,
    terminations, truncations and infos with the ground-truth camera. With the model camera
    every env draws its flow noise from its own seeded generator and conditions on its own
    memory, so a seeded run is reproducible and independent of the other envs' actions; its
    frames equal the single env's bit for bit at N = 1 and, at N > 1, up to the arithmetic of
    a larger batch (a level or so of uint8).

    ## Action Space

    ``batch_space(single_action_space, N)``: ``MultiDiscrete`` of N copies of the task's
    actions. :meth:`step` takes an integer array of shape (N,) and rejects anything else.

    ## Observation Space

    ``batch_space(single_observation_space, N)``: the single env's ``Dict`` with a leading N
    axis on every entry (``rgb`` (N, H, W, 3) uint8, ``pose`` (N, 4, 4) float32, ...).

    ## Rewards, Starting State, Episode End

    Those of the single env, per env. Autoreset is Gymnasium's next-step mode
    (``metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP``): the step after an env's
    episode ends resets that env (ignoring its action) and returns the first observation of
    the new episode with reward 0 and no termination or truncation; the other envs step on.

    ## Arguments

    - ``num_envs``: N, an integer in [1, :data:`MAX_NUM_ENVS`] (1024).
    - every other keyword: passed to each single env (``scene``, ``camera``, ``world``,
      ``resolution``, ``max_steps``, ``checkpoint``, ``k``, ...; see the task's env class). With
      ``world=FILE`` naming a world file with a free-space map (``rtfm-env world build``) every
      env moves in that recording, each with its own :class:`~rtfm_env.scenes.recorded.RecordedScene`
      and a memory camera reloading the file at each of its resets.

    ``reset(seed=s)`` seeds env i with ``s + i``; ``reset(seed=[s0, ..., sN-1])`` seeds each;
    ``reset(options={"reset_mask": mask})`` resets only the envs where the bool mask is True.
    ``info`` is a dict of arrays with a ``_key`` mask per key, as ``SyncVectorEnv``'s.

    ## Version History

    - v0: initial version.
    """

    metadata: dict[str, Any] = {
        "render_modes": RENDER_MODES,
        "render_fps": 10,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }
    #: The registered id whose single env (its ``entry_point``) this class batches.
    env_id: str | None = None

    def __init__(
        self, num_envs: int = 1, *, entry_point: str | Callable[..., RTFMEnv] | None = None, **kwargs: Any
    ) -> None:
        """Build N single envs with ``kwargs``; see the class docstring's Arguments section.

        Args:
            num_envs: how many envs, >= 1.
            entry_point: the single env's class or ``"module:Class"``; None takes the
                ``entry_point`` registered for :attr:`env_id` (the subclasses set it).
            **kwargs: the single env's keyword arguments.

        Raises:
            ValueError: ``num_envs`` is not an integer in [1, :data:`MAX_NUM_ENVS`].
            TypeError: no entry point, or one that does not build an :class:`RTFMEnv`.
        """
        super().__init__()
        if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, (int, np.integer)) or not (
            1 <= num_envs <= MAX_NUM_ENVS
        ):
            raise ValueError(f"num_envs must be an integer in [1, {MAX_NUM_ENVS}], got {num_envs!r}")
        if entry_point is None:
            if self.env_id is None:
                raise TypeError(
                    "RTFMVectorEnv needs entry_point= (the single env class); or use a subclass such as "
                    "PointNavVectorEnv, or gymnasium.make_vec(id, num_envs=N)"
                )
            entry_point = gym.spec(self.env_id).entry_point
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point

        self.num_envs = int(num_envs)
        self.envs: list[RTFMEnv] = []
        try:
            for i in range(self.num_envs):
                env = creator(**kwargs)
                self.envs.append(env)
                if not isinstance(env, RTFMEnv):
                    raise TypeError(f"{entry_point!r} built a {type(env).__name__}, not an RTFMEnv")
                if i == 0 and isinstance(env.camera, ModelCamera):
                    # The other envs' cameras share this camera's loaded model (and its device).
                    kwargs = {**kwargs, "checkpoint": env.camera.model}
        except BaseException:
            for env in self.envs:
                env.close()
            raise

        first = self.envs[0]
        self.metadata = {**first.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._batched_camera = isinstance(first.camera, ModelCamera)
        self._reprojection = isinstance(first.camera, ReprojectionCamera)

        self._observations: list[dict[str, np.ndarray] | None] = [None] * self.num_envs
        self._rewards = np.zeros(self.num_envs, dtype=np.float64)
        self._terminations = np.zeros(self.num_envs, dtype=np.bool_)
        self._truncations = np.zeros(self.num_envs, dtype=np.bool_)
        self._autoreset_envs = np.zeros(self.num_envs, dtype=np.bool_)
        self._unreset = np.ones(self.num_envs, dtype=np.bool_)  # envs never reset yet

    # ----------------------------------------------------------------------------------
    # VectorEnv API
    # ----------------------------------------------------------------------------------

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env (or those of ``options["reset_mask"]``) and batch the results.

        Args:
            seed: None (fresh entropy per env), an int s (env i gets s + i) or one seed (or
                None) per env.
            options: only ``reset_mask``, a bool array (N,): reset just those envs.

        Returns:
            The batched observations and the info dict of arrays (with ``_key`` masks).
        """
        self._check_open()
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            if seed < 0:
                raise ValueError(f"seed must be None, an integer >= 0 or a list of num_envs of them, got {seed!r}")
            seeds = [int(seed) + i for i in range(self.num_envs)]
        elif isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"seed as a list must have one entry per env (num_envs={self.num_envs}), got {len(seeds)}"
                )
            bad = [i for i, s in enumerate(seeds) if s is not None and (
                isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0)]
            if bad:
                raise ValueError(f"seed[{bad[0]}] must be None or an integer >= 0, got {seeds[bad[0]]!r}")
        else:
            raise TypeError(f"seed must be None, an int or a list of num_envs ints/None, got {seed!r}")
        options = dict(options or {})
        mask = np.ones(self.num_envs, dtype=np.bool_)
        if "reset_mask" in options:
            mask = options.pop("reset_mask")
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},), got {mask!r}"
                )
            if not mask.any():
                raise ValueError("options['reset_mask'] resets no env; set at least one entry True")

        infos: dict[str, Any] = {}
        for i in np.flatnonzero(mask):
            self._observations[i], info = self.envs[i].reset(seed=seeds[i], options=options or None)
            infos = self._add_info(infos, info, i)
        self._terminations[mask] = False
        self._truncations[mask] = False
        self._autoreset_envs[mask] = False
        self._unreset[mask] = False
        return self._batch_observations(), infos

    def step(
        self, actions: np.ndarray | Sequence[int]
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with its action, generating or rendering all new frames in one batch.

        Args:
            actions: integer array (N,), one action of the task per env. Envs whose episode
                ended on the previous step are reset instead (their action is ignored).

        Returns:
            Batched (observations, rewards (N,) float64, terminations (N,) bool,
            truncations (N,) bool, infos).

        Raises:
            ValueError: actions of the wrong shape, dtype or range (the message says what is
                expected).
            RuntimeError: called before every env has been reset, or after close().
        """
        self._check_open()
        actions = self._check_actions(actions)
        if self._unreset.any():
            raise RuntimeError(
                f"step() called before reset() of envs {np.flatnonzero(self._unreset).tolist()}; call reset() first"
            )

        reset_infos: dict[int, dict[str, Any]] = {}
        pending: list[tuple[int, np.ndarray]] = []  # (env index, pose whose frame is needed)
        for i, env in enumerate(self.envs):
            if self._autoreset_envs[i]:
                self._observations[i], reset_infos[i] = env.reset()
                self._rewards[i] = 0.0
                self._terminations[i] = self._truncations[i] = False
                continue
            pose = env.begin_step(actions[i])
            if pose is not None:
                pending.append((i, pose))

        frames = dict(zip([i for i, _ in pending], self._frames(pending), strict=True))
        infos: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            if i in reset_infos:
                info = reset_infos[i]
            else:
                got = frames.get(i)
                frame, depth = got if isinstance(got, tuple) else (got, None)
                (self._observations[i], self._rewards[i], self._terminations[i], self._truncations[i], info) = (
                    env.end_step(frame, depth)
                )
            infos = self._add_info(infos, info, i)
        self._autoreset_envs = self._terminations | self._truncations
        return (
            self._batch_observations(),
            self._rewards.copy(),
            self._terminations.copy(),
            self._truncations.copy(),
            infos,
        )

    def render(self) -> tuple[np.ndarray | None, ...]:
        """Each env's :meth:`RTFMEnv.render` (view beside the map), in env order."""
        self._check_open()
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        """Close every env (their cameras and scenes)."""
        for env in self.envs:
            env.close()

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every env (or read the attribute, if not callable)."""
        results = []
        for env in self.envs:
            attr = getattr(env, name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every env."""
        return tuple(getattr(env, name) for env in self.envs)

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        """Each env's seed of its generator."""
        return self.get_attr("np_random_seed")

    @property
    def np_random(self) -> tuple[np.random.Generator, ...]:
        """Each env's generator."""
        return self.get_attr("np_random")

    # ----------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------

    def _frames(self, pending: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """The frames at the pending poses: one batched generate, or one render per env.

        With ``depth=True`` each entry is a (frame, depth) pair.
        """
        if not pending:
            return []
        if self._reprojection:  # one batched warp for every env that moved
            cams, poses = [self.envs[i].camera for i, _ in pending], [pose[None] for _, pose in pending]
            if self.envs[0].depth:
                return [(f[0], d[0]) for f, d in reproject_many(cams, poses, depth=True)]
            return [f[0] for f in reproject_many(cams, poses)]
        if self._batched_camera:  # one batched generate for every env that moved
            cams, poses = [self.envs[i].camera for i, _ in pending], [pose[None] for _, pose in pending]
            if self.envs[0].depth:
                return [(f[0], d[0]) for f, d in observe_many(cams, poses, depth=True)]
            return [batch[0] for batch in observe_many(cams, poses)]
        if self.envs[0].depth:
            out = [self.envs[i].camera.observe_rgbd(pose[None]) for i, pose in pending]
            return [(frames[0], depths[0]) for frames, depths in out]
        return [self.envs[i].camera.observe(pose[None])[0] for i, pose in pending]

    def _batch_observations(self) -> dict[str, np.ndarray]:
        out = create_empty_array(self.single_observation_space, n=self.num_envs, fn=np.zeros)
        # Envs still unreset (a partial first reset) contribute zeros, as SyncVectorEnv's buffer.
        obs = [o if o is not None else _zeros_like(self.single_observation_space) for o in self._observations]
        return concatenate(self.single_observation_space, obs, out)  # a fresh buffer: callers may keep it

    def _check_actions(self, actions: np.ndarray | Sequence[int]) -> np.ndarray:
        space = self.single_action_space
        expected = (
            f"an integer array of shape ({self.num_envs},), one action in [{space.start}, {space.start + space.n}) "
            f"per env ({', '.join(f'{i} = {a}' for i, a in enumerate(self.envs[0].task.action_names))})"
        )
        try:
            arr = np.asarray(actions)
        except (TypeError, ValueError) as e:
            raise ValueError(f"actions must be {expected}; got {actions!r}") from e
        if arr.shape != (self.num_envs,) or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"actions must be {expected}; got a {arr.dtype} array of shape {arr.shape}")
        bad = np.flatnonzero((arr < space.start) | (arr >= space.start + space.n))
        if bad.size:
            raise ValueError(f"actions must be {expected}; envs {bad.tolist()} got {arr[bad].tolist()}")
        return arr.astype(np.int64)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} is closed; make a new one")


def _zeros_like(space: gym.spaces.Space) -> Any:
    return create_empty_array(space, n=None, fn=np.zeros)


class PointNavVectorEnv(RTFMVectorEnv):
    """``RTFM/PointNav-v0`` batched: N :class:`~rtfm_env.envs.pointnav.PointNavEnv` (see :class:`RTFMVectorEnv`)."""

    env_id = "RTFM/PointNav-v0"


class ImageNavVectorEnv(RTFMVectorEnv):
    """``RTFM/ImageNav-v0`` batched: N of its single envs (see :class:`RTFMVectorEnv`)."""

    env_id = "RTFM/ImageNav-v0"


class ExploreVectorEnv(RTFMVectorEnv):
    """``RTFM/Explore-v0`` batched: N of its single envs (see :class:`RTFMVectorEnv`)."""

    env_id = "RTFM/Explore-v0"


class RevisitVectorEnv(RTFMVectorEnv):
    """``RTFM/Revisit-v0`` batched: N of its single envs (see :class:`RTFMVectorEnv`)."""

    env_id = "RTFM/Revisit-v0"
