"""Tests of rtfm_env.envs.imagenav: RTFM/ImageNav-v0's goal image, rewards, metrics and rendering."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import viz
from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.envs.imagenav import ImageNavEnv
from rtfm_env.envs.tasks import free_ray_lengths

STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3


@pytest.fixture(scope="module")
def env():
    """One ImageNav env with rendering, shared by the module; MiniWorld envs are costly to create."""
    env = gym.make("RTFM/ImageNav-v0", render_mode="rgb_array")
    yield env.unwrapped
    env.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_goal_image_is_ground_truth_at_the_goal_facing_the_most_open_way(env, seed):
    """The goal image is the render at the goal point (camera height kept), facing the most open heading."""
    obs, info = env.reset(seed=seed)
    goal_state = env.task.goal_state
    assert (goal_state.x, goal_state.z) == pytest.approx(tuple(info["goal"]))
    assert goal_state.cam_height == env.state.cam_height and goal_state.pitch == env.state.pitch
    np.testing.assert_array_equal(obs["imagegoal"], env.scene.render(goal_state.pose()))
    headings = np.arange(24) * math.radians(15.0)
    half = math.radians(env.scene.intrinsics.fov_x) / 2
    angles = headings[:, None] + np.linspace(-half, half, 9)[None, :]
    scores = free_ray_lengths(env.scene.top_down_map(), info["goal"], angles, 10.0).reshape(24, 9).mean(axis=1)
    chosen = int(np.argmin(np.abs(np.angle(np.exp(1j * (headings - goal_state.yaw))))))
    assert scores[chosen] == pytest.approx(scores.max())


def test_goal_image_stays_fixed_through_the_episode(env):
    """The goal image is the same at every step and observations hold copies (editing one changes nothing)."""
    obs, _ = env.reset(seed=4)
    goal_image = obs["imagegoal"].copy()
    obs["imagegoal"][:] = 0
    for action in (FORWARD, LEFT, FORWARD):
        obs, *_ = env.step(action)
        np.testing.assert_array_equal(obs["imagegoal"], goal_image)


@pytest.mark.parametrize("seed", [0, 5])
def test_oracle_succeeds_and_rewards_are_pointnav_s(env, seed):
    """A shortest-path oracle stops within 0.2 m; SPL and the telescoping rewards follow PointNav's formulas."""
    _, info = env.reset(seed=seed)
    d0 = info["distance_to_goal"]
    rewards, done = [], False
    follower = ShortestPathFollower(env.scene, 0.9 * env.task.success_distance)
    while not done:
        _, reward, terminated, truncated, info = env.step(follower.act(env.state, env.task.goal))
        rewards.append(reward)
        done = terminated or truncated
    assert terminated and info["success"] and info["distance_to_goal"] < 0.2
    assert info["spl"] == pytest.approx(d0 / max(d0, info["path_length"]))
    assert sum(rewards) == pytest.approx(d0 - info["distance_to_goal"] + 2.5 - 0.01 * len(rewards))


def test_model_camera_still_shows_the_ground_truth_goal(one_thread):
    """With the model camera the robot's views are generated but the goal image is the scene's ground truth."""
    env = gym.make("RTFM/ImageNav-v0", camera="model")
    try:
        obs, _ = env.reset(seed=2)
        base = env.unwrapped
        np.testing.assert_array_equal(obs["imagegoal"], base.scene.render(base.task.goal_state.pose()))
    finally:
        env.close()


def test_render_shows_view_goal_image_and_map(env):
    """render() lays out the view, the goal image, then the map, each 256 pixels high."""
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(FORWARD)
    frame = env.render()
    gap = 4
    np.testing.assert_array_equal(frame[:, :256], viz.resize(obs["rgb"], 256))
    np.testing.assert_array_equal(frame[:, 256 + gap : 512 + gap], viz.resize(obs["imagegoal"], 256))
    assert np.all(frame[:, 512 + 2 * gap :] == viz.COLORS["robot"], axis=-1).any()


def test_bad_success_distance_raises():
    """A non-positive success distance raises ValueError naming it."""
    with pytest.raises(ValueError, match="success_distance"):
        ImageNavEnv(success_distance=-0.1)
