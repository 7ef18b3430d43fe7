"""Tests of rtfm_env.envs.vector: the native batched vector env against SyncVectorEnv, batching and bad input."""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env.cameras import ModelCamera
from rtfm_env.envs.vector import PointNavVectorEnv, RTFMVectorEnv

RES = 64
N = 3
STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3

pytestmark = pytest.mark.usefixtures("one_thread")


def _importable(env_id: str) -> bool:
    module = gym.spec(env_id).entry_point.split(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return True


# Ids whose task module exists yet; the others are tested once their module lands.
RTFM_IDS = sorted(k for k in gym.registry if k.startswith("RTFM/") and _importable(k))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A tiny random-weight checkpoint (size T, 64x64) whose output depends on its inputs and noise."""
    return tiny_checkpoint


@pytest.fixture
def make_vec():
    """Factory of vector envs that are closed after the test (their MiniWorld envs go back to the pool)."""
    made = []

    def make(env_id="RTFM/PointNav-v0", num_envs=N, **kwargs):
        envs = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
        made.append(envs)
        return envs

    yield make
    for envs in made:
        envs.close()


def _actions(seed: int, steps: int, n: int = N) -> np.ndarray:
    """Random actions (steps, n) with stops, so episodes end by termination and by truncation."""
    return np.random.default_rng(seed).choice([STOP, FORWARD, FORWARD, LEFT, RIGHT], size=(steps, n))


def _rollout(envs, seed, actions) -> list[tuple]:
    obs, info = envs.reset(seed=seed)
    return [(obs, None, None, None, info)] + [envs.step(a) for a in actions]


def _assert_same_results(a: tuple, b: tuple) -> None:
    obs_a, *arrays_a, info_a = a
    obs_b, *arrays_b, info_b = b
    assert obs_a.keys() == obs_b.keys()
    for key in obs_a:
        np.testing.assert_array_equal(obs_a[key], obs_b[key], err_msg=key)
    for x, y in zip(arrays_a, arrays_b, strict=True):
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    assert list(info_a) == list(info_b)
    for key in info_a:
        np.testing.assert_array_equal(info_a[key], info_b[key], err_msg=key)


# ---------------------------------------------------------------------------------------
# Registration and the VectorEnv contract
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_make_vec_returns_the_native_vector_env(make_vec, env_id):
    """make_vec(id, num_envs=N) builds the native class with batched spaces and next-step autoreset."""
    envs = make_vec(env_id, num_envs=2, max_steps=3)
    assert isinstance(envs, RTFMVectorEnv) and envs.num_envs == 2
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.single_observation_space == envs.envs[0].observation_space
    assert envs.observation_space == batch_space(envs.single_observation_space, 2)
    assert envs.action_space == batch_space(envs.single_action_space, 2)
    obs, info = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    assert all(info[f"_{key}"].all() for key in info if not key.startswith("_"))
    obs, rewards, terminations, truncations, info = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert rewards.shape == (2,) and rewards.dtype == np.float64
    assert terminations.dtype == truncations.dtype == np.bool_


def test_pointnav_id_names_its_vector_class():
    """RTFM/PointNav-v0's vector_entry_point is PointNavVectorEnv, which batches its registered entry point."""
    assert gym.spec("RTFM/PointNav-v0").vector_entry_point == "rtfm_env.envs.vector:PointNavVectorEnv"
    assert PointNavVectorEnv.env_id == "RTFM/PointNav-v0"


# ---------------------------------------------------------------------------------------
# Equal to SyncVectorEnv of the single env
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id, seed", [*((env_id, 0) for env_id in RTFM_IDS), ("RTFM/PointNav-v0", [11, 5, 7])])
def test_matches_sync_vector_env_across_episode_ends(make_vec, env_id, seed):
    """Same seeds give identical observations, rewards, ends and infos as SyncVectorEnv, through autoresets."""
    actions = _actions(1, 14)
    native = _rollout(make_vec(env_id, max_steps=4), seed, actions)
    sync_envs = make_vec(env_id, max_steps=4, vectorization_mode="sync")
    assert isinstance(sync_envs, gym.vector.SyncVectorEnv)
    sync = _rollout(sync_envs, seed, actions)
    truncated = sum(int(r[3].sum()) for r in native[1:])
    terminated = sum(int(r[2].sum()) for r in native[1:])
    assert truncated >= 1  # episodes ended and were reset
    if env_id == "RTFM/PointNav-v0":
        assert terminated >= 1  # and by a stop too
    for a, b in zip(native, sync, strict=True):
        _assert_same_results(a, b)


def test_unseeded_reset_after_seeded_continues_like_sync(make_vec):
    """A seed-less reset continues each env's generator exactly as SyncVectorEnv does."""
    native, sync = make_vec(max_steps=3), make_vec(max_steps=3, vectorization_mode="sync")
    native.reset(seed=4)
    sync.reset(seed=4)
    _assert_same_results(native.reset(), sync.reset())


def test_one_env_ending_leaves_the_others_undisturbed(make_vec):
    """An env that stops is reset on the next step while the others go on exactly as if it had not stopped."""
    moves = np.array([[FORWARD, LEFT, FORWARD]] * 5)
    stopping = moves.copy()
    stopping[1, 0] = STOP
    a = _rollout(make_vec(), 3, moves)
    b = _rollout(make_vec(), 3, stopping)
    assert b[2][2].tolist() == [True, False, False]
    # The step after the stop resets env 0: first observation of a new episode, reward 0, steps 0.
    assert b[3][1][0] == 0.0 and b[3][4]["steps"][0] == 0 and not b[3][2][0]
    assert b[3][4]["scene_seed"][0] != b[2][4]["scene_seed"][0]
    for ra, rb in zip(a, b, strict=True):
        for key in ra[0]:
            np.testing.assert_array_equal(ra[0][key][1:], rb[0][key][1:])
        if ra[1] is not None:
            np.testing.assert_array_equal(ra[1][1:], rb[1][1:])


def test_reset_mask_resets_only_the_masked_envs(make_vec):
    """reset(options={'reset_mask': m}) starts new episodes only where m is True; the info masks say which."""
    envs = make_vec()
    obs, _ = envs.reset(seed=0)
    for _ in range(2):
        obs, *_ = envs.step(np.full(N, FORWARD))
    again, info = envs.reset(seed=[None, 20, None], options={"reset_mask": np.array([False, True, False])})
    assert info["_steps"].tolist() == [False, True, False]
    for key in obs:
        np.testing.assert_array_equal(again[key][[0, 2]], obs[key][[0, 2]])
    assert envs.envs[1].episode.steps == 0 and envs.envs[0].episode.steps == 2


def test_render_returns_each_envs_view(make_vec):
    """render() gives one composite (view beside the map) per env."""
    envs = make_vec(render_mode="rgb_array")
    envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == N
    single = envs.envs[0].render()
    for frame, called in zip(frames, envs.call("render"), strict=True):
        assert frame.shape == single.shape and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, called)
    assert envs.call("max_steps") == (500,) * N  # attributes are read, not called


# ---------------------------------------------------------------------------------------
# The model camera: one shared model, one generate per step, seeded streams
# ---------------------------------------------------------------------------------------


def test_model_camera_shares_one_model_and_generates_once_per_step(make_vec, checkpoint, monkeypatch):
    """The N model cameras hold one FrameModel; a step makes ONE generate call for the envs that moved."""
    envs = make_vec(camera="model", checkpoint=checkpoint, world="image")
    cams = envs.get_attr("camera")
    assert all(isinstance(c, ModelCamera) and c.model is cams[0].model for c in cams)
    calls = []
    generate = cams[0].model.generate

    def spy(target_poses, *args, **kwargs):
        calls.append(len(target_poses))
        return generate(target_poses, *args, **kwargs)

    monkeypatch.setattr(cams[0].model, "generate", spy)
    envs.reset(seed=0)
    envs.step(np.array([LEFT, LEFT, RIGHT]))  # turns always move the camera
    envs.step(np.array([STOP, LEFT, STOP]))  # only env 1 moves
    envs.step(np.array([LEFT, STOP, LEFT]))  # envs 0 and 2 are reset (no generation), env 1 stops
    assert calls == [3, 1]
    assert [len(c.memory) for c in cams] == [1, 3, 1]


def _model_frames(make_vec, checkpoint, num_envs, seed, mode=None, env_id="RTFM/PointNav-v0") -> np.ndarray:
    envs = make_vec(
        env_id, num_envs=num_envs, camera="model", checkpoint=checkpoint, max_steps=4, vectorization_mode=mode
    )
    return np.stack([r[0]["rgb"] for r in _rollout(envs, seed, _actions(2, 8, num_envs))])


def test_model_camera_is_reproducible_and_seed_dependent(make_vec, checkpoint):
    """A seeded model-camera rollout repeats bit for bit; another seed gives other frames."""
    a = _model_frames(make_vec, checkpoint, N, 5)
    b = _model_frames(make_vec, checkpoint, N, 5)
    c = _model_frames(make_vec, checkpoint, N, 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


#: Ids whose batched (N = 3) frames are also compared: the camera's batching is shared code, so
#: two ids cover it; every id's own wiring is compared bit for bit at N = 1.
BATCHED_IDS = ("RTFM/ImageNav-v0", "RTFM/PointNav-v0")


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_model_camera_frames_match_the_single_env(make_vec, checkpoint, env_id):
    """Each env's generated frames are the single env's (bit for bit at N = 1, to batch arithmetic at N = 3)."""
    np.testing.assert_array_equal(
        _model_frames(make_vec, checkpoint, 1, 8, env_id=env_id),
        _model_frames(make_vec, checkpoint, 1, 8, mode="sync", env_id=env_id),
    )
    if env_id not in BATCHED_IDS:
        return
    native = _model_frames(make_vec, checkpoint, N, 8, env_id=env_id).astype(int)
    sync = _model_frames(make_vec, checkpoint, N, 8, mode="sync", env_id=env_id).astype(int)
    diff = np.abs(native - sync)
    assert diff.max() <= 4 and diff.mean() < 0.05


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_envs", [0, -2, 2.5, True, "3", None, 10**6])
def test_rejects_bad_num_envs(num_envs):
    """num_envs that is not an integer in [1, MAX_NUM_ENVS] raises ValueError naming it and the bound."""
    with pytest.raises(ValueError, match=r"num_envs must be an integer in \[1, 1024\]"):
        gym.make_vec("RTFM/PointNav-v0", num_envs=num_envs)


@pytest.mark.parametrize(
    "actions, match",
    [
        (np.array([1, 1]), r"shape \(3,\).*shape \(2,\)"),
        (np.array([[1, 1, 1]]), r"shape \(3,\).*shape \(1, 3\)"),
        (1, r"shape \(3,\).*shape \(\)"),
        (np.array([1.0, 1.0, 1.0]), r"integer array.*got a float64 array"),
        (np.array([True, False, True]), r"integer array.*got a bool array"),
        (np.array([1, 4, 1]), r"in \[0, 4\).*envs \[1\] got \[4\]"),
        (np.array([-1, 1, 9]), r"envs \[0, 2\] got \[-1, 9\]"),
        (["forward", "stop", "left"], "integer array"),
    ],
    ids=["short", "2d", "scalar", "float", "bool", "too-big", "negative", "strings"],
)
def test_rejects_bad_actions_and_keeps_working(make_vec, actions, match):
    """Actions of the wrong shape, dtype or range raise ValueError saying what was expected; nothing moves."""
    envs = make_vec()
    obs, _ = envs.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        envs.step(actions)
    assert [e.episode.steps for e in envs.envs] == [0, 0, 0]
    np.testing.assert_array_equal(envs.step(np.ones(N, dtype=np.int32))[4]["steps"], [1, 1, 1])


def test_step_before_reset_and_after_close_raise(make_vec):
    """Stepping before reset or after close raises RuntimeError saying what to do."""
    envs = make_vec()
    with pytest.raises(RuntimeError, match=r"before reset\(\) of envs \[0, 1, 2\]"):
        envs.step(np.ones(N, dtype=np.int64))
    envs.close()
    with pytest.raises(RuntimeError, match="closed"):
        envs.reset(seed=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(seed=[1, 2]), ValueError, "one entry per env"),
        (dict(seed="7"), TypeError, "seed must be None, an int or a list"),
        (dict(seed=True), TypeError, "seed must be None, an int or a list"),
        (dict(seed=[0, True, 2]), ValueError, r"seed\[1\] must be None or an integer >= 0, got True"),
        (dict(seed=-1), ValueError, "seed must be None, an integer >= 0"),
        (dict(options={"reset_mask": np.zeros(N, bool)}), ValueError, "resets no env"),
        (dict(options={"reset_mask": [True] * N}), ValueError, "bool numpy array of shape"),
        (dict(options={"start": 1}), ValueError, "takes no options"),
    ],
    ids=["seed-count", "seed-type", "seed-bool", "seed-list-bool", "seed-negative", "empty-mask", "list-mask",
         "unknown-option"],
)
def test_reset_rejects_bad_seeds_and_options(make_vec, kwargs, error, match):
    """Bad seeds and reset options raise with a message naming the problem."""
    envs = make_vec()
    with pytest.raises(error, match=match):
        envs.reset(**kwargs)


def test_bad_single_env_kwargs_fail_and_release_what_was_built():
    """An unknown camera fails with the valid cameras listed, and the generic class needs an entry point."""
    with pytest.raises(ValueError, match=r"unknown camera 'pinhole'; valid cameras: \['ground_truth', 'model'"):
        gym.make_vec("RTFM/PointNav-v0", num_envs=2, camera="pinhole")
    with pytest.raises(TypeError, match="needs entry_point="):
        RTFMVectorEnv(2)
