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

Loading trusts nothing in the directory:

* ``format_version`` must be one of :data:`READABLE_VERSIONS`, as a JSON integer (not ``true``,
  ``1.0`` or ``"1"``), and ``weights`` must record the file's ``bytes`` and ``sha256``.
* Every ``model_config`` value must have its field's JSON type (``pos_embed: 1`` is not a bool)
  and lie within :data:`CONFIG_MAXIMA`; the safetensors header (read alone, bounded) must list
  exactly the tensors that config implies, with their shapes, and the file's size must be what
  those tensors take. All of this is checked before any tensor is read or the network built, so a
  config that claims a huge network costs nothing.
* The model config the weights were trained with is stored in the safetensors metadata
  (``model_config``, covered by the SHA-256). ``config.json`` must agree with it in every field
  but the sampler defaults of :data:`OVERRIDABLE_FIELDS` (``sample_steps``, ``sample_sigma``, ``keep_warp``),
  which may be edited there. Edits that change no tensor shape but the weights' meaning
  (``height``, ``width``, ``pos_embed``, ``moment_scale``, ``max_context``, ``heads`` without
  qk-norm, the flow fields...) are refused. To attend to more (or fewer) views than trained, pass
  ``FrameModel.from_pretrained(dir, max_context=N)`` instead of editing ``max_context``.
  Checkpoints saved before the metadata existed have no such record: the shipped default is
  checked against its known trained config (:data:`KNOWN_TRAINED_CONFIGS`, by SHA-256); others
  load with the shape checks only.
* Version 2 models (:data:`~rtfm_env.model.network.V2_FIELDS`: warp input, depth, residual...)
  use the same format: their records hold the v2 fields, a v1 record leaves them out (and they
  take their defaults, which build the v1 network). A trained config without them (v1, or
  saved before they existed) counts as having the defaults, so a v1 checkpoint's config.json
  edited to switch a v2 field on is refused; unknown fields are refused with the valid names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from rtfm_env.model.network import V2_FIELDS, FrameNetwork, ModelConfig

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
    "READABLE_VERSIONS",
    "CONFIG_MAXIMA",
    "OVERRIDABLE_FIELDS",
    "KNOWN_TRAINED_CONFIGS",
]

FORMAT = "rtfm-frame-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: dtypes the weights may be stored in; they are loaded back as float32.
SAVE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: ``format_version`` values this code reads: exact JSON integers.
READABLE_VERSIONS: tuple[int, ...] = (1,)
#: Upper bounds on ``model_config`` values, checked before anything is allocated. Far above any
#: trained size (S: dim 256, depth 6; M: dim 384, depth 10) yet small enough that nothing a
#: config within them implies is built before the weights file has been measured against it.
CONFIG_MAXIMA: dict[str, int | float] = {
    "height": 1024,  # pixels
    "width": 1024,  # pixels
    "patch": 64,  # pixels
    "dim": 4096,
    "depth": 64,
    "heads": 64,
    "mlp_ratio": 16.0,
    "max_context": 1024,  # views (FrameModel.from_pretrained(max_context=...) has the same bound)
    "sample_steps": 1000,
    "sample_sigma": 10.0,  # start-noise std in [-1, 1] units: beyond a few it is all noise
    "min_depth": 1.0e6,  # metres
    "max_depth": 1.0e6,  # metres
    "hole_sigma": 10.0,  # [-1, 1] units
    "context_noise": 10.0,  # [-1, 1] units
    "self_rollout": 1.0,  # share of training samples
    "depth_loss_weight": 1.0e3,
}
#: ``model_config`` fields that ``config.json`` may change from what the weights were trained
#: with: the sampler defaults (every generate call can override them too). Every other field
#: must equal the trained value recorded in the weights file's metadata.
OVERRIDABLE_FIELDS: tuple[str, ...] = ("sample_steps", "sample_sigma", "keep_warp")
#: Trained configs of checkpoints saved before the weights carried their own (by weights
#: SHA-256), so a hand-edited config.json of these is refused too. Overridable fields omitted.
KNOWN_TRAINED_CONFIGS: dict[str, dict[str, Any]] = {
    # rtfm_env/model/checkpoints/default (size S, 64x64, EMA at step 2000, bf16)
    "314cc04d7ed8032cafa0d6c2e64ab41900059eb477ede71f02cd8c4c8e738f91": {
        "height": 64, "width": 64, "patch": 8, "dim": 256, "depth": 6, "heads": 4, "mlp_ratio": 4.0,
        "max_context": 8, "pos_embed": True, "qk_norm": True, "moment_scale": 0.2, "flow_start": "context",
        "flow_sigma": 0.2, "nearest_rotation_weight": 1.0, "time_sampling": "logit_normal", "logit_mean": 0.0,
        "logit_std": 1.0, "t0_fraction": 0.0, "loss_weighting": "none", "max_loss_weight": 25.0,
    },
}
#: Largest safetensors header read (the JSON table of tensors, before any tensor data).
MAX_HEADER_BYTES = 16 * 2**20
#: Bytes per element of the safetensors float dtypes a checkpoint may hold.
_FLOAT_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_SHA256_HEX = frozenset("0123456789abcdef")


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
    # The trained config travels inside the weights (under their SHA-256), so loading can tell
    # a config.json edited afterwards from the one these weights were saved with.
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(config.to_dict(), allow_nan=False),
    }
    weights = safetensors.torch.save(state, metadata=metadata)
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
    # Exact ints only: JSON true, 1.0 and "1" are not versions (bool is an int in Python).
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has format_version {version!r}; this code reads the integer version(s) "
                              f"{list(READABLE_VERSIONS)}")
    for key, kind in (("model_config", dict), ("extra", dict)):
        if not isinstance(record.get(key), kind):
            raise CheckpointError(f"{path} lacks a {key!r} object")
    weights = _check_weights_record(record.get("weights"), path, required=True)
    if "file" in weights and weights["file"] != WEIGHTS_FILE:
        raise CheckpointError(f"{path} names weights file {weights['file']!r}; a checkpoint's is {WEIGHTS_FILE!r}")
    if "dtype" in weights and weights["dtype"] not in SAVE_DTYPES:
        raise CheckpointError(f"{path} records weights dtype {weights['dtype']!r}; valid: {sorted(SAVE_DTYPES)}")
    return record


def _check_weights_record(expected: object, record_path: Path, required: bool) -> dict[str, Any]:
    """The ``{"bytes": int, "sha256": hex}`` record of a file, checked; ``{}`` when absent and optional."""
    if expected is None and not required:
        return {}
    if not isinstance(expected, dict) or "bytes" not in expected or "sha256" not in expected:
        raise CheckpointError(f"{record_path} records no size and SHA-256 of its weights (got {expected!r}); "
                              "a file that cannot be verified is not loaded")
    size, digest = expected["bytes"], expected["sha256"]
    if type(size) is not int or size < 0:
        raise CheckpointError(f"{record_path} records a weights size of {size!r}; expected an integer >= 0")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _SHA256_HEX:
        raise CheckpointError(f"{record_path} records a SHA-256 of {digest!r}; expected 64 lowercase hex digits")
    return expected


def _check_size(path: Path, expected: dict, record_path: Path) -> int:
    size = path.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise CheckpointError(f"{path} is {size} bytes but {record_path} records "
                              f"{expected['bytes']}: the file is truncated or from another save")
    return size


def read_verified_safetensors(
    path: Path, expected: dict | None, record_path: Path, required: bool = False
) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its size and SHA-256 against a JSON record.

    Args:
        path: the safetensors file.
        expected: ``{"bytes": int, "sha256": str}`` from the record, or None.
        record_path: the JSON file ``expected`` came from (named in errors).
        required: refuse a missing record instead of trusting the safetensors parse alone. A
            record that is present but lacks the size or the SHA-256 is always refused.

    Raises:
        CheckpointError: naming the file, when it is truncated, corrupt, from another save or
            not safetensors at all, or when the record is malformed.
    """
    expected = _check_weights_record(expected, record_path, required)
    _check_size(path, expected, record_path)  # before reading: a huge file is refused unread
    data = path.read_bytes()
    if "sha256" in expected and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in {record_path}: "
                              "the file is corrupt or from another save")
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for every kind of bad file
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def _read_header(path: Path, size: int) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str], int]:
    """The tensor table of a safetensors file, read without its data.

    Returns:
        ``{name: (dtype, shape)}``, the metadata and the bytes the tensors' data take.
    """

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file: {why}")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"header length {n} exceeds the file ({size} bytes) or {MAX_HEADER_BYTES} bytes")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ is not a string map")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    data_bytes = 0
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape
        ):
            raise bad(f"entry {name!r} has no dtype and shape")
        tensors[name] = (dtype, tuple(shape))
        if dtype in _FLOAT_ITEMSIZE:
            data_bytes += math.prod(shape) * _FLOAT_ITEMSIZE[dtype]
    return tensors, metadata, 8 + n + data_bytes


def _check_config_values(raw: dict[str, Any], config_path: Path) -> None:
    """Each model_config value has its field's JSON type (no coercion) and lies within CONFIG_MAXIMA."""
    kinds = {f.name: f.type for f in fields(ModelConfig)}
    for name, value in raw.items():
        kind = str(kinds.get(name, ""))
        if kind == "bool":
            ok = type(value) is bool
        elif kind == "int":
            ok = type(value) is int
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind.startswith("float"):
            ok = (value is None and "None" in kind) or (type(value) in (int, float) and math.isfinite(value))
        else:
            continue  # unknown fields: ModelConfig.from_dict names the valid ones
        if not ok:
            raise CheckpointError(f"{config_path} holds an invalid model_config: {name} = {value!r} is not a "
                                  f"JSON {kind}")
        bound = CONFIG_MAXIMA.get(name)
        if bound is not None and value is not None and value > bound:
            raise CheckpointError(f"{config_path} holds an invalid model_config: {name} = {value!r} exceeds the "
                                  f"maximum {bound} this loader accepts")


def _trained_config(metadata: dict[str, str], sha256: str, weights_path: Path) -> dict[str, Any] | None:
    """The config the weights were saved with: their metadata's, a known one, or None (older saves)."""
    if "model_config" not in metadata:
        return KNOWN_TRAINED_CONFIGS.get(sha256)
    try:
        trained = json.loads(metadata["model_config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{weights_path}: its metadata's model_config is not JSON: {e}") from e
    if not isinstance(trained, dict):
        raise CheckpointError(f"{weights_path}: its metadata's model_config is not a JSON object")
    return trained


def _same(a: object, b: object) -> bool:
    """Equal values of the same JSON type: 1 is not true, and 0 is not the saved 0.0."""
    return type(a) is type(b) and a == b


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Everything is checked before the weights are read or the network built (see the module
    docstring): the record's version and weights entry, every config value's type and bound,
    the tensor table against the config, the file's size against those tensors, and the
    config against the trained one stored with the weights.

    Args:
        directory: the checkpoint directory.
        device: where to put the network.

    Returns:
        The network in eval mode with float32 weights, its config and the saved ``extra``.

    Raises:
        CheckpointError: naming the file and the problem when the directory or a file is
            missing, ``config.json`` is not a frame-model config of a readable version, records
            no size and SHA-256 of the weights, holds a value of the wrong type or beyond
            :data:`CONFIG_MAXIMA`, or differs from the trained config in a field outside
            :data:`OVERRIDABLE_FIELDS`; or when the weights are truncated, corrupt or from
            another save, or tensors are missing, unexpected or of the wrong shape for the config.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")

    record = _read_record(config_path)
    expected = record["weights"]
    _check_config_values(record["model_config"], config_path)
    try:
        config = ModelConfig.from_dict(record["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path} holds an invalid model_config: {e}") from e

    # The file's size, tensor table and trained config, before any tensor is read or built.
    size = _check_size(weights_path, expected, config_path)
    tensors, metadata, implied_size = _read_header(weights_path, size)
    with torch.device("meta"), warnings.catch_warnings():  # shapes only: nothing is allocated
        warnings.simplefilter("ignore")  # "zero-element tensors" of a tiny mlp_ratio: refused below anyway
        wanted = {name: tuple(t.shape) for name, t in FrameNetwork(config).state_dict().items()}
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"{weights_path} does not fit the model_config in {config_path}: "
                              f"missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    for name, shape in wanted.items():  # the model's order, so the first mismatch reported is the earliest layer
        dtype, got = tensors[name]
        if got != shape:
            raise CheckpointError(f"{weights_path}: tensor {name!r} has shape {got} but the "
                                  f"model_config in {config_path} needs {shape}")
        if dtype not in _FLOAT_ITEMSIZE:
            raise CheckpointError(f"{weights_path}: tensor {name!r} has non-float dtype {dtype}")
    parameters = sum(math.prod(shape) for shape in wanted.values())
    if implied_size != size:
        raise CheckpointError(f"{weights_path} is {size} bytes but the {parameters} parameters that the "
                              f"model_config in {config_path} implies take {implied_size} with their header")
    trained = _trained_config(metadata, expected["sha256"], weights_path)
    if trained is not None:
        given = asdict(config)
        # A trained config without the v2 fields is a v1 one: they had their defaults.
        defaults = {f.name: f.default for f in fields(ModelConfig) if f.name in V2_FIELDS}
        trained = {**defaults, **trained}
        edited = {k: (given[k], trained[k]) for k in given
                  if k not in OVERRIDABLE_FIELDS and k in trained and not _same(given[k], trained[k])}
        if edited:
            raise CheckpointError(
                f"{config_path} differs from the model_config its weights were trained with in "
                f"{ {k: f'{g!r} (trained: {t!r})' for k, (g, t) in edited.items()} }; only the sampler defaults "
                f"{list(OVERRIDABLE_FIELDS)} may be edited there (for more context views than trained use "
                "FrameModel.from_pretrained(dir, max_context=N))"
            )

    state = read_verified_safetensors(weights_path, expected, config_path, required=True)
    if set(state) != set(wanted) or any(tuple(state[k].shape) != wanted[k] for k in wanted):
        raise CheckpointError(f"{weights_path}: its tensors differ from its header")  # safetensors parses both
    model = FrameNetwork(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return Checkpoint(model.to(device).eval(), config, record["extra"], directory)
