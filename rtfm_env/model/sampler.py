"""The frame model's rectified flow: its path, training loss and few-step sampler.

The flow runs from a start x0 at t = 0 to the target frame x1 at t = 1 along the straight line
x_t = (1 - t) x0 + t x1. By default x0 is the context view whose camera is closest to the
target's plus Gaussian noise (``flow_start = "context"``, std ``flow_sigma``), so the flow only
has to carry the nearest view to the new one; ``flow_start = "noise"`` starts from N(0, 1).
The network predicts the clean target x1_hat; the sampler's Euler velocity is
(x1_hat - x_t) / (1 - t), so the last step lands exactly on the predicted frame.

Version 2 (``warp_start``, see :data:`rtfm_env.model.network.V2`): the context views,
warped with their depth into the target camera and fused (:func:`target_warp`), are the
network's target-aligned input and the flow's start: x0 = warp + ``flow_sigma`` noise where a
view covers the pixel, and warp fill + ``hole_sigma`` noise (1: as good as pure noise) where
none does. So the sampler stays near the warp where it is known and samples, rather than
averages, where it is not; with ``residual`` an untrained network returns the warp exactly. With
``keep_warp`` the covered pixels are the warp itself (:func:`keep_covered`): the network only
paints what no context view saw. The
network also predicts the target's depth (``generate(..., return_depth=True)``), so a generated
frame can be stored and warped later like an observed one. Training adds noise of a random
level to the context views (telling the network the level), as the camera's own generated
frames are imperfect context.

:class:`FrameModel` is the public face: ``FrameModel.from_pretrained(dir)`` then
``generate(target_poses, context_frames, context_poses, intrinsics)`` -> uint8 frames.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtfm_env.geometry import Intrinsics, check_pose
from rtfm_env.model.network import (
    GELU_FORMS,
    ContextCache,
    FrameNetwork,
    ModelConfig,
    check_depth,
    depth_features,
    depth_from_model,
    depth_to_model,
    posed_rays,
    to_model,
    to_uint8,
)

__all__ = [
    "FrameModel",
    "nearest_context",
    "flow_start",
    "target_warp",
    "keep_covered",
    "sample_time",
    "training_loss",
    "sample",
    "BATCH_KEYS",
    "OPTIONAL_BATCH_KEYS",
]

#: Keys a training batch must have; the names are those of a collated
#: :class:`rtfm_env.data.dataset.PosedFrameDataset` batch.
BATCH_KEYS = ("target_frame", "target_pose", "context_frames", "context_poses", "intrinsics")
#: Keys a training batch may add. A v2 model (``warp_input`` or ``depth_input``) needs
#: ``context_depth``; ``target_depth`` supervises ``predict_depth``.
OPTIONAL_BATCH_KEYS = ("context_valid", "weight", "context_depth", "target_depth", "has_depth")


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Drawn on the generator's own device, so a seed gives the same noise whatever runs the model.
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=source).to(device)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=source).to(device)


def nearest_context(
    target_poses: np.ndarray | torch.Tensor,
    context_poses: np.ndarray | torch.Tensor,
    context_valid: torch.Tensor | None = None,
    rotation_weight: float = 1.0,
) -> torch.Tensor:
    """Index of the context view closest to each target camera.

    Closeness is the distance between camera centres (metres) plus ``rotation_weight`` times
    the angle between the two camera orientations (radians).

    Args:
        target_poses: (B, 4, 4) camera-to-world.
        context_poses: (B, K, 4, 4) camera-to-world.
        context_valid: optional (B, K) bool; padding views are never chosen.
        rotation_weight: metres per radian.

    Returns:
        (B,) int64 indices into K, on the CPU.
    """
    target = _as_tensor(target_poses).detach().cpu().double()  # (B, 4, 4)
    context = _as_tensor(context_poses).detach().cpu().double()  # (B, K, 4, 4)
    distance = (context[..., :3, 3] - target[:, None, :3, 3]).norm(dim=-1)  # (B, K)
    relative = target[:, None, :3, :3].transpose(-1, -2) @ context[..., :3, :3]  # (B, K, 3, 3)
    cos = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)  # (B, K)
    score = distance + rotation_weight * torch.arccos(cos)  # (B, K)
    if context_valid is not None:
        score = score.masked_fill(~context_valid.cpu(), math.inf)
    return score.argmin(dim=1)


def flow_start(
    context_frames: torch.Tensor,
    nearest: torch.Tensor | None,
    config: ModelConfig,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    sigma: float | None = None,
    warp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow's start x0 and its noise-free mean.

    Args:
        context_frames: (B, K, 3, H, W) in [-1, 1].
        nearest: (B,) index of each target's nearest context view (see :func:`nearest_context`);
            read by ``flow_start = "context"`` without ``warp_start``.
        config: ``flow_start``, ``flow_sigma``, ``warp_start`` and ``hole_sigma`` are read.
        generator: seeds the noise.
        noise: (B, 3, H, W) standard-normal noise to use instead of drawing it from
            ``generator``.
        sigma: std of the noise around the nearest view (or the warp where it is covered); None
            reads ``config.flow_sigma``.
        warp: (B, 5, H, W) target-aligned warp (:func:`target_warp`), for ``warp_start``.

    Returns:
        x0 (B, 3, H, W) and its mean (the nearest view, the filled warp, or zeros for a
        pure-noise start).
    """
    b = context_frames.shape[0]
    shape = (b, *context_frames.shape[2:])
    if noise is None:
        eps = _noise(shape, generator, context_frames.device)  # (B, 3, H, W)
    else:
        eps = noise.to(context_frames.device, torch.float32)  # (B, 3, H, W)
    if config.flow_start == "noise":
        return eps, torch.zeros_like(eps)
    sigma = config.flow_sigma if sigma is None else sigma
    if config.warp_start:
        if warp is None or warp.shape != (b, 5, *shape[2:]):
            raise ValueError(f"warp_start needs the warp (B, 5, H, W) = {(b, 5, *shape[2:])}, got "
                             f"{None if warp is None else tuple(warp.shape)}")
        mean = warp[:, :3].to(eps.device, torch.float32)  # (B, 3, H, W)
        std = torch.where(warp[:, 3:4].to(eps.device) > 0.5, sigma, config.hole_sigma)  # (B, 1, H, W)
        return mean + std * eps, mean
    rows = torch.arange(b, device=context_frames.device)
    mean = context_frames[rows, nearest.to(context_frames.device)]  # (B, 3, H, W)
    return mean + sigma * eps, mean


def target_warp(
    context_frames: torch.Tensor,
    context_depths: torch.Tensor,
    context_poses: np.ndarray | torch.Tensor,
    target_poses: np.ndarray | torch.Tensor,
    intrinsics: Intrinsics,
    config: ModelConfig,
    context_valid: torch.Tensor | None = None,
    context_priority: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """The network's target-aligned input: the context warped into each target camera, fused, filled.

    :func:`rtfm_env.warp.warp_and_fill` (z-buffered splatting of every view with its depth,
    nearest surface wins, then the most trusted view (``context_priority``), then the least
    magnified; holes filled by push-pull from their far side), without gradients and outside
    autocast, on the frames' device.

    Args:
        context_frames: (B, K, 3, H, W) model frames in [-1, 1].
        context_depths: (B, K, H, W) metres along each context camera's optical axis (-z of its
            OpenGL frame); inf = nothing hit (warped as ``config.max_depth``), NaN or 0 = unknown
            (not warped).
        context_poses: (B, K, 4, 4) camera-to-world poses of the context views.
        target_poses: (B, 4, 4) camera-to-world poses of the targets.
        intrinsics: shared pinhole intrinsics.
        config: ``min_depth`` / ``max_depth`` set the depth normalisation.
        context_valid: optional (B, K) bool; padding views are not warped.
        context_priority: optional (B, K) integers, lower is more trusted (observed 0, generated
            1): see :func:`rtfm_env.warp.forward_warp`'s ``priority``.

    Returns:
        (B, 5, H, W) float32: RGB in [-1, 1], coverage mask (1 where a view covers the pixel, 0 in
        filled holes), normalised log-depth (:func:`~rtfm_env.model.network.depth_to_model`).
    """
    from rtfm_env.warp import warp_and_fill

    device = context_frames.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        colours = ((context_frames.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 1, 3, 4, 2)  # (B, K, H, W, 3)
        depths = context_depths.to(device, torch.float32)
        target = _as_tensor(target_poses).to(device, torch.float64)
        source = _as_tensor(context_poses).to(device, torch.float64)
        valid = None if context_valid is None else context_valid.to(device)
        filled = warp_and_fill(colours, depths, source, target, intrinsics, valid=valid, far=config.max_depth,
                               priority=context_priority)
        rgb = filled.rgb.permute(0, 3, 1, 2) * 2.0 - 1.0  # (B, 3, H, W)
        mask = filled.mask[:, None].to(torch.float32)  # (B, 1, H, W)
        depth = depth_to_model(filled.depth, config)[:, None]  # (B, 1, H, W)
        return torch.cat([rgb, mask, depth], dim=1).to(device)  # (B, 5, H, W)


def keep_covered(
    frames: torch.Tensor, depth: torch.Tensor | None, warp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``keep_warp``: the warp's RGB and depth where a context view covers the pixel, the sample elsewhere.

    Args:
        frames: (B, 3, H, W) sampled frames in [-1, 1].
        depth: (B, 1, H, W) sampled normalised log-depth, or None.
        warp: (B, 5, H, W) the target-aligned warp (:func:`target_warp`).

    Returns:
        (frames, depth) in float32, with the covered pixels replaced.
    """
    covered = warp[:, 3:4].to(frames.device) > 0.5  # (B, 1, H, W)
    frames = torch.where(covered, warp[:, :3].to(frames.device, torch.float32), frames.float())
    if depth is not None:
        depth = torch.where(covered, warp[:, 4:5].to(depth.device, torch.float32), depth.float())
    return frames, depth


def _check_depths(depths: np.ndarray | torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Depth maps of ``shape`` in metres: floats, NaN (unknown), inf (nothing hit) or >= 0."""
    d = _as_tensor(depths)
    if not d.is_floating_point() or tuple(d.shape) != shape:
        raise ValueError(f"{name} must be float metres of shape {shape}, got {d.dtype} {tuple(d.shape)}")
    if bool((d < 0).any()):
        raise ValueError(f"{name} has negative values; depth is metres >= 0 (NaN unknown, inf nothing hit)")
    return d.float()


def sample_time(
    batch: int, config: ModelConfig, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Training flow times (batch,) in [0, 1) from the configured distribution.

    A ``config.t0_fraction`` share of the samples (drawn per sample) is put at t = 0, the
    first sampling step and, for a one-step sampler, the only one.
    """
    if config.time_sampling == "uniform":
        source = generator.device if generator is not None else torch.device("cpu")
        t = torch.rand(batch, generator=generator, device=source).to(device)
    else:
        t = torch.sigmoid(config.logit_mean + config.logit_std * _noise((batch,), generator, device))
    if config.t0_fraction > 0:
        source = generator.device if generator is not None else torch.device("cpu")
        at_zero = torch.rand(batch, generator=generator, device=source).to(device) < config.t0_fraction
        t = torch.where(at_zero, torch.zeros_like(t), t)
    return t


def _model_frames(frames: np.ndarray | torch.Tensor, name: str, lead: tuple[int, ...]) -> torch.Tensor:
    """Frames given as uint8 (*lead, H, W, 3) or float (*lead, 3, H, W) in [-1, 1] -> float model frames."""
    x = _as_tensor(frames)
    n = len(lead)
    if x.dtype == torch.uint8:
        if x.ndim != n + 3 or tuple(x.shape[:n]) != lead or x.shape[-1] != 3:
            raise ValueError(f"{name} as uint8 must have shape {(*lead, 'H', 'W', 3)}, got {tuple(x.shape)}")
        return to_model(x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 (..., H, W, 3) or float (..., 3, H, W) in [-1, 1], got {x.dtype}")
    if x.ndim != n + 3 or tuple(x.shape[:n]) != lead or x.shape[n] != 3:
        raise ValueError(f"{name} as floats must have shape {(*lead, 3, 'H', 'W')}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"{name} as floats must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x.float()


def _check_valid(context_valid: np.ndarray | torch.Tensor | None, b: int, k: int) -> torch.Tensor | None:
    if context_valid is None:
        return None
    valid = _as_tensor(context_valid)
    if valid.dtype != torch.bool or tuple(valid.shape) != (b, k):
        raise ValueError(f"context_valid must be bool of shape {(b, k)}, got {valid.dtype} {tuple(valid.shape)}")
    if not valid.any(dim=1).all():
        empty = torch.nonzero(~valid.any(dim=1)).flatten().tolist()
        raise ValueError(f"batch elements {empty} have no valid context view")
    return valid


def _check_noise(noise: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    eps = _as_tensor(noise)
    if not eps.is_floating_point() or tuple(eps.shape) != shape:
        raise ValueError(f"noise must be floats of shape {shape} (B, 3, H, W), got {eps.dtype} {tuple(eps.shape)}")
    if not torch.isfinite(eps).all():
        raise ValueError("noise contains NaN or infinite values")
    return eps


def _check_poses(poses: np.ndarray | torch.Tensor, name: str, lead: tuple[int | None, ...]) -> np.ndarray:
    """Poses (*lead, 4, 4) as float64, each a rigid transform; None in ``lead`` accepts any size."""
    arr = _as_tensor(poses).detach().cpu().double().numpy()
    n = len(lead)
    if arr.ndim != n + 2 or arr.shape[-2:] != (4, 4) or any(
        want is not None and got != want for got, want in zip(arr.shape[:n], lead, strict=True)
    ):
        want_shape = tuple("B" if want is None else want for want in lead) + (4, 4)
        raise ValueError(f"{name} must have shape {want_shape}, got {arr.shape}")
    for index in np.ndindex(arr.shape[:-2]):
        check_pose(arr[index], name=f"{name}[{', '.join(map(str, index))}]")
    return arr


def _check_intrinsics(intrinsics: Intrinsics, height: int, width: int) -> Intrinsics:
    if not isinstance(intrinsics, Intrinsics):
        raise ValueError(f"intrinsics must be rtfm_env.geometry.Intrinsics, got {type(intrinsics).__name__}")
    if (intrinsics.height, intrinsics.width) != (height, width):
        raise ValueError(f"intrinsics are {intrinsics.width}x{intrinsics.height} but frames are {width}x{height}")
    return intrinsics


def _batch_intrinsics(value: Intrinsics | np.ndarray | torch.Tensor, height: int, width: int) -> Intrinsics:
    """Intrinsics given as an object or as (3,) / (B, 3) rows (width, height, fov_y), all rows equal."""
    if isinstance(value, Intrinsics):
        return _check_intrinsics(value, height, width)
    problem = ValueError(f"intrinsics must be an Intrinsics or (B, 3) rows (width, height, fov_y), got {value!r}")
    try:
        rows = _as_tensor(value).detach().cpu().double()
    except (TypeError, ValueError, RuntimeError) as e:
        raise problem from e
    rows = rows[None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.shape[1] != 3 or rows.shape[0] == 0:
        raise problem
    if not torch.equal(rows, rows[:1].expand_as(rows)):
        raise ValueError(f"all samples of a batch must share intrinsics, got {rows.unique(dim=0).tolist()}")
    width_, height_, fov_y = rows[0].tolist()
    return _check_intrinsics(Intrinsics(int(width_), int(height_), fov_y), height, width)


def training_loss(
    model: FrameNetwork,
    batch: Mapping[str, Any],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rectified-flow loss of one batch: MSE between the predicted and the true clean target.

    Args:
        model: the network; its ``config`` sets the flow start, time distribution and weighting.
        batch: a mapping (a collated :class:`~rtfm_env.data.dataset.PosedFrameDataset` batch
            works as is) with
            ``target_frame`` (B, H, W, 3) uint8 or (B, 3, H, W) floats in [-1, 1];
            ``target_pose`` (B, 4, 4) and ``context_poses`` (B, K, 4, 4) camera-to-world;
            ``context_frames`` (B, K, H, W, 3) uint8 or (B, K, 3, H, W) floats;
            ``intrinsics``, an :class:`Intrinsics` or (B, 3) rows (width, height, fov_y) that
            must all be equal; optional ``context_valid`` (B, K) bool (False = padding view) and
            ``weight`` (B,) non-negative per-sample loss weights. Other keys (metadata such as
            ``env_id``) are ignored. Version 2: ``context_depth`` (B, K, H, W) metres (NaN
            unknown, inf nothing hit), required by ``warp_input`` / ``depth_input``;
            ``target_depth`` (B, H, W) likewise, read by ``predict_depth``; optional
            ``has_depth`` (B,) bool, False for samples whose depth must not be used.
        generator: seeds the flow noise, times and context noise.

    With ``context_noise > 0`` each context view gets Gaussian noise of a std drawn uniformly in
    [0, ``context_noise``] (before it is warped, so the warp carries it too) and the network is
    told the std. With ``predict_depth`` the loss adds ``depth_loss_weight`` times the mean L1
    error of the log-depth (natural log of metres, so 0.1 is a 10% error) over the target pixels
    of known depth (nothing hit counts as ``max_depth``).

    Returns:
        The scalar loss (differentiable) and detached 0-d stats: ``loss``, ``mse`` (unweighted),
        ``baseline_mse`` (of the flow start's mean, e.g. copying the nearest view, or the filled
        warp) and ``t_mean``; v2 adds ``depth_l1`` (log-depth), ``baseline_depth_l1`` (of the
        warp's depth) and ``coverage`` (share of target pixels the warp covers).
    """
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; required keys: {list(BATCH_KEYS)}, "
                       f"optional: {list(OPTIONAL_BATCH_KEYS)}")
    cfg, device = model.config, next(model.parameters()).device
    target_poses = _check_poses(batch["target_pose"], "target_pose", (None,))
    b = target_poses.shape[0]
    context_poses = _as_tensor(batch["context_poses"])
    if context_poses.ndim != 4 or context_poses.shape[0] != b or context_poses.shape[1] == 0:
        raise ValueError(f"context_poses must have shape ({b}, K >= 1, 4, 4), got {tuple(context_poses.shape)}")
    k = context_poses.shape[1]
    context_poses = _check_poses(context_poses, "context_poses", (b, k))
    x1 = _model_frames(batch["target_frame"], "target_frame", (b,)).to(device)  # (B, 3, H, W)
    context = _model_frames(batch["context_frames"], "context_frames", (b, k)).to(device)  # (B, K, 3, H, W)
    if context.shape[-2:] != x1.shape[-2:]:
        raise ValueError(f"context frames are {tuple(context.shape[-2:])} but targets are {tuple(x1.shape[-2:])}")
    intrinsics = _batch_intrinsics(batch["intrinsics"], *x1.shape[-2:])
    valid = _check_valid(batch.get("context_valid"), b, k)
    weight = torch.ones(b, device=device)
    if batch.get("weight") is not None:
        weight = _as_tensor(batch["weight"]).float().to(device)
        if weight.shape != (b,) or not torch.isfinite(weight).all() or (weight < 0).any():
            raise ValueError(f"weight must be ({b},) finite non-negative floats, got {tuple(weight.shape)}")

    h, w = x1.shape[-2:]
    has_depth = torch.ones(b, dtype=torch.bool, device=device)
    if batch.get("has_depth") is not None:
        has_depth = _as_tensor(batch["has_depth"]).to(device, torch.bool).reshape(b)
    context_depth = target_depth = None
    if cfg.warp_input or cfg.depth_input:
        if batch.get("context_depth") is None:
            raise KeyError("this model reads context depth (warp_input / depth_input): the batch needs "
                           "'context_depth' (B, K, H, W) metres, NaN where unknown")
        context_depth = _check_depths(batch["context_depth"], "context_depth", (b, k, h, w)).to(device)
        context_depth = torch.where(has_depth[:, None, None, None], context_depth, torch.nan)  # (B, K, H, W)
    if cfg.predict_depth:
        if batch.get("target_depth") is None:
            raise KeyError("this model predicts depth (predict_depth): the batch needs 'target_depth' (B, H, W) "
                           "metres, NaN where unknown")
        target_depth = _check_depths(batch["target_depth"], "target_depth", (b, h, w)).to(device)

    if cfg.self_rollout > 0 and k >= 2:
        context, context_depth = _self_rollout(model, context, context_depth, context_poses, intrinsics, valid,
                                               has_depth, generator)
    noise_level = None
    if cfg.context_noise > 0:
        # Noisy context, as the camera's own generated frames are: the network learns to trust a
        # view by how noisy it is told it is (0 at inference).
        noise_level = cfg.context_noise * _uniform((b, k), generator, device)  # (B, K)
        eps_c = _noise(tuple(context.shape), generator, device)  # (B, K, 3, H, W)
        context = (context + noise_level[..., None, None, None] * eps_c).clamp(-1.0, 1.0)
    warp = None
    if cfg.warp_input:
        warp = target_warp(context, context_depth, context_poses, target_poses, intrinsics, cfg, valid)  # (B, 5, H, W)
    context_feat = depth_features(context_depth, cfg) if cfg.depth_input else None  # (B, K, 2, H, W)

    target_rays, context_rays = posed_rays(target_poses, context_poses, intrinsics)
    nearest = None
    if cfg.flow_start == "context" and not cfg.warp_start:
        nearest = nearest_context(target_poses, context_poses, valid, cfg.nearest_rotation_weight)  # (B,)
    x0, x0_mean = flow_start(context, nearest, cfg, generator, warp=warp)  # (B, 3, H, W) each
    t = sample_time(b, cfg, generator, device)  # (B,)
    x_t = torch.lerp(x0, x1, t.view(b, 1, 1, 1))  # (B, 3, H, W)
    cache = model.encode_context(context, context_rays.to(device), None if valid is None else valid.to(device),
                                 warp=warp, context_depth=context_feat, noise_level=noise_level)
    out = model.denoise(x_t, t, target_rays.to(device), cache).float()  # (B, 3 or 4, H, W)
    x1_hat = out[:, :3]  # (B, 3, H, W)

    mse = (x1_hat - x1).square().mean(dim=(1, 2, 3))  # (B,)
    if cfg.loss_weighting == "velocity":
        # The implied velocity error is the x1 error divided by (1 - t); capped near t = 1.
        weight = weight * (1.0 - t).square().reciprocal().clamp(max=cfg.max_loss_weight)
    loss = (weight * mse).mean()
    stats = {
        "mse": mse.mean().detach(),
        "baseline_mse": (x0_mean - x1).square().mean().detach(),
        "t_mean": t.mean().detach(),
    }
    if cfg.predict_depth:
        # L1 of the log-depth in natural-log units (0.1 = 10%), on the raw (unclamped) output so
        # a prediction beyond the represented range still has a gradient back.
        known = (target_depth > 0) & has_depth[:, None, None]  # (B, H, W); NaN is unknown
        log_target = depth_to_model(torch.where(known, target_depth, 1.0), cfg)  # (B, H, W) normalised
        half = 0.5 * (math.log(cfg.max_depth) - math.log(cfg.min_depth))  # log-metres per normalised unit
        error = (out[:, 3] - log_target).abs() * half * known  # (B, H, W)
        depth_l1 = error.flatten(1).sum(1) / known.flatten(1).sum(1).clamp(min=1)  # (B,); 0 without depth
        # Always in the graph (0 for batches without depth), so DDP sees the depth head used.
        loss = loss + cfg.depth_loss_weight * (weight * depth_l1).mean()
        counted = known.flatten(1).any(1)  # (B,)
        n_known = counted.sum().clamp(min=1)
        stats["depth_l1"] = (depth_l1 * counted).sum().detach() / n_known
        if warp is not None:
            base_err = ((warp[:, 4] - log_target).abs() * half * known).flatten(1).sum(1)
            stats["baseline_depth_l1"] = (base_err / known.flatten(1).sum(1).clamp(min=1)).sum() / n_known
    if warp is not None:
        stats["coverage"] = warp[:, 3].mean().detach()
    return loss, {"loss": loss.detach(), **stats}


def _self_rollout(
    model: FrameNetwork,
    context: torch.Tensor,
    context_depth: torch.Tensor,
    context_poses: np.ndarray,
    intrinsics: Intrinsics,
    valid: torch.Tensor | None,
    has_depth: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``self_rollout``: replace context view 0 of a share of the samples by the network's generation of it.

    The chosen samples' view 0 is generated from their views 1..K-1 as the camera generates a
    frame (warp start, one Euler step, covered pixels kept) with the current weights and no
    gradient, and stored with its predicted depth, so the loss sees context like the camera's
    memory of generated frames. Samples without depth, or whose views 1..K-1 are all padding,
    keep their view. Returns the new (context, context_depth); the inputs are not modified.
    """
    cfg = model.config
    b, k = context.shape[:2]
    device = context.device
    pick = _uniform((b,), generator, device) < cfg.self_rollout  # (B,)
    pick &= has_depth
    rest_valid = None if valid is None else valid[:, 1:].to(device)
    if rest_valid is not None:
        pick &= rest_valid.any(dim=1)
    eps = _noise((b, 3, *context.shape[-2:]), generator, device)  # drawn for every sample: the stream is fixed
    rows = pick.nonzero()[:, 0]
    if not rows.numel():
        return context, context_depth
    r = rows.cpu().numpy()
    src_frames, src_depth, src_poses = context[rows, 1:], context_depth[rows, 1:], context_poses[r, 1:]
    target = context_poses[r, 0]
    sub_valid = None if rest_valid is None else rest_valid[rows]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            warp = target_warp(src_frames, src_depth, src_poses, target, intrinsics, cfg, sub_valid)  # (R, 5, H, W)
            target_rays, context_rays = posed_rays(target, src_poses, intrinsics)
            feat = depth_features(src_depth, cfg) if cfg.depth_input else None
            level = torch.zeros(len(r), k - 1, device=device) if cfg.context_noise > 0 else None
            cache = model.encode_context(src_frames, context_rays.to(device), sub_valid, warp=warp,
                                         context_depth=feat, noise_level=level)
            nearest = None
            if cfg.flow_start == "context" and not cfg.warp_start:
                nearest = nearest_context(target, src_poses, sub_valid, cfg.nearest_rotation_weight)
            x0, _ = flow_start(src_frames, nearest, cfg, noise=eps[rows], warp=warp)
            x1, raw = sample(model, x0, target_rays.to(device), cache, 1, model.denoise, return_depth=True)
            x1, raw = keep_covered(x1, raw, warp)
            depth = depth_from_model(raw[:, 0].float(), cfg)  # (R, H, W) metres
    finally:
        model.train(was_training)
    context = context.clone()
    context_depth = context_depth.clone()
    context[rows, 0] = x1.clamp(-1.0, 1.0).to(context.dtype)
    context_depth[rows, 0] = depth.to(context_depth.dtype)
    return context, context_depth


def sample(
    network: FrameNetwork,
    x0: torch.Tensor,
    target_rays: torch.Tensor,
    cache: ContextCache,
    steps: int,
    denoise: Callable[..., torch.Tensor] | None = None,
    return_depth: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Euler-integrate the flow from x0 (B, 3, H, W) at t = 0 to the clean frame at t = 1.

    Uniform time steps; velocity (x1_hat - x_t) / (1 - t), so each step moves x_t the fraction
    dt / (1 - t) of the way to the current prediction and the last step returns it exactly.
    ``denoise`` replaces ``network.denoise`` (a compiled version of it, see
    :meth:`FrameModel.compile`). With ``return_depth`` the result is (frame, depth): the last
    step's normalised log-depth (B, 1, H, W) of a ``predict_depth`` network, else None.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    denoise = network.denoise if denoise is None else denoise
    b = x0.shape[0]
    times = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x = x0.float()
    for i in range(steps):
        t = torch.full((b,), times[i], device=x.device)
        out = denoise(x, t, target_rays, cache).float()  # (B, 3 or 4, H, W)
        x1_hat = out[:, :3]  # (B, 3, H, W)
        last = i == steps - 1
        x = x1_hat if last else torch.lerp(x, x1_hat, (times[i + 1] - times[i]) / (1.0 - times[i]))  # (B, 3, H, W)
    if return_depth:
        return x, (out[:, 3:4] if out.shape[1] > 3 else None)
    return x


class FrameModel:
    """Generates the frames seen from new camera poses, given posed context frames.

    Batched over B target cameras, each with its own K context views. The context of each
    frame is encoded once (the KV cache) and read by every denoising step; inference runs
    under ``autocast_dtype`` autocast (bf16 by default, also on the CPU). :meth:`compile`
    makes the network's two halves fused kernels (torch.compile), about 1.2x faster on the CPU.
    """

    def __init__(self, network: FrameNetwork, autocast_dtype: torch.dtype | None = torch.bfloat16) -> None:
        self.network = network.eval()
        self.autocast_dtype = autocast_dtype
        self.compiled = False  # True once compile() succeeded
        self._encode_context: Callable[..., ContextCache] = network.encode_context
        self._denoise: Callable[..., torch.Tensor] = network.denoise

    @property
    def config(self) -> ModelConfig:
        """The network's configuration."""
        return self.network.config

    @property
    def device(self) -> torch.device:
        """Where the network's weights live."""
        return next(self.network.parameters()).device

    @property
    def needs_depth(self) -> bool:
        """Whether :meth:`generate` needs ``context_depths`` (a v2 model reads the context's depth)."""
        return self.config.warp_input or self.config.depth_input

    @property
    def predicts_depth(self) -> bool:
        """Whether :meth:`generate` can return depth (``return_depth=True``)."""
        return self.config.predict_depth

    @property
    def gelu(self) -> str:
        """The form of the network's GELU: ``"tanh"`` (as trained) or ``"none"`` (erf)."""
        return self.network.blocks[0].mlp[1].approximate

    def to(self, device: torch.device | str) -> FrameModel:
        """Move the network to ``device``; returns self."""
        if self.compiled:
            raise RuntimeError("a compiled FrameModel cannot move: load it on its device, then compile()")
        self.network.to(device)
        return self

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = torch.bfloat16,
        gelu: str | None = None,
        compile: bool = False,  # noqa: A002 (torch's own name for it)
        max_context: int | None = None,
    ) -> FrameModel:
        """Load a checkpoint directory written by :func:`rtfm_env.model.checkpoint.save_checkpoint`.

        Args:
            directory: the checkpoint directory.
            device: where to run the network.
            autocast_dtype: inference precision (None: float32). Under bf16 or fp16 the linear
                weights are stored in that dtype once (bit-identical to casting per forward).
            gelu: the MLPs' GELU form (:meth:`FrameNetwork.set_gelu`): ``"tanh"`` as trained,
                or ``"none"`` (erf), which agrees with it within bf16 rounding and is ~4x
                faster on the CPU. None: ``"none"`` under bf16/fp16 autocast, ``"tanh"`` in
                float32.
            compile: :meth:`compile` the network (torch.compile; needs a C++ compiler on the
                CPU; the first frames of each new batch shape take seconds to compile).
            max_context: raise (or lower) the most context views one frame may attend to. No
                weight depends on it (every context token gets the same type embedding and its
                own rays), so any number runs, but views beyond the number trained with are out
                of the training distribution and attention cost grows with their square. The
                evaluator uses it to show what attending to every stored frame costs. This is
                the one way to change it: a ``max_context`` edited in ``config.json`` away from
                the trained value is refused at load (see :mod:`rtfm_env.model.checkpoint`).
                At most ``CONFIG_MAXIMA["max_context"]`` (1024).

        Raises:
            CheckpointError: if the directory is missing, incomplete, corrupt or inconsistent,
                or its config.json was edited away from the trained config.
            ValueError: an unknown ``gelu``, a ``max_context`` that is a bool, not an int or
                outside [1, 1024], or a non-bool ``compile``.
            RuntimeError: ``compile`` failed (the message says why).
        """
        from rtfm_env.model.checkpoint import CONFIG_MAXIMA, load_checkpoint

        if gelu is not None and gelu not in GELU_FORMS:
            raise ValueError(f"unknown gelu {gelu!r}; valid: {list(GELU_FORMS)} (or None for the precision's default)")
        most = CONFIG_MAXIMA["max_context"]
        if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, (int, np.integer))
                                        or not 1 <= max_context <= most):
            raise ValueError(f"max_context must be None or an integer in [1, {most}], got {max_context!r}")
        if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
            raise ValueError(f"autocast_dtype must be a torch.dtype or None, got {autocast_dtype!r}")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        network = load_checkpoint(directory, device=device).model
        if max_context is not None:
            network.config = dataclasses.replace(network.config, max_context=int(max_context))
        if autocast_dtype is not None:
            network.cast_linear_weights(autocast_dtype)  # same outputs, no per-forward weight casts
        network.set_gelu(gelu if gelu is not None else ("tanh" if autocast_dtype is None else "none"))
        model = cls(network, autocast_dtype)
        return model.compile() if compile else model

    def compile(self) -> FrameModel:
        """Run the context encoder and the denoiser as torch.compile'd graphs; returns self.

        Same outputs up to kernel rounding (within bf16 tolerance; the tests check it), about
        1.2x the eager frames/s on the CPU (``benchmarks/speed.py`` measures both). The graph is
        compiled at the first call with a new shape (batch size, number of views, padding
        masks), which takes seconds; a warm-up call here compiles the single-frame shape and
        surfaces a missing compiler at once. After torch's recompile limit (8 shapes per
        function in a process) further shapes run eagerly.

        Raises:
            RuntimeError: torch.compile failed, e.g. for want of a C++ compiler (g++) and the
                Python headers, which inductor needs on the CPU. The model stays eager.
        """
        if self.compiled:
            return self
        cfg = self.config
        net = self.network
        net.requires_grad_(False)  # inference only: no autograd state in the traced graph
        # The fixed position embedding is cached in a dict; fill it first so the graph does not
        # guard on the dict changing.
        net._pos(net._grid(cfg.height, cfg.width), self.device)
        eager = (self._encode_context, self._denoise)
        self._encode_context = torch.compile(net.encode_context)
        self._denoise = torch.compile(net.denoise)
        try:
            self._warm_up()
        except Exception as e:  # noqa: BLE001 (inductor raises many types; all mean "could not compile")
            self._encode_context, self._denoise = eager
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RuntimeError(
                f"torch.compile of the frame model failed ({type(e).__name__}: {first[:300]}); on the CPU it needs "
                "a C++ compiler (g++) and the Python headers; leave compile off to run the network eagerly"
            ) from e
        self.compiled = True
        return self

    def _warm_up(self) -> None:
        """One generation of one frame from one view: compiles that shape.

        The target looks half away from the view, so the warp leaves a hole and the network
        runs even with ``keep_warp`` (which skips targets the warp covers entirely).
        """
        from rtfm_env.geometry import camera_pose

        cfg = self.config
        intrinsics = Intrinsics(cfg.width, cfg.height, 60.0)
        frames = np.zeros((1, 1, cfg.height, cfg.width, 3), dtype=np.uint8)
        depths = np.full((1, 1, cfg.height, cfg.width), 2.0, dtype=np.float32) if self.needs_depth else None
        target = camera_pose(0.1, 0.0, math.radians(45.0))[None]
        self.generate(target, frames, camera_pose(0.0, 0.0, 0.0)[None, None], intrinsics,
                      generator=torch.Generator().manual_seed(0), context_depths=depths)

    def _autocast(self) -> torch.autocast | nullcontext:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def generate(
        self,
        target_poses: np.ndarray | torch.Tensor,
        context_frames: np.ndarray | torch.Tensor,
        context_poses: np.ndarray | torch.Tensor,
        intrinsics: Intrinsics,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        context_valid: np.ndarray | torch.Tensor | None = None,
        noise: np.ndarray | torch.Tensor | None = None,
        context_depths: np.ndarray | torch.Tensor | None = None,
        return_depth: bool = False,
        context_priority: np.ndarray | torch.Tensor | None = None,
        context_attend: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Frames (and, for a depth-predicting model, depths) seen from ``target_poses``.

        Args:
            target_poses: (B, 4, 4) camera-to-world poses to generate.
            context_frames: uint8 (B, K, H, W, 3) or floats (B, K, 3, H, W) in [-1, 1], K >= 1.
            context_poses: (B, K, 4, 4) camera-to-world poses of the context frames.
            intrinsics: pinhole intrinsics shared by every camera; must match H x W.
            steps: Euler steps (default ``config.sample_steps``).
            generator: seeds the flow noise; the same seed gives the same frames.
            context_valid: optional (B, K) bool, False for padding views (so elements of a
                batch may use different numbers of views).
            noise: optional (B, 3, H, W) float standard-normal flow noise, used instead of
                drawing it from ``generator`` (give one or the other). It lets one call serve
                several independently seeded streams, each drawing its own rows (see
                :func:`rtfm_env.cameras.observe_many`); rows drawn as
                ``torch.randn(shape, generator=g)`` on the CPU give exactly the frames that
                ``generator=g`` gives.
            context_depths: (B, K, H, W) float metres along each context camera's optical axis
                (the env's depth: -z in the camera's OpenGL frame); inf where nothing was hit,
                NaN (or 0) where unknown, e.g. a frame without depth. Required by a model that
                reads depth (:attr:`needs_depth`: v2), ignored by one that does not (v1).
            return_depth: also return the predicted depth; only for a ``predict_depth`` model.
            context_priority: optional (B, K) integers, lower is more trusted: where several
                context views see the same surface, only the most trusted are warped into the
                target (the cameras give observed frames 0 and generated frames 1, so the
                camera's own generations never overwrite what was observed). None: all equal.
                Only a model that reads the warp (``warp_input``) uses it.
            context_attend: optional (B, K) bool, the context views the network attends to; the
                others only enter the warp (a model with ``warp_input``). The network's cost
                grows with the views it attends to, the warp's barely, so a camera can warp more
                views than it attends (``ModelCamera(warp_k=...)``). None: every valid view.
                Each row must attend to at least one valid view; the network reads the columns
                up to the last one attended anywhere.

        Returns:
            (B, H, W, 3) uint8 RGB frames; with ``return_depth``, (frames, depths) where depths
            are (B, H, W) float32 metres along the target camera's optical axis, finite and in
            [``min_depth``, ``max_depth``] (``max_depth``: far, or nothing hit).

        Raises:
            ValueError: on wrong shapes or dtypes, NaN or non-rigid poses, K = 0 or K above
                ``max_context``, mismatched intrinsics, a bad ``steps``, missing or negative
                ``context_depths`` for a model that reads them, or ``return_depth`` for a model
                that predicts none.
            FloatingPointError: the predicted depth is not finite (the network's weights or
                inputs hold NaN); see :func:`~rtfm_env.model.network.check_depth`.
        """
        steps = self.config.sample_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if noise is not None and generator is not None:
            raise ValueError("give generator or noise, not both: the noise would ignore the generator")
        target = _check_poses(target_poses, "target_poses", (None,))
        b = target.shape[0]
        if b == 0:
            raise ValueError("target_poses is empty (B = 0)")
        context_poses_t = _as_tensor(context_poses)
        if context_poses_t.ndim != 4 or context_poses_t.shape[0] != b or context_poses_t.shape[2:] != (4, 4):
            raise ValueError(f"context_poses must have shape ({b}, K, 4, 4), got {tuple(context_poses_t.shape)}")
        k = context_poses_t.shape[1]
        if k == 0:
            raise ValueError("at least one context view is needed, got K = 0")
        if k > self.config.max_context:
            raise ValueError(f"{k} context views exceed the model's max_context = {self.config.max_context}")
        context_poses_np = _check_poses(context_poses_t, "context_poses", (b, k))
        context = _model_frames(context_frames, "context_frames", (b, k))  # (B, K, 3, H, W)
        h, w = context.shape[-2:]
        _check_intrinsics(intrinsics, h, w)
        if h % self.config.patch or w % self.config.patch:
            raise ValueError(f"frame size {w}x{h} is not divisible by the model's patch {self.config.patch}")
        valid = _check_valid(context_valid, b, k)
        eps = None if noise is None else _check_noise(noise, (b, 3, h, w))
        cfg = self.config
        if not isinstance(return_depth, bool):
            raise ValueError(f"return_depth must be True or False, got {return_depth!r}")
        if return_depth and not cfg.predict_depth:
            raise ValueError("return_depth=True needs a model that predicts depth (predict_depth); this one does not")
        depths = None
        if self.needs_depth:
            if context_depths is None:
                raise ValueError("this model reads the context's depth (warp_input / depth_input): pass "
                                 f"context_depths ({b}, {k}, {h}, {w}) metres, NaN where a frame has none")
            depths = _check_depths(context_depths, "context_depths", (b, k, h, w))

        net_k, net_valid = k, valid  # the views the network attends to: the first net_k columns
        if context_attend is not None:
            attend = _as_tensor(context_attend)
            if attend.dtype != torch.bool or tuple(attend.shape) != (b, k):
                raise ValueError(f"context_attend must be bool of shape {(b, k)}, got {attend.dtype} "
                                 f"{tuple(attend.shape)}")
            if not cfg.warp_input and not bool((attend if valid is None else attend | ~valid).all()):
                raise ValueError("context_attend leaves views to the warp only, but this model reads no warp "
                                 "(warp_input is off): every view must be attended")
            both = attend if valid is None else attend & valid
            net_k = int(both.any(dim=0).nonzero().max()) + 1 if bool(both.any()) else 0
            net_valid = _check_valid(both[:, :net_k].contiguous(), b, net_k) if net_k else _check_valid(both, b, k)
            if bool(net_valid.all()):
                net_valid = None

        device = self.device
        target_rays, context_rays = posed_rays(target, context_poses_np, intrinsics)
        nearest = None
        if cfg.flow_start == "context" and not cfg.warp_start:
            nearest = nearest_context(target, context_poses_np, valid, cfg.nearest_rotation_weight)  # (B,)
        context = context.to(device)
        valid_d = None if valid is None else valid.to(device)
        warp = context_feat = noise_level = None
        if cfg.warp_input:
            warp = target_warp(context, depths, context_poses_np, target, intrinsics, cfg, valid_d,
                               context_priority=context_priority)  # (B, 5, H, W)
        if cfg.depth_input:
            context_feat = depth_features(depths[:, :net_k].to(device), cfg)  # (B, K', 2, H, W)
        if cfg.context_noise > 0:
            noise_level = torch.zeros(b, net_k, device=device)  # (B, K'): the context is as it is
        target_rays = target_rays.to(device)
        context_rays = context_rays.to(device)
        rows = None  # the targets the network runs on; None: all
        if cfg.keep_warp:
            # A target the warp covers entirely is the warp itself: the network's output would all be
            # replaced, so it runs only on targets with a hole. The noise is drawn for the whole batch
            # first, so each target's frame is the same whichever others share its call.
            if eps is None:
                eps = _noise((b, 3, h, w), generator, context.device)
            need = (warp[:, 3] <= 0.5).flatten(1).any(dim=1)  # (B,)
            if not bool(need.all()):
                rows = need.nonzero()[:, 0]
        x1 = raw_depth = None
        if rows is None or rows.numel():
            def pick(x: torch.Tensor | np.ndarray | None) -> torch.Tensor | np.ndarray | None:
                if rows is None or x is None:
                    return x
                return x[rows.cpu().numpy()] if isinstance(x, np.ndarray) else x[rows.to(x.device)]

            with torch.inference_mode(), self._autocast():
                net_valid_d = None if net_valid is None else net_valid.to(device)
                cache = self._encode_context(pick(context[:, :net_k]), pick(context_rays[:, :net_k]),
                                             pick(net_valid_d), warp=pick(warp), context_depth=pick(context_feat),
                                             noise_level=pick(noise_level))
                x0, _ = flow_start(pick(context), pick(nearest), cfg, generator, pick(eps), cfg.sample_sigma,
                                   warp=pick(warp))  # (B', 3, H, W)
                x1, raw_depth = sample(self.network, x0, pick(target_rays), cache, steps, self._denoise,
                                       return_depth=True)  # (B', 3, H, W), (B', 1, H, W) or None
        if cfg.keep_warp:
            if rows is not None:  # scatter the network's targets into the warp
                full = warp[:, :3].float().clone()
                full_depth = warp[:, 4:5].float().clone() if cfg.predict_depth else None
                if x1 is not None:
                    full[rows] = x1.float()
                    if full_depth is not None:
                        full_depth[rows] = raw_depth.float()
                x1, raw_depth = full, full_depth
            x1, raw_depth = keep_covered(x1, raw_depth, warp)
        frames = to_uint8(x1)
        if not return_depth:
            return frames
        depth = check_depth(depth_from_model(raw_depth[:, 0], cfg))  # (B, H, W) metres
        return frames, depth.cpu().numpy().astype(np.float32)
