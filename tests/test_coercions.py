"""Issue 15, item 6: no silent coercion and clear errors at construction time.

A bool is not a number (not an action, a fov, a resolution or a seed), a bad size raises a
ValueError naming its bound, and a bad ``render_mode`` names the valid modes. Every case here
fails before anything is rendered, so the module stays fast.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env
from rtfm_env.cameras import GroundTruthCamera, ModelCamera, NearestViewCamera, ReprojectionCamera
from rtfm_env.envs.base import MAX_RESOLUTION, RENDER_MODES
from rtfm_env.envs.vector import MAX_NUM_ENVS
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.miniworld import MAX_IMAGE_SIDE

IDS = sorted(rtfm_env.ENV_IDS)

pytestmark = pytest.mark.usefixtures("one_thread")

RENDER = r"unknown render_mode {}; valid: \[None, 'rgb_array'\]"
STEPS = r"steps must be None \(the model's default\) or an integer in \[1, 1000\], got {}"
SEED_VIEWS = r"seed_views must be an integer in \[1, 360\], got {}"

# (gym.make kwargs, message): every one fails while the env is built, before any render.
ENV_CASES = [
    ({"render_mode": 5}, RENDER.format(5)),
    ({"render_mode": True}, RENDER.format(True)),
    ({"render_mode": 1.5}, RENDER.format(1.5)),
    ({"render_mode": ["rgb_array"]}, RENDER.format(r"\['rgb_array'\]")),
    ({"fov": True}, r"fov must be a vertical field of view in \(0, 180\) degrees, got True"),
    ({"fov": False}, r"fov must be .* got False"),
    ({"fov": np.True_}, r"fov must be .* got np.True_"),
    ({"fov": math.inf}, r"fov must be .* got inf"),
    ({"resolution": True}, r"resolution must be"),
    ({"resolution": 10**9}, rf"resolution must be an integer in \[8, {MAX_RESOLUTION}\] pixels, got 1000000000"),
    ({"resolution": MAX_RESOLUTION + 1}, rf"in \[8, {MAX_RESOLUTION}\] pixels, got {MAX_RESOLUTION + 1}"),
    ({"max_steps": True}, "max_steps must be a positive integer, got True"),
    ({"scene_seed": True}, "scene_seed must be None .* got True"),
    ({"scene_seed": np.True_}, "scene_seed must be None .* got np.True_"),
    ({"depth": 1}, "depth must be True or False, got 1"),
    ({"camera": "model", "sampling_steps": 10**9}, STEPS.format(1000000000)),
    ({"camera": "model", "sampling_steps": 1001}, STEPS.format(1001)),
    ({"camera": "model", "sampling_steps": True}, STEPS.format(True)),
    ({"camera": "model", "seed_views": 10**6}, SEED_VIEWS.format(1000000)),
    ({"camera": "nearest", "seed_views": True}, SEED_VIEWS.format(True)),
    ({"camera": "reprojection", "seed_views": 361}, SEED_VIEWS.format(361)),
    ({"camera": "model", "k": True}, r"k must be an integer in \[1, 8\] \(the model's max_context\), got True"),
    ({"camera": "reprojection", "k": 10**6}, r"k must be an integer in \[1, 64\], got 1000000"),
    ({"camera": "model", "compile_model": 1}, "compile must be True or False, got 1"),
    ({"camera": "nearest", "memory_capacity": True}, "memory_capacity must be None or an integer"),
    ({"camera": "model", "context_strategy": 5}, "unknown context strategy 5; valid strategies"),
    ({"camera": "model", "checkpoint": 5}, "checkpoint must be None, a checkpoint directory or a FrameModel, got 5"),
    ({"camera": "nearest", "world": 5}, "world must be one of"),
]


def _case_id(case):
    kwargs = case[0]
    return ",".join(f"{k}={v!r}"[:24] for k, v in kwargs.items())


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("kwargs, message", ENV_CASES, ids=[_case_id(c) for c in ENV_CASES])
def test_gym_make_refuses_coercions_and_huge_sizes(env_id, kwargs, message):
    """Every id, through gym.make: a clear ValueError for bools and out-of-bound sizes."""
    with pytest.raises(ValueError, match=message):
        gym.make(env_id, **kwargs)


VECTOR_CASES = [
    ({"render_mode": 5}, RENDER.format(5)),
    ({"fov": True}, "fov must be"),
    ({"resolution": 10**9}, rf"\[8, {MAX_RESOLUTION}\] pixels"),
    ({"camera": "model", "sampling_steps": 10**9}, STEPS.format(1000000000)),
    ({"camera": "nearest", "seed_views": 10**6}, SEED_VIEWS.format(1000000)),
    ({"num_envs": 10**6}, rf"num_envs must be an integer in \[1, {MAX_NUM_ENVS}\], got 1000000"),
    ({"num_envs": True}, rf"num_envs must be an integer in \[1, {MAX_NUM_ENVS}\], got True"),
    ({"num_envs": np.True_}, r"num_envs must be an integer in .*, got np.True_"),
]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("kwargs, message", VECTOR_CASES, ids=[_case_id(c) for c in VECTOR_CASES])
def test_gym_make_vec_refuses_coercions_and_huge_sizes(env_id, kwargs, message):
    """Every id, through gym.make_vec: the same errors as the single env's."""
    kwargs = {"num_envs": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        gym.make_vec(env_id, **kwargs)


def test_render_modes_membership_refuses_non_strings():
    """The metadata's render modes still behave as the list ['rgb_array'] for strings and None."""
    assert RENDER_MODES == ["rgb_array"] and "rgb_array" in RENDER_MODES
    assert "human" not in RENDER_MODES and None not in RENDER_MODES
    with pytest.raises(ValueError, match=RENDER.format(5)):
        5 in RENDER_MODES  # noqa: B015 (the membership test is what raises)


# -- reset seeds and actions: one env, reset once -------------------------------------------


@pytest.fixture(scope="module")
def env():
    made = gym.make("RTFM/PointNav-v0")
    yield made
    made.close()


@pytest.mark.parametrize("seed", [True, False, np.True_, -1, 1.5, "3", np.float64(2.0)],
                         ids=["true", "false", "np-true", "negative", "float", "str", "np-float"])
def test_reset_refuses_bool_and_non_integer_seeds(env, seed):
    with pytest.raises(ValueError, match=r"seed must be None or an integer >= 0, got"):
        env.reset(seed=seed)


def test_reset_takes_huge_and_numpy_seeds(env):
    """Huge seeds are valid seeds (numpy hashes any size): the same seed gives the same episode."""
    first, _ = env.reset(seed=10**30)
    again, _ = env.reset(seed=10**30)
    np.testing.assert_array_equal(first["rgb"], again["rgb"])
    np.testing.assert_array_equal(env.reset(seed=np.int64(3))[0]["rgb"], env.reset(seed=3)[0]["rgb"])


@pytest.mark.parametrize("action", [True, False, np.True_, np.False_], ids=["true", "false", "np-true", "np-false"])
def test_bool_is_not_an_action(env, action):
    """The single env refuses bools as the vector env does, and nothing moves."""
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action .*\(bool\) is not in the action space"):
        env.step(action)
    assert env.unwrapped.episode.steps == 0


@pytest.fixture(scope="module")
def vec():
    made = gym.make_vec("RTFM/PointNav-v0", num_envs=2)
    yield made
    made.close()


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (True, TypeError, "seed must be None, an int or a list"),
        (np.True_, TypeError, "seed must be None, an int or a list"),
        (-1, ValueError, "seed must be None, an integer >= 0"),
        ([True, 0], ValueError, r"seed\[0\] must be None or an integer >= 0, got True"),
        ([0, -3], ValueError, r"seed\[1\] must be None or an integer >= 0, got -3"),
        ([0, 1.0], ValueError, r"seed\[1\] must be None or an integer >= 0, got 1.0"),
    ],
    ids=["true", "np-true", "negative", "list-bool", "list-negative", "list-float"],
)
def test_vector_reset_refuses_bool_and_negative_seeds(vec, seed, error, message):
    with pytest.raises(error, match=message):
        vec.reset(seed=seed)


# -- cameras ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=10**9), STEPS.format(1000000000)),
        (dict(steps=True), STEPS.format(True)),
        (dict(seed=True), r"seed must be an integer in \[0, 2\*\*64\), got True"),
        (dict(seed=2**64), r"seed must be an integer in \[0, 2\*\*64\)"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*64\)"),
        (dict(resolution=True), r"resolution must be an int or \(height, width\) of positive ints, got True"),
        (dict(resolution="64"), r"resolution must be an int or \(height, width\)"),
        (dict(resolution=(64, True)), r"resolution must be an int or \(height, width\)"),
        (dict(resolution=10**9), r"resolution must be at most 1024x1024 pixels"),
        (dict(resolution=(2048, 64)), r"resolution must be at most 1024x1024 pixels"),
        (dict(checkpoint=5), "checkpoint must be None, a checkpoint directory or a FrameModel"),
        (dict(device=True), "device must be None"),
        (dict(autocast=5), r"unknown autocast 5; valid"),
        (dict(autocast=[]), r"unknown autocast \[\]; valid"),
        (dict(context_strategy=[]), r"unknown context strategy \[\]"),
        (dict(compile=1), "compile must be True or False"),
        (dict(gelu=5), "unknown gelu 5"),
        (dict(seed_views=10**6), SEED_VIEWS.format(1000000)),
        (dict(seed_views=True), SEED_VIEWS.format(True)),
        (dict(memory_capacity=True), "memory_capacity must be None or an integer"),
        (dict(k=True), r"k must be an integer in \[1, 8\]"),
    ],
    ids=lambda v: repr(v)[:30] if isinstance(v, dict) else None,
)
def test_model_camera_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelCamera(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ReprojectionCamera, dict(k=True), r"k must be an integer in \[1, 64\], got True"),
        (ReprojectionCamera, dict(k=10**6), r"k must be an integer in \[1, 64\], got 1000000"),
        (ReprojectionCamera, dict(depth_tolerance=True), r"depth_tolerance must be a number in \[0, 1\]"),
        (ReprojectionCamera, dict(depth_tolerance=math.nan), r"depth_tolerance must be a number in \[0, 1\]"),
        (ReprojectionCamera, dict(splat=5), "unknown splat 5"),
        (ReprojectionCamera, dict(splat=[]), r"unknown splat \[\]"),
        (ReprojectionCamera, dict(device=False), "device must be None"),
        (ReprojectionCamera, dict(seed_views=10**6), SEED_VIEWS.format(1000000)),
        (NearestViewCamera, dict(seed_views=True), SEED_VIEWS.format(True)),
        (NearestViewCamera, dict(seed_views=10**6), SEED_VIEWS.format(1000000)),
        (NearestViewCamera, dict(memory_capacity=0), "memory_capacity must be None or an integer >= seed_views"),
        (NearestViewCamera, dict(world=5), "world must be one of"),
    ],
    ids=lambda v: (v.__name__ if isinstance(v, type) else repr(v)[:30] if isinstance(v, dict) else None),
)
def test_memory_cameras_refuse(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_ground_truth_camera_takes_no_arguments():
    GroundTruthCamera()
    with pytest.raises(TypeError):
        GroundTruthCamera(resolution=64)


# -- the scene --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=True), rf"width must be an integer number of pixels in \[1, {MAX_IMAGE_SIDE}\], got True"),
        (dict(width=10**9), rf"width must be an integer number of pixels in \[1, {MAX_IMAGE_SIDE}\], got 1000000000"),
        (dict(height=MAX_IMAGE_SIDE + 1), rf"height must be an integer number of pixels in \[1, {MAX_IMAGE_SIDE}\]"),
        (dict(height=0), r"height must be an integer number of pixels"),
        (dict(width=64.0), r"width must be an integer number of pixels"),
        (dict(fov_y=True), "fov_y must be a number, got True"),
        (dict(fov_y=np.True_), "fov_y must be a number, got np.True_"),
        (dict(fov_y="60"), "fov_y must be a number, got '60'"),
        (dict(fov_y=math.nan), r"fov_y must be in \(0, 180\) degrees, got nan"),
        (dict(fov_y=180), r"fov_y must be in \(0, 180\) degrees, got 180"),
        (dict(cell=True), "cell must be a number, got True"),
        (dict(cam_height=True), "cam_height must be a number, got True"),
        (dict(cam_height=-1.0), "cam_height must be a positive number"),
        (dict(env_id=5), "unknown MiniWorld env id 5"),
    ],
    ids=lambda v: repr(v)[:30] if isinstance(v, dict) else None,
)
def test_scene_refuses(kwargs, message):
    """MiniWorldScene checks every argument before it acquires a renderer."""
    with pytest.raises(ValueError, match=message):
        MiniWorldScene(**kwargs)
