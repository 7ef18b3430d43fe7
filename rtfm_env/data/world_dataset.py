"""Training samples from a world file: a stored frame as target, stored frames near it in pose as context.

A world file (``rtfm-env world build``, a :class:`~rtfm_env.memory.SpatialMemory` file) holds the
posed RGB(-D) frames of one recording of a place. :class:`WorldFrameDataset` turns them into the
samples :class:`~rtfm_env.data.dataset.PosedFrameDataset` gives for a recording directory (the same
keys, shapes and dtypes), so the frame model can be fine-tuned on a user's own place.

The held-out split (:func:`split_world`): frames are put in recording order (by ``step``, then
id), and the last ``holdout_fraction`` of them, one contiguous block, are held out. The
``holdout_gap`` frames just before the block are dropped: neither targets nor context, so a
held-out target is not a near copy of a training frame taken a moment before it. Everything
else is a training frame. Training samples take a training frame as target and context from
the other training frames; held-out samples take a held-out frame as target and context from
the training frames (the use case: render views of the place that the recording saw, from the
rest of the recording). A held-out frame is therefore never a target nor a context frame of a
training sample.

Context is drawn as :class:`PosedFrameDataset` draws it: among the candidate frames, the
``n_candidates`` nearest in (camera position, ``direction_scale`` x viewing direction) space,
from which ``n_context`` are drawn with ``(seed, epoch, index)``. For training targets the
candidates are the training frames whose recording position lies within ``[min_gap, max_gap]``
of the target's (earlier ones only with ``past_only``); for held-out targets they are all
training frames (no position bounds: the gap before the block would exclude the nearest ones).

Only observed frames are used; generated frames (a saved memory of a model camera may hold
some) are never targets or context.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rtfm_env.data.shards import sha256_file
from rtfm_env.geometry import Intrinsics
from rtfm_env.memory import MemoryFormatError, SpatialMemory

__all__ = ["WORLD_SPLITS", "WorldDataError", "WorldSplit", "split_world", "load_world", "WorldFrameDataset"]

#: The two sample sets of a world file.
WORLD_SPLITS = ("train", "heldout")


class WorldDataError(ValueError):
    """A world file that cannot give training samples: corrupt, empty, too small for the split, mixed cameras."""


@dataclass(frozen=True)
class WorldSplit:
    """Which frames of a world are trained on and which are held out, as positions in recording order.

    ``ids[p]`` is the stored frame id at recording position ``p``.
    """

    ids: np.ndarray  # (N,) int64 stored frame ids of the observed frames, in recording order
    train: np.ndarray  # recording positions of the training frames (targets and context pool)
    heldout: np.ndarray  # recording positions of the held-out block (targets only)
    dropped: np.ndarray  # recording positions of the gap before the block (unused)


def load_world(path: str | os.PathLike) -> SpatialMemory:
    """Read a world file, with one error type for everything that is wrong with it.

    Raises:
        FileNotFoundError: no file at ``path``.
        WorldDataError: not a readable world file (corrupt, truncated, foreign), or no observed frame.
    """
    path = Path(path)
    try:
        memory = SpatialMemory.load(path)
    except MemoryFormatError as e:
        raise WorldDataError(f"{path} is not a readable world file ({e}); make one with 'rtfm-env world build'") from e
    if len(memory) == 0:
        raise WorldDataError(f"{path} is an empty world (no frames); nothing to train on")
    if "observed" not in memory.sources(memory.ids):
        raise WorldDataError(f"{path} holds only generated frames ({len(memory)}); training needs observed ones")
    return memory


def split_world(memory: SpatialMemory, holdout_fraction: float, holdout_gap: int) -> WorldSplit:
    """The held-out block (the last ``holdout_fraction`` of the frames) and the frames trained on.

    Args:
        memory: a loaded world.
        holdout_fraction: share of the observed frames held out, in ``[0, 1)``; a positive
            fraction holds out at least one frame (rounded to the nearest whole frame).
        holdout_gap: frames just before the block that are dropped (>= 0).

    Raises:
        ValueError: a fraction outside ``[0, 1)`` or a negative gap.
    """
    if not (math.isfinite(holdout_fraction) and 0.0 <= holdout_fraction < 1.0):
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    if isinstance(holdout_gap, bool) or not isinstance(holdout_gap, (int, np.integer)) or holdout_gap < 0:
        raise ValueError(f"holdout_gap must be an int >= 0, got {holdout_gap!r}")
    ids = memory.ids
    ids = ids[np.array([s == "observed" for s in memory.sources(ids)], dtype=bool)]
    steps = memory.steps(ids)
    if all(s is not None for s in steps):
        # Recording order: by step (a world's index in its recording), ties by id (insertion order).
        ids = ids[np.lexsort((ids, np.array(steps, dtype=np.int64)))]
    n = len(ids)
    n_hold = 0 if holdout_fraction == 0 else max(1, int(round(holdout_fraction * n)))
    n_hold = min(n_hold, n)
    first = n - n_hold
    drop_from = max(0, first - int(holdout_gap))
    positions = np.arange(n)
    return WorldSplit(ids.astype(np.int64), positions[:drop_from], positions[first:], positions[drop_from:first])


class WorldFrameDataset(Dataset):
    """Posed-frame samples (context frames + target frame) from one world file.

    Each item is a dict with the keys, shapes and dtypes of
    :class:`~rtfm_env.data.dataset.PosedFrameDataset`'s items: ``context_frames`` (K, H, W, 3)
    uint8, ``context_poses`` (K, 4, 4) float64 camera-to-world (OpenGL camera axes),
    ``target_frame`` (H, W, 3) uint8, ``target_pose`` (4, 4) float64, ``intrinsics`` (3,)
    float64 ``(width, height, fov_y)``, ``context_steps`` (K,) and ``target_step`` () int64
    (positions in recording order), ``target_depth`` (H, W) and ``context_depth`` (K, H, W)
    float32 metres (inf: no return; NaN: the frame was stored without depth), ``has_depth`` ()
    bool (every frame of the sample has depth) and ``env_id`` (``"world:<file stem>"``).

    Items are deterministic given the index, ``seed`` and the epoch set by :meth:`set_epoch`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        n_context: int = 2,
        *,
        n_candidates: int = 8,
        min_gap: int = 1,
        max_gap: int | None = None,
        past_only: bool = False,
        direction_scale: float = 1.0,
        holdout_fraction: float = 0.2,
        holdout_gap: int = 8,
        seed: int = 0,
        memory: SpatialMemory | None = None,
        sha256: str | None = None,
    ) -> None:
        """Index the world file at ``path``.

        Args:
            path: a world file (``rtfm-env world build``) or any saved spatial memory.
            split: ``"train"`` (training frames as targets) or ``"heldout"`` (the held-out block
                as targets, context from the training frames).
            n_context: K, context frames per sample.
            n_candidates: M >= K, the nearest frames (in pose space) that context is drawn from.
            min_gap: fewest recording positions between a training target and its context (>= 1,
                so a target is never its own context).
            max_gap: most positions between them; None allows the whole recording. Held-out
                targets ignore ``min_gap``, ``max_gap`` and ``past_only``.
            past_only: draw a training target's context only from frames before it.
            direction_scale: metres that a unit difference of viewing direction counts as.
            holdout_fraction: share of the frames held out, a block at the end of the recording.
            holdout_gap: frames before the block that are dropped (see the module docstring).
            seed: seed of the context draws.
            memory: the world already loaded from ``path`` (both splits can share one load).
            sha256: the file's sha256 if already computed (else it is computed here).

        Raises:
            FileNotFoundError: no file at ``path``.
            WorldDataError: a corrupt or empty world, frames of different fields of view, or too
                few frames for the held-out split and ``n_context``.
            ValueError: bad arguments.
        """
        if split not in WORLD_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(WORLD_SPLITS)}")
        if n_context < 1:
            raise ValueError(f"n_context must be >= 1, got {n_context}")
        if n_candidates < n_context:
            raise ValueError(f"n_candidates ({n_candidates}) must be >= n_context ({n_context})")
        if min_gap < 1:
            raise ValueError(f"min_gap must be >= 1 (a target is never its own context), got {min_gap}")
        if max_gap is not None and max_gap < min_gap:
            raise ValueError(f"max_gap ({max_gap}) must be >= min_gap ({min_gap})")
        if not (math.isfinite(direction_scale) and direction_scale >= 0):
            raise ValueError(f"direction_scale must be a finite number >= 0, got {direction_scale}")
        self.path = Path(path)
        self.split = split
        self.n_context = int(n_context)
        self.n_candidates = int(n_candidates)
        self.min_gap = int(min_gap)
        self.max_gap = None if max_gap is None else int(max_gap)
        self.past_only = bool(past_only)
        self.direction_scale = float(direction_scale)
        self.holdout_fraction = float(holdout_fraction)
        self.holdout_gap = int(holdout_gap)
        self.seed = int(seed)
        self.epoch = 0
        self.env_id = f"world:{self.path.stem}"

        memory = load_world(self.path) if memory is None else memory
        #: sha256 of the world file's bytes: the data's identity in checkpoints.
        self.sha256 = sha256 or sha256_file(self.path)
        self.world_split = split_world(memory, self.holdout_fraction, self.holdout_gap)
        ws = self.world_split
        n = len(ws.ids)
        if split == "heldout" and len(ws.heldout) == 0:
            raise WorldDataError(f"{self.path}: holdout_fraction {self.holdout_fraction} holds out no frame")
        if len(ws.train) < self.n_context + 1:
            raise WorldDataError(
                f"{self.path} has {n} frames; holding out {len(ws.heldout)} (fraction {self.holdout_fraction}) "
                f"and dropping a gap of {len(ws.dropped)} before them leaves {len(ws.train)} training frames, fewer "
                f"than the {self.n_context + 1} that one target and its {self.n_context} context views need; "
                "lower --holdout-fraction or --holdout-gap, or record more of the place"
            )
        fovs = {round(i.fov_y, 6) for i in memory.intrinsics_of(ws.ids)}
        if len(fovs) != 1:
            raise WorldDataError(f"{self.path}: frames of different fields of view {sorted(fovs)}; "
                                 "one camera is needed")
        h, w = memory.resolution
        self.intrinsics: Intrinsics = Intrinsics(w, h, fovs.pop())
        # Everything a sample reads, in recording order (a 64x64 world of 1000 frames is ~30 MB).
        self._frames = memory.frames(ws.ids)  # (N, H, W, 3) uint8
        self._poses = memory.poses(ws.ids).astype(np.float64)  # (N, 4, 4)
        self._depths = memory.depths(ws.ids)  # (N, H, W) float32, NaN rows for frames without depth
        self._frame_has_depth = memory.has_depth(ws.ids)
        #: True when every frame holds depth.
        self.has_depth: bool = bool(self._frame_has_depth.all())
        self._keys = np.concatenate([self._poses[:, :3, 3], -self.direction_scale * self._poses[:, :3, 2]], axis=1)
        self._pool = ws.train
        targets = ws.train if split == "train" else ws.heldout
        ok = np.array([len(self._candidates(int(t))) >= self.n_context for t in targets], dtype=bool)
        if not ok.any():
            raise WorldDataError(
                f"{self.path}: no {split} frame has {self.n_context} context frames within gaps "
                f"[{self.min_gap}, {self.max_gap}] (past_only={self.past_only}) among {len(ws.train)} training frames"
            )
        self._targets = targets[ok]

    # ----------------------------------------------------------------------------------
    # Samples
    # ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(len(self._targets))

    @property
    def target_ids(self) -> np.ndarray:
        """Stored frame ids of every sample's target, in sample order."""
        return self.world_split.ids[self._targets]

    def set_epoch(self, epoch: int) -> None:
        """Change the context draws for a new epoch (same epoch and index: same sample)."""
        self.epoch = int(epoch)

    def _candidates(self, target: int) -> np.ndarray:
        """Recording positions that a target at position ``target`` may take context from."""
        pool = self._pool[self._pool != target]
        if self.split == "heldout":
            return pool
        gap = np.abs(pool - target)
        keep = (gap >= self.min_gap) & (gap <= (len(self.world_split.ids) if self.max_gap is None else self.max_gap))
        if self.past_only:
            keep &= pool < target
        return pool[keep]

    def context_positions(self, index: int) -> tuple[int, np.ndarray]:
        """Recording positions of sample ``index``'s target and of its context frames (ascending)."""
        index = self._check_index(index)
        target = int(self._targets[index])
        cand = self._candidates(target)
        dist = np.linalg.norm(self._keys[cand] - self._keys[target], axis=1)
        # Ties (exact revisits, turns in place) go to the temporally closer frame, then the earlier.
        nearest = cand[np.lexsort((cand, np.abs(cand - target), dist))[: self.n_candidates]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return target, np.sort(rng.choice(nearest, size=self.n_context, replace=False))

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return index % n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        """The sample ``index``: context frames, depth and poses, target frame, depth and pose, intrinsics."""
        target, ctx = self.context_positions(index)
        intr = self.intrinsics
        rows = np.r_[target, ctx]
        return {
            "context_frames": torch.from_numpy(self._frames[ctx].copy()),
            "context_poses": torch.from_numpy(self._poses[ctx].copy()),
            "target_frame": torch.from_numpy(self._frames[target].copy()),
            "target_pose": torch.from_numpy(self._poses[target].copy()),
            "intrinsics": torch.tensor([intr.width, intr.height, intr.fov_y], dtype=torch.float64),
            "context_steps": torch.from_numpy(ctx.astype(np.int64)),
            "target_step": torch.tensor(target, dtype=torch.int64),
            "target_depth": torch.from_numpy(self._depths[target].copy()),
            "context_depth": torch.from_numpy(self._depths[ctx].copy()),
            "has_depth": torch.tensor(bool(self._frame_has_depth[rows].all())),
            "env_id": self.env_id,
        }
