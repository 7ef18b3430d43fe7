"""Training samples from recorded shards: a target frame and context frames posed near it.

:class:`PosedFrameDataset` turns a recording (see :mod:`rtfm_env.data.shards`) into samples
for the frame model. Every frame of every episode may be a target. Its context comes from the
same episode: among the frames whose step lies within ``[min_gap, max_gap]`` of the target's
(earlier ones only with ``past_only``), the ``n_candidates`` nearest in a (camera position,
``direction_scale`` x viewing direction) space, from which ``n_context`` are drawn with a seed.
Nearest-in-pose naturally includes revisits (a frame seen a hundred steps earlier from the
same spot); the gap bounds let a sampler ask for "targets 1-4 steps from their 2 context
views" instead.

Only headers are read at construction. Shards are opened lazily (memory-mapped, frames read
row by row) and kept in a small LRU cache; each shard's sha256 is checked against the manifest
the first time it is opened (``verify=True``), or all at once with :meth:`verify_all`.

Depth: items carry ``target_depth`` and ``context_depth`` (float32 metres along the optical
axis, inf where nothing was hit) and a ``has_depth`` flag. A shard without depth (format
version 1, or recorded with ``--no-depth``) gives NaN depth and ``has_depth`` False, so items
of every shard have the same keys and batch together; ``torch.isfinite(depth)`` is the mask of
usable depth in both cases. ``require_depth=True`` refuses such shards instead.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rtfm_env.data.shards import (
    FORMAT_VERSION,
    SPLITS,
    NoDepthError,
    ShardEntry,
    ShardFormatError,
    ShardHeader,
    ShardReader,
    read_manifest,
    read_shard_header,
    sha256_file,
    shard_list_hash,
)
from rtfm_env.geometry import Intrinsics

__all__ = ["PosedFrameDataset"]


class PosedFrameDataset(Dataset):
    """Posed-frame training samples (context frames + target frame) from one recording.

    Each item is a dict of tensors:

    * ``context_frames``: (K, H, W, 3) uint8 RGB, ordered by step.
    * ``context_poses``: (K, 4, 4) float64 camera-to-world (OpenGL camera axes, y-up world).
    * ``target_frame``: (H, W, 3) uint8 RGB.
    * ``target_pose``: (4, 4) float64 camera-to-world.
    * ``intrinsics``: (3,) float64 ``(width, height, fov_y in degrees)``.
    * ``context_steps``: (K,) int64 and ``target_step``: () int64, steps within the episode.
    * ``target_depth``: (H, W) and ``context_depth``: (K, H, W) float32, metres along the
      optical axis (OpenGL camera: depth = -z in camera coordinates), inf where nothing was
      hit; stored as float16, so within 2^-11 relative (~5 mm at 10 m). NaN everywhere when
      the shard holds no depth.
    * ``has_depth``: () bool, False when the shard holds no depth (format version 1 or
      ``--no-depth``): then the depth tensors are all NaN and must not be used.
    * ``env_id``: the episode's env id (a str).

    Mask depth with ``torch.isfinite``: it is False where nothing was hit and where no depth
    was recorded. ``has_depth`` is the per-sample flag; :attr:`has_depth` says whether every
    shard of the dataset holds depth.

    Items are deterministic given the index, ``seed`` and the epoch set by :meth:`set_epoch`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        n_context: int = 2,
        *,
        n_candidates: int = 8,
        min_gap: int = 1,
        max_gap: int | None = None,
        past_only: bool = False,
        direction_scale: float = 1.0,
        envs: Sequence[str] | None = None,
        seed: int = 0,
        verify: bool = True,
        cache_size: int = 8,
        require_depth: bool = False,
    ) -> None:
        """Index the recording at ``root``.

        Args:
            root: a recording directory (with ``manifest.json``) made by ``rtfm-env record``.
            split: the split expected there, ``"train"`` or ``"heldout"``; a recording or shard
                of the other split is refused, so held-out data never reaches training by mistake.
            n_context: K, context frames per sample.
            n_candidates: M >= K, the nearest frames (in pose space) that context is drawn from.
            min_gap: fewest steps between the target and a context frame (>= 1, so the target
                itself is never its own context).
            max_gap: most steps between them; None allows the whole episode.
            past_only: draw context only from frames before the target (causal, as a camera
                that generates frames in order sees them).
            direction_scale: metres that a unit difference of viewing direction counts as in
                the pose distance (1.0: facing 90 degrees apart is ~1.41 m away).
            envs: keep only these env ids (full ids or short names like ``"Maze"``).
            seed: seed of the context draws.
            verify: check each shard's sha256 against the manifest when it is first opened.
            cache_size: shards kept open at once.
            require_depth: refuse shards without depth (format version 1, or recorded with
                ``--no-depth``) instead of yielding NaN depth for them.

        Raises:
            FileNotFoundError: no manifest at ``root``.
            ShardFormatError: a corrupt, truncated or foreign manifest or shard, or a shard that
                does not match its manifest entry.
            NoDepthError: ``require_depth`` and a shard without depth (a ShardFormatError
                naming the shard and saying to re-record it).
            ValueError: bad arguments, a split mismatch, shards of different intrinsics, or no
                frame with enough context.
            KeyError: an env id in ``envs`` that the recording does not hold.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
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
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.root = Path(root)
        self.split = split
        self.n_context = int(n_context)
        self.n_candidates = int(n_candidates)
        self.min_gap = int(min_gap)
        self.max_gap = None if max_gap is None else int(max_gap)
        self.past_only = bool(past_only)
        self.direction_scale = float(direction_scale)
        self.seed = int(seed)
        self.epoch = 0
        self.verify = bool(verify)
        self.cache_size = int(cache_size)

        manifest = read_manifest(self.root)
        if manifest.split != split:
            raise ValueError(
                f"{self.root} holds a {manifest.split!r} recording; refusing to open it as split {split!r}"
            )
        entries = manifest.shards
        if envs is not None:
            held = sorted({e.env_id for e in entries})
            wanted = set()
            for name in envs:
                match = [h for h in held if h in (name, f"MiniWorld-{name}-v0")]
                if not match:
                    raise KeyError(f"env {name!r} is not in the recording at {self.root}; it holds: {held}")
                wanted.update(match)
            entries = [e for e in entries if e.env_id in wanted]
        #: sha256 of the manifest's shard list (rtfm_env.data.shards.manifest_hash), for checkpoints.
        self.manifest_hash = shard_list_hash(manifest.shards)
        self.entries = sorted(entries, key=lambda e: (e.env_id, e.shard_index))
        self.headers: list[ShardHeader] = [self._check_header(e) for e in self.entries]
        intrinsics = {h.intrinsics for h in self.headers}
        if len(intrinsics) > 1:
            raise ValueError(f"{self.root}: shards have different intrinsics {sorted(map(str, intrinsics))}")
        if not self.headers:
            raise ValueError(f"{self.root}: the recording lists no shards (for envs={envs})")
        self.intrinsics: Intrinsics = intrinsics.pop()
        #: True when every shard holds depth; otherwise samples of depth-less shards have NaN depth.
        self.has_depth: bool = all(h.has_depth for h in self.headers)
        if require_depth and not self.has_depth:
            without = [h for h in self.headers if not h.has_depth]
            names = ", ".join(h.path.name for h in without[:3]) + (", ..." if len(without) > 3 else "")
            raise NoDepthError(
                f"{self.root}: {len(without)} of {len(self.headers)} shards hold no depth ({names}; format version "
                f"{without[0].version}{'' if without[0].version < 2 else ', recorded with --no-depth'}); "
                f"re-record them with 'rtfm-env record' (format version {FORMAT_VERSION}, depth on by default) "
                "into a new --out directory"
            )
        self._build_index()
        self._cache: OrderedDict[int, ShardReader] = OrderedDict()
        self._verified: set[int] = set()

    # ----------------------------------------------------------------------------------
    # Construction helpers
    # ----------------------------------------------------------------------------------

    def _check_header(self, entry: ShardEntry) -> ShardHeader:
        header = read_shard_header(self.root / entry.file)
        if header.split != self.split:
            raise ShardFormatError(
                f"{header.path}: a {header.split!r} shard in a {self.split!r} recording; refusing to mix splits"
            )
        got = (header.env_id, header.shard_index, header.n_frames, len(header.episodes), header.size)
        want = (entry.env_id, entry.shard_index, entry.frames, entry.episodes, entry.bytes)
        if got != want:
            raise ShardFormatError(
                f"{header.path}: does not match its manifest entry "
                f"(env, index, frames, episodes, bytes) = {got}, manifest says {want}"
            )
        return header

    def _n_candidates(self, step: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Number of frames within the gap bounds of each (step, episode length)."""
        max_gap = length if self.max_gap is None else np.minimum(self.max_gap, length)
        before = np.clip(step - self.min_gap + 1, 0, None) - np.clip(step - max_gap, 0, None)
        after = np.clip(length - 1 - step - self.min_gap + 1, 0, None) - np.clip(length - 1 - step - max_gap, 0, None)
        return np.clip(before, 0, None) + (0 if self.past_only else np.clip(after, 0, None))

    def _build_index(self) -> None:
        shard, row, start, length = [], [], [], []
        for i, header in enumerate(self.headers):
            offsets = header.episode_rows()
            for e in range(len(header.episodes)):
                n = int(offsets[e + 1] - offsets[e])
                shard.append(np.full(n, i, dtype=np.int32))
                row.append(np.arange(offsets[e], offsets[e + 1], dtype=np.int32))
                start.append(np.full(n, offsets[e], dtype=np.int32))
                length.append(np.full(n, n, dtype=np.int32))
        shard_a, row_a, start_a, length_a = (np.concatenate(a) for a in (shard, row, start, length))
        ok = self._n_candidates(row_a - start_a, length_a) >= self.n_context
        if not ok.any():
            raise ValueError(
                f"{self.root}: no frame has {self.n_context} context frames within gaps "
                f"[{self.min_gap}, {self.max_gap}] (past_only={self.past_only}); episodes are too short"
            )
        self._shard, self._row, self._start, self._length = shard_a[ok], row_a[ok], start_a[ok], length_a[ok]

    # ----------------------------------------------------------------------------------
    # Shard access
    # ----------------------------------------------------------------------------------

    def _reader(self, i: int) -> ShardReader:
        reader = self._cache.get(i)
        if reader is not None:
            self._cache.move_to_end(i)
            return reader
        header, entry = self.headers[i], self.entries[i]
        if self.verify and i not in self._verified:
            digest = sha256_file(header.path)
            if digest != entry.sha256:
                raise ShardFormatError(
                    f"{header.path}: sha256 {digest} does not match the manifest ({entry.sha256}); "
                    "the shard is corrupt or was replaced"
                )
            self._verified.add(i)
        reader = ShardReader(header.path, header)
        self._cache[i] = reader
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return reader

    def verify_all(self) -> None:
        """Check every shard's sha256 against the manifest now; raises ShardFormatError on a mismatch."""
        for i, (header, entry) in enumerate(zip(self.headers, self.entries, strict=True)):
            if i in self._verified:
                continue
            digest = sha256_file(header.path)
            if digest != entry.sha256:
                raise ShardFormatError(f"{header.path}: sha256 {digest} does not match the manifest ({entry.sha256})")
            self._verified.add(i)

    def __getstate__(self) -> dict:
        # Open memory maps do not cross process boundaries; DataLoader workers reopen lazily.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    # ----------------------------------------------------------------------------------
    # Samples
    # ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._row.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Change the context draws for a new epoch (same epoch and index: same sample)."""
        self.epoch = int(epoch)

    def context_rows(self, index: int) -> tuple[int, np.ndarray]:
        """Shard rows of sample ``index``'s target and of its context frames (ordered by step)."""
        index = self._check_index(index)
        i, row, start, length = (int(a[index]) for a in (self._shard, self._row, self._start, self._length))
        poses = self._reader(i).poses[start : start + length]  # (L, 4, 4)
        step = row - start
        max_gap = length if self.max_gap is None else self.max_gap
        steps = np.arange(length)
        gap = np.abs(steps - step)
        keep = (gap >= self.min_gap) & (gap <= max_gap)
        if self.past_only:
            keep &= steps < step
        cand = steps[keep]
        feat = np.concatenate([poses[:, :3, 3], -self.direction_scale * poses[:, :3, 2]], axis=1)  # (L, 6)
        dist = np.linalg.norm(feat[cand] - feat[step], axis=1)
        # Ties (exact revisits, turns in place) go to the temporally closer frame, then the earlier.
        nearest = cand[np.lexsort((cand, np.abs(cand - step), dist))[: self.n_candidates]]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = np.sort(rng.choice(nearest, size=self.n_context, replace=False))
        return row, start + chosen

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return index % n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        """The sample ``index``: context frames, depth and poses, target frame, depth and pose, intrinsics."""
        index = self._check_index(index)
        row, ctx = self.context_rows(index)
        i, start = int(self._shard[index]), int(self._start[index])
        reader = self._reader(i)
        intr = self.intrinsics
        if reader.has_depth:
            target_depth, context_depth = reader.depth(row), reader.depths(ctx)
        else:
            # NaN, not inf or 0: "not recorded" must not read as "nothing hit" or as a surface
            # at the camera; keeping the keys lets shards with and without depth share a batch.
            target_depth = np.full((intr.height, intr.width), np.nan, dtype=np.float32)
            context_depth = np.full((len(ctx), intr.height, intr.width), np.nan, dtype=np.float32)
        return {
            "context_frames": torch.from_numpy(reader.frames(ctx)),
            "context_poses": torch.from_numpy(reader.poses[ctx].copy()),
            "target_frame": torch.from_numpy(reader.frame(row)),
            "target_pose": torch.from_numpy(reader.poses[row].copy()),
            "intrinsics": torch.tensor([intr.width, intr.height, intr.fov_y], dtype=torch.float64),
            "context_steps": torch.from_numpy((ctx - start).astype(np.int64)),
            "target_step": torch.tensor(row - start, dtype=torch.int64),
            "target_depth": torch.from_numpy(target_depth),
            "context_depth": torch.from_numpy(context_depth),
            "has_depth": torch.tensor(reader.has_depth),
            "env_id": self.headers[i].env_id,
        }
