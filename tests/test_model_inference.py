"""Inference options of the shipped frame model: the GELU form and torch.compile.

Both change the arithmetic, not the function: the frames must agree with the trained network's
eager, tanh-GELU frames within bf16 rounding, on real MiniWorld views.
"""

import math

import numpy as np
import pytest
import torch

from rtfm_env.cameras import DEFAULT_CHECKPOINT, ModelCamera
from rtfm_env.model import sampler as sm
from rtfm_env.scenes import MiniWorldScene

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def views():
    """Real held-out views: 4 targets near the start of a YMaze layout, 2 context views each."""
    scene = MiniWorldScene("MiniWorld-YMaze-v0", width=64, height=64)
    try:
        start = scene.reset(3)
        rng = np.random.default_rng(0)
        states = []
        while len(states) < 12:
            s = scene.sample_free_state(rng)
            if math.hypot(s.x - start.x, s.z - start.z) < 3.0:
                states.append(s)
        poses = np.stack([s.pose() for s in states])
        frames = np.stack([scene.render(p) for p in poses])
        depths = np.stack([scene.render_depth(p) for p in poses])
        intr = scene.intrinsics
    finally:
        scene.close()
    target = poses[:4]
    context_poses = poses[4:].reshape(4, 2, 4, 4)
    context_frames = frames[4:].reshape(4, 2, 64, 64, 3)
    context_depths = depths[4:].reshape(4, 2, 64, 64)
    return target, context_frames, context_poses, intr, context_depths


def _generate(model: sm.FrameModel, views, **kwargs) -> np.ndarray:
    target, frames, poses, intr, depths = views
    if model.needs_depth:  # the shipped v2 model reads the context's depth
        kwargs["context_depths"] = depths
    return model.generate(target, frames, poses, intr, generator=torch.Generator().manual_seed(0), **kwargs)


def _assert_close_frames(a: np.ndarray, b: np.ndarray, max_diff: int, mean_diff: float) -> None:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert d.max() <= max_diff, f"largest pixel difference {d.max()} > {max_diff}"
    assert d.mean() <= mean_diff, f"mean pixel difference {d.mean():.3f} > {mean_diff}"


def test_gelu_default_follows_the_precision():
    """bf16 inference uses the erf GELU; float32 keeps the trained tanh form; bad forms are named."""
    assert sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT).gelu == "none"
    assert sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, autocast_dtype=None).gelu == "tanh"
    assert sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, gelu="tanh").gelu == "tanh"
    with pytest.raises(ValueError, match=r"unknown gelu 'relu'; valid: \['tanh', 'none'\]"):
        sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, gelu="relu")


def test_erf_gelu_matches_the_trained_tanh_gelu_within_bf16(views):
    """Under bf16 the two GELU forms give the same frames up to a few levels of rounding."""
    tanh = _generate(sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, gelu="tanh"), views)
    erf = _generate(sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, gelu="none"), views)
    assert not np.array_equal(tanh, erf)  # the option does reach the network
    _assert_close_frames(tanh, erf, max_diff=6, mean_diff=0.25)


def test_compiled_model_matches_eager(views):
    """torch.compile'd generation equals eager generation within bf16 rounding, padded views included.

    The first comparison generates one frame from one view, the shape ``compile()`` warms up
    with, so it adds no compilation; the padded batch then compiles the masked graph. (Each new
    shape costs a compilation, about a minute on a cold 2-core machine.)
    """
    eager = sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT)
    compiled = sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT, compile=True)
    assert compiled.compiled and not eager.compiled
    target, frames, poses, intr, depths = views
    one = (target[:1], frames[:1, :1], poses[:1, :1], intr, depths[:1, :1])
    _assert_close_frames(_generate(eager, one), _generate(compiled, one), max_diff=6, mean_diff=0.25)
    valid = np.array([[True, True], [True, False], [True, True], [True, False]])
    _assert_close_frames(
        _generate(eager, views, context_valid=valid),
        _generate(compiled, views, context_valid=valid),
        max_diff=6,
        mean_diff=0.25,
    )
    with pytest.raises(RuntimeError, match="a compiled FrameModel cannot move"):
        compiled.to("cpu")


def test_compile_failure_is_named_and_leaves_the_model_eager(views, monkeypatch):
    """A compiler that fails surfaces at compile() with what it needs; the model keeps working."""

    def broken(fn):
        def run(*args, **kwargs):
            raise OSError("g++: command not found")

        return run

    model = sm.FrameModel.from_pretrained(DEFAULT_CHECKPOINT)
    before = _generate(model, views)
    monkeypatch.setattr(sm.torch, "compile", broken)
    with pytest.raises(RuntimeError, match=r"torch.compile of the frame model failed \(OSError: g\+\+: command not"):
        model.compile()
    assert not model.compiled
    np.testing.assert_array_equal(_generate(model, views), before)


def test_model_camera_options_record_gelu_and_compile():
    """The camera's options say which GELU form and whether compile is on; bad values are refused."""
    cam = ModelCamera(k=2, autocast="bfloat16")
    assert cam.options["gelu"] == "none" and cam.options["compile"] is False
    assert ModelCamera(k=2, autocast="bfloat16", gelu="tanh").options["gelu"] == "tanh"
    assert ModelCamera(k=2, autocast="float32").options["gelu"] == "tanh"
    with pytest.raises(ValueError, match="compile must be True or False"):
        ModelCamera(k=2, compile="yes")
    with pytest.raises(ValueError, match="device, autocast and gelu apply when loading a checkpoint"):
        ModelCamera(cam.model, gelu="tanh")


def test_envs_take_compile_model(monkeypatch):
    """compile_model=True reaches the model camera of an env and of a vector env (one shared, compiled model).

    This tests the wiring: ``FrameModel.compile`` is replaced by a recorder, so no graph is
    compiled here (a cold compile costs a minute or more on 2 cores); that compiled frames equal
    eager ones is :func:`test_compiled_model_matches_eager`'s.
    """
    import gymnasium as gym

    import rtfm_env  # noqa: F401 (registers the ids)

    compiled = []

    def record(model):  # as FrameModel.compile: a compiled model is returned as it is
        if not model.compiled:
            compiled.append(id(model))
            model.compiled = True
        return model

    monkeypatch.setattr(sm.FrameModel, "compile", record)
    with pytest.raises(ValueError, match=r"\['compile_model'\] do not apply to camera='ground_truth'"):
        gym.make("RTFM/PointNav-v0", compile_model=True)
    envs = gym.make_vec("RTFM/PointNav-v0", num_envs=2, camera="model", compile_model=True, scene="OneRoom")
    try:
        obs, _ = envs.reset(seed=0)
        obs, *_ = envs.step(np.array([1, 2]))
        models = {id(env.camera.model) for env in envs.envs}
        assert len(models) == 1 and envs.envs[0].camera.model.compiled
        assert compiled == list(models)  # the shared model was compiled, once
        assert all(env.camera.options["compile"] for env in envs.envs)
        assert obs["rgb"].shape == (2, 64, 64, 3)
    finally:
        envs.close()
    single = gym.make("RTFM/PointNav-v0", camera="model", compile_model=True, scene="OneRoom")
    try:
        single.reset(seed=0)
        assert single.unwrapped.camera.model.compiled and len(compiled) == 2
    finally:
        single.close()


def test_default_precision_follows_the_hardware(monkeypatch):
    """bf16 by default only where the hardware has it (CUDA, CPUs with bf16 units); float32 elsewhere."""
    import rtfm_env.cameras as cameras

    assert cameras.default_autocast("cuda") == "bfloat16"
    monkeypatch.setattr(cameras, "_cpu_has_bf16", lambda: False)
    assert cameras.default_autocast("cpu") == "float32"
    assert ModelCamera(k=2).options["autocast"] == "float32"
    monkeypatch.setattr(cameras, "_cpu_has_bf16", lambda: True)
    assert cameras.default_autocast("cpu") == "bfloat16"
    assert ModelCamera(k=2).options["autocast"] == "bfloat16"
