"""Tests of rtfm_env.envs.revisit: RTFM/Revisit-v0's phases, rewards, success and revisit consistency."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import viz
from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.envs.revisit import RevisitEnv
from rtfm_env.eval.metrics import PSNR_CAP

STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3
TURN = math.radians(15.0)


@pytest.fixture(scope="module")
def env():
    """One Revisit env with rendering, shared by the module; MiniWorld envs are costly to create."""
    env = gym.make("RTFM/Revisit-v0", render_mode="rgb_array")
    yield env.unwrapped
    env.close()


def _oracle(env, obs) -> int:
    """Follow the geodesic path to the current goal; at the start, turn to its heading, then stop."""
    action = ShortestPathFollower(env.scene, 0.9 * env.task.success_distance).act(env.state, env.task.goal)
    if action == STOP and abs(obs["start_heading"][0]) > TURN / 2:
        return LEFT if obs["start_heading"][0] > 0 else RIGHT
    return action


def _run(env, seed: int, policy=_oracle) -> tuple[list, list, dict]:
    obs, info = env.reset(seed=seed)
    observations, rewards, done = [obs], [], False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(env, obs))
        observations.append(obs)
        rewards.append(reward)
        done = terminated or truncated
    return observations, rewards, info


def test_reset_observes_the_waypoint_in_the_out_phase(env):
    """At reset the phase is out, pointgoal aims at the waypoint, and the start heading is straight ahead."""
    obs, info = env.reset(seed=0)
    assert obs["phase"] == 0 and info["phase"] == 0
    np.testing.assert_array_equal(info["goal"], info["waypoint"])
    state = env.state
    assert obs["pointgoal"][0] == pytest.approx(math.hypot(*(info["waypoint"] - [state.x, state.z])), abs=1e-5)
    assert obs["start_heading"] == pytest.approx([0.0])
    assert 2.0 - 0.1 <= info["distance_to_goal"] <= 6.0 + 0.1
    assert "revisit_psnr" not in info and "revisit_ssim" not in info
    obs, *_ = env.step(LEFT)
    assert obs["start_heading"][0] == pytest.approx(-TURN, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_goes_out_comes_back_and_succeeds(env, seed):
    """An oracle passes the waypoint once, returns to the start pose, succeeds, and the rewards telescope."""
    observations, rewards, info = _run(env, seed)
    phases = [int(o["phase"]) for o in observations]
    assert phases == sorted(phases) and phases[0] == 0 and phases[-1] == 1  # out, then back, once
    assert info["success"] and info["spl"] > 0.5
    assert info["distance_to_goal"] < 0.2 and info["start_heading_error"] <= math.radians(10.0)
    np.testing.assert_array_equal(info["goal"], [env.episode.start.x, env.episode.start.z])
    l_opt = info["start_distance_to_goal"]
    assert sum(rewards) == pytest.approx(l_opt - info["distance_to_goal"] + 1.0 + 2.5 - 0.01 * len(rewards))
    # With the ground-truth camera, the view back at the start pose matches the start's closely.
    assert info["revisit_ssim"] > 0.8 and 25.0 < info["revisit_psnr"] <= PSNR_CAP
    if env.state == env.episode.start:
        assert info["revisit_psnr"] == PSNR_CAP and info["revisit_ssim"] == pytest.approx(1.0)


def test_returning_with_the_wrong_heading_fails(env):
    """Stopping at the start position but facing away from the start heading is not a success."""

    def turned_away(env, obs):
        action = ShortestPathFollower(env.scene, 0.9 * env.task.success_distance).act(env.state, env.task.goal)
        if action == STOP and abs(obs["start_heading"][0]) < TURN / 2:
            return LEFT  # at the start facing its heading: turn one step away before stopping
        return action

    _, _, info = _run(env, 0, turned_away)
    assert info["phase"] == 1 and info["distance_to_goal"] < 0.2
    assert info["start_heading_error"] > math.radians(10.0)
    assert not info["success"] and info["spl"] == 0.0


def test_stop_while_out_ends_without_success(env):
    """A stop in the out phase ends the episode as a failure."""
    env.reset(seed=1)
    _, reward, terminated, _, info = env.step(STOP)
    assert terminated and not info["success"] and info["phase"] == 0
    assert reward == pytest.approx(-0.01)


def test_turning_back_before_the_waypoint_is_no_revisit(env):
    """Returning to the start pose in the out phase (turn left then right) does not count as a revisit."""
    env.reset(seed=2)
    env.step(LEFT)
    _, _, _, _, info = env.step(RIGHT)
    assert env.state == env.episode.start and info["phase"] == 0
    assert "revisit_psnr" not in info


def test_model_camera_revisit_scores_are_finite(one_thread):
    """With the model camera the revisit scores compare a generated return view with the start's and are finite."""
    env = gym.make("RTFM/Revisit-v0", camera="model")
    try:
        _, _, info = _run(env.unwrapped, 0)
    finally:
        env.close()
    assert info["success"]
    assert math.isfinite(info["revisit_psnr"]) and 0.0 < info["revisit_psnr"] <= PSNR_CAP
    assert -1.0 <= info["revisit_ssim"] <= 1.0


def test_render_marks_the_start_pose(env):
    """render() draws the start pose to return to as a goal-coloured outline on the map."""
    env.reset(seed=0)
    for _ in range(6):
        env.step(FORWARD)
    frame = env.render()
    assert np.all(frame[:, 260:] == viz.COLORS["goal"], axis=-1).sum() > 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heading_tolerance": 0.0}, "heading_tolerance"),
        ({"heading_tolerance": "10"}, "heading_tolerance"),
        ({"min_away_distance": 3.0, "max_away_distance": 1.0}, "min_goal_distance <= max_goal_distance"),
        ({"waypoint_distance": 0.0}, "waypoint_distance"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    """Bad Revisit arguments raise ValueError naming them."""
    with pytest.raises(ValueError, match=match):
        RevisitEnv(**kwargs)
