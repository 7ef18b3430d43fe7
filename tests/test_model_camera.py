"""Tests of the model camera (rtfm_env.cameras.ModelCamera), its env options, map drawing and demo mode."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import cameras, cli, viz
from rtfm_env.cameras import CONTEXT_STRATEGIES, ModelCamera, make_camera, select_context, turn_in_place
from rtfm_env.geometry import Intrinsics, RobotState, camera_pose
from rtfm_env.memory import MemoryFormatError, SpatialMemory
from rtfm_env.model import CheckpointError
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.base import TopDownMap

RES = 64  # the env's default resolution, above SB3's 36x36 minimum for image policies
FORWARD, LEFT, RIGHT = 1, 2, 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A tiny random-weight checkpoint (size T, 64x64) whose output depends on its inputs and noise."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def scene():
    """A FourRooms scene at the checkpoint's resolution (MiniWorld env from the shared pool)."""
    scene = MiniWorldScene("MiniWorld-FourRooms-v0", width=RES, height=RES)
    scene.reset(0)
    yield scene
    scene.close()


@pytest.fixture(scope="module")
def env(checkpoint):
    """A PointNav env seen through the model camera, shared by the module."""
    env = gym.make("RTFM/PointNav-v0", camera="model", checkpoint=checkpoint, resolution=RES, world="image")
    yield env.unwrapped
    env.close()


def _ahead(scene: MiniWorldScene, metres: float) -> np.ndarray:
    """The start camera moved ``metres`` along its view direction."""
    pose = scene.start_state.pose()
    pose[:3, 3] += metres * -pose[:3, 2]
    return pose


def _filled_memory(n: int = 10) -> SpatialMemory:
    """A memory of n distinct frames on a line of poses, all observed."""
    mem = SpatialMemory()
    for i in range(n):
        frame = np.full((RES, RES, 3), i, dtype=np.uint8)
        mem.add(frame, camera_pose(0.3 * i, 0.0, 0.1 * i), Intrinsics(RES, RES), "observed", step=i)
    return mem


# ---------------------------------------------------------------------------------------
# Reset, observe and the memory
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed_views", [1, 4])
def test_reset_seeds_memory_with_ground_truth_views(checkpoint, scene, seed_views):
    """Resetting stores seed_views observed ground-truth frames (the start, then turns) and returns the start's."""
    camera = ModelCamera(checkpoint, world="image", seed_views=seed_views)
    start = scene.start_state.pose()
    first = camera.reset(scene, start, seed=0)
    np.testing.assert_array_equal(first, scene.render(start))
    mem = camera.memory
    assert len(mem) == seed_views
    assert mem.sources(mem.ids) == ["observed"] * seed_views and mem.steps(mem.ids) == [0] * seed_views
    poses = mem.poses(mem.ids)
    np.testing.assert_allclose(poses, turn_in_place(start, seed_views))
    for frame, pose in zip(mem.frames(mem.ids), poses, strict=True):
        np.testing.assert_array_equal(frame, scene.render(pose))


def test_turn_in_place_spaces_yaws_evenly():
    """turn_in_place keeps the camera centre and level and turns by 360/n degrees each time."""
    start = camera_pose(1.0, -2.0, 0.3, pitch=0.0)
    poses = turn_in_place(start, 4)
    np.testing.assert_allclose(poses[:, :3, 3], np.repeat(start[None, :3, 3], 4, axis=0))
    np.testing.assert_allclose(poses[:, 1, :3], np.repeat([[0.0, 1.0, 0.0]], 4, axis=0), atol=1e-12)
    views = -poses[:, :3, 2]
    for a, b in zip(views, np.roll(views, -1, axis=0), strict=True):
        assert math.degrees(math.acos(np.clip(a @ b, -1, 1))) == pytest.approx(90.0)


def test_each_observe_adds_one_generated_frame(checkpoint, scene):
    """Every observed pose adds exactly one generated frame, equal to the returned one, with the step."""
    camera = ModelCamera(checkpoint, world="image")
    camera.reset(scene, scene.start_state.pose(), seed=0)
    for step in range(1, 4):
        pose = _ahead(scene, 0.25 * step)
        frame = camera.observe(pose[None])
        assert frame.shape == (1, RES, RES, 3) and frame.dtype == np.uint8
        mem = camera.memory
        assert len(mem) == 1 + step
        newest = mem.get(int(mem.ids[-1]))
        assert newest.source == "generated" and newest.step == step
        np.testing.assert_array_equal(newest.frame, frame[0])
        np.testing.assert_allclose(newest.pose, pose)


def test_observe_batch_makes_one_generate_call(checkpoint, scene, monkeypatch):
    """Observing B poses calls FrameModel.generate once with all B targets and stores B frames."""
    camera = ModelCamera(checkpoint, world="image", k=2)
    camera.reset(scene, scene.start_state.pose(), seed=0)
    camera.observe(_ahead(scene, 0.25)[None])
    calls = []
    generate = camera.model.generate

    def spy(target_poses, *args, **kwargs):
        calls.append(np.asarray(target_poses).shape)
        return generate(target_poses, *args, **kwargs)

    monkeypatch.setattr(camera.model, "generate", spy)
    poses = np.stack([_ahead(scene, d) for d in (0.5, 0.75, 1.0)])
    frames = camera.observe(poses)
    assert calls == [(3, 4, 4)]
    assert frames.shape == (3, RES, RES, 3)
    assert len(camera.memory) == 2 + 3 and len(camera.last_context) == 3


def test_observe_masks_padding_when_contexts_differ_in_size(checkpoint, scene, monkeypatch):
    """Poses with fewer context frames than others are padded with views masked by context_valid."""
    camera = ModelCamera(checkpoint, world="image", k=2, seed_views=2)
    camera.reset(scene, scene.start_state.pose(), seed=0)
    monkeypatch.setattr(cameras, "select_context", lambda memory, pose, *a: [0, 1] if pose[0, 3] > 0 else [1])
    seen = {}
    generate = camera.model.generate

    def spy(target_poses, context_frames, context_poses, intrinsics, **kwargs):
        seen.update(frames=np.asarray(context_frames), valid=kwargs["context_valid"])
        return generate(target_poses, context_frames, context_poses, intrinsics, **kwargs)

    monkeypatch.setattr(camera.model, "generate", spy)
    camera.observe(np.stack([camera_pose(1.0, 0.0, 0.0), camera_pose(-1.0, 0.0, 0.0)]))
    np.testing.assert_array_equal(seen["valid"], [[True, True], [True, False]])
    np.testing.assert_array_equal(seen["frames"][1, 0], camera.memory.frames([1])[0])
    assert camera.last_context == [[0, 1], [1]]


# ---------------------------------------------------------------------------------------
# Context strategies
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "k", "expected"),
    [
        ("last_k", 3, [7, 8, 9]),
        ("first_only", 2, [0, 1]),
        ("first_only", 20, list(range(10))),
        ("all", 1, [0, 3, 6, 9]),  # 10 stored, cap 4: evenly spaced, oldest and newest kept
    ],
)
def test_history_strategies_pick_the_right_frames(strategy, k, expected):
    """last_k returns the most recent k, first_only the first k, all every frame thinned to the cap."""
    mem = _filled_memory(10)
    assert select_context(mem, camera_pose(0.0, 0.0, 0.0), k, strategy, cap=4) == expected


def test_all_strategy_returns_everything_under_the_cap():
    """With no more frames stored than the cap, 'all' returns every stored id in order."""
    mem = _filled_memory(3)
    assert select_context(mem, camera_pose(0.0, 0.0, 0.0), 1, "all", cap=8) == [0, 1, 2]


@pytest.mark.parametrize("k", [1, 3])
def test_spatial_strategy_is_memory_retrieve(k):
    """'spatial' gives exactly SpatialMemory.retrieve(pose, k, intrinsics, fill=True)."""
    mem = _filled_memory(10)
    query = camera_pose(1.4, 0.0, 0.5)
    expected = mem.retrieve(query, k, Intrinsics(RES, RES), fill=True)
    assert select_context(mem, query, k, "spatial", Intrinsics(RES, RES)) == expected
    assert len(expected) == k


@pytest.mark.parametrize("strategy", CONTEXT_STRATEGIES)
def test_camera_uses_its_strategy(checkpoint, scene, strategy):
    """The ids the camera conditioned on are those select_context gives for its strategy."""
    camera = ModelCamera(checkpoint, world="image", k=2, context_strategy=strategy, seed_views=3)
    camera.reset(scene, scene.start_state.pose(), seed=0)
    for d in (0.25, 0.5, 0.75):
        pose = _ahead(scene, d)
        before = camera.memory.ids.tolist()
        expected = select_context(camera.memory, pose, 2, strategy, camera.intrinsics, cap=4)
        camera.observe(pose[None])
        assert camera.last_context == [expected]
        assert set(expected) <= set(before)
    if strategy == "first_only":
        assert camera.last_context == [[0, 1]]
    if strategy == "last_k":
        assert camera.last_context == [[3, 4]]


def test_last_k_follows_eviction(checkpoint, scene):
    """With a memory capacity, last_k draws on the frames still stored."""
    camera = ModelCamera(checkpoint, world="image", k=2, context_strategy="last_k", memory_capacity=3)
    camera.reset(scene, scene.start_state.pose(), seed=0)
    for d in (0.25, 0.5, 0.75, 1.0):
        camera.observe(_ahead(scene, d)[None])
    assert len(camera.memory) == 3
    stored = camera.memory.ids.tolist()
    assert 0 in stored  # the observed start outlives generated frames
    assert select_context(camera.memory, _ahead(scene, 1.25), 2, "last_k") == stored[-2:]


# ---------------------------------------------------------------------------------------
# Reproducibility
# ---------------------------------------------------------------------------------------


def _episode(env, seed: int, actions=(FORWARD, LEFT, FORWARD, RIGHT, FORWARD)) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    frames = [obs["rgb"]]
    for a in actions:
        obs, *_ = env.step(a)
        frames.append(obs["rgb"])
    return frames


def test_env_reset_seed_reproduces_generated_frames(env):
    """reset(seed=s) and the same actions give bit-identical model frames, run after run."""
    first = _episode(env, 7)
    _episode(env, 8)  # something else in between
    second = _episode(env, 7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_camera_noise_follows_the_env_seed(checkpoint):
    """In one fixed layout, two env seeds give the same poses but different generated frames."""
    env = gym.make("RTFM/PointNav-v0", camera="model", checkpoint=checkpoint, resolution=RES, scene_seed=3)
    try:
        a, b = _episode(env, 1), _episode(env, 2)
        poses = env.unwrapped.episode.states
    finally:
        env.close()
    assert len(poses) == len(a)
    np.testing.assert_array_equal(a[0], b[0])  # the start's ground truth
    assert any(not np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))


def test_camera_seed_reproduces_frames(checkpoint, scene):
    """The same reset seed gives the same frames; the camera's own generator otherwise moves on."""
    camera = ModelCamera(checkpoint, world="image")
    pose = _ahead(scene, 0.5)
    runs = []
    for seed in (5, 5, None):
        camera.reset(scene, scene.start_state.pose(), seed=seed)
        runs.append(camera.observe(pose[None]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[1], runs[2])


# ---------------------------------------------------------------------------------------
# Several cameras, one generate call (observe_many)
# ---------------------------------------------------------------------------------------


def _camera_pair(checkpoint, scene, model=None):
    """Two reset cameras sharing one model, with different k, strategies, seed views and seeds."""
    first = ModelCamera(checkpoint if model is None else model, world="image", k=1, context_strategy="last_k")
    second = ModelCamera(first.model, world="image", k=2, seed_views=3)
    first.reset(scene, scene.start_state.pose(), seed=1)
    second.reset(scene, _ahead(scene, 0.5), seed=2)
    return first, second


def test_observe_many_is_each_cameras_own_observe_in_one_call(checkpoint, scene, monkeypatch):
    """One generate call gives each camera the frames, memory and contexts of its own observe."""
    batched = _camera_pair(checkpoint, scene)
    alone = _camera_pair(checkpoint, scene, model=batched[0].model)
    poses = [np.stack([_ahead(scene, 0.25), _ahead(scene, 0.75)]), _ahead(scene, 1.0)[None]]
    calls = []
    generate = batched[0].model.generate

    def spy(target_poses, *args, **kwargs):
        calls.append(len(target_poses))
        return generate(target_poses, *args, **kwargs)

    monkeypatch.setattr(batched[0].model, "generate", spy)
    for _ in range(2):
        together = cameras.observe_many(batched, poses)
        separate = [camera.observe(p) for camera, p in zip(alone, poses, strict=True)]
        for a, b, x, y in zip(together, separate, batched, alone, strict=True):
            assert a.shape == b.shape and a.dtype == np.uint8
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # batch and padding arithmetic only
            assert x.last_context == y.last_context and len(x.memory) == len(y.memory)
            np.testing.assert_array_equal(x.memory.frames(x.memory.ids[-len(a) :]), a)
    assert calls == [3, 2, 1, 3, 2, 1]  # together, then each alone, twice
    assert batched[0].last_context == [[2], [2]]  # last_k with k = 1: the newest frame before the call


def test_observe_many_of_one_camera_is_its_observe(checkpoint, scene):
    """observe_many([camera], [poses]) is bit for bit camera.observe(poses) with the same seed."""
    a, b = ModelCamera(checkpoint, world="image"), ModelCamera(checkpoint, world="image")
    a.reset(scene, scene.start_state.pose(), seed=4)
    b.reset(scene, scene.start_state.pose(), seed=4)
    poses = np.stack([_ahead(scene, 0.25), _ahead(scene, 0.5)])
    np.testing.assert_array_equal(cameras.observe_many([a], [poses])[0], b.observe(poses))


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("empty", ValueError, "cameras is empty"),
        ("count", ValueError, "2 cameras but 1 pose batches"),
        ("twice", ValueError, "listed twice"),
        ("models", ValueError, r"another FrameModel.*ModelCamera\(checkpoint=frame_model\)"),
        ("steps", ValueError, "steps=3"),
        ("ground-truth", TypeError, "GroundTruthCamera, not a ModelCamera"),
        ("unreset", RuntimeError, r"cameras\[1\] is observed before reset"),
        ("pose", ValueError, r"poses must have shape \(B, 4, 4\)"),
    ],
)
def test_observe_many_rejects_bad_input(checkpoint, scene, case, error, match):
    """Mismatched lists, shared or foreign cameras and bad poses raise with a message naming the problem."""
    first, second = _camera_pair(checkpoint, scene)
    pose = _ahead(scene, 0.25)[None]
    cams, poses = [first, second], [pose, pose]
    if case == "empty":
        cams, poses = [], []
    elif case == "count":
        poses = [pose]
    elif case == "twice":
        cams = [first, first]
    elif case == "models":
        cams[1] = _camera_pair(checkpoint, scene)[1]
    elif case == "steps":
        cams[1] = ModelCamera(first.model, world="image", steps=3)
        cams[1].reset(scene, scene.start_state.pose())
    elif case == "ground-truth":
        cams[1] = make_camera("ground_truth")
    elif case == "unreset":
        cams[1] = ModelCamera(first.model, world="image")
    elif case == "pose":
        poses[1] = np.zeros((2, 3))
    with pytest.raises(error, match=match):
        cameras.observe_many(cams, poses)
    assert len(first.memory) == 1  # nothing was generated or stored


# ---------------------------------------------------------------------------------------
# Worlds on disk
# ---------------------------------------------------------------------------------------


def test_save_and_load_world_continues_identically(checkpoint, scene, tmp_path):
    """A loaded world generates what the saved camera would, with the same generator state."""
    camera = ModelCamera(checkpoint, world="image", seed_views=2)
    camera.reset(scene, scene.start_state.pose(), seed=0)
    camera.observe(_ahead(scene, 0.25)[None])
    camera.save_world(tmp_path / "world.safetensors")
    other = ModelCamera(checkpoint, world="image")
    other.load_world(tmp_path / "world.safetensors")
    np.testing.assert_array_equal(other.memory.ids, camera.memory.ids)
    np.testing.assert_array_equal(other.memory.frames(other.memory.ids), camera.memory.frames(camera.memory.ids))
    camera.generator.manual_seed(11)
    other.generator.manual_seed(11)
    pose = _ahead(scene, 0.5)[None]
    np.testing.assert_array_equal(other.observe(pose), camera.observe(pose))
    assert other.memory.steps(other.memory.ids)[-1] == 2  # step numbering carries on


def test_load_world_rejects_bad_files(checkpoint, tmp_path):
    """Loading a corrupt, empty or wrongly sized world raises a clear error naming the problem."""
    camera = ModelCamera(checkpoint, world="image")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a memory")
    with pytest.raises(MemoryFormatError, match="bad.safetensors"):
        camera.load_world(bad)
    SpatialMemory().save(tmp_path / "empty.safetensors")
    with pytest.raises(ValueError, match="empty"):
        camera.load_world(tmp_path / "empty.safetensors")
    big = SpatialMemory()
    big.add(np.zeros((48, 48, 3), np.uint8), np.eye(4), Intrinsics(48, 48), "observed")
    big.save(tmp_path / "big.safetensors")
    with pytest.raises(ValueError, match=r"64x64.*48x48"):
        camera.load_world(tmp_path / "big.safetensors")
    with pytest.raises(RuntimeError, match="reset"):
        camera.save_world(tmp_path / "none.safetensors")


# ---------------------------------------------------------------------------------------
# The env with camera="model"
# ---------------------------------------------------------------------------------------


def test_env_steps_add_generated_frames(env):
    """Each move adds a generated frame to the camera's memory; the observation is that frame."""
    obs, _ = env.reset(seed=0)
    mem = env.camera.memory
    assert len(mem) == 1 and mem.sources(mem.ids) == ["observed"]
    obs, *_ = env.step(LEFT)
    mem = env.camera.memory
    assert len(mem) == 2 and mem.sources(mem.ids)[-1] == "generated"
    np.testing.assert_array_equal(obs["rgb"], mem.frames(mem.ids[-1:])[0])
    assert obs in env.observation_space


def test_env_passes_model_options_to_the_camera(checkpoint):
    """The env's model kwargs reach the ModelCamera (k, strategy, steps, seed views, capacity)."""
    env = gym.make(
        "RTFM/PointNav-v0",
        camera="model",
        checkpoint=checkpoint,
        resolution=RES,
        k=3,
        context_strategy="last_k",
        sampling_steps=2,
        seed_views=2,
        memory_capacity=50,
        world="image",
    )
    try:
        camera = env.unwrapped.camera
        assert isinstance(camera, ModelCamera)
        opts = camera.options
        assert (opts["k"], opts["context_strategy"], opts["steps"]) == (3, "last_k", 2)
        assert (opts["seed_views"], opts["memory_capacity"]) == (2, 50)
        json.dumps(opts)
        env.reset(seed=0)
        assert len(camera.memory) == 2
    finally:
        env.close()


def test_gymnasium_check_env_with_model_camera(env):
    """Gymnasium's env checker passes with camera='model' (frames are stochastic but seeded)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_close_check=True)  # closing would end the env the module shares
    assert [str(w.message) for w in caught] == []


def test_sb3_check_env_with_model_camera(env):
    """Stable-Baselines3's checker passes with camera='model'; its only remark is the 4x4 pose."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True)
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "observation pose has an unconventional shape" not in m] == []


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"context_strategy": "nearest"}, ValueError, r"unknown context strategy 'nearest'.*spatial.*last_k"),
        ({"k": 0}, ValueError, r"k must be an integer in \[1, 4\]"),
        ({"k": 5}, ValueError, r"k must be an integer in \[1, 4\]"),
        ({"steps": 0}, ValueError, "steps"),
        ({"seed_views": 0}, ValueError, "seed_views"),
        ({"seed_views": 4, "memory_capacity": 2}, ValueError, "memory_capacity"),
        ({"autocast": "int8"}, ValueError, r"unknown autocast 'int8'.*bfloat16"),
        ({"seed": -1}, ValueError, "seed"),
        ({"resolution": 32}, ValueError, r"config.json is for 64x64 frames but .* 32x32"),
    ],
)
def test_model_camera_rejects_bad_options(checkpoint, kwargs, error, match):
    """Bad ModelCamera options raise with a message naming the option (and the valid choices)."""
    with pytest.raises(error, match=match):
        ModelCamera(checkpoint, world="image", **kwargs)


def test_missing_checkpoints_fail_clearly(tmp_path, monkeypatch):
    """A missing checkpoint directory is named; no shipped default says how to pass one."""
    with pytest.raises(CheckpointError, match="nowhere"):
        ModelCamera(tmp_path / "nowhere")
    monkeypatch.setattr(cameras, "DEFAULT_CHECKPOINT", tmp_path / "default")
    with pytest.raises(FileNotFoundError, match=r"no frame-model checkpoint is shipped yet.*checkpoint=DIR"):
        ModelCamera()


def test_env_rejects_bad_camera_arguments(checkpoint):
    """Unknown cameras list the valid ones; model options with the ground-truth camera are refused."""
    with pytest.raises(ValueError, match=r"unknown camera 'fisheye'.*ground_truth.*model"):
        gym.make("RTFM/PointNav-v0", camera="fisheye")
    with pytest.raises(ValueError, match=r"\['k', 'seed_views'\] do not apply to camera='ground_truth'.*'model'"):
        gym.make("RTFM/PointNav-v0", camera="ground_truth", k=2, seed_views=3)
    with pytest.raises(ValueError, match=r"\['sampling_steps'\] do not apply to camera='reprojection'.*\['model'\]"):
        gym.make("RTFM/PointNav-v0", camera="reprojection", sampling_steps=3)
    with pytest.raises(ValueError, match=r"unknown camera 'x'"):
        make_camera("x")
    with pytest.raises(ValueError, match=r"config.json is for 64x64 frames but the camera is asked for 48x48"):
        gym.make("RTFM/PointNav-v0", camera="model", checkpoint=checkpoint, resolution=48)


def test_reset_rejects_a_scene_of_another_resolution(checkpoint):
    """A scene rendering another size than the checkpoint's fails at reset, naming both sizes."""
    camera = ModelCamera(checkpoint, world="image")
    big = MiniWorldScene("MiniWorld-FourRooms-v0", width=48, height=48)
    try:
        start = big.reset(0)
        with pytest.raises(ValueError, match=r"64x64 frames but scene .* renders 48x48"):
            camera.reset(big, start.pose())
    finally:
        big.close()


@pytest.mark.parametrize(
    ("poses", "match"),
    [
        (np.full((1, 4, 4), np.nan), "NaN"),
        (np.zeros((2, 3, 4)), r"shape \(B, 4, 4\)"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.diag([1.0, 1.0, -1.0, 1.0])[None], "rotation"),
    ],
)
def test_observe_rejects_bad_poses(checkpoint, scene, poses, match):
    """NaN, misshapen, empty or non-rigid poses raise ValueError before anything is generated."""
    camera = ModelCamera(checkpoint, world="image")
    camera.reset(scene, scene.start_state.pose(), seed=0)
    with pytest.raises(ValueError, match=match):
        camera.observe(poses)
    assert len(camera.memory) == 1


def test_observe_before_reset_and_bad_reset_seed(checkpoint, scene):
    """Observing before reset is a RuntimeError; a negative reset seed a ValueError."""
    camera = ModelCamera(checkpoint, world="image")
    with pytest.raises(RuntimeError, match="before reset"):
        camera.observe(np.eye(4)[None])
    with pytest.raises(ValueError, match="seed"):
        camera.reset(scene, scene.start_state.pose(), seed=-3)


def test_select_context_rejects_bad_input():
    """Unknown strategies list the valid ones; an empty memory or k = 0 is refused."""
    with pytest.raises(ValueError, match=r"unknown context strategy 'random'.*first_only"):
        select_context(_filled_memory(2), np.eye(4), 1, "random")
    with pytest.raises(ValueError, match="empty"):
        select_context(SpatialMemory(), np.eye(4), 1, "spatial")
    with pytest.raises(ValueError, match="k and cap"):
        select_context(_filled_memory(2), np.eye(4), 0, "last_k")


# ---------------------------------------------------------------------------------------
# Map drawing and the demo
# ---------------------------------------------------------------------------------------


def test_map_draws_stored_frames_by_source():
    """Stored frames appear on the map as dots coloured by source at their floor positions."""
    top = TopDownMap(np.ones((100, 100), bool), -5.0, -5.0, 0.1, np.full((100, 100, 3), 128, np.uint8))
    canvas = viz.MapCanvas(top, height=100, fade=0.0)
    poses = np.stack([camera_pose(-3.0, -3.0, 0.0), camera_pose(3.0, 3.0, 0.0)])
    sources = ["observed", "generated"]
    assert np.all(canvas.draw([]) == 128)
    for states in ([], [RobotState(0.0, 0.0, 0.0)]):
        image = canvas.draw(states, frame_poses=poses, frame_sources=sources)
        for (x, z), source in zip([(-3.0, -3.0), (3.0, 3.0)], sources, strict=True):
            row, col = np.rint(canvas.to_pixels(np.array([x, z]))).astype(int)
            np.testing.assert_array_equal(image[row, col], viz.COLORS[source])
    with pytest.raises(ValueError, match="unknown frame sources"):
        canvas.draw([], frame_poses=poses, frame_sources=["observed", "dreamt"])
    with pytest.raises(ValueError, match="2 frame_sources for 1 frame_poses"):
        canvas.draw([], frame_poses=poses[:1], frame_sources=sources)


def test_demo_model_mode_writes_three_panel_video(checkpoint, tmp_path, capsys):
    """`rtfm-env demo --camera model` writes generated | ground truth | map frames and a summary with PSNR."""
    out = tmp_path / "demo"
    argv = ["demo", "--camera", "model", "--checkpoint", str(checkpoint), "--resolution", str(RES), "--out", str(out)]
    code = cli.main([*argv, "--episodes", "1", "--max-steps", "6", "--format", "gif", "--seed-views", "2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    ep = summary["episodes"][0]
    assert summary["camera"] == "model" and summary["camera_options"]["seed_views"] == 2
    assert math.isfinite(ep["psnr"]) and ep["memory_frames"] >= 2
    frames = list(imageio.mimread(out / "demo.gif", memtest=False))
    h, w = frames[0].shape[:2]
    assert w > 2.5 * h  # three panels side by side
    first = frames[0][..., :3].astype(int)
    # At reset both views are the start's ground truth; the learned view then departs from it.
    assert np.abs(first[:, :h] - first[:, h + 4 : 2 * h + 4]).mean() < 2.0
    last = frames[-1][..., :3].astype(int)
    assert np.abs(last[:, :h] - last[:, h + 4 : 2 * h + 4]).mean() > 10.0
    assert "generated | ground truth | map" in capsys.readouterr().out


def test_demo_refuses_model_options_with_ground_truth(tmp_path):
    """Model-camera options with the ground-truth camera fail instead of being ignored."""
    with pytest.raises(ValueError, match="do not apply to camera='ground_truth'"):
        cli.main(["demo", "--camera", "ground_truth", "--out", str(tmp_path), "--k", "3", "--episodes", "1",
                  "--max-steps", "2"])
