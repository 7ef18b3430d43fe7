"""Batched forward warping of posed RGB-D frames into a target camera (torch, no learning).

The core of the reprojection camera and of the frame model's target-aligned input: every
pixel of every context frame is lifted to 3-D with its depth, moved into the target camera
and splatted into the target image with a z-buffer; the K warped views are then fused with a
second z-buffer, and :func:`fill_holes` completes what no view covers.

Conventions (see DESIGN.md and :mod:`rtfm_env.geometry`):

* poses are camera-to-world 4x4 (float64 recommended), OpenGL camera axes (x right, y up,
  looking down -z); intrinsics are :class:`~rtfm_env.geometry.Intrinsics`, shared by source
  and target cameras;
* pixel (row v, col u) has its centre at (u + 0.5, v + 0.5) and the camera ray
  ((u + 0.5 - W/2) / f, -(v + 0.5 - H/2) / f, -1), as :func:`~rtfm_env.geometry.plucker_rays`;
* depth is metres along the optical axis (-z in the camera frame); ``inf`` (nothing hit),
  ``NaN`` (unknown) and ``0`` (no return, as some sensors write) are not warped; negative
  depth is an error;
* colours come in as uint8 (0..255) or floats in [0, 1] and go out as float32 in [0, 1].

Splatting. Each source pixel covers an axis-aligned footprint in the target, centred on its
projection, whose half-extents are half the local magnification: the target-pixel spacing of
its projected neighbours (finite differences of the projected coordinates, ignoring a
neighbour across a depth edge) or the depth ratio source/target, whichever is larger, capped
at ``max_footprint / 2`` pixels. A footprint is half-open, so at unit magnification every
target pixel is covered exactly once (a warp into the source's own pose is the identity), and
when the target sees a surface from closer, neighbouring footprints meet, leaving no cracks up
to a magnification of ``max_footprint``. Every (source pixel, covered target pixel) pair is
one splat; a single ``scatter_reduce("amin")`` over int64 keys ``(depth bits, source index)``
resolves the z-buffer and names the winner in one pass. The key's depth is raised by up to
``CENTRE_BIAS`` (relative) with the splat's normalised distance from the target pixel's
centre, so among splats of one surface the best-centred one wins, while a surface nearer by
more than that always wins.

``splat="bilinear"`` widens every footprint by half a pixel, weights splats with a tent
(1 - |offset| / half-extent per axis) and averages the colours of all splats within
``depth_tolerance`` of the z-buffer's winner: anti-aliased and smoother under sub-pixel
motion, a little softer, and slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from rtfm_env.geometry import Intrinsics

__all__ = ["WarpResult", "unproject", "forward_warp", "fill_holes", "NEAR", "CENTRE_BIAS"]

NEAR = 1e-3  # metres: points at or behind this target depth are dropped
CENTRE_BIAS = 0.01  # relative depth penalty of a splat at its footprint's edge (z-buffer tie-break)
EDGE_TOLERANCE = 0.1  # relative depth step between neighbours treated as a surface edge (footprints)
MAX_DEPTH_KEY = 1e30  # metres: depths are clamped here before their bits enter the z-buffer keys

_IDX_BITS = 28  # source index bits in a z-buffer key; a warp holds at most 2**28 source pixels
_IDX_MASK = (1 << _IDX_BITS) - 1
_EMPTY = 1 << 60  # keys at or above this mark empty target pixels / invalid splats
_BIAS_SCALE = CENTRE_BIAS * (1 << 23)  # float32 bit steps per unit normalised squared distance


@dataclass
class WarpResult:
    """Per-view warps and their z-buffer fusion in the target camera.

    Attributes:
        rgb: (B, K, H, W, 3) float32 in [0, 1]; 0 where ``mask`` is False.
        depth: (B, K, H, W) float32 target-camera depth, metres; inf where ``mask`` is False.
        mask: (B, K, H, W) bool, True where view k covers the target pixel.
        fused_rgb: (B, H, W, 3) float32 in [0, 1]; 0 where ``fused_mask`` is False.
        fused_depth: (B, H, W) float32, metres; inf where ``fused_mask`` is False.
        fused_mask: (B, H, W) bool, True where any view covers the target pixel.
        fused_view: (B, H, W) int64, the view each fused pixel comes from; -1 where empty.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    fused_rgb: torch.Tensor
    fused_depth: torch.Tensor
    fused_mask: torch.Tensor
    fused_view: torch.Tensor


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _pixel_rays(intrinsics: Intrinsics, device: torch.device) -> torch.Tensor:
    """(3, H*W) float32 camera-frame rays through pixel centres, z = -1 (cached)."""
    h, w, f = intrinsics.height, intrinsics.width, intrinsics.focal
    x = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2.0) / f  # (W,)
    y = -(torch.arange(h, dtype=torch.float64) + 0.5 - h / 2.0) / f  # (H,)
    rays = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w), -torch.ones(h, w, dtype=torch.float64)])
    return rays.reshape(3, h * w).to(device=device, dtype=torch.float32)


def _as_tensor(x: torch.Tensor | np.ndarray, name: str, device: torch.device | None = None) -> torch.Tensor:
    if torch.is_tensor(x):
        return x if device is None else x.to(device)
    try:
        return torch.as_tensor(np.asarray(x), device=device)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a tensor or an array, got {type(x).__name__}") from e


def _check_poses(poses: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(poses.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(poses.shape)}")
    poses = poses.to(torch.float64)
    if not bool(torch.isfinite(poses).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return poses


def _invert(pose: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4): (R^T, -R^T t)."""
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def _check_depth(depth: torch.Tensor, name: str) -> torch.Tensor:
    if not depth.is_floating_point():
        raise ValueError(f"{name} must be floating point metres, got dtype {depth.dtype}")
    depth = depth.to(torch.float32)
    if bool((depth < 0).any()):
        raise ValueError(f"{name} has negative values (min {float(depth.nan_to_num(0.0).min()):.4g}); depth is >= 0")
    return depth


# --------------------------------------------------------------------------------------
# Unprojection
# --------------------------------------------------------------------------------------


def unproject(
    depth: torch.Tensor | np.ndarray, pose: torch.Tensor | np.ndarray, intrinsics: Intrinsics
) -> torch.Tensor:
    """World points of every pixel of a batch of depth maps.

    Args:
        depth: (B, H, W) metres along the optical axis (inf / NaN give non-finite points).
        pose: (B, 4, 4) camera-to-world poses (OpenGL camera axes).
        intrinsics: pinhole intrinsics of the cameras, (W, H) matching ``depth``.

    Returns:
        (B, H, W, 3) float32 world points, on ``depth``'s device.

    Raises:
        ValueError: on wrong shapes, a size that disagrees with ``intrinsics``, non-finite poses
            or negative depth.
    """
    depth_t = _as_tensor(depth, "depth")
    if depth_t.ndim != 3:
        raise ValueError(f"depth must have shape (B, H, W), got {tuple(depth_t.shape)}")
    b, h, w = depth_t.shape
    if (h, w) != (intrinsics.height, intrinsics.width):
        raise ValueError(f"depth is {h}x{w} (HxW) but intrinsics say {intrinsics.height}x{intrinsics.width}")
    depth_t = _check_depth(depth_t, "depth")
    pose_t = _check_poses(_as_tensor(pose, "pose", depth_t.device), (b, 4, 4), "pose").to(torch.float32)
    dirs = pose_t[:, :3, :3] @ _pixel_rays(intrinsics, depth_t.device)  # (B, 3, H*W) world
    pts = torch.addcmul(pose_t[:, :3, 3:], dirs, depth_t.reshape(b, 1, h * w))  # (B, 3, H*W)
    return pts.transpose(1, 2).reshape(b, h, w, 3)


# --------------------------------------------------------------------------------------
# Forward warp
# --------------------------------------------------------------------------------------


def _footprint(
    uv: torch.Tensor, depth: torch.Tensor, ratio: torch.Tensor, ok: torch.Tensor, cap: float
) -> torch.Tensor:
    """Half-extents in target pixels of every source pixel's footprint.

    Args:
        uv: (2, N, H, W) projected target coordinates x then y (pixel centres at +0.5).
        depth: (N, H, W) source depth.
        ratio: (N, H, W) source depth / target depth.
        ok: (N, H, W) bool, pixels that are warped.
        cap: the largest half-extent.

    Returns:
        (2, N, H, W): half the local magnification along x and y (the bounding box of the
        projected spacing to the farther of the two neighbours along each source axis, ignoring
        neighbours across a depth edge), at least half the depth ratio, clamped to [0.5, cap].
    """
    log_d = torch.where(ok, depth.log(), math.nan)  # (N, H, W); NaN fails every comparison
    tol = math.log1p(EDGE_TOLERANCE)
    same_j = (log_d[..., 1:] - log_d[..., :-1]).abs_() <= tol  # (N, H, W-1) same surface as the right neighbour
    same_i = (log_d[:, 1:] - log_d[:, :-1]).abs_() <= tol  # (N, H-1, W) same surface as the one below
    gj = (uv[..., 1:] - uv[..., :-1]).abs_().mul_(same_j)  # (2, N, H, W-1)
    gi = (uv[:, :, 1:] - uv[:, :, :-1]).abs_().mul_(same_i)  # (2, N, H-1, W)
    spread = torch.maximum(F.pad(gj, (1, 0)), F.pad(gj, (0, 1)))  # (2, N, H, W)
    spread += torch.maximum(F.pad(gi, (0, 0, 1, 0)), F.pad(gi, (0, 0, 0, 1)))
    # a hair under half, so unit magnification never reaches a neighbour's centre through rounding
    return torch.maximum(spread, ratio).mul_(0.5).sub_(1e-4).clamp_(0.5, cap)


def forward_warp(
    frames: torch.Tensor | np.ndarray,
    depths: torch.Tensor | np.ndarray,
    src_poses: torch.Tensor | np.ndarray,
    tgt_poses: torch.Tensor | np.ndarray,
    intrinsics: Intrinsics,
    *,
    valid: torch.Tensor | np.ndarray | None = None,
    splat: str = "nearest",
    max_footprint: int = 2,
    depth_tolerance: float = 0.02,
    near: float = NEAR,
) -> WarpResult:
    """Forward-warp K posed RGB-D frames per batch item into a target camera and fuse them.

    Args:
        frames: (B, K, H, W, 3) uint8 (0..255) or float (0..1) colours.
        depths: (B, K, H, W) float metres along each source camera's optical axis; inf, NaN and 0
            mark pixels that are not warped.
        src_poses: (B, K, 4, 4) camera-to-world poses of the source frames.
        tgt_poses: (B, 4, 4) camera-to-world poses of the target cameras.
        intrinsics: shared pinhole intrinsics; (W, H) must match the frames.
        valid: optional (B, K) bool; False marks padded context views, which contribute nothing.
        splat: ``"nearest"`` (each target pixel takes the colour of one source pixel, exact under
            integer motion) or ``"bilinear"`` (tent-weighted average of the front surface's splats).
        max_footprint: the largest footprint side in target pixels (2 or 3: 3 closes cracks up to
            3x magnification at about twice the splatting cost).
        depth_tolerance: relative depth within which surfaces count as one: in fusion the earlier
            view (retrieval order, best first) wins among views within it of the nearest; in
            bilinear splatting the splats within it of the winner are averaged.
        near: target depths at or below this (metres) are dropped (behind the camera).

    Returns:
        A :class:`WarpResult` with per-view and fused rgb, depth and mask, on the device of
        ``frames`` (CPU for arrays).

    Raises:
        ValueError: on wrong shapes or dtypes, mismatched B / K between the inputs, a size that
            disagrees with ``intrinsics``, non-finite poses, negative depth or an unknown ``splat``.
    """
    if splat not in ("nearest", "bilinear"):
        raise ValueError(f"splat must be 'nearest' or 'bilinear', got {splat!r}")
    if int(max_footprint) not in (1, 2, 3, 4):
        raise ValueError(f"max_footprint must be 1, 2, 3 or 4 pixels, got {max_footprint}")
    frames_t = _as_tensor(frames, "frames")
    device = frames_t.device
    if frames_t.ndim != 5 or frames_t.shape[-1] != 3:
        raise ValueError(f"frames must have shape (B, K, H, W, 3), got {tuple(frames_t.shape)}")
    b, k, h, w, _ = frames_t.shape
    if (h, w) != (intrinsics.height, intrinsics.width):
        raise ValueError(f"frames are {h}x{w} (HxW) but intrinsics say {intrinsics.height}x{intrinsics.width}")
    if frames_t.dtype != torch.uint8 and not frames_t.is_floating_point():
        raise ValueError(f"frames must be uint8 or float, got dtype {frames_t.dtype}")
    depth_t = _as_tensor(depths, "depths", device)
    if tuple(depth_t.shape) != (b, k, h, w):
        raise ValueError(f"depths must have shape (B, K, H, W) = {(b, k, h, w)}, got {tuple(depth_t.shape)}")
    depth_t = _check_depth(depth_t, "depths")
    src = _check_poses(_as_tensor(src_poses, "src_poses", device), (b, k, 4, 4), "src_poses")
    tgt = _check_poses(_as_tensor(tgt_poses, "tgt_poses", device), (b, 4, 4), "tgt_poses")
    n_views, hw = b * k, h * w
    n_pix = n_views * hw
    if n_pix > _IDX_MASK:
        raise ValueError(f"too many source pixels in one warp ({n_pix}); split the batch")

    # Source pixels in the target camera ---------------------------------------------------
    rel = (_invert(tgt)[:, None] @ src).to(torch.float32).reshape(n_views, 4, 4)  # (BK, 4, 4) source -> target
    ok = (depth_t > 0) & (depth_t < math.inf)  # (B, K, H, W); NaN fails both
    if valid is not None:
        valid_t = _as_tensor(valid, "valid", device)
        if tuple(valid_t.shape) != (b, k):
            raise ValueError(f"valid must have shape (B, K) = {(b, k)}, got {tuple(valid_t.shape)}")
        ok &= valid_t.to(torch.bool)[:, :, None, None]
    d_src = torch.where(ok, depth_t, 1.0).reshape(n_views, 1, hw)  # (BK, 1, HW), finite everywhere
    pts = torch.addcmul(rel[:, :3, 3:], rel[:, :3, :3] @ _pixel_rays(intrinsics, device), d_src)  # (BK, 3, HW)
    z_t = pts[:, 2].neg()  # (BK, HW) target depth
    ok = ok.reshape(n_views, hw) & (z_t > near)
    inv_z = torch.where(ok, z_t, 1.0).reciprocal_()  # (BK, HW)
    uv = torch.empty((2, n_views, hw), device=device)  # (2, BK, HW) x right, y up; contiguous
    torch.mul(pts[:, :2].transpose(0, 1), inv_z * intrinsics.focal, out=uv)
    uv[0].add_(w / 2.0)  # target pixel coordinates
    uv[1].neg_().add_(h / 2.0)
    cap = 0.5 * max_footprint
    half = _footprint(  # (2, BK, H, W)
        uv.view(2, n_views, h, w),
        d_src.view(n_views, h, w),
        (d_src[:, 0] * inv_z).view(n_views, h, w),
        ok.view(n_views, h, w),
        cap,
    )

    # Candidate target pixels per axis: (2 axes x then y, C candidates, P source pixels) ----------
    # Target buffers are padded by C pixels on every side, so no candidate needs a bounds test.
    ext = 0.5 if splat == "bilinear" else 0.0
    n_cand = math.ceil(2 * (cap + ext))
    hp, wp = h + 2 * n_cand, w + 2 * n_cand
    uv = uv.view(2, n_pix)
    half = half.view(2, n_pix)
    if ext:
        half += ext
    first = torch.sub(uv, half).sub_(0.5).ceil_()  # (2, P) first pixel whose centre is in [uv - half, ...)
    first[0].clamp_(-n_cand, w)
    first[1].clamp_(-n_cand, h)
    offs = torch.arange(n_cand, device=device, dtype=torch.float32)[:, None]  # (C, 1)
    offset = (first - uv).add_(0.5)[:, None].add(offs).mul_(half.reciprocal()[:, None])  # (2, C, P) in [-1, 1)
    outside = offset >= 1.0
    if ext:  # drop (near-)weightless splats, which would only fatten edges
        outside |= offset.abs() >= 1.0 - 1e-3
    # centre bias in float32-bit steps; outside splats get 2**33 << 28 = 2**61, which marks their keys empty
    bias = torch.where(outside, float(1 << 33), (offset * offset).mul_(_BIAS_SCALE))  # (2, C, P)
    kpart = bias.to(torch.int64).bitwise_left_shift_(_IDX_BITS)
    cand = first.to(torch.int64).add_(n_cand)[:, None] + offs.to(torch.int64)  # (2, C, P) padded pixel index

    # Z-buffer: one amin over int64 keys (depth bits + centre bias, source index) --------------
    src_idx = torch.arange(n_pix, device=device)
    zbits = z_t.clamp(near, MAX_DEPTH_KEY).view(n_pix).view(torch.int32).to(torch.int64)
    base = torch.where(ok.view(n_pix), zbits.bitwise_left_shift_(_IDX_BITS).bitwise_or_(src_idx), _EMPTY)  # (P,)
    view0 = torch.arange(0, n_views * hp * wp, hp * wp, device=device)[:, None].expand(n_views, hw).reshape(n_pix)
    keys = (base + kpart[1])[:, None] + kpart[0][None]  # (C, C, P) target rows then columns
    slots = (view0 + cand[1] * wp)[:, None] + cand[0][None]  # (C, C, P)
    zbuf = torch.full((n_views, hp, wp), torch.iinfo(torch.int64).max, device=device, dtype=torch.int64)
    zbuf.view(-1).scatter_reduce_(0, slots.view(-1), keys.view(-1), "amin")
    zbuf = zbuf[:, n_cand : n_cand + h, n_cand : n_cand + w]  # (BK, H, W) crop the padding
    mask = zbuf < _EMPTY  # (BK, H, W) target pixels of every view
    winner = (zbuf & _IDX_MASK).clamp_(max=n_pix - 1).view(n_pix)  # (P,) source pixel index
    depth_out = torch.where(mask.view(n_pix), z_t.view(n_pix).take(winner), math.inf)  # (P,)
    flat_rgb = frames_t.reshape(n_pix, 3)
    scale = 1.0 / 255.0 if frames_t.dtype == torch.uint8 else 1.0

    if splat == "nearest":
        rgb = flat_rgb.index_select(0, winner).to(torch.float32)  # (P, 3)
        rgb *= mask.view(n_pix, 1) * scale if scale != 1.0 else mask.view(n_pix, 1)
    else:
        pad_depth = torch.full((n_views, hp, wp), math.inf, device=device)
        pad_depth[:, n_cand : n_cand + h, n_cand : n_cand + w] = depth_out.view(n_views, h, w)
        weight = (1.0 - offset.abs()).clamp_(min=0.0)  # (2, C, P) tent per axis
        weight = weight[1][:, None] * weight[0][None]  # (C, C, P)
        front = pad_depth.view(-1)[slots] * (1.0 + depth_tolerance)  # (C, C, P) z-test against the winner
        keep = (keys < _EMPTY) & (z_t.view(n_pix) <= front)
        weight = weight.mul_(keep).view(-1)
        flat_slots = slots.view(-1)
        n_slots = n_views * hp * wp
        src_rgb = flat_rgb.T.to(torch.float32) * scale  # (3, P)
        sums = [torch.bincount(flat_slots, weight, minlength=n_slots)] + [
            torch.bincount(flat_slots, (weight.view(n_cand, n_cand, n_pix) * src_rgb[c]).view(-1), n_slots)
            for c in range(3)
        ]
        acc = torch.stack(sums, -1).view(n_views, hp, wp, 4)[:, n_cand : n_cand + h, n_cand : n_cand + w]
        rgb = (acc[..., 1:] / acc[..., :1].clamp(min=1e-12)).to(torch.float32).reshape(n_pix, 3)
        rgb *= mask.view(n_pix, 1)

    rgb = rgb.reshape(b, k, h, w, 3)
    depth_v = depth_out.reshape(b, k, h, w)
    mask_v = mask.reshape(b, k, h, w)

    # Fusion over views: nearest surface, earlier view among near-equal depths -----------------
    nearest = depth_v[:, 0]  # (B, H, W)
    for j in range(1, k):
        nearest = torch.minimum(nearest, depth_v[:, j])
    fused_mask = nearest < math.inf  # (B, H, W)
    limit = nearest * (1.0 + depth_tolerance)
    view = torch.zeros((b, h, w), dtype=torch.int64, device=device)
    for j in range(k - 1, 0, -1):  # the earliest view within the tolerance wins
        view = torch.where(depth_v[:, j] <= limit, j, view)
    view = torch.where(depth_v[:, 0] <= limit, 0, view)
    fused_depth = depth_v.gather(1, view[:, None])[:, 0]  # (B, H, W)
    fused_rgb = rgb.gather(1, view[:, None, :, :, None].expand(b, 1, h, w, 3))[:, 0]  # (B, H, W, 3)
    fused_view = torch.where(fused_mask, view, -1)
    return WarpResult(rgb, depth_v, mask_v, fused_rgb, fused_depth, fused_mask, fused_view)


# --------------------------------------------------------------------------------------
# Hole filling
# --------------------------------------------------------------------------------------


def fill_holes(
    rgb: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    depth: torch.Tensor | np.ndarray | None = None,
    fallback: float | tuple[float, ...] | torch.Tensor = 0.5,
    depth_power: float = 2.0,
) -> torch.Tensor:
    """Fill the pixels outside ``mask`` by push-pull interpolation.

    Push: the known pixels, premultiplied by their weights, are averaged down a pyramid (2x2
    means, ``ceil`` sizes) to 1x1. Pull: from the coarsest level up, each level's empty pixels
    take the bilinearly upsampled premultiplied values of the (already complete) level above;
    the colour is their ratio. Every pixel gets a value; pixels inside ``mask`` are returned
    unchanged, a constant image stays constant, and values stay within the known range.

    Args:
        rgb: (B, H, W, C) float image (any channel count: colours, or depth as C = 1).
        mask: (B, H, W) bool, True where ``rgb`` is known.
        depth: optional (B, H, W) depth of the known pixels; when given a known pixel weighs
            (depth / max depth) ** ``depth_power``, so holes fill preferably from their farther
            side (a disocclusion reveals background, not the occluder's colour).
        fallback: the value of every pixel of an image whose mask is empty (a scalar or C
            values; default mid-grey 0.5).
        depth_power: exponent of the depth weights.

    Returns:
        (B, H, W, C) float32 filled image on ``rgb``'s device.

    Raises:
        ValueError: on wrong shapes or a fallback of the wrong length.
    """
    rgb_t = _as_tensor(rgb, "rgb")
    if rgb_t.ndim != 4:
        raise ValueError(f"rgb must have shape (B, H, W, C), got {tuple(rgb_t.shape)}")
    b, h, w, c = rgb_t.shape
    device = rgb_t.device
    mask_t = _as_tensor(mask, "mask", device).to(torch.bool)
    if tuple(mask_t.shape) != (b, h, w):
        raise ValueError(f"mask must have shape (B, H, W) = {(b, h, w)}, got {tuple(mask_t.shape)}")
    fb = torch.as_tensor(fallback, dtype=torch.float32, device=device).reshape(-1)
    if fb.numel() not in (1, c):
        raise ValueError(f"fallback must be a scalar or {c} values, got {fb.numel()}")
    rgb_t = rgb_t.to(torch.float32)
    known = mask_t[:, None]  # (B, 1, H, W)
    wgt = known.to(torch.float32)  # (B, 1, H, W)
    if depth is not None:
        depth_t = _as_tensor(depth, "depth", device)
        if tuple(depth_t.shape) != (b, h, w):
            raise ValueError(f"depth must have shape (B, H, W) = {(b, h, w)}, got {tuple(depth_t.shape)}")
        d = torch.where(mask_t & (depth_t > 0) & (depth_t < math.inf), depth_t.to(torch.float32), 0.0)
        d = d / d.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]  # (B, H, W) in [0, 1]
        wgt = wgt * d[:, None].pow(depth_power).clamp(min=1e-12)
    # premultiplied colour channels, then the weight: (B, C + 1, H, W)
    x = torch.cat([torch.where(known, rgb_t.permute(0, 3, 1, 2), 0.0) * wgt, wgt], 1)

    # Push
    levels = [x]
    while x.shape[-2] > 1 or x.shape[-1] > 1:
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        levels.append(x)
    # Pull
    filled = levels[-1]
    for lev in reversed(levels[:-1]):
        up = F.interpolate(filled, size=lev.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(lev[:, -1:] > 0, lev, up)
    den = filled[:, -1:]  # (B, 1, H, W), zero everywhere only for an image with nothing known
    out = torch.where(den > 0, filled[:, :-1] / den.clamp(min=1e-30), fb.expand(c)[None, :, None, None])
    out = torch.where(known, rgb_t.permute(0, 3, 1, 2), out)
    return out.permute(0, 2, 3, 1).contiguous()
