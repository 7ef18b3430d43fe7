"""``rtfm-env train``: train the frame model on recorded shards or world files, in one process or several (DDP).

Commands::

    # one process: the CPU, or the first GPU when there is one (--device picks)
    rtfm-env train --data data/train --size S --batch-size 32 --steps 20000 --out runs/s64

    # several processes on one machine (DDP: gloo on CPU, nccl on GPU); --batch-size is the total
    torchrun --standalone --nproc_per_node 2 -m rtfm_env.cli train --data data/train --out runs/s64

    # with held-out PSNR (a recording made with --split heldout) every --eval-every steps
    rtfm-env train --data data/train --heldout data/heldout --out runs/s64

    # after a kill, or to train further with a larger --steps: the same command again
    rtfm-env train --data data/train --out runs/s64

    # fine-tune the shipped model on a user's place (a world file from 'rtfm-env world build'),
    # a few minutes on one CPU; the last 20% of the recording is held out and scored before and after
    rtfm-env train --init-from default --data my.rtfm --steps 200 --batch-size 8 --lr 5e-5 \
        --warmup-steps 20 --precision fp32 --out runs/ft

Only recordings of the ``train`` split whose env ids are all in ``rtfm_env.scenes.TRAIN_IDS``
are accepted for training; held-out data is only ever evaluated on. World files are the
exception: a world is a user's own place, which is what they fine-tune on, so its env ids are
not checked; instead each world holds out a contiguous block at the end of its recording
(``--holdout-fraction``, after a dropped ``--holdout-gap``, see
:mod:`rtfm_env.data.world_dataset`) whose frames are never trained on, and the run scores it
before training (the initial weights) and after (the final EMA weights) in ``finetune.json``.
Recordings and world files are not mixed in one run.

With ``--init-from`` (a checkpoint directory, or ``default`` for the shipped one) the network
is the checkpoint's: its size, architecture and resolution; ``--size`` is then ignored and
``--model-overrides`` may change only the training and sampler fields. Data of another
resolution is refused (nothing is resized).

What a run writes under ``--out``::

    log.csv                       step, epoch, loss, lr, grad_norm, samples_per_s, wall_s, eval_psnr
    checkpoints/step-00020000/    one complete checkpoint:
        model.safetensors         EMA weights, for inference (FrameModel.from_pretrained)
        config.json               ModelConfig, and in "extra": the TrainConfig, data manifest hash, step
        train_state.safetensors   raw weights and optimizer moments, for resuming
        train_state.json          step, wall time, EMA count, optimizer hyper-parameters, sha256
    last -> checkpoints/step-00020000    relative symlink to the newest complete checkpoint
    finetune.json                 world files only: held-out PSNR and sharpness before and after

A checkpoint is written into a fresh temporary directory, fsynced and renamed into place; only
then is ``last`` switched, by an atomic ``os.replace`` of the symlink. A kill at any moment
therefore leaves ``last`` naming a complete checkpoint, the previous one or the new one, and a
re-run of the same command continues from it.

Randomness is a function of (seed, step, rank): the sample order of an epoch depends on
(seed, epoch), a sample's context draw on (seed, epoch, index), the flow noise and times of
step s on rank r on (seed, s, r). The step therefore is the whole random state, and a resumed
run continues bit for bit as an uninterrupted one would (with the same number of processes).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.data.shards import read_manifest, sha256_file
from rtfm_env.data.world_dataset import WorldFrameDataset, load_world
from rtfm_env.geometry import Intrinsics
from rtfm_env.model.checkpoint import (
    Checkpoint,
    CheckpointError,
    _fsync_dir,
    _write_file,
    load_checkpoint,
    read_verified_safetensors,
    save_checkpoint,
)
from rtfm_env.model.network import MODEL_SIZES, FrameNetwork, ModelConfig, model_config
from rtfm_env.model.sampler import FrameModel, nearest_context, training_loss

__all__ = [
    "TrainConfig",
    "TrainResult",
    "SCHEDULES",
    "PRECISIONS",
    "DEVICES",
    "LOG_FIELDS",
    "RESUMABLE_CHANGES",
    "ARCHITECTURE_FIELDS",
    "parse_model_overrides",
    "build_model_config",
    "resolve_init_from",
    "DEFAULT_INIT",
    "FINETUNE_FILE",
    "learning_rate",
    "step_generator",
    "open_training_data",
    "open_heldout_data",
    "save_train_checkpoint",
    "load_train_checkpoint",
    "evaluate_psnr",
    "evaluate_heldout",
    "main",
    "add_arguments",
    "run",
]

SCHEDULES = ("cosine", "constant")
PRECISIONS = ("bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
#: Columns of ``log.csv``.
LOG_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "wall_s", "eval_psnr")
#: TrainConfig fields that may differ when a run is resumed: they do not change what is learned.
RESUMABLE_CHANGES = (
    "data",  # paths may move; the data itself is compared by manifest hash
    "heldout",
    "steps",
    "log_every",
    "ckpt_every",
    "keep_every",
    "eval_every",
    "eval_samples",
    "threads",
    "device",
    "num_workers",
    "progress",
    "minutes",
    "out",
)

LAST = "last"
CHECKPOINTS = "checkpoints"
LOG_FILE = "log.csv"
STATE_WEIGHTS = "train_state.safetensors"
STATE_RECORD = "train_state.json"
STATE_FORMAT = "rtfm-train-state"
STATE_VERSION = 1
FINETUNE_FILE = "finetune.json"
FINETUNE_FORMAT = "rtfm-finetune"
#: The word ``--init-from`` takes for the shipped checkpoint (any case).
DEFAULT_INIT = "default"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _opt(help: str, **argparse_kwargs: object) -> dict:  # noqa: A002 (argparse's own name)
    return {"help": help, **argparse_kwargs}


@dataclass
class TrainConfig:
    """Every option of a training run; the ``train`` command line is generated from these fields.

    Saved in every checkpoint's ``config.json`` (``extra.train_config``) beside the ModelConfig.
    """

    # -- data
    data: list[str] = field(
        default_factory=lambda: ["data/train"],
        metadata=_opt("training data: recording directories made by 'rtfm-env record' (split train, training ids "
                      "only), or world files made by 'rtfm-env world build' (any place: your own place is what "
                      "you fine-tune on; part of each world is held out, see --holdout-fraction); not both kinds",
                      nargs="+", metavar="PATH"),
    )
    heldout: str | None = field(
        default=None, metadata=_opt("held-out recording (split heldout) for PSNR evaluation", metavar="DIR")
    )
    envs: list[str] | None = field(
        default=None, metadata=_opt("train on these env ids only (full or short names)", nargs="+", metavar="ID")
    )
    n_context: int = field(default=2, metadata=_opt("context views per sample (K)", type=int, metavar="K"))
    n_candidates: int = field(
        default=8, metadata=_opt("nearest frames (in pose) that the context is drawn from", type=int, metavar="M")
    )
    min_gap: int = field(default=1, metadata=_opt("fewest steps between target and context", type=int, metavar="N"))
    max_gap: int | None = field(
        default=None, metadata=_opt("most steps between target and context; default: any", type=int, metavar="N")
    )
    past_only: bool = field(default=False, metadata=_opt("draw context only from frames before the target"))
    holdout_fraction: float | None = field(
        default=None,
        metadata=_opt("world files only: share of each world's frames held out, one block at the end of the "
                      "recording, never trained on and scored before and after training (finetune.json); "
                      "default 0.2; 0: train on every frame, no score", type=float, metavar="F"),
    )
    holdout_gap: int = field(
        default=8,
        metadata=_opt("world files only: frames just before the held-out block that are dropped (neither trained "
                      "on nor context), so held-out targets are not near copies of training frames", type=int,
                      metavar="N"),
    )
    # -- model
    size: str = field(default="S", metadata=_opt("named model size", choices=sorted(MODEL_SIZES)))
    model_overrides: list[str] = field(
        default_factory=list,
        metadata=_opt("ModelConfig fields to override, e.g. patch=4 depth=8 (height and width come from the data)",
                      nargs="+", metavar="FIELD=VALUE"),
    )
    init_from: str | None = field(
        default=None,
        metadata=_opt("start a new run from this checkpoint's weights with a fresh optimizer ('default': the "
                      "shipped checkpoint); the network is the checkpoint's (--size is ignored, --model-overrides "
                      "may change only training and sampler fields) and the data must have its resolution; "
                      "its weights are not reloaded when resuming", metavar="DIR"),
    )
    # -- optimisation
    batch_size: int = field(
        default=32, metadata=_opt("samples per optimizer step, all processes together", type=int, metavar="B")
    )
    lr: float = field(default=3e-4, metadata=_opt("peak learning rate (AdamW)", type=float, metavar="LR"))
    final_lr_fraction: float = field(
        default=0.1, metadata=_opt("the cosine schedule ends at this fraction of --lr", type=float, metavar="F")
    )
    warmup_steps: int = field(
        default=500, metadata=_opt("optimizer steps of linear learning-rate warm-up", type=int, metavar="N")
    )
    schedule: str = field(default="cosine", metadata=_opt("learning-rate schedule after warm-up", choices=SCHEDULES))
    weight_decay: float = field(default=0.0, metadata=_opt("AdamW decoupled weight decay", type=float, metavar="WD"))
    beta1: float = field(default=0.9, metadata=_opt("AdamW first-moment decay", type=float, metavar="B1"))
    beta2: float = field(default=0.99, metadata=_opt("AdamW second-moment decay", type=float, metavar="B2"))
    steps: int = field(
        default=20000, metadata=_opt("total optimizer steps (raise it to extend a finished run)", type=int, metavar="N")
    )
    minutes: float = field(
        default=0.0,
        metadata=_opt("stop this call after about this many minutes of wall time, at the next log row, with a "
                      "checkpoint (the same command resumes there); 0: no limit", type=float, metavar="MIN"),
    )
    grad_clip: float = field(
        default=1.0, metadata=_opt("clip the global gradient L2 norm to this; 0: no clipping", type=float, metavar="G")
    )
    ema_decay: float = field(
        default=0.999,
        metadata=_opt("per-step decay of the EMA weights (warmed up as min(decay, (1+n)/(10+n)))", type=float,
                      metavar="D"),
    )
    precision: str = field(default="bf16", metadata=_opt("autocast precision of the forward pass", choices=PRECISIONS))
    # -- run
    seed: int = field(default=0, metadata=_opt("seed of the initial weights, data order and flow noise", type=int,
                                               metavar="S"))
    out: str = field(default="runs/frame-model", metadata=_opt("run directory (checkpoints, log.csv)", metavar="DIR"))
    log_every: int = field(default=10, metadata=_opt("log a CSV row every N steps", type=int, metavar="N"))
    ckpt_every: int = field(default=500, metadata=_opt("save a checkpoint every N steps", type=int, metavar="N"))
    keep_every: int = field(
        default=0, metadata=_opt("also keep the checkpoints of every N-th step; 0: only the last", type=int,
                                 metavar="N")
    )
    eval_every: int = field(
        default=1000, metadata=_opt("held-out PSNR every N steps (with --heldout); 0: never", type=int, metavar="N")
    )
    eval_samples: int = field(default=64, metadata=_opt("held-out samples per evaluation", type=int, metavar="N"))
    threads: int = field(
        default=0, metadata=_opt("torch threads per process; 0: the CPUs divided among processes", type=int,
                                 metavar="N")
    )
    device: str = field(default="auto", metadata=_opt("where to train; auto: cuda when available", choices=DEVICES))
    num_workers: int = field(default=0, metadata=_opt("DataLoader worker processes per process", type=int,
                                                      metavar="N"))
    progress: bool = field(default=True, metadata=_opt("show a tqdm progress bar"))

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (valid choices listed for names)."""
        choices = {"size": sorted(MODEL_SIZES), "schedule": SCHEDULES, "precision": PRECISIONS, "device": DEVICES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; valid: {list(valid)}")
        if not self.data:
            raise ValueError("--data needs at least one recording directory")
        minimums = {
            "n_context": 1, "n_candidates": 1, "min_gap": 1, "batch_size": 1, "steps": 1, "log_every": 1,
            "ckpt_every": 1, "eval_samples": 1, "warmup_steps": 0, "keep_every": 0, "eval_every": 0, "threads": 0,
            "num_workers": 0, "seed": 0, "holdout_gap": 0,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an int >= {low}, got {value!r}")
        if self.max_gap is not None and self.max_gap < self.min_gap:
            raise ValueError(f"--max-gap ({self.max_gap}) must be >= --min-gap ({self.min_gap})")
        if self.n_candidates < self.n_context:
            raise ValueError(f"--n-candidates ({self.n_candidates}) must be >= --n-context ({self.n_context})")
        ranges = {
            "lr": (0.0, math.inf, False), "final_lr_fraction": (0.0, 1.0, True), "weight_decay": (0.0, math.inf, True),
            "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True), "grad_clip": (0.0, math.inf, True),
            "ema_decay": (0.0, 1.0, True), "minutes": (0.0, math.inf, True),
        }
        for name, (low, high, low_ok) in ranges.items():
            value = float(getattr(self, name))
            if not (math.isfinite(value) and (value >= low if low_ok else value > low) and value <= high):
                bound = f"[{low}, {high}]" if low_ok else f"({low}, {high}]"
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number in {bound}, got {value!r}")
        if self.beta1 >= 1.0 or self.beta2 >= 1.0:
            raise ValueError(f"--beta1 and --beta2 must be < 1, got {self.beta1}, {self.beta2}")
        if self.holdout_fraction is not None:
            value = self.holdout_fraction
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"--holdout-fraction must be a number in [0, 1), got {value!r}")
        parse_model_overrides(self.model_overrides)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return json.loads(json.dumps(asdict(self)))


#: ModelConfig fields that define the network and what its inputs mean. A run started with
#: --init-from must keep them; the flow-time distribution, loss weighting and sampler defaults
#: may change (fine-tuning).
ARCHITECTURE_FIELDS = (
    "height", "width", "patch", "dim", "depth", "heads", "mlp_ratio", "max_context", "pos_embed", "qk_norm",
    "moment_scale", "flow_start",
    # v2: the inputs and outputs themselves (modules exist only when on; depth's units and range)
    "warp_input", "depth_input", "predict_depth", "residual", "warp_start", "min_depth", "max_depth", "context_noise",
)


def parse_model_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``FIELD=VALUE`` strings into typed ModelConfig overrides.

    Raises:
        ValueError: a malformed item, an unknown field (the valid ones are listed), ``height`` or
            ``width`` (set by the data), or a value that does not parse as the field's type.
    """
    defaults = ModelConfig()
    valid = [f.name for f in fields(ModelConfig) if f.name not in ("height", "width")]
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"model override {item!r} is not FIELD=VALUE")
        if name in ("height", "width"):
            raise ValueError(f"model override {item!r}: height and width are set by the recordings' resolution")
        if name not in valid:
            raise ValueError(f"unknown ModelConfig field {name!r} in {item!r}; valid fields: {valid}")
        default = getattr(defaults, name)
        kind = float if default is None else type(default)  # the optional fields are floats
        text = text.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError:
            raise ValueError(f"model override {item!r}: {text!r} is not a valid {kind.__name__}") from None
        out[name] = value
    return out


def resolve_init_from(value: str | os.PathLike) -> Path:
    """The checkpoint directory that ``--init-from value`` names: ``default`` (any case) is the shipped one.

    A directory that is literally called ``default`` is given as ``./default``.
    """
    if str(value).strip().lower() == DEFAULT_INIT:
        from rtfm_env.cameras import DEFAULT_CHECKPOINT  # the one place the shipped checkpoint is named

        return Path(DEFAULT_CHECKPOINT)
    return Path(value)


def build_model_config(cfg: TrainConfig, intrinsics: Intrinsics, base: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig of a run: the named size (or ``base``), the data's resolution and the overrides.

    Args:
        cfg: the run's options (``size``, ``model_overrides``, ``n_context``, ``init_from``).
        intrinsics: the data's camera.
        base: the config of the ``--init-from`` checkpoint. When given, it is the run's network
            (``cfg.size`` is ignored); overrides may change only fields outside
            :data:`ARCHITECTURE_FIELDS` (an override equal to the checkpoint's value is allowed),
            and the data must have the checkpoint's resolution.

    Raises:
        ValueError: a bad override, a resolution the patch does not divide (or, with ``base``,
            other than the checkpoint's), an architecture override with ``base``, or
            ``n_context`` above the model's ``max_context``.
    """
    overrides = parse_model_overrides(cfg.model_overrides)
    if base is None:
        mcfg = model_config(cfg.size, height=int(intrinsics.height), width=int(intrinsics.width), **overrides)
    else:
        if (base.height, base.width) != (int(intrinsics.height), int(intrinsics.width)):
            raise ValueError(
                f"--init-from {cfg.init_from}: the checkpoint's network was trained on {base.width}x{base.height} "
                f"frames, the data are {intrinsics.width}x{intrinsics.height}; frames are not resized: build the "
                f"world (rtfm-env world build --res {base.width}) or record (rtfm-env record --res {base.width}) at "
                "the checkpoint's resolution"
            )
        changed = {k: (getattr(base, k), v) for k, v in overrides.items()
                   if k in ARCHITECTURE_FIELDS and getattr(base, k) != v}
        if changed:
            raise ValueError(f"--init-from {cfg.init_from}: --model-overrides {changed} (checkpoint, asked) would "
                             f"change its network; only these fields may change: "
                             f"{[f.name for f in fields(ModelConfig) if f.name not in ARCHITECTURE_FIELDS]}")
        mcfg = replace(base, **overrides)
    if cfg.n_context > mcfg.max_context:
        raise ValueError(f"--n-context {cfg.n_context} exceeds the model's max_context {mcfg.max_context}; "
                         "raise it with --model-overrides max_context=N")
    return mcfg


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine or constant.

    Warm-up rises linearly to ``lr`` over ``warmup_steps`` steps; the cosine then falls to
    ``final_lr_fraction * lr`` at step ``steps`` (and stays there beyond it).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.final_lr_fraction
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of the flow noise and times of one step on one rank.

    Seeded from (seed, step, rank) alone, so a resumed run draws what an uninterrupted one
    would and no generator state needs saving; on the CPU, so a GPU run draws the same noise.
    """
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The training recordings (or world files) as one dataset, their shared camera and their identity."""

    dataset: Dataset
    parts: list[PosedFrameDataset] | list[WorldFrameDataset]
    intrinsics: Intrinsics
    record: dict[str, Any]  # JSON: combined manifest_hash and one entry per recording (or world)
    #: World files only: the held-out blocks of every world as one dataset (None: none held out).
    heldout: Dataset | None = None
    heldout_parts: list[WorldFrameDataset] = field(default_factory=list)

    @property
    def worlds(self) -> bool:
        """Whether the data are world files (not recordings)."""
        return "worlds" in self.record

    def set_epoch(self, epoch: int) -> None:
        """Set the context-draw epoch of every recording."""
        for part in self.parts:
            part.set_epoch(epoch)


def _dataset_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return dict(n_context=cfg.n_context, n_candidates=cfg.n_candidates, min_gap=cfg.min_gap, max_gap=cfg.max_gap,
                past_only=cfg.past_only, seed=cfg.seed)


def _is_world_file(path: str) -> bool:
    """``--data`` names a world file when it is a regular file; a directory is a recording."""
    return Path(path).is_file()


def open_training_data(cfg: TrainConfig) -> TrainingData:
    """Open ``cfg.data`` for training, refusing anything that is not training data.

    Regular files are world files (:func:`open_world_data`); directories are recordings.

    Raises:
        FileNotFoundError: a recording without a manifest.
        ValueError: a recording of the held-out split (or a shard of it), an env id outside
            ``rtfm_env.scenes.TRAIN_IDS``, recordings of different intrinsics, or a corrupt one;
            world files mixed with recordings; ``--holdout-fraction`` with recordings.
        KeyError: an env id in ``cfg.envs`` that no recording holds.
    """
    worlds = [p for p in cfg.data if _is_world_file(p)]
    if worlds:
        if len(worlds) != len(cfg.data):
            raise ValueError(f"--data mixes world files {worlds} with recording directories "
                             f"{[p for p in cfg.data if p not in worlds]}; train on one kind per run")
        return open_world_data(cfg)
    if cfg.holdout_fraction is not None:
        raise ValueError("--holdout-fraction applies to world files; recordings are evaluated on a held-out "
                         "recording (--heldout)")
    from rtfm_env.scenes import TRAIN_IDS  # loads MiniWorld: only when data is opened

    parts, entries, held_all = [], [], set()
    for root in cfg.data:
        manifest = read_manifest(root)
        if manifest.split != "train":
            raise ValueError(f"{root} is a {manifest.split!r} recording; training reads only recordings of the "
                             "'train' split (held-out data is for --heldout evaluation)")
        held = {e.env_id for e in manifest.shards}
        held_all |= held
        foreign = sorted(held - set(TRAIN_IDS))
        if foreign:
            raise ValueError(f"{root} holds env ids {foreign} that are not training ids; training accepts only "
                             f"{list(TRAIN_IDS)}")
        envs = None
        if cfg.envs is not None:
            # Each recording contributes the wanted ids it holds; an id that none holds fails below.
            envs = [n for n in cfg.envs if n in held or f"MiniWorld-{n}-v0" in held]
            if not envs:
                continue
        ds = PosedFrameDataset(root, split="train", envs=envs, **_dataset_kwargs(cfg))
        parts.append(ds)
        entries.append({"path": str(root), "manifest_hash": ds.manifest_hash,
                        "env_ids": sorted({e.env_id for e in ds.entries}), "samples": len(ds)})
    if cfg.envs is not None:
        found = {e for entry in entries for e in entry["env_ids"]}
        missing = [n for n in cfg.envs if n not in found and f"MiniWorld-{n}-v0" not in found]
        if missing:
            raise KeyError(f"env ids {missing} are in none of the recordings {cfg.data}; they hold: {sorted(held_all)}")
    cameras = {p.intrinsics for p in parts}
    if len(cameras) != 1:
        raise ValueError(f"the recordings {cfg.data} have different intrinsics {sorted(map(str, cameras))}")
    combined = hashlib.sha256(json.dumps([e["manifest_hash"] for e in entries]).encode()).hexdigest()
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    record = {"manifest_hash": combined, "envs": cfg.envs, "recordings": entries}
    return TrainingData(dataset, parts, cameras.pop(), record)


def open_world_data(cfg: TrainConfig) -> TrainingData:
    """Open the world files of ``cfg.data``: training samples, and each world's held-out block.

    The training-id check does not apply: a world file is a user's own place, which is what
    they fine-tune on. Each world is split by :func:`rtfm_env.data.world_dataset.split_world`
    (``cfg.holdout_fraction``, default 0.2, and ``cfg.holdout_gap``).

    Raises:
        ValueError: a corrupt, empty or too small world (WorldDataError), worlds of different
            cameras, or ``--heldout`` / ``--envs`` (which apply to recordings).
    """
    if cfg.heldout is not None:
        raise ValueError("--heldout applies to recordings; a world file holds out part of itself "
                         "(--holdout-fraction)")
    if cfg.envs is not None:
        raise ValueError("--envs applies to recordings; give the world files to train on as --data")
    fraction = 0.2 if cfg.holdout_fraction is None else float(cfg.holdout_fraction)
    parts, held, entries = [], [], []
    for path in cfg.data:
        memory = load_world(path)
        digest = sha256_file(path)
        kw = dict(n_context=cfg.n_context, n_candidates=cfg.n_candidates, holdout_fraction=fraction,
                  holdout_gap=cfg.holdout_gap, seed=cfg.seed, memory=memory, sha256=digest)
        ds = WorldFrameDataset(path, "train", min_gap=cfg.min_gap, max_gap=cfg.max_gap, past_only=cfg.past_only, **kw)
        parts.append(ds)
        ws = ds.world_split
        entry = {"path": str(path), "manifest_hash": digest, "env_ids": [ds.env_id], "frames": len(ws.ids),
                 "samples": len(ds), "dropped_frames": len(ws.dropped), "heldout_samples": 0}
        if len(ws.heldout):
            h = WorldFrameDataset(path, "heldout", **kw)
            held.append(h)
            entry["heldout_samples"] = len(h)
            # Ids of the block, so the report says which frames were scored.
            entry["heldout_ids"] = [int(ws.ids[ws.heldout[0]]), int(ws.ids[ws.heldout[-1]])]
        entries.append(entry)
    cameras = {p.intrinsics for p in parts}
    if len(cameras) != 1:
        raise ValueError(f"the world files {cfg.data} have different cameras {sorted(map(str, cameras))}")
    combined = hashlib.sha256(json.dumps([e["manifest_hash"] for e in entries]).encode()).hexdigest()
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    heldout = None if not held else held[0] if len(held) == 1 else ConcatDataset(held)
    record = {"manifest_hash": combined, "holdout_fraction": fraction, "holdout_gap": cfg.holdout_gap,
              "worlds": entries}
    return TrainingData(dataset, parts, cameras.pop(), record, heldout, held)


def open_heldout_data(cfg: TrainConfig, intrinsics: Intrinsics) -> PosedFrameDataset | None:
    """Open ``cfg.heldout`` (None when unset) for evaluation.

    Raises:
        ValueError: a recording of the train split, a training env id in it, or a camera other
            than the training data's.
    """
    if cfg.heldout is None:
        return None
    from rtfm_env.scenes import TRAIN_IDS

    ds = PosedFrameDataset(cfg.heldout, split="heldout", **_dataset_kwargs(cfg))
    leaked = sorted({e.env_id for e in ds.entries} & set(TRAIN_IDS))
    if leaked:
        raise ValueError(f"{cfg.heldout} holds training env ids {leaked}; held-out data must not overlap training")
    if ds.intrinsics != intrinsics:
        raise ValueError(f"{cfg.heldout} was recorded with {ds.intrinsics}, the training data with {intrinsics}")
    return ds


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that can begin an epoch part-way through, where a resumed run stopped."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch."""
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)


# --------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------


class _FlowLoss(nn.Module):
    """The network and its training loss as one module, so DDP wraps the whole forward pass."""

    def __init__(self, network: FrameNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return training_loss(self.network, batch, generator)


def _ema_update(decay: float):  # noqa: ANN202 (torch's multi_avg_fn signature)
    """AveragedModel's multi_avg_fn for an EMA whose decay warms up with the number of updates."""

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        # Warm-up (as timm and diffusers do): an early EMA would otherwise stay near the random init.
        d = min(decay, (1.0 + n) / (10.0 + n))
        for e, p in zip(ema_params, params, strict=True):
            e.lerp_(p, 1.0 - d)

    return update


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _remove_stale(out: Path) -> None:
    """Delete temporary directories and links that a killed save left behind."""
    for path in [*out.glob(f".{LAST}.*"), *(out / CHECKPOINTS).glob(".*.saving")]:
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def save_train_checkpoint(
    out: str | Path,
    step: int,
    network: FrameNetwork,
    ema: AveragedModel,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep_every: int = 0,
) -> Path:
    """Write the checkpoint of ``step`` under ``out/checkpoints`` and point ``out/last`` at it.

    The EMA weights go to ``model.safetensors`` + ``config.json`` (via
    :func:`~rtfm_env.model.checkpoint.save_checkpoint`, ``extra`` included); the raw weights and
    optimizer state to ``train_state.safetensors`` + ``train_state.json``. Everything is written
    into a temporary directory, renamed into place, and only then is the ``last`` symlink
    replaced atomically; a failure at any point leaves the previous ``last`` as it was.
    Older checkpoints are deleted afterwards, except those of every ``keep_every``-th step.

    Returns:
        The new checkpoint directory.
    """
    out = Path(out)
    ckpts = out / CHECKPOINTS
    ckpts.mkdir(parents=True, exist_ok=True)
    name = _step_dir_name(step)
    final = ckpts / name
    last = out / LAST
    if final.exists() and last.is_symlink() and os.readlink(last) == f"{CHECKPOINTS}/{name}":
        return final  # this step is saved already (a run resumed at its end)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".saving", dir=ckpts))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        save_checkpoint(tmp, ema.module, extra=extra)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        state = optimizer.state_dict()
        scalars: dict[str, Any] = {}
        for index, entry in state["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}.{key}"] = value
        weights = safetensors.torch.save(tensors, metadata={"format": STATE_FORMAT})
        record = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "step": int(step),
            "ema_updates": int(ema.n_averaged),
            "param_groups": state["param_groups"],
            "optimizer_scalars": scalars,
            "progress": {k: extra[k] for k in ("wall_s", "world_size") if k in extra},
            "tensors": {"file": STATE_WEIGHTS, "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()},
        }
        _write_file(tmp / STATE_WEIGHTS, weights)
        _write_file(tmp / STATE_RECORD, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)  # a stale save of this step that `last` never pointed at
        os.replace(tmp, final)
        _fsync_dir(ckpts)
        link = out / f".{LAST}.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        os.symlink(f"{CHECKPOINTS}/{name}", link)
        try:
            os.replace(link, last)  # the atomic switch: `last` names the old or the new checkpoint
        finally:
            link.unlink(missing_ok=True)
        _fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in ckpts.glob("step-*"):
        old_step = int(old.name.split("-")[1]) if old.name.split("-")[1].isdigit() else -1
        if old != final and not (keep_every and old_step >= 0 and old_step % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class _Resumed:
    step: int
    extra: dict[str, Any]
    record: dict[str, Any]


def load_train_checkpoint(
    directory: str | Path,
    network: FrameNetwork,
    ema: AveragedModel,
    optimizer: torch.optim.Optimizer,
) -> _Resumed:
    """Restore ``network``, ``ema`` and ``optimizer`` from a checkpoint written by :func:`save_train_checkpoint`.

    Returns:
        The saved step, the ``extra`` of ``config.json`` and the ``train_state.json`` record.

    Raises:
        CheckpointError: a missing, corrupt or truncated file, or tensors that do not fit.
    """
    directory = Path(directory)
    device = next(network.parameters()).device
    ckpt = load_checkpoint(directory, device=device)
    if ckpt.config != network.config:
        raise CheckpointError(f"{directory} holds a model of another config:\n  saved: {ckpt.config}\n"
                              f"  now:   {network.config}")
    record_path, weights_path = directory / STATE_RECORD, directory / STATE_WEIGHTS
    for path in (record_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"training state file {path} is missing")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{record_path} is not valid JSON: {e}") from e
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{record_path} is not a training state (format {STATE_FORMAT!r} expected)")
    if record.get("format_version") != STATE_VERSION:
        raise CheckpointError(f"{record_path} has format_version {record.get('format_version')!r}; "
                              f"this code reads {STATE_VERSION}")
    tensors = read_verified_safetensors(weights_path, record.get("tensors"), record_path, required=True)

    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    wanted = network.state_dict()
    if set(weights) != set(wanted) or any(weights[k].shape != wanted[k].shape for k in wanted):
        raise CheckpointError(f"{weights_path}: the raw weights do not fit the model in {directory / 'config.json'}")
    network.load_state_dict(weights)
    ema.module.load_state_dict(ckpt.model.state_dict())
    ema.n_averaged.fill_(int(record["ema_updates"]))

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in record.get("optimizer_scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in state.items():
        if not 0 <= index < len(params):
            raise CheckpointError(f"{weights_path}: optimizer state for parameter {index} of {len(params)}")
        for name, value in entry.items():
            if torch.is_tensor(value) and value.ndim and value.shape != params[index].shape:
                raise CheckpointError(f"{weights_path}: optimizer {name} of parameter {index} has shape "
                                      f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}")
    groups = record["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{record_path}: the optimizer state does not fit this model: {e}") from e
    return _Resumed(int(record["step"]), ckpt.extra, record)


def _check_resumable(extra: dict[str, Any], cfg: TrainConfig, data_record: dict[str, Any], last: Path) -> None:
    """Refuse to continue a run whose learning-relevant options or data differ from ``cfg``'s."""
    # Options added after a run was saved count as their defaults, so older runs still resume.
    saved = TrainConfig().to_dict() | {k: v for k, v in extra.get("train_config", {}).items()}
    now = cfg.to_dict()
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in now.items()
             if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if diffs:
        raise ValueError(f"{last} was trained with other options ({'; '.join(diffs)}); use the same options "
                         f"to resume, or another --out for a new run. Options that may change on resume: "
                         f"{list(RESUMABLE_CHANGES)}")
    saved_hash = extra.get("data", {}).get("manifest_hash")
    if saved_hash != data_record["manifest_hash"]:
        raise ValueError(f"{last} was trained on other data (manifest hash {saved_hash}, now "
                         f"{data_record['manifest_hash']}); use another --out for a new run")


# --------------------------------------------------------------------------------------
# Logging and evaluation
# --------------------------------------------------------------------------------------


def _open_log(path: Path, keep_until: int) -> Any:
    """Open ``log.csv`` for appending, keeping only complete rows up to step ``keep_until``.

    Rows a killed run logged after its last checkpoint are dropped, so the log of a resumed run
    reads as one run's.
    """
    rows: list[dict[str, str]] = []
    if path.exists() and keep_until > 0:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    ok = None not in row.values() and int(row["step"]) <= keep_until
                except (KeyError, TypeError, ValueError):
                    ok = False
                if ok:
                    rows.append(row)
    fd, tmp = tempfile.mkstemp(prefix=".log.", suffix=".csv", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the log is meant to be read
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return open(path, "a", newline="", encoding="utf-8")


def evaluate_psnr(
    model: FrameModel,
    dataset: PosedFrameDataset,
    indices: np.ndarray,
    batch_size: int,
    seed: int,
) -> float:
    """Mean PSNR (dB) of the frames ``model`` generates for ``dataset[indices]`` against the true ones.

    :func:`evaluate_heldout`'s PSNR, for a dataset that knows its intrinsics.
    """
    return evaluate_heldout(model, dataset, indices, batch_size, seed, dataset.intrinsics)["psnr"]


def _context_depths(model: Any, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``context_depths`` (B, K, H, W) of the samples for a model that reads them (v2); nothing else."""
    if not getattr(model, "needs_depth", False):
        return {}
    return {"context_depths": torch.stack([it["context_depth"] for it in items])}


def _eval_indices(n: int, most: int) -> np.ndarray:
    """At most ``most`` sample indices spread evenly over ``n`` samples."""
    return np.unique(np.linspace(0, n - 1, min(most, n)).astype(int))


def evaluate_heldout(
    model: Any,
    dataset: Dataset,
    indices: np.ndarray,
    batch_size: int,
    seed: int,
    intrinsics: Intrinsics,
) -> dict[str, Any]:
    """PSNR and sharpness of the frames ``model`` generates for ``dataset[indices]`` against the true ones.

    Args:
        model: anything with FrameModel's ``generate(target_poses, context_frames, context_poses,
            intrinsics, generator=...)``.
        dataset: samples with the keys of :class:`PosedFrameDataset` (a ConcatDataset too).
        indices: the samples to score.
        batch_size: frames generated per call.
        seed: seeds the sampler's noise (the same seed: the same frames).
        intrinsics: the camera of every sample.

    Returns:
        ``psnr`` (mean over frames, dB; identical frames count as
        :data:`rtfm_env.eval.metrics.PSNR_CAP`), ``psnr_se`` (its standard error), ``sharpness``
        (the frames' summed mean absolute image gradient over the true frames': 1 is right, well
        below 1 is blur), ``frames`` and ``per_frame_psnr``.
    """
    from rtfm_env.eval.metrics import psnr, sharpness

    scores, made, truth = [], [], []
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start : start + batch_size]]
        frames = model.generate(
            torch.stack([it["target_pose"] for it in items]),
            torch.stack([it["context_frames"] for it in items]),
            torch.stack([it["context_poses"] for it in items]),
            intrinsics,
            generator=generator,
            **_context_depths(model, items),
        )
        for it, frame in zip(items, frames, strict=True):
            true = it["target_frame"].numpy()
            scores.append(psnr(true, frame))
            made.append(sharpness(frame))
            truth.append(sharpness(true))
    n = len(scores)
    return {
        "psnr": float(np.mean(scores)),
        "psnr_se": float(np.std(scores, ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "sharpness": float(np.sum(made) / max(float(np.sum(truth)), 1e-9)),
        "frames": n,
        "per_frame_psnr": [round(float(v), 4) for v in scores],
    }


class _CopyNearest:
    """The no-learning baseline: the context view nearest the target (where the flow starts), copied."""

    def __init__(self, rotation_weight: float) -> None:
        self.rotation_weight = rotation_weight

    def generate(self, target_poses: torch.Tensor, context_frames: torch.Tensor, context_poses: torch.Tensor,
                 intrinsics: Intrinsics, generator: torch.Generator | None = None) -> np.ndarray:
        nearest = nearest_context(target_poses, context_poses, rotation_weight=self.rotation_weight)  # (B,)
        return context_frames[torch.arange(len(nearest)), nearest].numpy()


class _FinetuneReport:
    """``finetune.json``: the held-out block of the world files, scored before and after training.

    ``before`` is the initial weights (the ``--init-from`` checkpoint, or the seeded random
    init), scored when a run starts and kept across resumes; ``after`` is the final EMA weights,
    scored when the run reaches ``--steps``. Every score uses the same samples (at most
    ``--eval-samples``, spread evenly over the held-out targets), seed and precision.
    """

    def __init__(self, out: Path, cfg: TrainConfig, data: TrainingData, mcfg: ModelConfig,
                 init: Checkpoint | None, batch_size: int, device: torch.device) -> None:
        self.path = out / FINETUNE_FILE
        self.cfg, self.data, self.mcfg, self.init, self.device = cfg, data, mcfg, init, device
        self.batch_size = batch_size
        self.indices = _eval_indices(len(data.heldout), cfg.eval_samples)
        self.record: dict[str, Any] = {}
        self.after_scores: dict[str, Any] | None = None  # set by the loop when it scores the final step

    @property
    def before(self) -> dict[str, Any]:
        return self.record["before"]

    @property
    def after(self) -> dict[str, Any] | None:
        return self.record.get("after")

    def evaluate(self, network: FrameNetwork) -> dict[str, Any]:
        """Score ``network`` on the held-out samples (the run's precision)."""
        model = FrameModel(network, torch.bfloat16 if self.cfg.precision == "bf16" else None)
        return evaluate_heldout(model, self.data.heldout, self.indices, self.batch_size, self.cfg.seed,
                                self.data.intrinsics)

    def _read(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        same = (isinstance(record, dict) and record.get("format") == FINETUNE_FORMAT
                and record.get("data", {}).get("manifest_hash") == self.data.record["manifest_hash"]
                and record.get("evaluated_indices") == self.indices.tolist() and isinstance(record.get("before"), dict))
        return record if same else None

    def _write(self) -> None:
        from rtfm_env.data.shards import atomic_write_bytes

        atomic_write_bytes(self.path, (json.dumps(self.record, indent=2, allow_nan=False) + "\n").encode())

    def start(self, initial: FrameNetwork | None, step: int) -> None:
        """Score the initial weights (``initial``, or rebuilt when None) unless a resumed run already did."""
        saved = self._read() if step > 0 else None
        if saved is not None:
            self.record = saved
            return
        if initial is None:  # a resumed run whose report is missing: rebuild what it started from
            initial = _initial_network(self.cfg, self.mcfg, self.init, self.device)
        baseline = evaluate_heldout(_CopyNearest(self.mcfg.nearest_rotation_weight), self.data.heldout,
                                    self.indices, self.batch_size, self.cfg.seed, self.data.intrinsics)
        self.record = {
            "format": FINETUNE_FORMAT,
            "format_version": 1,
            "init_from": self.cfg.init_from,
            "init_checkpoint": None if self.init is None else str(self.init.path),
            "data": self.data.record,
            "heldout_samples": len(self.data.heldout),
            "evaluated_indices": self.indices.tolist(),
            "precision": self.cfg.precision,
            "sample_steps": self.mcfg.sample_steps,
            "sample_sigma": self.mcfg.sample_sigma,
            "baseline_copy_nearest_context": _summary(baseline),
            "before": {"step": 0, **_summary(self.evaluate(initial))},
            "after": None,
            "psnr_gain_db": None,
            "train_config": self.cfg.to_dict(),
        }
        self._write()

    def finish(self, ema: FrameNetwork, step: int, wall_s: float) -> None:
        """Score the final EMA weights (unless already scored at this step) and write the report."""
        if self.after is not None and self.after.get("step") == step:
            return
        scores = self.after_scores or self.evaluate(ema)
        self.record["after"] = {"step": int(step), "wall_s": round(float(wall_s), 2), **_summary(scores)}
        before = np.array(self.before["per_frame_psnr"])
        after = np.array(scores["per_frame_psnr"])
        diff = after - before  # paired by frame
        self.record["psnr_gain_db"] = {
            "mean": float(diff.mean()),
            "se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None,
        }
        self._write()

    def describe(self, which: str) -> str:
        """One line: the held-out PSNR and sharpness ``before`` or ``after`` (with the gain)."""
        r = self.record[which]
        text = (f"held-out PSNR {which} training {r['psnr']:.2f} dB, sharpness {r['sharpness']:.2f} "
                f"({r['frames']} frames of the held-out block")
        if which == "before":
            b = self.record["baseline_copy_nearest_context"]
            return text + f"; copying the nearest context view: {b['psnr']:.2f} dB, sharpness {b['sharpness']:.2f})"
        gain = self.record["psnr_gain_db"]
        se = "" if gain["se"] is None else f" ± {gain['se']:.2f}"
        return text + f"; before: {self.before['psnr']:.2f} dB, {self.before['sharpness']:.2f}; " \
                      f"gain {gain['mean']:+.2f}{se} dB)"


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of :func:`evaluate_heldout` scores (finite numbers only)."""
    out = dict(scores)
    if not math.isfinite(out["psnr_se"]):
        out["psnr_se"] = None
    return out


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a :func:`main` call ended with."""

    step: int  # optimizer steps done in all
    checkpoint: Path | None  # out/last, or None when no checkpoint exists
    log: Path  # out/log.csv
    loss: float  # mean training loss over the last log interval (nan when no step ran)
    samples_per_s: float  # training samples per second in this call, all processes (nan when no step ran)
    network: FrameNetwork  # the raw trained weights
    ema: FrameNetwork  # the EMA weights (what the checkpoint's model.safetensors holds)


@dataclass
class _Process:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    distributed: bool


def _setup_process(cfg: TrainConfig) -> _Process:
    """Choose the device and join the process group when torchrun started several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; valid here: ['auto', 'cpu']")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1:
        if cfg.batch_size % world:
            raise ValueError(f"--batch-size {cfg.batch_size} does not divide among {world} processes")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    threads = cfg.threads
    if threads == 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    torch.set_num_threads(threads)
    return _Process(rank, local_rank, world, device, world > 1)


def main(cfg: TrainConfig, *, until: int | None = None) -> TrainResult:
    """Train (or resume training) the frame model as ``cfg`` says.

    Args:
        cfg: the run's options.
        until: stop after this step, saving a checkpoint there, without finishing the run (what a
            kill right after a checkpoint leaves; for time-limited jobs and tests).

    Returns:
        The final step, paths, last logged loss, throughput and the trained networks.

    Raises:
        ValueError: bad options, data that is not training data, or a run directory trained
            with other options or data (CheckpointError, a ValueError, for a damaged checkpoint).
        KeyError: an unknown env id.
        FloatingPointError: the loss became NaN or infinite.
    """
    cfg.validate()
    # -- setup
    proc = _setup_process(cfg)
    try:
        return _train(cfg, proc, until)
    finally:
        if proc.distributed:
            dist.destroy_process_group()


def _init_from(directory: str | Path | Checkpoint, network: FrameNetwork, ema: AveragedModel | None,
               mcfg: ModelConfig) -> None:
    """Copy a checkpoint's (EMA) weights into the network and its EMA (if given) before step 0."""
    source = directory if isinstance(directory, Checkpoint) else load_checkpoint(resolve_init_from(directory))
    directory = source.path
    theirs, ours = asdict(source.config), asdict(mcfg)
    diff = {k: (theirs.get(k), ours[k]) for k in ARCHITECTURE_FIELDS if theirs.get(k) != ours[k]}
    if diff:
        raise ValueError(f"--init-from {directory}: its network differs from this run's (theirs, ours): {diff}; "
                         f"only the training and sampling fields may change: "
                         f"{[k for k in ours if k not in ARCHITECTURE_FIELDS]}")
    state = source.model.state_dict()
    network.load_state_dict(state)
    if ema is not None:
        ema.module.load_state_dict(state)


def _initial_network(
    cfg: TrainConfig, mcfg: ModelConfig, init: Checkpoint | None, device: torch.device
) -> FrameNetwork:
    """The weights a run starts from: seeded random, or the ``--init-from`` checkpoint's."""
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    network = FrameNetwork(mcfg).to(device)
    if init is not None:
        _init_from(init, network, None, mcfg)
    return network


def _train(cfg: TrainConfig, proc: _Process, until: int | None) -> TrainResult:
    rank0, device = proc.rank == 0, proc.device
    out = Path(cfg.out)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)

    # -- model
    data = open_training_data(cfg)
    init = load_checkpoint(resolve_init_from(cfg.init_from)) if cfg.init_from else None
    mcfg = build_model_config(cfg, data.intrinsics, None if init is None else init.config)
    last = out / LAST
    resuming = last.is_symlink() or last.exists()
    network = _initial_network(cfg, mcfg, None if resuming else init, device).train()
    ema = AveragedModel(network, multi_avg_fn=_ema_update(cfg.ema_decay)).requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    step, wall_before = 0, 0.0  # wall seconds of earlier runs of this training
    if resuming:
        resumed = load_train_checkpoint(last, network, ema, optimizer)
        _check_resumable(resumed.extra, cfg, data.record, last)
        step, wall_before = resumed.step, float(resumed.extra.get("wall_s", 0.0))
    per_rank = cfg.batch_size // proc.world_size
    # World files: the held-out block of each world, scored before and after (finetune.json).
    report: _FinetuneReport | None = None
    if data.worlds and data.heldout is not None and rank0:
        report = _FinetuneReport(out, cfg, data, mcfg, init, per_rank, device)
        report.start(ema.module if step == 0 else None, step)
    if step >= cfg.steps:
        # A finished run: nothing to train, so no loss to report (the log keeps the run's rows).
        if report is not None:
            report.finish(ema.module, step, wall_before)
        if rank0:
            print(f"train: the run in {out} is finished (step {step} of {cfg.steps}); checkpoint {last}. "
                  f"Raise --steps to train further, or give another --out for a new run.", flush=True)
            if report is not None:
                print(f"train: {report.describe('after')}; {out / FINETUNE_FILE}", flush=True)
        return TrainResult(step, last, out / LOG_FILE, math.nan, math.nan, network, ema.module)
    loss_model: nn.Module = _FlowLoss(network)
    if proc.distributed:
        loss_model = DistributedDataParallel(loss_model, device_ids=[device.index] if device.type == "cuda" else None)

    # -- data
    sampler = _ResumableSampler(data.dataset, proc.world_size, proc.rank, cfg.seed)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise ValueError(f"the data holds {len(data.dataset)} samples, fewer than one batch of {cfg.batch_size}")
    loader = DataLoader(data.dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    heldout = data.heldout if data.worlds else open_heldout_data(cfg, data.intrinsics)
    eval_indices = None
    if heldout is not None:
        eval_indices = _eval_indices(len(heldout), cfg.eval_samples)

    # -- loop
    end = cfg.steps if until is None else min(cfg.steps, until)
    extra_base = {"train_config": cfg.to_dict(), "data": data.record, "world_size": proc.world_size}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext())
    log_path = out / LOG_FILE
    log_file = _open_log(log_path, step) if rank0 else None
    writer = csv.DictWriter(log_file, fieldnames=LOG_FIELDS) if log_file else None
    if writer is not None and report is not None and step == 0:
        # Step 0 of the log: the held-out score of the initial weights (no loss yet).
        writer.writerow({"step": 0, "epoch": 0, "wall_s": "0.00", "eval_psnr": f"{report.before['psnr']:.4f}"})
        log_file.flush()
    if rank0:
        what = f"{cfg.size} model" if init is None else f"model from {init.path}"
        source = f"{len(data.parts)} world file(s)" if data.worlds else f"{len(data.parts)} recording(s)"
        print(f"train: {what} ({network.num_parameters() / 1e6:.2f} M parameters, "
              f"{mcfg.height}x{mcfg.width}), {len(data.dataset)} samples from {source}, "
              f"{proc.world_size} process(es) on {device.type} ({cfg.precision}), batch {cfg.batch_size}; "
              f"step {step} of {cfg.steps}", flush=True)
        if report is not None:
            print(f"train: {report.describe('before')}", flush=True)
    bar = tqdm(total=end, initial=min(step, end), unit="step", desc="train", dynamic_ncols=True,
               disable=not (cfg.progress and rank0))
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    n_acc, last_loss = 0, math.nan
    run_samples, run_seconds = 0, 0.0  # training time only: evaluation and checkpoints excluded
    run_start = window_start = time.perf_counter()
    window_samples = 0
    try:
        while step < end:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(offset * per_rank)
            data.set_epoch(epoch)
            for batch in loader:
                lr = learning_rate(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss, _ = loss_model(batch, step_generator(cfg.seed, step, proc.rank))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(network.parameters(), cfg.grad_clip or math.inf)
                optimizer.step()
                ema.update_parameters(network)
                step += 1
                loss_sum += loss.detach()
                norm_sum += grad_norm.detach()
                n_acc += 1
                window_samples += cfg.batch_size
                bar.update(1)

                is_eval = heldout is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0
                                                                          or step == cfg.steps)
                if step % cfg.log_every == 0 or step == end or is_eval:
                    # One collective per log row, on every rank at the same steps; it carries rank
                    # 0's verdict on the time budget, so every rank stops at the same step.
                    over = cfg.minutes > 0 and rank0 and time.perf_counter() - run_start >= 60.0 * cfg.minutes
                    stats = torch.stack([loss_sum / n_acc, norm_sum / n_acc,
                                         torch.tensor(float(over), device=device)])
                    if proc.distributed:
                        dist.all_reduce(stats)
                        stats[:2] /= proc.world_size
                    last_loss, mean_norm, over_budget = stats.tolist()
                    if over_budget > 0 and step < end:
                        end = step  # the checkpoint below is written, then the loop ends
                        if rank0:
                            tqdm.write(f"train: --minutes {cfg.minutes:g} spent; stopping at step {step} "
                                       f"(the same command resumes)")
                    if not math.isfinite(last_loss):
                        raise FloatingPointError(f"the training loss became {last_loss} by step {step}; "
                                                 f"the last checkpoint is {last}")
                    elapsed = time.perf_counter() - window_start
                    run_samples, run_seconds = run_samples + window_samples, run_seconds + elapsed
                    wall_s = wall_before + time.perf_counter() - run_start
                    row = {"step": step, "epoch": epoch, "loss": f"{last_loss:.6g}", "lr": f"{lr:.6g}",
                           "grad_norm": f"{mean_norm:.6g}", "samples_per_s": f"{window_samples / elapsed:.4g}",
                           "wall_s": f"{wall_s:.2f}", "eval_psnr": ""}
                    if is_eval and rank0:
                        if report is not None:
                            scores = report.evaluate(ema.module)
                            psnr = scores["psnr"]
                            if step == cfg.steps:
                                report.after_scores = scores  # the final EMA: scored once
                        else:
                            fm = FrameModel(ema.module, torch.bfloat16 if cfg.precision == "bf16" else None)
                            psnr = evaluate_psnr(fm, heldout, eval_indices, per_rank, cfg.seed)
                        row["eval_psnr"] = f"{psnr:.4f}"
                    if writer is not None:
                        writer.writerow(row)
                        log_file.flush()
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                    loss_sum.zero_()
                    norm_sum.zero_()
                    n_acc, window_samples = 0, 0
                    window_start = time.perf_counter()
                if step % cfg.ckpt_every == 0 or step == end:
                    saving_start = time.perf_counter()
                    if rank0:
                        wall_s = wall_before + time.perf_counter() - run_start
                        extra = {**extra_base, "step": step, "wall_s": round(wall_s, 3)}
                        save_train_checkpoint(out, step, network, ema, optimizer, extra, cfg.keep_every)
                    if proc.distributed:
                        dist.barrier()  # no rank runs ahead while the checkpoint is written
                    window_start += time.perf_counter() - saving_start  # throughput counts training only
                if step >= end:
                    break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    samples_per_s = run_samples / run_seconds if run_seconds > 0 else math.nan
    if report is not None and step >= cfg.steps:
        report.finish(ema.module, step, wall_before + time.perf_counter() - run_start)
    if rank0:
        if math.isfinite(last_loss):
            print(f"train: step {step} of {cfg.steps}, loss {last_loss:.4g}, {samples_per_s:.1f} samples/s; "
                  f"checkpoint {last}", flush=True)
        else:  # stopped (--until) where a checkpoint already was: no step ran in this call
            print(f"train: stopped at step {step} of {cfg.steps} without training a step; checkpoint {last}",
                  flush=True)
        if report is not None and report.after is not None:
            print(f"train: {report.describe('after')}; {out / FINETUNE_FILE}", flush=True)
    return TrainResult(step, last if (last.is_symlink() or last.exists()) else None, log_path, last_loss,
                       samples_per_s, network, ema.module)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtfm-env train`` (one per :class:`TrainConfig` field) to ``parser``."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        kwargs = dict(f.metadata)
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = f"{kwargs['help']} (default: {'on' if default else 'off'})"
        elif default is not None and default != []:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            kwargs["help"] = f"{kwargs['help']} (default: {shown})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, **kwargs)


def run(args: argparse.Namespace) -> int:
    """Run ``rtfm-env train`` with parsed ``args``; returns the exit code (2 on bad input, 1 on divergence)."""
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        main(cfg)
    except (KeyError, ValueError, FileNotFoundError) as e:  # CheckpointError, ShardFormatError are ValueErrors
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rtfm-env train: error: {msg}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"rtfm-env train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m rtfm_env.model.train", description=__doc__.splitlines()[0],
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
