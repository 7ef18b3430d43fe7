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
neighbour across a depth edge, a depth ratio beyond ``1 + EDGE_TOLERANCE``) or the depth
ratio source/target, whichever is larger, capped at ``max_footprint / 2`` pixels. A
footprint is half-open, so at unit magnification every target pixel is covered exactly once
(a warp into the source's own pose is the identity), and when the target sees a surface from
closer, neighbouring footprints meet, leaving no cracks up to a magnification of
``max_footprint``. Every (source pixel, covered target pixel) pair is one splat; a single
``scatter_reduce("amin")`` over int64 keys ``(depth bits, source index)`` resolves the
z-buffer and names the winner in one pass. The key's depth is raised by ``CENTRE_BIAS``
(relative) per unit of the splat's normalised squared distance from the target pixel's
centre (x and y offsets over the half-extents, squared and summed), so among splats of one
surface the best-centred one wins, while a surface nearer by more than that always wins.

Backends. Torch spends 5-20 us of dispatch per operation, which dominates a 64x64 warp; for
CPU inputs (``backend="auto"``) the nearest warp and the hole filling run the same algorithm
in NumPy (1-3 us per operation, contiguous 1-D passes where torch would use 2-D slices),
several times faster for a single stream and still faster at B = 16. The warps of the two
backends are equal bit for bit; the fills agree to float rounding (tests/test_warp.py).

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

__all__ = [
    "WarpResult", "FilledWarp", "unproject", "forward_warp", "fill_holes", "warp_and_fill", "NEAR", "CENTRE_BIAS",
    "RESOLUTION_TOLERANCE",
]

NEAR = 1e-3  # metres: points at or behind this target depth are dropped
CENTRE_BIAS = 0.01  # relative depth penalty of a splat at its footprint's edge (z-buffer tie-break)
EDGE_TOLERANCE = 0.1  # relative depth step between neighbours treated as a surface edge (footprints)
#: Resolution-aware fusion (``forward_warp(resolution_tolerance=...)``, the cameras' setting): views
#: magnified up to this factor times the sharpest view's magnification go by retrieval order. The
#: 5% is float slack, so that a view at the target's own pose (magnification 1 up to rounding)
#: keeps its place. An exploratory diagnostic (not a committed benchmark; scan regime, YMaze,
#: steps 11-60) gave reprojection sharpness ratios of 0.66-0.79 with 1.0 and 1.05 against
#: 0.60-0.72 with 1.25, at equal PSNR; the committed effect is docs/results/closed_loop.
RESOLUTION_TOLERANCE = 1.05
_NO_PRIORITY = 1 << 62  # the priority of a view that does not see the front surface at a pixel
MAX_DEPTH_KEY = 1e30  # metres: depths are clamped here before their bits enter the z-buffer keys

_IDX_BITS = 28  # source index bits in a z-buffer key; a warp holds at most 2**28 source pixels
_IDX_MASK = (1 << _IDX_BITS) - 1
_EMPTY = 1 << 60  # keys at or above this mark empty target pixels / invalid splats
_BIAS_SCALE = CENTRE_BIAS * (1 << 23)  # float32 bit steps per unit normalised squared distance


@dataclass
class WarpResult:
    """Per-view warps and their z-buffer fusion in the target camera.

    Attributes:
        rgb: (B, K, H, W, 3) float32 in [0, 1]; 0 where ``mask`` is False. None when
            :func:`forward_warp` was called with ``per_view=False``.
        depth: (B, K, H, W) float32 target-camera depth, metres; inf where ``mask`` is False.
        mask: (B, K, H, W) bool, True where view k covers the target pixel.
        fused_rgb: (B, H, W, 3) float32 in [0, 1]; 0 where ``fused_mask`` is False.
        fused_depth: (B, H, W) float32, metres; inf where ``fused_mask`` is False.
        fused_mask: (B, H, W) bool, True where any view covers the target pixel.
        fused_view: (B, H, W) int64, the view each fused pixel comes from; -1 where empty.
    """

    rgb: torch.Tensor | None
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


def _f32(x: float) -> float:
    """``x`` rounded to float32 (the value torch and NumPy use for a scalar with a float32 array)."""
    return float(np.float32(x))


@lru_cache(maxsize=32)
def _ray_components(intrinsics: Intrinsics, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(W,) x and (H,) y float32 components of the camera rays through pixel centres (z = -1; cached)."""
    h, w, f = intrinsics.height, intrinsics.width, intrinsics.focal
    x = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2.0) / f
    y = -(torch.arange(h, dtype=torch.float64) + 0.5 - h / 2.0) / f
    return x.to(device=device, dtype=torch.float32), y.to(device=device, dtype=torch.float32)


def _as_tensor(x: torch.Tensor | np.ndarray, name: str, device: torch.device | None = None) -> torch.Tensor:
    if torch.is_tensor(x):
        return x if device is None else x.to(device)
    try:
        return torch.as_tensor(np.asarray(x), device=device)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a tensor or an array, got {type(x).__name__}") from e


def _check_poses(poses: torch.Tensor, shape: tuple[int, ...], name: str, numpy: bool = False):  # noqa: ANN201
    """float64 poses after checking their shape and values (a NumPy array when ``numpy``)."""
    if tuple(poses.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(poses.shape)}")
    if numpy:
        out = poses.detach().numpy().astype(np.float64, copy=False)
        finite = bool(np.isfinite(out).all())
    else:
        out = poses.to(torch.float64)
        finite = bool(torch.isfinite(out).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _check_depth(depth: torch.Tensor, name: str, numpy: bool = False):  # noqa: ANN201
    """float32 depth after checking its dtype and sign (a NumPy array when ``numpy``)."""
    if not depth.is_floating_point():
        raise ValueError(f"{name} must be floating point metres, got dtype {depth.dtype}")
    if numpy:
        out = depth.detach().numpy().astype(np.float32, copy=False)
        negative = bool((out < 0).any())
    else:
        out = depth.to(torch.float32)
        negative = bool((out < 0).any())
    if negative:
        low = float(np.nanmin(out)) if numpy else float(out.nan_to_num(0.0).min())
        raise ValueError(f"{name} has negative values (min {low:.4g}); depth is >= 0")
    return out


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-extents in target pixels of every source pixel's footprint, and its magnification.

    Args:
        uv: (2, N, H, W) projected target coordinates x then y (pixel centres at +0.5).
        depth: (N, H, W) source depth.
        ratio: (N, H, W) source depth / target depth.
        ok: (N, H, W) bool, pixels that are warped.
        cap: the largest half-extent.

    Returns:
        (half, magnification). half: (2, N, H, W), half the local magnification along x and y
        (the bounding box of the projected spacing to the farther of the two neighbours along
        each source axis, ignoring neighbours across a depth edge: a depth ratio beyond
        ``1 + EDGE_TOLERANCE``), at least half the depth ratio, clamped to [0.5, cap].
        magnification: (N, H, W), the larger axis's spacing or the depth ratio, uncapped: target
        pixels per source pixel, what fusion compares (:data:`RESOLUTION_TOLERANCE`).
    """
    d = torch.where(ok, depth, math.nan)  # (N, H, W); NaN fails every comparison
    hi, lo = _f32(1.0 + EDGE_TOLERANCE), _f32(1.0 / (1.0 + EDGE_TOLERANCE))
    r = d[..., 1:] / d[..., :-1]
    same_j = (r <= hi) & (r >= lo)  # (N, H, W-1) same surface as the right neighbour
    r = d[:, 1:] / d[:, :-1]
    same_i = (r <= hi) & (r >= lo)  # (N, H-1, W) same surface as the one below
    gj = (uv[..., 1:] - uv[..., :-1]).abs_().mul_(same_j)  # (2, N, H, W-1)
    gi = (uv[:, :, 1:] - uv[:, :, :-1]).abs_().mul_(same_i)  # (2, N, H-1, W)
    spread = torch.maximum(F.pad(gj, (1, 0)), F.pad(gj, (0, 1)))  # (2, N, H, W)
    spread += torch.maximum(F.pad(gi, (0, 0, 1, 0)), F.pad(gi, (0, 0, 0, 1)))
    magnification = torch.maximum(torch.maximum(spread[0], spread[1]), ratio)  # (N, H, W)
    # a hair under half, so unit magnification never reaches a neighbour's centre through rounding
    return torch.maximum(spread, ratio).mul_(0.5).sub_(_f32(1e-4)).clamp_(0.5, cap), magnification


@lru_cache(maxsize=32)
def _torch_grids(
    intrinsics: Intrinsics, device: torch.device, b: int, k: int, n_cand: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached index grids of a warp of B x K views with C candidates per axis.

    Returns:
        src_idx (P,) source indices; view0 (P,) the padded z-buffer offset of each source
        pixel's view; offs (C, 1) float32 candidate offsets; fuse_base (B, H, W) int64, the
        flat (B, K, H, W) index of view 0's pixels.
    """
    h, w = intrinsics.height, intrinsics.width
    n_views, hw, hp, wp = b * k, h * w, h + 2 * n_cand, w + 2 * n_cand
    src_idx = torch.arange(n_views * hw, device=device)
    view0 = torch.arange(0, n_views * hp * wp, hp * wp, device=device)[:, None].expand(n_views, hw).reshape(-1)
    offs = torch.arange(n_cand, device=device, dtype=torch.float32)[:, None]
    fuse_base = (torch.arange(b, device=device) * (k * hw))[:, None] + torch.arange(hw, device=device)
    return src_idx, view0, offs, fuse_base.view(b, h, w)


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
    resolution_tolerance: float | None = None,
    priority: torch.Tensor | np.ndarray | None = None,
    near: float = NEAR,
    per_view: bool = True,
    backend: str = "auto",
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
        resolution_tolerance: None fuses by depth and retrieval order alone (above). A number
            (>= 1, e.g. :data:`RESOLUTION_TOLERANCE`) makes fusion resolution-aware: among the
            views within ``depth_tolerance`` of the nearest surface, those whose splat is
            magnified least win (target pixels per source pixel, from the footprint's
            projected spacing or the depth ratio, uncapped; anything at or below 1 counts as
            1), and among views magnified at most ``resolution_tolerance`` times the least, the
            earliest. A floor seen from 3 m in one stored view and 1.5 m in another then comes
            from the nearer view, however the views were ranked, while a view at the target's
            own pose (magnification 1) is still kept exactly.
        priority: optional (B, K) integers, lower is more trusted. Among the views of the front
            surface only those of the lowest priority at the pixel are fused (then resolution,
            then order decide among them): the cameras give observed frames 0 and generated
            ones 1, so a generated view never replaces an observed view of the same surface,
            however much sharper it samples it. None: all views are equal.
        near: target depths at or below this (metres) are dropped (behind the camera).
        per_view: False skips the per-view colours (``WarpResult.rgb`` is then None), which
            only the fused outputs' users do not need; per-view depth and mask are always given.
        backend: ``"auto"`` (NumPy for ``splat="nearest"`` on CPU without autograd, whose
            per-operation overhead is several times lower, else torch), ``"torch"`` or
            ``"numpy"`` (CPU, nearest only). Both compute the same result.

    Returns:
        A :class:`WarpResult` with per-view and fused rgb, depth and mask, on the device of
        ``frames`` (CPU for arrays).

    Raises:
        ValueError: on wrong shapes or dtypes, mismatched B / K between the inputs, a size that
            disagrees with ``intrinsics``, non-finite poses, negative depth, an unknown ``splat``
            or ``backend``.
    """
    if splat not in ("nearest", "bilinear"):
        raise ValueError(f"splat must be 'nearest' or 'bilinear', got {splat!r}")
    if int(max_footprint) not in (1, 2, 3, 4):
        raise ValueError(f"max_footprint must be 1, 2, 3 or 4 pixels, got {max_footprint}")
    if resolution_tolerance is not None and (
        isinstance(resolution_tolerance, bool)
        or not isinstance(resolution_tolerance, (int, float))
        or not (1.0 <= resolution_tolerance < math.inf)
    ):
        raise ValueError(f"resolution_tolerance must be None or a finite number >= 1, got {resolution_tolerance!r}")
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
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
    needs_grad = any(torch.is_tensor(x) and x.requires_grad for x in (frames, depths, src_poses, tgt_poses))
    np_dtypes = (torch.uint8, torch.float16, torch.float32, torch.float64)  # those NumPy shares
    use_np = backend == "numpy" or (
        backend == "auto"
        and splat == "nearest"
        and device.type == "cpu"
        and not needs_grad
        and frames_t.dtype in np_dtypes
        and depth_t.dtype in np_dtypes
    )
    if use_np and (splat != "nearest" or device.type != "cpu"):
        raise ValueError("backend='numpy' needs CPU inputs and splat='nearest'")
    depth_t = _check_depth(depth_t, "depths", numpy=use_np)
    src = _check_poses(_as_tensor(src_poses, "src_poses", device), (b, k, 4, 4), "src_poses", numpy=use_np)
    tgt = _check_poses(_as_tensor(tgt_poses, "tgt_poses", device), (b, 4, 4), "tgt_poses", numpy=use_np)
    n_views, hw = b * k, h * w
    n_pix = n_views * hw
    if n_pix > _IDX_MASK:
        raise ValueError(f"too many source pixels in one warp ({n_pix}); split the batch")
    valid_t = None
    if valid is not None:
        valid_t = _as_tensor(valid, "valid", device)
        if tuple(valid_t.shape) != (b, k):
            raise ValueError(f"valid must have shape (B, K) = {(b, k)}, got {tuple(valid_t.shape)}")
        valid_t = valid_t.to(torch.bool)
    priority_t = None
    if priority is not None:
        priority_t = _as_tensor(priority, "priority", device)
        if tuple(priority_t.shape) != (b, k) or priority_t.dtype.is_floating_point or priority_t.dtype == torch.bool:
            raise ValueError(
                f"priority must be (B, K) = {(b, k)} integers, got {tuple(priority_t.shape)} {priority_t.dtype}"
            )
        if bool((priority_t < 0).any()) or bool((priority_t >= _NO_PRIORITY).any()):
            raise ValueError(f"priority must be integers in [0, 2**62), got {priority_t.tolist()}")
        priority_t = priority_t.to(torch.int64)
    if use_np:
        return _forward_warp_np(
            frames_t.detach().numpy(),
            depth_t,
            src,
            tgt,
            None if valid_t is None else valid_t.numpy(),
            intrinsics,
            int(max_footprint),
            depth_tolerance,
            resolution_tolerance,
            None if priority_t is None else priority_t.numpy(),
            near,
            per_view,
        )

    # Source pixels in the target camera ---------------------------------------------------
    # source -> target transforms (BK, 3, 4), composed in NumPy float64 (tiny) so both backends agree exactly
    rel = torch.from_numpy(_compose_np(tgt.detach().cpu().numpy(), src.detach().cpu().numpy())).to(device)
    rows = rel.reshape(n_views, 3, 4).transpose(0, 1).contiguous()  # (3, BK, 4): row i of every view
    ok = (depth_t > 0) & (depth_t < math.inf)  # (B, K, H, W); NaN fails both
    if valid_t is not None:
        ok &= valid_t[:, :, None, None]
    ok = ok.view(n_views, h, w)
    d_src = torch.where(ok, depth_t.view(n_views, h, w), 1.0)  # (BK, H, W), finite everywhere
    ray_x, ray_y = _ray_components(intrinsics, device)
    # camera-frame rays (x_u, y_v, -1) turned into the target frame: (R_0 x_u - R_2) + R_1 y_v
    pts = (rows[..., 0, None] * ray_x - rows[..., 2, None])[:, :, None, :] + (rows[..., 1, None] * ray_y)[..., None]
    pts = pts.contiguous().mul_(d_src).add_(rows[..., 3, None, None])  # (3, BK, H, W)
    z_t = pts[2].neg()  # (BK, H, W) target depth
    ok &= z_t > near
    inv_z = z_t.clamp(min=near).reciprocal_()  # (BK, H, W); z_t where ok, finite everywhere
    uv = pts[:2].mul_(inv_z * _f32(intrinsics.focal))  # (2, BK, H, W) x right, y up
    uv[0].add_(w / 2.0)  # target pixel coordinates
    uv[1].neg_().add_(h / 2.0)
    cap = 0.5 * max_footprint
    half, magnification = _footprint(uv, d_src, d_src * inv_z, ok, cap)  # (2, BK, H, W), (BK, H, W)

    # Candidate target pixels per axis: (2 axes x then y, C candidates, P source pixels) ----------
    # Target buffers are padded by C pixels on every side, so no candidate needs a bounds test.
    ext = 0.5 if splat == "bilinear" else 0.0
    n_cand = math.ceil(2 * (cap + ext))
    hp, wp = h + 2 * n_cand, w + 2 * n_cand
    src_idx, view0, offs, fuse_base = _torch_grids(intrinsics, device, b, k, n_cand)
    uv = uv.view(2, n_pix)
    half = half.view(2, n_pix)
    if ext:
        half += ext
    first = torch.sub(uv, half).sub_(0.5).ceil_()  # (2, P) first pixel whose centre is in [uv - half, ...)
    first[0].clamp_(-n_cand, w)
    first[1].clamp_(-n_cand, h)
    offset = (first - uv).add_(0.5)[:, None].add(offs).mul_(half.reciprocal()[:, None])  # (2, C, P) in [-1, 1)
    outside = offset >= 1.0
    if ext:  # drop (near-)weightless splats, which would only fatten edges
        outside |= offset.abs() >= 1.0 - 1e-3
    # centre bias in float32-bit steps; outside splats get 2**33 << 28 = 2**61, which marks their keys empty
    sq = offset * offset  # (2, C, P)
    bias = (sq[1][:, None] + sq[0][None]).mul_(_f32(_BIAS_SCALE))  # (C, C, P) target rows then columns
    bias.masked_fill_(outside[1][:, None] | outside[0][None], float(1 << 33))
    cand = first.to(torch.int64)  # (2, P) first candidate, unpadded

    # Z-buffer: one amin over int64 keys (depth bits + centre bias, source index) --------------
    flat_z = z_t.view(n_pix)
    zbits = flat_z.clamp(max=MAX_DEPTH_KEY).view(torch.int32).to(torch.int64)  # ok pixels have z > near
    base = zbits.bitwise_left_shift_(_IDX_BITS).bitwise_or_(src_idx).masked_fill_(~ok.view(n_pix), _EMPTY)  # (P,)
    keys = bias.to(torch.int64).bitwise_left_shift_(_IDX_BITS).add_(base)  # (C, C, P)
    slot0 = cand[1].mul_(wp).add_(cand[0]).add_(view0)  # (P,) padded slot of candidate (0, 0) minus the pad
    cand_off = (offs.to(torch.int64) * wp + (n_cand * wp + n_cand))[:, None] + offs.to(torch.int64)[None]
    slots = slot0 + cand_off  # (C, C, P)
    zbuf = torch.full((n_views, hp, wp), torch.iinfo(torch.int64).max, device=device, dtype=torch.int64)
    zbuf.view(-1).scatter_reduce_(0, slots.view(-1), keys.view(-1), "amin")
    zbuf = zbuf[:, n_cand : n_cand + h, n_cand : n_cand + w]  # (BK, H, W) crop the padding
    mask = zbuf < _EMPTY  # (BK, H, W) target pixels of every view
    winner = (zbuf & _IDX_MASK).clamp_(max=n_pix - 1).view(b, k, h, w)  # source pixel index
    depth_v = torch.where(mask.view(b, k, h, w), flat_z.take(winner), math.inf)  # (B, K, H, W)
    mask_v = mask.view(b, k, h, w)
    flat_rgb = frames_t.reshape(n_pix, 3)
    scale = 1.0 / 255.0 if frames_t.dtype == torch.uint8 else 1.0

    # Fusion over views: nearest surface, earlier view among near-equal depths -----------------
    nearest = depth_v.amin(1)  # (B, H, W)
    fused_mask = nearest < math.inf  # (B, H, W)
    limit = nearest * _f32(1.0 + depth_tolerance)
    front = depth_v <= limit[:, None]  # (B, K, H, W) views that see the front surface
    if priority_t is not None:  # of those, only the most trusted class (observed before generated)
        prio = torch.where(front, priority_t[:, :, None, None], _NO_PRIORITY)  # (B, K, H, W)
        front &= prio == prio.amin(1, keepdim=True)
    view = torch.zeros((b, h, w), dtype=torch.int64, device=device)
    if resolution_tolerance is None:
        for j in range(k - 1, -1, -1):  # the earliest view within the tolerance wins
            view.masked_fill_(front[:, j], j)
    else:
        # the front surface's sharpest views (least magnified; any view at or above the target's
        # resolution counts as 1), the earliest of those within the tolerance of the best
        mag = magnification.reshape(-1).take(winner).clamp_(min=1.0)  # (B, K, H, W)
        mag = torch.where(front, mag, math.inf)
        accept = mag.amin(1) * _f32(resolution_tolerance)  # (B, H, W)
        for j in range(k - 1, -1, -1):
            view.masked_fill_(mag[:, j] <= accept, j)
    pick = view * hw + fuse_base  # (B, H, W) flat index into (B, K, H, W)
    fused_depth = depth_v.take(pick)
    fused_view = torch.where(fused_mask, view, -1)

    if splat == "nearest":
        fused_rgb = flat_rgb.index_select(0, winner.take(pick).view(-1)).to(torch.float32)  # (BHW, 3)
        fused_rgb *= fused_mask.view(-1, 1) * scale if scale != 1.0 else fused_mask.view(-1, 1)
        fused_rgb = fused_rgb.view(b, h, w, 3)
        rgb = None
        if per_view:
            rgb = flat_rgb.index_select(0, winner.view(-1)).to(torch.float32)  # (P, 3)
            rgb *= mask.view(n_pix, 1) * scale if scale != 1.0 else mask.view(n_pix, 1)
            rgb = rgb.view(b, k, h, w, 3)
    else:
        pad_depth = torch.full((n_views, hp, wp), math.inf, device=device)
        pad_depth[:, n_cand : n_cand + h, n_cand : n_cand + w] = depth_v.view(n_views, h, w)
        weight = (1.0 - offset.abs()).clamp_(min=0.0)  # (2, C, P) tent per axis
        weight = weight[1][:, None] * weight[0][None]  # (C, C, P)
        front = pad_depth.view(-1)[slots] * (1.0 + depth_tolerance)  # (C, C, P) z-test against the winner
        keep = (keys < _EMPTY) & (flat_z <= front)
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
        rgb = rgb.view(b, k, h, w, 3)
        fused_rgb = rgb.view(-1, 3).index_select(0, pick.view(-1)).view(b, h, w, 3)
        if not per_view:
            rgb = None
    return WarpResult(rgb, depth_v, mask_v, fused_rgb, fused_depth, fused_mask, fused_view)


# --------------------------------------------------------------------------------------
# NumPy path (small CPU batches)
# --------------------------------------------------------------------------------------
# Torch spends 5-20 us of dispatch per operation, which dominates a 64x64 warp (~100
# operations on arrays of a few thousand elements); NumPy spends 1-3 us. For CPU inputs
# :func:`forward_warp` and :func:`fill_holes` therefore run the same algorithm in NumPy
# (``backend="auto"``); it computes the same arithmetic in the same order, so the two paths
# agree (tests/test_warp.py checks that they do).

_F32 = np.float32
_INT64_MAX = np.iinfo(np.int64).max


@lru_cache(maxsize=32)
def _np_grids(intrinsics: Intrinsics, b: int, k: int, n_cand: int) -> tuple[np.ndarray, ...]:
    """Cached read-only index grids of a warp of B x K views with C candidates per axis.

    Returns:
        ray_x (W,), ray_y (H,) float32 camera-ray components (z = -1); src_idx (BK, H, W)
        int64 source indices; slot_base (BK, 1, 1) int64, the padded z-buffer slot of view
        v's pixel (0, 0); fuse_base (B, HW) int64, the flat (B, K, HW) index of view 0's pixels.
    """
    h, w = intrinsics.height, intrinsics.width
    ray_x, ray_y = (r.numpy() for r in _ray_components(intrinsics, torch.device("cpu")))
    n_views, hp, wp = b * k, h + 2 * n_cand, w + 2 * n_cand
    src_idx = np.arange(n_views * h * w, dtype=np.int64).reshape(n_views, h, w)
    slot_base = (np.arange(n_views, dtype=np.int64) * (hp * wp) + (n_cand * wp + n_cand))[:, None, None]
    fuse_base = (np.arange(b, dtype=np.int64) * (k * h * w))[:, None] + np.arange(h * w, dtype=np.int64)
    out = (ray_x, ray_y, src_idx, slot_base, fuse_base)
    for a in out:
        a.flags.writeable = False
    return out


@lru_cache(maxsize=16)
def _np_neighbours(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only neighbour masks over flat (N, H, W) indices p.

    Returns:
        right (N*H*W - 1,): p + 1 is p's right neighbour; below (N*H*W - W,): p + W is the one below.
    """
    p = np.arange(n * h * w)
    right = (p[:-1] % w) != w - 1
    below = ((p[:-w] // w) % h) != h - 1
    right.flags.writeable = False
    below.flags.writeable = False
    return right, below


def _footprint_np(
    uv: np.ndarray, depth: np.ndarray, ratio: np.ndarray, ok: np.ndarray, cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy :func:`_footprint` (same arithmetic): (half, magnification), magnification flat (N*H*W).

    Works on flat (N*H*W) rows, where a pixel's right neighbour is 1 further and the one below
    W further (pairs across a row's or an image's end are masked out): contiguous 1-D
    operations, several times faster than NumPy's strided 2-D slices of 64-pixel rows.
    """
    n, h, w = depth.shape
    m = n * h * w
    d, okf = depth.reshape(m), ok.reshape(m)  # depth: finite and > 0 everywhere
    u = uv.reshape(2, m)
    hi, lo = _F32(1.0 + EDGE_TOLERANCE), _F32(1.0 / (1.0 + EDGE_TOLERANCE))
    right, below = _np_neighbours(n, h, w)
    spread = None
    for step, pair in ((1, right), (w, below)):
        r = d[step:] / d[:-step]
        same = r <= hi
        same &= r >= lo
        same &= pair  # (M - step,) same surface as the neighbour, both warped
        same &= okf[step:]
        same &= okf[:-step]
        g = np.empty((2, m + step), dtype=_F32)  # |spacing| to the neighbour, zero-padded on both sides
        g[:, :step] = 0.0
        g[:, m:] = 0.0
        inner = g[:, step:m]
        np.subtract(u[:, step:], u[:, :-step], out=inner)
        np.abs(inner, out=inner)
        inner *= same
        if spread is None:
            spread = np.maximum(g[:, :m], g[:, step:])  # (2, M) the farther of the two neighbours
        else:
            spread += np.maximum(g[:, :m], g[:, step:], out=g[:, :m])
    magnification = np.maximum(np.maximum(spread[0], spread[1]), ratio.reshape(m))  # (M,)
    np.maximum(spread, ratio.reshape(m), out=spread)
    spread *= _F32(0.5)
    spread -= _F32(1e-4)
    return np.clip(spread, _F32(0.5), _F32(cap), out=spread).reshape(uv.shape), magnification


def _compose_np(tgt: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(B, K, 3, 4) float32 source-to-target transforms inverse(tgt) @ src of float64 rigid poses."""
    rot_t = np.swapaxes(tgt[:, :3, :3], -1, -2)  # (B, 3, 3)
    inv = np.empty((tgt.shape[0], 3, 4))
    inv[:, :, :3] = rot_t
    inv[:, :, 3:] = -(rot_t @ tgt[:, :3, 3:])
    return (inv[:, None] @ src).astype(_F32)


def _forward_warp_np(
    frames: np.ndarray,
    depth: np.ndarray,
    src: np.ndarray,
    tgt: np.ndarray,
    valid: np.ndarray | None,
    intrinsics: Intrinsics,
    max_footprint: int,
    depth_tolerance: float,
    resolution_tolerance: float | None,
    priority: np.ndarray | None,
    near: float,
    per_view: bool,
) -> WarpResult:
    """NumPy ``forward_warp(splat="nearest")`` of validated inputs (depth float32, poses float64)."""
    b, k, h, w, _ = frames.shape
    n_views, hw = b * k, h * w
    n_pix = n_views * hw
    cap = 0.5 * max_footprint
    n_cand = math.ceil(2 * cap)
    wp = w + 2 * n_cand
    ray_x, ray_y, src_idx, slot_base, fuse_base = _np_grids(intrinsics, b, k, n_cand)

    # Source pixels in the target camera
    rows = np.swapaxes(_compose_np(tgt, src).reshape(n_views, 3, 4), 0, 1)  # (3, BK, 4): row i of every view
    ok = (depth > 0) & (depth < np.inf)  # NaN fails both
    if valid is not None:
        ok &= valid[:, :, None, None]
    ok = ok.reshape(n_views, h, w)
    d_src = np.where(ok, depth.reshape(n_views, h, w), _F32(1.0))  # (BK, H, W)
    # camera-frame rays (x_u, y_v, -1) turned into the target frame: (R_0 x_u - R_2) + R_1 y_v
    pts = (rows[..., 0, None] * ray_x - rows[..., 2, None])[:, :, None, :] + (rows[..., 1, None] * ray_y)[..., None]
    pts *= d_src
    pts += rows[..., 3, None, None]  # (3, BK, H, W)
    z_ext = np.empty(n_pix + 1, dtype=_F32)  # target depth, then inf for the winner of empty pixels
    z_t = np.negative(pts[2], out=z_ext[:n_pix].reshape(n_views, h, w))  # (BK, H, W)
    z_ext[n_pix] = np.inf
    ok &= z_t > _F32(near)
    inv_z = np.maximum(z_t, _F32(near))  # z_t where ok; finite everywhere
    np.reciprocal(inv_z, out=inv_z)
    uv = pts[:2]
    uv *= inv_z * _F32(intrinsics.focal)  # (2, BK, H, W)
    uv[0] += _F32(w / 2.0)
    np.subtract(_F32(h / 2.0), uv[1], out=uv[1])
    half, magnification = _footprint_np(uv, d_src, d_src * inv_z, ok, cap)
    half = half.reshape(2, n_pix)

    # Candidate target pixels, their centre bias and z-buffer keys
    uv = uv.reshape(2, n_pix)
    first = uv - half
    first -= _F32(0.5)
    np.ceil(first, out=first)
    np.clip(first[0], -n_cand, w, out=first[0])
    np.clip(first[1], -n_cand, h, out=first[1])
    base_off = first - uv
    base_off += _F32(0.5)
    inv_half = np.reciprocal(half)
    flat_ok = ok.reshape(n_pix)
    zbits = np.minimum(z_t, _F32(MAX_DEPTH_KEY)).reshape(n_pix).view(np.int32).astype(np.int64)
    zbits <<= _IDX_BITS
    zbits |= src_idx.reshape(n_pix)  # (P,) keys without the centre bias
    slot = first[1].astype(np.int64)
    slot *= wp
    slot += first[0].astype(np.int64)  # candidate (0, 0), less the view's offset
    # candidate (0, 0) of every source pixel, dense; the others only where inside the footprint
    offset = [base_off * inv_half]  # per candidate c: (2, P) offsets from the footprint centre in [-1, 1)
    inside = [(offset[0] < _F32(1.0)) & flat_ok]
    for c in range(1, n_cand):
        off = base_off + _F32(c)
        off *= inv_half
        offset.append(off)
        inside.append((off < _F32(1.0)) & flat_ok)
    # the other candidates (cy, cx), few (a footprint mostly covers one pixel): scan the candidates
    # >= 1 of one axis once, then test the other axis there
    scanned: dict[tuple[int, int], np.ndarray] = {}
    extra = []  # (cy, cx, source pixels whose candidate (cy, cx) is inside)
    for cy in range(n_cand):
        for cx in range(n_cand):
            if cy == cx == 0:
                continue
            axis, c, other, oc = (1, cy, 0, cx) if cy else (0, cx, 1, cy)
            if (axis, c) not in scanned:
                scanned[axis, c] = np.flatnonzero(inside[c][axis])
            idx = scanned[axis, c]
            extra.append((cy, cx, idx[inside[oc][other].take(idx)]))
    n_keys = n_pix + sum(len(e[2]) for e in extra)
    key, slots = np.empty(n_keys, dtype=np.int64), np.empty(n_keys, dtype=np.int64)
    sq = offset[0] * offset[0]
    bias = sq[1] + sq[0]
    bias *= _F32(_BIAS_SCALE)
    dense = key[:n_pix]
    with np.errstate(invalid="ignore"):  # NaN biases belong to unwarped pixels, marked empty below
        dense[:] = bias
    dense <<= _IDX_BITS
    dense += zbits
    dense[~(inside[0][1] & inside[0][0])] = _EMPTY | _IDX_MASK  # empty, and names no source pixel
    np.add(slot.reshape(n_views, hw), slot_base.reshape(n_views, 1), out=slots[:n_pix].reshape(n_views, hw))
    start = n_pix
    for cy, cx, idx in extra:
        stop = start + len(idx)
        oy, ox = offset[cy][1].take(idx), offset[cx][0].take(idx)
        bias = oy * oy + ox * ox
        bias *= _F32(_BIAS_SCALE)
        part = key[start:stop]
        part[:] = bias
        part <<= _IDX_BITS
        part += zbits.take(idx)
        np.add(slots.take(idx), cy * wp + cx, out=slots[start:stop])
        start = stop
    slot = slots

    # Z-buffer: one amin over all views' keys
    zbuf = torch.full((n_views * (h + 2 * n_cand) * wp,), _INT64_MAX, dtype=torch.int64)
    zbuf.scatter_reduce_(0, torch.from_numpy(slot), torch.from_numpy(key), "amin")
    zbuf = zbuf.numpy().reshape(n_views, h + 2 * n_cand, wp)[:, n_cand : n_cand + h, n_cand : n_cand + w]
    mask = (zbuf < _EMPTY).reshape(b, k, hw)  # (B, K, HW)
    winner = np.minimum(zbuf & _IDX_MASK, n_pix).reshape(b, k, hw)  # n_pix where empty
    depth_v = z_ext.take(winner)  # (B, K, HW), inf where empty

    # Fusion over views: nearest surface, earlier view among near-equal depths
    nearest = depth_v[:, 0]
    for j in range(1, k):
        nearest = np.minimum(nearest, depth_v[:, j])
    fused_mask = nearest < np.inf  # (B, HW)
    limit = nearest * _F32(1.0 + depth_tolerance)
    view = np.zeros((b, hw), dtype=np.int64)
    front = depth_v <= limit[:, None]  # (B, K, HW) views that see the front surface
    if priority is not None:  # as the torch path: only the most trusted class
        prio = np.where(front, priority[:, :, None], _NO_PRIORITY)
        front &= prio == prio.min(axis=1, keepdims=True)
    if resolution_tolerance is None:
        for j in range(k - 1, -1, -1):  # the earliest view within the tolerance wins
            view[front[:, j]] = j
    else:  # as the torch path: the earliest of the front surface's sharpest views
        mag_ext = np.empty(n_pix + 1, dtype=_F32)
        np.maximum(magnification, _F32(1.0), out=mag_ext[:n_pix])
        mag_ext[n_pix] = np.inf
        mag = mag_ext.take(winner)  # (B, K, HW), inf where empty
        mag[~front] = np.inf
        accept = mag.min(axis=1) * _F32(resolution_tolerance)  # (B, HW)
        for j in range(k - 1, -1, -1):
            view[mag[:, j] <= accept] = j
    pick = view * hw
    pick += fuse_base  # (B, HW) flat index into (B, K, HW)
    fused_depth = depth_v.reshape(-1).take(pick)
    flat_rgb = np.empty((n_pix + 1, 3), dtype=frames.dtype)  # the colours, then black for empty pixels
    flat_rgb[:n_pix] = frames.reshape(n_pix, 3)
    flat_rgb[n_pix] = 0
    scale = _F32(1.0 / 255.0) if frames.dtype == np.uint8 else _F32(1.0)
    fused_win = winner.reshape(-1).take(pick.reshape(-1))  # (B * HW,) n_pix where empty
    fused_rgb = np.multiply(flat_rgb.take(fused_win, axis=0), scale, dtype=_F32)
    fused_view = np.where(fused_mask, view, -1)
    rgb = None
    if per_view:
        rgb = np.multiply(flat_rgb.take(winner.reshape(-1), axis=0), scale, dtype=_F32)  # (P, 3)
        rgb = torch.from_numpy(rgb.reshape(b, k, h, w, 3))
    return WarpResult(
        rgb,
        torch.from_numpy(depth_v.reshape(b, k, h, w)),
        torch.from_numpy(mask.reshape(b, k, h, w)),
        torch.from_numpy(fused_rgb.reshape(b, h, w, 3)),
        torch.from_numpy(fused_depth.reshape(b, h, w)),
        torch.from_numpy(fused_mask.reshape(b, h, w)),
        torch.from_numpy(fused_view.reshape(b, h, w)),
    )


@lru_cache(maxsize=64)
def _np_linear(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of torch's ``interpolate(mode="bilinear", align_corners=False)`` on one axis."""
    scale = _F32(n_in / n_out)
    src = (np.arange(n_out, dtype=_F32) + _F32(0.5)) * scale - _F32(0.5)
    np.maximum(src, _F32(0.0), out=src)
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < n_in - 1)
    lam1 = src - i0.astype(_F32)
    lam0 = _F32(1.0) - lam1
    for a in (i0, i1, lam0, lam1):
        a.flags.writeable = False
    return i0, i1, lam0, lam1


def _fill_holes_np(
    rgb: np.ndarray, mask: np.ndarray, depth: np.ndarray | None, fallback: np.ndarray, depth_power: float
) -> np.ndarray:
    """NumPy :func:`fill_holes`: rgb (B, H, W, C) float32, mask (B, H, W) bool -> (B, H, W, C) float32."""
    b, h, w, c = rgb.shape
    wgt = mask.astype(_F32)  # (B, H, W)
    if depth is not None:
        d = np.where(mask & (depth > 0) & (depth < np.inf), depth.astype(_F32, copy=False), _F32(0.0))
        d /= np.maximum(d.reshape(b, -1).max(1), _F32(1e-12))[:, None, None]  # in [0, 1]
        d = np.square(d) if depth_power == 2.0 else np.power(d, _F32(depth_power))
        wgt *= np.maximum(d, _F32(1e-12))
    # channels first (inner loops over whole rows): premultiplied colour channels, then the weight
    rgb_cf, known = rgb.transpose(0, 3, 1, 2), mask[:, None]  # (B, C, H, W) view, (B, 1, H, W)
    x = np.empty((b, c + 1, h, w), dtype=_F32)
    with np.errstate(invalid="ignore"):
        np.multiply(rgb_cf, wgt[:, None], out=x[:, :c])  # unknown pixels weigh 0 ...
    if np.isnan(x[:, :c]).any():  # ... unless their colour is not finite
        np.multiply(np.where(known, rgb_cf, _F32(0.0)), wgt[:, None], out=x[:, :c])
    x[:, c] = wgt

    # Push, until a level is known everywhere (coarser levels would not change anything)
    levels = [x]
    while (x.shape[2] > 1 or x.shape[3] > 1) and not (x[:, c] > 0).all():
        hh, ww = x.shape[2], x.shape[3]
        if hh % 2 or ww % 2:  # ceil mode: pad with zeros, divide by the pixels inside
            xp = np.zeros((b, c + 1, hh + hh % 2, ww + ww % 2), dtype=_F32)
            xp[:, :, :hh, :ww] = x
            count = np.full((xp.shape[2] // 2, xp.shape[3] // 2), 4.0, dtype=_F32)
            if hh % 2:
                count[-1] /= 2
            if ww % 2:
                count[:, -1] /= 2
        else:
            xp, count = x, _F32(4.0)
        x = xp[:, :, 0::2] + xp[:, :, 1::2]
        x = x[..., 0::2] + x[..., 1::2]
        x /= count
        levels.append(x)
    # Pull down to the second finest level, whole levels at a time
    filled = levels[-1]
    for lev in levels[-2:0:-1]:
        r0, r1, rl0, rl1 = _np_linear(filled.shape[2], lev.shape[2])
        c0, c1, cl0, cl1 = _np_linear(filled.shape[3], lev.shape[3])
        t = filled.take(c0, axis=3) * cl0 + filled.take(c1, axis=3) * cl1
        up = t.take(r0, axis=2) * rl0[:, None] + t.take(r1, axis=2) * rl1[:, None]
        filled = np.where(lev[:, c:] > 0, lev, up)
    # the finest level: known pixels keep their colour, so only the holes need the upsampled ratio
    out = rgb.copy()
    bi, yi, xi = np.nonzero(~mask)
    if len(bi):
        r0, r1, rl0, rl1 = (a.take(yi) for a in _np_linear(filled.shape[2], h))
        c0, c1, cl0, cl1 = (a.take(xi) for a in _np_linear(filled.shape[3], w))
        cl0, cl1 = cl0[:, None], cl1[:, None]
        ft = filled.transpose(0, 2, 3, 1)  # (B, h', w', C + 1) view
        t0 = ft[bi, r0, c0] * cl0 + ft[bi, r0, c1] * cl1  # (holes, C + 1)
        t1 = ft[bi, r1, c0] * cl0 + ft[bi, r1, c1] * cl1
        up = t0 * rl0[:, None] + t1 * rl1[:, None]
        den = up[:, c:]  # zero only in an image with nothing known
        out[bi, yi, xi] = np.where(den > 0, up[:, :c] / np.maximum(den, _F32(1e-30)), fallback)
    return out


# --------------------------------------------------------------------------------------
# Hole filling
# --------------------------------------------------------------------------------------


def fill_holes(
    rgb: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    depth: torch.Tensor | np.ndarray | None = None,
    fallback: float | tuple[float, ...] | torch.Tensor = 0.5,
    depth_power: float = 2.0,
    *,
    backend: str = "auto",
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
        backend: ``"auto"`` (NumPy for CPU inputs without autograd, torch otherwise),
            ``"torch"`` or ``"numpy"`` (CPU only); both compute the same result up to float
            rounding.

    Returns:
        (B, H, W, C) float32 filled image on ``rgb``'s device.

    Raises:
        ValueError: on wrong shapes or a fallback of the wrong length.
    """
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
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
    depth_t = None
    if depth is not None:
        depth_t = _as_tensor(depth, "depth", device)
        if tuple(depth_t.shape) != (b, h, w):
            raise ValueError(f"depth must have shape (B, H, W) = {(b, h, w)}, got {tuple(depth_t.shape)}")
    use_np = backend == "numpy" or (
        backend == "auto"
        and device.type == "cpu"
        and not rgb_t.requires_grad
        and rgb_t.dtype in (torch.uint8, torch.float16, torch.float32, torch.float64)
        and (depth_t is None or depth_t.dtype in (torch.float16, torch.float32, torch.float64))
    )
    if use_np:
        if device.type != "cpu":
            raise ValueError("backend='numpy' needs CPU inputs")
        out = _fill_holes_np(
            rgb_t.detach().numpy().astype(np.float32, copy=False),
            mask_t.numpy(),
            None if depth_t is None else depth_t.detach().numpy(),
            fb.expand(c).numpy(),
            depth_power,
        )
        return torch.from_numpy(out)
    rgb_t = rgb_t.to(torch.float32)
    known = mask_t[:, None]  # (B, 1, H, W)
    wgt = known.to(torch.float32)  # (B, 1, H, W)
    if depth_t is not None:
        d = torch.where(mask_t & (depth_t > 0) & (depth_t < math.inf), depth_t.to(torch.float32), 0.0)
        d = d / d.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]  # (B, H, W) in [0, 1]
        wgt = wgt * d[:, None].pow(depth_power).clamp(min=1e-12)
    # premultiplied colour channels, then the weight: (B, C + 1, H, W)
    x = torch.cat([torch.where(known, rgb_t.permute(0, 3, 1, 2), 0.0) * wgt, wgt], 1)

    # Push, until a level is known everywhere (coarser levels would not change anything)
    levels = [x]
    while (x.shape[-2] > 1 or x.shape[-1] > 1) and not bool((x[:, -1] > 0).all()):
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


# --------------------------------------------------------------------------------------
# Warp, fuse and fill in one call (the frame model's target-aligned input)
# --------------------------------------------------------------------------------------


@dataclass
class FilledWarp:
    """The fused warp of K views into each target camera with its holes filled.

    Attributes:
        rgb: (B, H, W, 3) float32 in [0, 1], every pixel filled.
        depth: (B, H, W) float32 metres along the target camera's optical axis, every pixel
            filled, finite and positive.
        mask: (B, H, W) bool, True where some view covers the target pixel (the rest is filled).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor


def warp_and_fill(
    frames: torch.Tensor | np.ndarray,
    depths: torch.Tensor | np.ndarray,
    src_poses: torch.Tensor | np.ndarray,
    tgt_poses: torch.Tensor | np.ndarray,
    intrinsics: Intrinsics,
    *,
    valid: torch.Tensor | np.ndarray | None = None,
    far: float = 1.0e4,
    splat: str = "nearest",
    depth_tolerance: float = 0.1,
    resolution_tolerance: float | None = RESOLUTION_TOLERANCE,
    priority: torch.Tensor | np.ndarray | None = None,
    backend: str = "auto",
) -> FilledWarp:
    """Warp K posed RGB-D views per batch item into the target camera, fuse them and fill the holes.

    :func:`forward_warp` (nearest surface wins; among views of it, the least magnified, then
    the earlier: resolution-aware fusion) then
    :func:`fill_holes` for the colours and for the log-depth, both weighted towards the far side
    of a hole (a disocclusion reveals background). Depth ``inf`` (nothing hit) is warped as a
    point at ``far`` metres, so a turn moves it as it should; NaN and 0 are not warped. A
    target that no view covers at all gets the mean colour of its valid views and the geometric
    mean of their known depths (``far`` when none is known).

    Args:
        frames: (B, K, H, W, 3) uint8 or float in [0, 1].
        depths: (B, K, H, W) metres along each source camera's optical axis.
        src_poses: (B, K, 4, 4) camera-to-world poses of the views.
        tgt_poses: (B, 4, 4) camera-to-world poses of the targets.
        intrinsics: shared pinhole intrinsics.
        valid: optional (B, K) bool; False marks padding views.
        far: metres at which depth ``inf`` is warped (finite, positive).
        splat: as :func:`forward_warp`.
        depth_tolerance: as :func:`forward_warp` (0.1, as the reprojection camera).
        resolution_tolerance: as :func:`forward_warp` (:data:`RESOLUTION_TOLERANCE`, as the
            reprojection camera; None: depth and view order alone).
        priority: as :func:`forward_warp` (observed 0, generated 1).
        backend: as :func:`forward_warp` and :func:`fill_holes`.

    Returns:
        A :class:`FilledWarp` on the device of ``frames``.

    Raises:
        ValueError: as :func:`forward_warp`, or for a ``far`` that is not finite and positive.
    """
    if not (isinstance(far, (int, float)) and math.isfinite(far) and far > 0):
        raise ValueError(f"far must be a positive finite number of metres, got {far!r}")
    frames_t = _as_tensor(frames, "frames")
    device = frames_t.device
    depth_t = _as_tensor(depths, "depths", device)
    if not depth_t.is_floating_point():
        raise ValueError(f"depths must be floating point metres, got dtype {depth_t.dtype}")
    depth_t = torch.where(torch.isposinf(depth_t), torch.tensor(far, dtype=depth_t.dtype, device=device), depth_t)
    res = forward_warp(frames_t, depth_t, src_poses, tgt_poses, intrinsics, valid=valid, splat=splat,
                       depth_tolerance=depth_tolerance, resolution_tolerance=resolution_tolerance,
                       priority=priority, per_view=False, backend=backend)
    mask = res.fused_mask  # (B, H, W)
    rgb = fill_holes(res.fused_rgb, mask, depth=res.fused_depth, backend=backend)  # (B, H, W, 3)
    log_depth = torch.where(mask, res.fused_depth, 1.0).log()[..., None]  # (B, H, W, 1)
    depth = fill_holes(log_depth, mask, depth=res.fused_depth, backend=backend)[..., 0].exp()  # (B, H, W)

    empty = ~mask.flatten(1).any(dim=1)  # (B,) targets no view covers
    if bool(empty.any()):
        b, k = depth_t.shape[:2]
        use = torch.ones(b, k, dtype=torch.bool, device=device)
        if valid is not None:
            use = _as_tensor(valid, "valid", device).to(torch.bool)
        colours = frames_t.to(torch.float32) / (255.0 if frames_t.dtype == torch.uint8 else 1.0)  # (B, K, H, W, 3)
        wv = use.to(torch.float32)[..., None]  # (B, K, 1)
        mean_rgb = (colours.mean(dim=(2, 3)) * wv).sum(1) / wv.sum(1).clamp(min=1.0)  # (B, 3)
        known = (depth_t > 0) & (depth_t < math.inf) & use[:, :, None, None]  # (B, K, H, W); NaN is False
        logs = torch.where(known, depth_t.to(torch.float32), 1.0).log()
        count = known.flatten(1).sum(1)  # (B,)
        mean_log = torch.where(count > 0, (logs * known).flatten(1).sum(1) / count.clamp(min=1), math.log(far))
        rgb = torch.where(empty[:, None, None, None], mean_rgb.to(rgb.device)[:, None, None, :], rgb)
        depth = torch.where(empty[:, None, None], mean_log.exp().to(depth.device)[:, None, None], depth)
    return FilledWarp(rgb, depth.to(torch.float32), mask)
