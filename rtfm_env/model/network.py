"""The frame model's network: a diffusion transformer over posed frames (RTFM style).

The network generates the frame seen from a target camera given a few posed context frames,
with no explicit 3-D representation: geometry enters only through per-pixel Plücker rays.

Inputs and their coordinate frames (B = batch, K = context views, H x W = image size):

* ``context_frames`` (B, K, 3, H, W): RGB floats in [-1, 1] (see :func:`to_model`).
* ``context_rays`` (B, K, 6, H, W): Plücker rays of each context camera's pixels expressed in
  the *target* camera's frame (OpenGL axes: x right, y up, looking down -z), from
  :func:`posed_rays`: unit direction (3 channels) then moment o x d in metres (3 channels).
  They say where each context view sits relative to the camera being generated.
* ``target_rays`` (B, 6, H, W): the target camera's own rays in its own frame. They depend only
  on the intrinsics (the moment is zero), which is what makes the model pose-equivariant.
* ``x_t`` (B, 3, H, W): the target frame at flow time ``t`` in [-1, 1] units.
* ``t`` (B,): rectified-flow time in [0, 1]; 0 is the flow start (nearest context view plus
  noise, or pure noise), 1 the clean target. The network predicts the clean target x1.
* ``context_valid`` (B, K) bool, optional: False marks padding views that nothing attends to.

Version 2 (``ModelConfig.warp_input`` / ``depth_input`` / ``predict_depth`` / ``residual``,
:data:`V2`) adds geometry; every input is optional and off by default, so a v1 config builds the
v1 network, tensor for tensor:

* ``warp`` (B, 5, H, W), with ``warp_input``: the context warped with its depth into the
  target camera (z-buffered splatting, fused over views, holes filled by push-pull; see
  :func:`rtfm_env.model.sampler.target_warp`), target-aligned: channels RGB in [-1, 1], the
  coverage mask (1 where some context view covers the pixel) and the normalised log-depth
  (:func:`depth_to_model`). It is embedded per patch and added to the target tokens, which is
  concatenating it to x_t before the patch embedding.
* ``context_depth`` (B, K, 2, H, W), with ``depth_input``: each context view's own depth in its
  own camera, as :func:`depth_features` (normalised log-depth, 0 where unknown; and 1 where known).
* ``noise_level`` (B, K), with ``context_noise > 0``: the std of the noise added to each context
  view (training augmentation; 0 at inference), embedded and added to that view's tokens.

With ``predict_depth`` the output has a fourth channel, the target's normalised log-depth
(:func:`depth_from_model` gives metres along the target camera's optical axis, the -z axis of
its OpenGL frame, as the env's depth and ``SpatialMemory.depths``). With ``residual`` the
outputs are the warp's RGB and depth plus a learned correction whose output layers start at
zero, so an untrained network returns the reprojection camera's frame and depth exactly.

Context tokens never attend to target tokens and do not see the diffusion time, so their keys
and values in every block are computed once per generated frame (:meth:`FrameNetwork.encode_context`,
the KV cache) and reused by every denoising step (:meth:`FrameNetwork.denoise`).
:meth:`FrameNetwork.forward` runs both as one masked sequence, without a cache; the two paths
agree, which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from rtfm_env.geometry import Intrinsics, plucker_rays

__all__ = [
    "ModelConfig",
    "MODEL_SIZES",
    "model_config",
    "FrameNetwork",
    "ContextCache",
    "to_model",
    "to_uint8",
    "posed_rays",
    "patchify",
    "unpatchify",
    "FLOW_STARTS",
    "TIME_SAMPLINGS",
    "LOSS_WEIGHTINGS",
    "GELU_FORMS",
    "V2",
    "V2_FIELDS",
    "WARP_CHANNELS",
    "DEPTH_CHANNELS",
    "depth_to_model",
    "depth_from_model",
    "depth_features",
    "check_depth",
]

FLOW_STARTS = ("context", "noise")
TIME_SAMPLINGS = ("logit_normal", "uniform")
LOSS_WEIGHTINGS = ("none", "velocity")
#: Forms of the MLP activation (``nn.GELU``'s ``approximate``): the trained tanh one, or erf.
GELU_FORMS = ("tanh", "none")
#: Channels of the target-aligned warp input: RGB in [-1, 1], coverage mask, normalised log-depth.
WARP_CHANNELS = 5
#: Channels of a context view's own depth input: normalised log-depth (0 where unknown), known mask.
DEPTH_CHANNELS = 2


# --------------------------------------------------------------------------------------
# Images and rays at the model's boundary
# --------------------------------------------------------------------------------------


def to_model(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert uint8 RGB frames (..., H, W, 3) to the model's float32 (..., 3, H, W) in [-1, 1].

    Raises:
        ValueError: if the dtype is not uint8 or the last axis is not 3 channels.
    """
    t = torch.as_tensor(frames) if not torch.is_tensor(frames) else frames
    if t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (..., H, W, 3), got dtype {t.dtype}")
    if t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"frames must have shape (..., H, W, 3), got {tuple(t.shape)}")
    return t.movedim(-1, -3).to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Convert model frames (..., 3, H, W) in [-1, 1] to uint8 RGB (..., H, W, 3), clipping.

    Raises:
        ValueError: if the channel axis is not 3 or the values contain NaN or infinity.
    """
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"model frames must have shape (..., 3, H, W), got {tuple(x.shape)}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise ValueError("model frames contain NaN or infinite values")
    out = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.movedim(-3, -1).cpu().numpy()


def posed_rays(
    target_poses: np.ndarray | torch.Tensor,
    context_poses: np.ndarray | torch.Tensor,
    intrinsics: Intrinsics,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plücker rays of the target and context cameras, all in the target camera's frame.

    Args:
        target_poses: (B, 4, 4) camera-to-world poses of the cameras to generate.
        context_poses: (B, K, 4, 4) camera-to-world poses of the context views.
        intrinsics: shared pinhole intrinsics of every camera.

    Returns:
        target_rays (B, 6, H, W) and context_rays (B, K, 6, H, W), float32 on the CPU.
    """
    target = torch.as_tensor(np.asarray(target_poses) if not torch.is_tensor(target_poses) else target_poses)
    context = torch.as_tensor(np.asarray(context_poses) if not torch.is_tensor(context_poses) else context_poses)
    target, context = target.detach().cpu().double(), context.detach().cpu().double()
    if target.ndim != 3 or target.shape[1:] != (4, 4):
        raise ValueError(f"target_poses must have shape (B, 4, 4), got {tuple(target.shape)}")
    if context.ndim != 4 or context.shape[0] != target.shape[0] or context.shape[2:] != (4, 4):
        raise ValueError(f"context_poses must have shape (B={target.shape[0]}, K, 4, 4), got {tuple(context.shape)}")
    # A camera's own rays in its own frame are those of the identity pose: compute them once.
    own = plucker_rays(torch.eye(4, dtype=torch.float64), intrinsics)  # (6, H, W)
    target_rays = own.expand(target.shape[0], *own.shape).contiguous()  # (B, 6, H, W)
    context_rays = plucker_rays(context, intrinsics, reference=target[:, None])  # (B, K, 6, H, W)
    return target_rays, context_rays


def _log_depth_range(config: ModelConfig) -> tuple[float, float]:
    """Centre and half-width of the represented log-depth range [log min_depth, log max_depth]."""
    lo, hi = math.log(config.min_depth), math.log(config.max_depth)
    return 0.5 * (lo + hi), 0.5 * (hi - lo)


def depth_to_model(depth: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Depth in metres -> the model's normalised log-depth, in [-1, 1].

    ``min_depth`` maps to -1, ``max_depth`` to 1; depths beyond are clamped, so ``inf`` (nothing
    hit) is 1. NaN stays NaN: callers mask unknown depth (NaN, or 0 as some sensors write).
    """
    mid, half = _log_depth_range(config)
    return (depth.float().clamp(config.min_depth, config.max_depth).log() - mid) / half


def depth_from_model(raw: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The model's normalised log-depth -> metres along the camera's optical axis.

    The input is clamped to [-1, 1] first, so every finite or infinite value gives a finite
    depth in [``min_depth``, ``max_depth``]; only NaN gives NaN (see :func:`check_depth`).
    """
    mid, half = _log_depth_range(config)
    return torch.exp(mid + half * raw.float().clamp(-1.0, 1.0))


def depth_features(depth: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Depth (..., H, W) in metres -> the network's depth input (..., 2, H, W).

    Channel 0 is the normalised log-depth (:func:`depth_to_model`) where the depth is known and 0
    elsewhere, channel 1 is 1 where it is known: positive or inf (nothing hit, as far as
    ``max_depth``); NaN and 0 are unknown.
    """
    depth = depth.float()
    known = depth > 0  # NaN compares False
    return torch.stack([torch.where(known, depth_to_model(depth, config), 0.0), known.float()], dim=-3)


def check_depth(depth: torch.Tensor, what: str = "predicted depth") -> torch.Tensor:
    """Return ``depth`` after checking it is finite and positive everywhere.

    Raises:
        FloatingPointError: naming how many values are NaN, infinite or not positive, and in which
            batch elements (the first axis), e.g. when the network's weights hold NaN.
    """
    bad = ~(torch.isfinite(depth) & (depth > 0))
    if bool(bad.any()):
        where = torch.nonzero(bad.flatten(1).any(dim=1)).flatten().tolist() if depth.ndim > 1 else []
        raise FloatingPointError(
            f"{what} has {int(bad.sum())} NaN, infinite or non-positive values (batch elements {where[:8]}); "
            "the network's weights or inputs are not finite"
        )
    return depth


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*patch*patch) tokens in row-major patch order."""
    b, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C*patch*patch) -> (B, C, H, W)."""
    b, n, d = tokens.shape
    gh, gw, c = height // patch, width // patch, d // (patch * patch)
    x = tokens.reshape(b, gh, gw, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (N = grid_h * grid_w, dim), as in MAE and DiT."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64)
    gy, gx = torch.meshgrid(rows, cols, indexing="ij")  # (grid_h, grid_w) each
    out_y = gy.reshape(-1, 1) * omega  # (N, dim/4)
    out_x = gx.reshape(-1, 1) * omega  # (N, dim/4)
    emb = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)  # (N, dim)
    return emb.float()


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


#: ModelConfig fields added by version 2; absent from a v1 record, where they take their defaults.
V2_FIELDS = (
    "warp_input", "depth_input", "predict_depth", "residual", "min_depth", "max_depth", "warp_start", "hole_sigma",
    "context_noise", "depth_loss_weight", "keep_warp", "self_rollout",
)


def _same_value(a: object, b: object) -> bool:
    """Equal and of the same kind (a bool is not the int 1)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@dataclass
class ModelConfig:
    """Everything that defines a frame model: network shape, flow and sampler defaults.

    Saved inside every checkpoint (``config.json``) so each generated frame can be traced to
    the network that made it.
    """

    height: int = 64  # pixels, training image height (any multiple of `patch` runs)
    width: int = 64  # pixels, training image width (any multiple of `patch` runs)
    patch: int = 8  # pixels per side of a square patch (one token)
    dim: int = 256  # channels per token (transformer width)
    depth: int = 6  # transformer blocks
    heads: int = 4  # attention heads; `dim` must divide evenly
    mlp_ratio: float = 4.0  # MLP hidden width as a multiple of `dim`
    max_context: int = 8  # most context views one generated frame may attend to
    pos_embed: bool = True  # add a fixed 2-D sin-cos patch position embedding to the rays
    qk_norm: bool = True  # RMS-normalise queries and keys per head (stable bf16 attention)
    moment_scale: float = 0.2  # 1/metres: Plücker moments are scaled so room-sized offsets are O(1)
    flow_start: str = "context"  # flow start x0: "context" = nearest context view + noise, "noise" = N(0, 1)
    flow_sigma: float = 0.2  # std of the noise added to the nearest context view at t = 0 ([-1, 1] units)
    nearest_rotation_weight: float = 1.0  # metres per radian when ranking context views by closeness
    time_sampling: str = "logit_normal"  # training flow-time distribution: "logit_normal" or "uniform"
    logit_mean: float = 0.0  # mean of the logit-normal time distribution (logit units)
    logit_std: float = 1.0  # std of the logit-normal time distribution (logit units)
    t0_fraction: float = 0.0  # share of training samples put at t = 0 (the one-step sampler's only step)
    loss_weighting: str = "none"  # "none": MSE on x1_hat; "velocity": MSE of the implied velocity
    max_loss_weight: float = 25.0  # cap on the "velocity" weight 1 / (1 - t)^2 (it diverges at t = 1)
    sample_steps: int = 4  # default Euler steps of the sampler
    # Std of the start noise when sampling ([-1, 1] units); None: flow_sigma, as in training.
    # 0 starts from the nearest view itself: deterministic, and with one step the network's
    # prediction is then its estimate of the mean frame, which scores best in PSNR.
    sample_sigma: float | None = None
    # -- version 2: geometry (every default keeps the v1 network and its behaviour) --
    warp_input: bool = False  # target tokens embed the context warped with its depth into the target camera
    depth_input: bool = False  # context tokens embed their own depth (normalised log-depth and its validity)
    predict_depth: bool = False  # a second head predicts the target's depth (normalised log-depth)
    residual: bool = False  # outputs = the warp's RGB (and depth) + a learned, zero-initialised residual
    min_depth: float = 0.05  # metres: the nearest depth represented (log-depth -1)
    max_depth: float = 100.0  # metres: the farthest represented (log-depth +1); nothing hit (inf) maps here
    warp_start: bool = False  # flow_start "context" starts from the filled warp, not the nearest view (warp_input)
    hole_sigma: float = 1.0  # warp_start: start-noise std where no context view covers the pixel ([-1, 1] units)
    # Training: each context view gets N(0, s^2) noise, s ~ U(0, context_noise) per view ([-1, 1] units),
    # and the network is told s (the sampler tells it 0); > 0 adds the noise-level embedding.
    context_noise: float = 0.0
    depth_loss_weight: float = 1.0  # training: weight of the L1 log-depth loss beside the RGB MSE
    # Training (warp_input, K >= 2): share of samples whose first context view is replaced by the network's
    # own generation of it (no gradient, one Euler step, covered pixels kept, its predicted depth) from the
    # other context views, so the network learns from context like the camera's stored generated frames.
    self_rollout: float = 0.0
    # Sampler (warp_input): where a context view covers the target pixel, the frame (and depth) is the
    # warp itself and the network's sample fills only the rest. Seen surfaces are then copied, never
    # re-drawn, so they cannot drift or pick up the sampler's noise along a closed loop.
    keep_warp: bool = False

    def __post_init__(self) -> None:
        for name in ("height", "width", "patch", "dim", "depth", "heads", "max_context", "sample_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"resolution {self.height}x{self.width} is not divisible by patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.pos_embed and self.dim % 4:
            raise ValueError(f"pos_embed needs dim divisible by 4, got dim {self.dim}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head dim {self.dim // self.heads} must be even")
        choices = {"flow_start": FLOW_STARTS, "time_sampling": TIME_SAMPLINGS, "loss_weighting": LOSS_WEIGHTINGS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown ModelConfig.{name} {getattr(self, name)!r}; valid: {list(valid)}")
        for name in ("mlp_ratio", "moment_scale", "logit_std", "max_loss_weight"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ModelConfig.{name} must be a positive finite number, got {value!r}")
        for name in ("flow_sigma", "nearest_rotation_weight"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ModelConfig.{name} must be a non-negative finite number, got {value!r}")
        if not (isinstance(self.t0_fraction, (int, float)) and 0.0 <= float(self.t0_fraction) < 1.0):
            raise ValueError(f"ModelConfig.t0_fraction must be in [0, 1), got {self.t0_fraction!r}")
        if self.sample_sigma is not None:
            value = self.sample_sigma
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"ModelConfig.sample_sigma must be None or a finite number >= 0, got {value!r}")
            if self.flow_start == "noise":
                raise ValueError("ModelConfig.sample_sigma applies to flow_start='context' only; leave it None")
        if not math.isfinite(float(self.logit_mean)):
            raise ValueError(f"ModelConfig.logit_mean must be finite, got {self.logit_mean!r}")
        for name in ("warp_input", "depth_input", "predict_depth", "residual", "warp_start", "keep_warp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("min_depth", "max_depth"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ModelConfig.{name} must be a positive finite number of metres, got {value!r}")
        if not self.min_depth < self.max_depth:
            raise ValueError(f"ModelConfig.min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        for name in ("hole_sigma", "context_noise", "depth_loss_weight"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ModelConfig.{name} must be a non-negative finite number, got {value!r}")
        if not (isinstance(self.self_rollout, (int, float)) and not isinstance(self.self_rollout, bool)
                and 0.0 <= float(self.self_rollout) <= 1.0):
            raise ValueError(f"ModelConfig.self_rollout must be a share in [0, 1], got {self.self_rollout!r}")
        if self.self_rollout and not (self.warp_input and self.predict_depth):
            raise ValueError("ModelConfig.self_rollout needs warp_input=True and predict_depth=True (a generated "
                             "context view is warped with its predicted depth)")
        for name, why in (("residual", "its base is the warp"), ("warp_start", "the flow starts from the warp"),
                          ("keep_warp", "it keeps the warp where it covers")):
            if getattr(self, name) and not self.warp_input:
                raise ValueError(f"ModelConfig.{name} needs warp_input=True ({why})")
        if self.warp_start and self.flow_start != "context":
            raise ValueError(f"ModelConfig.warp_start needs flow_start='context', got {self.flow_start!r}")

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.heads

    def to_dict(self) -> dict:
        """JSON-ready dict of every field; a v1 config (every :data:`V2_FIELDS` at its default) leaves them out.

        So a v1 model's record (checkpoint ``config.json`` and weights metadata) is the one v1
        code wrote and reads; a v2 config records every field.
        """
        d = asdict(self)
        defaults = {f.name: f.default for f in fields(self) if f.name in V2_FIELDS}
        if all(_same_value(d[name], default) for name, default in defaults.items()):
            for name in V2_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys fail with the valid field names."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; valid fields: {sorted(valid)}")
        return cls(**d)


#: The version-2 frame model's fields (any size): target-aligned warp input, context depth,
#: depth prediction as a residual on the warp, flow from the warp, context noise augmentation.
#: ``model_config("S", **V2)``; the pure-implicit ablation is the v1 default (all off).
V2: dict[str, object] = dict(
    warp_input=True, depth_input=True, predict_depth=True, residual=True, warp_start=True, context_noise=0.1
)

#: Named sizes, as DiT names its models. T is for tests; S ~7 M parameters; M ~27 M.
MODEL_SIZES: dict[str, dict] = {
    "T": dict(dim=64, depth=2, heads=2),
    "S": dict(dim=256, depth=6, heads=4),
    "M": dict(dim=384, depth=10, heads=6),
}


def model_config(size: str = "S", **overrides: object) -> ModelConfig:
    """The :class:`ModelConfig` of a named size, with any field overridden.

    Raises:
        ValueError: for an unknown size (the message lists the valid ones) or a bad field.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {sorted(MODEL_SIZES)}")
    return ModelConfig.from_dict({**MODEL_SIZES[size], **overrides})


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Apply adaLN modulation; shift/scale broadcast over tokens ((B, 1, D)) or match them ((B, L, D))."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Embeds the flow time t in [0, 1] as a vector: sinusoidal features then an MLP (DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B, D)."""
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        # Scaled by 1000 so the frequency bank spans [0, 1] as DiT's spans its 1000 timesteps.
        args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # (B, D)


class RayEmbedder(nn.Module):
    """Embeds a patch of Plücker rays (6 x p x p values) as a token vector."""

    def __init__(self, patch: int, dim: int, moment_scale: float) -> None:
        super().__init__()
        self.patch = patch
        self.moment_scale = moment_scale
        self.mlp = nn.Sequential(nn.Linear(6 * patch * patch, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) rays -> (B, N, D)."""
        scale = rays.new_tensor([1.0, 1.0, 1.0] + [self.moment_scale] * 3).view(1, 6, 1, 1)
        return self.mlp(patchify(rays * scale, self.patch))  # (B, N, D)


class Attention(nn.Module):
    """Multi-head attention split into projection and attending, so K/V can be cached."""

    def __init__(self, dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> q, k, v, each (B, heads, L, D / heads)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Normalised in float32 (autocast leaves q, k in bf16): the softmax logits depend on it.
        return self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Queries (B, h, Lq, d) over keys/values (B, h, Lk, d); boolean mask True = may attend."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Lq, d)
        b, h, n, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))  # (B, Lq, D)


class Block(nn.Module):
    """A DiT block with adaLN-Zero whose attention may read a prefix of cached keys/values."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))  # noqa: N815 (DiT's name)

    def kv(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of tokens x (B, L, D) under conditioning c; each (B, h, L, d)."""
        shift, scale = self.adaLN_modulation(c).chunk(6, dim=-1)[:2]
        _, k, v = self.attn.project(modulate(self.norm1(x), shift, scale))
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Update tokens x conditioned on c.

        Args:
            x: (B, L, D) tokens.
            c: (B, 1 or L, D) conditioning, per batch element or per token.
            prefix: cached (keys, values) (B, h, P, d) placed before the tokens' own.
            mask: boolean (B, 1, L or 1, P + L), True where a query may attend to a key.

        Returns:
            The updated tokens and the tokens' own (keys, values), for caching.
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        q, k, v = self.attn.project(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, h, L, d) each
        own = (k, v)
        if prefix is not None:
            k = torch.cat([prefix[0], k], dim=2)  # (B, h, P + L, d)
            v = torch.cat([prefix[1], v], dim=2)  # (B, h, P + L, d)
        x = x + gate_msa * self.attn.attend(q, k, v, mask)  # (B, L, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, L, D)
        return x, own


class FinalLayer(nn.Module):
    """adaLN then a linear map from tokens to pixel patches of the prediction (``channels`` per pixel)."""

    def __init__(self, dim: int, patch: int, channels: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, channels * patch * patch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))  # noqa: N815 (DiT's name)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens, (B, 1, D) conditioning -> (B, N, channels*p*p) patches."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


@dataclass
class ContextCache:
    """Per-block keys and values of the context tokens: the world the generator reads.

    Computed once per generated frame by :meth:`FrameNetwork.encode_context` and reused by
    every denoising step. ``valid`` is None when every context token is real.
    """

    keys: list[torch.Tensor]  # per block, (B, heads, K*N, head_dim)
    values: list[torch.Tensor]  # per block, (B, heads, K*N, head_dim)
    valid: torch.Tensor | None  # (B, K*N) bool, False for tokens of padding views
    views: int  # K, context views per batch element
    grid: tuple[int, int]  # patch grid (rows, cols) the cache was built for
    # v2: the embedded target-aligned warp (B, N, D), added to the target tokens at every step
    target_tokens: torch.Tensor | None = None
    # v2 residual: the warp's RGB then normalised log-depth (B, 4, H, W), added to the outputs
    base: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        """Batch size B."""
        return self.keys[0].shape[0]


class FrameNetwork(nn.Module):
    """Diffusion transformer predicting the clean target frame from posed context frames.

    See the module docstring for every input's meaning and coordinate frame.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.dim, config.patch
        self.frame_embed = nn.Linear(3 * p * p, d)  # one token per p x p RGB patch
        self.ray_embed = RayEmbedder(p, d, config.moment_scale)
        self.t_embed = TimestepEmbedder(d)
        self.context_embed = nn.Parameter(torch.zeros(d))  # token type: "this is a context view"
        self.context_cond = nn.Parameter(torch.zeros(d))  # time-free adaLN conditioning of context tokens
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.mlp_ratio, config.qk_norm) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p)
        # Version 2: each module exists only when its field asks for it, so a v1 config builds
        # exactly the v1 network (same state-dict keys, same outputs).
        if config.warp_input:
            self.warp_embed = nn.Linear(WARP_CHANNELS * p * p, d)  # target-aligned warp, per target patch
        if config.depth_input:
            self.depth_embed = nn.Linear(DEPTH_CHANNELS * p * p, d)  # a context view's own depth, per patch
        if config.context_noise > 0:
            self.noise_embed = TimestepEmbedder(d)  # the std of the noise on a context view
        if config.predict_depth:
            self.depth_layer = FinalLayer(d, p, channels=1)  # normalised log-depth of the target
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}  # fixed, so not in the state dict
        self.initialize_weights()

    def cast_linear_weights(self, dtype: torch.dtype) -> FrameNetwork:
        """Store every linear layer's weight and bias in ``dtype`` (for inference under autocast).

        Autocast to ``dtype`` rounds each fp32 weight to ``dtype`` on every forward, which on
        the CPU costs about a sixth of a bf16 generation. Rounding once gives bit-identical
        outputs under that autocast. Norms keep their fp32 parameters (autocast runs them in
        fp32). Not for training: the optimiser and EMA need the fp32 master weights.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
        return self

    def set_gelu(self, approximate: str) -> FrameNetwork:
        """Choose the form of the MLPs' GELU: ``"tanh"`` (as trained) or ``"none"`` (erf).

        The network is trained with the tanh approximation. The two forms differ by at most
        5e-4 anywhere, below the rounding of a bf16 activation of the same size (2^-9
        relative), so under bf16 autocast they give the same frames up to that rounding; on
        the CPU the erf form is about 4x faster (PyTorch vectorises erf, not bf16 tanh), and
        the GELU is a fifth of a batched generation's time. See ``FrameModel.from_pretrained``.

        Raises:
            ValueError: for another value than ``"tanh"`` or ``"none"``.
        """
        if approximate not in GELU_FORMS:
            raise ValueError(f"unknown GELU form {approximate!r}; valid: {list(GELU_FORMS)}")
        for block in self.blocks:
            block.mlp[1].approximate = approximate
        return self

    def initialize_weights(self) -> None:
        """Initialise every parameter (DiT's scheme, adapted to context tokens)."""

        def _basic_init(module: nn.Module) -> None:
            # Xavier keeps activations' scale through the residual branches at the start.
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        # Small time MLP weights as in DiT: the time signal grows in as training needs it.
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # The type embedding starts small, like a learned position embedding.
        nn.init.normal_(self.context_embed, std=0.02)
        # Unit scale, like a time embedding, so the context's adaLN weights get a gradient
        # from the first step (a zero input to SiLU -> Linear would give none).
        nn.init.normal_(self.context_cond, std=1.0)
        # adaLN-Zero: zero modulation makes every gate 0, so each block starts as the identity
        # and the deep network trains like a shallow one first (DiT's best-performing init).
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Zero output layer: the first prediction is x1_hat = 0, the mean image in [-1, 1], and
        # the loss's gradient reaches the trunk only once the output layer has moved.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.config.predict_depth:
            # Zero too: with `residual` the first depth is the warp's, exactly; without it, the
            # middle of the log-depth range.
            nn.init.zeros_(self.depth_layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.depth_layer.adaLN_modulation[-1].bias)
            nn.init.zeros_(self.depth_layer.linear.weight)
            nn.init.zeros_(self.depth_layer.linear.bias)
        if self.config.context_noise > 0:
            # As the time MLP: the noise level's signal grows in as training needs it.
            for layer in (self.noise_embed.mlp[0], self.noise_embed.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02)

    # -- helpers -----------------------------------------------------------------------

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.config.patch
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by patch {p}")
        return height // p, width // p

    def _pos(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor | int:
        if not self.config.pos_embed:
            return 0
        key = (*grid, str(device))
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed_2d(self.config.dim, *grid).to(device)
        return self._pos_cache[key]  # (N, D)

    def _embed_context(
        self,
        context_frames: torch.Tensor,
        context_rays: torch.Tensor,
        context_valid: torch.Tensor | None,
        context_depth: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        if context_frames.ndim != 5 or context_frames.shape[2] != 3:
            raise ValueError(f"context_frames must have shape (B, K, 3, H, W), got {tuple(context_frames.shape)}")
        b, k, _, h, w = context_frames.shape
        if k == 0:
            raise ValueError("at least one context view is needed, got K = 0")
        if k > self.config.max_context:
            raise ValueError(f"{k} context views exceed max_context = {self.config.max_context}")
        if context_rays.shape != (b, k, 6, h, w):
            raise ValueError(f"context_rays must have shape {(b, k, 6, h, w)}, got {tuple(context_rays.shape)}")
        grid = self._grid(h, w)
        n = grid[0] * grid[1]
        x = self.frame_embed(patchify(context_frames.flatten(0, 1), self.config.patch))  # (B*K, N, D)
        x = x + self.ray_embed(context_rays.flatten(0, 1)) + self._pos(grid, x.device)  # (B*K, N, D)
        cfg = self.config
        if cfg.depth_input:
            if context_depth is None or context_depth.shape != (b, k, DEPTH_CHANNELS, h, w):
                got = None if context_depth is None else tuple(context_depth.shape)
                raise ValueError(f"this network embeds context depth (depth_input): context_depth must have shape "
                                 f"{(b, k, DEPTH_CHANNELS, h, w)} (see depth_features), got {got}")
            x = x + self.depth_embed(patchify(context_depth.flatten(0, 1), cfg.patch))  # (B*K, N, D)
        elif context_depth is not None:
            raise ValueError("context_depth given to a network without depth_input")
        if cfg.context_noise > 0:
            if noise_level is None:
                noise_level = torch.zeros(b, k, device=x.device)
            if noise_level.shape != (b, k):
                raise ValueError(f"noise_level must have shape {(b, k)}, got {tuple(noise_level.shape)}")
            x = x + self.noise_embed(noise_level.reshape(b * k)).unsqueeze(1)  # (B*K, N, D)
        elif noise_level is not None:
            raise ValueError("noise_level given to a network trained without context noise (context_noise = 0)")
        x = (x + self.context_embed).reshape(b, k * n, -1)  # (B, K*N, D)
        valid = None
        if context_valid is not None:
            if context_valid.shape != (b, k) or context_valid.dtype != torch.bool:
                raise ValueError(f"context_valid must be bool of shape {(b, k)}, got {context_valid.dtype} "
                                 f"{tuple(context_valid.shape)}")
            if not context_valid.any(dim=1).all():
                raise ValueError("every batch element needs at least one valid context view")
            if not context_valid.all():
                valid = context_valid.to(x.device).repeat_interleave(n, dim=1)  # (B, K*N)
        return x, valid, grid

    def _embed_target(
        self, x_t: torch.Tensor, t: torch.Tensor | float, target_rays: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must have shape (B, 3, H, W), got {tuple(x_t.shape)}")
        b, _, h, w = x_t.shape
        if target_rays.shape != (b, 6, h, w):
            raise ValueError(f"target_rays must have shape {(b, 6, h, w)}, got {tuple(target_rays.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        grid = self._grid(h, w)
        x = self.frame_embed(patchify(x_t, self.config.patch))  # (B, N, D)
        x = x + self.ray_embed(target_rays) + self._pos(grid, x.device)  # (B, N, D)
        c = self.t_embed(t).unsqueeze(1)  # (B, 1, D)
        return x, c, grid

    def _embed_warp(
        self, warp: torch.Tensor | None, b: int, h: int, w: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The warp's target tokens (B, N, D) and the residual's base (B, 4, H, W); None when unused."""
        cfg = self.config
        if not cfg.warp_input:
            if warp is not None:
                raise ValueError("warp given to a network without warp_input")
            return None, None
        if warp is None or warp.shape != (b, WARP_CHANNELS, h, w):
            raise ValueError(f"this network reads the target-aligned warp (warp_input): warp must have shape "
                             f"{(b, WARP_CHANNELS, h, w)} (see rtfm_env.model.sampler.target_warp), got "
                             f"{None if warp is None else tuple(warp.shape)}")
        tokens = self.warp_embed(patchify(warp, cfg.patch))  # (B, N, D)
        base = torch.cat([warp[:, :3], warp[:, 4:5]], dim=1).float() if cfg.residual else None  # (B, 4, H, W)
        return tokens, base

    def _head(self, x: torch.Tensor, c: torch.Tensor, base: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
        """Target tokens (B, N, D) -> the prediction (B, 3 or 4, H, W): RGB, then normalised log-depth."""
        out = unpatchify(self.final_layer(x, c), self.config.patch, h, w)  # (B, 3, H, W)
        if self.config.predict_depth:
            depth = unpatchify(self.depth_layer(x, c), self.config.patch, h, w)  # (B, 1, H, W)
            out = torch.cat([out, depth.to(out.dtype)], dim=1)  # (B, 4, H, W)
        if base is not None:
            out = out.float() + base[:, : out.shape[1]]  # in float32, so a zero residual returns the warp exactly
        return out

    # -- the two cached halves ---------------------------------------------------------

    def encode_context(
        self,
        context_frames: torch.Tensor,
        context_rays: torch.Tensor,
        context_valid: torch.Tensor | None = None,
        *,
        warp: torch.Tensor | None = None,
        context_depth: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> ContextCache:
        """Keys and values of the context tokens in every block, computed once per frame.

        The target-aligned warp is fixed for the frame too: its embedding (and the residual's
        base) are computed here once and kept in the cache.

        Args:
            context_frames: (B, K, 3, H, W) in [-1, 1].
            context_rays: (B, K, 6, H, W) Plücker rays in the target camera's frame.
            context_valid: optional (B, K) bool; False marks padding views.
            warp: (B, 5, H, W) target-aligned warp; required with ``warp_input``, else refused.
            context_depth: (B, K, 2, H, W) context depth features; required with ``depth_input``.
            noise_level: (B, K) std of the noise on each context view (default 0); only with
                ``context_noise > 0``.
        """
        x, valid, grid = self._embed_context(
            context_frames, context_rays, context_valid, context_depth, noise_level
        )  # (B, K*N, D)
        b, _, _, h, w = context_frames.shape
        target_tokens, base = self._embed_warp(warp, b, h, w)  # (B, N, D), (B, 4, H, W) or None
        c = self.context_cond.view(1, 1, -1)  # (1, 1, D)
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, K*N)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            if i == len(self.blocks) - 1:
                # The last block's context outputs feed nothing: only its keys and values are read.
                k, v = block.kv(x, c)  # (B, h, K*N, d) each
            else:
                x, (k, v) = block(x, c, mask=mask)  # (B, K*N, D)
            keys.append(k)
            values.append(v)
        return ContextCache(keys, values, valid, context_frames.shape[1], grid, target_tokens, base)

    def denoise(
        self, x_t: torch.Tensor, t: torch.Tensor | float, target_rays: torch.Tensor, cache: ContextCache
    ) -> torch.Tensor:
        """Predict the clean target x1 from x_t at time t, reading the context cache.

        Args:
            x_t: (B, 3, H, W) the target on the flow path at time t.
            t: (B,) or scalar flow time in [0, 1].
            target_rays: (B, 6, H, W) the target camera's rays in its own frame.
            cache: from :meth:`encode_context` for the same batch and image size.

        Returns:
            (B, 3, H, W) RGB in [-1, 1] units; with ``predict_depth`` (B, 4, H, W), channel 3
            the normalised log-depth (:func:`depth_from_model` gives metres).
        """
        x, c, grid = self._embed_target(x_t, t, target_rays)  # (B, N, D), (B, 1, D)
        b, n = x.shape[:2]
        if cache.batch != b or cache.grid != grid:
            raise ValueError(f"context cache was built for batch {cache.batch} and patch grid {cache.grid}, "
                             f"got batch {b} and grid {grid}")
        if self.config.warp_input:
            if cache.target_tokens is None:
                raise ValueError("this network reads the warp (warp_input) but the cache holds none")
            x = x + cache.target_tokens  # (B, N, D)
        mask = None
        if cache.valid is not None:
            own = torch.ones(b, n, dtype=torch.bool, device=x.device)
            mask = torch.cat([cache.valid, own], dim=1)[:, None, None, :]  # (B, 1, 1, K*N + N)
        for block, k, v in zip(self.blocks, cache.keys, cache.values, strict=True):
            x, _ = block(x, c, prefix=(k, v), mask=mask)  # (B, N, D)
        return self._head(x, c, cache.base, *x_t.shape[-2:])  # (B, 3 or 4, H, W)

    # -- the plain path ----------------------------------------------------------------

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        target_rays: torch.Tensor,
        context_frames: torch.Tensor,
        context_rays: torch.Tensor,
        context_valid: torch.Tensor | None = None,
        return_cache: bool = False,
        *,
        warp: torch.Tensor | None = None,
        context_depth: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ContextCache]:
        """Predict the clean target with context and target tokens in one masked sequence.

        The reference for :meth:`encode_context` + :meth:`denoise` (same inputs, same output):
        no cache, each block attends over all tokens with a mask that hides target keys from
        context queries. With ``return_cache`` the context keys/values it computed are returned too.
        """
        xc, valid, grid = self._embed_context(
            context_frames, context_rays, context_valid, context_depth, noise_level
        )  # (B, K*N, D)
        xt, ct, grid_t = self._embed_target(x_t, t, target_rays)  # (B, N, D), (B, 1, D)
        if grid_t != grid:
            raise ValueError(f"context frames {tuple(context_frames.shape[-2:])} and target {tuple(x_t.shape[-2:])} "
                             "differ in size")
        target_tokens, base = self._embed_warp(warp, xt.shape[0], *x_t.shape[-2:])  # (B, N, D), (B, 4, H, W)
        if target_tokens is not None:
            xt = xt + target_tokens  # (B, N, D)
        b, kn, n = xt.shape[0], xc.shape[1], xt.shape[1]
        x = torch.cat([xc, xt], dim=1)  # (B, K*N + N, D)
        c = torch.cat([self.context_cond.view(1, 1, -1).expand(b, kn, -1), ct.expand(b, n, -1)], dim=1)  # (B, L, D)
        is_target = torch.arange(kn + n, device=x.device) >= kn  # (L,)
        key_ok = torch.ones(b, kn + n, dtype=torch.bool, device=x.device)  # (B, L)
        if valid is not None:
            key_ok[:, :kn] = valid
        # Context queries see context keys only; target queries see everything valid.
        mask = key_ok[:, None, :] & (is_target[:, None] | ~is_target[None, :])  # (B, L, L)
        mask = mask[:, None]  # (B, 1, L, L)
        keys, values = [], []
        for block in self.blocks:
            x, (k, v) = block(x, c, mask=mask)  # (B, L, D)
            keys.append(k[:, :, :kn])
            values.append(v[:, :, :kn])
        pred = self._head(x[:, kn:], ct, base, *x_t.shape[-2:])  # (B, 3 or 4, H, W)
        if return_cache:
            return pred, ContextCache(keys, values, valid, context_frames.shape[1], grid, target_tokens, base)
        return pred

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
