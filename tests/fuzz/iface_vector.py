"""Fuzzing the native vector env: ``make_vec`` arguments, batched actions and reset seeds.

Accepted steps must return observations inside the batched observation space and finite
rewards; a refused step must leave the env usable (the next valid step works).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, SilentAcceptance

N = 2
NAN = float("nan")


def setup(workdir: Path) -> dict[str, Any]:
    """A 2-env PointNav vector env on OneRoom at 16x16."""
    import gymnasium as gym

    import rtfm_env  # noqa: F401

    envs = gym.make_vec("RTFM/PointNav-v0", num_envs=N, resolution=16, scene="MiniWorld-OneRoom-v0")
    envs.reset(seed=0)
    return {"envs": envs}


def teardown(ctx: dict[str, Any]) -> None:
    """Close the vector env."""
    ctx["envs"].close()


def _actions(rng: np.random.Generator) -> tuple[Any, bool | None]:
    good = rng.integers(0, 4, size=N)
    choices: list[tuple[Any, bool | None]] = [
        (good.astype(np.int64), True), (good.astype(np.int32), True), (good.tolist(), None),
        (good[:1], False), (np.r_[good, 1], False), (good.astype(bool), False), (good.astype(np.float64), False),
        (np.array([NAN] * N), False), (np.array([-1] * N), False), (np.array([4] * N), False),
        (good.reshape(1, N), False), (None, False), ("01", False), (np.array([2**40] * N), False), (3, False),
        (np.array([0, 1], dtype=np.uint8), True), ([True, False], False),
    ]
    return choices[int(rng.integers(0, len(choices)))]


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """A step, a reset, or a make_vec."""
    envs = ctx["envs"]
    r = rng.random()
    if index % 25 == 24:
        return _make_vec_case(rng)
    if r < 0.2:
        seeds: list[tuple[Any, bool | None]] = [(None, True), (0, True), ([1, 2], True), ([1], False),
                                                 ([1, 2, 3], False), (-1, False), (True, False), ([True, 1], False),
                                                 (1.5, False), ([NAN, 1], False), ("3", False)]
        seed, valid = seeds[int(rng.integers(0, len(seeds)))]

        def run_reset() -> None:
            obs, _ = envs.reset(seed=seed)
            if not envs.observation_space.contains(obs):
                raise SilentAcceptance(f"reset(seed={seed!r}): observation outside the space")

        return Case(f"reset(seed={seed!r})", valid, run_reset)
    actions, valid = _actions(rng)

    def run_step() -> None:
        obs, rewards, term, trunc, infos = envs.step(actions)
        if not envs.observation_space.contains(obs):
            raise SilentAcceptance(f"step({actions!r}): observation outside the space")
        if not np.all(np.isfinite(rewards)) or np.shape(rewards) != (N,):
            raise SilentAcceptance(f"step({actions!r}): rewards {rewards!r}")

    return Case(f"step({actions!r})", valid, run_step)


def _make_vec_case(rng: np.random.Generator) -> Case:
    import gymnasium as gym

    values: list[tuple[Any, bool | None]] = [(1, True), (2, True), (0, False), (-1, False), (True, False),
                                             (1.5, False), ("2", False), (NAN, False)]
    n, valid = values[int(rng.integers(0, len(values)))]

    def run() -> None:
        envs = gym.make_vec("RTFM/PointNav-v0", num_envs=n, resolution=16, scene="MiniWorld-OneRoom-v0")
        try:
            envs.reset(seed=0)
        finally:
            envs.close()

    return Case(f"make_vec(num_envs={n!r})", valid, run)
