"""``rtfm-env world build``: a world file from a robot's recording (rosbag2), a nerfstudio capture or MiniWorld.

A world file is a :class:`~rtfm_env.memory.SpatialMemory` (the recording's posed RGB-D frames,
observed, ``step`` = frame index) saved with two attachments and an ``info`` object (the full
format is in ``docs/WORLDS.md``):

* ``attachments["free_space"]``: uint8 (rows, cols), 1 where the robot's centre may stand;
* ``attachments["known_free"]``: uint8 (rows, cols), 1 on cells the recorded camera path crossed;
* ``info``: ``kind`` ``"rtfm-world"``, ``world_version``, ``source``, ``frames``, ``time_span``,
  ``bounds`` of the camera path, ``cam_height``, ``free_space`` (grid origin, cell, method, height
  band, robot radius) and ``dropped_images``.

Sources::

    rtfm-env world build --from bag runs/lab_bag --out lab.world
    rtfm-env world build --from nerfstudio captures/lab --up auto --cam-height 1.2 --out lab.world
    rtfm-env world build --from scene YMaze --seed 0 --kind walk --out ymaze.world

Frames are cropped to the largest square field of view centred on the principal point (equal
angular extent in x and y, so ``fx != fy`` is handled by resampling) and resized to
``--res`` x ``--res`` (colour: bilinear with antialiasing; depth: nearest, never averaged across
edges); the stored vertical field of view is that of the square. Free space comes from the
full-resolution depth (:mod:`rtfm_env.free_space`), or from the path alone without depth.

Frames and floors. The world frame is y up with the floor at y = 0 (DESIGN.md). Bag poses are
the camera's optical frame in a fixed z-up frame (REP-103/105, e.g. ``odom``) whose floor is at
z = ``--floor`` (default 0), converted with :func:`rtfm_env.geometry.ros_to_world` and nothing
else, so metric scale and geometry are kept. Nerfstudio worlds have no agreed up or floor:
``--up`` picks the up axis (``auto``: the normal of the plane the camera path lies in, the way
a robot drives), ``--floor`` its floor height or ``--cam-height`` the camera's height above it.

Bad input raises :class:`WorldBuildError` naming the problem (the command exits 2), and the
output is written atomically: an existing ``--out`` is replaced only by a complete new world,
and only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rtfm_env.free_space import FreeSpaceError, FreeSpaceGrid, free_space_grid, path_corridor_grid
from rtfm_env.geometry import OPENGL_TO_OPTICAL, Intrinsics, ros_to_world
from rtfm_env.memory import MAX_SIDE, MAX_TRANSLATION, SpatialMemory

__all__ = [
    "WORLD_KIND",
    "WORLD_VERSION",
    "SOURCES",
    "COLOUR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "WorldBuildError",
    "BuildConfig",
    "Capture",
    "build_world",
    "read_bag",
    "read_nerfstudio",
    "read_scene",
    "square_crop",
    "interpolate_poses",
    "add_arguments",
    "run",
]

WORLD_KIND = "rtfm-world"
WORLD_VERSION = 1
#: What ``--from`` accepts.
SOURCES = ("bag", "nerfstudio", "scene")
COLOUR_ENCODINGS = ("rgb8", "bgr8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")
#: Depth maps used for free space are decimated (nearest) to at most this many pixels wide.
MAP_DEPTH_WIDTH = 160
#: A transform_matrix's rotation block must be orthonormal within this (max abs of R R^T - I).
RIGID_TOLERANCE = 1e-3
#: Defaults of the rtfm-camera node (camera_namespace "camera").
DEFAULT_TOPICS = {
    "image": "/camera/image_raw",
    "info": "/camera/camera_info",
    "depth": "/camera/depth/image_raw",
    "pose": "/camera/pose",
}


class WorldBuildError(ValueError):
    """The input cannot make a world: the message names the problem (a file, a topic, a frame)."""


@dataclass
class BuildConfig:
    """Options of ``rtfm-env world build`` (the command line is generated from these fields)."""

    res: int = 64  # pixels: frames are stored res x res
    cell: float = 0.1  # metres per free-space grid cell
    robot_radius: float | None = None  # metres obstacles are inflated by (None: 0.4, or the scene's radius)
    band: tuple[float, float] | None = None  # metres above the floor that are obstacles (None: 0.1 to cam height)
    max_range: float = 10.0  # metres: depth beyond this is ignored for free space
    corridor_margin: float = 0.3  # metres beyond the robot radius of the path corridor (no depth)
    # bag
    image_topic: str = DEFAULT_TOPICS["image"]
    info_topic: str = DEFAULT_TOPICS["info"]
    depth_topic: str | None = None  # None: DEFAULT_TOPICS["depth"] where the bag has it
    no_depth: bool = False  # ignore depth even where it is recorded
    pose_topic: str = DEFAULT_TOPICS["pose"]
    tf: bool = False  # poses from /tf and /tf_static instead of the pose topic
    camera_frame: str | None = None  # with --tf: the camera's optical frame (None: the images' frame_id)
    fixed_frame: str | None = None  # with --tf: the fixed frame (None: the root of the camera's tree)
    max_pose_gap: float = 0.05  # seconds: images farther than this from every pose are dropped
    max_depth_gap: float = 0.01  # seconds: depth images are matched to colour within this
    # bag and nerfstudio
    floor: float = 0.0  # height of the floor along the source's up axis (bag: z of the fixed frame)
    # nerfstudio
    up: str = "auto"  # nerfstudio up axis: auto, x, y, z, -x, -y or -z
    convention: str = "opengl"  # transform_matrix camera axes: opengl (nerfstudio's) or opencv
    scale: float = 1.0  # metres per unit of the nerfstudio world
    cam_height: float | None = None  # nerfstudio: the camera's height above the floor (overrides floor)
    # scene
    seed: int = 0  # MiniWorld layout seed
    kind: str = "walk"  # MiniWorld recording: walk or scan
    fov_y: float = 60.0  # degrees: MiniWorld's vertical field of view


@dataclass
class Capture:
    """Posed frames read from a source, already cropped and resized (``res`` x ``res``)."""

    frames: np.ndarray  # (N, res, res, 3) uint8 RGB
    depths: np.ndarray | None  # (N, res, res) float32 metres, inf where no return; None without depth
    has_depth: np.ndarray  # (N,) bool: the frame has depth
    poses: np.ndarray  # (N, 4, 4) float64 camera-to-world, world y up, floor at y = 0
    fov_y: float  # degrees, of the stored square frames
    map_depths: list[np.ndarray]  # full-view depth maps (decimated) of the frames with depth, for free space
    map_k: np.ndarray  # (3, 3) camera matrix of map_depths
    stamps: np.ndarray | None  # (N,) seconds, or None
    source: dict  # info["source"]
    dropped: dict = field(default_factory=dict)  # reason -> images dropped
    robot_radius: float | None = None  # the source's own robot radius (MiniWorld), if any


# --------------------------------------------------------------------------------------
# Frames: square crop and resize
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SquareCrop:
    """The largest square field of view centred on the principal point, resampled to ``res``."""

    width: int  # source image, pixels
    height: int
    fx: float  # source focal lengths and principal point, pixels
    fy: float
    cx: float
    cy: float
    res: int  # output side, pixels

    @property
    def tan_half(self) -> float:
        """Tangent of half the square's field of view."""
        return min(
            self.cx / self.fx, (self.width - self.cx) / self.fx, self.cy / self.fy, (self.height - self.cy) / self.fy
        )

    @property
    def fov_y(self) -> float:
        """Vertical (and horizontal) field of view of the output, degrees."""
        return math.degrees(2.0 * math.atan(self.tan_half))

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the crop in source pixel coordinates (pixel edges, floats)."""
        t = self.tan_half
        return (self.cx - t * self.fx, self.cy - t * self.fy, self.cx + t * self.fx, self.cy + t * self.fy)

    def colour(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (res, res, 3) uint8, bilinear with antialiasing (PIL)."""
        from PIL import Image

        out = Image.fromarray(np.ascontiguousarray(image)).resize(
            (self.res, self.res), Image.Resampling.BILINEAR, box=self.box
        )
        return np.asarray(out, dtype=np.uint8)

    def depth(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) float32 metres -> (res, res), nearest source pixel (never mixes two surfaces)."""
        x0, y0, x1, y1 = self.box
        centres = (np.arange(self.res) + 0.5) / self.res  # (res,)
        u = np.clip(np.floor(x0 + centres * (x1 - x0)).astype(np.int64), 0, self.width - 1)
        v = np.clip(np.floor(y0 + centres * (y1 - y0)).astype(np.int64), 0, self.height - 1)
        return np.ascontiguousarray(depth[v[:, None], u[None, :]], dtype=np.float32)

    def map_depth(self, depth: np.ndarray) -> np.ndarray:
        """(H, W) -> the full view decimated (nearest) to at most :data:`MAP_DEPTH_WIDTH` wide."""
        s = self.map_stride
        return np.ascontiguousarray(depth[s // 2 :: s, s // 2 :: s], dtype=np.float32)

    @property
    def map_stride(self) -> int:
        """Decimation of :meth:`map_depth`."""
        return max(1, int(math.ceil(self.width / MAP_DEPTH_WIDTH)))

    @property
    def map_k(self) -> np.ndarray:
        """(3, 3) camera matrix of :meth:`map_depth`'s output (pixel i is source pixel i*s + s//2)."""
        s = self.map_stride
        off = s / 2.0 - s // 2 - 0.5
        return np.array(
            [[self.fx / s, 0.0, (self.cx + off) / s], [0.0, self.fy / s, (self.cy + off) / s], [0.0, 0.0, 1.0]]
        )


def square_crop(width: int, height: int, fx: float, fy: float, cx: float, cy: float, res: int) -> SquareCrop:
    """A :class:`SquareCrop` of a pinhole camera, checked.

    Raises:
        WorldBuildError: a non-positive or non-finite focal length, a principal point outside the
            image, a size out of bounds, or a square view too narrow to store.
    """
    vals = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    if not all(isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)) for v in vals.values()):
        raise WorldBuildError(f"camera intrinsics must be finite numbers, got {vals}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise WorldBuildError(f"image size {width}x{height} is out of bounds (1 to {MAX_SIDE} pixels a side)")
    if fx <= 0 or fy <= 0:
        raise WorldBuildError(f"focal lengths must be positive, got fx={fx}, fy={fy} (an uncalibrated camera?)")
    if not (0 < cx < width and 0 < cy < height):
        raise WorldBuildError(f"principal point ({cx}, {cy}) is outside the {width}x{height} image")
    crop = SquareCrop(int(width), int(height), float(fx), float(fy), float(cx), float(cy), int(res))
    if not 0.01 <= crop.fov_y < 179.0:
        raise WorldBuildError(f"the square view of this camera is {crop.fov_y:.3g} degrees wide; check its intrinsics")
    return crop


# --------------------------------------------------------------------------------------
# Pose interpolation
# --------------------------------------------------------------------------------------


def interpolate_poses(
    query: np.ndarray, stamps: np.ndarray, poses: np.ndarray, max_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Poses at ``query`` times: linear in translation, slerp in rotation, never extrapolated.

    Args:
        query: (M,) seconds.
        stamps: (N,) seconds of the poses, N >= 1 (sorted here; duplicates keep the first).
        poses: (N, 4, 4) rigid transforms.
        max_gap: a query farther than this (seconds) from every pose gets none.

    Returns:
        ((M, 4, 4) poses, (M,) bool: a pose was found). Queries before the first or after the
        last pose within ``max_gap`` take that end pose.
    """
    from scipy.spatial.transform import Rotation

    order = np.argsort(stamps, kind="stable")
    stamps, poses = np.asarray(stamps, np.float64)[order], np.asarray(poses, np.float64)[order]
    keep = np.concatenate([[True], np.diff(stamps) > 0])
    stamps, poses = stamps[keep], poses[keep]
    query = np.asarray(query, np.float64)
    n, m = len(stamps), len(query)
    out = np.repeat(np.eye(4)[None], m, axis=0)
    hi = np.clip(np.searchsorted(stamps, query, side="left"), 0, n - 1)  # (M,) first pose at or after
    lo = np.clip(hi - 1, 0, n - 1)
    lo = np.where(stamps[hi] < query, hi, lo)  # after the last: both ends the last
    lo = np.where(query <= stamps[0], hi, lo)  # before (or at) the first: both ends the first
    gap = np.minimum(np.abs(query - stamps[lo]), np.abs(stamps[hi] - query))
    ok = gap <= max_gap
    span = stamps[hi] - stamps[lo]
    f = np.where(span > 0, (query - stamps[lo]) / np.where(span > 0, span, 1.0), 0.0)  # (M,) in [0, 1]
    f = np.clip(f, 0.0, 1.0)
    r0 = Rotation.from_matrix(poses[lo, :3, :3])
    r1 = Rotation.from_matrix(poses[hi, :3, :3])
    rel = (r0.inv() * r1).as_rotvec()  # (M, 3)
    out[:, :3, :3] = (r0 * Rotation.from_rotvec(rel * f[:, None])).as_matrix()
    out[:, :3, 3] = (1 - f)[:, None] * poses[lo, :3, 3] + f[:, None] * poses[hi, :3, 3]
    return out, ok


def _quat_pose(position: Any, orientation: Any) -> np.ndarray | None:
    """A 4x4 from geometry_msgs Point/Vector3 + Quaternion, or None when not finite or not a rotation."""
    import transforms3d

    t = np.array([position.x, position.y, position.z], dtype=np.float64)
    q = np.array([orientation.w, orientation.x, orientation.y, orientation.z], dtype=np.float64)
    norm = float(np.linalg.norm(q)) if np.all(np.isfinite(q)) else float("nan")
    if not (np.all(np.isfinite(t)) and math.isfinite(norm) and abs(norm - 1.0) < 0.1):
        return None
    if np.abs(t).max() > MAX_TRANSLATION:
        return None
    out = np.eye(4)
    out[:3, :3] = transforms3d.quaternions.quat2mat(q / norm)
    out[:3, 3] = t
    return out


# --------------------------------------------------------------------------------------
# rosbag2
# --------------------------------------------------------------------------------------


def _topic(name: str) -> str:
    return "/" + str(name).strip("/")


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _decode_colour(msg: Any, topic: str) -> np.ndarray:
    enc = str(msg.encoding)
    if enc not in COLOUR_ENCODINGS:
        raise WorldBuildError(
            f"{topic} has image encoding {enc!r}; world build reads colour images in {list(COLOUR_ENCODINGS)} "
            "(convert the bag, e.g. with image_transport republish or a cv_bridge script)"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or step < 3 * w or data.size < step * h:
        raise WorldBuildError(
            f"{topic}: a {enc} image of {w}x{h} with step {step} needs {step * h} bytes (step >= {3 * w}), "
            f"has {data.size}: truncated or malformed"
        )
    img = data[: step * h].reshape(h, step)[:, : 3 * w].reshape(h, w, 3)
    return np.ascontiguousarray(img[..., ::-1] if enc == "bgr8" else img)


def _decode_depth(msg: Any, topic: str) -> np.ndarray:
    """Depth in metres, float32; NaN, zero, negative and -inf (invalid) all become +inf (no return)."""
    enc = str(msg.encoding)
    if enc not in DEPTH_ENCODINGS:
        raise WorldBuildError(f"{topic} has depth encoding {enc!r}; world build reads {list(DEPTH_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    size = 4 if enc == "32FC1" else 2
    data = np.asarray(msg.data, dtype=np.uint8)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or step < size * w or data.size < step * h:
        raise WorldBuildError(
            f"{topic}: a {enc} depth image of {w}x{h} with step {step} needs {step * h} bytes, has {data.size}: "
            "truncated or malformed"
        )
    rows = data[: step * h].reshape(h, step)[:, : size * w]
    big = bool(msg.is_bigendian)
    if enc == "32FC1":
        d = np.ascontiguousarray(rows).view(">f4" if big else "<f4").reshape(h, w).astype(np.float32)
    else:
        mm = np.ascontiguousarray(rows).view(">u2" if big else "<u2").reshape(h, w)
        d = mm.astype(np.float32) * np.float32(1e-3)
    with np.errstate(invalid="ignore"):
        return np.where(d > 0, d, np.float32(np.inf)).astype(np.float32)  # NaN > 0 is False


def _open_bag(path: Path) -> Any:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise WorldBuildError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as e:  # rosbags raises many types for malformed bags: all are bad input here
        raise WorldBuildError(f"cannot read the bag {path}: {type(e).__name__}: {e}") from e
    return reader


def _messages(reader: Any, connections: list, path: Path) -> Any:
    """Yield (topic, log time, message) deserialised, turning rosbags' failures into WorldBuildError."""
    it = reader.messages(connections=connections)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise WorldBuildError(f"cannot read the bag {path}: {type(e).__name__}: {e}") from e
        conn, t, raw = item
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as e:
            raise WorldBuildError(
                f"bag {path}: a {conn.msgtype} message on {conn.topic} cannot be decoded ({type(e).__name__}: {e})"
            ) from e
        yield conn.topic, t, msg


def _connections(reader: Any, topic: str, types: tuple[str, ...], what: str, path: Path) -> list:
    conns = [c for c in reader.connections if c.topic == topic]
    if conns and any(c.msgtype not in types for c in conns):
        bad = sorted({c.msgtype for c in conns} - set(types))
        raise WorldBuildError(f"bag {path}: {what} topic {topic} carries {bad}; expected one of {list(types)}")
    return conns


def _topics_listing(reader: Any) -> str:
    return ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"


def read_bag(path: str | os.PathLike, cfg: BuildConfig) -> Capture:
    """Read a rosbag2 (MCAP or sqlite3) into posed frames (module docstring: frames and floors).

    Images are matched to poses by header stamp (:func:`interpolate_poses`, ``cfg.max_pose_gap``)
    and to depth images by the nearest depth stamp within ``cfg.max_depth_gap``.

    Raises:
        WorldBuildError: no such bag or not a bag, a missing image, camera-info or pose topic, an
            unknown encoding, truncated images, images of mixed sizes or of another size than their
            CameraInfo, an uncalibrated CameraInfo, no valid pose, poses that never overlap the
            images in time, a broken /tf chain.
    """
    path = Path(path)
    reader = _open_bag(path)
    try:
        return _read_bag(reader, path, cfg)
    finally:
        try:
            reader.close()
        except Exception:  # noqa: S110 (closing a malformed bag may fail again; the first error is the one to show)
            pass


def _read_bag(reader: Any, path: Path, cfg: BuildConfig) -> Capture:
    image_topic, info_topic = _topic(cfg.image_topic), _topic(cfg.info_topic)
    image_conns = _connections(reader, image_topic, ("sensor_msgs/msg/Image",), "image", path)
    if not image_conns:
        raise WorldBuildError(
            f"bag {path} has no image topic {image_topic}; give --image-topic (topics: {_topics_listing(reader)})"
        )
    info_conns = _connections(reader, info_topic, ("sensor_msgs/msg/CameraInfo",), "camera info", path)
    if not info_conns:
        raise WorldBuildError(
            f"bag {path} has no camera info topic {info_topic}; give --info-topic (topics: {_topics_listing(reader)})"
        )
    depth_conns: list = []
    depth_topic = None
    if not cfg.no_depth:
        depth_topic = _topic(cfg.depth_topic or DEFAULT_TOPICS["depth"])
        depth_conns = _connections(reader, depth_topic, ("sensor_msgs/msg/Image",), "depth", path)
        if not depth_conns and cfg.depth_topic is not None:
            raise WorldBuildError(
                f"bag {path} has no depth topic {depth_topic} (topics: {_topics_listing(reader)}); "
                "give another --depth-topic or --no-depth"
            )
        if not depth_conns:
            depth_topic = None

    # Pass 1: camera info, and the images' stamps and frame.
    k = None
    for _, _, msg in _messages(reader, info_conns, path):
        k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
        info_size = (int(msg.width), int(msg.height))
        distortion = np.asarray(msg.d, dtype=np.float64).reshape(-1)
        break
    if k is None:
        raise WorldBuildError(f"bag {path}: camera info topic {info_topic} has no messages")
    if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
        raise WorldBuildError(f"bag {path}: the CameraInfo on {info_topic} has no calibration (K = {k.tolist()})")

    # Poses.
    pose_source: dict
    if cfg.tf:
        stamps_p, poses_p, fixed, pose_source, bad_poses = None, None, None, {}, 0
    else:
        pose_topic = _topic(cfg.pose_topic)
        types = ("geometry_msgs/msg/PoseStamped", "nav_msgs/msg/Odometry")
        pose_conns = _connections(reader, pose_topic, types, "pose", path)
        if not pose_conns:
            raise WorldBuildError(
                f"bag {path} has no pose topic {pose_topic}; give --pose-topic (a PoseStamped or Odometry of the "
                f"camera's optical frame) or --tf --camera-frame FRAME (topics: {_topics_listing(reader)})"
            )
        stamps_l, poses_l, frames_l, children, bad_poses = [], [], set(), set(), 0
        for _, _, msg in _messages(reader, pose_conns, path):
            pose_msg = msg.pose.pose if hasattr(msg, "child_frame_id") else msg.pose
            if hasattr(msg, "child_frame_id"):
                children.add(str(msg.child_frame_id))
            p = _quat_pose(pose_msg.position, pose_msg.orientation)
            if p is None:
                bad_poses += 1
                continue
            stamps_l.append(_stamp(msg.header))
            poses_l.append(p)
            frames_l.add(str(msg.header.frame_id))
        if not poses_l:
            raise WorldBuildError(
                f"bag {path}: pose topic {pose_topic} has no valid pose ({bad_poses} with NaN, infinite or "
                "non-unit-quaternion values)"
            )
        if len(frames_l) > 1:
            raise WorldBuildError(f"bag {path}: poses on {pose_topic} are in several frames {sorted(frames_l)}")
        fixed = frames_l.pop()
        stamps_p, poses_p = np.array(stamps_l, dtype=np.int64), np.stack(poses_l)
        pose_source = {"pose_topic": pose_topic, "fixed_frame": fixed}

    # Pass 2: images (cropped and resized as they come) and depth.
    crop: SquareCrop | None = None
    frames, stamps_i, image_frames, sizes = [], [], set(), set()
    for _, _, msg in _messages(reader, image_conns, path):
        img = _decode_colour(msg, image_topic)
        sizes.add((img.shape[1], img.shape[0]))
        if len(sizes) > 1:
            raise WorldBuildError(f"bag {path}: images on {image_topic} have mixed sizes {sorted(sizes)} (W, H)")
        if crop is None:
            if info_size != (img.shape[1], img.shape[0]):
                raise WorldBuildError(
                    f"bag {path}: images on {image_topic} are {img.shape[1]}x{img.shape[0]} but the CameraInfo "
                    f"on {info_topic} is for {info_size[0]}x{info_size[1]}"
                )
            crop = square_crop(img.shape[1], img.shape[0], k[0], k[4], k[2], k[5], cfg.res)
        frames.append(crop.colour(img))
        stamps_i.append(_stamp(msg.header))
        image_frames.add(str(msg.header.frame_id))
    if not frames:
        raise WorldBuildError(f"bag {path}: image topic {image_topic} has no messages")
    stamps_i = np.array(stamps_i, dtype=np.int64)
    depth_by_stamp: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if depth_topic is not None:
        for _, _, msg in _messages(reader, depth_conns, path):
            d = _decode_depth(msg, depth_topic)
            if d.shape != (crop.height, crop.width):
                raise WorldBuildError(
                    f"bag {path}: depth images on {depth_topic} are {d.shape[1]}x{d.shape[0]} but the colour images "
                    f"are {crop.width}x{crop.height}; record depth registered (aligned) to the colour camera"
                )
            depth_by_stamp[_stamp(msg.header)] = (crop.depth(d), crop.map_depth(d))

    t0 = int(stamps_i.min())
    q = (stamps_i - t0) * 1e-9  # (M,) seconds
    if cfg.tf:
        camera_frame = cfg.camera_frame or (image_frames.pop() if len(image_frames) == 1 else None)
        if camera_frame is None:
            raise WorldBuildError(
                f"bag {path}: images are in several frames {sorted(image_frames)}; give --camera-frame"
            )
        poses_w, ok, fixed = _tf_poses(reader, path, q, t0, camera_frame, cfg)
        pose_source = {"tf": True, "camera_frame": camera_frame, "fixed_frame": fixed}
    else:
        if children and image_frames and not (children & image_frames):
            raise WorldBuildError(
                f"bag {path}: the Odometry on {pose_source['pose_topic']} is of {sorted(children)} but the images are "
                f"in {sorted(image_frames)}: give the camera's own pose topic (rtfm-camera: /camera/pose) or use "
                "--tf --camera-frame FRAME"
            )
        _check_overlap(path, q, (stamps_p - t0) * 1e-9, cfg.max_pose_gap, pose_source["pose_topic"], image_topic)
        poses_w, ok = interpolate_poses(q, (stamps_p - t0) * 1e-9, poses_p, cfg.max_pose_gap)
    if not ok.any():
        raise WorldBuildError(
            f"bag {path}: no image on {image_topic} is within --max-pose-gap {cfg.max_pose_gap} s of a pose"
        )
    floor = np.eye(4)
    floor[2, 3] = -float(cfg.floor)  # the fixed frame's floor to z = 0
    poses_w = np.stack([ros_to_world(floor @ p) for p in poses_w])  # the one ROS conversion

    # Depth, matched by stamp.
    depths, has, map_depths = [], [], []
    dstamps = np.array(sorted(depth_by_stamp), dtype=np.int64)
    for s in stamps_i:
        match = None
        if len(dstamps):
            j = int(np.clip(np.searchsorted(dstamps, s), 0, len(dstamps) - 1))
            cands = [c for c in (j - 1, j) if 0 <= c < len(dstamps)]
            best = min(cands, key=lambda c: abs(int(dstamps[c]) - int(s)))
            if abs(int(dstamps[best]) - int(s)) * 1e-9 <= cfg.max_depth_gap:
                match = depth_by_stamp[int(dstamps[best])]
        has.append(match is not None)
        depths.append(match[0] if match is not None else np.full((cfg.res, cfg.res), np.inf, np.float32))
        map_depths.append(match[1] if match is not None else None)
    has = np.array(has)
    keep = np.flatnonzero(ok)
    source = {
        "type": "bag",
        "path": str(path.absolute()),
        "image_topic": image_topic,
        "info_topic": info_topic,
        "depth_topic": depth_topic,
        **pose_source,
        "floor": float(cfg.floor),
        "max_pose_gap": float(cfg.max_pose_gap),
        "source_size": [crop.width, crop.height],
        "distortion_ignored": bool(np.any(distortion != 0)),
    }
    dropped = {"no_pose": int((~ok).sum()), "invalid_pose_messages": int(bad_poses)}
    if depth_topic is not None:
        dropped["frames_without_depth"] = int((~has[keep]).sum())
    return Capture(
        frames=np.stack([frames[i] for i in keep]),
        depths=np.stack([depths[i] for i in keep]) if depth_topic is not None else None,
        has_depth=has[keep] if depth_topic is not None else np.zeros(len(keep), bool),
        poses=poses_w[keep],
        fov_y=crop.fov_y,
        map_depths=[map_depths[i] for i in keep if map_depths[i] is not None],
        map_k=crop.map_k,
        stamps=stamps_i[keep] * 1e-9,
        source=source,
        dropped=dropped,
    )


def _check_overlap(path: Path, q: np.ndarray, p: np.ndarray, gap: float, pose_topic: str, image_topic: str) -> None:
    if q.max() < p.min() - gap or q.min() > p.max() + gap:
        raise WorldBuildError(
            f"bag {path}: the poses on {pose_topic} never overlap the images on {image_topic} in time "
            f"(images {q.min():.3f} to {q.max():.3f} s, poses {p.min():.3f} to {p.max():.3f} s after the first "
            "image's header stamp)"
        )


def _tf_poses(
    reader: Any, path: Path, q: np.ndarray, t0: int, camera_frame: str, cfg: BuildConfig
) -> tuple[np.ndarray, np.ndarray, str]:
    """Poses of ``camera_frame`` in the fixed frame at times ``q``, composed along the /tf tree."""
    conns = [c for c in reader.connections if c.topic in ("/tf", "/tf_static")]
    if not conns:
        raise WorldBuildError(f"bag {path} has no /tf or /tf_static topic for --tf (topics: {_topics_listing(reader)})")
    if any(c.msgtype != "tf2_msgs/msg/TFMessage" for c in conns):
        raise WorldBuildError(f"bag {path}: /tf or /tf_static does not carry tf2_msgs/msg/TFMessage")
    edges: dict[str, tuple[str, bool, list[int], list[np.ndarray]]] = {}  # child -> (parent, static, stamps, poses)
    for topic, _, msg in _messages(reader, conns, path):
        for t in msg.transforms:
            child, parent = str(t.child_frame_id).strip("/"), str(t.header.frame_id).strip("/")
            p = _quat_pose(t.transform.translation, t.transform.rotation)
            if p is None:
                continue
            entry = edges.setdefault(child, (parent, topic == "/tf_static", [], []))
            if entry[0] != parent:
                raise WorldBuildError(
                    f"bag {path}: frame {child!r} has two parents in /tf: {entry[0]!r} and {parent!r}"
                )
            entry[2].append(_stamp(t.header))
            entry[3].append(p)
    chain, frame = [], camera_frame.strip("/")
    while frame in edges and frame != (cfg.fixed_frame or "").strip("/"):
        chain.append(frame)
        frame = edges[frame][0]
        if len(chain) > 64 or frame in chain:
            raise WorldBuildError(f"bag {path}: /tf has a cycle through {frame!r}")
    if not chain:
        raise WorldBuildError(
            f"bag {path}: /tf has no transform to the camera frame {camera_frame!r} (frames: {sorted(edges)})"
        )
    if cfg.fixed_frame and frame != cfg.fixed_frame.strip("/"):
        raise WorldBuildError(f"bag {path}: the camera frame {camera_frame!r} is not under {cfg.fixed_frame!r} in /tf")
    out = np.repeat(np.eye(4)[None], len(q), axis=0)
    ok = np.ones(len(q), dtype=bool)
    for child in reversed(chain):  # fixed frame first
        parent, static, stamps, poses = edges[child]
        if static:
            edge, found = np.repeat(poses[-1][None], len(q), axis=0), np.ones(len(q), bool)
        else:
            s = (np.array(stamps, dtype=np.int64) - t0) * 1e-9
            _check_overlap(path, q, s, cfg.max_pose_gap, f"/tf ({parent} -> {child})", "the image topic")
            edge, found = interpolate_poses(q, s, np.stack(poses), cfg.max_pose_gap)
        out = out @ edge
        ok &= found
    return out, ok, frame


# --------------------------------------------------------------------------------------
# nerfstudio
# --------------------------------------------------------------------------------------

_UP_AXES = {"x": 0, "y": 1, "z": 2}


def _number(d: dict, key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise WorldBuildError(f"{where}: {key!r} must be a finite number, got {v!r}")
    return float(v)


def _load_image(path: Path, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise WorldBuildError(f"{where}: image file {path} is missing")
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA", "L", "P"):
                raise WorldBuildError(f"{where}: image {path} has mode {im.mode!r}; expected 8-bit RGB, RGBA or grey")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        if isinstance(e, WorldBuildError):
            raise
        raise WorldBuildError(f"{where}: cannot read image {path}: {e}") from e


def _load_depth(path: Path, where: str, scale: float) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise WorldBuildError(f"{where}: depth file {path} is missing")
    try:
        if path.suffix.lower() == ".npy":
            d = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                d = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        raise WorldBuildError(f"{where}: cannot read depth {path}: {e}") from e
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2 or d.dtype.kind not in "uif":
        raise WorldBuildError(f"{where}: depth {path} must be one channel of numbers, got {d.dtype} {d.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        m = d.astype(np.float64) * scale
        return np.where(np.isfinite(m) & (m > 0), m, np.inf).astype(np.float32)


def _up_rotation(poses: np.ndarray, up: str) -> tuple[np.ndarray, list[float]]:
    """A rotation taking the chosen up direction to +y (the smallest one, keeping headings)."""
    if up == "auto":
        centres = poses[:, :3, 3]
        mean_up = poses[:, :3, 1].mean(axis=0)  # OpenGL camera y: roughly up for a robot's camera
        vec = mean_up
        if len(centres) >= 3:
            _, s, vt = np.linalg.svd(centres - centres.mean(axis=0))
            if s[1] > 1e-6 and s[2] < 0.2 * s[1]:  # a planar path: its normal is up
                vec = vt[2] * (1.0 if vt[2] @ mean_up >= 0 else -1.0)
    else:
        sign = -1.0 if up.startswith("-") else 1.0
        vec = np.zeros(3)
        vec[_UP_AXES[up.lstrip("-")]] = sign
    norm = float(np.linalg.norm(vec))
    if not (math.isfinite(norm) and norm > 1e-9):
        raise WorldBuildError("cannot tell the world's up direction from the cameras; give --up x|y|z|-x|-y|-z")
    a, b = vec / norm, np.array([0.0, 1.0, 0.0])
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-12:
        rot = np.diag([1.0, -1.0, -1.0])
    else:
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        rot = np.eye(3) + vx + vx @ vx / (1.0 + c)
    return rot, (a).tolist()


def read_nerfstudio(directory: str | os.PathLike, cfg: BuildConfig) -> Capture:
    """Read a nerfstudio capture (``transforms.json`` + images, optional depth) into posed frames.

    ``transform_matrix`` is camera-to-world with OpenGL camera axes (nerfstudio's convention;
    ``cfg.convention="opencv"`` for x right, y down, z forward). Intrinsics ``fl_x, fl_y, cx, cy,
    w, h`` are taken per frame where given, else from the top level; every frame must have the same
    size and intrinsics. ``depth_file_path`` (16-bit PNG or .npy) is multiplied by
    ``depth_unit_scale_factor`` (default 1e-3, nerfstudio's: millimetres to metres) and by
    ``cfg.scale``; 0 means no return (stored as inf). Distortion coefficients are ignored (noted
    in ``source``); fisheye and equirectangular cameras are refused.

    Raises:
        WorldBuildError: a missing or malformed transforms.json, missing or unreadable files,
            non-rigid or non-finite matrices, images of mixed sizes or intrinsics, a camera model
            other than PINHOLE/OPENCV.
    """
    root = Path(directory)
    tf_path = root / "transforms.json"
    if not tf_path.is_file():
        raise WorldBuildError(f"{root} has no transforms.json (is it a nerfstudio capture folder?)")
    try:
        meta = json.loads(tf_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WorldBuildError(f"cannot read {tf_path}: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise WorldBuildError(f"{tf_path} must be an object with a non-empty 'frames' list")
    if cfg.convention not in ("opengl", "opencv"):
        raise WorldBuildError(f"unknown --convention {cfg.convention!r}; valid: ['opengl', 'opencv']")
    if cfg.up != "auto" and cfg.up.lstrip("-") not in _UP_AXES:
        raise WorldBuildError(f"unknown --up {cfg.up!r}; valid: auto, x, y, z, -x, -y, -z")
    if not (math.isfinite(cfg.scale) and cfg.scale > 0):
        raise WorldBuildError(f"--scale must be a positive number of metres per unit, got {cfg.scale}")
    depth_scale = meta.get("depth_unit_scale_factor", 1e-3)
    if isinstance(depth_scale, bool) or not isinstance(depth_scale, (int, float)) or not depth_scale > 0:
        raise WorldBuildError(f"{tf_path}: depth_unit_scale_factor must be a positive number, got {depth_scale!r}")
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h")
    crop, intr, frames, depths, map_depths, has, poses = None, None, [], [], [], [], []
    distorted = False
    for i, fr in enumerate(meta["frames"]):
        where = f"{tf_path} frame {i}"
        if not isinstance(fr, dict):
            raise WorldBuildError(f"{where} must be an object")
        model = fr.get("camera_model", meta.get("camera_model", "PINHOLE"))
        if model not in ("PINHOLE", "OPENCV"):
            raise WorldBuildError(f"{where}: camera_model {model!r} is not supported; valid: ['PINHOLE', 'OPENCV']")
        distorted |= any(
            isinstance(fr.get(k, meta.get(k, 0)), (int, float)) and fr.get(k, meta.get(k, 0)) != 0
            for k in ("k1", "k2", "k3", "k4", "p1", "p2")
        )
        merged = {k: fr.get(k, meta.get(k)) for k in keys}
        this = tuple(_number(merged, k, where) for k in keys)
        if this[4] != int(this[4]) or this[5] != int(this[5]):
            raise WorldBuildError(f"{where}: w and h must be whole numbers of pixels, got {this[4]}, {this[5]}")
        if intr is None:
            intr = this
            crop = square_crop(int(this[4]), int(this[5]), this[0], this[1], this[2], this[3], cfg.res)
        elif this[4:] != intr[4:]:
            raise WorldBuildError(
                f"{where}: images of mixed sizes: {int(this[4])}x{int(this[5])} here, {int(intr[4])}x{int(intr[5])} "
                "in frame 0; world build needs one camera"
            )
        elif not np.allclose(this, intr, rtol=1e-6, atol=1e-6):
            raise WorldBuildError(f"{where}: intrinsics {this[:4]} differ from frame 0's {intr[:4]}; one camera only")
        m = fr.get("transform_matrix")
        try:
            mat = np.array(m, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise WorldBuildError(f"{where}: transform_matrix is not a matrix of numbers ({e})") from e
        if mat.shape == (3, 4):
            mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
        if mat.shape != (4, 4) or not np.all(np.isfinite(mat)):
            raise WorldBuildError(f"{where}: transform_matrix must be a finite 4x4 matrix, got {np.shape(m)}")
        rot = mat[:3, :3]
        if np.abs(mat[3] - [0, 0, 0, 1]).max() > 1e-6 or np.abs(rot @ rot.T - np.eye(3)).max() > RIGID_TOLERANCE:
            raise WorldBuildError(
                f"{where}: transform_matrix is not rigid (rotation not orthonormal or bad bottom row)"
            )
        if np.linalg.det(rot) < 0:
            raise WorldBuildError(f"{where}: transform_matrix is a reflection (determinant < 0), not a rigid pose")
        if np.abs(mat[:3, 3]).max() * cfg.scale > MAX_TRANSLATION:
            raise WorldBuildError(f"{where}: transform_matrix puts the camera beyond {MAX_TRANSLATION:g} m")
        if cfg.convention == "opencv":
            mat = mat @ OPENGL_TO_OPTICAL  # OpenCV camera axes -> OpenGL
        u, _, vt = np.linalg.svd(mat[:3, :3])
        mat[:3, :3] = u @ vt  # exactly orthonormal within the tolerance checked above
        fp = fr.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise WorldBuildError(f"{where}: file_path must be a non-empty string, got {fp!r}")
        img = _load_image(root / fp, where)
        if img.shape[:2] != (crop.height, crop.width):
            raise WorldBuildError(
                f"{where}: image {fp} is {img.shape[1]}x{img.shape[0]} but transforms.json says "
                f"{crop.width}x{crop.height} (images of mixed sizes)"
            )
        frames.append(crop.colour(img))
        dp = fr.get("depth_file_path")
        if dp is not None:
            if not isinstance(dp, str) or not dp:
                raise WorldBuildError(f"{where}: depth_file_path must be a non-empty string, got {dp!r}")
            d = _load_depth(root / dp, where, float(depth_scale) * cfg.scale)
            if d.shape != (crop.height, crop.width):
                raise WorldBuildError(
                    f"{where}: depth {dp} is {d.shape[1]}x{d.shape[0]}, image {crop.width}x{crop.height}"
                )
            depths.append(crop.depth(d))
            map_depths.append(crop.map_depth(d))
            has.append(True)
        else:
            depths.append(np.full((cfg.res, cfg.res), np.inf, np.float32))
            has.append(False)
        poses.append(mat)
    poses = np.stack(poses)
    poses[:, :3, 3] *= cfg.scale
    rot, up_vec = _up_rotation(poses, cfg.up)
    align = np.eye(4)
    align[:3, :3] = rot
    poses = np.einsum("ij,njk->nik", align, poses)
    if cfg.cam_height is not None:
        if not (math.isfinite(cfg.cam_height) and cfg.cam_height > 0):
            raise WorldBuildError(f"--cam-height must be a positive number of metres, got {cfg.cam_height}")
        floor = float(np.median(poses[:, 1, 3])) - cfg.cam_height
    else:
        floor = float(cfg.floor)
    poses[:, 1, 3] -= floor
    has = np.array(has)
    return Capture(
        frames=np.stack(frames),
        depths=np.stack(depths) if has.any() else None,
        has_depth=has,
        poses=poses,
        fov_y=crop.fov_y,
        map_depths=map_depths,
        map_k=crop.map_k,
        stamps=None,
        source={
            "type": "nerfstudio",
            "path": str(root.absolute()),
            "convention": cfg.convention,
            "up": cfg.up,
            "up_vector": up_vec,
            "floor": floor,
            "scale": float(cfg.scale),
            "source_size": [crop.width, crop.height],
            "distortion_ignored": bool(distorted),
        },
        dropped={},
    )


# --------------------------------------------------------------------------------------
# MiniWorld
# --------------------------------------------------------------------------------------


def read_scene(scene_id: str, cfg: BuildConfig) -> Capture:
    """A MiniWorld ``walk`` or ``scan`` recording (:func:`rtfm_env.worlds.recording`) as posed frames.

    Raises:
        WorldBuildError: an unknown scene id, a bad seed or kind, or a layout that cannot be scanned.
    """
    from rtfm_env.scenes.miniworld import MiniWorldScene
    from rtfm_env.worlds import recording

    if cfg.kind not in ("walk", "scan"):
        raise WorldBuildError(f"unknown --kind {cfg.kind!r}; valid: ['walk', 'scan']")
    try:
        scene = MiniWorldScene(scene_id, cfg.res, cfg.res, cfg.fov_y)
    except ValueError as e:
        raise WorldBuildError(f"cannot build a world from scene {scene_id!r}: {e}") from e
    try:
        start = scene.reset(cfg.seed)
        rec = recording(scene, cfg.kind, start)
        radius = scene.radius
        env_id = scene.env_id
    except ValueError as e:
        raise WorldBuildError(f"cannot record scene {scene_id!r} (seed {cfg.seed}): {e}") from e
    finally:
        scene.close()
    n = len(rec.poses)
    return Capture(
        frames=np.array(rec.frames),
        depths=np.array(rec.depths, dtype=np.float32),
        has_depth=np.ones(n, dtype=bool),
        poses=np.array(rec.poses),
        fov_y=float(rec.intrinsics.fov_y),
        map_depths=list(np.array(rec.depths, dtype=np.float32)),
        map_k=rec.intrinsics.K,
        stamps=None,
        source={"type": "scene", "id": env_id, "seed": int(cfg.seed), "kind": cfg.kind},
        dropped={},
        robot_radius=float(radius),
    )


# --------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------


def _free_space(cap: Capture, cfg: BuildConfig, cam_height: float, radius: float) -> FreeSpaceGrid:
    if cfg.band is not None:
        band = (float(cfg.band[0]), float(cfg.band[1]))
    else:
        lo = 0.1 if cam_height > 0.3 else cam_height / 3.0
        band = (lo, cam_height)
    try:
        if cap.map_depths:
            sel = np.flatnonzero(cap.has_depth)
            return free_space_grid(
                cap.map_depths, cap.poses[sel], cap.map_k, cfg.cell, band, radius, max_range=cfg.max_range
            )
        return path_corridor_grid(cap.poses, cfg.cell, radius, cfg.corridor_margin)
    except FreeSpaceError as e:
        raise WorldBuildError(f"cannot build the free-space map: {e}") from e


def make_world(cap: Capture, cfg: BuildConfig) -> tuple[SpatialMemory, dict[str, np.ndarray], dict]:
    """The world's memory, attachments and info from posed frames (nothing written).

    Raises:
        WorldBuildError: no frames, cameras under the floor, or an empty free-space map.
    """
    n = len(cap.poses)
    if n == 0:
        raise WorldBuildError("no frames to build a world from")
    cam_height = float(np.median(cap.poses[:, 1, 3]))
    if not cam_height > 0.02:
        raise WorldBuildError(
            f"the cameras are at a median height of {cam_height:.3g} m above the floor (at or below it): the floor "
            "or up axis is wrong; give --floor (or --cam-height, --up for nerfstudio)"
        )
    radius = cfg.robot_radius if cfg.robot_radius is not None else (cap.robot_radius or 0.4)
    grid = _free_space(cap, cfg, cam_height, radius)
    if not grid.free.any():
        raise WorldBuildError("the free-space map is empty: no cell is free; check the poses, floor and height band")
    memory = SpatialMemory()
    intr = Intrinsics(cfg.res, cfg.res, cap.fov_y)
    for i in range(n):
        depth = cap.depths[i] if cap.depths is not None and cap.has_depth[i] else None
        try:
            memory.add(cap.frames[i], cap.poses[i], intr, "observed", step=i, depth=depth)
        except ValueError as e:
            raise WorldBuildError(f"frame {i} cannot be stored: {e}") from e
    xz = cap.poses[:, [0, 2], 3]
    info = {
        "kind": WORLD_KIND,
        "world_version": WORLD_VERSION,
        "source": cap.source,
        "frames": n,
        "frames_with_depth": int(cap.has_depth.sum()),
        "resolution": [cfg.res, cfg.res],
        "fov_y": float(cap.fov_y),
        "time_span": None if cap.stamps is None else [float(cap.stamps.min()), float(cap.stamps.max())],
        "bounds": {
            "x": [float(xz[:, 0].min()), float(xz[:, 0].max())],
            "z": [float(xz[:, 1].min()), float(xz[:, 1].max())],
        },
        "cam_height": cam_height,
        "free_space": grid.info(),
        "dropped_images": dict(cap.dropped),
    }
    attachments = {"free_space": grid.free.astype(np.uint8), "known_free": grid.known_free.astype(np.uint8)}
    return memory, attachments, info


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise WorldBuildError(
                f"{out} exists; pass --overwrite to replace it (it is kept until the new world is complete)"
            )
        if not out.is_file() or out.is_symlink():
            raise WorldBuildError(f"{out} exists and is not a regular file; it is never replaced")
    if not out.parent.is_dir():
        raise WorldBuildError(f"cannot write {out}: {out.parent} is not a directory")


def build_world(
    source: str,
    where: str | os.PathLike,
    out: str | os.PathLike,
    cfg: BuildConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Build a world file from a source and write it to ``out`` atomically; returns its ``info``.

    Args:
        source: ``"bag"``, ``"nerfstudio"`` or ``"scene"``.
        where: the bag's directory, the capture folder, or the MiniWorld scene id.
        out: the world file to write.
        cfg: options (:class:`BuildConfig`).
        overwrite: replace an existing ``out`` (only once the new world is complete).

    Raises:
        WorldBuildError: any bad input, named; ``out`` is then untouched.
    """
    cfg = cfg or BuildConfig()
    out = Path(out)
    if source not in SOURCES:
        raise WorldBuildError(f"unknown source {source!r}; valid: {list(SOURCES)}")
    if isinstance(cfg.res, bool) or not isinstance(cfg.res, int) or not 8 <= cfg.res <= 1024:
        raise WorldBuildError(f"--res must be a whole number of pixels in [8, 1024], got {cfg.res!r}")
    for name in ("cell", "max_range", "max_pose_gap", "max_depth_gap"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            raise WorldBuildError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if cfg.robot_radius is not None and not (math.isfinite(cfg.robot_radius) and cfg.robot_radius > 0):
        raise WorldBuildError(f"--robot-radius must be a positive number of metres, got {cfg.robot_radius}")
    if not math.isfinite(cfg.floor):
        raise WorldBuildError(f"--floor must be a finite number, got {cfg.floor}")
    _check_out(out, overwrite)
    if source == "bag":
        cap = read_bag(where, cfg)
    elif source == "nerfstudio":
        cap = read_nerfstudio(where, cfg)
    else:
        cap = read_scene(str(where), cfg)
    memory, attachments, info = make_world(cap, cfg)
    _check_out(out, overwrite)  # again: a file may have appeared while reading
    try:
        memory.save(out, attachments=attachments, info=info)
    except ValueError as e:
        raise WorldBuildError(f"cannot write the world to {out}: {e}") from e
    except OSError as e:
        raise WorldBuildError(f"cannot write the world to {out}: {e}") from e
    return info


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtfm-env world`` (its one subcommand so far: ``build``)."""
    sub = parser.add_subparsers(dest="world_command", metavar="world_command", required=True)
    b = sub.add_parser(
        "build",
        help="build a world file from a rosbag2, a nerfstudio capture or a MiniWorld scene",
        description=__doc__.split("\n\n")[0] + " See docs/WORLDS.md for the format.",
    )
    b.add_argument(
        "--from", dest="source", nargs=2, metavar=("SOURCE", "PATH_OR_ID"), required=True,
        help="bag DIR (rosbag2, MCAP or sqlite3), nerfstudio DIR (transforms.json) or scene ID (MiniWorld)",
    )  # fmt: skip
    b.add_argument("--out", required=True, help="the world file to write (atomically)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new world is complete")
    helps = {
        "res": "stored frames are RES x RES pixels",
        "cell": "metres per free-space grid cell",
        "robot_radius": "metres obstacles are inflated by (default 0.4, or the MiniWorld scene's)",
        "band": "LO HI metres above the floor counted as obstacles (default 0.1 to the median camera height)",
        "max_range": "depth beyond this many metres is ignored for free space",
        "corridor_margin": "without depth: metres beyond the robot radius of the corridor around the path",
        "image_topic": "bag: colour sensor_msgs/Image (rgb8 or bgr8)",
        "info_topic": "bag: sensor_msgs/CameraInfo of the colour images",
        "depth_topic": f"bag: depth Image, 32FC1 metres or 16UC1 mm (default {DEFAULT_TOPICS['depth']} if recorded)",
        "no_depth": "ignore recorded depth (free space from the path alone)",
        "pose_topic": "bag: PoseStamped or Odometry of the camera's optical frame in a fixed z-up frame",
        "tf": "bag: poses from /tf and /tf_static instead of --pose-topic",
        "camera_frame": "bag with --tf: the camera's optical frame (default: the images' frame_id)",
        "fixed_frame": "bag with --tf: the fixed frame (default: the root of the camera's /tf tree)",
        "max_pose_gap": "seconds: images farther than this from every pose are dropped (and counted)",
        "max_depth_gap": "seconds: a depth image matches a colour image within this",
        "floor": "height of the floor along the up axis of the source (bag: z in the fixed frame)",
        "up": "nerfstudio: the world's up axis: auto (normal of the camera path's plane), x, y, z, -x, -y, -z",
        "convention": "nerfstudio: transform_matrix camera axes, opengl (nerfstudio's) or opencv",
        "scale": "nerfstudio: metres per world unit",
        "cam_height": "nerfstudio: the camera's height above the floor in metres (sets the floor instead of --floor)",
        "seed": "scene: the MiniWorld layout seed",
        "kind": "scene: walk or scan",
        "fov_y": "scene: vertical field of view, degrees",
    }
    for f in fields(BuildConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{helps[f.name]} (default: {default})"}
        if f.type == "bool":
            kw.pop("default")
            b.add_argument(flag, action="store_true", **kw)
        elif f.name == "band":
            b.add_argument(flag, type=float, nargs=2, metavar=("LO", "HI"), **kw)
        elif f.name == "kind":
            b.add_argument(flag, choices=["walk", "scan"], **kw)
        elif f.name == "up":
            b.add_argument(flag, choices=["auto", "x", "y", "z", "-x", "-y", "-z"], **kw)
        elif f.name == "convention":
            b.add_argument(flag, choices=["opengl", "opencv"], **kw)
        else:
            base = f.type.split(" | ")[0]
            kw["type"] = {"int": int, "float": float, "str": str}[base]
            b.add_argument(flag, **kw)


def run(args: argparse.Namespace) -> int:
    """Run ``rtfm-env world build``; returns the exit code (2 on bad input, naming it)."""
    source, where = args.source
    cfg = BuildConfig(**{f.name: getattr(args, f.name) for f in fields(BuildConfig)})
    if cfg.band is not None:
        cfg.band = (cfg.band[0], cfg.band[1])
    try:
        info = build_world(source, where, args.out, cfg, overwrite=args.overwrite)
    except (WorldBuildError, FreeSpaceError) as e:
        print(f"rtfm-env world build: error: {e}", file=sys.stderr)
        return 2
    fs = info["free_space"]
    dropped = ", ".join(f"{k} {v}" for k, v in info["dropped_images"].items() if v) or "none"
    print(
        f"{args.out}: {info['frames']} frames ({info['frames_with_depth']} with depth) from {source} {where}; "
        f"free space {fs['free_cells']} cells of {fs['cell']} m ({fs['method']}); dropped: {dropped}"
    )
    return 0
