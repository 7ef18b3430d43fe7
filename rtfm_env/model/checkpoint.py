"""Frame-model checkpoints: a directory holding ``model.safetensors`` and ``config.json``.

``config.json`` is the record that makes a checkpoint traceable::

    {
      "format": "rtfm-frame-model",
      "format_version": 1,
      "model_config": {...every ModelConfig field...},
      "weights": {"file": "model.safetensors", "dtype": "float32", "bytes": 123, "sha256": "..."},
      "extra": {...free-form training info: step, data manifest hash, ...}
    }

Saving is atomic: both files are first written (and fsynced) in a temporary sibling directory;
a new checkpoint directory then appears with one ``os.replace``, and an existing one has its
two files replaced by rename, so a save that fails or is killed while writing leaves the
previous checkpoint as it was. The weights' size and SHA-256 in ``config.json`` let loading
detect a truncated weights file, or weights and config from different saves. Nothing is
pickled: weights go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from rtfm_env.model.network import FrameNetwork, ModelConfig

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "SAVE_DTYPES",
]

FORMAT = "rtfm-frame-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: dtypes the weights may be stored in; they are loaded back as float32.
SAVE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt, foreign or inconsistent."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network (eval mode, float32), its config and training info."""

    model: FrameNetwork
    config: ModelConfig
    extra: dict[str, Any]
    path: Path


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and flush it to disk before returning."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    model: FrameNetwork,
    config: ModelConfig | None = None,
    extra: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Save ``model`` to ``directory`` atomically (see the module docstring).

    Args:
        directory: the checkpoint directory; created (with parents) if missing, its two files
            replaced if it exists.
        model: the network to save.
        config: its configuration; defaults to ``model.config`` and must equal it.
        extra: free-form JSON-serialisable training info (step, data manifest hash, ...).
        dtype: weight storage dtype, one of :data:`SAVE_DTYPES`.

    Returns:
        The checkpoint directory.

    Raises:
        ValueError: for an unknown dtype, a config that is not the model's, or ``extra`` that
            JSON cannot hold.
    """
    config = model.config if config is None else config
    if config != model.config:
        raise ValueError(f"config does not match the model's config:\n  given: {config}\n  model: {model.config}")
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"unknown checkpoint dtype {dtype!r}; valid: {sorted(SAVE_DTYPES)}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"extra must be JSON-serialisable (no NaN, no objects): {e}") from e
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint path {directory} exists and is not a directory")

    state = {k: v.detach().to("cpu", SAVE_DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "weights": {
            "file": WEIGHTS_FILE,
            "dtype": dtype,
            "bytes": len(weights),
            "sha256": hashlib.sha256(weights).hexdigest(),
        },
        "extra": extra,
    }
    config_bytes = (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()

    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".saving", dir=parent))
    try:
        _write_file(tmp / WEIGHTS_FILE, weights)
        _write_file(tmp / CONFIG_FILE, config_bytes)
        if directory.exists():
            # Weights first: should the process die between the two renames, config.json's
            # hash no longer matches and loading says so instead of mixing two saves.
            os.replace(tmp / WEIGHTS_FILE, directory / WEIGHTS_FILE)
            os.replace(tmp / CONFIG_FILE, directory / CONFIG_FILE)
            _fsync_dir(directory)
        else:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
            os.replace(tmp, directory)
            _fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{path} is not a frame-model config (format {found!r}, expected {FORMAT!r})")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this code reads up to {FORMAT_VERSION}")
    for key, kind in (("model_config", dict), ("extra", dict)):
        if not isinstance(record.get(key), kind):
            raise CheckpointError(f"{path} lacks a {key!r} object")
    return record


def read_verified_safetensors(
    path: Path, expected: dict | None, record_path: Path, required: bool = False
) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its size and SHA-256 against a JSON record.

    Args:
        path: the safetensors file.
        expected: ``{"bytes": int, "sha256": str}`` from the record, or None.
        record_path: the JSON file ``expected`` came from (named in errors).
        required: refuse a missing record instead of trusting the safetensors parse alone.

    Raises:
        CheckpointError: naming the file, when it is truncated, corrupt, from another save or
            not safetensors at all.
    """
    data = path.read_bytes()
    if not isinstance(expected, dict):
        if required:
            raise CheckpointError(f"{record_path} records no size and SHA-256 for {path}")
        expected = {}
    if "bytes" in expected and len(data) != expected["bytes"]:
        raise CheckpointError(f"{path} is {len(data)} bytes but {record_path} records "
                              f"{expected['bytes']}: the file is truncated or from another save")
    if "sha256" in expected and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in {record_path}: "
                              "the file is corrupt or from another save")
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for every kind of bad file
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        directory: the checkpoint directory.
        device: where to put the network.

    Returns:
        The network in eval mode with float32 weights, its config and the saved ``extra``.

    Raises:
        CheckpointError: naming the file and the problem when the directory or a file is
            missing, ``config.json`` is not a frame-model config, the weights are truncated,
            corrupt or from another save, or tensors are missing, unexpected or of the wrong
            shape for the config.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")

    record = _read_record(config_path)
    try:
        config = ModelConfig.from_dict(record["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path} holds an invalid model_config: {e}") from e

    # Hand-assembled checkpoints may lack the record; then only the safetensors parse checks them.
    state = read_verified_safetensors(weights_path, record.get("weights"), config_path)

    model = FrameNetwork(config)
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"{weights_path} does not fit the model_config in {config_path}: "
                              f"missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    for name in wanted:  # the model's own order, so the first mismatch reported is the earliest layer
        tensor = state[name]
        if tuple(tensor.shape) != tuple(wanted[name].shape):
            raise CheckpointError(f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)} but the "
                                  f"model_config in {config_path} needs {tuple(wanted[name].shape)}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"{weights_path}: tensor {name!r} has non-float dtype {tensor.dtype}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return Checkpoint(model.to(device).eval(), config, record["extra"], directory)
