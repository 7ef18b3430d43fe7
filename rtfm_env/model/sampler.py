"""The frame model's rectified flow: its path, training loss and few-step sampler.

The flow runs from a start x0 at t = 0 to the target frame x1 at t = 1 along the straight line
x_t = (1 - t) x0 + t x1. By default x0 is the context view whose camera is closest to the
target's plus Gaussian noise (``flow_start = "context"``, std ``flow_sigma``), so the flow only
has to carry the nearest view to the new one; ``flow_start = "noise"`` starts from N(0, 1).
The network predicts the clean target x1_hat; the sampler's Euler velocity is
(x1_hat - x_t) / (1 - t), so the last step lands exactly on the predicted frame.

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
    posed_rays,
    to_model,
    to_uint8,
)

__all__ = [
    "FrameModel",
    "nearest_context",
    "flow_start",
    "sample_time",
    "training_loss",
    "sample",
    "BATCH_KEYS",
    "OPTIONAL_BATCH_KEYS",
]

#: Keys a training batch must have; the names are those of a collated
#: :class:`rtfm_env.data.dataset.PosedFrameDataset` batch.
BATCH_KEYS = ("target_frame", "target_pose", "context_frames", "context_poses", "intrinsics")
#: Keys a training batch may add.
OPTIONAL_BATCH_KEYS = ("context_valid", "weight")


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Drawn on the generator's own device, so a seed gives the same noise whatever runs the model.
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=source).to(device)


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
    nearest: torch.Tensor,
    config: ModelConfig,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    sigma: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow's start x0 and its noise-free mean.

    Args:
        context_frames: (B, K, 3, H, W) in [-1, 1].
        nearest: (B,) index of each target's nearest context view (see :func:`nearest_context`).
        config: ``flow_start`` and ``flow_sigma`` are read.
        generator: seeds the noise.
        noise: (B, 3, H, W) standard-normal noise to use instead of drawing it from
            ``generator``.
        sigma: std of the noise around the nearest view; None reads ``config.flow_sigma``.

    Returns:
        x0 (B, 3, H, W) and its mean (the nearest view, or zeros for a pure-noise start).
    """
    b = context_frames.shape[0]
    shape = (b, *context_frames.shape[2:])
    if noise is None:
        eps = _noise(shape, generator, context_frames.device)  # (B, 3, H, W)
    else:
        eps = noise.to(context_frames.device, torch.float32)  # (B, 3, H, W)
    if config.flow_start == "noise":
        return eps, torch.zeros_like(eps)
    rows = torch.arange(b, device=context_frames.device)
    mean = context_frames[rows, nearest.to(context_frames.device)]  # (B, 3, H, W)
    return mean + (config.flow_sigma if sigma is None else sigma) * eps, mean


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
            ``env_id``) are ignored.
        generator: seeds the flow noise and times.

    Returns:
        The scalar loss (differentiable) and detached 0-d stats: ``loss``, ``mse`` (unweighted),
        ``baseline_mse`` (of the flow start's mean, e.g. copying the nearest view) and ``t_mean``.
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

    target_rays, context_rays = posed_rays(target_poses, context_poses, intrinsics)
    nearest = nearest_context(target_poses, context_poses, valid, cfg.nearest_rotation_weight)  # (B,)
    x0, x0_mean = flow_start(context, nearest, cfg, generator)  # (B, 3, H, W) each
    t = sample_time(b, cfg, generator, device)  # (B,)
    x_t = torch.lerp(x0, x1, t.view(b, 1, 1, 1))  # (B, 3, H, W)
    cache = model.encode_context(context, context_rays.to(device), None if valid is None else valid.to(device))
    x1_hat = model.denoise(x_t, t, target_rays.to(device), cache).float()  # (B, 3, H, W)

    mse = (x1_hat - x1).square().mean(dim=(1, 2, 3))  # (B,)
    if cfg.loss_weighting == "velocity":
        # The implied velocity error is the x1 error divided by (1 - t); capped near t = 1.
        weight = weight * (1.0 - t).square().reciprocal().clamp(max=cfg.max_loss_weight)
    loss = (weight * mse).mean()
    stats = {
        "loss": loss.detach(),
        "mse": mse.mean().detach(),
        "baseline_mse": (x0_mean - x1).square().mean().detach(),
        "t_mean": t.mean().detach(),
    }
    return loss, stats


def sample(
    network: FrameNetwork,
    x0: torch.Tensor,
    target_rays: torch.Tensor,
    cache: ContextCache,
    steps: int,
    denoise: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Euler-integrate the flow from x0 (B, 3, H, W) at t = 0 to the clean frame at t = 1.

    Uniform time steps; velocity (x1_hat - x_t) / (1 - t), so each step moves x_t the fraction
    dt / (1 - t) of the way to the current prediction and the last step returns it exactly.
    ``denoise`` replaces ``network.denoise`` (a compiled version of it, see
    :meth:`FrameModel.compile`).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    denoise = network.denoise if denoise is None else denoise
    b = x0.shape[0]
    times = torch.linspace(0.0, 1.0, steps + 1).tolist()
    x = x0.float()
    for i in range(steps):
        t = torch.full((b,), times[i], device=x.device)
        x1_hat = denoise(x, t, target_rays, cache).float()  # (B, 3, H, W)
        last = i == steps - 1
        x = x1_hat if last else torch.lerp(x, x1_hat, (times[i + 1] - times[i]) / (1.0 - times[i]))  # (B, 3, H, W)
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
        """One generation of one frame from one view: compiles that shape."""
        from rtfm_env.geometry import camera_pose

        cfg = self.config
        intrinsics = Intrinsics(cfg.width, cfg.height, 60.0)
        frames = np.zeros((1, 1, cfg.height, cfg.width, 3), dtype=np.uint8)
        self.generate(camera_pose(0.1, 0.0, 0.0)[None], frames, camera_pose(0.0, 0.0, 0.0)[None, None], intrinsics,
                      generator=torch.Generator().manual_seed(0))

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
    ) -> np.ndarray:
        """Frames seen from ``target_poses``.

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

        Returns:
            (B, H, W, 3) uint8 RGB frames.

        Raises:
            ValueError: on wrong shapes or dtypes, NaN or non-rigid poses, K = 0 or K above
                ``max_context``, mismatched intrinsics, or a bad ``steps``.
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

        device = self.device
        target_rays, context_rays = posed_rays(target, context_poses_np, intrinsics)
        nearest = nearest_context(target, context_poses_np, valid, self.config.nearest_rotation_weight)  # (B,)
        context = context.to(device)
        with torch.inference_mode(), self._autocast():
            valid_d = None if valid is None else valid.to(device)
            cache = self._encode_context(context, context_rays.to(device), valid_d)
            sigma = self.config.sample_sigma
            x0, _ = flow_start(context, nearest, self.config, generator, eps, sigma)  # (B, 3, H, W)
            x1 = sample(self.network, x0, target_rays.to(device), cache, steps, self._denoise)  # (B, 3, H, W)
        return to_uint8(x1)
