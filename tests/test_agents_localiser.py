"""Tests of agents.localiser: landmark colours, the landmark map, localisation, the blind case, noise and specs."""

from __future__ import annotations

import argparse
import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from agents.envs import EnvConfig, flag_type, make_env, parse_bool
from agents.evaluate import make_agent, run_episode
from agents.localiser import LandmarkLocaliser, landmark_labels
from agents.rank import BlindView
from rtfm_env.envs.objectnav import OBJECT_KINDS
from rtfm_env.geometry import DiscreteAction

pytestmark = pytest.mark.usefixtures("one_thread")

KIND = {k.color: i for i, k in enumerate(OBJECT_KINDS)}


@pytest.fixture(scope="module")
def env():
    """ImageNav with landmarks and depth (ground truth, OneRoom, 1 m success), shared by the module."""
    env = make_env(EnvConfig(env_id="RTFM/ImageNav-v0", max_steps=150, success_distance=1.0, max_goal_distance=6.0,
                             landmarks=True, depth=True))()  # fmt: skip
    yield env
    env.close()


def test_labels_name_each_kind_lit_or_shaded_and_ignore_the_room():
    """Pure and shaded object colours get their kind; MiniWorld's greys and browns get none."""
    pixels = {
        "red": [[255, 0, 0], [150, 25, 25], [166, 0, 0]],
        "green": [[0, 255, 0], [51, 178, 49]],
        "blue": [[0, 0, 255], [50, 50, 176], [26, 25, 194]],  # what a loose test called purple
        "yellow": [[255, 255, 0], [170, 170, 20]],
        "purple": [[112, 38, 194], [70, 24, 120]],
    }
    for colour, values in pixels.items():
        labels = landmark_labels(np.array([values], dtype=np.uint8))
        assert (labels == KIND[colour]).all(), (colour, labels)
    room = np.array([[[100, 100, 100], [180, 150, 120], [139, 90, 60], [20, 10, 5], [240, 240, 235]]], dtype=np.uint8)
    assert (landmark_labels(room) == -1).all()
    with pytest.raises(ValueError, match="H, W, 3"):
        landmark_labels(np.zeros((8, 8), dtype=np.uint8))


def _scan(env, agent, seed):
    obs, info = env.reset(seed=seed)
    agent.reset()
    while agent.estimate is None:
        obs, *_ = env.step(agent.act(obs))
    return obs, info


@pytest.mark.parametrize("seed", [10000, 10001, 10004])
def test_scan_maps_the_landmarks_and_localises_the_goal_image(env, seed):
    """After the scan every landmark is mapped within 0.3 m and the goal is found within the 1 m success radius."""
    agent = make_agent("landmarks", env)
    _, info = _scan(env, agent, seed)
    scene = env.unwrapped.scene
    marks = agent.landmarks()
    assert set(marks) == {o.kind for o in scene.objects}
    for obj in scene.objects:
        assert np.linalg.norm(marks[obj.kind] - obj.xz) < 0.3, obj.name
    assert agent.estimate["matched"] >= 1
    assert np.linalg.norm(agent.estimate["target"] - np.asarray(info["goal"])) < 1.0


def test_it_succeeds_with_ground_truth_and_fails_blind(env):
    """With its eyes it reaches most goals; shown grey views and no depth it stops where it scanned."""
    seeds = [10000, 10001, 10002, 10003, 10004]
    seen = [run_episode(env, make_agent("landmarks", env), s)["success"] for s in seeds]
    assert sum(seen) >= 4, seen
    for s in seeds[:2]:
        agent = BlindView(make_agent("landmarks", env))
        obs, _ = env.reset(seed=s)
        agent.reset()
        actions = []
        done = False
        while not done:
            actions.append(agent.act(obs))
            obs, _, term, trunc, info = env.step(actions[-1])
            done = term or trunc
        assert actions == [DiscreteAction.TURN_LEFT] * 24 + [DiscreteAction.STOP]
        assert not info["success"]


def _actions(env, agent, seed, n=60):
    obs, _ = env.reset(seed=seed)
    agent.reset()
    out = []
    for _ in range(n):
        out.append(agent.act(obs))
        obs, _, term, trunc, _ = env.step(out[-1])
        if term or trunc:
            break
    return out


def test_noise_is_a_function_of_the_episode_and_the_seed(env):
    """An episode's noisy actions repeat whatever ran before; another seed gives other noise; noise never stops."""
    agent = make_agent("landmarks:noise=0.3", env)
    first = _actions(env, agent, 10002)
    _actions(env, agent, 10003)  # another episode in between
    assert _actions(env, agent, 10002) == first
    assert _actions(env, make_agent("landmarks:noise=0.3,seed=1", env), 10002) != first
    quiet = _actions(env, make_agent("landmarks", env), 10002)
    assert quiet != first
    rng_agent = LandmarkLocaliser.for_env(env, noise=1.0)
    assert DiscreteAction.STOP not in _actions(env, rng_agent, 10002, n=40)


def test_specs_and_their_errors(env):
    """landmarks:KEY=VALUE sets the agent; unknown keys, bad values and envs it cannot use are named."""
    agent = make_agent("landmarks:noise=0.2,scan_turns=12,seed=3", env)
    assert (agent.noise, agent.scan_turns, agent.seed) == (0.2, 12, 3)
    with pytest.raises(ValueError, match="KEY in"):
        make_agent("landmarks:speed=2", env)
    with pytest.raises(ValueError, match="needs a int"):
        make_agent("landmarks:scan_turns=many", env)
    with pytest.raises(ValueError, match="noise must be a probability"):
        make_agent("landmarks:noise=2", env)
    bare = make_env(EnvConfig(env_id="RTFM/ImageNav-v0", depth=True))()
    no_depth = make_env(EnvConfig(env_id="RTFM/ImageNav-v0", landmarks=True))()
    try:
        with pytest.raises(ValueError, match="landmarks=True"):
            make_agent("landmarks", bare)
        with pytest.raises(ValueError, match="depth=True"):
            make_agent("landmarks", no_depth)
    finally:
        bare.close()
        no_depth.close()
    obs, _ = env.reset(seed=0)
    with pytest.raises(KeyError, match="depth"):
        LandmarkLocaliser.for_env(env).act({k: v for k, v in obs.items() if k != "depth"})


def test_env_config_landmarks_and_depth():
    """Landmarks are ImageNav's alone; both settings are booleans; command lines parse true/false."""
    with pytest.raises(ValueError, match="ImageNav"):
        EnvConfig(env_id="RTFM/PointNav-v0", landmarks=True)
    with pytest.raises(ValueError, match="depth must be True or False"):
        EnvConfig(env_id="RTFM/ImageNav-v0", depth="yes")
    assert EnvConfig.from_dict({"env_id": "RTFM/ImageNav-v0"}).landmarks is False  # configs saved before the field
    assert [parse_bool(t) for t in ("true", "False", "1", "no")] == [True, False, True, False]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")
    assert flag_type(False) is parse_bool and flag_type(1.0) is float


def test_blind_view_removes_depth_too():
    """The blind pseudo-camera greys the view and gives no depth return, so depth cannot stand in for eyes."""
    seen = {}

    class Spy:
        def reset(self):
            pass

        def act(self, observation):
            seen.update(observation)
            return 0

    observation = {"rgb": np.zeros((4, 4, 3), np.uint8), "depth": np.ones((4, 4), np.float32), "pose": np.eye(4)}
    BlindView(Spy()).act(observation)
    assert (seen["rgb"] == BlindView.VALUE).all() and (seen["depth"] == 0).all()


@pytest.mark.parametrize("bad", [{"scan_turns": -1}, {"grid": 0.0}, {"noise": math.nan}, {"arrive": math.inf}])
def test_bad_settings_are_named(env, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LandmarkLocaliser.for_env(env, **bad)


def test_vector_env_runs_with_landmarks():
    """The batched env builds every sub-env with landmarks (same layouts, same goal images as single envs)."""
    vec = gym.make_vec("RTFM/ImageNav-v0", num_envs=2, scene="MiniWorld-OneRoom-v0", landmarks=True)
    single = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-OneRoom-v0", landmarks=True)
    try:
        obs, _ = vec.reset(seed=[5, 6])
        one, _ = single.reset(seed=6)
        np.testing.assert_array_equal(obs["imagegoal"][1], one["imagegoal"])
    finally:
        vec.close()
        single.close()
