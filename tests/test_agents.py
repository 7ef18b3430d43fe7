"""Tests for the baseline agents."""

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401
from agents import RandomAgent, ShortestPathAgent


def _run(env, agent, seed):
    obs, info = env.reset(seed=seed)
    agent.reset()
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(agent.act(obs))
        done = terminated or truncated
    return info


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shortest_path_agent_succeeds(seed):
    """The oracle reaches the goal and stops there with near-optimal SPL."""
    env = gym.make("RTFM/PointNav-v0", max_steps=300)
    try:
        info = _run(env, ShortestPathAgent(env), seed)
    finally:
        env.close()
    assert info["success"] and info["spl"] > 0.8


@pytest.mark.parametrize("env_id", ["RTFM/ImageNav-v0", "RTFM/Revisit-v0"])
def test_shortest_path_agent_succeeds_on_goal_tasks(env_id):
    """The oracle also solves ImageNav and Revisit (turning to the start heading before it stops)."""
    env = gym.make(env_id, max_steps=400)
    try:
        infos = [_run(env, ShortestPathAgent(env), seed) for seed in (0, 1)]
    finally:
        env.close()
    assert all(info["success"] for info in infos)


def test_shortest_path_agent_needs_a_goal():
    """On Explore (no goal point) the oracle says it needs one."""
    env = gym.make("RTFM/Explore-v0", max_steps=5)
    try:
        env.reset(seed=0)
        with pytest.raises(ValueError, match="needs a goal point"):
            ShortestPathAgent(env)
    finally:
        env.close()


def test_random_agent_is_seeded_and_valid():
    """A seeded random agent repeats its actions and stays inside the action space."""
    env = gym.make("RTFM/PointNav-v0", max_steps=20)
    try:
        agent1, agent2 = RandomAgent(env.action_space, seed=3), RandomAgent(env.action_space, seed=3)
        seq1 = [agent1.act({}) for _ in range(50)]
        seq2 = [agent2.act({}) for _ in range(50)]
        assert seq1 == seq2 and all(env.action_space.contains(x) for x in seq1)
        assert len(set(seq1)) == 4
        info = _run(env, RandomAgent(env.action_space, seed=0), 0)
        assert np.isfinite(info["distance_to_goal"])
    finally:
        env.close()


def test_shortest_path_agent_rejects_other_envs():
    """Wrapping an env that is not an RTFM env fails with a clear message."""
    with pytest.raises(TypeError, match="RTFM env"):
        ShortestPathAgent(gym.make("CartPole-v1"))
