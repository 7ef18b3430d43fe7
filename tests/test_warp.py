"""Tests of rtfm_env.warp: forward warping of posed RGB-D frames, fusion and hole filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rtfm_env.geometry import Intrinsics, camera_pose, plucker_rays
from rtfm_env.warp import RESOLUTION_TOLERANCE, fill_holes, forward_warp, unproject

INTR = Intrinsics(64, 64, 90.0)  # focal = 32 pixels exactly
SPLATS = ("nearest", "bilinear")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def translate(pose: np.ndarray, offset_cam: tuple[float, float, float]) -> np.ndarray:
    """``pose`` moved by ``offset_cam`` expressed in its own camera frame."""
    out = pose.copy()
    out[:3, 3] += pose[:3, :3] @ np.asarray(offset_cam, dtype=np.float64)
    return out


def random_frame(rng: np.random.Generator, h: int = 64, w: int = 64) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def warp1(frame, depth, src_pose, tgt_pose, intr=INTR, **kw):
    """Warp one frame (B = K = 1)."""
    return forward_warp(
        torch.as_tensor(frame)[None, None],
        torch.as_tensor(depth)[None, None],
        torch.as_tensor(src_pose)[None, None],
        torch.as_tensor(tgt_pose)[None],
        intr,
        **kw,
    )


SRC = camera_pose(1.3, -0.7, 0.4, cam_height=1.5)  # a non-trivial world pose


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def test_unproject_matches_plucker_directions_and_depth():
    rng = np.random.default_rng(0)
    intr = Intrinsics(12, 8, 70.0)
    depth = rng.uniform(0.5, 5.0, (2, 8, 12)).astype(np.float32)
    poses = np.stack([SRC, camera_pose(-2.0, 3.0, -1.0, 1.2, 0.3)])
    pts = unproject(depth, poses, intr).double()  # (2, H, W, 3)
    rays = plucker_rays(poses, intr, dtype=torch.float64)[:, :3].permute(0, 2, 3, 1)  # (2, H, W, 3) unit
    rel = pts - torch.as_tensor(poses[:, None, None, :3, 3])
    cos = (rel / rel.norm(dim=-1, keepdim=True) * rays).sum(-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    optical = -torch.as_tensor(poses[:, None, None, :3, 2])  # the camera looks down -z
    assert torch.allclose((rel * optical).sum(-1), torch.as_tensor(depth, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("splat", SPLATS)
def test_identity_warp_reproduces_frame(splat):
    rng = np.random.default_rng(1)
    frame = random_frame(rng)
    depth = rng.uniform(0.5, 8.0, (64, 64)).astype(np.float32)  # every pixel its own surface
    depth[5, 7], depth[20, 30], depth[40, 2] = np.inf, np.nan, 0.0
    res = warp1(frame, depth, SRC, SRC, splat=splat)
    finite = np.isfinite(depth) & (depth > 0)
    assert np.array_equal(res.mask[0, 0].numpy(), finite)
    assert np.array_equal(res.fused_mask[0].numpy(), finite)
    got = (res.rgb[0, 0].numpy() * 255.0).round().astype(np.uint8)
    assert np.array_equal(got[finite], frame[finite])
    assert np.allclose(res.depth[0, 0].numpy()[finite], depth[finite], rtol=1e-5)
    assert np.all(np.isinf(res.depth[0, 0].numpy()[~finite]))
    assert np.all(res.rgb[0, 0].numpy()[~finite] == 0.0)
    assert res.rgb.dtype == torch.float32 and res.fused_rgb.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("splat", SPLATS)
def test_sideways_translation_shifts_plane_analytically(splat):
    rng = np.random.default_rng(2)
    frame = random_frame(rng)
    d, t = 2.0, 0.25  # shift = f t / d = 32 * 0.25 / 2 = 4 pixels
    depth = np.full((64, 64), d, dtype=np.float32)
    res = warp1(frame, depth, SRC, translate(SRC, (t, 0.0, 0.0)), splat=splat)
    rgb = (res.fused_rgb[0].numpy() * 255.0).round().astype(np.uint8)
    mask = res.fused_mask[0].numpy()
    assert np.array_equal(rgb[:, :60], frame[:, 4:])  # the camera moved right, the image moves left
    assert mask[:, :60].all() and not mask[:, 60:].any()  # the uncovered strip is masked out
    assert np.allclose(res.fused_depth[0].numpy()[:, :60], d, rtol=1e-5)
    assert np.isinf(res.fused_depth[0].numpy()[:, 60:]).all()
    # moving up by the same amount shifts the image down
    res = warp1(frame, depth, SRC, translate(SRC, (0.0, t, 0.0)), splat=splat)
    rgb = (res.fused_rgb[0].numpy() * 255.0).round().astype(np.uint8)
    assert np.array_equal(rgb[4:], frame[:60]) and not res.fused_mask[0, :4].any()


@pytest.mark.parametrize(("forward", "max_footprint"), [(0.5, 2), (1.0, 3)])
def test_forward_motion_depth_and_no_cracks(forward, max_footprint):
    rng = np.random.default_rng(3)
    frame = random_frame(rng)
    d = 2.0
    depth = np.full((64, 64), d, dtype=np.float32)
    res = warp1(frame, depth, SRC, translate(SRC, (0.0, 0.0, -forward)), max_footprint=max_footprint)
    # the plane fills the whole target (it spans +-32 * d / (d - forward) pixels there)
    assert res.fused_mask.all(), "cracks in the magnified plane"
    assert np.allclose(res.fused_depth.numpy(), d - forward, rtol=1e-5)
    # colours: nearest-neighbour inverse warp (target pixel centre -> source pixel)
    centres = np.arange(64) + 0.5
    src_idx = np.floor((centres - 32.0) * (d - forward) / d + 32.0).astype(int)  # (64,)
    expected = frame[src_idx[:, None], src_idx[None, :]]
    got = (res.fused_rgb[0].numpy() * 255.0).round().astype(np.uint8)
    agree = np.all(got == expected, axis=-1).mean()
    assert agree > 0.9, f"only {agree:.1%} of pixels match the inverse warp"


def test_turning_keeps_the_plane_and_masks_the_new_strip():
    rng = np.random.default_rng(4)
    frame = random_frame(rng)
    depth = np.full((64, 64), 3.0, dtype=np.float32)
    tgt = camera_pose(1.3, -0.7, 0.4 + math.radians(15.0), cam_height=1.5)  # turned left
    res = warp1(frame, depth, SRC, tgt)
    mask = res.fused_mask[0].numpy()
    assert not mask[:, :5].any()  # the left strip is new
    assert mask[8:-8, 25:].all()  # no cracks where the source covers (rotation magnifies slightly)


def test_points_behind_the_target_are_dropped():
    rng = np.random.default_rng(5)
    depth = np.full((64, 64), 2.0, dtype=np.float32)
    back = camera_pose(1.3, -0.7, 0.4 + math.pi, cam_height=1.5)
    res = warp1(random_frame(rng), depth, SRC, back)
    assert not res.fused_mask.any() and torch.isinf(res.fused_depth).all()
    assert (res.fused_view == -1).all()


# --------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------


def _two_views(depth0: np.ndarray, depth1: np.ndarray, **kw):
    frames = np.zeros((1, 2, 64, 64, 3), dtype=np.uint8)
    frames[0, 0, ..., 0] = 255  # view 0 red
    frames[0, 1, ..., 1] = 255  # view 1 green
    depths = np.stack([depth0, depth1])[None].astype(np.float32)
    poses = np.stack([SRC, SRC])[None]
    return forward_warp(frames, depths, poses, SRC[None], INTR, **kw)


def test_zbuffer_nearer_surface_wins_across_views():
    far = np.full((64, 64), 4.0)
    near = np.full((64, 64), np.inf)
    near[:, :32] = 2.0  # view 1 sees a nearer surface on the left half only
    res = _two_views(far, near)
    rgb, view = res.fused_rgb[0].numpy(), res.fused_view[0].numpy()
    assert (rgb[:, :32, 1] == 1.0).all() and (rgb[:, :32, 0] == 0.0).all() and (view[:, :32] == 1).all()
    assert (rgb[:, 32:, 0] == 1.0).all() and (view[:, 32:] == 0).all()
    assert np.allclose(res.fused_depth[0, :, :32].numpy(), 2.0) and np.allclose(res.fused_depth[0, :, 32:].numpy(), 4.0)
    assert res.mask[0, 0].all() and res.mask[0, 1, :, :32].all() and not res.mask[0, 1, :, 32:].any()


def test_zbuffer_within_a_view():
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    frame[:, :32] = (255, 0, 0)
    frame[:, 32:] = (0, 0, 255)
    depth = np.full((64, 64), 4.0, dtype=np.float32)
    depth[:, :32] = 1.0  # a near red surface in front of a far blue wall
    res = warp1(frame, depth, SRC, translate(SRC, (0.3, 0.0, 0.0)))  # the near surface slides over the wall
    rgb, mask = res.fused_rgb[0].numpy(), res.fused_mask[0].numpy()
    # near edge: u = 32 - 32 * 0.3 / 1 = 22.4; far wall's left edge moves to 32 - 2.4 = 29.6
    assert (rgb[:, :22, 0] == 1.0).all()  # red still in front
    assert not mask[:, 23:29].any()  # the disocclusion is a hole, not a smear
    assert (rgb[:, 30:61, 2] == 1.0).all()


def test_fusion_prefers_earlier_view_among_near_equal_depths():
    res = _two_views(np.full((64, 64), 2.02), np.full((64, 64), 2.0))  # within 2 %
    assert (res.fused_view == 0).all() and (res.fused_rgb[..., 0] == 1.0).all()
    assert np.allclose(res.fused_depth.numpy(), 2.02)
    res = _two_views(np.full((64, 64), 2.1), np.full((64, 64), 2.0))  # view 1 clearly nearer
    assert (res.fused_view == 1).all() and (res.fused_rgb[..., 1] == 1.0).all()


def test_invalid_views_and_pixels_contribute_nothing():
    far = np.full((64, 64), 4.0)
    near = np.full((64, 64), 2.0)
    res = _two_views(far, near, valid=np.array([[True, False]]))
    assert not res.mask[0, 1].any() and (res.fused_view == 0).all() and (res.fused_rgb[..., 0] == 1.0).all()
    holes = far.copy()
    holes[10:20, 10:20] = np.nan
    holes[30:40, 30:40] = np.inf
    res = _two_views(holes, np.full((64, 64), np.inf))
    assert not res.fused_mask[0, 10:20, 10:20].any() and not res.fused_mask[0, 30:40, 30:40].any()
    assert res.fused_mask.sum() == 64 * 64 - 200


def test_batched_items_are_independent():
    rng = np.random.default_rng(6)
    b, k = 3, 2
    frames = rng.integers(0, 256, (b, k, 64, 64, 3), dtype=np.uint8)
    depths = rng.uniform(1.0, 5.0, (b, k, 64, 64)).astype(np.float32)
    src = np.stack([[camera_pose(0.2 * i, 0.1 * j, 0.3 * j) for j in range(k)] for i in range(b)])
    tgt = np.stack([camera_pose(0.2 * i + 0.1, 0.05, 0.1) for i in range(b)])
    full = forward_warp(frames, depths, src, tgt, INTR)
    for i in range(b):
        one = forward_warp(frames[i : i + 1], depths[i : i + 1], src[i : i + 1], tgt[i : i + 1], INTR)
        assert torch.equal(one.fused_rgb[0], full.fused_rgb[i]) and torch.equal(one.mask[0], full.mask[i])
    as_float = forward_warp(torch.as_tensor(frames).float() / 255.0, depths, src, tgt, INTR)
    assert torch.allclose(as_float.fused_rgb, full.fused_rgb, atol=1e-6)


# --------------------------------------------------------------------------------------
# Hole filling
# --------------------------------------------------------------------------------------


def test_fill_holes_fills_everything_and_keeps_known_pixels():
    rng = np.random.default_rng(7)
    rgb = torch.as_tensor(rng.random((2, 37, 50, 3)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random((2, 37, 50)) < 0.3)
    mask[1, 10:30, 5:45] = False  # a big hole
    out = fill_holes(rgb, mask)
    assert out.shape == rgb.shape and torch.isfinite(out).all()
    assert torch.equal(out[mask], rgb[mask])
    assert out.min() >= 0.0 and out.max() <= 1.0  # interpolation, no overshoot


def test_fill_holes_constant_image_and_fallback():
    rgb = torch.zeros(2, 16, 16, 3)
    rgb[0] = torch.tensor([0.2, 0.4, 0.6])
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 3, 4] = mask[0, 12, 9] = True
    out = fill_holes(rgb, mask)
    assert torch.allclose(out[0], torch.tensor([0.2, 0.4, 0.6]).expand(16, 16, 3), atol=1e-6)
    assert torch.allclose(out[1], torch.full((16, 16, 3), 0.5))  # empty mask: documented mid-grey
    out = fill_holes(rgb, mask, fallback=(0.1, 0.2, 0.3))
    assert torch.allclose(out[1], torch.tensor([0.1, 0.2, 0.3]).expand(16, 16, 3))


def test_fill_holes_depth_prefers_background():
    rgb = torch.zeros(1, 8, 24, 1)
    rgb[0, :, 16:] = 1.0
    mask = torch.ones(1, 8, 24, dtype=torch.bool)
    mask[0, :, 8:16] = False  # a disocclusion between a near (0) and a far (1) surface
    depth = torch.where(torch.arange(24) < 8, 1.0, 10.0).expand(1, 8, 24)
    plain = fill_holes(rgb, mask)[0, :, 8:16].mean()
    aware = fill_holes(rgb, mask, depth=depth)[0, :, 8:16].mean()
    assert aware > plain + 0.2


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def _inputs(b=1, k=2):
    frames = np.zeros((b, k, 64, 64, 3), dtype=np.uint8)
    depths = np.ones((b, k, 64, 64), dtype=np.float32)
    src = np.broadcast_to(SRC, (b, k, 4, 4)).copy()
    tgt = np.broadcast_to(SRC, (b, 4, 4)).copy()
    return frames, depths, src, tgt


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: (a[0][..., :2],) + a[1:], "frames must have shape"),
        (lambda a: (a[0], a[1][:, :1]) + a[2:], "depths must have shape"),
        (lambda a: a[:2] + (a[2][:, :1], a[3]), "src_poses must have shape"),
        (lambda a: a[:3] + (np.concatenate([a[3], a[3]]),), "tgt_poses must have shape"),
        (lambda a: (a[0], -a[1]) + a[2:], "negative"),
        (lambda a: (a[0][:, :, :32],) + a[1:], "intrinsics"),
        (lambda a: (a[0].astype(np.int32),) + a[1:], "uint8 or float"),
        (lambda a: a[:2] + (a[2] * np.nan, a[3]), "NaN or infinite"),
    ],
)
def test_bad_input_raises(change, match):
    args = change(_inputs())
    with pytest.raises(ValueError, match=match):
        forward_warp(*args, INTR)


def test_bad_options_raise():
    args = _inputs()
    with pytest.raises(ValueError, match="valid must have shape"):
        forward_warp(*args, INTR, valid=np.ones((1, 3), dtype=bool))
    with pytest.raises(ValueError, match="splat"):
        forward_warp(*args, INTR, splat="gaussian")
    with pytest.raises(ValueError, match="depth must have shape"):
        unproject(np.ones((64, 64), dtype=np.float32), SRC[None], INTR)
    with pytest.raises(ValueError, match="mask must have shape"):
        fill_holes(torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 9, dtype=torch.bool))


# --------------------------------------------------------------------------------------
# Real data: MiniWorld ground truth
# --------------------------------------------------------------------------------------


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-10))


def test_miniworld_forward_step_and_turn_match_ground_truth():
    from rtfm_env.geometry import heading_vector, pose_to_state
    from rtfm_env.scenes import MiniWorldScene

    scene = MiniWorldScene("MiniWorld-YMaze-v0", width=64, height=64)
    try:
        state = scene.reset(0)
        pose = state.pose()
        frame, depth = scene.render(pose), scene.render_depth(pose)
        st = pose_to_state(pose)
        step = heading_vector(st.yaw) * 0.25
        targets = [
            camera_pose(st.x + step[0], st.z + step[2], st.yaw, st.cam_height, st.pitch),
            camera_pose(st.x, st.z, st.yaw + math.radians(15.0), st.cam_height, st.pitch),
        ]
        for tgt in targets:
            truth, truth_depth = scene.render(tgt), scene.render_depth(tgt)
            for splat in SPLATS:
                res = warp1(frame, depth, pose, tgt, intr=scene.intrinsics, splat=splat)
                mask = res.fused_mask[0].numpy()
                assert mask.mean() > 0.6  # a 15 degree turn of a 60 degree camera reveals a quarter
                got = (res.fused_rgb[0].numpy() * 255.0).round().astype(np.uint8)
                psnr = _psnr(got[mask], truth[mask])
                assert psnr > 25.0, f"{splat}: PSNR {psnr:.1f} dB on covered pixels"
                err = np.abs(res.fused_depth[0].numpy()[mask] - truth_depth[mask]) / truth_depth[mask]
                assert np.median(err) < 0.03  # a splat carries its point's depth, up to half a pixel off-centre
                print(f"{splat}: PSNR {psnr:.1f} dB, coverage {mask.mean():.3f}, depth err {np.median(err):.4f}")
    finally:
        scene.close()


# --------------------------------------------------------------------------------------
# Backends: the NumPy fast path (CPU, nearest) computes what the torch path does
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resolution_tolerance", "priority"), [(None, None), (RESOLUTION_TOLERANCE, None),
                                                                  (RESOLUTION_TOLERANCE, [[0, 1, 0], [1, 1, 0]])])
@pytest.mark.parametrize("max_footprint", [1, 2, 3])
def test_numpy_and_torch_backends_agree(max_footprint, resolution_tolerance, priority):
    rng = np.random.default_rng(8)
    b, k = 2, 3
    frames = rng.integers(0, 256, (b, k, 64, 64, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:64, 0:64]
    depths = np.empty((b, k, 64, 64), dtype=np.float32)
    for i in range(b):
        for j in range(k):  # smooth surfaces with depth edges and holes
            depths[i, j] = 2.0 + 1.5 * np.sin(cols / 9.0 + j) + 0.7 * (rows > 40) + 0.3 * i
    depths[rng.random(depths.shape) < 0.02] = np.inf
    depths[0, 1, 5:9, 5:9] = np.nan
    src = np.stack([[camera_pose(0.1 * j, 0.05 * j - 0.1 * i, 0.1 * j - 0.15) for j in range(k)] for i in range(b)])
    tgt = np.stack([camera_pose(0.05, -0.3 + 0.1 * i, 0.05 * i) for i in range(b)])  # forward: magnified
    valid = np.ones((b, k), dtype=bool)
    valid[1, 2] = False
    kw = dict(valid=valid, max_footprint=max_footprint, resolution_tolerance=resolution_tolerance, depth_tolerance=0.1,
              priority=None if priority is None else np.array(priority))
    ref = forward_warp(frames, depths, src, tgt, INTR, backend="torch", **kw)
    fast = forward_warp(frames, depths, src, tgt, INTR, backend="numpy", **kw)
    assert forward_warp(frames, depths, src, tgt, INTR, per_view=False, **kw).rgb is None
    assert 0.5 < ref.fused_mask.float().mean() < 1.0
    for name in ("rgb", "depth", "mask", "fused_rgb", "fused_depth", "fused_mask", "fused_view"):
        a, f = getattr(ref, name), getattr(fast, name)
        assert a.dtype == f.dtype and a.shape == f.shape, name
        assert torch.equal(a, f), name
    for depth in (None, ref.fused_depth):
        filled_ref = fill_holes(ref.fused_rgb, ref.fused_mask, depth=depth, fallback=(0.1, 0.2, 0.3), backend="torch")
        filled = fill_holes(ref.fused_rgb, ref.fused_mask, depth=depth, fallback=(0.1, 0.2, 0.3), backend="numpy")
        assert filled.dtype == torch.float32 and torch.allclose(filled, filled_ref, atol=1e-6, rtol=0.0)
    odd = torch.rand(2, 37, 50, 2)  # ceil-mode pyramid sizes, two channels, one image without known pixels
    mask = torch.rand(2, 37, 50) < 0.05
    mask[1] = False
    assert torch.allclose(fill_holes(odd, mask, backend="numpy"), fill_holes(odd, mask, backend="torch"), atol=1e-6)


# --------------------------------------------------------------------------------------
# Resolution-aware fusion: the least magnified view of the front surface wins
# --------------------------------------------------------------------------------------


def _wall_views(distances):
    """Views of a textured wall (the plane x = 3) from cameras at x = 3 - d looking along +x, one per d."""
    rng = np.random.default_rng(3)
    k = len(distances)
    frames = rng.integers(0, 256, (1, k, 64, 64, 3), dtype=np.uint8)
    depths = np.stack([np.full((64, 64), d, dtype=np.float32) for d in distances])[None]
    src = np.stack([camera_pose(3.0 - d, 0.0, 0.0) for d in distances])[None]
    return frames, depths, src


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_resolution_fusion_prefers_the_nearer_view_of_the_same_surface(backend):
    # view 0 (ranked first) saw the wall from 3.2 m, view 1 from 2.95 m; the target stands 2.9 m
    # from it. Both are within the depth tolerance of the front surface; view 0 is magnified
    # 3.2 / 2.9 = 1.10x, view 1 1.02x: resolution-aware fusion takes view 1, order alone view 0.
    frames, depths, src = _wall_views([3.2, 2.95])
    tgt = camera_pose(0.1, 0.0, 0.0)[None]
    kw = dict(depth_tolerance=0.1, backend=backend)
    by_order = forward_warp(frames, depths, src, tgt, INTR, resolution_tolerance=None, **kw)
    by_res = forward_warp(frames, depths, src, tgt, INTR, resolution_tolerance=RESOLUTION_TOLERANCE, **kw)
    inner = (slice(8, 56), slice(8, 56))
    assert (by_order.fused_view[0][inner] == 0).all()
    assert (by_res.fused_view[0][inner] == 1).all()
    assert torch.equal(by_res.fused_mask, by_order.fused_mask)
    assert torch.equal(by_res.fused_rgb[0][inner], by_res.rgb[0, 1][inner])
    # beyond the depth tolerance the nearer surface wins whatever the resolution
    far = forward_warp(frames, depths, src, tgt, INTR, resolution_tolerance=RESOLUTION_TOLERANCE,
                       depth_tolerance=0.01, backend=backend)
    assert (far.fused_view[0][inner] == 1).all()


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_resolution_fusion_keeps_a_view_at_the_target_pose_exact(backend):
    # view 0 stands at the target's pose; view 1 saw the wall from closer (minified in the
    # target: it counts as magnification 1, a tie), so view 0 keeps every pixel: a revisit of a
    # stored pose shows the stored frame exactly.
    frames, depths, src = _wall_views([3.0, 2.5])
    tgt = src[:, 0]
    res = forward_warp(frames, depths, src, tgt, INTR, depth_tolerance=0.1, backend=backend,
                       resolution_tolerance=RESOLUTION_TOLERANCE)
    assert (res.fused_view[0] == 0).all()
    assert torch.equal((res.fused_rgb[0] * 255.0).round().to(torch.uint8), torch.from_numpy(frames[0, 0]))
    # the same with the views' order swapped: the stored view is magnified 1x, the other 1x
    # too (minified), so order decides; the sharper-than-needed view is not preferred
    res = forward_warp(frames[:, ::-1].copy(), depths[:, ::-1].copy(), src[:, ::-1].copy(), tgt, INTR,
                       depth_tolerance=0.1, backend=backend, resolution_tolerance=RESOLUTION_TOLERANCE)
    assert (res.fused_view[0][8:56, 8:56] == 0).all()


@pytest.mark.parametrize("value", [0.5, math.inf, math.nan, True, "1.1"])
def test_resolution_tolerance_is_checked(value):
    frames, depths, src = _wall_views([3.0])
    with pytest.raises(ValueError, match="resolution_tolerance must be None or a finite number >= 1"):
        forward_warp(frames, depths, src, src[:, 0], INTR, resolution_tolerance=value)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_priority_keeps_the_observed_view_of_a_surface(backend):
    # view 0 observed from 3.2 m, view 1 generated from 2.95 m (sharper): with priorities
    # (observed 0, generated 1) the observed view keeps the surface; in front of it, a nearer
    # surface seen only by the generated view still wins (priority only breaks same-surface ties)
    frames, depths, src = _wall_views([3.2, 2.95])
    tgt = camera_pose(0.1, 0.0, 0.0)[None]
    kw = dict(depth_tolerance=0.1, backend=backend, resolution_tolerance=RESOLUTION_TOLERANCE)
    inner = (slice(8, 56), slice(8, 56))
    assert (forward_warp(frames, depths, src, tgt, INTR, **kw).fused_view[0][inner] == 1).all()
    res = forward_warp(frames, depths, src, tgt, INTR, priority=np.array([[0, 1]]), **kw)
    assert (res.fused_view[0][inner] == 0).all()
    nearer = depths.copy()
    nearer[0, 1, 20:40, 20:40] = 1.5  # a box in front of the wall, seen by the generated view only
    res = forward_warp(frames, nearer, src, tgt, INTR, priority=np.array([[0, 1]]), **kw)
    assert (res.fused_view[0][28:34, 28:34] == 1).all() and (res.fused_view[0][8:12, 8:12] == 0).all()


@pytest.mark.parametrize(("value", "match"), [(np.array([[0.5]]), "integers"), (np.array([[0, 1]]), r"\(B, K\)"),
                                              (np.array([[-1]]), r"\[0, 2\*\*62\)"), (np.array([[True]]), "integers")])
def test_priority_is_checked(value, match):
    frames, depths, src = _wall_views([3.0])
    with pytest.raises(ValueError, match=match):
        forward_warp(frames, depths, src, src[:, 0], INTR, priority=value)
