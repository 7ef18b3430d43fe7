"""The model camera with a v2 checkpoint: context depth in, depth out, stored with each frame."""

import gymnasium as gym
import numpy as np
import pytest

import rtfm_env  # noqa: F401 (registers the envs)
from rtfm_env.cameras import ModelCamera, ReprojectionCamera, observe_many
from rtfm_env.scenes import MiniWorldScene

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    s = MiniWorldScene("MiniWorld-OneRoom-v0")
    yield s
    s.close()


def _walk_poses(scene, start, n=4):
    poses, pose = [], start.copy()
    for _ in range(n):
        pose = pose.copy()
        pose[:3, 3] += 0.2 * (-pose[:3, 2])  # 0.2 m forward along the view
        poses.append(pose)
    return np.stack(poses)


def test_v2_camera_has_depth_and_stores_it(scene, tiny_v2_checkpoint):
    """observe_rgbd gives depth in metres; each generated frame is stored with that depth."""
    cam = ModelCamera(tiny_v2_checkpoint, k=2, world="walk")
    assert cam.has_depth
    scene.reset(0)
    start = scene.start_state.pose()
    frame, depth = cam.reset_rgbd(scene, start, seed=0)
    assert frame.shape == (64, 64, 3) and depth.shape == (64, 64)
    poses = _walk_poses(scene, start)[:1]
    frames, depths = cam.observe_rgbd(poses)
    assert frames.shape == (1, 64, 64, 3) and depths.shape == (1, 64, 64) and depths.dtype == np.float32
    assert not np.isnan(depths).any() and (depths > 0).all()
    newest = cam.memory.ids[-1]
    assert cam.memory.sources([newest]) == ["generated"] and cam.memory.has_depth([newest])[0]
    np.testing.assert_allclose(cam.memory.depths([newest])[0], depths[0], rtol=2e-3)  # float16 storage
    # The untrained v2 model renders the warp: near the reprojection camera's frame and depth.
    truth = scene.render_depth(poses[0])
    finite = np.isfinite(truth) & np.isfinite(depths[0])
    assert finite.mean() > 0.5
    assert np.median(np.abs(depths[0][finite] - truth[finite]) / truth[finite]) < 0.1


def test_untrained_v2_camera_matches_the_reprojection_camera(scene, tiny_v2_checkpoint):
    """Zero-initialised residuals: the v2 camera's first frames are the reprojection camera's."""
    scene.reset(0)
    start = scene.start_state.pose()
    model = ModelCamera(tiny_v2_checkpoint, k=2, world="walk", steps=1)
    reproj = ReprojectionCamera(k=2, world="walk")
    model.reset(scene, start, seed=0)
    reproj.reset(scene, start, seed=0)
    pose = _walk_poses(scene, start)[:1]
    a, b = model.observe(pose), reproj.observe(pose)
    # The same memory and query give the same retrieval; the model samples holes from noise,
    # so compare where the reprojection is covered (most of a walk's view).
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
    assert np.mean(diff <= 1) > 0.95, np.mean(diff <= 1)


def test_v1_camera_has_no_depth(tiny_checkpoint):
    """A v1 checkpoint gives no depth, and says so naming the checkpoint."""
    cam = ModelCamera(tiny_checkpoint, k=2)
    assert not cam.has_depth
    with pytest.raises(ValueError, match="does not predict depth"):
        cam.observe_rgbd(np.eye(4)[None])


def test_env_depth_with_the_model_camera(tiny_checkpoint, tiny_v2_checkpoint):
    """depth=True works with a v2 model camera (single and vector env) and is refused with v1."""
    env = gym.make("RTFM/PointNav-v0", camera="model", checkpoint=str(tiny_v2_checkpoint), depth=True,
                   world="image", max_steps=3)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["depth"].shape == (64, 64) and np.isfinite(obs["depth"]).all()
        obs, *_ = env.step(0)
        assert obs["depth"].shape == (64, 64) and (obs["depth"] >= 0).all()
    finally:
        env.close()
    with pytest.raises(ValueError, match="does not predict depth"):
        gym.make("RTFM/PointNav-v0", camera="model", checkpoint=str(tiny_checkpoint), depth=True)
    envs = gym.make_vec("RTFM/PointNav-v0", num_envs=2, vectorization_mode="vector_entry_point", camera="model",
                        checkpoint=str(tiny_v2_checkpoint), depth=True, world="image", max_steps=3)
    try:
        obs, _ = envs.reset(seed=0)
        obs, *_ = envs.step(np.array([0, 0]))
        assert obs["depth"].shape == (2, 64, 64)
    finally:
        envs.close()


def test_observe_many_with_depth_refuses_a_v1_model(tiny_checkpoint, scene):
    cam = ModelCamera(tiny_checkpoint, k=2, world="image")
    scene.reset(0)
    cam.reset(scene, scene.start_state.pose(), seed=0)
    with pytest.raises(ValueError, match="does not predict depth"):
        observe_many([cam], [np.eye(4)[None]], depth=True)


def test_model_camera_warps_observed_views_before_its_own_generations(scene, tiny_v2_checkpoint, monkeypatch):
    """Each generate call gets context_priority: 0 for the observed context views, 1 for generated ones."""
    cam = ModelCamera(tiny_v2_checkpoint, k=4, world="image")
    scene.reset(0)
    start = scene.start_state.pose()
    cam.reset(scene, start, seed=0)
    seen = []
    original = type(cam.model).generate

    def spy(self, *args, **kwargs):
        seen.append(np.asarray(kwargs["context_priority"]).copy())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(cam.model), "generate", spy)
    for pose in _walk_poses(scene, start, n=3):
        cam.observe(pose[None])
        ids = cam.last_context[0]
        want = [0 if s == "observed" else 1 for s in cam.memory.sources(ids)]
        assert seen[-1][0, : len(ids)].tolist() == want
    assert seen[-1][0, 0] == 0 and 1 in seen[-1][0]  # the start frame and the camera's own frames


def test_warp_k_warps_more_views_than_the_network_attends(scene, tiny_v2_checkpoint, tiny_checkpoint, monkeypatch):
    """ModelCamera(k=2, warp_k=4): up to 4 context views, the network attending to the first 2 of each."""
    cam = ModelCamera(tiny_v2_checkpoint, k=2, warp_k=4, world="scan")
    assert cam.options["warp_k"] == 4 and cam.options["k"] == 2
    scene.reset(0)
    start = scene.start_state.pose()
    cam.reset(scene, start, seed=0)
    seen = []
    original = type(cam.model).generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("context_attend"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(cam.model), "generate", spy)
    cam.observe(_walk_poses(scene, start, n=2))
    ids = cam.last_context
    assert all(2 < len(c) <= 4 for c in ids)
    attend = np.asarray(seen[-1])
    assert attend.shape == (2, max(len(c) for c in ids))
    for row in attend:
        assert row.tolist() == [j < 2 for j in range(len(row))]
    # views beyond k are observed frames only: from one start image, the extras are that image at most
    single = ModelCamera(tiny_v2_checkpoint, k=1, warp_k=4, world="image", seed_views=2)
    single.reset(scene, start, seed=0)
    extras_seen = 0
    for pose in _walk_poses(scene, start, n=4):
        single.observe(pose[None])
        extras = single.last_context[0][1:]
        assert all(src == "observed" for src in single.memory.sources(extras))
        extras_seen += len(extras)
    assert extras_seen > 0  # the second observed frame did enter the warp beside the attended view
    assert "generated" in single.memory.sources(single.memory.ids)
    with pytest.raises(ValueError, match="warp_k must be None or an integer in"):
        ModelCamera(tiny_v2_checkpoint, k=2, warp_k=1)
    assert ModelCamera(tiny_checkpoint, k=2, warp_k=4).warp_k == 2  # a model without warp input: k views
