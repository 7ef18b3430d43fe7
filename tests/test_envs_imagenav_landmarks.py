"""Tests of RTFM/ImageNav-v0 with ``landmarks=True``: objects, the goal image's heading, bad input, checkers."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from test_envs_objectnav import _checker_messages

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env.envs.imagenav import ImageNavEnv, landmarks_in_view
from rtfm_env.envs.objectnav import OBJECTS_PER_LAYOUT, ObjectScene, target_in_view
from rtfm_env.envs.tasks import free_ray_lengths

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    """One ImageNav env with landmarks in OneRoom, shared by the module; MiniWorld envs are costly to create."""
    env = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-OneRoom-v0", landmarks=True, success_distance=1.0)
    yield env.unwrapped
    env.close()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_landmarks_are_objectnav_s_objects_and_the_goal_image_shows_the_most_of_them(env, seed):
    """The layout holds ObjectNav's objects; the goal heading shows the most landmarks, then the most open view."""
    obs, info = env.reset(seed=seed)
    assert isinstance(env.scene, ObjectScene) and len(env.scene.objects) == OBJECTS_PER_LAYOUT
    goal = env.task.goal_state
    np.testing.assert_array_equal(obs["imagegoal"], env.scene.render(goal.pose()))
    headings = np.arange(24) * math.radians(15.0)
    counts = np.array([sum(target_in_view(env.scene, goal.replace(yaw=float(y)), o) for o in env.scene.objects)
                       for y in headings])  # fmt: skip
    np.testing.assert_array_equal(counts, landmarks_in_view(env.scene, goal, headings))
    chosen = int(np.argmin(np.abs(np.angle(np.exp(1j * (headings - goal.yaw))))))
    assert counts[chosen] == counts.max() >= 1
    half = math.radians(env.scene.intrinsics.fov_x) / 2
    angles = headings[:, None] + np.linspace(-half, half, 9)[None, :]
    open_ = free_ray_lengths(env.scene.top_down_map(), info["goal"], angles, 10.0).reshape(24, 9).mean(axis=1)
    assert open_[chosen] == pytest.approx(open_[counts == counts.max()].max())


def test_same_layout_same_landmarks_and_goals_are_free(env):
    """Landmarks belong to the layout (same seed, same objects); goals are never inside one."""
    env.reset(seed=3)
    first = env.scene.objects
    for _ in range(3):
        _, info = env.reset(seed=3)
        assert env.scene.objects == first
        for obj in first:
            assert math.hypot(*(np.asarray(info["goal"]) - obj.xz)) > obj.radius


def test_without_landmarks_the_task_is_unchanged():
    """landmarks=False (the default) keeps the bare layout and the most-open goal heading."""
    bare = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-OneRoom-v0")
    try:
        core = bare.unwrapped
        assert core.landmarks is False and not isinstance(core.scene, ObjectScene)
        core.reset(seed=0)
        assert landmarks_in_view(core.scene, core.task.goal_state, np.arange(24) * math.radians(15.0)).max() == 0
    finally:
        bare.close()


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_landmarks_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="landmarks must be True or False"):
        ImageNavEnv(landmarks=bad)


def test_landmarks_refuse_a_recorded_world(tmp_path):
    """A recorded world cannot hold MiniWorld objects: a clear error, not a silent bare room."""
    from test_scenes_recorded import write_miniworld_world

    path = tmp_path / "fourrooms.rtfm"
    scene, _ = write_miniworld_world(path)
    scene.close()
    with pytest.raises(ValueError, match="landmarks=True places MiniWorld objects"):
        gym.make("RTFM/ImageNav-v0", world=str(path), camera="reprojection", landmarks=True)


@pytest.mark.parametrize("camera", ["ground_truth", "reprojection", "model"])
def test_both_checkers_pass_with_landmarks_and_depth(camera, tiny_v2_checkpoint):
    """Gymnasium's and SB3's checkers pass with landmarks and depth under the three cameras."""
    extra = {}
    if camera != "ground_truth":
        extra["world"] = "image"  # a one-frame memory: the checkers reset often
    if camera == "model":
        extra.update(checkpoint=str(tiny_v2_checkpoint), sampling_steps=1)
    env = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-OneRoom-v0", camera=camera, landmarks=True, depth=True,
                   success_distance=1.0, **extra)  # fmt: skip
    try:
        assert _checker_messages(env) == []
        assert env.observation_space["imagegoal"].shape == (64, 64, 3)
    finally:
        env.close()


def test_a_scene_too_narrow_for_landmarks_says_so(monkeypatch):
    """A floor that holds the landmarks at no spacing: the error names the spacing, the task and a roomier scene.

    Every MiniWorld layout holds them at the closest spacing (a corridor's too), so the test asks
    for a spacing no layout has room for.
    """
    from rtfm_env.envs import objectnav

    monkeypatch.setattr(objectnav, "PLACEMENT_SPACINGS", ((2.0, 2.0), (2.0, 40.0)))
    env = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-Hallway-v0", landmarks=True)
    try:
        with pytest.raises(RuntimeError, match=r"even 40\.0 m apart.*ImageNav with landmarks.*roomier"):
            env.reset(seed=0)
    finally:
        env.close()
