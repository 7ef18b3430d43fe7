"""Tests for the version-2 frame model: warp input, depth prediction, residual, context noise (issue 12)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rtfm_env.geometry import Intrinsics, camera_pose, make_pose
from rtfm_env.model import checkpoint as ck
from rtfm_env.model import network as nw
from rtfm_env.model import sampler as sm
from rtfm_env.warp import fill_holes, forward_warp, warp_and_fill

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parent / "data" / "model_v1_reference.npz"
INTR = Intrinsics(32, 32, 60.0)
TINY_V2 = nw.model_config("T", height=32, width=32, max_context=4, **nw.V2)
#: v2 without the warp: the implicit path with context depth in, depth out and context noise.
TINY_V2_IMPLICIT = nw.model_config("T", height=32, width=32, depth_input=True, predict_depth=True, context_noise=0.1)


def randomized(cfg: nw.ModelConfig, seed: int = 0) -> nw.FrameNetwork:
    """A network whose zero-initialised layers are perturbed, so every path affects the output."""
    net = nw.FrameNetwork(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def rotation_y(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def texture(h: int, w: int) -> np.ndarray:
    """uint8 (H, W, 3) whose red encodes the column and green the row: 4 * index + 2."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([4 * cols + 2, 4 * rows + 2, np.full_like(rows, 128)], axis=-1).astype(np.uint8)


def plane_scene(b: int = 2, k: int = 2, distance: float = 3.0, seed: int = 0):
    """Context views of a fronto-parallel textured plane, each at ``distance`` metres, and targets near them."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (b, k, 4, 4, 3)).astype(np.uint8).repeat(8, 2).repeat(8, 3)  # (B, K, 32, 32, 3)
    context_poses = np.stack([np.stack([camera_pose(0.0, 0.1 * j, 0.0) for j in range(k)]) for _ in range(b)])
    target_poses = np.stack([camera_pose(0.3, 0.5 + 0.05 * i, 0.05) for i in range(b)])  # holes at a side
    depths = np.full((b, k, 32, 32), distance, dtype=np.float32)
    return frames, context_poses, target_poses, depths


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(residual=True), "residual needs warp_input=True"),
        (dict(warp_start=True), "warp_start needs warp_input=True"),
        (dict(warp_input=True, warp_start=True, flow_start="noise"), "warp_start needs flow_start='context'"),
        (dict(min_depth=5.0, max_depth=2.0), "min_depth 5.0 must be below max_depth 2.0"),
        (dict(max_depth=math.inf), "max_depth must be a positive finite"),
        (dict(context_noise=-0.1), "context_noise must be a non-negative"),
        (dict(predict_depth=1), "predict_depth must be a bool"),
        (dict(keep_warp=True), "keep_warp needs warp_input=True"),
        (dict(self_rollout=0.5), "self_rollout needs warp_input=True and predict_depth=True"),
        (dict(warp_input=True, predict_depth=True, self_rollout=1.5), "self_rollout must be a share in"),
        (dict(warp_input=True, keep_warp=1), "keep_warp must be a bool"),
    ],
)
def test_v2_config_rejects_inconsistent_fields(overrides, message):
    """v2 fields that cannot work together raise ValueError naming the field."""
    with pytest.raises(ValueError, match=message):
        nw.model_config("T", **overrides)


def test_v1_config_records_no_v2_fields_and_v2_records_all():
    """A v1 config serialises as before (no v2 keys); a v2 config records every field and round-trips."""
    assert not set(nw.V2_FIELDS) & set(nw.ModelConfig().to_dict())
    d = TINY_V2.to_dict()
    assert set(nw.V2_FIELDS) <= set(d)
    assert nw.ModelConfig.from_dict(json.loads(json.dumps(d))) == TINY_V2
    assert nw.ModelConfig.from_dict(nw.ModelConfig().to_dict()) == nw.ModelConfig()


# --------------------------------------------------------------------------------------
# 1. The KV cache
# --------------------------------------------------------------------------------------


def network_inputs(cfg: nw.ModelConfig, b: int = 2, k: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.height, cfg.width

    def pose():
        return camera_pose(rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-math.pi, math.pi))

    target_rays, context_rays = nw.posed_rays(
        np.stack([pose() for _ in range(b)]), np.stack([np.stack([pose() for _ in range(k)]) for _ in range(b)]),
        Intrinsics(w, h),
    )
    depth = torch.rand(b, k, h, w, generator=g) * 10
    depth[:, :, :4] = torch.nan  # some unknown depth
    out = dict(
        x_t=torch.randn(b, 3, h, w, generator=g),
        t=torch.rand(b, generator=g),
        target_rays=target_rays,
        context_frames=torch.rand(b, k, 3, h, w, generator=g) * 2 - 1,
        context_rays=context_rays,
        context_valid=torch.tensor([[True] * k, [True] * (k - 1) + [False]]),
    )
    extra = {}
    if cfg.warp_input:
        extra["warp"] = torch.cat([torch.rand(b, 3, h, w, generator=g) * 2 - 1,
                                   (torch.rand(b, 1, h, w, generator=g) > 0.3).float(),
                                   torch.rand(b, 1, h, w, generator=g) * 2 - 1], dim=1)
    if cfg.depth_input:
        extra["context_depth"] = nw.depth_features(depth, cfg)
    if cfg.context_noise > 0:
        extra["noise_level"] = torch.rand(b, k, generator=g) * cfg.context_noise
    return out, extra


@pytest.mark.parametrize("cfg", [TINY_V2, TINY_V2_IMPLICIT], ids=["warp", "no-warp"])
def test_cached_and_uncached_paths_agree_for_v2(cfg):
    """encode_context + denoise equals the one-sequence forward, RGB and depth, with and without warp input."""
    net = randomized(cfg)
    base, extra = network_inputs(cfg)
    with torch.no_grad():
        full, cache_f = net(**base, return_cache=True, **extra)
        cache = net.encode_context(base["context_frames"], base["context_rays"], base["context_valid"], **extra)
        cached = net.denoise(base["x_t"], base["t"], base["target_rays"], cache)
        again = net.denoise(base["x_t"], base["t"], base["target_rays"], cache_f)
    assert full.shape == (2, 4, cfg.height, cfg.width)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-4)
    # every v2 input reaches the output
    for name in extra:
        changed = dict(extra, **{name: extra[name] + 0.5})
        with torch.no_grad():
            assert not torch.allclose(net(**base, **changed), full, atol=1e-4), name


def test_v2_inputs_are_required_and_v1_refuses_them():
    """A v2 network names the input it lacks; a v1 network refuses v2 inputs instead of ignoring them."""
    base, extra = network_inputs(TINY_V2)
    v2 = randomized(TINY_V2)
    with pytest.raises(ValueError, match="warp must have shape"):
        v2(**base, **{k: v for k, v in extra.items() if k != "warp"})
    with pytest.raises(ValueError, match="context_depth must have shape"):
        v2(**base, **{k: v for k, v in extra.items() if k != "context_depth"})
    v1 = randomized(nw.model_config("T", height=32, width=32))
    with pytest.raises(ValueError, match="warp given to a network without warp_input"):
        v1(**base, warp=extra["warp"])


# --------------------------------------------------------------------------------------
# 2. Depth units and frame; the residual starts at the reprojection
# --------------------------------------------------------------------------------------


def test_depth_parameterisation_round_trips_and_clamps():
    """Normalised log-depth maps [min_depth, max_depth] to [-1, 1] and back; beyond is clamped, inf is far."""
    cfg = TINY_V2
    d = torch.tensor([cfg.min_depth, 0.5, 3.0, 42.0, cfg.max_depth])
    n = nw.depth_to_model(d, cfg)
    assert n[0] == pytest.approx(-1.0) and n[-1] == pytest.approx(1.0)
    torch.testing.assert_close(nw.depth_from_model(n, cfg), d, rtol=1e-5, atol=0)
    far = nw.depth_to_model(torch.tensor([math.inf, 1e9, 1e-9]), cfg)
    assert far.tolist() == pytest.approx([1.0, 1.0, -1.0])


@pytest.mark.parametrize("forward, sideways, yaw", [(1.0, 0.0, 0.0), (0.5, 0.4, 0.0), (0.5, 0.2, 8.0)])
def test_residual_model_at_initialisation_returns_the_warp_and_its_depth(forward, sideways, yaw):
    """Untrained residual v2 = reprojection: RGB is the warp-and-fill frame, depth the plane's in the target camera."""
    d = 4.0
    h = w = 32
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (1, 1, 8, 8, 3)).astype(np.uint8).repeat(4, 2).repeat(4, 3)
    source = np.eye(4)[None, None]  # at the origin, looking down -z: the plane z = -d is at depth d everywhere
    depths = np.full((1, 1, h, w), d, dtype=np.float32)
    target = make_pose(rotation_y(yaw), [sideways, 0.0, -forward])[None]
    model = sm.FrameModel(nw.FrameNetwork(TINY_V2), autocast_dtype=None)
    frames_out, depth_out = model.generate(target, frames, source, INTR, steps=3, context_depths=depths,
                                           generator=torch.Generator().manual_seed(0), return_depth=True)

    # Depth: every covered target pixel sees the plane z = -d; its depth along the target's axis is
    # (d - forward) / cos(angle between the target's axis and the plane normal) at the pixel's ray.
    ys, xs = np.mgrid[0:h, 0:w]
    f = INTR.focal
    ray = np.stack([(xs + 0.5 - w / 2) / f, -(ys + 0.5 - h / 2) / f, -np.ones((h, w))], axis=-1)  # camera frame
    world_z = ray @ rotation_y(yaw)[2]  # z component of the world ray, per unit target depth
    expected = (-d + forward) / world_z  # target depth where the ray meets z = -d
    warp = sm.target_warp(nw.to_model(frames), torch.from_numpy(depths), source, target, INTR, TINY_V2)
    covered = warp[0, 3].numpy() > 0.5
    assert covered.mean() > 0.5
    np.testing.assert_allclose(depth_out[0][covered], expected[covered], rtol=0.02)
    if yaw == 0:
        np.testing.assert_allclose(depth_out[0], d - forward, rtol=1e-5)  # holes filled from the same plane

    # RGB: exactly the warp-and-fill of the reprojection camera (forward_warp, fused, fill_holes)
    res = forward_warp(frames, depths, source, target, INTR, depth_tolerance=0.1, per_view=False)
    reference = fill_holes(res.fused_rgb, res.fused_mask, depth=res.fused_depth)
    reference = (reference.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.abs(frames_out.astype(int) - reference.astype(int)).max() <= 1
    np.testing.assert_array_equal(covered, res.fused_mask[0].numpy())


# --------------------------------------------------------------------------------------
# 3. The warp against analytic plane geometry
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("translation, yaw", [((0.3, 0.1, -0.5), 10.0), ((-0.4, 0.0, 0.3), -15.0)])
def test_warp_of_a_textured_plane_matches_the_analytic_projection(translation, yaw, backend):
    """A plane at known depth, warped into a moved and turned camera, lands where the homography says."""
    h = w = 48
    d = 5.0
    intr = Intrinsics(w, h, 60.0)
    f = intr.focal
    frames = texture(h, w)[None, None]  # (1, 1, H, W, 3)
    depths = np.full((1, 1, h, w), d, dtype=np.float32)
    source = np.eye(4)[None, None]
    rot = rotation_y(yaw)
    target = make_pose(rot, list(translation))[None]
    out = warp_and_fill(frames, depths, source, target, intr, backend=backend)

    # Analytic: the ray through each target pixel centre meets the plane z = -d at p; p projects
    # into the source camera at (u_s, v_s); its depth along the target's axis is the ray's scale.
    ys, xs = np.mgrid[0:h, 0:w]
    ray_cam = np.stack([(xs + 0.5 - w / 2) / f, -(ys + 0.5 - h / 2) / f, -np.ones((h, w))], axis=-1)
    ray = ray_cam @ rot.T  # world directions, per unit target depth
    scale = (-d - translation[2]) / ray[..., 2]  # target depth of the plane point
    p = np.asarray(translation) + scale[..., None] * ray
    u_s = f * p[..., 0] / -p[..., 2] + w / 2
    v_s = h / 2 - f * p[..., 1] / -p[..., 2]
    inside = (u_s > 1.5) & (u_s < w - 1.5) & (v_s > 1.5) & (v_s < h - 1.5) & (scale > 0)
    outside = (u_s < -1.5) | (u_s > w + 1.5) | (v_s < -1.5) | (v_s > h + 1.5)
    mask = out.mask[0].numpy()
    assert inside.sum() > 0.4 * h * w and outside.sum() > 0.05 * h * w  # both cases are exercised
    assert mask[inside].all()
    assert not mask[outside].any()

    rgb = (out.rgb[0].numpy() * 255).round()
    col, row = (rgb[..., 0] - 2) / 4, (rgb[..., 1] - 2) / 4  # the source pixel each target pixel shows
    assert np.abs(col[inside] - (u_s[inside] - 0.5)).max() <= 1.0
    assert np.abs(row[inside] - (v_s[inside] - 0.5)).max() <= 1.0
    assert np.abs(col[inside] - (u_s[inside] - 0.5)).mean() < 0.5
    np.testing.assert_allclose(out.depth[0].numpy()[inside], scale[inside], rtol=0.02)

    # The network's input carries the same: RGB in [-1, 1], the mask, normalised log-depth
    warp = sm.target_warp(nw.to_model(frames), torch.from_numpy(depths), source, target, intr, TINY_V2)
    np.testing.assert_array_equal(warp[0, 3].numpy() > 0.5, mask)
    np.testing.assert_allclose(((warp[0, :3].permute(1, 2, 0).numpy() + 1) * 127.5).round(), rgb, atol=1)
    np.testing.assert_allclose(nw.depth_from_model(warp[0, 4], TINY_V2).numpy()[inside], scale[inside], rtol=0.02)


def test_warp_of_nothing_falls_back_to_the_context_mean():
    """A target that no view covers (turned away) gets the views' mean colour and geometric-mean depth."""
    frames = np.zeros((1, 2, 32, 32, 3), dtype=np.uint8)
    frames[0, 0] = 200
    frames[0, 1, ..., 0] = 100
    depths = np.stack([np.full((32, 32), 2.0), np.full((32, 32), 8.0)]).astype(np.float32)[None]
    source = np.stack([np.eye(4), np.eye(4)])[None]
    target = make_pose(rotation_y(180.0), [0.0, 0.0, 0.0])[None]  # looking away from the plane
    out = warp_and_fill(frames, depths, source, target, INTR)
    assert not out.mask.any()
    np.testing.assert_allclose(out.rgb[0, 5, 5].numpy(), [150 / 255, 100 / 255, 100 / 255], atol=1e-6)
    np.testing.assert_allclose(out.depth.numpy(), 4.0, rtol=1e-5)


def test_flow_start_stays_near_the_warp_where_covered_and_is_noise_in_holes():
    """warp_start: x0 = warp + flow_sigma noise where covered, warp fill + hole_sigma noise in holes."""
    cfg = dataclasses.replace(TINY_V2, flow_sigma=0.1, hole_sigma=1.0)
    warp = torch.zeros(1, 5, 32, 32)
    warp[:, :3] = 0.3
    warp[:, 3, :, :16] = 1.0  # left half covered
    eps = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x0, mean = sm.flow_start(torch.zeros(1, 1, 3, 32, 32), None, cfg, noise=eps, warp=warp)
    torch.testing.assert_close(mean, warp[:, :3])
    torch.testing.assert_close(x0[..., :16], 0.3 + 0.1 * eps[..., :16])
    torch.testing.assert_close(x0[..., 16:], 0.3 + 1.0 * eps[..., 16:])


# --------------------------------------------------------------------------------------
# 4. v1 is unchanged
# --------------------------------------------------------------------------------------


def v1_reference_inputs():
    """The inputs the v1 reference frames were generated from (by the code before v2)."""
    rng = np.random.default_rng(7)
    b, k = 2, 3
    ctx = rng.integers(0, 256, size=(b, k, 8, 8, 3)).astype(np.uint8).repeat(8, 2).repeat(8, 3)
    tp = np.stack([camera_pose(0.3 * i, 0.1, 0.2 * i) for i in range(b)])
    cp = np.stack([np.stack([camera_pose(0.3 * i + 0.2 * j, -0.1 * j, 0.2 * i - 0.3 * j) for j in range(k)])
                   for i in range(b)])
    return tp, ctx, cp, Intrinsics(64, 64, 60.0)


def test_v1_checkpoint_loads_strictly_and_generates_as_before():
    """The shipped v1 checkpoint builds the v1 module structure and gives the frames the v1 code gave."""
    from rtfm_env.cameras import V1_CHECKPOINT

    loaded = ck.load_checkpoint(V1_CHECKPOINT)
    assert not any(getattr(loaded.config, name) for name in ("warp_input", "depth_input", "predict_depth",
                                                             "residual", "warp_start"))
    fresh = nw.FrameNetwork(loaded.config)
    assert set(fresh.state_dict()) == set(loaded.model.state_dict())
    fresh.load_state_dict(loaded.model.state_dict(), strict=True)
    assert not any(name.startswith(("warp_embed", "depth_embed", "noise_embed", "depth_layer"))
                   for name in fresh.state_dict())

    model = sm.FrameModel.from_pretrained(V1_CHECKPOINT, autocast_dtype=None)
    assert not model.needs_depth and not model.predicts_depth
    tp, ctx, cp, intr = v1_reference_inputs()
    frames = model.generate(tp, ctx, cp, intr, steps=2, generator=torch.Generator().manual_seed(0))
    reference = np.load(REFERENCE)["frames"]
    diff = np.abs(frames.astype(int) - reference.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # v1 ignores depth it does not read, and has none to return
    depths = np.full((2, 3, 64, 64), 3.0, dtype=np.float32)
    again = model.generate(tp, ctx, cp, intr, steps=2, generator=torch.Generator().manual_seed(0),
                           context_depths=depths)
    np.testing.assert_array_equal(again, frames)
    with pytest.raises(ValueError, match="return_depth=True needs a model that predicts depth"):
        model.generate(tp, ctx, cp, intr, return_depth=True)


def test_v2_checkpoint_round_trips_and_refuses_inconsistent_records(tmp_path):
    """A v2 checkpoint saves and loads its v2 fields; unknown fields or v2 fields switched on a v1 record fail."""
    net = randomized(TINY_V2)
    path = ck.save_checkpoint(tmp_path / "v2", net)
    loaded = ck.load_checkpoint(path)
    assert loaded.config == TINY_V2
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)

    def edited(source: Path, name: str, **changes) -> Path:
        copy = tmp_path / name
        copy.mkdir()
        for f in source.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        record = json.loads((copy / "config.json").read_text())
        record["model_config"].update(changes)
        (copy / "config.json").write_text(json.dumps(record))
        return copy

    with pytest.raises(ck.CheckpointError, match="unknown ModelConfig fields \\['depth_head'\\]"):
        ck.load_checkpoint(edited(path, "unknown", depth_head=True))
    with pytest.raises(ck.CheckpointError, match="hole_sigma"):  # same shapes, another meaning
        ck.load_checkpoint(edited(path, "hole", hole_sigma=0.5))
    with pytest.raises(ck.CheckpointError, match="is not a JSON bool"):
        ck.load_checkpoint(edited(path, "coerced", residual=1))
    v1 = ck.save_checkpoint(tmp_path / "v1", randomized(nw.model_config("T", height=32, width=32)))
    assert "warp_input" not in json.loads((v1 / "config.json").read_text())["model_config"]
    with pytest.raises(ck.CheckpointError, match="missing tensors"):  # the weights have no warp embedding
        ck.load_checkpoint(edited(v1, "switched", warp_input=True))
    with pytest.raises(ck.CheckpointError, match="max_depth"):  # no tensor changes, but the trained value differs
        ck.load_checkpoint(edited(v1, "far", max_depth=50.0))


def test_generate_needs_context_depths_for_v2_and_returns_depth():
    """A v2 FrameModel asks for context depths by name and returns (frames, depths) on request."""
    frames, context_poses, target_poses, depths = plane_scene()
    model = sm.FrameModel(randomized(TINY_V2), autocast_dtype=None)
    with pytest.raises(ValueError, match="pass context_depths"):
        model.generate(target_poses, frames, context_poses, INTR)
    with pytest.raises(ValueError, match="negative"):
        model.generate(target_poses, frames, context_poses, INTR, context_depths=-depths)
    only = model.generate(target_poses, frames, context_poses, INTR, context_depths=depths,
                          generator=torch.Generator().manual_seed(0))
    both, depth = model.generate(target_poses, frames, context_poses, INTR, context_depths=depths,
                                 generator=torch.Generator().manual_seed(0), return_depth=True)
    np.testing.assert_array_equal(only, both)
    assert depth.shape == (2, 32, 32) and depth.dtype == np.float32
    assert (depth >= TINY_V2.min_depth * (1 - 1e-6)).all() and (depth <= TINY_V2.max_depth * (1 + 1e-6)).all()
    # frames without depth (NaN) and a padding view still generate
    no_depth = depths.copy()
    no_depth[1] = np.nan
    valid = np.array([[True, False], [True, True]])
    out = model.generate(target_poses, frames, context_poses, INTR, context_depths=no_depth, context_valid=valid,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 32, 32, 3)


def test_keep_warp_copies_covered_pixels_and_samples_only_the_holes():
    """keep_warp: covered pixels (and their depth) are the warp's exactly; holes are the network's sample."""
    frames, context_poses, target_poses, depths = plane_scene()
    net = randomized(TINY_V2)
    plain = sm.FrameModel(net, autocast_dtype=None)
    kept_cfg = dataclasses.replace(TINY_V2, keep_warp=True)
    net_kept = nw.FrameNetwork(kept_cfg)
    net_kept.load_state_dict(net.state_dict())
    kept = sm.FrameModel(net_kept.eval(), autocast_dtype=None)
    args = (target_poses, frames, context_poses, INTR)
    a, da = plain.generate(*args, context_depths=depths, generator=torch.Generator().manual_seed(3), return_depth=True)
    b, db = kept.generate(*args, context_depths=depths, generator=torch.Generator().manual_seed(3), return_depth=True)
    context = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    warp = sm.target_warp(context, torch.from_numpy(depths), context_poses, target_poses, INTR, TINY_V2)
    covered = warp[:, 3].numpy() > 0.5  # (B, H, W)
    assert covered.any() and (~covered).any()  # the targets see past the plane's edge
    expected = nw.to_uint8(warp[:, :3])  # (B, H, W, 3)
    np.testing.assert_array_equal(b[covered], expected[covered])
    np.testing.assert_array_equal(b[~covered], a[~covered])  # holes: the same sample as without keep_warp
    assert np.abs(a[covered].astype(int) - b[covered].astype(int)).max() > 0  # the randomized net does change them
    warped_depth = nw.depth_from_model(warp[:, 4], TINY_V2).numpy()  # (B, H, W) metres
    np.testing.assert_allclose(db[covered], warped_depth[covered], rtol=1e-5)  # the plane's, where it is seen
    assert 2.0 < db[covered].min() and db[covered].max() < 3.5
    np.testing.assert_allclose(db[~covered], da[~covered], rtol=1e-6)


def test_keep_warp_runs_the_network_only_on_targets_with_a_hole(monkeypatch):
    """A fully covered target is the warp without a network call; the others get the frames they get alone."""
    frames, context_poses, target_poses, depths = plane_scene()
    target_poses = target_poses.copy()
    target_poses[0] = context_poses[0, 0]  # sees exactly what context view 0 saw: no hole
    cfg = dataclasses.replace(TINY_V2, keep_warp=True)
    net = nw.FrameNetwork(cfg)
    net.load_state_dict(randomized(TINY_V2).state_dict())
    model = sm.FrameModel(net.eval(), autocast_dtype=None)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    calls = []
    real = model._encode_context

    def counted(context, *args, **kwargs):
        calls.append(len(context))
        return real(context, *args, **kwargs)

    monkeypatch.setattr(model, "_encode_context", counted)
    both, depth = model.generate(target_poses, frames, context_poses, INTR, context_depths=depths, noise=noise,
                                 return_depth=True)
    assert calls == [1]  # only the target with a hole went through the network
    alone, depth_alone = model.generate(target_poses[1:], frames[1:], context_poses[1:], INTR,
                                        context_depths=depths[1:], noise=noise[1:], return_depth=True)
    np.testing.assert_array_equal(both[1:], alone)
    np.testing.assert_allclose(depth[1:], depth_alone, rtol=1e-6)
    context = torch.from_numpy(frames[:1]).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    warp = sm.target_warp(context, torch.from_numpy(depths[:1]), context_poses[:1], target_poses[:1], INTR, cfg)
    assert bool((warp[:, 3] > 0.5).all())
    np.testing.assert_array_equal(both[:1], nw.to_uint8(warp[:, :3]))
    calls.clear()
    only_covered = model.generate(target_poses[:1], frames[:1], context_poses[:1], INTR, context_depths=depths[:1],
                                  generator=torch.Generator().manual_seed(0))
    assert calls == [] and np.array_equal(only_covered, both[:1])  # no network call at all
    # a seeded generator gives the same frames as its noise drawn up front
    g_frames = model.generate(target_poses, frames, context_poses, INTR, context_depths=depths,
                              generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(g_frames, both)


def test_keep_warp_is_a_sampler_setting_a_checkpoint_may_change(tmp_path):
    """A config.json may switch keep_warp on an exported checkpoint; the weights' record still checks the rest."""
    cfg = TINY_V2
    ck.save_checkpoint(tmp_path / "m", randomized(cfg), cfg, {})
    path = tmp_path / "m" / "config.json"
    record = json.loads(path.read_text())
    record["model_config"]["keep_warp"] = True
    path.write_text(json.dumps(record))
    assert ck.load_checkpoint(tmp_path / "m").config.keep_warp is True
    record["model_config"]["residual"] = False
    path.write_text(json.dumps(record))
    with pytest.raises(ck.CheckpointError, match="residual"):
        ck.load_checkpoint(tmp_path / "m")


# --------------------------------------------------------------------------------------
# 5. The v2 training loss
# --------------------------------------------------------------------------------------


def v2_batch(b: int = 2, k: int = 2) -> dict:
    frames, context_poses, target_poses, depths = plane_scene(b, k)
    target = np.roll(frames[:, 0], 3, axis=2)  # (B, H, W, 3)
    target_depth = np.full((b, 32, 32), 2.7, dtype=np.float32)
    target_depth[:, :2] = np.inf  # nothing hit: supervised as max_depth
    target_depth[:, 2:4] = np.nan  # unknown: not supervised
    return dict(
        target_frame=torch.from_numpy(target),
        target_pose=torch.from_numpy(target_poses),
        context_frames=torch.from_numpy(frames),
        context_poses=torch.from_numpy(context_poses),
        intrinsics=torch.tensor([[32, 32, 60.0]] * b, dtype=torch.float64),
        context_depth=torch.from_numpy(depths),
        target_depth=torch.from_numpy(target_depth),
        has_depth=torch.tensor([True] * b),
        env_id=["MiniWorld-Maze-v0"] * b,
    )


def test_v2_training_loss_backpropagates_and_overfits_a_batch():
    """The v2 loss is finite, reaches the depth head, the RGB (residual) head and the warp embedding, and falls."""
    torch.manual_seed(0)
    net = nw.FrameNetwork(TINY_V2)
    batch = v2_batch()
    loss, stats = sm.training_loss(net, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert {"depth_l1", "baseline_depth_l1", "coverage"} <= set(stats)
    assert 0.0 < float(stats["coverage"]) < 1.0
    loss.backward()
    # The output layers start at zero, so at first only they get a gradient (DiT's adaLN-Zero scheme)
    for name in ("depth_layer.linear.weight", "final_layer.linear.weight"):
        grad = net.get_parameter(name).grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    inputs = ("warp_embed.weight", "depth_embed.weight", "noise_embed.mlp.0.weight")
    before = {name: net.get_parameter(name).detach().clone() for name in inputs}

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, stats = sm.training_loss(net, batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    for name in inputs:  # once the heads move, the gradient reaches every v2 input's embedding
        assert not torch.equal(net.get_parameter(name), before[name]), name


def test_self_rollout_replaces_view_0_by_the_networks_own_generation():
    """self_rollout: view 0 of the chosen samples becomes what the camera would generate there from the rest."""
    cfg = dataclasses.replace(TINY_V2, self_rollout=1.0)
    net = nw.FrameNetwork(cfg)
    net.load_state_dict(randomized(TINY_V2).state_dict())
    net.train()
    batch = v2_batch(b=3, k=3)
    batch["context_poses"][:, 0] = torch.from_numpy(camera_pose(0.2, 0.6, 0.1))  # view 0 sees past the plane
    batch["has_depth"] = torch.tensor([True, False, True])
    context = sm._model_frames(batch["context_frames"], "context_frames", (3, 3))
    depth = batch["context_depth"].clone()
    depth[1] = torch.nan  # what training_loss makes of a sample without depth
    poses = batch["context_poses"].numpy()
    new, new_depth = sm._self_rollout(net, context, depth, poses, INTR, None, batch["has_depth"],
                                      torch.Generator().manual_seed(7))
    assert net.training  # restored
    assert torch.equal(new[:, 1:], context[:, 1:]) and torch.equal(new[1], context[1])  # only view 0 of 0 and 2
    assert torch.isnan(new_depth[1]).all() and not torch.equal(new[0, 0], context[0, 0])
    # the same as the camera's generation: FrameModel with keep_warp, one step, the same noise
    g = torch.Generator().manual_seed(7)
    torch.rand(3, generator=g)
    eps = torch.randn(3, 3, 32, 32, generator=g)
    keep_net = nw.FrameNetwork(dataclasses.replace(TINY_V2, keep_warp=True))
    keep_net.load_state_dict(net.state_dict())
    model = sm.FrameModel(keep_net.eval(), autocast_dtype=None)
    rows = [0, 2]
    frames, depth_gen = model.generate(poses[rows, 0], batch["context_frames"].numpy()[rows, 1:], poses[rows, 1:], INTR,
                                       steps=1, noise=eps[rows], context_depths=depth.numpy()[rows, 1:],
                                       return_depth=True)
    np.testing.assert_array_equal(nw.to_uint8(new[rows, 0]), frames)
    np.testing.assert_allclose(new_depth[rows, 0].numpy(), depth_gen, rtol=1e-5)
    assert np.isfinite(depth_gen).all()


def test_training_loss_uses_self_rollout_only_when_configured(monkeypatch):
    """training_loss runs the rollout for self_rollout > 0 with K >= 2, and its loss still backpropagates."""
    seen = []
    real = sm._self_rollout
    monkeypatch.setattr(sm, "_self_rollout", lambda *a, **k: seen.append(a[1].shape) or real(*a, **k))
    cfg = dataclasses.replace(TINY_V2, self_rollout=0.5)
    net = nw.FrameNetwork(cfg)
    net.load_state_dict(randomized(TINY_V2).state_dict())
    loss, _ = sm.training_loss(net.train(), v2_batch(b=4, k=2), torch.Generator().manual_seed(0))
    loss.backward()
    assert seen == [torch.Size([4, 2, 3, 32, 32])]
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    sm.training_loss(nw.FrameNetwork(TINY_V2), v2_batch(b=2, k=2), torch.Generator().manual_seed(0))
    sm.training_loss(net, v2_batch(b=2, k=1), torch.Generator().manual_seed(0))
    assert len(seen) == 1  # neither without self_rollout nor with one view


def test_v2_training_loss_ignores_depth_it_must_not_use():
    """Samples flagged has_depth False give no depth loss and an empty warp; a v2 batch needs context_depth."""
    net = nw.FrameNetwork(TINY_V2)
    batch = v2_batch()
    batch["has_depth"] = torch.tensor([False, False])
    _, stats = sm.training_loss(net, batch, torch.Generator().manual_seed(0))
    assert float(stats["depth_l1"]) == 0.0 and float(stats["coverage"]) == 0.0
    del batch["context_depth"]
    with pytest.raises(KeyError, match="context_depth"):
        sm.training_loss(net, batch)


# --------------------------------------------------------------------------------------
# 6. Depth is never NaN or infinite
# --------------------------------------------------------------------------------------


def test_predicted_depth_is_finite_and_positive_for_any_network_output():
    """depth_from_model maps every finite or infinite output into [min_depth, max_depth]."""
    raw = torch.tensor([-math.inf, -1e30, -3.0, 0.0, 0.7, 1e30, math.inf])
    depth = nw.depth_from_model(raw, TINY_V2)
    assert torch.isfinite(depth).all()
    assert (depth >= TINY_V2.min_depth * (1 - 1e-6)).all() and (depth <= TINY_V2.max_depth * (1 + 1e-6)).all()
    nw.check_depth(depth)  # passes
    with pytest.raises(FloatingPointError, match="1 NaN, infinite or non-positive values"):
        nw.check_depth(nw.depth_from_model(torch.tensor([[0.0, math.nan]]), TINY_V2))


def test_generate_raises_on_nan_depth_instead_of_returning_it():
    """A network with NaN in its depth head makes generate raise a clear error, not return NaN depth."""
    frames, context_poses, target_poses, depths = plane_scene()
    net = randomized(TINY_V2)
    with torch.no_grad():
        net.depth_layer.linear.bias[0] = math.nan
    model = sm.FrameModel(net, autocast_dtype=None)
    model.generate(target_poses, frames, context_poses, INTR, context_depths=depths)  # frames alone are fine
    with pytest.raises(FloatingPointError, match="predicted depth has .* NaN"):
        model.generate(target_poses, frames, context_poses, INTR, context_depths=depths, return_depth=True)


def test_context_attend_feeds_every_view_to_the_warp_and_only_attended_ones_to_the_network(monkeypatch):
    """context_attend: the warp fuses all K views, the network encodes the attended columns only."""
    frames, context_poses, target_poses, depths = plane_scene()  # K = 2
    model = sm.FrameModel(randomized(TINY_V2), autocast_dtype=None)
    args = (target_poses, frames, context_poses, INTR)
    encoded, warped = [], []
    real_encode, real_warp = model._encode_context, sm.target_warp

    def encode(context, rays, valid, **kwargs):
        encoded.append((tuple(context.shape), None if valid is None else valid.tolist()))
        return real_encode(context, rays, valid, **kwargs)

    def warp(context, *a, **k):
        warped.append(context.shape[1])
        return real_warp(context, *a, **k)

    monkeypatch.setattr(model, "_encode_context", encode)
    monkeypatch.setattr(sm, "target_warp", warp)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = model.generate(*args, context_depths=depths, noise=noise)
    everything = model.generate(*args, context_depths=depths, noise=noise, context_attend=np.ones((2, 2), bool))
    np.testing.assert_array_equal(full, everything)  # attending every view is the default
    first = model.generate(*args, context_depths=depths, noise=noise, context_attend=np.array([[1, 0], [1, 0]], bool))
    assert warped == [2, 2, 2]  # the warp always fuses both views
    assert encoded[-1] == ((2, 1, 3, 32, 32), None)  # the network encodes view 0 only
    assert not np.array_equal(first, full)
    mixed = model.generate(*args, context_depths=depths, noise=noise, context_attend=np.array([[1, 0], [1, 1]], bool))
    assert encoded[-1] == ((2, 2, 3, 32, 32), [[True, False], [True, True]])
    np.testing.assert_array_equal(mixed[0], first[0])  # a row attending view 0 alone is the same either way
    with pytest.raises(ValueError, match="context_attend must be bool"):
        model.generate(*args, context_depths=depths, context_attend=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="no valid context view"):
        model.generate(*args, context_depths=depths, context_attend=np.array([[0, 0], [1, 1]], bool))
    v1 = sm.FrameModel(randomized(nw.model_config("T", height=32, width=32, max_context=4)), autocast_dtype=None)
    with pytest.raises(ValueError, match="reads no warp"):
        v1.generate(target_poses, frames, context_poses, INTR, context_attend=np.array([[1, 0], [1, 0]], bool))
