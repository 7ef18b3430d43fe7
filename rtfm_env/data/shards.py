"""The on-disk format of recorded posed frames: shards and the manifest (see docs/DATASET.md).

A recording directory holds shards and one ``manifest.json``::

    <root>/manifest.json
    <root>/MiniWorld-Maze-v0.00000.safetensors
    <root>/MiniWorld-Maze-v0.00001.safetensors
    ...

A shard is a safetensors file holding whole episodes of one env id. Its tensors (N frames in
all, rows grouped by episode, steps in order):

===========  ===============  =======  ====================================================
name         shape            dtype    meaning
===========  ===============  =======  ====================================================
frames       (N, H, W, 3)     uint8    RGB frames
poses        (N, 4, 4)        float64  camera-to-world poses (OpenGL camera axes, y-up world)
episode      (N,)             int32    index of the row's episode within its env's recording
step         (N,)             int32    step of the row within its episode (0, 1, ...)
states       (N, 5)           float64  robot states (x, z, yaw, cam_height, pitch)
actions      (N,)             int32    action that led to the row (-1 for an episode's start)
collided     (N,)             uint8    1 where the scene blocked that action
depth        (N, H, W)        float16  depth in metres along the optical axis, inf where
                                       nothing was hit (version 2, only when recorded)
===========  ===============  =======  ====================================================

Depth is stored as float16 to keep shards small: finite values up to 65504 m with a relative
precision of 2^-11 (~5 mm at 10 m); inf stays inf. Readers return it as float32 metres, the
depth convention at every interface.

Versions: 2 (this code's writer) adds ``depth`` and a boolean ``depth`` flag in the metadata;
a shard written without depth has no such tensor and ``"depth": false``. Version 1 shards (no
depth) still read: their header says ``has_depth=False``.

The safetensors metadata holds one key, ``rtfm``, whose value is a JSON object: the format
name and version, env id, split, shard index, intrinsics, and per-episode seeds and trajectory
kinds. Shards and the manifest are written atomically (a temp file in the same directory, then
``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_save

from rtfm_env.geometry import Intrinsics

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "DEPTH_MAX",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SPLITS",
    "STATE_FIELDS",
    "ShardFormatError",
    "NoDepthError",
    "EpisodeInfo",
    "Episode",
    "ShardHeader",
    "ShardEntry",
    "Manifest",
    "shard_name",
    "write_shard",
    "read_shard_header",
    "read_shard",
    "ShardReader",
    "sha256_file",
    "atomic_write_bytes",
    "remove_stale_temp_files",
    "write_manifest",
    "read_manifest",
    "manifest_hash",
    "shard_list_hash",
]

FORMAT_NAME = "rtfm-posed-frames"
#: The version this code writes (shards and manifest).
FORMAT_VERSION = 2
#: Versions this code reads: 1 has no depth; 2 adds the optional ``depth`` tensor.
READABLE_VERSIONS = (1, 2)
MANIFEST_FORMAT = "rtfm-posed-frames-manifest"
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
METADATA_KEY = "rtfm"
SPLITS = ("train", "heldout")
STATE_FIELDS = ("x", "z", "yaw", "cam_height", "pitch")

#: Tensor name -> (safetensors dtype, numpy dtype, shape after the frame axis; None = H, W).
TENSORS: dict[str, tuple[str, np.dtype, tuple[int, ...] | None]] = {
    "frames": ("U8", np.dtype(np.uint8), None),
    "poses": ("F64", np.dtype(np.float64), (4, 4)),
    "episode": ("I32", np.dtype(np.int32), ()),
    "step": ("I32", np.dtype(np.int32), ()),
    "states": ("F64", np.dtype(np.float64), (len(STATE_FIELDS),)),
    "actions": ("I32", np.dtype(np.int32), ()),
    "collided": ("U8", np.dtype(np.uint8), ()),
}
#: The optional depth tensor of version 2 shards (shape after the frame axis: H, W).
DEPTH_TENSOR = ("F16", np.dtype(np.float16))
#: The largest finite depth a shard can hold (float16's largest finite value), metres.
DEPTH_MAX = float(np.finfo(np.float16).max)

# A safetensors header is a little-endian u64 length then that much JSON; real headers of
# shards are a few kB, so anything past this is a foreign or corrupt file, not a shard.
_MAX_HEADER_BYTES = 64 << 20


class ShardFormatError(ValueError):
    """A shard or manifest is corrupt, truncated, foreign or inconsistent; the message names the file."""


class NoDepthError(ShardFormatError):
    """Depth was asked of a shard recorded without it (version 1, or recorded with ``--no-depth``)."""


def _no_depth_message(path: Path, version: int) -> str:
    why = f"format version {version} has no depth" if version < 2 else "it was recorded with --no-depth"
    return (f"{path}: the shard holds no depth ({why}); re-record it with 'rtfm-env record' "
            f"(format version {FORMAT_VERSION}, depth on by default) into a new --out directory")


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def _json_int(value: object) -> int:
    """An integer field of a shard's JSON: an int, not a bool, a float or inf (which int() would coerce or overflow)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class EpisodeInfo:
    """Metadata of one recorded episode."""

    episode: int  # index of the episode within its env's recording
    seed: int  # layout seed passed to Scene.reset
    trajectory_seed: int  # seed of the trajectory generator
    kind: str  # trajectory kind (rtfm_env.data.trajectories.TRAJECTORY_KINDS)
    n_frames: int  # frames in the episode

    @classmethod
    def from_dict(cls, d: dict) -> EpisodeInfo:
        """Parse the JSON form; raises KeyError/TypeError/ValueError on bad fields."""
        return cls(
            _json_int(d["episode"]), _json_int(d["seed"]), _json_int(d["trajectory_seed"]), str(d["kind"]),
            _json_int(d["n_frames"]),
        )


@dataclass
class Episode:
    """One episode in memory, as the recorder produces it and :func:`write_shard` stores it."""

    info: EpisodeInfo
    frames: np.ndarray  # (T, H, W, 3) uint8
    poses: np.ndarray  # (T, 4, 4) float64, camera-to-world
    states: np.ndarray  # (T, 5) float64, STATE_FIELDS
    actions: np.ndarray  # (T,) int, -1 for the start frame
    collided: np.ndarray  # (T,) bool
    depth: np.ndarray | None = None  # (T, H, W) float metres along the optical axis, inf = no hit; None = not recorded


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's header says, checked against its tensors' shapes and its file size."""

    path: Path
    env_id: str
    split: str
    shard_index: int
    intrinsics: Intrinsics
    episodes: tuple[EpisodeInfo, ...]
    n_frames: int
    size: int  # file size, bytes
    meta: dict  # the full JSON metadata
    version: int = FORMAT_VERSION  # the shard's format version (READABLE_VERSIONS)
    has_depth: bool = False  # True when the shard holds the depth tensor

    def episode_rows(self) -> np.ndarray:
        """Row offsets (n_episodes + 1,): episode i occupies rows [o[i], o[i+1])."""
        return np.concatenate([[0], np.cumsum([e.n_frames for e in self.episodes])]).astype(np.int64)


@dataclass(frozen=True)
class ShardEntry:
    """A finished shard as the manifest lists it."""

    file: str  # file name relative to the recording root
    env_id: str
    split: str
    shard_index: int
    episodes: int  # number of episodes
    frames: int  # number of frames
    bytes: int  # file size
    sha256: str  # hex digest of the whole file

    @classmethod
    def from_dict(cls, d: dict) -> ShardEntry:
        """Parse the JSON form; raises KeyError/TypeError/ValueError on bad fields."""
        return cls(
            str(d["file"]), str(d["env_id"]), str(d["split"]), _json_int(d["shard_index"]), _json_int(d["episodes"]),
            _json_int(d["frames"]), _json_int(d["bytes"]), str(d["sha256"]),
        )


@dataclass
class Manifest:
    """The index of a recording: its config and every finished shard."""

    split: str
    config: dict  # the recording config (rtfm_env.data.recorder.RecordConfig.manifest_config())
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False  # True once every planned shard is listed
    format: str = MANIFEST_FORMAT
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        """The JSON form, shards sorted by (env id, shard index) so equal recordings give equal files."""
        return {
            "format": self.format,
            "version": self.version,
            "split": self.split,
            "complete": self.complete,
            "config": self.config,
            "shards": [asdict(e) for e in sorted(self.shards, key=lambda e: (e.env_id, e.shard_index))],
        }

    def shard_hash(self) -> str:
        """Stable sha256 of the shard list (see :func:`shard_list_hash`)."""
        return shard_list_hash(self.shards)


def shard_name(env_id: str, shard_index: int) -> str:
    """File name of a shard: ``<env id>.<index, 5 digits>.safetensors``."""
    if shard_index < 0:
        raise ValueError(f"shard_index must be >= 0, got {shard_index}")
    if not env_id or "/" in env_id or os.sep in env_id or env_id.startswith("."):
        raise ValueError(f"env id {env_id!r} cannot name a shard file")
    return f"{env_id}.{shard_index:05d}{SHARD_SUFFIX}"


# --------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    The temp file is named ``.tmp-*`` so :func:`remove_stale_temp_files` can clean up after a
    crash; on any error it is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
    # os.open with 0o666 honours the umask, so shards get the usual permissions (mkstemp's are 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """Delete temp files left in ``root`` by an interrupted write; returns what was removed."""
    removed = []
    for p in sorted(Path(root).glob(TEMP_PREFIX + "*")):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------


def write_shard(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    *,
    env_id: str,
    split: str,
    shard_index: int,
    intrinsics: Intrinsics,
) -> ShardEntry:
    """Write whole episodes of one env id as a shard, atomically.

    Every episode carries depth or none does: with depth, the shard stores it as float16
    metres (see the module docstring); without, it is a version 2 shard with no depth.

    Args:
        path: the shard file to create (replaced if it exists); its directory must exist.
        episodes: the episodes, in order; frames (and depth) must match ``intrinsics`` in size.
        env_id: the env id every episode was recorded in.
        split: ``"train"`` or ``"heldout"``.
        shard_index: the shard's index within its env's recording.
        intrinsics: the camera intrinsics of every frame.

    Returns:
        The manifest entry of the written shard (size and sha256 of the bytes written).

    Raises:
        ValueError: an unknown split, no episodes, an array of the wrong shape or dtype,
            non-finite poses or states, depth on some episodes only, or depth that is NaN,
            negative or finite beyond ``DEPTH_MAX`` (the message names the episode).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    if not episodes:
        raise ValueError("a shard needs at least one episode")
    h, w = intrinsics.height, intrinsics.width
    with_depth = [ep.depth is not None for ep in episodes]
    if any(with_depth) and not all(with_depth):
        missing = [ep.info.episode for ep, d in zip(episodes, with_depth, strict=True) if not d]
        raise ValueError(f"episodes {missing} have no depth while others do; a shard holds depth for all or none")
    has_depth = all(with_depth)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in TENSORS}
    depth_parts: list[np.ndarray] = []
    for i, ep in enumerate(episodes):
        t = ep.info.n_frames
        expected = {
            "frames": (t, h, w, 3),
            "poses": (t, 4, 4),
            "states": (t, len(STATE_FIELDS)),
            "actions": (t,),
            "collided": (t,),
        }
        for name, shape in expected.items():
            arr = np.asarray(getattr(ep, name))
            if arr.shape != shape:
                raise ValueError(f"episode {i} ({ep.info.episode}): {name} has shape {arr.shape}, expected {shape}")
        if np.asarray(ep.frames).dtype != np.uint8:
            raise ValueError(f"episode {i}: frames must be uint8, got {np.asarray(ep.frames).dtype}")
        for name in ("poses", "states"):
            if not np.all(np.isfinite(getattr(ep, name))):
                raise ValueError(f"episode {i} ({ep.info.episode}): {name} contain NaN or infinite values")
        columns["frames"].append(np.asarray(ep.frames))
        columns["poses"].append(np.asarray(ep.poses, dtype=np.float64))
        columns["states"].append(np.asarray(ep.states, dtype=np.float64))
        columns["actions"].append(np.asarray(ep.actions, dtype=np.int32))
        columns["collided"].append(np.asarray(ep.collided, dtype=bool).astype(np.uint8))
        columns["episode"].append(np.full(t, ep.info.episode, dtype=np.int32))
        columns["step"].append(np.arange(t, dtype=np.int32))
        if has_depth:
            depth_parts.append(_depth_to_float16(ep.depth, (t, h, w), f"episode {i} ({ep.info.episode})"))
    tensors = {name: np.ascontiguousarray(np.concatenate(parts)) for name, parts in columns.items()}
    if has_depth:
        tensors["depth"] = np.ascontiguousarray(np.concatenate(depth_parts))
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "depth": has_depth,
        "env_id": env_id,
        "split": split,
        "shard_index": int(shard_index),
        "intrinsics": intrinsics.to_dict(),
        "state_fields": list(STATE_FIELDS),
        "episodes": [asdict(ep.info) for ep in episodes],
    }
    data = safetensors_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    path = Path(path)
    atomic_write_bytes(path, data)
    return ShardEntry(
        file=path.name,
        env_id=env_id,
        split=split,
        shard_index=int(shard_index),
        episodes=len(episodes),
        frames=int(tensors["step"].shape[0]),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _depth_to_float16(depth: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Check depth in metres (shape, dtype, range) and convert it to float16 for storage.

    Raises:
        ValueError: naming ``what`` and the problem.
    """
    arr = np.asarray(depth)
    if arr.shape != shape:
        raise ValueError(f"{what}: depth has shape {arr.shape}, expected {shape} (T, H, W)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: depth must be floating-point metres, got {arr.dtype}")
    if np.isnan(arr).any():
        raise ValueError(f"{what}: depth contains NaN; use inf where nothing was hit")
    if (arr < 0).any():  # -inf included
        raise ValueError(f"{what}: depth contains negative values (min {arr.min()}); depth is metres along the "
                         "optical axis, >= 0")
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.max() > DEPTH_MAX:
        # float16 would turn it into inf, i.e. "nothing hit": refuse rather than change its meaning.
        raise ValueError(f"{what}: depth {finite.max()} m is beyond the {DEPTH_MAX:g} m a shard stores (float16); "
                         "is it in metres? Use inf where nothing was hit")
    return arr.astype(np.float16)


def read_shard_header(path: str | os.PathLike) -> ShardHeader:
    """Read and check a shard's header without reading its tensors.

    Checks that the file is a safetensors file of this format and of a readable version
    (``READABLE_VERSIONS``), that every tensor is present with the right dtype and a shape
    consistent with the others and with the intrinsics (``depth`` exactly when the metadata
    says so), that the episodes' frame counts add up, and that the file is as long as its
    header says (a truncated shard fails here).

    Raises:
        ShardFormatError: naming the file and the problem.
    """
    path = Path(path)

    def bad(msg: str) -> ShardFormatError:
        return ShardFormatError(f"{path}: {msg}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"not a safetensors shard ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", prefix)
            if n > min(_MAX_HEADER_BYTES, size - 8):
                raise bad(f"not a safetensors shard or truncated (header length {n}, file {size} bytes)")
            raw = f.read(n)
    except FileNotFoundError:
        raise bad("shard file is missing") from None
    except OSError as e:
        raise bad(f"cannot read shard: {e}") from e
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"not a safetensors shard (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise bad("not a safetensors shard (header is not a JSON object)")
    meta_raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if meta_raw is None:
        raise bad(f"foreign safetensors file: no {METADATA_KEY!r} metadata, expected a {FORMAT_NAME} shard")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as e:
        raise bad(f"shard metadata is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise bad(f"foreign shard: format {fmt!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise bad(f"unsupported shard format version {version!r}; this code reads versions "
                  f"{', '.join(map(str, READABLE_VERSIONS))}")
    has_depth = meta.get("depth", False) if version >= 2 else False
    if not isinstance(has_depth, bool):
        raise bad(f"shard metadata 'depth' must be true or false, got {has_depth!r}")
    try:
        intr = Intrinsics.from_dict(meta["intrinsics"])
        episodes = tuple(EpisodeInfo.from_dict(e) for e in meta["episodes"])
        env_id, split, shard_index = str(meta["env_id"]), str(meta["split"]), _json_int(meta["shard_index"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"shard metadata is incomplete or malformed ({type(e).__name__}: {e})") from None
    if split not in SPLITS:
        raise bad(f"unknown split {split!r} in shard metadata; valid splits: {list(SPLITS)}")
    if not episodes or any(e.n_frames < 1 for e in episodes):
        raise bad("shard metadata lists no episodes or an episode with no frames")
    n_frames = sum(e.n_frames for e in episodes)
    expected = {name: (st_dtype, (n_frames, *((intr.height, intr.width, 3) if tail is None else tail)))
                for name, (st_dtype, _, tail) in TENSORS.items()}
    if has_depth:
        expected["depth"] = (DEPTH_TENSOR[0], (n_frames, intr.height, intr.width))
    elif "depth" in header:
        raise bad(f"unexpected tensor 'depth' in a version {version} shard whose metadata says it holds no depth")
    end = 0
    for name, (st_dtype, shape) in expected.items():
        info = header.get(name)
        if not isinstance(info, dict):
            raise bad(f"missing tensor {name!r}")
        if info.get("dtype") != st_dtype or tuple(info.get("shape", ())) != shape:
            raise bad(f"tensor {name!r} is {info.get('dtype')} {info.get('shape')}, expected {st_dtype} {list(shape)}")
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise bad(f"tensor {name!r} has no valid data_offsets") from None
    expected_size = 8 + n + end
    if size != expected_size:
        what = "truncated" if size < expected_size else "has trailing bytes"
        raise bad(f"{what}: header promises {expected_size} bytes, file has {size}")
    return ShardHeader(path, env_id, split, shard_index, intr, episodes, n_frames, size, meta, version, has_depth)


def _check_rows(header: ShardHeader, episode: np.ndarray, step: np.ndarray) -> None:
    """Rows must be grouped by episode in the header's order with steps 0..n-1."""
    want_ep = np.repeat([e.episode for e in header.episodes], [e.n_frames for e in header.episodes])
    want_step = np.concatenate([np.arange(e.n_frames) for e in header.episodes])
    if not np.array_equal(episode, want_ep) or not np.array_equal(step, want_step):
        raise ShardFormatError(f"{header.path}: episode/step rows do not match the episodes in its metadata")


def read_shard(path: str | os.PathLike) -> tuple[ShardHeader, dict[str, np.ndarray]]:
    """Read a whole shard: its checked header and every tensor (see the module docstring).

    ``depth``, when the shard holds it (``header.has_depth``), is returned as (N, H, W)
    float32 metres (stored as float16); other tensors keep their stored dtype.

    Raises:
        ShardFormatError: on a corrupt, truncated or foreign file, or rows inconsistent with
            the header.
    """
    header = read_shard_header(path)
    names = [*TENSORS, "depth"] if header.has_depth else list(TENSORS)
    try:
        with safe_open(str(header.path), framework="numpy") as f:
            tensors = {name: f.get_tensor(name) for name in names}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ShardFormatError(f"{header.path}: cannot read tensors ({e})") from e
    if header.has_depth:
        tensors["depth"] = tensors["depth"].astype(np.float32)
    _check_rows(header, tensors["episode"], tensors["step"])
    if not np.all(np.isfinite(tensors["poses"])):
        raise ShardFormatError(f"{header.path}: poses contain NaN or infinite values")
    return header, tensors


class ShardReader:
    """Random access to one shard's frames without reading the whole file.

    The small per-row tensors (poses, episode, step, states, actions, collided) are read once;
    frames and depth are read row by row from the memory-mapped file on demand.
    """

    def __init__(self, path: str | os.PathLike, header: ShardHeader | None = None) -> None:
        """Open ``path`` (its header is read and checked unless given)."""
        self.header = header or read_shard_header(path)
        try:
            self._file = safe_open(str(self.header.path), framework="numpy")
            self._frames = self._file.get_slice("frames")
            self._depth = self._file.get_slice("depth") if self.header.has_depth else None
            small = {name: self._file.get_tensor(name) for name in TENSORS if name != "frames"}
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise ShardFormatError(f"{self.header.path}: cannot read tensors ({e})") from e
        _check_rows(self.header, small["episode"], small["step"])
        if not np.all(np.isfinite(small["poses"])):
            raise ShardFormatError(f"{self.header.path}: poses contain NaN or infinite values")
        self.poses: np.ndarray = small["poses"]
        self.episode: np.ndarray = small["episode"]
        self.step: np.ndarray = small["step"]
        self.states: np.ndarray = small["states"]
        self.actions: np.ndarray = small["actions"]
        self.collided: np.ndarray = small["collided"].astype(bool)

    def __len__(self) -> int:
        """Number of frames (rows) in the shard."""
        return self.header.n_frames

    @property
    def has_depth(self) -> bool:
        """True when the shard holds depth (see :meth:`depth`)."""
        return self.header.has_depth

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.header.n_frames:
            raise IndexError(f"row {row} out of range for {self.header.path} ({self.header.n_frames} frames)")

    def frame(self, row: int) -> np.ndarray:
        """Frame ``row`` as (H, W, 3) uint8."""
        self._check_row(row)
        return np.asarray(self._frames[row])

    def depth(self, row: int) -> np.ndarray:
        """Depth of frame ``row`` as (H, W) float32 metres along the optical axis, inf where nothing was hit.

        Raises:
            NoDepthError: the shard holds no depth (the message names it and says to re-record).
        """
        if self._depth is None:
            raise NoDepthError(_no_depth_message(self.header.path, self.header.version))
        self._check_row(row)
        return np.asarray(self._depth[row], dtype=np.float32)

    def depths(self, rows: Sequence[int]) -> np.ndarray:
        """Depth at ``rows`` as (len(rows), H, W) float32 metres (see :meth:`depth`)."""
        h, w = self.header.intrinsics.height, self.header.intrinsics.width
        out = np.empty((len(rows), h, w), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i] = self.depth(int(r))
        return out

    def frames(self, rows: Sequence[int]) -> np.ndarray:
        """Frames at ``rows`` as (len(rows), H, W, 3) uint8."""
        h, w = self.header.intrinsics.height, self.header.intrinsics.width
        out = np.empty((len(rows), h, w, 3), dtype=np.uint8)
        for i, r in enumerate(rows):
            out[i] = self.frame(int(r))
        return out


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``<root>/manifest.json`` atomically; returns its path."""
    if manifest.split not in SPLITS:
        raise ValueError(f"unknown split {manifest.split!r}; valid splits: {list(SPLITS)}")
    path = Path(root) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Read and check ``<root>/manifest.json``.

    Raises:
        FileNotFoundError: when there is no manifest.
        ShardFormatError: when it is not valid JSON, is foreign, has an unsupported version or
            malformed entries, or lists shards of another split.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {root} a recording made by 'rtfm-env record'?")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardFormatError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else None
        raise ShardFormatError(f"{path}: foreign manifest: format {fmt!r}, expected {MANIFEST_FORMAT!r}")
    version = d.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ShardFormatError(
            f"{path}: unsupported manifest version {version!r}; this code reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        split = str(d["split"])
        config = d["config"]
        shards = [ShardEntry.from_dict(e) for e in d["shards"]]
        complete = bool(d["complete"])
    except (KeyError, TypeError, ValueError) as e:
        raise ShardFormatError(f"{path}: manifest is incomplete or malformed ({type(e).__name__}: {e})") from None
    if split not in SPLITS:
        raise ShardFormatError(f"{path}: unknown split {split!r}; valid splits: {list(SPLITS)}")
    if not isinstance(config, dict):
        raise ShardFormatError(f"{path}: manifest config must be a JSON object")
    for e in shards:
        if e.split != split:
            raise ShardFormatError(f"{path}: shard {e.file} is listed as split {e.split!r} in a {split!r} manifest")
        if Path(e.file).name != e.file or not e.file.endswith(SHARD_SUFFIX):
            raise ShardFormatError(f"{path}: shard entry {e.file!r} is not a shard file name in the recording root")
    if len({e.file for e in shards}) != len(shards):
        raise ShardFormatError(f"{path}: manifest lists a shard file twice")
    return Manifest(split=split, config=config, shards=shards, complete=complete, version=int(version))


def shard_list_hash(shards: Sequence[ShardEntry]) -> str:
    """Stable sha256 of a shard list: canonical JSON of the entries sorted by (env id, index)."""
    entries = [asdict(e) for e in sorted(shards, key=lambda e: (e.env_id, e.shard_index))]
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_hash(root: str | os.PathLike) -> str:
    """Stable hash of the recording at ``root``: sha256 of its manifest's shard list.

    Two recordings with the same shards (names, env ids, counts, sizes and sha256s) have the
    same hash whatever order they were written in; checkpoints record it to name their data.
    """
    return shard_list_hash(read_manifest(root).shards)
