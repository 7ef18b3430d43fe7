"""Fuzzing the single Gymnasium env: ``gym.make`` keyword arguments, actions and reset seeds.

About one case in eight makes an env with one or two keyword arguments drawn from pools of
valid and hostile values (a bool is not a size, a fov or a seed; NaN, inf, negative and huge
values; wrong types). The rest drive persistent envs with actions and reset seeds from such
pools; every accepted step must return an observation inside the observation space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, SilentAcceptance

NAN, INF = float("nan"), float("inf")
IDS = ["RTFM/PointNav-v0", "RTFM/ImageNav-v0", "RTFM/Explore-v0", "RTFM/Revisit-v0"]
#: keyword -> (valid values, invalid values)
KWARGS: dict[str, tuple[list[Any], list[Any]]] = {
    "resolution": ([16, 32], [True, False, 0, -1, 10**9, 2**40, 1.5, NAN, "32", None, [32]]),
    "fov": ([45.0, 60, 90.0], [True, 0, -10.0, 180.0, 1e308, NAN, INF, "60", None]),
    "max_steps": ([1, 10, 500], [True, 0, -1, 1.5, NAN, "10", None]),
    "scene_seed": ([0, 7], [True, -1, 1.5, NAN, "0", 2**70]),
    "render_mode": ([None, "rgb_array"], [5, "x", True, "RGB"]),
    "depth": ([True, False], ["yes", 2, None, NAN]),
    # None is the default scene (FourRooms, or the map of a world file given as world=)
    "scene": (["MiniWorld-OneRoom-v0", "MiniWorld-FourRooms-v0", None], ["MiniWorld-Nope-v0", "", 5,
                                                                     "MiniWorld-OneRoom-v0 ", "../../etc/passwd"]),
    "camera": (["ground_truth", "reprojection", "nearest"], ["", "Model", 3, None, "ground_truth\x00"]),
    "world": (["image", "walk"], ["", "scan ", 5, True, "missing.rtfm", "/dev/null", "."]),
    "seed_views": ([1, 2], [0, -1, True, 10**6, 1.5, NAN]),
    "memory_capacity": ([None, 4096], [0, -1, True, 1.5, NAN, 10**30]),
    "k": ([1, 2], [0, -1, True, 1.5, NAN, 10**9]),
    "bogus_argument": ([], [1]),
}
MEMORY_ONLY = {"world", "seed_views", "memory_capacity", "k"}
ACTIONS: tuple[list[Any], list[Any], list[Any]] = (
    [0, 1, 2, 3, np.int64(1), np.int32(2), np.uint8(3)],  # valid
    [4, -1, True, False, 1.0, "1", None, NAN, 2**70, np.float64(1.0), np.bool_(True), [1], np.array([1, 2])],
    [np.array(1)],  # a 0-d array: either
)
SEEDS: tuple[list[Any], list[Any]] = (
    [None, 0, 5, 2**31, 2**63 - 1],
    [-1, True, 1.5, "3", NAN, [1, 2]],
)


def setup(workdir: Path) -> dict[str, Any]:
    """Two persistent envs to drive: ground truth and the reprojection camera with depth."""
    import gymnasium as gym

    import rtfm_env  # noqa: F401

    envs = [gym.make("RTFM/PointNav-v0", resolution=16, scene="MiniWorld-OneRoom-v0"),
            gym.make("RTFM/Explore-v0", resolution=16, camera="reprojection", world="image", depth=True,
                     scene="MiniWorld-OneRoom-v0")]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    return {"envs": envs, "dir": workdir}


def teardown(ctx: dict[str, Any]) -> None:
    """Close the envs."""
    for env in ctx["envs"]:
        env.close()


def _pick(rng: np.random.Generator, pool: list[Any]) -> Any:
    return pool[int(rng.integers(0, len(pool)))]


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """A gym.make, a step or a reset."""
    if index % 8 == 0:
        return _make_case(rng)
    env = ctx["envs"][index % 2]
    if rng.random() < 0.15:
        good = rng.random() < 0.5
        seed = _pick(rng, SEEDS[0] if good else SEEDS[1])

        def run_reset() -> None:
            obs, _ = env.reset(seed=seed)
            _check_obs(env, obs, f"reset(seed={seed!r})")

        return Case(f"reset(seed={seed!r})", good, run_reset)
    which = int(rng.choice([0, 0, 1, 2], p=[0.35, 0.35, 0.25, 0.05]))
    action = _pick(rng, ACTIONS[which])
    valid = {0: True, 1: False, 2: None}[which]

    def run_step() -> None:
        obs, reward, terminated, truncated, info = env.step(action)
        _check_obs(env, obs, f"step({action!r})")
        if not np.isfinite(reward):
            raise SilentAcceptance(f"step({action!r}) gave reward {reward}")
        if terminated or truncated:
            env.reset(seed=index)

    return Case(f"{env.spec.id}.step({action!r})", valid, run_step)


def _check_obs(env: Any, obs: Any, what: str) -> None:
    if not env.observation_space.contains(obs):
        bad = [k for k, space in env.observation_space.spaces.items() if not space.contains(obs.get(k))]
        raise SilentAcceptance(f"{what}: observation outside its space in {bad}")


def _make_case(rng: np.random.Generator) -> Case:
    import gymnasium as gym

    env_id = _pick(rng, IDS)
    kwargs: dict[str, Any] = {"resolution": 16, "scene": "MiniWorld-OneRoom-v0"}
    keys = list(KWARGS)
    is_bad: dict[str, bool] = {}
    for _ in range(int(rng.integers(1, 3))):
        key = _pick(rng, keys)
        good, bad = KWARGS[key]
        is_bad[key] = not good or rng.random() < 0.6
        kwargs[key] = _pick(rng, bad if is_bad[key] else good)
    n_bad = sum(is_bad.values())
    camera = kwargs.get("camera", "ground_truth")
    memory_keys = MEMORY_ONLY & set(kwargs)
    if memory_keys and camera in ("ground_truth", None) and "camera" not in kwargs:
        kwargs["camera"] = "reprojection"
        camera = "reprojection"
    if kwargs.get("depth") is True and camera == "nearest":
        kwargs["depth"] = False
    valid: bool | None = n_bad == 0
    if camera not in ("reprojection", "nearest") and memory_keys:
        valid = False if valid is True else valid
    what = f"gym.make({env_id!r}, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"

    def run() -> None:
        env = gym.make(env_id, **kwargs)
        try:
            obs, _ = env.reset(seed=0)
            _check_obs(env, obs, what)
            obs, *_ = env.step(1)
            _check_obs(env, obs, what)
            if kwargs.get("render_mode") == "rgb_array":
                frame = env.render()
                if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3):
                    raise SilentAcceptance(f"{what}: render() gave {type(frame).__name__}")
        finally:
            env.close()

    return Case(what, valid, run)
