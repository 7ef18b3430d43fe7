"""The frame model: a diffusion transformer that generates the frame seen from a camera pose.

* :mod:`~rtfm_env.model.network`: :class:`ModelConfig`, named sizes and :class:`FrameNetwork`
  (context encoder with a KV cache, denoiser), plus image/ray/depth conversions at its boundary.
  :data:`V2` holds the version-2 fields (target-aligned warp input, depth in and out, residual
  on the warp, flow from the warp, context noise): ``model_config("S", **V2)``.
* :mod:`~rtfm_env.model.sampler`: the rectified flow (training loss, Euler sampler) and
  :class:`FrameModel`, which turns posed uint8 context frames into uint8 frames.
* :mod:`~rtfm_env.model.checkpoint`: atomic safetensors + JSON checkpoints.
"""

from rtfm_env.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from rtfm_env.model.network import (
    MODEL_SIZES,
    V2,
    ContextCache,
    FrameNetwork,
    ModelConfig,
    check_depth,
    depth_from_model,
    depth_to_model,
    model_config,
    posed_rays,
    to_model,
    to_uint8,
)
from rtfm_env.model.sampler import FrameModel, nearest_context, sample, target_warp, training_loss

__all__ = [
    "MODEL_SIZES",
    "V2",
    "ModelConfig",
    "model_config",
    "FrameNetwork",
    "ContextCache",
    "to_model",
    "to_uint8",
    "posed_rays",
    "depth_to_model",
    "depth_from_model",
    "check_depth",
    "FrameModel",
    "target_warp",
    "training_loss",
    "sample",
    "nearest_context",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
