"""Tests of the envs in recorded worlds: every id, the vector env and tasks with ``world=FILE``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from test_scenes_recorded import write_grid_world, write_miniworld_world

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from agents import ShortestPathAgent
from rtfm_env.envs.base import DEFAULT_SCENE
from rtfm_env.geometry import DiscreteAction
from rtfm_env.memory import SpatialMemory
from rtfm_env.scenes import MiniWorldScene, NoFreeSpaceError, RecordedScene

#: Every task id but ObjectNav, which needs objects placed in a MiniWorld layout and refuses a
#: recording (tests/test_envs_objectnav.py checks that refusal).
ENV_IDS = sorted(k for k in gym.registry if k.startswith("RTFM/") and k != "RTFM/ObjectNav-v0")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world file of a FourRooms walk (seed 0) with MiniWorld's own free-space grid."""
    path = tmp_path_factory.mktemp("worlds") / "fourrooms.rtfm"
    scene, _ = write_miniworld_world(path)
    scene.close()
    return path


def test_registry_has_the_four_ids():
    """The ids this module runs in recorded worlds are the four tasks besides ObjectNav."""
    assert ENV_IDS == ["RTFM/Explore-v0", "RTFM/ImageNav-v0", "RTFM/PointNav-v0", "RTFM/Revisit-v0"]
    assert "RTFM/ObjectNav-v0" in gym.registry


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_runs_in_a_recorded_world_and_passes_check_env(world, env_id):
    """world=FILE with a map: the scene is the recording, the checker passes, episodes step and render."""
    env = gym.make(env_id, world=str(world), camera="reprojection", render_mode="rgb_array", max_steps=15)
    try:
        scene = env.unwrapped.scene
        assert isinstance(scene, RecordedScene) and scene.env_id == "world:fourrooms"
        check_env(env.unwrapped, skip_render_check=True)
        obs, info = env.reset(seed=3)
        assert (
            obs["rgb"].shape == (64, 64, 3)
            and scene.known_free[scene.top_down_map().world_to_cell(*obs["pose"][[0, 2], 3])]
        )
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(DiscreteAction.FORWARD)
            assert np.isfinite(reward) and scene.is_free(obs["pose"][0, 3], obs["pose"][2, 3])
            done = terminated or truncated
        assert info["steps"] == 15 and env.render().dtype == np.uint8
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_vectorises_in_a_recorded_world(world, env_id):
    """gym.make_vec with world=FILE: every env moves in the recording and the batch matches the single env."""
    envs = gym.make_vec(env_id, num_envs=2, world=str(world), camera="reprojection", depth=True, max_steps=10)
    single = gym.make(env_id, world=str(world), camera="reprojection", depth=True, max_steps=10)
    try:
        assert all(isinstance(e.scene, RecordedScene) for e in envs.unwrapped.envs)
        obs, _ = envs.reset(seed=5)
        one, _ = single.reset(seed=5)
        for key in one:
            np.testing.assert_array_equal(obs[key][0], one[key])
        actions = np.array([DiscreteAction.FORWARD, DiscreteAction.TURN_LEFT])
        for _ in range(4):
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            one, reward, *_ = single.step(int(actions[0]))
            np.testing.assert_array_equal(obs["rgb"][0], one["rgb"])
            np.testing.assert_array_equal(obs["depth"][0], one["depth"])
            assert rewards[0] == reward
        assert envs.observation_space.contains(obs)
    finally:
        envs.close()
        single.close()


def oracle_successes(env: gym.Env, episodes: int) -> list[bool]:
    """Whether ShortestPathAgent succeeds in each of ``episodes`` seeded episodes of ``env``."""
    agent = ShortestPathAgent(env)
    successes = []
    for episode in range(episodes):
        obs, info = env.reset(seed=episode)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs))
            done = terminated or truncated
        successes.append(bool(info["success"]))
    return successes


def test_shortest_path_agent_succeeds_on_pointnav_in_a_recorded_world(world):
    """The oracle on PointNav in a recorded FourRooms walk succeeds on >= 90% of 20 episodes."""
    env = gym.make("RTFM/PointNav-v0", world=str(world), camera="reprojection", max_steps=200)
    try:
        successes = oracle_successes(env, 20)
        assert np.mean(successes) >= 0.9, successes
    finally:
        env.close()


def test_imagenav_goal_image_is_the_cameras_view_at_the_goal(world):
    """In a recorded world ImageNav's goal image is the camera's own frame at the goal pose."""
    env = gym.make("RTFM/ImageNav-v0", world=str(world), camera="reprojection")
    try:
        obs, _ = env.reset(seed=2)
        task, camera = env.unwrapped.task, env.unwrapped.camera
        assert not task.goal_pending and obs["imagegoal"].std() > 0
        np.testing.assert_array_equal(obs["imagegoal"], camera.observe(task.goal_state.pose()[None])[0])
        again, _ = env.reset(seed=2)
        np.testing.assert_array_equal(again["imagegoal"], obs["imagegoal"])
    finally:
        env.close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight T frame model at 64x64: these tests are about plumbing, not image quality."""
    from rtfm_env.model import FrameNetwork, model_config, save_checkpoint

    cfg = model_config("T", height=64, width=64)
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(directory, FrameNetwork(cfg), cfg, {"note": "random weights for the recorded-world env tests"})
    return directory


def test_model_camera_runs_imagenav_in_a_recorded_world(world, tiny_checkpoint, one_thread):
    """camera='model' in a recorded world: the goal image is generated and kept in the memory."""
    env = gym.make(
        "RTFM/ImageNav-v0", world=str(world), camera="model", checkpoint=str(tiny_checkpoint), sampling_steps=1
    )
    try:
        obs, _ = env.reset(seed=0)
        memory = env.unwrapped.camera.memory
        loaded = len(SpatialMemory.load(world))
        # The file's frames, the generated start view, then the generated goal view.
        assert len(memory) == loaded + 2 and memory.sources(memory.ids[-1:]) == ["generated"]
        np.testing.assert_array_equal(memory.frames(memory.ids[-1:])[0], obs["imagegoal"])
        obs, *_ = env.step(DiscreteAction.TURN_LEFT)
        assert obs["rgb"].shape == (64, 64, 3)
        env.reset(seed=1)
        assert len(env.unwrapped.camera.memory) == loaded + 2  # the world file again at every reset
    finally:
        env.close()


def test_scene_file_argument_is_a_recorded_world_shown_by_its_own_file(world):
    """scene=FILE: the recorded scene, and a memory camera that shows that file."""
    env = gym.make("RTFM/PointNav-v0", scene=str(world), camera="nearest")
    try:
        assert isinstance(env.unwrapped.scene, RecordedScene) and env.unwrapped.camera.world == world
        env.reset(seed=0)
    finally:
        env.close()


@pytest.mark.parametrize("kwargs", [{"world": "W"}, {"scene": "W"}])
def test_ground_truth_camera_is_refused_in_a_recorded_world(world, kwargs):
    """camera='ground_truth' with a world file: a clear error naming the file and the cameras to use."""
    kwargs = {k: str(world) for k in kwargs}
    with pytest.raises(ValueError, match="is a recording: it has no ground-truth renderer; use camera='reprojection'"):
        gym.make("RTFM/PointNav-v0", camera="ground_truth", **kwargs)


def test_bad_combinations_are_refused(world, tmp_path):
    """A view size other than the world's, a regime on a recorded scene, a scene file without a map."""
    with pytest.raises(ValueError, match="holds 64x64 frames.*pass resolution=64"):
        gym.make("RTFM/PointNav-v0", world=str(world), camera="reprojection", resolution=32)
    with pytest.raises(ValueError, match="regime that renders the scene"):
        gym.make("RTFM/PointNav-v0", scene=str(world), world="walk", camera="reprojection")
    with pytest.raises(ValueError, match="names no world file"):
        gym.make("RTFM/PointNav-v0", scene=str(tmp_path / "missing.rtfm"), camera="reprojection")
    plain = tmp_path / "plain.rtfm"
    memory = SpatialMemory.load(world)
    memory.save(plain, attachments={}, info={})
    with pytest.raises(NoFreeSpaceError, match="rtfm-env world build"):
        gym.make("RTFM/PointNav-v0", scene=str(plain), camera="reprojection")


def test_a_world_file_without_a_map_keeps_a_miniworld_scene(world, tmp_path):
    """world=FILE without a free-space map: the default MiniWorld scene gives the walls, as before maps existed."""
    plain = tmp_path / "plain.rtfm"
    SpatialMemory.load(world).save(plain, attachments={}, info={})
    env = gym.make("RTFM/PointNav-v0", world=str(plain), camera="reprojection")
    try:
        scene = env.unwrapped.scene
        assert isinstance(scene, MiniWorldScene) and scene.env_id == DEFAULT_SCENE
    finally:
        env.close()
    env = gym.make("RTFM/PointNav-v0", world=str(world), scene="MiniWorld-FourRooms-v0", camera="reprojection")
    try:
        assert isinstance(env.unwrapped.scene, MiniWorldScene)  # a named scene wins over the file's map
    finally:
        env.close()


def test_small_synthetic_world_runs_explore(tmp_path):
    """A world of 16x16 frames runs at resolution=16, with its own grid."""
    free = np.zeros((30, 30), dtype=bool)
    free[1:29, 1:29] = True
    path = write_grid_world(tmp_path / "room.rtfm", free)
    env = gym.make("RTFM/Explore-v0", world=str(path), camera="reprojection", resolution=16)
    try:
        obs, info = env.reset(seed=0)
        assert obs["rgb"].shape == (16, 16, 3) and env.unwrapped.scene.env_id == "world:room"
        env.step(DiscreteAction.FORWARD)
    finally:
        env.close()
