"""Tests for rtfm_env.model.sampler: the flow path, training loss, Euler sampler and FrameModel."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from rtfm_env.geometry import Intrinsics, camera_pose, make_pose
from rtfm_env.model import network as nw
from rtfm_env.model import sampler as sm

H = W = 32
INTR = Intrinsics(W, H)
TINY = nw.model_config("T", height=H, width=W, max_context=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(cfg: nw.ModelConfig = TINY, seed: int = 0) -> nw.FrameNetwork:
    """A network whose zero-initialised layers are perturbed, so its output depends on everything."""
    net = nw.FrameNetwork(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def scene(b: int = 2, k: int = 3, seed: int = 0):
    """Target poses (B, 4, 4), uint8 context frames (B, K, H, W, 3) and context poses (B, K, 4, 4)."""
    rng = np.random.default_rng(seed)

    def pose():
        return camera_pose(rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-math.pi, math.pi))

    target = np.stack([pose() for _ in range(b)])
    context_poses = np.stack([np.stack([pose() for _ in range(k)]) for _ in range(b)])
    frames = rng.integers(0, 256, size=(b, k, H, W, 3), dtype=np.uint8)
    return target, frames, context_poses


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- flow pieces ------------------------------------------------------------------------


def test_nearest_context_uses_distance_and_rotation():
    """The nearest view is the closest camera; the rotation weight trades metres for radians."""
    target = camera_pose(0.0, 0.0, 0.0)[None]
    near_turned = camera_pose(0.5, 0.0, math.pi)  # 0.5 m away, facing backwards
    far_aligned = camera_pose(2.0, 0.0, 0.0)  # 2 m away, same heading
    context = np.stack([near_turned, far_aligned])[None]
    assert sm.nearest_context(target, context, rotation_weight=0.0).item() == 0
    assert sm.nearest_context(target, context, rotation_weight=1.0).item() == 1
    valid = torch.tensor([[True, False]])
    assert sm.nearest_context(target, context, valid, rotation_weight=1.0).item() == 0


@pytest.mark.parametrize("start", ["context", "noise"])
def test_flow_start(start):
    """x0 is the nearest view plus sigma-scaled noise, or pure unit noise."""
    cfg = nw.model_config("T", flow_start=start, flow_sigma=0.3)
    context = torch.rand(4, 3, 3, 16, 16) * 2 - 1
    nearest = torch.tensor([2, 0, 1, 2])
    x0, mean = sm.flow_start(context, nearest, cfg, seeded(0))
    if start == "context":
        torch.testing.assert_close(mean, context[torch.arange(4), nearest])
        assert abs(float((x0 - mean).std()) - 0.3) < 0.02
    else:
        assert torch.count_nonzero(mean) == 0 and abs(float(x0.std()) - 1.0) < 0.05
    again, _ = sm.flow_start(context, nearest, cfg, seeded(0))
    assert torch.equal(x0, again)


@pytest.mark.parametrize("kind, mean_low, mean_high", [("uniform", 0.45, 0.55), ("logit_normal", 0.45, 0.55)])
def test_sample_time_distributions(kind, mean_low, mean_high):
    """Training times lie in [0, 1]; logit-normal concentrates in the middle more than uniform."""
    cfg = nw.model_config("T", time_sampling=kind)
    t = sm.sample_time(20000, cfg, seeded(0), torch.device("cpu"))
    assert t.min() >= 0 and t.max() <= 1 and mean_low < t.mean() < mean_high
    middle = ((t > 0.25) & (t < 0.75)).float().mean()
    assert (middle > 0.6) if kind == "logit_normal" else (abs(middle - 0.5) < 0.02)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_sample_time_t0_fraction(fraction):
    """t0_fraction puts that share of training times at exactly t = 0; the rest keep their distribution."""
    cfg = nw.model_config("T", t0_fraction=fraction)
    t = sm.sample_time(20000, cfg, seeded(0), torch.device("cpu"))
    assert abs(float((t == 0).float().mean()) - fraction) < 0.02
    assert 0.45 < float(t[t > 0].mean()) < 0.55


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.5"])
def test_t0_fraction_rejects_bad_values(value):
    """t0_fraction outside [0, 1) is refused, naming the field."""
    with pytest.raises(ValueError, match="t0_fraction"):
        nw.model_config("T", t0_fraction=value)


class ConstantPredictor(torch.nn.Module):
    """Stands in for the network: always predicts the same clean frame, records the inputs."""

    def __init__(self, x1: torch.Tensor) -> None:
        super().__init__()
        self.x1 = x1
        self.seen = []

    def denoise(self, x_t, t, target_rays, cache):
        self.seen.append((x_t.clone(), t.clone()))
        return self.x1


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_sampler_lands_exactly_on_prediction(steps):
    """Euler steps with velocity (x1_hat - x_t)/(1 - t) follow the straight line and end on x1_hat."""
    x0, x1 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    fake = ConstantPredictor(x1)
    out = sm.sample(fake, x0, torch.zeros(2, 6, 8, 8), None, steps)
    assert torch.equal(out, x1)
    assert len(fake.seen) == steps
    for i, (x_t, t) in enumerate(fake.seen):
        assert torch.allclose(t, torch.full((2,), i / steps))
        torch.testing.assert_close(x_t, torch.lerp(x0, x1, i / steps))


def test_sampler_rejects_zero_steps():
    """Zero steps raise."""
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sm.sample(ConstantPredictor(torch.zeros(1)), torch.zeros(1, 3, 8, 8), None, None, 0)


# -- training loss ----------------------------------------------------------------------


def training_batch(b: int = 4, k: int = 2, size: int = 16, seed: int = 0) -> dict:
    """A small structured batch in the collated PosedFrameDataset layout."""
    rng = np.random.default_rng(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def image(i):
        f = 1 + i
        return torch.stack([torch.sin(2 * f * xx), torch.cos(2 * f * yy + i), torch.sin(f * (xx + yy))]) * 0.8

    def pose():
        return camera_pose(rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-3, 3))

    return dict(
        target_frame=torch.stack([image(i) for i in range(b)]),
        target_pose=torch.from_numpy(np.stack([pose() for _ in range(b)])),
        context_frames=torch.stack([torch.stack([image(i + j + 5) for j in range(k)]) for i in range(b)]),
        context_poses=torch.from_numpy(np.stack([np.stack([pose() for _ in range(k)]) for _ in range(b)])),
        intrinsics=torch.tensor([[size, size, 60.0]] * b, dtype=torch.float64),
        env_id=["MiniWorld-Maze-v0"] * b,
    )


def test_training_loss_overfits_one_batch():
    """A tiny model memorises one small batch: the loss falls by more than half in 150 steps."""
    torch.manual_seed(0)
    net = nw.FrameNetwork(nw.model_config("T", height=16, width=16, patch=4))
    batch = training_batch()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    g = seeded(1)
    losses = []
    for _ in range(150):
        loss, stats = sm.training_loss(net, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert stats["loss"].item() == pytest.approx(losses[-1])
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_training_loss_accepts_uint8_and_float_alike():
    """uint8 channel-last and float channel-first frames give the same loss for the same seed."""
    net = randomized(nw.model_config("T", height=16, width=16, patch=4))
    batch = training_batch()
    as_uint8 = dict(
        batch,
        target_frame=torch.from_numpy(nw.to_uint8(batch["target_frame"])),
        context_frames=torch.from_numpy(nw.to_uint8(batch["context_frames"])),
    )
    as_float = dict(batch, target_frame=nw.to_model(as_uint8["target_frame"]),
                    context_frames=nw.to_model(as_uint8["context_frames"]), intrinsics=Intrinsics(16, 16))
    a, _ = sm.training_loss(net, as_uint8, seeded(3))
    b, _ = sm.training_loss(net, as_float, seeded(3))
    torch.testing.assert_close(a, b)


def test_training_loss_stats_and_weighting():
    """A fresh model's loss is the mean square of the targets; velocity weighting only raises it."""
    net = nw.FrameNetwork(nw.model_config("T", height=16, width=16, patch=4))
    batch = training_batch()
    loss, stats = sm.training_loss(net, batch, seeded(0))
    torch.testing.assert_close(loss, batch["target_frame"].square().mean())
    assert 0 < stats["t_mean"] < 1 and stats["baseline_mse"] > 0
    net = nw.FrameNetwork(nw.model_config("T", height=16, width=16, patch=4, loss_weighting="velocity"))
    weighted, stats = sm.training_loss(net, batch, seeded(0))
    assert weighted > stats["mse"] and torch.isclose(stats["mse"], loss)


def test_training_loss_per_sample_weight():
    """Zero weight on every sample but one gives that sample's loss over the batch size."""
    net = randomized(nw.model_config("T", height=16, width=16, patch=4))
    batch = training_batch()
    full, _ = sm.training_loss(net, dict(batch, weight=torch.tensor([0.0, 0.0, 4.0, 0.0])), seeded(0))
    assert full > 0
    one, _ = sm.training_loss(net, dict(batch, weight=torch.tensor([0.0, 0.0, 1.0, 0.0])), seeded(0))
    torch.testing.assert_close(full, 4 * one)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda b: {k: v for k, v in b.items() if k != "target_pose"}, KeyError, r"missing \['target_pose'\]"),
        (lambda b: dict(b, intrinsics=torch.tensor([[16, 16, 60.0], [16, 16, 70.0]] * 2)), ValueError,
         "share intrinsics"),
        (lambda b: dict(b, intrinsics=Intrinsics(32, 16)), ValueError, "intrinsics are 32x16 but frames are 16x16"),
        (lambda b: dict(b, context_poses=b["context_poses"][:, :0]), ValueError, r"K >= 1"),
        (lambda b: dict(b, target_frame=b["target_frame"] * 3), ValueError, r"must lie in \[-1, 1\]"),
        (lambda b: dict(b, weight=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "non-negative"),
        (lambda b: dict(b, target_pose=b["target_pose"] * 2), ValueError, "target_pose"),
    ],
    ids=["missing-key", "mixed-intrinsics", "wrong-intrinsics", "no-context", "float-range", "negative-weight",
         "non-rigid-pose"],
)
def test_training_loss_rejects_bad_batches(change, error, message):
    """Bad training batches raise with a message naming the problem."""
    net = nw.FrameNetwork(nw.model_config("T", height=16, width=16, patch=4))
    with pytest.raises(error, match=message):
        sm.training_loss(net, change(training_batch()), seeded(0))


# -- FrameModel -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sm.FrameModel:
    return sm.FrameModel(randomized())


def test_generate_shape_and_dtype(model):
    """FrameModel.generate returns (B, H, W, 3) uint8 for uint8 context, and float context gives the same."""
    target, frames, context_poses = scene(b=3, k=2)
    out = model.generate(target, frames, context_poses, INTR, generator=seeded(0))
    assert out.shape == (3, H, W, 3) and out.dtype == np.uint8
    same = model.generate(target, nw.to_model(frames), context_poses, INTR, generator=seeded(0))
    np.testing.assert_array_equal(out, same)


def test_generate_is_seeded(model):
    """The same generator seed reproduces the frames exactly; another seed changes them."""
    target, frames, context_poses = scene()
    a = model.generate(target, frames, context_poses, INTR, generator=seeded(5))
    b = model.generate(target, frames, context_poses, INTR, generator=seeded(5))
    c = model.generate(target, frames, context_poses, INTR, generator=seeded(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


def test_sample_sigma_zero_starts_from_the_nearest_view():
    """sample_sigma = 0 makes generation independent of the seed; sample_sigma = None keeps flow_sigma."""
    target, frames, context_poses = scene()
    net = randomized(dataclasses.replace(TINY, sample_sigma=0.0))
    fm = sm.FrameModel(net)
    a = fm.generate(target, frames, context_poses, INTR, generator=seeded(5))
    b = fm.generate(target, frames, context_poses, INTR, generator=seeded(6))
    np.testing.assert_array_equal(a, b)
    net.config = dataclasses.replace(net.config, sample_sigma=None)
    c = fm.generate(target, frames, context_poses, INTR, generator=seeded(6))
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


@pytest.mark.parametrize("value", [-0.1, float("nan"), "0", True])
def test_sample_sigma_rejects_bad_values(value):
    """A negative, NaN or non-numeric sample_sigma is refused, naming the field."""
    with pytest.raises(ValueError, match="sample_sigma"):
        dataclasses.replace(TINY, sample_sigma=value)


def test_generate_one_step_is_one_network_call(model):
    """With one step the frame is the network's prediction from the flow start at t = 0."""
    target, frames, context_poses = scene(b=1, k=2)
    out = model.generate(target, frames, context_poses, INTR, steps=1, generator=seeded(2))
    target_rays, context_rays = nw.posed_rays(target, context_poses, INTR)
    context = nw.to_model(frames)
    nearest = sm.nearest_context(target, context_poses, None, TINY.nearest_rotation_weight)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x0, _ = sm.flow_start(context, nearest, TINY, seeded(2))
        x1 = model.network.denoise(x0, torch.zeros(1), target_rays, model.network.encode_context(context, context_rays))
    np.testing.assert_array_equal(out, nw.to_uint8(x1))


def test_generate_steps_change_the_result(model):
    """More Euler steps give a different (refined) frame than one step."""
    target, frames, context_poses = scene(b=1, k=2)
    one = model.generate(target, frames, context_poses, INTR, steps=1, generator=seeded(0))
    four = model.generate(target, frames, context_poses, INTR, steps=4, generator=seeded(0))
    assert not np.array_equal(one, four)


def test_generate_batch_elements_are_independent():
    """With a noise-free flow start, generating a batch equals generating each element alone."""
    net = randomized(nw.model_config("T", height=H, width=W, flow_sigma=0.0))
    fm = sm.FrameModel(net, autocast_dtype=None)
    target, frames, context_poses = scene(b=3, k=2)
    batched = fm.generate(target, frames, context_poses, INTR)
    for i in range(3):
        alone = fm.generate(target[i : i + 1], frames[i : i + 1], context_poses[i : i + 1], INTR)
        assert np.abs(alone[0].astype(int) - batched[i].astype(int)).max() <= 1


def test_generate_is_invariant_to_the_world_frame():
    """Moving the whole world rigidly (all poses alike) leaves the frames unchanged: rays are relative."""
    fm = sm.FrameModel(randomized(), autocast_dtype=None)
    target, frames, context_poses = scene(b=2, k=3)
    world = make_pose(camera_pose(0, 0, 1.1, 0.0, 0.4)[:3, :3], [3.0, -1.0, 7.0])
    a = fm.generate(target, frames, context_poses, INTR, generator=seeded(0))
    b = fm.generate(world @ target, frames, world @ context_poses, INTR, generator=seeded(0))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_generate_padding_views(model):
    """Views masked out by context_valid do not change the frames (batches may mix K)."""
    fm = sm.FrameModel(model.network, autocast_dtype=None)
    target, frames, context_poses = scene(b=2, k=3)
    ref = fm.generate(target, frames[:, :2], context_poses[:, :2], INTR, generator=seeded(1))
    valid = np.array([[True, True, False], [True, True, False]])
    out = fm.generate(target, frames, context_poses, INTR, generator=seeded(1), context_valid=valid)
    assert np.abs(ref.astype(int) - out.astype(int)).max() <= 1


def test_generate_noise_equals_its_generator(model):
    """Noise drawn from a generator gives exactly the frames of that generator; rows serve separate streams."""
    target, frames, context_poses = scene(b=2, k=2)
    by_generator = model.generate(target, frames, context_poses, INTR, generator=seeded(3))
    noise = torch.randn((2, 3, H, W), generator=seeded(3))
    np.testing.assert_array_equal(model.generate(target, frames, context_poses, INTR, noise=noise), by_generator)
    # Each row drawn from its own generator: each element is that generator's frame alone.
    rows = torch.cat([torch.randn((1, 3, H, W), generator=seeded(s)) for s in (7, 8)])
    fm = sm.FrameModel(model.network, autocast_dtype=None)
    together = fm.generate(target, frames, context_poses, INTR, noise=rows)
    for i, s in enumerate((7, 8)):
        alone = fm.generate(target[i : i + 1], frames[i : i + 1], context_poses[i : i + 1], INTR, generator=seeded(s))
        assert np.abs(alone[0].astype(int) - together[i].astype(int)).max() <= 1
    assert np.abs(together[0].astype(int) - together[1].astype(int)).mean() > 0.5


def _nan_pose(scene_):
    target, frames, context_poses = scene_
    target = target.copy()
    target[1, 0, 3] = np.nan
    return target, frames, context_poses


@pytest.mark.parametrize(
    "change, message",
    [
        (_nan_pose, r"target_poses\[1\] contains NaN"),
        (lambda s: (s[0] * 2, s[1], s[2]), "bottom row"),
        (lambda s: (s[0][0], s[1], s[2]), r"target_poses must have shape \('B', 4, 4\)"),
        (lambda s: (s[0][:0], s[1][:0], s[2][:0]), r"B = 0"),
        (lambda s: (s[0], s[1][:, :0], s[2][:, :0]), "K = 0"),
        (lambda s: (s[0], np.concatenate([s[1]] * 2, 1), np.concatenate([s[2]] * 2, 1)), "exceed the model's max_"),
        (lambda s: (s[0], s[1][:, :2], s[2]), r"context_frames as uint8 must have shape \(2, 3, 'H', 'W', 3\)"),
        (lambda s: (s[0], s[1].astype(np.int32), s[2]), "must be uint8 .* or float"),
        (lambda s: (s[0], np.full(s[1].shape[:2] + (3, H, W), np.nan, np.float32), s[2]), "NaN"),
        (lambda s: (s[0], np.zeros(s[1].shape[:2] + (3, H, W), np.float32) + 200, s[2]), r"lie in \[-1, 1\]"),
        (lambda s: (s[0], s[1][:, :, :16], s[2]), "intrinsics are 32x32 but frames are 32x16"),
        (lambda s: (s[0], s[1], s[2][:1]), r"context_poses must have shape \(2, K, 4, 4\)"),
    ],
    ids=["nan-pose", "non-rigid", "unbatched", "empty-batch", "no-context", "too-many-views", "frame-count",
         "int32-frames", "nan-frames", "float-range", "size-vs-intrinsics", "context-batch"],
)
def test_generate_rejects_bad_inputs(model, change, message):
    """Bad poses, frames and counts raise ValueError with a message naming the problem."""
    target, frames, context_poses = change(scene(b=2, k=3))
    with pytest.raises(ValueError, match=message):
        model.generate(target, frames, context_poses, INTR)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps must be a positive int"),
        (dict(steps=2.5), "steps must be a positive int"),
        (dict(generator=5), "generator must be a torch.Generator"),
        (dict(intrinsics=(32, 32, 60.0)), "intrinsics must be rtfm_env.geometry.Intrinsics"),
        (dict(context_valid=np.zeros((2, 3), bool)), r"batch elements \[0, 1\] have no valid context view"),
        (dict(context_valid=np.ones((2, 2), bool)), r"context_valid must be bool of shape \(2, 3\)"),
        (dict(noise=np.zeros((1, 3, H, W), np.float32)), r"noise must be floats of shape \(2, 3, 32, 32\)"),
        (dict(noise=np.zeros((2, 3, H, W), np.int64)), "noise must be floats"),
        (dict(noise=np.full((2, 3, H, W), np.nan, np.float32)), "noise contains NaN"),
        (dict(noise=np.zeros((2, 3, H, W), np.float32), generator=torch.Generator()), "generator or noise, not both"),
    ],
    ids=["zero-steps", "float-steps", "bad-generator", "tuple-intrinsics", "all-padding", "mask-shape",
         "noise-shape", "noise-dtype", "noise-nan", "noise-and-generator"],
)
def test_generate_rejects_bad_options(model, kwargs, message):
    """Bad steps, generator, intrinsics and masks raise ValueError."""
    target, frames, context_poses = scene(b=2, k=3)
    args = {"intrinsics": INTR, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(target, frames, context_poses, **args)
