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
(version 2 added depth; version 3 adds a checksum). Version 3 files carry a SHA-256 of their
payload in the header metadata (``sha256``, see :func:`payload_sha256`) that :meth:`SpatialMemory.load`
checks; version 1 (no depth) and 2 files still load, with an :class:`UnverifiedMemoryWarning`.
Loading reads the safetensors header itself (bounded to :data:`MAX_HEADER_BYTES`) and checks
every declared dtype, shape and byte range against the file's size before reading any tensor,
so a file never makes the loader allocate more than the file holds. Every setting and value in
a file is bounded (:class:`MemoryConfig`, :data:`MAX_SIDE`, :data:`MAX_TRANSLATION`,
:data:`MIN_FOV_Y`, :data:`MAX_ID`), and :meth:`SpatialMemory.add` refuses anything that a
later load would refuse, so a memory always saves to a file that loads.

Saves are atomic (a temp file in the target's directory, then ``os.replace``), refuse a target
that exists and is not a regular file (a directory, a device, a symbolic link), give the file
the usual permissions (``0o666`` minus the umask) and remove the temp files that killed saves
left in that directory (see :func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from pathlib import Path
from typing import BinaryIO

import numpy as np
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
    "UnverifiedMemoryWarning",
    "check_save_path",
    "payload_sha256",
    "pose_keys",
    "remove_stale_temp_files",
]

#: Where a stored frame came from: the scene's renderer or the frame model.
SOURCES = ("observed", "generated")
FORMAT_NAME = "rtfm-spatial-memory"
FORMAT_VERSION = "3"
#: Versions :meth:`SpatialMemory.load` reads: 1 (no depth), 2 (optional depth per frame) and 3
#: (2 plus a SHA-256 of the payload). Versions 1 and 2 load with an UnverifiedMemoryWarning.
READ_VERSIONS = ("1", "2", "3")
#: Versions without a checksum: they load, unverified.
UNVERIFIED_VERSIONS = ("1", "2")
#: Largest finite depth that float16 storage keeps, metres; anything farther is stored as inf.
MAX_DEPTH = 65504.0
#: Largest frame height and width, pixels.
MAX_SIDE = 4096
#: Field of view bounds (vertical, degrees) of a stored frame or query camera.
MIN_FOV_Y = 1e-3
MAX_FOV_Y = 180.0 - 1e-3
#: Largest distance of a camera from the origin, metres. Keeps every pose-key distance finite.
MAX_TRANSLATION = 1e6
#: next_id stays below this (so frame ids stay below MAX_ID - 1).
MAX_ID = 2**62
#: Largest episode step a frame can be stored with.
MAX_STEP = 2**62 - 1
#: Largest safetensors header (JSON) that load reads, bytes; a memory's header is about 2 KB.
MAX_HEADER_BYTES = 1 << 20
#: Temp files of a save are removed by a later save to the same directory once they have not
#: been modified for this long (seconds) and the process that wrote them is gone (same machine),
#: or once they are STALE_TEMP_MAX_SECONDS old whatever their writer's pid says.
STALE_TEMP_SECONDS = 600.0
STALE_TEMP_MAX_SECONDS = 86400.0
#: Bounds of the integer settings of MemoryConfig (inclusive).
CONFIG_INT_BOUNDS = {"capacity": (1, 10**9), "candidates": (1, 4096), "grid": (1, 256), "buffer_size": (1, 1 << 16)}
#: Bounds of the real settings of MemoryConfig: (low, high, low_inclusive, high_inclusive).
CONFIG_REAL_BOUNDS = {
    "direction_scale": (1e-6, 1e6, True, True),
    "near": (1e-6, 1e6, True, True),
    "distance_scale": (1e-6, 1e6, True, True),
    "novelty_angle": (1e-3, 180.0, True, True),
    "min_gain": (0.0, 1.0, True, False),
    "redundancy_tolerance": (1e-9, 1e6, True, True),
    "generated_weight": (0.0, 1.0, False, True),
    "occlusion_tolerance": (0.0, 1e6, True, True),
}
#: MemoryConfig.depths: at most this many sample depths, each in [1e-6, 1e6] metres.
MAX_SAMPLE_DEPTHS = 64
#: Retrieval scores candidates x sampled points (grid x grid x depths for a square query; rows
#: are capped at 4 x grid for tall images): the settings keep candidates * grid**2 * len(depths)
#: at most this, so one retrieve never needs more than a few hundred MB.
MAX_RETRIEVAL_SAMPLES = 1 << 19

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


_ST_DTYPES = {  # safetensors dtype code -> (numpy little-endian dtype or None, item size)
    "BOOL": (None, 1), "U8": ("<u1", 1), "I8": (None, 1), "F8_E5M2": (None, 1), "F8_E4M3": (None, 1),
    "U16": (None, 2), "I16": (None, 2), "F16": ("<f2", 2), "BF16": (None, 2),
    "U32": (None, 4), "I32": (None, 4), "F32": ("<f4", 4),
    "U64": (None, 8), "I64": ("<i8", 8), "F64": ("<f8", 8),
    # Only the four dtypes a memory uses are read; the rest are known so that sizes can be checked.
}  # fmt: skip
_ST_CODE = {np.dtype(t): c for c, (t, _) in _ST_DTYPES.items() if t is not None}  # numpy dtype -> code
_ST_CODE.update(
    {np.dtype(t): c for t, c in ((np.bool_, "BOOL"), (np.int8, "I8"), (np.int16, "I16"), (np.int32, "I32"))}
)
_ST_CODE.update({np.dtype(t): c for t, c in ((np.uint16, "U16"), (np.uint32, "U32"), (np.uint64, "U64"))})
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_NEXT_ID_RE = re.compile(r"0|[1-9][0-9]{0,18}")


class MemoryFormatError(ValueError):
    """A file is not a spatial memory this version can read (corrupt, truncated, foreign, newer)."""


class UnverifiedMemoryWarning(UserWarning):
    """A memory file of a version without a checksum (1 or 2) was loaded: its contents are unverified."""


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
        # Every value is bounded (CONFIG_INT_BOUNDS, CONFIG_REAL_BOUNDS, MAX_SAMPLE_DEPTHS,
        # MAX_RETRIEVAL_SAMPLES), so no setting, from code or from a file, can make retrieval or
        # eviction allocate without bound, divide by zero or overflow. Bools are not numbers here.
        for name, (lo, hi) in CONFIG_INT_BOUNDS.items():
            value = getattr(self, name)
            if name == "capacity" and value is None:
                continue
            if not (_is_int(value) and lo <= value <= hi):
                none = "None or " if name == "capacity" else ""
                raise ValueError(f"{name} must be {none}an integer in [{lo}, {hi}], got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, (lo, hi, lo_in, hi_in) in CONFIG_REAL_BOUNDS.items():
            value = getattr(self, name)
            ok = _is_real(value) and (lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)
            if not ok:
                interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
                raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
            object.__setattr__(self, name, float(value))
        raw = self.depths
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
            raise ValueError(f"depths must be a sequence of numbers, got {raw!r}")
        raw = list(raw) if not isinstance(raw, np.ndarray) else raw.tolist()
        if not (1 <= len(raw) <= MAX_SAMPLE_DEPTHS and all(_is_real(d) and 1e-6 <= d <= 1e6 for d in raw)):
            shown = raw if len(raw) <= 8 else f"{len(raw)} values"
            raise ValueError(
                f"depths must be 1 to {MAX_SAMPLE_DEPTHS} finite numbers in [1e-06, 1e+06] metres, got {shown!r}"
            )
        object.__setattr__(self, "depths", tuple(float(d) for d in raw))
        work = self.candidates * self.grid**2 * len(self.depths)
        if work > MAX_RETRIEVAL_SAMPLES:
            raise ValueError(
                f"candidates * grid**2 * len(depths) = {self.candidates} * {self.grid}**2 * {len(self.depths)} = "
                f"{work} exceeds the bound {MAX_RETRIEVAL_SAMPLES} (the points retrieval scores)"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        d = asdict(self)
        d["depths"] = list(self.depths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MemoryConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` listing the valid ones."""
        if not isinstance(d, dict):
            raise ValueError(f"a memory config must be a dict of settings, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown memory config keys {unknown}; valid keys: {valid}")
        d = dict(d)
        if "depths" in d and isinstance(d["depths"], list):
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
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


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
        found, best, bound = [], np.empty(0), math.inf  # best: the m smallest distances found so far
        for tree, start in self.trees:  # largest first: its m nearest bound the rest tightly
            slots, dists = self._search_tree(tree, start, query, m, bound)
            found.append(slots)
            if bound == math.inf:  # once finite, the bound stays: the final sort orders what it admits
                best = np.concatenate([best, dists])
                if len(best) >= m:
                    bound = float(np.partition(best, m - 1)[m - 1])
        buf = np.arange(self.buffer_start, self.n)  # the short buffer: every live key is a candidate
        found.append(buf[self.live[buf]])
        slots = np.concatenate(found)
        sq = _sq_dist(self.keys[slots], query)
        order = np.lexsort((slots, sq))[:m]
        return slots[order], np.sqrt(sq[order])

    def _search_tree(
        self, tree: cKDTree, start: int, query: np.ndarray, m: int, bound: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Live slots of one tree that may be among the ``m`` nearest (a superset, ties kept).

        With a finite ``bound`` (the m-th smallest distance found so far) every key within it is
        a candidate, and a ball query finds them at about half the fixed cost of a k-nearest
        query; trees are searched largest first, so the bound is tight by the time the smaller
        trees are reached. Without one, k-nearest queries widen until no tie is cut off.

        Returns:
            The slots, and their distances as the tree computed them (none for a ball query).
        """
        if bound < math.inf:
            i = np.asarray(tree.query_ball_point(query, _loosen(bound), return_sorted=False), dtype=np.intp)
            i += start
            return i[self.live[i]], np.empty(0)
        size = tree.n
        k = min(size, m + 1)
        while True:
            d, i = tree.query(query, k)
            if k == 1:
                d, i = np.array([d]), np.array([i])
            i = i + start
            live = self.live[i]
            # Complete when m live keys came back and the next key is strictly farther (so no
            # tie is cut off), or when the tree has no more.
            if k == size or (d[-1] > _loosen(d[-2]) and np.count_nonzero(live[:-1]) >= m):
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
        #: Arrays saved beside the frames (a world file's free-space grid, ...); see :meth:`save`.
        self.attachments: dict[str, np.ndarray] = {}
        #: A JSON object saved with the memory (where a world came from, ...); see :meth:`save`.
        self.info: dict = {}
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
                wrong shape, with NaN or with values <= 0. Also anything out of bounds: a frame
                side above :data:`MAX_SIDE`, a camera farther than :data:`MAX_TRANSLATION` metres
                from the origin, a field of view outside [:data:`MIN_FOV_Y`, :data:`MAX_FOV_Y`],
                a step above :data:`MAX_STEP`.
        """
        # Validate everything before touching anything: a failed add leaves the memory exactly as
        # it was (length, ids, next_id, index, eviction state), and everything stored here is
        # within the bounds that load() checks, so the memory always saves to a loadable file.
        frame = self._check_frame(frame)
        depth16 = None if depth is None else _check_depth(depth, frame.shape[:2])
        pose = _check_bounded_pose(pose, "pose")
        if not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an Intrinsics, got {type(intrinsics).__name__}")
        if (intrinsics.height, intrinsics.width) != frame.shape[:2]:
            raise ValueError(
                f"intrinsics are {intrinsics.width}x{intrinsics.height} (WxH) but the frame is "
                f"{frame.shape[1]}x{frame.shape[0]}"
            )
        fov = _check_fov(intrinsics.fov_y, "intrinsics.fov_y")
        if not (isinstance(source, str) and source in SOURCES):
            raise ValueError(f"unknown source {source!r}; valid sources: {list(SOURCES)}")
        if step is not None and not (_is_int(step) and 0 <= step <= MAX_STEP):
            raise ValueError(f"step must be None or an integer in [0, {MAX_STEP}], got {step!r}")
        if self._next_id >= MAX_ID - 1:  # next_id stays below MAX_ID
            raise ValueError(
                f"this memory has given out every frame id below {MAX_ID - 1}; no more frames can be added"
            )
        key = pose_keys(pose, self.config.direction_scale)
        if not np.all(np.isfinite(key)):  # unreachable with bounded poses and settings; kept as a guard
            raise ValueError(f"pose gives a non-finite index key {key.tolist()}")
        query = Intrinsics(int(intrinsics.width), int(intrinsics.height), fov)

        # Store. Nothing here is expected to fail; if something does (MemoryError, an interrupt),
        # the storage step is undone so the memory stays consistent.
        index = self._index
        before = (
            self._resolution, self._frames, self._depth_rows, self._query_intrinsics, self._n, self._next_id,
            self._n_depth_rows, index.n, index.n_live, list(index.trees), index.buffer_start,
        )  # fmt: skip
        frame_id = self._next_id
        try:
            if self._resolution is None:
                self._resolution = (frame.shape[0], frame.shape[1])
                self._frames = np.empty((len(self._ids), *frame.shape), dtype=np.uint8)  # as many rows as the rest
            self._reserve(self._n + 1)
            if depth16 is not None:
                self._reserve_depth_rows(self._n_depth_rows + 1)
            slot = index.append(key)
            assert slot == self._n, "index and storage slots diverged"
            self._frames[slot] = frame
            self._poses[slot] = pose
            self._fov[slot] = fov
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
            self._query_intrinsics = query
        except BaseException:
            self._slot_of.pop(frame_id, None)
            old_n = before[7]
            if old_n < len(index.live):
                index.live[old_n : index.n] = False
            (
                self._resolution, self._frames, self._depth_rows, self._query_intrinsics, self._n, self._next_id,
                self._n_depth_rows, index.n, index.n_live, index.trees, index.buffer_start,
            ) = before  # fmt: skip
            raise
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
        pose = _check_bounded_pose(pose, "query pose")
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
        pose = _check_bounded_pose(pose, "query pose")
        k = _check_count(k, "k")
        if intrinsics is not None and not isinstance(intrinsics, Intrinsics):
            raise TypeError(f"intrinsics must be an Intrinsics or None, got {type(intrinsics).__name__}")
        if intrinsics is not None:
            _check_fov(intrinsics.fov_y, "intrinsics.fov_y")
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
        # Retrieval runs once per generated frame and is a few dozen small array operations, so
        # each one counts: benchmarks/memory.py holds it to 1 ms at a million frames.
        sample = self._sample_points(intrinsics)
        n_points = sample.shape[1]
        centre = pose[:3, 3]
        cand = self._poses[slots]  # (M, 4, 4)
        centres = cand[:, :3, 3]  # (M, 3)
        offset = centres - centre
        dist = np.sqrt(np.einsum("mi,mi->m", offset, offset))  # (M,) metres from the query camera
        with_depth = self._depth_rows is not None and bool(self._has_depth[slots].any())
        points = pose[:3, :3] @ sample + centre[:, None]  # (3, P) world
        if with_depth:
            # The query camera's centre rides along as one more point: the occlusion test needs
            # where each candidate sees it, and it costs one column instead of its own pass.
            points = np.concatenate([points, centre[:, None]], axis=1)  # (3, P + 1)
        rel = points[None, :, :] - centres[:, :, None]  # (M, 3, P[+1]) world, candidate -> point
        local = np.swapaxes(cand[:, :3, :3], 1, 2) @ rel  # (M, 3, P[+1]) R^T (X - c), candidate camera frame
        depth = -local[:, 2]  # (M, P[+1]), the camera looks down -z
        h, w = self._resolution
        tan_y = np.tan(np.radians(self._fov[slots]) / 2.0)[:, None]  # (M, 1)
        in_view = (depth > cfg.near) & (np.abs(local[:, 0]) <= depth * (tan_y * (w / h)))
        in_view &= np.abs(local[:, 1]) <= depth * tan_y  # (M, P[+1]) inside each candidate's frustum
        if with_depth:
            in_view = in_view[:, :n_points] & ~self._occluded(slots, local, depth, in_view, tan_y, dist)
            rel = rel[:, :, :n_points]
        rays = rel / np.sqrt(np.einsum("mip,mip->mp", rel, rel))[:, None, :]  # (M, 3, P) unit viewing rays
        query_rays = points[:, :n_points] - centre[:, None]
        query_rays /= np.sqrt(np.einsum("ip,ip->p", query_rays, query_rays))  # (3, P)
        # A surface the query sees faces it; a uniformly random such orientation also faces a
        # camera whose ray differs by angle a with probability 1 - a / pi (zero from behind).
        cos_q = np.einsum("mip,ip->mp", rays, query_rays)  # (M, P)
        np.minimum(np.maximum(cos_q, -1.0, out=cos_q), 1.0, out=cos_q)
        seen = in_view * (1.0 - np.arccos(cos_q) / np.pi)  # (M, P) expected visibility
        weight = np.exp(-dist / cfg.distance_scale) / n_points  # (M,)
        generated = self._source[slots] == SOURCES.index("generated")
        weight = np.where(generated, weight * cfg.generated_weight, weight)  # observed frames outrank generated ones

        # novelty is min(1, (1 - cos) / (1 - cos(novelty_angle))) for the picked ray closest in
        # angle at each point: 1 where no pick sees the point, 0 along a picked view's own rays.
        inv_cut = 1.0 / (1.0 - math.cos(math.radians(cfg.novelty_angle)))
        novelty = np.ones(seen.shape)  # (M, P)
        unseen = np.empty(n_points)  # (P,) 0 where the pick sees the point, else 2 (> any novelty)
        picked: list[int] = []
        while len(picked) < k:
            # A candidate that sees nothing, or is picked (weight 0), gains 0, which never
            # exceeds min_gain (>= 0).
            gain = np.einsum("mp,mp->m", novelty, seen) * weight  # (M,) weighted fraction of P
            j = int(np.argmax(gain))  # first maximum: candidates are ordered by (distance, id)
            if not gain[j] > cfg.min_gain:
                break
            picked.append(j)
            weight[j] = 0.0
            if len(picked) == k:
                break
            cos = np.einsum("mip,ip->mp", rays, rays[j])  # (M, P) angle to the picked view's rays
            np.multiply(seen[j] <= 0, 2.0, out=unseen)  # only points the pick sees lose novelty
            new = (1.0 - cos) * inv_cut
            new += unseen
            np.minimum(novelty, new, out=novelty)  # novelty <= 1, so no min(1, .) is needed
        return picked

    def _occluded(
        self,
        slots: np.ndarray,
        local: np.ndarray,
        depth: np.ndarray,
        in_view: np.ndarray,
        tan_y: np.ndarray,
        dist: np.ndarray,
    ) -> np.ndarray:
        """(M, P) True where a sampled point does not count for a candidate because of depth.

        ``local``, ``depth`` and ``in_view`` have P + 1 columns: the sampled points, then the
        query camera's centre. ``dist`` is each candidate's distance from the query camera.

        A point hides from a candidate with depth when it lies behind the surface that the
        candidate's depth map shows at the point's pixel. The query camera has no depth, so the
        candidate nearest to it (by camera centre) among those with depth that frame the point
        stands in for it: a point hidden from that view is most likely hidden from the query
        too (behind the wall it faces), and counts for no candidate. A candidate that sees the
        query camera itself behind a surface is on the other side of a wall from it and cannot
        stand in for it.
        """
        cfg = self.config
        h, w = self._resolution
        has = self._has_depth[slots]  # (M,)
        focal = (h / 2.0) / tan_y  # (M, 1) pixels
        z = np.maximum(depth, cfg.near)  # (M, P + 1); out-of-view points are masked below
        col = local[:, 0] / z * focal + w / 2.0
        row = -local[:, 1] / z * focal + h / 2.0
        # Clamped first, so truncation is floor; out-of-view points land on an edge pixel.
        col = np.minimum(np.maximum(col, 0.0, out=col), w - 1, out=col).astype(np.intp)
        row = np.minimum(np.maximum(row, 0.0, out=row), h - 1, out=row).astype(np.intp)
        row *= w
        row += col
        rows = self._depth_of[slots]  # (M,) depth rows; 0 (all inf) for frames without depth
        row += (rows * (h * w))[:, None]  # index into the flattened depth rows
        stored = self._depth_rows.reshape(-1).take(row).astype(np.float64)  # (M, P + 1) metres
        informed = in_view & has[:, None]  # (M, P + 1) candidates whose depth tells about the point
        hidden = informed & (depth > stored * (1.0 + cfg.occlusion_tolerance) + 0.05)  # (M, P + 1)
        separated = hidden[:, -1]  # (M,) the query camera is behind this candidate's surface
        hidden, informed = hidden[:, :-1], informed[:, :-1]
        key = np.where(informed & ~separated[:, None], dist[:, None], np.inf)  # (M, P)
        proxy = np.argmin(key, axis=0)  # (P,) nearest informed candidate per point
        cols = np.arange(key.shape[1])
        behind_for_query = np.isfinite(key[proxy, cols]) & hidden[proxy, cols]  # (P,)
        return hidden | behind_for_query[None, :]

    # ----------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike,
        attachments: dict[str, np.ndarray] | None = None,
        info: dict | None = None,
    ) -> None:
        """Write the memory to a safetensors file (format version 3, with a SHA-256), atomically.

        A world file is a memory with attachments: arrays stored beside the frames (tensors
        ``attach.NAME``, e.g. a recorded world's free-space grid) and an ``info`` JSON object
        (e.g. where the world came from), both covered by the checksum. They default to the
        memory's own :attr:`attachments` and :attr:`info` (those it was loaded with), so saving
        a loaded world keeps them.

        The file is written next to ``path`` under a temporary name (``.NAME.PID.RANDOM.tmp``)
        and moved over ``path`` only when complete and flushed, so a failure never damages an
        existing file. The file gets the usual permissions, ``0o666`` minus the umask. Before
        writing, temp files that killed saves left in the same directory are removed (see
        :func:`remove_stale_temp_files`).

        Raises:
            ValueError: something exists at ``path`` that is not a regular file: a directory,
                a device, a socket or FIFO, or a symbolic link (to anything: links are refused,
                not followed, so a writable path can never be turned against another file).
            OSError: the directory is missing or not writable, the disk is full, ...; any
                existing file at ``path`` is then left as it was.
        """
        path = Path(path)
        check_save_path(path)
        attachments = _check_attachments(self.attachments if attachments is None else attachments)
        info = _check_info(self.info if info is None else info)
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
        if self.config.capacity is not None and len(slots) > self.config.capacity:  # add() never allows this
            raise RuntimeError(f"memory holds {len(slots)} frames over its capacity {self.config.capacity}")
        tensors.update({ATTACHMENT_PREFIX + name: np.ascontiguousarray(a) for name, a in attachments.items()})
        query = self._query_intrinsics.to_dict() if self._query_intrinsics else None
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "next_id": str(self._next_id),
            "resolution": json.dumps(list(self._resolution) if self._resolution else None),
            "query_intrinsics": json.dumps(query),
        }
        if info:
            metadata["info"] = json.dumps(info, sort_keys=True)
        metadata["sha256"] = payload_sha256(metadata, tensors)
        remove_stale_temp_files(path.parent)
        tmp, fd = _create_temp_file(path)
        try:
            with os.fdopen(fd, "wb") as f:
                _write_safetensors(f, tensors, metadata)
                f.flush()
                os.fsync(f.fileno())
            check_save_path(path)  # again, just before the rename: narrows the window for a swap
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpatialMemory:
        """Read a memory written by :meth:`save`.

        The safetensors header is read first (at most :data:`MAX_HEADER_BYTES`) and every
        tensor's declared dtype, shape and byte range is checked against the metadata and the
        file's size before any tensor is read, so nothing larger than the file is allocated.
        Version 3 files must match the SHA-256 in their header; versions 1 and 2 have none and
        load with an :class:`UnverifiedMemoryWarning`. Every value is then checked against the
        bounds that :meth:`add` enforces.

        Raises:
            FileNotFoundError: no file at ``path``.
            MemoryFormatError: the file is corrupt (checksum mismatch), truncated, not a spatial
                memory, of a format version this code does not read, or holds out-of-bounds or
                inconsistent values.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no spatial memory file at {path}")

        def fail(why: str) -> MemoryFormatError:
            return MemoryFormatError(f"{path} is not a readable spatial memory: {why}")

        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            meta, entries, data_start = _read_header(f, size, fail)
            if meta.get("format") != FORMAT_NAME:
                raise fail(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
            version = meta.get("version")
            if version not in READ_VERSIONS:
                raise fail(f"format version {version!r}; this code reads versions {list(READ_VERSIONS)}")
            config, next_id, resolution, query = _parse_metadata(meta, fail)
            expected = dict(_TENSORS)
            if version != "1":
                expected.update(_DEPTH_TENSORS)
            missing = sorted(set(expected) - set(entries))
            if missing:
                raise fail(f"missing tensors {missing}")
            attached = sorted(
                name for name in entries if name.startswith(ATTACHMENT_PREFIX) and version not in UNVERIFIED_VERSIONS
            )
            extra = sorted(set(entries) - set(expected) - set(attached))
            if extra and version not in UNVERIFIED_VERSIONS:
                raise fail(f"unexpected tensors {extra}")
            for name in attached:
                code, shape, _ = entries[name]
                if not _ATTACHMENT_NAME.fullmatch(name[len(ATTACHMENT_PREFIX) :]) or len(shape) > 3:
                    raise fail(f"attachment {name[:100]!r} has a bad name or more than 3 dimensions")
                if code not in {_ST_CODE[np.dtype(t)] for t in ATTACHMENT_DTYPES}:
                    raise fail(f"attachment {name[:100]!r} has dtype {code!r}; attachments are {ATTACHMENT_DTYPES}")
            # Declared shapes against the metadata, before reading anything.
            n = _declared_rows(entries["ids"], fail)
            h, w = resolution if resolution is not None else (0, 0)
            for name, (dtype, trailing) in expected.items():
                code, shape, _ = entries[name]
                if trailing is None:
                    trailing = (h, w) if name == "depth" else (h, w, 3)
                want_rows = shape[0] if (name == "depth" and shape and shape[0] <= n) else n
                want = (want_rows, *trailing)
                if code != _ST_CODE[np.dtype(dtype)] or shape != want:
                    raise fail(f"tensor {name!r} is {code} {shape}, expected {_ST_CODE[np.dtype(dtype)]} {want}")
            tensors = {name: _read_tensor(f, data_start, entries[name], fail) for name in [*expected, *attached]}

        if version not in UNVERIFIED_VERSIONS:  # older versions are warned about below, once checked
            stored = meta.get("sha256")
            if not (isinstance(stored, str) and _SHA_RE.fullmatch(stored)):
                raise fail(f"version {version} needs a sha256 of 64 hex digits in its metadata, got {stored!r:.80}")
            actual = payload_sha256(meta, tensors)
            if actual != stored:
                raise fail(
                    f"checksum mismatch: the header's sha256 is {stored[:16]}... but the contents hash to "
                    f"{actual[:16]}... (the file is corrupt or was edited)"
                )

        has_depth = np.zeros(n, dtype=bool)
        if version != "1":
            flags = tensors["has_depth"]
            if np.any(flags > 1):
                raise fail(f"tensor 'has_depth' must be {n} uint8 flags of 0 or 1")
            has_depth = flags.astype(bool)
            rows = len(tensors["depth"])
            if rows != int(has_depth.sum()):
                raise fail(f"tensor 'depth' has {rows} rows but has_depth flags {int(has_depth.sum())} frames")
        depth = None
        if has_depth.any():
            stored_depth = tensors["depth"]
            if np.isnan(stored_depth).any() or (stored_depth <= 0).any():
                raise fail("depth values must be > 0 metres or inf (NaN or <= 0 found)")
            depth = np.concatenate([np.full((1, h, w), np.inf, dtype=np.float16), stored_depth])
        ids = tensors["ids"]
        if n and (np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] >= next_id):
            raise fail(f"ids must be increasing in [0, next_id={next_id})")
        if n and (resolution is None or query is None):
            raise fail("frames stored but no resolution or query intrinsics recorded")
        if query is not None and (resolution is None or (query.height, query.width) != (h, w)):
            raise fail(f"query intrinsics {query.width}x{query.height} (WxH) do not match the resolution {resolution}")
        if config.capacity is not None and n > config.capacity:
            raise fail(f"{n} frames stored but capacity is {config.capacity}")
        if np.any(tensors["source"] >= len(SOURCES)):
            raise fail("source codes out of range")
        step = tensors["step"]
        if np.any(step < _NO_STEP) or np.any(step > MAX_STEP):
            raise fail(f"steps out of range (-1 for none, else [0, {MAX_STEP}])")
        fov = tensors["fov_y"]
        if not np.all((fov >= MIN_FOV_Y) & (fov <= MAX_FOV_Y)):
            raise fail(f"fov_y values outside [{MIN_FOV_Y:g}, {MAX_FOV_Y:g}] degrees")
        poses = tensors["poses"]
        rot = poses[:, :3, :3]
        finite = bool(np.all(np.isfinite(poses)))
        rigid = (
            finite
            and np.allclose(poses[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
            and np.allclose(rot @ np.swapaxes(rot, 1, 2), np.eye(3), atol=1e-4)
            and np.all(np.linalg.det(rot) > 0)
        )
        if not rigid:
            raise fail("poses are not finite rigid transforms")
        t = poses[:, :3, 3]
        if n and not (np.abs(t).max() <= MAX_TRANSLATION and np.all(np.einsum("ni,ni->n", t, t) <= MAX_TRANSLATION**2)):
            raise fail(f"poses place cameras farther than {MAX_TRANSLATION:g} m from the origin (MAX_TRANSLATION)")

        try:
            info = _check_info(json.loads(meta["info"])) if "info" in meta else {}
        except (ValueError, TypeError) as e:
            raise fail(f"bad info metadata ({e})") from e

        mem = cls(config)
        mem.attachments = {name[len(ATTACHMENT_PREFIX) :]: tensors[name] for name in attached}
        mem.info = info
        mem._resolution = None if resolution is None else (int(h), int(w))
        mem._query_intrinsics = query
        mem._frames, mem._poses, mem._ids = tensors["frames"], poses, ids
        mem._fov, mem._source, mem._step = fov, tensors["source"], step
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
        if version in UNVERIFIED_VERSIONS:
            warnings.warn(
                f"{path} is a version {version} spatial memory file without a checksum: it was loaded unverified "
                f"(save it again to write version {FORMAT_VERSION} with a SHA-256)",
                UnverifiedMemoryWarning,
                stacklevel=2,
            )
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
        if frame.shape[0] > MAX_SIDE or frame.shape[1] > MAX_SIDE:
            raise ValueError(f"frame shape {frame.shape} exceeds the largest side {MAX_SIDE} pixels")
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
            gy = min(max(1, round(gx * h / w)), 4 * gx)  # capped: a tall query must not blow up the work
            if len(self._points_cache) >= 64:
                self._points_cache.clear()
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
    with np.errstate(over="ignore"):  # values beyond float16 become inf, as documented
        out = depth.astype(np.float16)
    out[far] = np.inf
    # Values that round to 0 in float16 (below 6e-8 m) would read back as a surface at the lens.
    out[out == 0] = np.float16(np.finfo(np.float16).tiny)
    return out


def _check_bounded_pose(pose: object, name: str) -> np.ndarray:
    """A finite rigid pose (see ``check_pose``) whose camera is within MAX_TRANSLATION of the origin."""
    pose = check_pose(pose, name)
    dist = math.hypot(*pose[:3, 3].tolist())  # no overflow: hypot scales
    if not dist <= MAX_TRANSLATION:
        raise ValueError(
            f"{name} puts the camera {dist:.3g} m from the origin; poses must be within "
            f"{MAX_TRANSLATION:g} m of it (MAX_TRANSLATION)"
        )
    return pose


def _check_fov(fov: object, name: str) -> float:
    if not (_is_real(fov) and MIN_FOV_Y <= fov <= MAX_FOV_Y):
        raise ValueError(f"{name} must be a number of degrees in [{MIN_FOV_Y:g}, {MAX_FOV_Y:g}], got {fov!r}")
    return float(fov)


def _check_count(value: object, name: str) -> int:
    if not (_is_int(value) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# Files: checksum, header, bounded reads, safe writes
# --------------------------------------------------------------------------------------


_Fail = Callable[[str], MemoryFormatError]
_Entry = tuple[str, tuple[int, ...], tuple[int, int]]  # safetensors dtype code, shape, (begin, end) in the data


#: Attachments are stored as tensors named with this prefix (see :meth:`SpatialMemory.save`).
ATTACHMENT_PREFIX = "attach."
#: The dtypes an attachment may have.
ATTACHMENT_DTYPES = ("uint8", "int64", "float32", "float64")
#: At most this many bytes of attachments, and of ``info`` JSON, per file.
MAX_ATTACHMENT_BYTES = 256 * 2**20
MAX_INFO_BYTES = 64 * 2**10
_ATTACHMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _check_attachments(attachments: object) -> dict[str, np.ndarray]:
    if not isinstance(attachments, dict):
        raise ValueError(f"attachments must be a dict of name -> numpy array, got {type(attachments).__name__}")
    total = 0
    for name, a in attachments.items():
        if not (isinstance(name, str) and _ATTACHMENT_NAME.fullmatch(name)):
            raise ValueError(f"attachment name {name!r} must match {_ATTACHMENT_NAME.pattern}")
        if not isinstance(a, np.ndarray) or a.dtype.name not in ATTACHMENT_DTYPES or a.ndim > 3:
            raise ValueError(
                f"attachment {name!r} must be a numpy array of at most 3 dimensions with dtype in {ATTACHMENT_DTYPES}"
            )
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"attachment {name!r} holds NaN or infinite values")
        total += a.nbytes
    if total > MAX_ATTACHMENT_BYTES:
        raise ValueError(f"attachments hold {total} bytes, more than {MAX_ATTACHMENT_BYTES}")
    return dict(attachments)


def _check_info(info: object) -> dict:
    if not isinstance(info, dict):
        raise ValueError(f"info must be a JSON object (dict), got {type(info).__name__}")
    text = json.dumps(info, sort_keys=True, allow_nan=False)
    if len(text.encode()) > MAX_INFO_BYTES:
        raise ValueError(f"info is {len(text.encode())} bytes of JSON, more than {MAX_INFO_BYTES}")
    return json.loads(text)


def payload_sha256(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """Hex SHA-256 of a memory file's payload: its metadata and tensors, independent of the file layout.

    The hash covers, in this order, each length-prefixed (8-byte little-endian length, then
    the bytes): every metadata key and value except ``sha256``, sorted by key, as UTF-8; then
    for every tensor sorted by name: its name, its safetensors dtype code (``"U8"``, ``"F64"``,
    ...), its shape as JSON (``"[3, 12, 16]"``), and its raw little-endian C-order bytes. The
    stream starts with the line ``rtfm-spatial-memory payload sha256``. Hashing what the file
    means rather than its bytes lets the hash sit in the header it covers, and makes it
    independent of how safetensors lays out and pads the file.
    """
    h = hashlib.sha256(b"rtfm-spatial-memory payload sha256\n")

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for key in sorted(k for k in metadata if k != "sha256"):
        put(key.encode())
        put(metadata[key].encode())
    for name in sorted(tensors):
        a = tensors[name]
        le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        put(name.encode())
        code = _ST_CODE.get(np.dtype(a.dtype.newbyteorder("=")))
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}, which safetensors does not store")
        put(code.encode())
        put(json.dumps([int(d) for d in a.shape]).encode())
        h.update(le.nbytes.to_bytes(8, "little"))
        h.update(le.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _read_header(f: BinaryIO, size: int, fail: _Fail) -> tuple[dict[str, str], dict[str, _Entry], int]:
    """Parse a safetensors header without trusting it: (metadata, tensor entries, data start).

    Entries map a tensor name to (dtype code, shape, (begin, end) byte offsets in the data
    section). Checked: the header length (at most MAX_HEADER_BYTES and within the file), JSON
    of the expected structure, string metadata, known dtypes, shapes whose byte size equals
    their offsets, and offsets that tile the data section exactly (so the tensors together are
    exactly as large as the file's data).
    """
    if size < 8:
        raise fail(f"{size} bytes is too short for a safetensors file")
    n = int.from_bytes(f.read(8), "little")
    if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
        raise fail(f"header length {n} is not in [2, min({MAX_HEADER_BYTES}, file size - 8 = {size - 8})]")
    raw = f.read(n)
    if len(raw) != n:
        raise fail("file is shorter than its header length")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise fail(f"header is not JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise fail("header metadata is not a map of strings")
    data_size = size - 8 - n
    entries = {}
    for name, e in header.items():
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            raise fail(f"tensor {name[:100]!r} has a malformed header entry")
        code, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not (isinstance(code, str) and code in _ST_DTYPES):
            raise fail(f"tensor {name[:100]!r} has an unknown dtype {str(code)[:20]!r}")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d) and d >= 0 for d in shape)):
            raise fail(f"tensor {name[:100]!r} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise fail(f"tensor {name[:100]!r} has malformed data offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise fail(f"tensor {name[:100]!r} lies at bytes [{begin}, {end}) outside the {data_size} data bytes")
        if math.prod(shape) * _ST_DTYPES[code][1] != end - begin:
            raise fail(f"tensor {name[:100]!r} of shape {shape} {code} does not fill its {end - begin} bytes")
        entries[name] = (code, tuple(int(d) for d in shape), (int(begin), int(end)))
    pos = 0
    for _, _, (begin, end) in sorted(entries.values(), key=lambda e: e[2]):
        if begin != pos:
            raise fail("tensor data overlaps or leaves gaps")
        pos = end
    if pos != data_size:
        raise fail(f"tensor data covers {pos} of the file's {data_size} data bytes")
    return meta, entries, 8 + n


def _declared_rows(entry: _Entry, fail: _Fail) -> int:
    code, shape, _ = entry
    if code != "I64" or len(shape) != 1:
        raise fail(f"tensor 'ids' is {code} {list(shape)}, expected I64 (n,)")
    return shape[0]


def _read_tensor(f: BinaryIO, data_start: int, entry: _Entry, fail: _Fail) -> np.ndarray:
    """One tensor read into a fresh writable array; its size was checked against the file."""
    code, shape, (begin, end) = entry
    buf = bytearray(end - begin)
    f.seek(data_start + begin)
    if f.readinto(buf) != len(buf):
        raise fail("file is shorter than its tensors (changed while being read?)")
    # Little-endian dtypes as the file stores them; numpy handles them natively on any machine.
    return np.frombuffer(buf, dtype=np.dtype(_ST_DTYPES[code][0])).reshape(shape)


def _parse_metadata(meta: dict[str, str], fail: _Fail) -> tuple[MemoryConfig, int, list[int] | None, Intrinsics | None]:
    """The config, next_id, resolution and query intrinsics of a memory file, all bounded."""
    try:
        config = MemoryConfig.from_dict(json.loads(meta["config"]))
        text = meta["next_id"]
        if not _NEXT_ID_RE.fullmatch(text) or int(text) >= MAX_ID:
            raise ValueError(f"next_id must be a decimal integer in [0, {MAX_ID}), got {text[:40]!r}")
        next_id = int(text)
        resolution = json.loads(meta["resolution"])
        if resolution is not None and not (
            isinstance(resolution, list)
            and len(resolution) == 2
            and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in resolution)
        ):
            raise ValueError(f"resolution must be null or [height, width] in [1, {MAX_SIDE}], got {resolution!r}")
        query = json.loads(meta["query_intrinsics"])
        if query is not None:
            if not (isinstance(query, dict) and set(query) == {"width", "height", "fov_y"}):
                raise ValueError(f"query_intrinsics must be null or {{width, height, fov_y}}, got {query!r}")
            if not all(_is_int(query[k]) and 1 <= query[k] <= MAX_SIDE for k in ("width", "height")):
                raise ValueError(f"query_intrinsics width and height must be in [1, {MAX_SIDE}], got {query!r}")
            query = Intrinsics(query["width"], query["height"], _check_fov(query["fov_y"], "query_intrinsics.fov_y"))
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise fail(f"bad metadata ({type(e).__name__}: {str(e)[:300]})") from e
    return config, next_id, resolution, query


def check_save_path(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` unless :meth:`SpatialMemory.save` may write there.

    Nothing, or a regular file, may be at ``path``; a directory, a device, a FIFO, a socket or a
    symbolic link (to anything: links are not followed) is refused. The parent directory is not
    checked (a missing or unwritable one fails the save with an ``OSError``).
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        kind = "a symbolic link (links are not followed or replaced; save to the real path)"
    elif stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "not a regular file"
    raise ValueError(f"refusing to save a spatial memory to {path}: it is {kind}; only a regular file is replaced")


# This version's temp names, .NAME.PID.RANDOM.tmp; earlier versions' mkstemp names, .NAME.XXXXXXXX.tmp;
# and the .tmpXXXXXX files that safetensors' save_file (used by earlier versions) writes before renaming.
_TEMP_RE = re.compile(
    r"\.(?P<target>.+)\.(?:(?P<pid>[0-9]{1,10})\.[0-9a-f]{12}|[a-z0-9_]{8})\.tmp|\.tmp[A-Za-z0-9]{6}", re.DOTALL
)
_TEMP_MARK = b'"format":"' + FORMAT_NAME.encode() + b'"'


def _create_temp_file(path: Path) -> tuple[Path, int]:
    """A new empty file ``.NAME.PID.RANDOM.tmp`` next to ``path`` (mode 0o666 minus the umask) and its fd."""
    for _ in range(16):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            # os.open with 0o666 honours the umask (mkstemp would give 0o600), as shards do.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        return tmp, fd
    raise FileExistsError(f"could not create a unique temp file next to {path}")


def _write_safetensors(f: BinaryIO, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` and ``metadata`` to ``f`` in the safetensors format, deterministically.

    Written here rather than by ``safetensors.numpy.save_file``, which writes a temp file of its
    own (mode 0o600, a name this module does not know) and renames it; and rather than
    ``safetensors.numpy.save``, which would hold a second copy of the file in memory. The header
    lists ``format`` first (so a partly written temp file is recognisable), then the other
    metadata and the tensors sorted by name; the tensors' bytes follow in that order.
    """
    meta = {"format": metadata["format"], **{k: metadata[k] for k in sorted(metadata) if k != "format"}}
    header: dict[str, object] = {"__metadata__": meta}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        a = tensors[name]
        code = _ST_CODE[np.dtype(a.dtype.newbyteorder("="))]
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        header[name] = {"dtype": code, "shape": [int(d) for d in a.shape], "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for a in arrays:
        if a.nbytes:
            f.write(a.reshape(-1).view(np.uint8).data)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return True  # cannot tell safely (os.kill would terminate on Windows): rely on age alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_temp_files(directory: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove the temp files that interrupted memory saves left in ``directory``; returns them.

    A file is removed only if all of these hold, so another writer's live temp file is never
    touched:

    - its name is a save's temp name: ``.NAME.PID.RANDOM.tmp`` (this version),
      ``.NAME.XXXXXXXX.tmp`` (the ``mkstemp`` names of earlier versions) or ``.tmpXXXXXX``
      (the temp files of ``safetensors.numpy.save_file``, which earlier versions used);
    - it is a regular file (not a link) that has not been modified for
      :data:`STALE_TEMP_SECONDS` (a live save writes continuously);
    - no process with the PID in its name is alive on this machine, or it is older than
      :data:`STALE_TEMP_MAX_SECONDS` (a PID may have been reused, or belong to another
      machine sharing the directory, hence the age rule as well);
    - its first 64 KiB hold a spatial memory header, or it is empty (a save killed before
      writing; not for ``.tmpXXXXXX`` names, which other programs use too).

    Errors (a file vanishing, no permission) are ignored: cleaning up is best effort.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        with os.scandir(directory) as it:
            candidates = [(e.name, e.path) for e in it if _TEMP_RE.fullmatch(e.name)]
    except OSError:
        return removed
    for name, entry_path in candidates:
        try:
            st = os.lstat(entry_path)
            if not stat.S_ISREG(st.st_mode):
                continue
            age = now - st.st_mtime
            if age < STALE_TEMP_SECONDS:
                continue
            pid = _TEMP_RE.fullmatch(name)["pid"]
            if pid is not None and age < STALE_TEMP_MAX_SECONDS and _pid_alive(int(pid)):
                continue
            if st.st_size or name.startswith(".tmp"):  # an empty .tmpXXXXXX may be anyone's
                fd = os.open(entry_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                with os.fdopen(fd, "rb") as f:
                    head = f.read(1 << 16)
                if _TEMP_MARK not in head:
                    continue
            os.unlink(entry_path)
            removed.append(Path(entry_path))
        except OSError:
            continue
    return removed
