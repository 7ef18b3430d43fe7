"""Tests for the no-learning memory cameras (reprojection, nearest view) and camera depth."""

import math

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401 (registers the envs)
from rtfm_env.cameras import (
    CAMERAS,
    GroundTruthCamera,
    ModelCamera,
    NearestViewCamera,
    ReprojectionCamera,
    make_camera,
    reproject_many,
)
from rtfm_env.eval.metrics import psnr
from rtfm_env.geometry import camera_pose
from rtfm_env.memory import SpatialMemory
from rtfm_env.scenes import MiniWorldScene

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    """A YMaze layout (held-out id) at 64x64."""
    scene = MiniWorldScene("MiniWorld-YMaze-v0")
    scene.reset(1)
    yield scene
    scene.close()


def _moved(scene, forward=0.0, turn=0.0) -> np.ndarray:
    s = scene.start_state
    return camera_pose(s.x + forward * math.cos(s.yaw), s.z - forward * math.sin(s.yaw), s.yaw + turn)


def test_registry_and_depth_flags():
    """Every camera name builds its class; ground truth and reprojection have depth, the others not."""
    assert set(CAMERAS) == {"ground_truth", "model", "reprojection", "nearest"}
    assert [name for name, cls in sorted(CAMERAS.items()) if cls.has_depth] == ["ground_truth", "reprojection"]
    assert isinstance(make_camera("reprojection", world="image"), ReprojectionCamera)
    with pytest.raises(ValueError, match="gives no depth; cameras with depth"):
        NearestViewCamera(world="image").observe_rgbd(np.eye(4)[None])


def test_ground_truth_depth_is_the_scene_depth(scene):
    """GroundTruthCamera's depth is Scene.render_depth at each pose."""
    cam = GroundTruthCamera()
    frame, depth = cam.reset_rgbd(scene, scene.start_state.pose())
    assert np.array_equal(frame, scene.render(scene.start_state.pose()))
    pose = _moved(scene, 0.5)
    frames, depths = cam.observe_rgbd(pose[None])
    assert depths.shape == (1, 64, 64) and depths.dtype == np.float32
    assert np.array_equal(depths[0], scene.render_depth(pose))


def test_reprojection_at_a_stored_pose_is_the_stored_frame(scene):
    """From the start pose itself the warp is the identity: the observed frame and depth come back."""
    cam = ReprojectionCamera(world="image")
    start = scene.start_state.pose()
    frame, depth = cam.reset_rgbd(scene, start, seed=0)
    assert np.array_equal(frame, scene.render(start))
    frames, depths = cam.observe_rgbd(start[None])
    assert np.array_equal(frames[0], frame)
    finite = np.isfinite(depth)
    assert np.allclose(depths[0][finite], depth[finite], rtol=2e-3)


@pytest.mark.parametrize("world", ["walk", "scan"])
def test_reprojection_is_faithful_near_what_was_seen(scene, world):
    """A step ahead of the start, the warped view beats copying the start frame and matches the true depth."""
    cam = ReprojectionCamera(world=world)
    start = cam.reset(scene, scene.start_state.pose())
    pose = _moved(scene, 0.25, 0.2)
    frames, depths = cam.observe_rgbd(pose[None])
    truth_rgb = scene.render(pose)
    # The checkerboard floor makes any half-pixel shift cost PSNR, so compare with the copy, not a constant.
    assert psnr(frames[0], truth_rgb) > max(20.0, psnr(start, truth_rgb) + 2.0)
    truth = scene.render_depth(pose)
    ok = np.isfinite(depths[0]) & np.isfinite(truth)
    assert ok.mean() > 0.75  # the turn reveals a strip that the walk may not have seen
    assert np.median(np.abs(depths[0][ok] - truth[ok]) / truth[ok]) < 0.03


def test_reprojection_is_deterministic_batched_and_stores_nothing(scene):
    """Two cameras agree, a batch equals its poses one by one, and observing never adds to the memory."""
    a, b = ReprojectionCamera(world="walk"), ReprojectionCamera(world="walk")
    a.reset(scene, scene.start_state.pose(), seed=1)
    b.reset(scene, scene.start_state.pose(), seed=2)
    n = len(a.memory)
    poses = np.stack([_moved(scene, d, t) for d, t in [(0.2, 0.0), (0.5, 0.3), (0.0, -0.6)]])
    batch = a.observe(poses)
    singles = np.stack([b.observe(p[None])[0] for p in poses])
    assert np.array_equal(batch, singles)
    assert len(a.memory) == n
    assert len(a.last_context) == 3 and all(1 <= len(c) <= a.k for c in a.last_context)


def test_reprojection_with_nothing_in_view_shows_the_mean_colour(scene):
    """Facing away from the only stored frame, the view is the stored frames' mean colour and depth is NaN."""
    cam = ReprojectionCamera(world="image")
    start = scene.start_state.pose()
    first = cam.reset(scene, start)
    frames, depths = cam.observe_rgbd(_moved(scene, 0.0, math.pi)[None])
    expected = np.rint(first.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    assert (frames[0] == expected).all()
    assert np.isnan(depths[0]).all()


def test_reprojection_world_files_round_trip_and_need_depth(scene, tmp_path):
    """A saved world reloads (world=PATH) to the same frames; a world without depth is refused clearly."""
    cam = ReprojectionCamera(world="walk")
    cam.reset(scene, scene.start_state.pose())
    pose = _moved(scene, 0.4, 0.1)
    expected = cam.observe(pose[None])
    path = tmp_path / "walk.rtfm"
    cam.save_world(path)
    again = ReprojectionCamera(world=path)
    again.reset(scene, scene.start_state.pose())
    assert np.array_equal(again.observe(pose[None]), expected)

    flat = SpatialMemory()
    flat.add(scene.render(pose), pose, scene.intrinsics, "observed")
    no_depth = tmp_path / "rgb_only.rtfm"
    flat.save(no_depth)
    with pytest.raises(ValueError, match=r"rgb_only.rtfm has no depth.*rebuild it from RGB-D frames"):
        ReprojectionCamera().load_world(no_depth)
    with pytest.raises(ValueError, match="rgb_only.rtfm has no depth"):
        ReprojectionCamera(world=no_depth).reset(scene, pose)


def test_reprojection_rejects_bad_options():
    """Bad k, splat, world or seed views fail at construction with the problem named."""
    with pytest.raises(ValueError, match="k must be an integer"):
        ReprojectionCamera(k=0)
    with pytest.raises(ValueError, match="unknown splat 'cubic'"):
        ReprojectionCamera(splat="cubic")
    with pytest.raises(ValueError, match="neither a regime"):
        ReprojectionCamera(world="nowhere.rtfm")
    with pytest.raises(ValueError, match="seed_views"):
        ReprojectionCamera(seed_views=True)
    with pytest.raises(RuntimeError, match="before reset"):
        ReprojectionCamera().observe(np.eye(4)[None])


def test_nearest_view_copies_the_best_observed_frame(scene):
    """The nearest-view camera shows a stored observed frame unchanged, the start's at the start."""
    cam = NearestViewCamera(world="walk")
    start = scene.start_state.pose()
    first = cam.reset(scene, start)
    assert np.array_equal(cam.observe(start[None])[0], first)
    frame = cam.observe(_moved(scene, 0.3, 0.4)[None])[0]
    stored = cam.memory.frames(cam.memory.ids)
    assert any(np.array_equal(frame, s) for s in stored)
    assert len(cam.memory) == len(stored)


def test_env_depth_observation(scene):
    """depth=True adds a float32 metres observation inside its space: ground truth's equals render_depth."""
    env = gym.make("RTFM/Explore-v0", scene="MiniWorld-YMaze-v0", camera="ground_truth", depth=True, scene_seed=1)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["depth"].dtype == np.float32 and obs in env.observation_space
        pose = obs["pose"].astype(np.float64)
        assert np.allclose(obs["depth"], env.unwrapped.scene.render_depth(pose))
        obs, *_ = env.step(1)
        assert np.allclose(obs["depth"], env.unwrapped.scene.render_depth(obs["pose"].astype(np.float64)))
    finally:
        env.close()
    env = gym.make("RTFM/Explore-v0", scene="MiniWorld-YMaze-v0", camera="reprojection", world="image", depth=True)
    try:
        env.reset(seed=0)
        for action in (2, 2, 2, 2, 2, 2):  # turn away from the only stored view
            obs, *_ = env.step(action)
        assert obs in env.observation_space and (obs["depth"] == 0).any()  # 0 = nothing known there
    finally:
        env.close()


def test_model_camera_takes_a_world_and_has_no_depth_yet(tmp_path):
    """The model camera accepts world= like the other memory cameras, and refuses depth clearly."""
    assert "world" in ModelCamera.__init__.__code__.co_varnames
    assert not ModelCamera.has_depth


def test_reseed_after_load_world_reproduces_model_frames(scene, tmp_path, tiny_checkpoint):
    """reseed(seed) after load_world makes a model camera's frames repeat; bad seeds are refused."""
    cam = ModelCamera(tiny_checkpoint, world="image")
    cam.reset(scene, scene.start_state.pose(), seed=0)
    path = tmp_path / "w.rtfm"
    cam.save_world(path)
    pose = _moved(scene, 0.3)[None]
    frames = []
    for _ in range(2):
        cam.load_world(path)
        cam.reseed(7)
        frames.append(cam.observe(pose))
    assert np.array_equal(*frames)
    with pytest.raises(ValueError, match="seed must be an integer"):
        cam.reseed(-1)
    ReprojectionCamera().reseed(3)  # deterministic cameras accept and ignore it


def test_reproject_many_equals_each_cameras_own_observe(scene):
    """One batched warp for several cameras gives each camera's own frames; the vector env uses it."""
    a, b = ReprojectionCamera(world="walk"), ReprojectionCamera(world="image")
    for cam in (a, b):
        cam.reset(scene, scene.start_state.pose())
    pa = np.stack([_moved(scene, 0.3, 0.1), _moved(scene, 0.1, -0.4)])
    pb = _moved(scene, 0.0, math.pi)[None]  # nothing of b's single view in sight: b's own mean colour
    (fa, da), (fb, db) = reproject_many([a, b], [pa, pb], depth=True)
    ea, eda = a.observe_rgbd(pa)
    eb, edb = b.observe_rgbd(pb)
    assert np.array_equal(fa, ea) and np.array_equal(fb, eb)
    assert np.array_equal(da, eda, equal_nan=True) and np.array_equal(db, edb, equal_nan=True)
    with pytest.raises(ValueError, match="listed twice"):
        reproject_many([a, a], [pa, pb])
    with pytest.raises(TypeError, match="not a ReprojectionCamera"):
        reproject_many([a, NearestViewCamera()], [pa, pb])


def test_vector_env_batches_reprojection_with_depth(monkeypatch):
    """The vector env makes one reproject_many call per step for all envs that moved, depth included."""
    import rtfm_env.envs.vector as vector

    calls = []
    real = vector.reproject_many

    def spy(cameras, poses, **kwargs):
        calls.append(len(cameras))
        return real(cameras, poses, **kwargs)

    monkeypatch.setattr(vector, "reproject_many", spy)
    envs = gym.make_vec(
        "RTFM/Explore-v0", num_envs=3, scene="MiniWorld-OneRoom-v0", camera="reprojection", world="image", depth=True
    )
    try:
        obs, _ = envs.reset(seed=0)
        obs, *_ = envs.step(np.array([2, 3, 2]))
        assert calls == [3] and obs["depth"].shape == (3, 64, 64) and obs in envs.observation_space
    finally:
        envs.close()


@pytest.mark.parametrize("resolution", [64, (64, 64), [64, 64], np.array([64, 64]), np.int64(64)],
                         ids=["int", "tuple", "list", "array", "np-int"])
def test_model_camera_still_takes_every_resolution_form(resolution):
    """Issue 15's bounds leave the valid forms of resolution as they were."""
    camera = make_camera("model", resolution=resolution)
    assert camera.model.config.height == 64


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("model", dict(steps=10**9), r"integer in \[1, 1000\], got 1000000000"),
        ("model", dict(resolution=True), "resolution must be an int or"),
        ("model", dict(seed=True), r"seed must be an integer in \[0, 2\*\*64\)"),
        ("reprojection", dict(k=True), r"k must be an integer in \[1, 64\]"),
        ("nearest", dict(seed_views=10**6), r"seed_views must be an integer in \[1, 360\]"),
    ],
    ids=["steps", "resolution", "seed", "k", "seed-views"],
)
def test_make_camera_refuses_bools_and_huge_sizes(name, kwargs, message):
    """make_camera (the env's and the ROS node's route) gives the constructors' clear errors."""
    with pytest.raises(ValueError, match=message):
        make_camera(name, **kwargs)
