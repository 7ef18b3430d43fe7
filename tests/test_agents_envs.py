"""Tests for agents/envs.py: the agents' env config, the policy's observation and make_env."""

import numpy as np
import pytest

from agents.envs import EnvConfig, PolicyObservation, make_env, policy_observation


def test_make_env_sets_goal_range_and_policy_view(one_thread):
    """make_env's thunk applies the goal range; the policy view drops pose and puts channels first."""
    config = EnvConfig(min_goal_distance=1.0, max_goal_distance=2.0, max_steps=8)
    env = make_env(config, policy_view=True)()
    try:
        assert isinstance(env, PolicyObservation)
        assert set(env.observation_space.spaces) == {"rgb", "pointgoal"}
        assert env.observation_space["rgb"].shape == (3, 64, 64)
        for seed in range(5):
            obs, info = env.reset(seed=seed)
            assert env.observation_space.contains(obs)
            assert 0.8 <= info["start_distance_to_goal"] <= 2.5  # grid-snapped geodesic of a 1-2 m goal
    finally:
        env.close()


def test_policy_observation_transposes_and_checks():
    """policy_observation keeps rgb + pointgoal only and rejects bad input."""
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    out = policy_observation({"rgb": rgb, "pointgoal": np.array([1.0, 0.5]), "pose": np.eye(4)})
    assert set(out) == {"rgb", "pointgoal"} and out["pointgoal"].dtype == np.float32
    np.testing.assert_array_equal(out["rgb"], rgb.transpose(2, 0, 1))
    with pytest.raises(KeyError, match="pointgoal"):
        policy_observation({"rgb": rgb})
    with pytest.raises(ValueError, match="uint8"):
        policy_observation({"rgb": rgb.astype(np.float32), "pointgoal": np.zeros(2)})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"camera": "pinhole"}, ValueError, "ground_truth"),
        ({"env_id": "RTFM/Nope-v0"}, KeyError, "RTFM/PointNav-v0"),
        ({"success_distance": float("nan")}, ValueError, "success_distance"),
        ({"min_goal_distance": 4.0, "max_goal_distance": 2.0}, ValueError, "min_goal_distance"),
    ],
)
def test_env_config_rejects_bad_values(kwargs, error, match):
    """Unknown cameras or ids list the valid ones; bad distances name the field."""
    with pytest.raises(error, match=match):
        EnvConfig(**kwargs)


def test_env_config_round_trips_and_rejects_unknown_keys():
    """to_dict/from_dict round-trip; an unknown key lists the valid ones."""
    config = EnvConfig(camera="model", max_steps=10)
    assert EnvConfig.from_dict(config.to_dict()) == config
    with pytest.raises(KeyError, match="valid"):
        EnvConfig.from_dict({**config.to_dict(), "goal": 3})


def test_imagenav_goal_image_is_a_channel_first_policy_input(one_thread):
    """On ImageNav the policy reads rgb and the goal image, both (3, H, W) uint8; SB3 checks the view."""
    from stable_baselines3.common.env_checker import check_env

    env = make_env(EnvConfig(env_id="RTFM/ImageNav-v0", max_steps=8), policy_view=True)()
    try:
        space = env.observation_space
        assert set(space.spaces) == {"rgb", "imagegoal"}
        assert space["imagegoal"].shape == space["rgb"].shape == (3, 64, 64)
        obs, _ = env.reset(seed=3)
        raw = env.unwrapped._observation()
        assert np.array_equal(obs["imagegoal"], raw["imagegoal"].transpose(2, 0, 1))
        assert space.contains(obs)
        check_env(env, warn=False)
    finally:
        env.close()
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="imagegoal"):
        policy_observation({"rgb": rgb, "imagegoal": np.zeros((4, 4, 3), dtype=np.uint8)})
