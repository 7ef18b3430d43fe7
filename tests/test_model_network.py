"""Tests for rtfm_env.model.network: config, sizes, conversions, rays, the network and its KV cache."""

import math

import numpy as np
import pytest
import torch

from rtfm_env.geometry import Intrinsics, camera_pose, plucker_rays
from rtfm_env.model import network as nw


def randomized(cfg: nw.ModelConfig, seed: int = 0) -> nw.FrameNetwork:
    """A network whose zero-initialised layers are perturbed, so every path affects the output."""
    net = nw.FrameNetwork(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def inputs(cfg: nw.ModelConfig, b: int = 2, k: int = 3, height: int | None = None, width: int | None = None, seed=0):
    """Random frames, poses and rays for a batch of b targets with k context views each."""
    h, w = height or cfg.height, width or cfg.width
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    def pose():
        return camera_pose(rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-math.pi, math.pi))

    target_poses = np.stack([pose() for _ in range(b)])
    context_poses = np.stack([np.stack([pose() for _ in range(k)]) for _ in range(b)])
    target_rays, context_rays = nw.posed_rays(target_poses, context_poses, Intrinsics(w, h))
    return dict(
        x_t=torch.randn(b, 3, h, w, generator=g),
        t=torch.rand(b, generator=g),
        target_rays=target_rays,
        context_frames=torch.rand(b, k, 3, h, w, generator=g) * 2 - 1,
        context_rays=context_rays,
    )


TINY = nw.model_config("T", height=32, width=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size, low, high", [("T", 1e5, 1e6), ("S", 6e6, 8e6), ("M", 20e6, 30e6)])
def test_named_sizes_parameter_counts(size, low, high):
    """Named sizes have the parameter counts they advertise (S ~6-8 M, M ~20-30 M)."""
    n = nw.FrameNetwork(nw.model_config(size)).num_parameters()
    assert low <= n <= high


def test_unknown_size_lists_choices():
    """An unknown size name fails with the valid sizes in the message."""
    with pytest.raises(ValueError, match=r"unknown model size 'XL'.*\['M', 'S', 'T'\]"):
        nw.model_config("XL")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(height=60), "not divisible by patch"),
        (dict(dim=66, heads=4), "not divisible by heads"),
        (dict(flow_start="zeros"), r"unknown ModelConfig.flow_start 'zeros'; valid: \['context', 'noise'\]"),
        (dict(time_sampling="beta"), "unknown ModelConfig.time_sampling"),
        (dict(loss_weighting="snr"), "unknown ModelConfig.loss_weighting"),
        (dict(flow_sigma=-0.1), "flow_sigma must be a non-negative"),
        (dict(moment_scale=float("nan")), "moment_scale must be a positive finite"),
        (dict(depth=0), "depth must be a positive int"),
        (dict(patch=2.5), "patch must be a positive int"),
    ],
)
def test_config_rejects_bad_fields(overrides, message):
    """Invalid config fields raise ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        nw.model_config("T", **overrides)


def test_config_dict_round_trip_and_unknown_field():
    """to_dict/from_dict round-trips; an unknown field is rejected with the valid names."""
    cfg = nw.model_config("S", flow_start="noise", sample_steps=6)
    assert nw.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['dimm'\].*valid fields"):
        nw.ModelConfig.from_dict({**cfg.to_dict(), "dimm": 3})


def test_to_model_and_to_uint8_round_trip():
    """Every uint8 value survives to_model -> to_uint8; to_model spans [-1, 1] in CHW layout."""
    frames = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = nw.to_model(frames)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(nw.to_uint8(x), frames)


def test_to_uint8_clips_and_rejects_nan():
    """Out-of-range values clip to 0/255; NaN raises."""
    out = nw.to_uint8(torch.tensor([-3.0, 0.0, 3.0]).view(3, 1, 1))
    np.testing.assert_array_equal(out.reshape(-1), [0, 128, 255])
    with pytest.raises(ValueError, match="NaN"):
        nw.to_uint8(torch.full((3, 2, 2), float("nan")))


@pytest.mark.parametrize(
    "frames, message",
    [(np.zeros((4, 4, 3), np.float32), "must be uint8"), (np.zeros((4, 4, 4), np.uint8), r"\(\.\.\., H, W, 3\)")],
)
def test_to_model_rejects_bad_frames(frames, message):
    """to_model wants uint8 with 3 channels last."""
    with pytest.raises(ValueError, match=message):
        nw.to_model(frames)


def test_posed_rays_are_in_the_target_frame():
    """Target rays are the identity camera's; a context view at the target pose has the same rays."""
    intr = Intrinsics(24, 16)
    target = np.stack([camera_pose(1.0, 2.0, 0.3), camera_pose(-3.0, 0.5, 2.0)])
    context = np.stack([np.stack([target[0], camera_pose(0.0, 0.0, 0.0)]), np.stack([target[1], target[0]])])
    target_rays, context_rays = nw.posed_rays(target, context, intr)
    assert target_rays.shape == (2, 6, 16, 24) and context_rays.shape == (2, 2, 6, 16, 24)
    own = plucker_rays(np.eye(4), intr)
    torch.testing.assert_close(target_rays[1], own)
    torch.testing.assert_close(context_rays[:, 0], target_rays, atol=1e-6, rtol=0)
    expected = plucker_rays(context[1, 1], intr, reference=target[1])
    torch.testing.assert_close(context_rays[1, 1], expected)


def test_posed_rays_reject_mismatched_batches():
    """Context poses whose batch differs from the targets' raise."""
    with pytest.raises(ValueError, match=r"context_poses must have shape \(B=2, K, 4, 4\)"):
        nw.posed_rays(np.stack([np.eye(4)] * 2), np.stack([np.eye(4)] * 3)[:, None], Intrinsics(8, 8))


def test_patchify_inverse():
    """Patchify then unpatchify is the identity; tokens hold p x p patches in row-major order."""
    x = torch.randn(2, 3, 16, 24)
    tokens = nw.patchify(x, 8)
    assert tokens.shape == (2, 6, 3 * 64)
    torch.testing.assert_close(tokens[0, 4].view(3, 8, 8), x[0, :, 8:16, 8:16])
    torch.testing.assert_close(nw.unpatchify(tokens, 8, 16, 24), x)


@pytest.mark.parametrize("height, width", [(64, 64), (32, 48), (48, 32)])
def test_output_shapes_at_any_patch_multiple(height, width):
    """Cached and plain paths return (B, 3, H, W) at 64x64 and non-square sizes."""
    net = randomized(nw.model_config("T"))
    batch = inputs(net.config, b=2, k=2, height=height, width=width)
    cache = net.encode_context(batch["context_frames"], batch["context_rays"])
    n = (height // 8) * (width // 8)
    assert cache.keys[0].shape == (2, net.config.heads, 2 * n, net.config.head_dim)
    assert len(cache.keys) == len(cache.values) == net.config.depth
    out = net.denoise(batch["x_t"], batch["t"], batch["target_rays"], cache)
    assert out.shape == (2, 3, height, width)
    assert net(**batch).shape == (2, 3, height, width)


def test_initial_prediction_is_zero():
    """adaLN-Zero and the zero output layer make a fresh network predict exactly 0."""
    net = nw.FrameNetwork(TINY)
    out = net(**inputs(TINY))
    assert torch.count_nonzero(out) == 0
    assert all(torch.count_nonzero(b.adaLN_modulation[-1].weight) == 0 for b in net.blocks)


@pytest.mark.parametrize("k", [1, 3])
def test_cached_path_matches_plain_path_fp32(k):
    """encode_context + denoise equals the uncached masked forward in float32."""
    net = randomized(TINY)
    batch = inputs(TINY, b=2, k=k)
    with torch.no_grad():
        plain = net(**batch)
        cache = net.encode_context(batch["context_frames"], batch["context_rays"])
        cached = net.denoise(batch["x_t"], batch["t"], batch["target_rays"], cache)
    assert plain.abs().mean() > 0.1
    torch.testing.assert_close(cached, plain, atol=2e-5, rtol=1e-5)


def test_cached_path_matches_plain_path_bf16():
    """Under bf16 autocast the cached and plain paths agree within bf16 tolerance."""
    net = randomized(TINY)
    batch = inputs(TINY, b=2, k=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = net(**batch).float()
        cache = net.encode_context(batch["context_frames"], batch["context_rays"])
        cached = net.denoise(batch["x_t"], batch["t"], batch["target_rays"], cache).float()
    with torch.no_grad():
        reference = net(**batch)
    assert cache.keys[0].dtype == torch.bfloat16
    torch.testing.assert_close(cached, plain, atol=0.05, rtol=0.02)
    torch.testing.assert_close(cached, reference, atol=0.1, rtol=0.05)


def test_cast_linear_weights_keeps_bf16_outputs_identical():
    """Linear weights stored in bf16 give bit-identical outputs under bf16 autocast."""
    net = randomized(TINY)
    batch = inputs(TINY, b=2, k=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = net(**batch)
        net.cast_linear_weights(torch.bfloat16)
        after = net(**batch)
    assert net.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert net.blocks[0].attn.q_norm.weight.dtype == torch.float32
    assert torch.equal(before, after)


def test_context_cache_does_not_depend_on_target():
    """Changing the noisy target and time leaves every block's context keys/values unchanged."""
    net = randomized(TINY)
    batch = inputs(TINY, b=2, k=2)
    with torch.no_grad():
        out_a, cache_a = net(**batch, return_cache=True)
        changed = dict(batch, x_t=torch.randn_like(batch["x_t"]), t=1.0 - batch["t"])
        out_b, cache_b = net(**changed, return_cache=True)
        direct = net.encode_context(batch["context_frames"], batch["context_rays"])
    assert not torch.allclose(out_a, out_b)
    for layer in range(TINY.depth):
        assert torch.equal(cache_a.keys[layer], cache_b.keys[layer])
        assert torch.equal(cache_a.values[layer], cache_b.values[layer])
        torch.testing.assert_close(direct.keys[layer], cache_a.keys[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(direct.values[layer], cache_a.values[layer], atol=1e-5, rtol=1e-5)


def test_context_changes_the_prediction():
    """The prediction reads the context: other context frames give another output."""
    net = randomized(TINY)
    batch = inputs(TINY, b=1, k=2)
    with torch.no_grad():
        a = net(**batch)
        b = net(**dict(batch, context_frames=-batch["context_frames"]))
    assert (a - b).abs().mean() > 1e-3


@pytest.mark.parametrize("plain", [True, False])
def test_padding_views_are_ignored(plain):
    """Views marked invalid change nothing: padded + mask equals the unpadded batch."""
    net = randomized(TINY)
    batch = inputs(TINY, b=2, k=2)
    junk = inputs(TINY, b=2, k=1, seed=7)
    padded = dict(
        batch,
        context_frames=torch.cat([batch["context_frames"], junk["context_frames"]], dim=1),
        context_rays=torch.cat([batch["context_rays"], junk["context_rays"]], dim=1),
    )
    valid = torch.tensor([[True, True, False], [True, True, False]])
    with torch.no_grad():
        if plain:
            ref, out = net(**batch), net(**padded, context_valid=valid)
        else:
            ref = net.denoise(batch["x_t"], batch["t"], batch["target_rays"],
                              net.encode_context(batch["context_frames"], batch["context_rays"]))
            cache = net.encode_context(padded["context_frames"], padded["context_rays"], valid)
            out = net.denoise(batch["x_t"], batch["t"], batch["target_rays"], cache)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_any_grid_position_embedding():
    """The sin-cos embedding is built for any grid and differs between patches."""
    emb = nw.sincos_pos_embed_2d(64, 3, 5)
    assert emb.shape == (15, 64)
    assert torch.cdist(emb, emb).add(torch.eye(15)).min() > 0.1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: dict(b, context_frames=b["context_frames"][:, :0], context_rays=b["context_rays"][:, :0]), "K = 0"),
        (lambda b: dict(b, context_rays=b["context_rays"][..., :16]), "context_rays must have shape"),
        (lambda b: dict(b, target_rays=b["target_rays"][:1]), "target_rays must have shape"),
        (lambda b: dict(b, x_t=b["x_t"][:, :1]), r"x_t must have shape \(B, 3, H, W\)"),
        (lambda b: dict(b, context_frames=b["context_frames"][:, :, :, :, :20],
                        context_rays=b["context_rays"][..., :20]), "not divisible by patch 8"),
        (lambda b: dict(b, t=torch.zeros(5)), r"t must be a scalar or have shape \(2,\)"),
        (lambda b: dict(b, context_valid=torch.tensor([[False, False], [True, True]])), "at least one valid"),
        (lambda b: dict(b, context_valid=torch.ones(2, 2)), "context_valid must be bool"),
    ],
    ids=["no-views", "ray-size", "target-ray-batch", "x_t-channels", "not-patch-multiple", "t-shape",
         "all-padding", "mask-dtype"],
)
def test_network_rejects_bad_inputs(change, message):
    """Malformed network inputs raise ValueError with a message that names the problem."""
    net = nw.FrameNetwork(TINY)
    with pytest.raises(ValueError, match=message):
        net(**change(inputs(TINY, b=2, k=2)))


def test_too_many_context_views_rejected():
    """K above max_context raises."""
    cfg = nw.model_config("T", height=16, width=16, max_context=2)
    with pytest.raises(ValueError, match="3 context views exceed max_context = 2"):
        nw.FrameNetwork(cfg)(**inputs(cfg, b=1, k=3))


def test_cache_must_match_batch_and_grid():
    """A cache built for another batch size or image size is refused by denoise."""
    net = nw.FrameNetwork(TINY)
    batch = inputs(TINY, b=2, k=1)
    cache = net.encode_context(batch["context_frames"][:1], batch["context_rays"][:1])
    with pytest.raises(ValueError, match="cache was built for batch 1"):
        net.denoise(batch["x_t"], batch["t"], batch["target_rays"], cache)
