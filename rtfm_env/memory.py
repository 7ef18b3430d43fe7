"""Spatial memory of posed frames and context retrieval for the frame model ("context juggling").

A :class:`SpatialMemory` keeps every frame the camera has observed or generated together with
its camera-to-world pose, intrinsics, source and step. Before generating the frame seen from a
new pose, the model camera asks :meth:`SpatialMemory.retrieve` for the few stored frames that
best show what that pose will see:

1. *Candidates*: the ``M`` stored poses nearest to the query in a 6-D space of camera position
   plus ``direction_scale`` times the viewing direction (:func:`pose_keys`). A logarithmic
   forest of k-d trees answers this in O(log^2 N) and absorbs adds without rebuilding
   everything, so nothing after this step depends on how many frames are stored.
2. *Overlap and de-duplication*: 3-D points are sampled in the query camera's frustum (a grid of
   pixels times a few depths) and projected into every candidate. Candidates are picked
   greedily by how many points they see that no picked frame already shows from a similar
   angle (a max-coverage objective), weighted down with distance. A second copy of a picked
   view adds nothing, so the ``k`` frames cover different views.

With a ``capacity`` the memory evicts the most redundant frame when full: one of the two
closest frames in the 6-D pose space, a generated one before an observed one, the older of two
of the same source. Crowded places thin out first and lone views of far-away places survive.

Frames may carry depth (RGB-D): metres along the camera's optical axis, ``inf`` where nothing
was hit. Depth is stored as float16 metres (finite values up to 65504 m, relative precision
2^-11, about 5 mm at 10 m; ``inf`` kept) and returned as float32 by :meth:`SpatialMemory.depths`;
frames added without depth read back as NaN there. Retrieval uses depth where a candidate has
it: a sampled point hidden behind the candidate's surface does not count for it, and points
that the stored view nearest to the query sees behind a surface (so the query most likely
cannot see them either) count for nobody. Observed frames score above generated ones
(``generated_weight``), so a generated frame never takes the place of an observed one that
sees the same thing.

Memories are saved as a safetensors file whose metadata names the format and its version
(version 2 adds depth; version 1 files still load, without depth).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from scipy.spatial import cKDTree

from rtfm_env.geometry import Intrinsics, check_pose

__all__ = [
    "SOURCES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MemoryConfig",
    "MemoryEntry",
    "MemoryFormatError",
    "SpatialMemory",
    "pose_keys",
]

#: Where a stored frame came from: the scene's renderer or the frame model.
SOURCES = ("observed", "generated")
FORMAT_NAME = "rtfm-spatial-memory"
FORMAT_VERSION = "2"
#: Versions :meth:`SpatialMemory.load` reads: 1 (no depth) and 2 (optional depth per frame).
READ_VERSIONS = ("1", "2")
#: Largest finite depth that float16 storage keeps, metres; anything farther is stored as inf.
MAX_DEPTH = 65504.0

_NO_STEP = -1  # stored in the step array for frames added without a step
_TENSORS = {  # name -> (dtype, trailing shape; None where it is the frame resolution)
    "frames": (np.uint8, None),
    "poses": (np.float64, (4, 4)),
    "ids": (np.int64, ()),
    "fov_y": (np.float64, ()),
    "source": (np.uint8, ()),
    "step": (np.int64, ()),
}
_DEPTH_TENSORS = {  # version 2: per-frame depth (float16 metres) and whether the frame has depth
    "depth": (np.float16, None),
    "has_depth": (np.uint8, ()),
}


class MemoryFormatError(ValueError):
    """A file is not a spatial memory this version can read (corrupt, truncated, foreign, newer)."""


@dataclass(frozen=True)
class MemoryConfig:
    """How a :class:`SpatialMemory` indexes, scores and evicts frames."""

    capacity: int | None = None  # frames kept at most; None keeps every frame
    candidates: int = 32  # poses nearest in the 6-D index that retrieval scores (M)
    direction_scale: float = 2.0  # metres that a unit change of viewing direction weighs in the index
    depths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # metres ahead of the query camera where its view is sampled
    grid: int = 6  # pixels sampled across the query image's width; rows follow its aspect ratio
    near: float = 0.05  # metres; points closer than this to a candidate camera are not seen by it
    distance_scale: float = 3.0  # metres; a candidate's gain is weighted by exp(-distance / distance_scale)
    novelty_angle: float = 15.0  # degrees; a point seen this far in angle from every picked view counts as new
    min_gain: float = 0.0  # retrieval stops when no candidate's weighted gain (fraction of points) exceeds this
    buffer_size: int = 256  # recent adds searched by brute force before being merged into a k-d tree
    redundancy_tolerance: float = 1e-3  # metres; eviction treats distances within the same multiple as equal
    generated_weight: float = 0.25  # a generated frame's gain is scaled by this, so observed frames win
    occlusion_tolerance: float = 0.05  # relative; a point farther than (1 + this) * stored depth + 5 cm is hidden

    def __post_init__(self) -> None:
        if self.capacity is not None and not (_is_int(self.capacity) and self.capacity >= 1):
            raise ValueError(f"capacity must be None or an integer >= 1, got {self.capacity!r}")
        for name in ("candidates", "grid", "buffer_size"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("direction_scale", "near", "distance_scale", "redundancy_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.novelty_angle, (int, float)) and 0.0 < self.novelty_angle <= 180.0):
            raise ValueError(f"novelty_angle must be in (0, 180] degrees, got {self.novelty_angle!r}")
        if not (isinstance(self.generated_weight, (int, float)) and 0.0 < self.generated_weight <= 1.0):
            raise ValueError(f"generated_weight must be in (0, 1], got {self.generated_weight!r}")
        if not (
            isinstance(self.occlusion_tolerance, (int, float))
            and math.isfinite(self.occlusion_tolerance)
            and self.occlusion_tolerance >= 0
        ):
            raise ValueError(f"occlusion_tolerance must be a finite number >= 0, got {self.occlusion_tolerance!r}")
        if not (isinstance(self.min_gain, (int, float)) and 0.0 <= self.min_gain < 1.0):
            raise ValueError(f"min_gain must be in [0, 1), got {self.min_gain!r}")
        depths = tuple(float(d) for d in self.depths)
        if not depths or not all(math.isfinite(d) and d > 0 for d in depths):
            raise ValueError(f"depths must be a non-empty sequence of finite numbers > 0, got {self.depths!r}")
        object.__setattr__(self, "depths", depths)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        d = asdict(self)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MemoryConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown memory config keys {unknown}; valid keys: {valid}")
        d = dict(d)
        if "depths" in d:
            d["depths"] = tuple(d["depths"])
        return cls(**d)


@dataclass(frozen=True)
class MemoryEntry:
    """One stored frame with everything known about it."""

    id: int
    frame: np.ndarray  # (H, W, 3) uint8 RGB
    pose: np.ndarray  # (4, 4) float64 camera-to-world, OpenGL camera axes
    intrinsics: Intrinsics
    source: str  # one of SOURCES
    step: int | None  # episode step at which the frame was taken, if given
    depth: np.ndarray | None = None  # (H, W) float32 metres along the optical axis, inf = no hit; None if not stored


def pose_keys(poses: np.ndarray, direction_scale: float) -> np.ndarray:
    """6-D index keys of camera-to-world poses: camera centre, then scaled viewing direction.

    Args:
        poses: (..., 4, 4) camera-to-world poses (OpenGL camera axes: the camera looks down -z).
        direction_scale: metres that a unit change of viewing direction counts as, so two
            cameras at one spot facing opposite ways are ``2 * direction_scale`` apart.

    Returns:
        (..., 6) float64: (x, y, z, s * fx, s * fy, s * fz) with f the unit viewing direction.
    """
    poses = np.asarray(poses, dtype=np.float64)
    return np.concatenate([poses[..., :3, 3], -direction_scale * poses[..., :3, 2]], axis=-1)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _sq_dist(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    # Summing the six squared differences column by column gives every (key, query) pair the
    # same rounding whatever structure found it, so ties break identically after a reload.
    diff = keys - query
    out = diff[:, 0] * diff[:, 0]
    for c in range(1, diff.shape[1]):
        out += diff[:, c] * diff[:, c]
    return out


def _loosen(d: float) -> float:
    # Tree and brute-force distances may differ in the last bits; compare with a little slack.
    return d * (1.0 + 1e-9) + 1e-9


class _PoseIndex:
    """Exact nearest-neighbour search over 6-D pose keys that grows without full rebuilds.

    Keys take slots 0, 1, 2, ... in the order they are appended. Slots ``[0, buffer_start)`` are
    covered by k-d trees over contiguous slot ranges, oldest and largest first, each more than
    twice the size of the next (a variant of Bentley and Saxe's logarithmic method); slots
    ``[buffer_start, n)`` are a short buffer searched by brute force. When the buffer fills it
    becomes a tree, absorbing the newest trees while they are at most twice its growing size,
    so every key is rebuilt O(log N) times in all (about 8 times by a million keys) and a
    query visits O(log N) trees (at most 8 at a million). Removing a key only clears its live
    flag; queries skip dead slots and the owner compacts.
    """

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self.keys = np.empty((0, 6), dtype=np.float64)
        self.live = np.empty(0, dtype=bool)
        self.n = 0
        self.n_live = 0
        self.trees: list[tuple[cKDTree, int]] = []  # (tree over keys[start:start + size], start)
        self.buffer_start = 0

    def reset(self, keys: np.ndarray) -> None:
        """Replace the contents with ``keys`` (all live) in one tree."""
        self.keys = np.array(keys, dtype=np.float64).reshape(-1, 6)
        self.n = self.n_live = len(self.keys)
        self.live = np.ones(self.n, dtype=bool)
        self.trees = [(cKDTree(self.keys), 0)] if self.n > self.buffer_size else []
        self.buffer_start = self.n if self.trees else 0

    def append(self, key: np.ndarray) -> int:
        """Add one live key; returns its slot."""
        if self.n == len(self.keys):
            cap = max(16, 2 * len(self.keys))
            # Old trees keep views of the previous arrays; their keys never change, so that is safe.
            self.keys = np.concatenate([self.keys, np.empty((cap - self.n, 6))])
            self.live = np.concatenate([self.live, np.zeros(cap - self.n, dtype=bool)])
        slot = self.n
        self.keys[slot] = key
        self.live[slot] = True
        self.n += 1
        self.n_live += 1
        if self.n - self.buffer_start >= self.buffer_size:
            start = self.buffer_start
            while self.trees and self.trees[-1][0].n <= 2 * (self.n - start):
                start = self.trees.pop()[1]
            self.trees.append((cKDTree(self.keys[start : self.n], balanced_tree=False), start))
            self.buffer_start = self.n
        return slot

    def remove(self, slot: int) -> None:
        """Mark a slot dead."""
        if self.live[slot]:
            self.live[slot] = False
            self.n_live -= 1

    def nearest(self, query: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` live slots nearest to ``query``, ordered by (distance, slot).

        Exact: the result equals a brute-force search over all live keys, ties included,
        whatever the shape of the forest.

        Returns:
            slots (<= m,) int64 and their Euclidean distances (<= m,) float64.
        """
        if m <= 0 or self.n_live == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        buf = np.arange(self.buffer_start, self.n)
        buf = buf[self.live[buf]]
        found = [buf]
        best = np.sqrt(_sq_dist(self.keys[buf], query))  # the m smallest distances found so far
        if len(best) > m:
            best = np.partition(best, m - 1)[:m]
        for tree, start in self.trees:
            bound = best.max() if len(best) >= m else math.inf
            slots, dists = self._search_tree(tree, start, query, m, bound)
            found.append(slots)
            best = np.concatenate([best, dists])
            if len(best) > m:
                best = np.partition(best, m - 1)[:m]
        slots = np.concatenate(found)
        sq = _sq_dist(self.keys[slots], query)
        order = np.lexsort((slots, sq))[:m]
        return slots[order], np.sqrt(sq[order])

    def _search_tree(
        self, tree: cKDTree, start: int, query: np.ndarray, m: int, bound: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Live slots of one tree that may be among the ``m`` nearest (a superset, ties kept).

        Returns:
            The slots and their distances as the tree computed them.
        """
        size = tree.n
        k = min(size, m + 1)
        upper = _loosen(bound) if bound < math.inf else math.inf
        while True:
            d, i = tree.query(query, k, distance_upper_bound=upper)
            if k == 1:
                d, i = np.array([d]), np.array([i])
            if d[-1] == math.inf:  # fewer than k within the bound; the missing ones are padded
                n = int(np.searchsorted(d, math.inf))
                d, i = d[:n], i[:n]
            i = i + start
            live = self.live[i]
            # Complete when the tree had nothing more within the bound, or when m live keys
            # came back and the next key is strictly farther (so no tie is cut off).
            if len(d) < k or k == size or (d[-1] > _loosen(d[-2]) and np.count_nonzero(live[:-1]) >= m):
                return i[live], d[live]
            k = min(size, 2 * k)


class SpatialMemory:
    """Posed frames with pose-indexed retrieval of context for the frame model.

    Frames are uint8 (H, W, 3) RGB of one resolution per memory (fixed by the first add);
    poses are camera-to-world 4x4 float64 with OpenGL camera axes. Every frame gets an integer
    id, never reused even after eviction.

    Args:
        config: indexing, scoring and eviction settings; defaults to ``MemoryConfig()``.
        **overrides: fields of :class:`MemoryConfig` to change, e.g. ``capacity=500``.

    Example:
        >>> mem = SpatialMemory(capacity=1000)
        >>> i = mem.add(frame, pose, Intrinsics(64, 64), "observed", step=0)
        >>> context = mem.frames(mem.retrieve(next_pose, k=4))
    """

    def __init__(self, config: MemoryConfig | None = None, **overrides: object) -> None:
        config = MemoryConfig() if config is None else config
        if not isinstance(config, MemoryConfig):
            raise TypeError(f"config must be a MemoryConfig, got {type(config).__name__}")
        valid = [f.name for f in fields(MemoryConfig)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown memory settings {unknown}; valid settings: {valid}")
        self.config = replace(config, **overrides) if overrides else config
        self._index = _PoseIndex(self.config.buffer_size)
        self._resolution: tuple[int, int] | None = None
        self._query_intrinsics: Intrinsics | None = None
        self._frames = np.empty((0, 0, 0, 3), dtype=np.uint8)
        self._poses = np.empty((0, 4, 4))
        self._fov = np.empty(0)
        self._source = np.empty(0, dtype=np.uint8)
        self._step = np.empty(0, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._has_depth = np.empty(0, dtype=bool)
        # Depth is stored only for the frames that have it: _depth_rows[_depth_of[slot]] is a slot's
        # (H, W) float16 depth; row 0 is all inf and stands for "no depth", so a memory of many
        # generated frames without depth pays nothing for the few observed ones that have it.
        self._depth_of = np.empty(0, dtype=np.int64)
        self._depth_rows: np.ndarray | None = None  # (rows, H, W) float16 metres, row 0 all inf
        self._n_depth_rows = 1
        self._n = 0  # slots used, live or dead; slot order is id order
        self._slot_of: dict[int, int] = {}
        self._next_id = 0
        self._points_cache: dict[Intrinsics, np.ndarray] = {}
        # Eviction state (only with a capacity): each live frame's link to its nearest other
        # frame, found when it was added or when its previous nearest was evicted, and a heap
        # of those links. See _evict_one for why the closest pair is always on the heap.
        self._link: dict[int, int] = {}
        self._linked_by: dict[int, set[int]] = {}
        self._heap: list[tuple[int, int, float, int, int, int]] = []

    # ----------------------------------------------------------------------------------
    # Contents
    # ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, frame_id: object) -> bool:
        return _is_int(frame_id) and int(frame_id) in self._slot_of

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored frames, ascending (oldest first)."""
        slots = np.flatnonzero(self._index.live[: self._n])
        return self._ids[slots].copy()

    @property
    def resolution(self) -> tuple[int, int] | None:
        """(height, width) of the stored frames, or None before the first add."""
        return self._resolution

    @property
    def next_id(self) -> int:
        """The id the next added frame will get."""
        return self._next_id

    def add(
        self,
        frame: np.ndarray,
        pose: np.ndarray,
        intrinsics: Intrinsics,
        source: str,
        step: int | None = None,
        depth: np.ndarray | None = None,
    ) -> int:
        """Store a posed frame (and optionally its depth) and return its id.

        With a capacity, a full memory then evicts its most redundant frame, which may be this
        one (a generated frame at the pose of an observed one, say). Everything is checked
        before anything is stored, so a failed add leaves the memory as it was.

        Args:
            frame: (H, W, 3) uint8 RGB; the first add fixes H and W for this memory.
            pose: (4, 4) camera-to-world pose, OpenGL camera axes.
            intrinsics: the camera's intrinsics; width and height must match the frame.
            source: ``"observed"`` (the scene's renderer) or ``"generated"`` (the frame model).
            step: the episode step at which the frame was taken (an integer >= 0), if known.
            depth: (H, W) metres along the optical axis (``-z`` in the camera frame), ``inf``
                where nothing was hit; stored as float16 (values beyond :data:`MAX_DEPTH` as inf).

        Raises:
            ValueError: wrong frame dtype or shape, a pose that is not a finite rigid transform,
                intrinsics of another size, an unknown source, a negative step, or depth of the
                wrong shape, with NaN or with values <= 0.
        """
        frame = self._check_frame(frame)
        depth16 = None if depth is None else _check_depth(depth, frame.shape[:2])
        pose = check_pose(pose, "pose")
        if not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        if (intrinsics.height, intrinsics.width) != frame.shape[:2]:
            raise ValueError(
                f"intrinsics are {intrinsics.width}x{intrinsics.height} (WxH) but the frame is "
                f"{frame.shape[1]}x{frame.shape[0]}"
            )
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; valid sources: {list(SOURCES)}")
        if step is not None and not (_is_int(step) and step >= 0):
            raise ValueError(f"step must be None or an integer >= 0, got {step!r}")

        if self._resolution is None:
            self._resolution = (frame.shape[0], frame.shape[1])
            self._frames = np.empty((0, *frame.shape), dtype=np.uint8)
        self._reserve(self._n + 1)
        if depth16 is not None:
            self._reserve_depth_rows(self._n_depth_rows + 1)
        slot = self._index.append(pose_keys(pose, self.config.direction_scale))
        assert slot == self._n, "index and storage slots diverged"
        frame_id = self._next_id
        self._frames[slot] = frame
        self._poses[slot] = pose
        self._fov[slot] = intrinsics.fov_y
        self._source[slot] = SOURCES.index(source)
        self._step[slot] = _NO_STEP if step is None else int(step)
        self._has_depth[slot] = depth16 is not None
        self._depth_of[slot] = 0
        if depth16 is not None:
            self._depth_rows[self._n_depth_rows] = depth16
            self._depth_of[slot] = self._n_depth_rows
            self._n_depth_rows += 1
        self._ids[slot] = frame_id
        self._slot_of[frame_id] = slot
        self._n += 1
        self._next_id += 1
        self._query_intrinsics = intrinsics
        if self.config.capacity is not None:
            self._relink(frame_id)
            if len(self) > self.config.capacity:
                self._evict_one()
        return frame_id

    def frames(self, ids: Iterable[int]) -> np.ndarray:
        """Frames (k, H, W, 3) uint8 of the given ids, in that order."""
        return self._frames[self._slots(ids)]

    def poses(self, ids: Iterable[int]) -> np.ndarray:
        """Camera-to-world poses (k, 4, 4) float64 of the given ids, in that order."""
        return self._poses[self._slots(ids)]

    def intrinsics_of(self, ids: Iterable[int]) -> list[Intrinsics]:
        """Intrinsics of the given ids, in that order."""
        h, w = self._resolution or (1, 1)
        return [Intrinsics(w, h, float(f)) for f in self._fov[self._slots(ids)]]

    def sources(self, ids: Iterable[int]) -> list[str]:
        """Sources (``"observed"`` or ``"generated"``) of the given ids, in that order."""
        return [SOURCES[s] for s in self._source[self._slots(ids)]]

    def depths(self, ids: Iterable[int]) -> np.ndarray:
        """Depths (k, H, W) float32 metres of the given ids, in that order.

        ``inf`` where the frame's sensor hit nothing; NaN everywhere for a frame stored
        without depth (see :meth:`has_depth`).
        """
        slots = self._slots(ids)
        h, w = self._resolution or (0, 0)
        out = np.full((len(slots), h, w), np.nan, dtype=np.float32)
        if self._depth_rows is not None and len(slots):
            have = self._has_depth[slots]
            out[have] = self._depth_rows[self._depth_of[slots[have]]]
        return out

    def has_depth(self, ids: Iterable[int]) -> np.ndarray:
        """Whether each of the given ids was stored with depth, (k,) bool."""
        return self._has_depth[self._slots(ids)].copy()

    @property
    def depth_fraction(self) -> float:
        """Fraction of the stored frames that carry depth (0 for an empty memory)."""
        slots = np.flatnonzero(self._index.live[: self._n])
        return float(self._has_depth[slots].mean()) if len(slots) else 0.0

    def steps(self, ids: Iterable[int]) -> list[int | None]:
        """Steps of the given ids (None where none was given), in that order."""
        return [None if s == _NO_STEP else int(s) for s in self._step[self._slots(ids)]]

    def get(self, frame_id: int) -> MemoryEntry:
        """Everything stored for one id; raises ``KeyError`` for an unknown or evicted id."""
        ids = [frame_id]
        return MemoryEntry(
            id=int(frame_id),
            frame=self.frames(ids)[0],
            pose=self.poses(ids)[0],
            intrinsics=self.intrinsics_of(ids)[0],
            source=self.sources(ids)[0],
            step=self.steps(ids)[0],
            depth=self.depths(ids)[0] if self.has_depth(ids)[0] else None,
        )

    # ----------------------------------------------------------------------------------
    # Retrieval
    # ----------------------------------------------------------------------------------

    def nearest(self, pose: np.ndarray, m: int) -> list[int]:
        """Ids of the ``m`` stored poses nearest to ``pose`` in the 6-D index space.

        Distances are between :func:`pose_keys`; ties go to the older frame. This is the
        candidate set that :meth:`retrieve` scores.
        """
        pose = check_pose(pose, "query pose")
        m = _check_count(m, "m")
        slots, _ = self._index.nearest(pose_keys(pose, self.config.direction_scale), m)
        return [int(i) for i in self._ids[slots]]

    def retrieve(
        self,
        pose: np.ndarray,
        k: int = 4,
        intrinsics: Intrinsics | None = None,
        *,
        fill: bool = False,
    ) -> list[int]:
        """Ids of up to ``k`` stored frames that together best show what ``pose`` sees.

        The ``config.candidates`` poses nearest in the 6-D index are scored by how many points
        sampled in the query frustum each one sees (depths ``config.depths``; with depth,
        occlusion-aware: see :meth:`_occluded`), weighted by ``exp(-distance /
        config.distance_scale)`` and by ``config.generated_weight`` for generated frames, so an
        observed frame that sees the target is preferred. Picks are greedy: a
        point counts for a candidate only as far as no picked frame already sees it from
        within ``config.novelty_angle``, so near-copies of a picked view score about zero.

        Args:
            pose: (4, 4) camera-to-world pose of the camera to generate.
            k: how many frames at most.
            intrinsics: the query camera's intrinsics; defaults to those of the last add.
            fill: when fewer than ``k`` frames see the query's view, top up with the nearest
                remaining candidates (useful context about the place even without overlap).

        Returns:
            Ids in pick order, most useful first. Fewer than ``k`` when fewer stored frames
            see part of the query's view from a new angle; empty for an empty memory. The same
            contents and query always give the same ids.
        """
        pose = check_pose(pose, "query pose")
        k = _check_count(k, "k")
        if intrinsics is not None and not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an Intrinsics or None, got {type(intrinsics).__name__}")
        if k == 0 or len(self) == 0:
            return []
        cfg = self.config
        intrinsics = intrinsics or self._query_intrinsics
        slots, _ = self._index.nearest(pose_keys(pose, cfg.direction_scale), cfg.candidates)

        picked = [int(j) for j in self._pick_views(pose, intrinsics, slots, k)]
        if fill and len(picked) < k:
            taken = set(picked)
            rest = [j for j in range(len(slots)) if j not in taken]
            picked += rest[: k - len(picked)]
        return [int(i) for i in self._ids[slots[picked]]]

    def _pick_views(self, pose: np.ndarray, intrinsics: Intrinsics, slots: np.ndarray, k: int) -> list[int]:
        """Greedy max-coverage choice of up to ``k`` candidates (positions in ``slots``)."""
        cfg = self.config
        # Vectors are laid out (3, P) and (M, 3, P), contiguous per coordinate, so dot products
        # reduce a middle axis of 3 planes, which numpy does far faster than a trailing axis of 3.
        points = pose[:3, :3] @ self._sample_points(intrinsics) + pose[:3, 3, None]  # (3, P) world
        cand = self._poses[slots]  # (M, 4, 4)
        centres = cand[:, :3, 3]  # (M, 3)
        rel = points[None, :, :] - centres[:, :, None]  # (M, 3, P) world, candidate -> point
        local = np.swapaxes(cand[:, :3, :3], 1, 2) @ rel  # (M, 3, P) R^T (X - c), candidate camera frame
        depth = -local[:, 2]  # (M, P), the camera looks down -z
        h, w = self._resolution
        tan_y = np.tan(np.radians(self._fov[slots]) / 2.0)[:, None]  # (M, 1)
        in_view = (depth > cfg.near) & (np.abs(local[:, 0]) <= depth * (tan_y * (w / h)))
        in_view &= np.abs(local[:, 1]) <= depth * tan_y  # (M, P) inside each candidate's frustum
        if self._depth_rows is not None and self._has_depth[slots].any():
            in_view &= ~self._occluded(pose, slots, local, depth, in_view, tan_y)
        rows = np.flatnonzero(in_view.any(axis=1))  # candidates that see something
        if len(rows) == 0:
            return []
        in_view, rel = in_view[rows], rel[rows]  # (M', P), (M', 3, P)
        rays = rel / np.sqrt(np.einsum("mip,mip->mp", rel, rel))[:, None, :]  # (M', 3, P) unit viewing rays
        query_rays = points - pose[:3, 3, None]
        query_rays /= np.sqrt(np.einsum("ip,ip->p", query_rays, query_rays))  # (3, P)
        # A surface the query sees faces it; a uniformly random such orientation also faces a
        # camera whose ray differs by angle a with probability 1 - a / pi (zero from behind).
        cos_q = np.einsum("mip,ip->mp", rays, query_rays)  # (M', P)
        seen = in_view * (1.0 - np.arccos(np.clip(cos_q, -1.0, 1.0)) / np.pi)  # (M', P) expected visibility
        offset = centres[rows] - pose[:3, 3]
        weight = np.exp(-np.sqrt(np.einsum("mi,mi->m", offset, offset)) / cfg.distance_scale) / points.shape[1]  # (M',)
        generated = self._source[slots[rows]] == SOURCES.index("generated")
        weight = np.where(generated, weight * cfg.generated_weight, weight)  # observed frames outrank generated ones

        best_cos = np.full(seen.shape, -1.0)  # (M', P) cosine to the closest picked ray at each point
        inv_cut = 1.0 / (1.0 - math.cos(math.radians(cfg.novelty_angle)))
        open_ = (seen > 0).any(axis=1)
        picked: list[int] = []
        while len(picked) < k and open_.any():
            novelty = np.minimum(1.0, (1.0 - best_cos) * inv_cut)  # (M', P), 1 where no pick sees the point
            gain = np.where(open_, (novelty * seen).sum(axis=1) * weight, -np.inf)  # (M',) fraction of P
            j = int(np.argmax(gain))  # first maximum: candidates are ordered by (distance, id)
            if not gain[j] > cfg.min_gain:
                break
            picked.append(j)
            open_[j] = False
            cos = np.einsum("mip,ip->mp", rays, rays[j])  # (M', P) angle to the picked view's rays
            best_cos = np.where(seen[j] > 0, np.maximum(best_cos, cos), best_cos)
        return [int(rows[j]) for j in picked]

    def _occluded(
        self,
        pose: np.ndarray,
        slots: np.ndarray,
        local: np.ndarray,
        depth: np.ndarray,
        in_view: np.ndarray,
        tan_y: np.ndarray,
    ) -> np.ndarray:
        """(M, P) True where a sampled point does not count for a candidate because of depth.

        A point hides from a candidate with depth when it lies behind the surface that the
        candidate's depth map shows at the point's pixel. The query camera has no depth, so the
        candidate nearest to it (by camera centre) among those with depth that frame the point
        stands in for it: a point hidden from that view is most likely hidden from the query
        too (behind the wall it faces), and counts for no candidate.
        """
        cfg = self.config
        h, w = self._resolution
        has = self._has_depth[slots]  # (M,)
        focal = (h / 2.0) / tan_y  # (M, 1) pixels
        z = np.where(in_view, depth, 1.0)  # (M, P); out-of-view points are masked below
        col = np.clip(np.floor(local[:, 0] / z * focal + w / 2.0), 0, w - 1).astype(np.intp)
        row = np.clip(np.floor(-local[:, 1] / z * focal + h / 2.0), 0, h - 1).astype(np.intp)
        rows = self._depth_of[slots]  # (M,) depth rows; 0 (all inf) for frames without depth
        stored = self._depth_rows[rows[:, None], row, col].astype(np.float64)  # (M, P) metres
        informed = in_view & has[:, None]  # (M, P) candidates whose depth tells about the point
        hidden = informed & (depth > stored * (1.0 + cfg.occlusion_tolerance) + 0.05)  # (M, P)
        # A candidate that sees the query camera itself behind a surface is on the other side of
        # a wall from it and cannot stand in for it.
        cand = self._poses[slots]  # (M, 4, 4)
        q_local = np.einsum("mji,mj->mi", cand[:, :3, :3], pose[:3, 3] - cand[:, :3, 3])  # (M, 3)
        q_depth = -q_local[:, 2]  # (M,)
        q_in = (q_depth > cfg.near) & (np.abs(q_local[:, 0]) <= q_depth * tan_y[:, 0] * (w / h))
        q_in &= np.abs(q_local[:, 1]) <= q_depth * tan_y[:, 0]
        qz = np.where(q_in, q_depth, 1.0)
        q_col = np.clip(np.floor(q_local[:, 0] / qz * focal[:, 0] + w / 2.0), 0, w - 1).astype(np.intp)
        q_row = np.clip(np.floor(-q_local[:, 1] / qz * focal[:, 0] + h / 2.0), 0, h - 1).astype(np.intp)
        q_stored = self._depth_rows[rows, q_row, q_col].astype(np.float64)  # (M,)
        separated = has & q_in & (q_depth > q_stored * (1.0 + cfg.occlusion_tolerance) + 0.05)  # (M,)
        dist = np.linalg.norm(cand[:, :3, 3] - pose[:3, 3], axis=1)  # (M,)
        key = np.where(informed & ~separated[:, None], dist[:, None], np.inf)  # (M, P)
        proxy = np.argmin(key, axis=0)  # (P,) nearest informed candidate per point
        cols = np.arange(key.shape[1])
        behind_for_query = np.isfinite(key[proxy, cols]) & hidden[proxy, cols]  # (P,)
        return hidden | behind_for_query[None, :]

    # ----------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the memory to a safetensors file, atomically.

        The file is written next to ``path`` under a temporary name and moved over ``path``
        only when complete, so a failure never damages an existing file.
        """
        path = Path(path)
        slots = np.flatnonzero(self._index.live[: self._n])
        h, w = self._resolution or (0, 0)
        tensors = {
            "frames": np.ascontiguousarray(self._frames[slots]).reshape(len(slots), h, w, 3),
            "poses": np.ascontiguousarray(self._poses[slots]),
            "ids": np.ascontiguousarray(self._ids[slots]),
            "fov_y": np.ascontiguousarray(self._fov[slots]),
            "source": np.ascontiguousarray(self._source[slots]),
            "step": np.ascontiguousarray(self._step[slots]),
            "has_depth": self._has_depth[slots].astype(np.uint8),
        }
        with_depth = slots[self._has_depth[slots]]
        tensors["depth"] = (
            np.ascontiguousarray(self._depth_rows[self._depth_of[with_depth]])
            if self._depth_rows is not None
            else np.empty((0, h, w), dtype=np.float16)
        )
        query = self._query_intrinsics.to_dict() if self._query_intrinsics else None
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "next_id": str(self._next_id),
            "resolution": json.dumps(list(self._resolution) if self._resolution else None),
            "query_intrinsics": json.dumps(query),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpatialMemory:
        """Read a memory written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            MemoryFormatError: the file is corrupt, truncated, not a spatial memory, or of a
                format version this code does not read.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no spatial memory file at {path}")

        def fail(why: str) -> MemoryFormatError:
            return MemoryFormatError(f"{path} is not a readable spatial memory: {why}")

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            if meta.get("format") != FORMAT_NAME:
                raise fail(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
            version = meta.get("version")
            if version not in READ_VERSIONS:
                raise fail(f"format version {version!r}; this code reads versions {list(READ_VERSIONS)}")
            tensors = load_file(str(path))
        except SafetensorError as e:
            raise fail(f"not a complete safetensors file ({e})") from e
        try:
            config = MemoryConfig.from_dict(json.loads(meta["config"]))
            next_id = int(meta["next_id"])
            resolution = json.loads(meta["resolution"])
            if resolution is not None and not (
                isinstance(resolution, list) and len(resolution) == 2 and all(_is_int(v) and v > 0 for v in resolution)
            ):
                raise ValueError(f"resolution must be null or [height, width], got {resolution!r}")
            query = json.loads(meta["query_intrinsics"])
            query = None if query is None else Intrinsics.from_dict(query)
        except (KeyError, TypeError, ValueError) as e:
            raise fail(f"bad metadata ({type(e).__name__}: {e})") from e

        expected = dict(_TENSORS)
        if version != "1":
            expected.update(_DEPTH_TENSORS)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise fail(f"missing tensors {missing}")
        n = len(tensors["ids"])
        h, w = resolution if resolution is not None else (0, 0)
        has_depth = np.zeros(n, dtype=bool)
        if version != "1":
            flags = tensors["has_depth"]
            if flags.dtype != np.uint8 or flags.shape != (n,) or np.any(flags > 1):
                raise fail(f"tensor 'has_depth' must be {n} uint8 flags of 0 or 1, got {flags.dtype} {flags.shape}")
            has_depth = flags.astype(bool)
        for name, (dtype, trailing) in expected.items():
            t = tensors[name]
            rows = int(has_depth.sum()) if name == "depth" else n
            shape = (rows, *(trailing if trailing is not None else ((h, w) if name == "depth" else (h, w, 3))))
            if t.dtype != dtype or t.shape != shape:
                raise fail(f"tensor {name!r} is {t.dtype} {t.shape}, expected {np.dtype(dtype)} {shape}")
        depth = None
        if has_depth.any():
            stored = tensors["depth"]
            if np.isnan(stored).any() or (stored <= 0).any():
                raise fail("depth values must be > 0 metres or inf (NaN or <= 0 found)")
            depth = np.concatenate([np.full((1, h, w), np.inf, dtype=np.float16), stored])
        ids = tensors["ids"]
        if n and (np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= next_id):
            raise fail(f"ids must be increasing in [0, next_id={next_id})")
        if n and resolution is None:
            raise fail("frames stored but no resolution recorded")
        if config.capacity is not None and n > config.capacity:
            raise fail(f"{n} frames stored but capacity is {config.capacity}")
        if np.any(tensors["source"] >= len(SOURCES)) or np.any(tensors["step"] < _NO_STEP):
            raise fail("source codes or steps out of range")
        fov = tensors["fov_y"]
        if not np.all((fov > 0) & (fov < 180)):
            raise fail("fov_y values outside (0, 180) degrees")
        poses = tensors["poses"]
        rot = poses[:, :3, :3]
        rigid = (
            np.all(np.isfinite(poses))
            and np.allclose(poses[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
            and np.allclose(rot @ np.swapaxes(rot, 1, 2), np.eye(3), atol=1e-4)
            and np.all(np.linalg.det(rot) > 0)
        )
        if not rigid:
            raise fail("poses are not finite rigid transforms")

        mem = cls(config)
        mem._resolution = None if resolution is None else (int(h), int(w))
        mem._query_intrinsics = query
        mem._frames, mem._poses, mem._ids = tensors["frames"], poses, ids
        mem._fov, mem._source, mem._step = fov, tensors["source"], tensors["step"]
        mem._has_depth, mem._depth_rows = has_depth, depth
        mem._depth_of = np.zeros(n, dtype=np.int64)
        mem._depth_of[has_depth] = np.arange(1, int(has_depth.sum()) + 1)
        mem._n_depth_rows = 1 + int(has_depth.sum())
        mem._n = n
        mem._next_id = next_id
        mem._slot_of = {int(i): s for s, i in enumerate(ids)}
        mem._index.reset(pose_keys(poses, config.direction_scale))
        if config.capacity is not None:
            for frame_id in mem._slot_of:
                mem._relink(frame_id)
        return mem

    # ----------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array (H, W, 3) uint8, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 RGB, got dtype {frame.dtype}")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"frame must have shape (H, W, 3), got {frame.shape}")
        if self._resolution is not None and frame.shape[:2] != self._resolution:
            raise ValueError(f"frame shape {frame.shape} does not match this memory's frames {(*self._resolution, 3)}")
        return frame

    def _slots(self, ids: Iterable[int]) -> np.ndarray:
        if _is_int(ids) or isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be a sequence of integers, got {ids!r}")
        values = ids.reshape(-1).tolist() if isinstance(ids, np.ndarray) else list(ids)
        out = []
        for i in values:
            if not _is_int(i):
                raise TypeError(f"frame ids must be integers, got {i!r}")
            slot = self._slot_of.get(int(i))
            if slot is None:
                if 0 <= i < self._next_id:
                    raise KeyError(f"frame id {i} was evicted from this memory")
                raise KeyError(f"unknown frame id {i}; ids given so far are 0..{self._next_id - 1}")
            out.append(slot)
        return np.asarray(out, dtype=np.int64)

    def _reserve(self, n: int) -> None:
        cap = len(self._ids)
        if n <= cap:
            return
        new = max(16, 2 * cap, n)

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.empty((new, *a.shape[1:]), dtype=a.dtype)
            out[: self._n] = a[: self._n]
            return out

        self._frames, self._poses, self._fov = grow(self._frames), grow(self._poses), grow(self._fov)
        self._source, self._step, self._ids = grow(self._source), grow(self._step), grow(self._ids)
        self._has_depth, self._depth_of = grow(self._has_depth), grow(self._depth_of)

    def _reserve_depth_rows(self, n: int) -> None:
        h, w = self._resolution
        if self._depth_rows is None:
            self._depth_rows = np.full((max(16, n), h, w), np.inf, dtype=np.float16)
        elif n > len(self._depth_rows):
            grown = np.empty((max(n, 2 * len(self._depth_rows)), h, w), dtype=np.float16)
            grown[: self._n_depth_rows] = self._depth_rows[: self._n_depth_rows]
            self._depth_rows = grown

    def _sample_points(self, intrinsics: Intrinsics) -> np.ndarray:
        """(3, P) points in the camera frame: a pixel grid times ``config.depths``."""
        pts = self._points_cache.get(intrinsics)
        if pts is None:
            w, h, f = intrinsics.width, intrinsics.height, intrinsics.focal
            gx = self.config.grid
            gy = max(1, round(gx * h / w))
            u = (np.arange(gx) + 0.5) * (w / gx)
            v = (np.arange(gy) + 0.5) * (h / gy)
            uu, vv = np.meshgrid(u, v)
            rays = np.stack([(uu - w / 2.0) / f, -(vv - h / 2.0) / f, -np.ones_like(uu)], axis=-1).reshape(-1, 3)
            depths = np.asarray(self.config.depths)
            pts = np.ascontiguousarray((depths[:, None, None] * rays[None]).reshape(-1, 3).T)  # z-depth: -z = depth
            self._points_cache[intrinsics] = pts
        return pts

    # Eviction ---------------------------------------------------------------------------

    def _relink(self, frame_id: int) -> None:
        """Link a live frame to its nearest other live frame and push that pair on the heap."""
        old = self._link.pop(frame_id, None)
        if old is not None:
            self._linked_by.get(old, set()).discard(frame_id)
        slot = self._slot_of[frame_id]
        slots, dists = self._index.nearest(self._index.keys[slot], 2)
        others = [(s, d) for s, d in zip(slots.tolist(), dists.tolist(), strict=True) if s != slot]
        if not others:
            return
        other_slot, dist = others[0]
        other = int(self._ids[other_slot])
        self._link[frame_id] = other
        self._linked_by.setdefault(other, set()).add(frame_id)
        gen_self = self._source[slot] == SOURCES.index("generated")
        gen_other = self._source[other_slot] == SOURCES.index("generated")
        if gen_self != gen_other:
            victim = frame_id if gen_self else other
        else:
            victim = min(frame_id, other)  # keep the newer of two frames of one source
        rank = 0 if self._source[self._slot_of[victim]] == SOURCES.index("generated") else 1
        bucket = int(dist // self.config.redundancy_tolerance)
        heapq.heappush(self._heap, (bucket, rank, dist, victim, frame_id, other))

    def _evict_one(self) -> None:
        """Evict one frame of the closest pair of stored poses.

        Every live frame links to the nearest frame that was live when the link was made (at
        its add, or when its previous nearest was evicted). Of the closest pair (a, b), the one
        linked later saw the other alive and so links to something at least as close: the
        closest pair's distance is always the top valid link on the heap.
        """
        if len(self._heap) > 4 * len(self) + 64:
            self._heap = [e for e in self._heap if self._link.get(e[4]) == e[5]]
            heapq.heapify(self._heap)
        while self._heap:
            _, _, _, victim, owner, other = heapq.heappop(self._heap)
            if self._link.get(owner) == other and owner in self._slot_of and other in self._slot_of:
                break
        else:
            raise RuntimeError("spatial memory eviction heap is empty while over capacity")
        slot = self._slot_of.pop(victim)
        self._index.remove(slot)
        old = self._link.pop(victim, None)
        if old is not None:
            self._linked_by.get(old, set()).discard(victim)
        for frame_id in sorted(self._linked_by.pop(victim, set())):
            if self._link.get(frame_id) == victim:
                self._relink(frame_id)
        if self._n - len(self) > max(len(self), self.config.buffer_size):
            self._compact()

    def _compact(self) -> None:
        """Drop dead slots from storage and rebuild the index over the live ones."""
        keep = np.flatnonzero(self._index.live[: self._n])
        self._frames, self._poses, self._fov = self._frames[keep], self._poses[keep], self._fov[keep]
        self._source, self._step, self._ids = self._source[keep], self._step[keep], self._ids[keep]
        self._has_depth, self._depth_of = self._has_depth[keep], self._depth_of[keep]
        if self._depth_rows is not None:
            used = self._depth_of[self._has_depth]
            self._depth_rows = np.concatenate([self._depth_rows[:1], self._depth_rows[used]])
            self._depth_of = np.zeros(len(keep), dtype=np.int64)
            self._depth_of[self._has_depth] = np.arange(1, len(used) + 1)
            self._n_depth_rows = 1 + len(used)
        self._n = len(keep)
        self._slot_of = {int(i): s for s, i in enumerate(self._ids)}
        self._index.reset(pose_keys(self._poses, self.config.direction_scale))


def _check_depth(depth: object, shape: tuple[int, int]) -> np.ndarray:
    """A depth map checked against the frame's (H, W), as float16 metres (far values as inf)."""
    if not isinstance(depth, np.ndarray):
        raise ValueError(f"depth must be a numpy array (H, W) of metres, got {type(depth).__name__}")
    if depth.dtype.kind != "f":
        raise ValueError(f"depth must be floating-point metres, got dtype {depth.dtype}")
    if depth.shape != tuple(shape):
        raise ValueError(f"depth has shape {depth.shape} but the frame is {tuple(shape)} (H, W)")
    if np.isnan(depth).any():
        raise ValueError(f"depth has {int(np.isnan(depth).sum())} NaN values; use inf where nothing was hit")
    if (depth <= 0).any():
        raise ValueError(f"depth must be > 0 metres (inf where nothing was hit), got minimum {float(depth.min())}")
    far = depth > MAX_DEPTH
    out = depth.astype(np.float16)
    out[far] = np.inf
    # Values that round to 0 in float16 (below 6e-8 m) would read back as a surface at the lens.
    out[out == 0] = np.float16(np.finfo(np.float16).tiny)
    return out


def _check_count(value: object, name: str) -> int:
    if not (_is_int(value) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)
