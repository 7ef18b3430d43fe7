"""The frame model: a diffusion transformer that generates the frame seen from a camera pose.

* :mod:`~rtfm_env.model.network`: :class:`ModelConfig`, named sizes and :class:`FrameNetwork`
  (context encoder with a KV cache, denoiser), plus image/ray conversions at its boundary.
* :mod:`~rtfm_env.model.sampler`: the rectified flow (training loss, Euler sampler) and
  :class:`FrameModel`, which turns posed uint8 context frames into uint8 frames.
* :mod:`~rtfm_env.model.checkpoint`: atomic safetensors + JSON checkpoints.
"""

from rtfm_env.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from rtfm_env.model.network import (
    MODEL_SIZES,
    ContextCache,
    FrameNetwork,
    ModelConfig,
    model_config,
    posed_rays,
    to_model,
    to_uint8,
)
from rtfm_env.model.sampler import FrameModel, nearest_context, sample, training_loss

__all__ = [
    "MODEL_SIZES",
    "ModelConfig",
    "model_config",
    "FrameNetwork",
    "ContextCache",
    "to_model",
    "to_uint8",
    "posed_rays",
    "FrameModel",
    "training_loss",
    "sample",
    "nearest_context",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
