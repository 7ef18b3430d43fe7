"""The depth observation and the world argument through Gymnasium's and SB3's own checkers, on every id."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rtfm_env  # noqa: F401 (registers the envs)

RTFM_IDS = sorted(i for i in gym.registry if i.startswith("RTFM/"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("camera", ["ground_truth", "reprojection"])
@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_depth_observation_passes_both_checkers(env_id, camera):
    """With depth=True every id passes Gymnasium's and SB3's checkers; depth is finite-or-inf metres >= 0."""
    kwargs = {"world": "image"} if camera == "reprojection" else {}
    env = gym.make(env_id, camera=camera, depth=True, scene="MiniWorld-OneRoom-v0", **kwargs)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped, skip_render_check=True)
            sb3_check_env(env.unwrapped, warn=True)
        messages = [str(w.message) for w in caught if "unconventional shape" not in str(w.message)]
        assert messages == [], messages
        obs, _ = env.reset(seed=3)
        for action in (1, 2, 1, 3):
            obs, *_ = env.step(action)
            depth = obs["depth"]
            assert depth.shape == obs["rgb"].shape[:2] and depth.dtype == np.float32
            assert not np.isnan(depth).any() and (depth >= 0).all()
    finally:
        env.close()
