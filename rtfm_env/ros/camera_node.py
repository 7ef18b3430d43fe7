"""The rtfm-sim camera as a ROS 2 node: a simulated camera driven by ``cmd_vel``.

Every ``1 / rate_hz`` seconds the node integrates the latest velocity command over one frame
period with the scene's collision test (:meth:`Scene.move`), asks its camera for the
frame at the new pose and publishes, all with one stamp:

* ``<camera_ns>/image_raw`` (sensor_msgs/Image, rgb8) and ``<camera_ns>/camera_info``
  (sensor_msgs/CameraInfo: K, P, R, plumb_bob D of zeros) in the camera's optical frame,
  sensor-data QoS unless ``reliable_images`` is set;
* ``<camera_ns>/depth/image_raw`` (sensor_msgs/Image, 32FC1: metres along the optical axis,
  REP-118: NaN where the camera has no valid value, +inf where nothing was hit) and
  ``<camera_ns>/depth/camera_info`` (the colour image's CameraInfo), with the colour image's
  stamp, frame and QoS, for cameras with depth (:attr:`Camera.has_depth`) unless
  ``publish_depth`` is false;
* ``odom`` (nav_msgs/Odometry, ``odom`` -> ``base_link``, REP-103/105);
* ``<camera_ns>/pose`` (geometry_msgs/PoseStamped): the optical frame's pose in ``odom``.

* ``/tf`` (``odom`` -> ``base_link``) and ``/tf_static`` (``base_link`` -> the optical frame)
  through tf2_ros where it is importable (a ROS install). The PyPI wheels have no tf2, so
  there the node says once in its log that it does not publish /tf (odom and pose carry the
  same transforms);
* ``/clock`` (rosgraph_msgs/Clock) with ``publish_clock``: simulated time, ``n / rate_hz``
  seconds exactly at the n-th frame, which then stamps every message. Other nodes
  follow it with ``use_sim_time:=true`` (this node's own timer stays on wall time).

It subscribes ``cmd_vel`` (geometry_msgs/Twist, or TwistStamped with ``twist_stamped``) and
``set_pose`` (geometry_msgs/PoseStamped of ``base_link`` in ``odom``, to teleport), and serves
std_srvs/Trigger services: ``reset`` (back to the start), ``save_world`` and ``load_world``.
Every frame conversion goes through :func:`rtfm_env.geometry.world_to_ros` and
:func:`rtfm_env.geometry.state_to_odom`.

Cameras. ``camera`` is any of :data:`rtfm_env.cameras.CAMERAS`. Parameters that only some
cameras take (:data:`CAMERA_ONLY_PARAMETERS`: ``checkpoint``, ``k``, ``world``, ...) stop the
node at start when set, to anything but their default, for another camera.

Worlds. With a memory camera (:class:`~rtfm_env.cameras.MemoryCamera`: ``model``,
``reprojection``, ``nearest``) the world the robot sees is the camera's spatial memory of posed
frames. What it holds at start and at each ``reset`` is the ``world`` parameter: a regime of
:mod:`rtfm_env.worlds` (``image``, ``walk``, ``scan``) or a world file; empty is the camera's
default. ``save_world`` writes the memory to the ``world_path`` parameter (a safetensors file,
written atomically: a failed save leaves an existing file as it was; a path that is, or has
become, a directory, device or other non-regular file, or whose directory is missing, is
refused when set and again at the save); ``load_world`` replaces
the memory with that file's (the robot stays where it is, and the scene's walls still apply; the
reprojection camera needs a file with depth). ``scene`` may name such a file instead of a
MiniWorld id (any name with a directory part or a suffix, or an existing file: ``world.rtfm``
and ``./world.rtfm`` alike). With ``camera:=ground_truth`` there is no stored world, only the
scene itself (re-created exactly from its id and seed), so both services answer
``success=False`` saying so.

Recorded worlds. A world file built by ``rtfm-env world build`` carries a free-space map, and
the node then drives in the recording itself (a :class:`~rtfm_env.scenes.recorded.RecordedScene`):
with ``scene:=FILE``, or with ``world:=FILE`` while ``scene`` keeps its default, cmd_vel moves
the robot with collisions against the file's grid (checked along each frame's arc), ``set_pose``
refuses occupied cells, and the start (and ``reset``) is a known-free point of the recording
drawn from ``seed``; the camera's memory is the file at every reset. Such a world has no
ground-truth renderer, so it takes a memory camera (``reprojection`` publishes depth too), and
its frames fix the image size and field of view (``width``, ``height`` and ``fov`` are then
ignored, with a warning). To drive a recorded world's frames between a MiniWorld scene's walls
instead, name the scene (``scene:=OneRoom``). A world file without a map (a memory saved by
``save_world``) has no geometry: with ``scene:=FILE`` the node starts at its first stored frame
and moves without collisions; ``reset`` reloads the file.

Recording. With ``record_bag`` set to a new directory, everything the node publishes is also
written to a rosbag2 bag (MCAP by default, see :mod:`rtfm_env.ros.bag`), finished when the
node shuts down.

Bad input never stops the node: a non-finite command stops the robot and is logged, a finite
but excessive one is clamped to ``max_linear_speed`` / ``max_angular_speed``, a malformed
``set_pose`` is logged and ignored, and a failed ``save_world`` / ``load_world`` answers
``success=False`` with the reason while frames keep coming. Logs of bad input are throttled
(one line per kind every :data:`LOG_THROTTLE_S` seconds, counting the lines held back), so a
flood of malformed messages costs the node little. Every parameter is checked
(:func:`parameter_problem`: type, finiteness, range; ``world_path`` as :func:`world_path_problem`):
a run-time set of a bad value is refused (``successful=False`` with the reason) and the old
value stays, and a malformed request to the parameter service is answered, not raised. A bad
start configuration (a parameter out of range, unknown scene, missing checkpoint or world file,
a parameter the camera does not take, an existing bag path) is logged and the process exits
with status 2. SIGINT and SIGTERM stop the node between frames and exit 0.

Rendering happens in the spin thread, which is the thread that created the scene's GL
context; the node must therefore run in a single-threaded executor (``main`` does).

Run it with ``rtfm-camera --ros-args -p scene:=Maze -p rate_hz:=10.0`` from the virtualenv, or
``ros2 run rtfm_ros camera_node`` in a ROS 2 install.
"""

from __future__ import annotations

import math
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import torch
import transforms3d
from geometry_msgs.msg import PoseStamped, TransformStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, NameValidationException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from rtfm_env import worlds
from rtfm_env.cameras import CAMERAS, Camera, MemoryCamera, make_camera
from rtfm_env.geometry import (
    RobotState,
    apply_velocity,
    invert_pose,
    pose_to_state,
    ros_to_world,
    state_to_odom,
    world_to_ros,
)
from rtfm_env.ros.bag import STORAGE, BagError, BagRecorder
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.base import Scene
from rtfm_env.scenes.recorded import NoFreeSpaceError, RecordedScene

__all__ = [
    "CameraNode",
    "Param",
    "PARAMETERS",
    "CAMERA_ONLY_PARAMETERS",
    "MEMORY_CAMERAS",
    "main",
    "is_world_file",
    "depth_image_msg",
    "transform_msg",
    "STARTUP_ERROR_EXIT",
    "BOUNDS",
    "parameter_problem",
    "world_path_problem",
    "spin_until_stopped",
]

STARTUP_ERROR_EXIT = 2  # process exit status when the node's parameters cannot start a simulation
LOG_THROTTLE_S = 2.0  # seconds between repeats of one bad-input log line
LEVEL_TOLERANCE = 1e-3  # |sin| of roll/pitch accepted in a set_pose: the base stays on the floor


@dataclass(frozen=True)
class Bound:
    """The interval a numeric parameter must lie in; ``low_open`` / ``high_open`` exclude that end."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        """Whether ``value`` (finite) lies in the interval."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        """The interval in the usual notation, e.g. ``(0, 1000]``."""
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


#: Ranges of the numeric parameters. Sizes are bounded so that a typo cannot ask for gigabytes
#: (a 1024x1024 frame is 3 MiB, already 256 times the default 64x64 frames); speeds to far
#: beyond any indoor robot's, so that no command drives the pose towards an overflow; the rest
#: to what the cameras and MiniWorld can use. ``ros2 param describe`` shows each range.
BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, 2**31 - 1),  # MiniWorld / numpy layout seeds
    "k": Bound(0, 64),  # context frames per generated frame; the shipped models attend to far fewer
    "sampling_steps": Bound(0, 1000),
    "torch_threads": Bound(0, 256),
    "rate_hz": Bound(0.0, 1000.0, low_open=True),
    "width": Bound(1, 1024),
    "height": Bound(1, 1024),
    "fov": Bound(0.0, 180.0, low_open=True, high_open=True),  # a pinhole camera sees less than 180 degrees
    "max_linear_speed": Bound(0.0, 100.0),  # m/s; 0 holds the robot still
    "max_angular_speed": Bound(0.0, 100.0),  # rad/s
    "cmd_vel_timeout": Bound(0.0, 3600.0),  # s; 0 keeps the last command
}
#: How parameter_problem names the type a parameter takes.
_ROS_TYPE = {
    bool: "a bool",
    int: "an integer",
    float: "a double (a number with a decimal point: 2.0, not 2)",
    str: "a string",
}
MAX_STRING_LENGTH = 4096  # characters of a string parameter (PATH_MAX on Linux)
FRAME_PARAMETERS = ("odom_frame", "base_frame", "camera_frame")


@dataclass(frozen=True)
class Param:
    """One ROS parameter of the node: default value, description, and whether it is fixed at start."""

    default: Any
    description: str
    read_only: bool = True


#: Names of the cameras that see a world through a spatial memory (``world``, save/load_world).
MEMORY_CAMERAS: tuple[str, ...] = tuple(sorted(n for n, c in CAMERAS.items() if issubclass(c, MemoryCamera)))

#: The node's parameters. The launch file declares an argument for each of the main ones.
PARAMETERS: dict[str, Param] = {
    "scene": Param(
        "MiniWorld-OneRoom-v0",
        "MiniWorld env id or short name (e.g. Maze) of the simulated world, or a world file (a memory camera: "
        f"{', '.join(MEMORY_CAMERAS)}): with a free-space map (rtfm-env world build) the robot collides with its "
        "grid, without one it moves without walls",
    ),
    "seed": Param(0, "layout seed of the scene; reset returns to this layout's start"),
    "camera": Param("ground_truth", f"what renders frames: one of {sorted(CAMERAS)}"),
    "world": Param(
        "",
        "what a memory camera's memory holds at start and reset: a regime (image, walk, scan) or a world file; "
        f"empty: the camera's default ({worlds.DEFAULT_WORLD}). Memory cameras: {', '.join(MEMORY_CAMERAS)}. "
        "A world file with a free-space map is also the scene, unless scene is set",
    ),
    "checkpoint": Param("", "frame-model checkpoint directory (camera=model); empty uses the shipped one"),
    "k": Param(
        0,
        "context frames per frame (camera=model: generated from; camera=reprojection: warped); "
        "0 uses the camera's default",
    ),
    "sampling_steps": Param(0, "Euler sampling steps of the frame model; 0 uses the checkpoint's default"),
    "torch_threads": Param(
        1, "CPU threads of torch (camera=model or reprojection); 0 keeps torch's default of one per core"
    ),
    "compile_model": Param(
        False,
        "run the frame model through torch.compile (camera=model): faster frames after seconds of compiling at "
        "start-up; needs g++",
    ),
    "rate_hz": Param(10.0, "frames per second; cmd_vel is integrated over one frame period per frame"),
    "width": Param(64, "image width, pixels"),
    "height": Param(64, "image height, pixels"),
    "fov": Param(60.0, "vertical field of view, degrees"),
    "camera_namespace": Param("camera", "namespace of image_raw, camera_info and pose (relative, remappable)"),
    "odom_frame": Param("odom", "frame id of the odometry frame (REP-105)"),
    "base_frame": Param("base_link", "frame id of the robot base (x forward, y left, z up)"),
    "camera_frame": Param("camera_optical_frame", "frame id of the optical frame (z forward, x right, y down)"),
    "reliable_images": Param(False, "publish image_raw and camera_info with reliable QoS instead of sensor-data QoS"),
    "twist_stamped": Param(False, "cmd_vel carries geometry_msgs/TwistStamped instead of Twist"),
    "max_linear_speed": Param(2.0, "m/s; larger |linear.x| commands are clamped", read_only=False),
    "max_angular_speed": Param(math.pi, "rad/s; larger |angular.z| commands are clamped", read_only=False),
    "cmd_vel_timeout": Param(
        0.5, "seconds without cmd_vel after which the robot stops; 0 keeps the last command", read_only=False
    ),
    "world_path": Param(
        "",
        f"safetensors file that save_world writes and load_world reads (a memory camera: {', '.join(MEMORY_CAMERAS)})",
        read_only=False,
    ),
    "publish_depth": Param(
        True,
        "publish <camera_namespace>/depth/image_raw (32FC1 metres, REP-118) and depth/camera_info where the "
        "camera has depth",
    ),
    "publish_tf": Param(True, "publish /tf odom->base_link and /tf_static base_link->camera (needs tf2_ros)"),
    "publish_clock": Param(
        False, "publish /clock with simulated time (1/rate_hz per frame) and stamp messages with it"
    ),
    "record_bag": Param("", "directory of a new rosbag2 bag recording all the node publishes; empty records none"),
    "bag_storage": Param("mcap", f"storage of record_bag: one of {sorted(STORAGE)}"),
}


#: Parameters that only some cameras take -> those cameras. Set to anything but its default for
#: another camera, such a parameter stops the node at start (it would silently do nothing).
CAMERA_ONLY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "world": MEMORY_CAMERAS,
    "checkpoint": ("model",),
    "k": ("model", "reprojection"),
    "sampling_steps": ("model",),
    "torch_threads": ("model", "reprojection"),
    "compile_model": ("model",),
}


#: Kernel file systems whose "files" are views of processes and devices, never a place to save a world.
_VIRTUAL_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def world_path_problem(value: object) -> str | None:
    """Why ``value`` cannot be the ``world_path`` that ``save_world`` writes, or None if it can.

    Empty means unset. Otherwise the path (``~`` expanded) must be a regular file or a symlink
    to one, or not exist yet inside an existing directory: a device, directory, FIFO, socket or
    dangling symlink would be replaced or written through by a save.
    """
    if not isinstance(value, str):
        return f"world_path must be a string, got {type(value).__name__} {value!r}"
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_STRING_LENGTH or "\0" in text:
        return f"world_path must be a path of at most {MAX_STRING_LENGTH} characters without NUL bytes"
    path = Path(text).expanduser()
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to a regular file is that file
    except FileNotFoundError:
        if os.path.islink(path):
            return f"world_path {path} is a symlink to nothing ({os.readlink(path)}); point it at a regular file"
        if not path.parent.is_dir():
            return f"world_path {path}: its directory {path.parent} does not exist"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"world_path {path}: its directory {path.parent} is not writable"
        return _virtual_problem(path)
    except NotADirectoryError:
        return f"world_path {path}: a part of {path.parent} is a file, not a directory"
    except OSError as e:
        return f"world_path {path} cannot be checked: {e}"
    if not stat.S_ISREG(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "device, FIFO or socket"
        return f"world_path {path} exists and is a {kind}, not a regular file: save_world would replace it"
    return _virtual_problem(path)


def _virtual_problem(path: Path) -> str | None:
    """Why ``path`` (a regular file or a new one) cannot take a world: it lies in /proc, /sys or /dev."""
    resolved = Path(os.path.realpath(path))
    if any(resolved.is_relative_to(root) for root in _VIRTUAL_FILE_SYSTEMS):
        return f"world_path {path} lies in a virtual file system ({resolved}); give a file on a disk"
    return None


def parameter_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be the value of the node parameter ``name``, or None if it can.

    Checks the type (the default's; a bool is not an int), finiteness and :data:`BOUNDS` of
    numbers, the length of strings, the frame ids and the ``world_path``. The checks that need
    more than the value (an existing scene, a camera's own parameters) happen at start.
    """
    if name not in PARAMETERS:
        return f"{name} is not a parameter of the camera node; parameters: {sorted(PARAMETERS)}"
    expected = type(PARAMETERS[name].default)
    if type(value) is not expected:
        return f"{name} must be {_ROS_TYPE[expected]}, got {type(value).__name__} {value!r}"
    if expected in (int, float):
        if not math.isfinite(value):
            return f"{name} must be finite, got {value!r}"
        bound = BOUNDS.get(name)
        if bound is not None and value not in bound:
            return f"{name} must be in {bound}, got {value!r}"
    elif expected is str:
        if name == "world_path":
            return world_path_problem(value)
        if len(value) > MAX_STRING_LENGTH or "\0" in value:
            return f"{name} must be at most {MAX_STRING_LENGTH} characters without NUL bytes"
        if name in FRAME_PARAMETERS and (not value.strip() or any(c.isspace() for c in value)):
            return f"{name} must be a frame id without spaces, got {value!r}"
    return None


def is_world_file(scene: str) -> bool:
    """Whether a ``scene`` parameter names a saved world file rather than a MiniWorld env id.

    MiniWorld ids (``MiniWorld-Maze-v0``) and short names (``Maze``) have neither a directory
    part nor a suffix, so any name with one is a file (``world.rtfm``, ``./world.rtfm``,
    ``/tmp/w``), and so is the name of an existing file.
    """
    if not scene:
        return False
    path = Path(scene).expanduser()
    return "/" in scene or os.sep in scene or bool(path.suffix) or path.is_file()


def depth_image_msg(depth: np.ndarray, header: Any) -> Image:
    """A sensor_msgs/Image of (H, W) depth in metres: 32FC1 little-endian, REP-118.

    NaN (no valid value) and +inf (nothing hit) pass through; zero, negative and -inf values,
    which no camera should give, become NaN.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    depth = np.where(depth > 0.0, depth, np.float32(np.nan)).astype("<f4")  # NaN > 0 is False: stays NaN
    h, w = depth.shape
    msg = Image()
    msg.header = header
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = h, w, "32FC1", 0, 4 * w
    msg.data = np.ascontiguousarray(depth).tobytes()
    return msg


def _quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    w, x, y, z = transforms3d.quaternions.mat2quat(rotation)
    return float(x), float(y), float(z), float(w)


def _fill_pose(msg_pose: Any, matrix: np.ndarray) -> None:
    """Write a 4x4 rigid transform into a geometry_msgs/Pose."""
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = (float(v) for v in matrix[:3, 3])
    o = msg_pose.orientation
    o.x, o.y, o.z, o.w = _quaternion_xyzw(matrix[:3, :3])


def transform_msg(matrix: np.ndarray, parent: str, child: str, stamp: Any) -> TransformStamped:
    """A geometry_msgs/TransformStamped of the rigid 4x4 pose of ``child`` in ``parent``."""
    t = TransformStamped()
    t.header.stamp, t.header.frame_id, t.child_frame_id = stamp, parent, child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in matrix[:3, 3])
    r = t.transform.rotation
    r.x, r.y, r.z, r.w = _quaternion_xyzw(matrix[:3, :3])
    return t


class ThrottledLog:
    """Logs at most one line per key every ``period`` seconds, saying how many it held back.

    rclpy's ``throttle_duration_sec`` also throttles, but silently: an operator cannot tell one
    bad message from a flood of them. Holding a line back costs a dictionary lookup, so a
    flood of malformed messages costs the node next to nothing in logging.

    Args:
        logger: an rclpy logger.
        period: seconds between two lines of one key.
    """

    def __init__(self, logger: Any, period: float) -> None:
        self._logger, self._period = logger, period
        self._state: dict[str, tuple[float, int]] = {}  # key -> (time of the last line, lines held back)

    def __call__(self, key: str, level: str, message: str) -> bool:
        """Log ``message`` at ``level`` (``info``, ``warning``, ``error``) unless ``key`` logged recently.

        Returns:
            whether the line was logged.
        """
        now = time.monotonic()
        last, held = self._state.get(key, (-math.inf, 0))
        if now - last < self._period:
            self._state[key] = (last, held + 1)
            return False
        if held:
            message += f" (and {held} more like it in the last {now - last:.1f} s)"
        # One call site per severity: rclpy's logger refuses one site logging at several severities.
        if level == "error":
            self._logger.error(message)
        elif level == "warning":
            self._logger.warning(message)
        else:
            self._logger.info(message)
        self._state[key] = (now, 0)
        return True


class StartupError(RuntimeError):
    """The node's parameters cannot start a simulation (unknown scene, missing checkpoint, ...)."""


class CameraNode(Node):
    """Publishes a simulated camera's frames, depth, camera info, odometry and pose, driven by cmd_vel.

    Args:
        node_name: the ROS node name.
        **kwargs: passed to :class:`rclpy.node.Node` (e.g. ``parameter_overrides``).

    Attributes:
        scene: the MiniWorld scene (walls and ground truth), the recorded world of a world file
            with a free-space map, or None when ``scene`` names a world file without a map.
        world_file: the world file the robot moves in (``scene:=FILE``, or ``world:=FILE`` with a
            map), or None.
        camera: what renders the frames.
        depth: whether the node publishes depth (``publish_depth`` and the camera has depth).
        state: the robot's current state in the world frame.
        intrinsics: the intrinsics that camera_info describes.
        frames_published: frames published since the start.

    Raises:
        StartupError: a parameter names an unknown scene or camera, a checkpoint or world file
            that cannot be loaded, an existing bag path, or an invalid size, rate or field of
            view, or a parameter is set that the camera does not take.
    """

    def __init__(self, node_name: str = "rtfm_camera", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.scene: Scene | None = None
        self.camera: Camera | None = None
        self._bag: BagRecorder | None = None
        for name, p in PARAMETERS.items():
            bound = f" (range {BOUNDS[name]})" if name in BOUNDS else ""
            descriptor = ParameterDescriptor(description=p.description + bound, read_only=p.read_only)
            try:
                self.declare_parameter(name, p.default, descriptor)
            except InvalidParameterTypeException as e:
                raise StartupError(f"parameter {name} must be a {type(p.default).__name__}: {e}") from e
        par = {name: self.get_parameter(name).value for name in PARAMETERS}
        problems = [why for name, value in par.items() if (why := parameter_problem(name, value)) is not None]
        if problems:
            raise StartupError("; ".join(problems))
        self._throttle = ThrottledLog(self.get_logger(), LOG_THROTTLE_S)
        # The run-time parameters, as last accepted: read on every cmd_vel and frame.
        self._live = {name: par[name] for name, p in PARAMETERS.items() if not p.read_only}
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._guard_parameter_services()
        self._frames = {k: str(par[k]) for k in FRAME_PARAMETERS}
        self.rate_hz = float(par["rate_hz"])
        self.dt = 1.0 / self.rate_hz  # seconds of motion integrated per frame
        self._dt_ns = round(1e9 / self.rate_hz)  # simulated nanoseconds per frame (/clock)
        self.publish_clock = bool(par["publish_clock"])
        if self.publish_clock and self.get_parameter("use_sim_time").value:
            raise StartupError(
                "publish_clock and use_sim_time are both true: the node would wait for the /clock it publishes "
                "itself; set use_sim_time:=true only on the nodes that follow this one's /clock"
            )
        if par["bag_storage"] not in STORAGE:
            raise StartupError(f"unknown bag_storage {par['bag_storage']!r}; valid: {sorted(STORAGE)}")
        scene_name = str(par["scene"]).strip()
        # Absolute, so that logs and reset name the file the node read whatever the reader's directory.
        self.world_file = Path(scene_name).expanduser().absolute() if is_world_file(scene_name) else None
        self.world_name = str(self.world_file) if self.world_file is not None else scene_name
        self.seed = int(par["seed"])

        self.scene, self.camera = self._make_world(par)
        self.depth = bool(par["publish_depth"]) and self.camera.has_depth
        try:
            self.state = self._start()
        except (OSError, ValueError, RuntimeError) as e:
            self.destroy_node()
            raise StartupError(f"cannot start {self.world_name}: {e}") from e
        if self.scene is not None:
            self.world_name = self.scene.env_id
        self.intrinsics = self.camera.intrinsics
        asked = (par["width"], par["height"], par["fov"])
        # The field of view compares to a billionth: a world built from a bag recovers it from
        # CameraInfo's focal length, a few ulps from the value that was published.
        same_fov = math.isclose(par["fov"], self.intrinsics.fov_y, rel_tol=1e-9)
        if (par["width"], par["height"]) != (self.intrinsics.width, self.intrinsics.height) or not same_fov:
            self.get_logger().warning(
                f"the world file's frames are {self.intrinsics.width}x{self.intrinsics.height} with a "
                f"{self.intrinsics.fov_y:g} degree field of view: they override width, height and fov {asked}"
            )
        # base_link -> optical frame of a camera at floor height and no pitch, taken from the
        # geometry module's own conversions so that set_pose inverts exactly what odom publishes.
        ref = RobotState(0.0, 0.0, 0.0, cam_height=0.0)
        self._base_to_floor_optical = invert_pose(state_to_odom(ref)) @ world_to_ros(ref.pose())
        # base_link -> this robot's optical frame (height and pitch never change): /tf_static.
        self._base_to_optical = invert_pose(state_to_odom(self.state)) @ world_to_ros(self.state.pose())

        self._cmd = (0.0, 0.0)  # (v m/s, omega rad/s) applied at each frame
        self._cmd_time = self.get_clock().now()
        self._last_twist = (0.0, 0.0)  # what the robot actually did in the last frame
        self._sim_ns = 0  # simulated time of the last frame (publish_clock)
        self.frames_published = 0

        image_qos = (
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            if par["reliable_images"]
            else qos_profile_sensor_data
        )
        ns = str(par["camera_namespace"]).strip("/")
        prefix = f"{ns}/" if ns else ""
        try:
            self.image_pub = self.create_publisher(Image, f"{prefix}image_raw", image_qos)
        except NameValidationException as e:
            self.destroy_node()
            raise StartupError(f"camera_namespace {par['camera_namespace']!r} is not a valid ROS namespace: {e}") from e
        self.info_pub = self.create_publisher(CameraInfo, f"{prefix}camera_info", image_qos)
        self.depth_pub = self.depth_info_pub = None
        if self.depth:
            self.depth_pub = self.create_publisher(Image, f"{prefix}depth/image_raw", image_qos)
            self.depth_info_pub = self.create_publisher(CameraInfo, f"{prefix}depth/camera_info", image_qos)
        elif par["publish_depth"]:
            self.get_logger().info(
                f"not publishing {prefix}depth/image_raw: camera {par['camera']} gives no depth "
                f"(cameras with depth: {sorted(n for n, c in CAMERAS.items() if c.has_depth)})"
            )
        self.pose_pub = self.create_publisher(PoseStamped, f"{prefix}pose", 10)
        self.odom_pub = self.create_publisher(Odometry, "odom", 10)
        # /clock is absolute by convention: every node of the graph reads the same one.
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        if par["twist_stamped"]:
            self.create_subscription(TwistStamped, "cmd_vel", lambda m: self._on_twist(m.twist), 10)
        else:
            self.create_subscription(Twist, "cmd_vel", self._on_twist, 10)
        self.create_subscription(PoseStamped, "set_pose", self._on_set_pose, 10)
        self.create_service(Trigger, "reset", self._on_reset)
        self.create_service(Trigger, "save_world", self._on_save_world)
        self.create_service(Trigger, "load_world", self._on_load_world)
        if par["record_bag"]:
            try:
                self._bag = BagRecorder(str(par["record_bag"]), str(par["bag_storage"]))
            except BagError as e:
                self.destroy_node()
                raise StartupError(str(e)) from e
            for stale in self._bag.removed_stale:
                self.get_logger().info(f"removed {stale}, the staging directory of a recording that was killed")
        self._tf = self._make_tf_broadcaster(bool(par["publish_tf"]), prefix)
        self.timer = self.create_timer(self.dt, self._on_timer)
        world = ""
        if isinstance(self.camera, MemoryCamera):
            source = self.world_file if self.world_file is not None else self.camera.world
            world = f" world={source} ({len(self.camera.memory)} frames)"
        self.get_logger().info(
            f"{self.world_name} camera={par['camera']}{world} at {self.rate_hz:g} Hz, "
            f"{self.intrinsics.width}x{self.intrinsics.height}{' with depth' if self.depth else ''}, "
            f"start ({self.state.x:.2f}, {self.state.z:.2f})"
            + (f", recording to {self._bag.path}" if self._bag is not None else "")
        )

    # -- setup -----------------------------------------------------------------------------

    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Refuse a run-time set with any bad value (see :func:`parameter_problem`); the old values stay."""
        problems = []
        for param in params:
            if param.name == "use_sim_time" and (why := self._sim_time_problem(param.value)) is not None:
                problems.append(why)
            elif param.name in PARAMETERS and PARAMETERS[param.name].read_only:
                problems.append(f"{param.name} is read-only: it is fixed when the node starts")
            elif param.name in PARAMETERS and (why := parameter_problem(param.name, param.value)) is not None:
                problems.append(why)
        if not problems:
            return SetParametersResult(successful=True)
        reason = "; ".join(problems)
        self._throttle("parameter", "warning", f"parameter set refused, values unchanged: {reason}")
        return SetParametersResult(successful=False, reason=reason)

    def _sim_time_problem(self, value: object) -> str | None:
        """Why use_sim_time cannot become ``value`` now: the node's timer would wait for the /clock it publishes."""
        if value is True and getattr(self, "publish_clock", False):
            return (
                "use_sim_time cannot be true while this node publishes /clock (publish_clock): its frame timer "
                "would wait for its own clock and frames would stop"
            )
        return None

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Take accepted run-time values (already checked by :meth:`_check_parameters`)."""
        for param in params:
            if param.name in self._live:
                self._live[param.name] = param.value

    def _guard_parameter_services(self) -> None:
        """Check set_parameters requests from peers before rclpy applies them, and never raise on one.

        rclpy's parameter service converts each request with ``Parameter.from_parameter_msg``,
        which raises on an unknown type code: the exception would leave the executor and stop
        the node. It also refuses a wrong type or a read-only parameter with reasons that do not
        name the parameter. Each parameter of a request is therefore checked here first
        (:meth:`_request_problem`); a refused one is answered ``successful=False`` with the
        reason, and only the others reach rclpy (and :meth:`_check_parameters`).
        """
        for service in self.services:
            kind = service.srv_name.rsplit("/", 1)[-1]
            if kind not in ("set_parameters", "set_parameters_atomically"):
                continue
            inner = service.callback

            def guarded(request: Any, response: Any, inner: Callable = inner, kind: str = kind) -> Any:
                problems = [self._request_problem(p) for p in request.parameters]
                refused = [why for why in problems if why is not None]
                if refused:
                    self._throttle("parameter", "warning", f"parameter set refused, values unchanged: {refused[0]}")
                if kind == "set_parameters_atomically":
                    if refused:
                        response.result = SetParametersResult(successful=False, reason="; ".join(refused))
                        return response
                    return inner(request, response)
                # set_parameters: each parameter on its own, answers in the order asked.
                passed = [p for p, why in zip(request.parameters, problems, strict=True) if why is None]
                answers = iter(inner(type(request)(parameters=passed), type(response)()).results if passed else [])
                response.results = [
                    next(answers) if why is None else SetParametersResult(successful=False, reason=why)
                    for why in problems
                ]
                return response

            service.callback = guarded

    def _request_problem(self, msg: Any) -> str | None:
        """Why one rcl_interfaces/Parameter of a peer's request must be refused, or None to let rclpy set it."""
        try:
            param = Parameter.from_parameter_msg(msg)
        except (ValueError, TypeError) as e:
            return f"{msg.name}: malformed value (type code {msg.value.type}: {e}); nothing was set"
        if msg.name == "use_sim_time":
            return self._sim_time_problem(param.value)
        if msg.name not in PARAMETERS:
            return None  # undeclared: rclpy answers
        if PARAMETERS[msg.name].read_only:
            return f"{msg.name} is read-only: it is fixed when the node starts"
        if param.type_ == Parameter.Type.NOT_SET:
            return f"{msg.name} cannot be deleted: the node needs a value"
        return parameter_problem(msg.name, param.value)

    def _make_world(self, par: dict[str, Any]) -> tuple[Scene | None, Camera]:
        name = str(par["camera"])
        if name not in CAMERAS:
            raise StartupError(f"unknown camera {name!r}; valid cameras: {sorted(CAMERAS)}")
        world = str(par["world"]).strip()
        if name not in MEMORY_CAMERAS and world and world not in worlds.WORLD_KINDS:
            raise StartupError(
                f"world {world} is a recording: it has no ground-truth renderer; use -p camera:=reprojection or "
                f"-p camera:=model (camera is {name!r})"
            )
        self._check_camera_parameters(name, par)
        scene: Scene | None = None
        if self.world_file is not None:
            if name not in MEMORY_CAMERAS:
                raise StartupError(
                    f"scene {self.world_file} is a saved world file, a recording with no ground-truth renderer, which "
                    f"only a memory camera ({', '.join(MEMORY_CAMERAS)}) can show: add -p camera:=model or "
                    f"-p camera:=reprojection (camera is {name!r})"
                )
            if world:
                raise StartupError(
                    f"scene {self.world_file} is a world file already; the world parameter ({world!r}) applies "
                    "with a MiniWorld scene: drop one of them"
                )
            if not self.world_file.is_file():
                raise StartupError(
                    f"no saved world file at {self.world_file} (the scene parameter names a path; relative paths "
                    "are from the node's working directory)"
                )
            # A world with a free-space map is a scene with walls; a saved memory without one moves freely.
            scene = self._recorded_scene(self.world_file)
            if scene is not None:
                world = str(self.world_file)
        elif world and world not in worlds.WORLD_KINDS and str(par["scene"]).strip() == PARAMETERS["scene"].default:
            # world:=FILE with the default scene: a file with a free-space map is the scene itself.
            scene = self._recorded_scene(Path(world).expanduser())
            if scene is not None:
                self.world_file = Path(world).expanduser().absolute()
        if scene is None and self.world_file is None:
            try:
                scene = MiniWorldScene(self.world_name, int(par["width"]), int(par["height"]), float(par["fov"]))
            except (ValueError, KeyError) as e:
                raise StartupError(f"bad scene parameters: {e}") from e
        kwargs: dict[str, Any] = {}
        if world:
            kwargs["world"] = world if world in worlds.WORLD_KINDS else str(Path(world).expanduser())
        if par["k"]:
            kwargs["k"] = int(par["k"])
        if name in CAMERA_ONLY_PARAMETERS["torch_threads"] and par["torch_threads"]:
            # One thread by default: on a CPU shared with other nodes, torch's spinning worker
            # threads slow each frame down many times over (measured in docs/results/ros_node.md).
            torch.set_num_threads(int(par["torch_threads"]))
        if name == "model":
            kwargs |= {
                "checkpoint": str(par["checkpoint"]) or None,
                "steps": int(par["sampling_steps"]) or None,
                "seed": int(par["seed"]),
                "compile": bool(par["compile_model"]),
            }
            if scene is not None and worlds.world_path(kwargs.get("world")) is None:
                # The scene's frame size, unless a world file brings its own.
                kwargs["resolution"] = (int(par["height"]), int(par["width"]))
        try:
            camera = make_camera(name, **kwargs)
        except (ValueError, OSError, RuntimeError) as e:
            if scene is not None:
                scene.close()
            raise StartupError(f"cannot make camera {name!r}: {e}") from e
        return scene, camera

    @staticmethod
    def _recorded_scene(path: Path) -> RecordedScene | None:
        """The recorded world in the world file ``path``, or None when the file has no free-space map.

        Raises:
            StartupError: no such file, or a file that is not a readable world.
        """
        if not path.is_file():
            raise StartupError(
                f"no world file at {path} (relative paths are from the node's working directory; regimes: "
                f"{', '.join(worlds.WORLD_KINDS)})"
            )
        try:
            return RecordedScene(path)
        except NoFreeSpaceError:
            return None
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot read the world in {path}: {e}") from e

    @staticmethod
    def _check_camera_parameters(camera: str, par: dict[str, Any]) -> None:
        """Refuse a parameter set for a camera that does not take it (see :data:`CAMERA_ONLY_PARAMETERS`)."""
        for name, cameras in CAMERA_ONLY_PARAMETERS.items():
            if camera not in cameras and par[name] != PARAMETERS[name].default:
                raise StartupError(
                    f"parameter {name} ({par[name]!r}) applies only to camera {' or '.join(cameras)}, and camera is "
                    f"{camera!r}: drop -p {name}:=... or choose one of those cameras, e.g. -p camera:={cameras[0]}"
                )

    def _start(self) -> RobotState:
        """Put the camera at the start and return the robot's start state.

        The start is the scene's for ``seed``, or, for a saved world, the pose of the world's
        first stored frame after (re)loading the file.
        """
        if self.scene is not None:
            state = self.scene.reset(self.seed)
            reset = self.camera.reset_rgbd if self.depth else self.camera.reset
            reset(self.scene, state.pose(), seed=self.seed)
            return state
        self.camera.load_world(self.world_file)
        self.camera.reseed(self.seed)
        memory = self.camera.memory
        return pose_to_state(memory.poses([int(memory.ids.min())])[0])

    def _make_tf_broadcaster(self, wanted: bool, prefix: str) -> Any:
        """A tf2_ros TransformBroadcaster after sending /tf_static, or None (not wanted or no tf2_ros)."""
        if not wanted:
            return None
        try:
            from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster
        except ImportError as e:
            self.get_logger().info(
                f"not publishing /tf: tf2_ros is not importable ({e}); it comes with a ROS 2 install, not with "
                f"the PyPI wheels. odom and {prefix}pose carry the same transforms"
            )
            return None
        static = transform_msg(
            self._base_to_optical,
            self._frames["base_frame"],
            self._frames["camera_frame"],
            self.get_clock().now().to_msg(),
        )
        self._tf_static = StaticTransformBroadcaster(self)  # kept alive: /tf_static is latched by its publisher
        self._tf_static.sendTransform(static)
        self._record_tf("/tf_static", static)
        return TransformBroadcaster(self)

    # -- callbacks -------------------------------------------------------------------------

    def _on_twist(self, msg: Twist) -> None:
        v, omega = float(msg.linear.x), float(msg.angular.z)
        self._cmd_time = self.get_clock().now()
        if not (math.isfinite(v) and math.isfinite(omega)):
            self._cmd = (0.0, 0.0)
            bad = f"cmd_vel with non-finite values (linear.x={v}, angular.z={omega}): stopping the robot"
            self._throttle("cmd_vel", "error", bad)
            return
        vmax, wmax = self._live["max_linear_speed"], self._live["max_angular_speed"]  # checked: finite, >= 0
        if abs(v) > vmax or abs(omega) > wmax:
            self._throttle(
                "cmd_vel_limit",
                "warning",
                f"cmd_vel (linear.x={v:.3g}, angular.z={omega:.3g}) beyond the limits ({vmax:g} m/s, {wmax:g} rad/s):"
                " clamped",
            )
        self._cmd = (float(np.clip(v, -vmax, vmax)), float(np.clip(omega, -wmax, wmax)))

    def _on_set_pose(self, msg: PoseStamped) -> None:
        try:
            self.state = self._state_from_base_pose(msg)
        except ValueError as e:
            self._throttle("set_pose", "error", f"set_pose ignored: {e}")
            return
        self._cmd = (0.0, 0.0)
        # Throttled too: a peer may stream valid poses as fast as malformed ones.
        self._throttle(
            "teleport", "info", f"teleported to ({self.state.x:.2f}, {self.state.z:.2f}, yaw {self.state.yaw:.2f})"
        )

    def _state_from_base_pose(self, msg: PoseStamped) -> RobotState:
        frame = msg.header.frame_id
        if frame not in ("", self._frames["odom_frame"]):
            raise ValueError(f"pose is in frame {frame!r}; set_pose takes {self._frames['odom_frame']!r}")
        p, o = msg.pose.position, msg.pose.orientation
        vals = np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], dtype=np.float64)
        if not np.isfinite(vals).all():
            raise ValueError(f"pose has NaN or infinite values: {vals.tolist()}")
        norm = float(np.linalg.norm(vals[3:]))
        if not 0.9 < norm < 1.1:
            raise ValueError(f"orientation quaternion has norm {norm:.3g}, not 1")
        rot = transforms3d.quaternions.quat2mat(vals[3:] / norm)
        if abs(rot[2, 0]) > LEVEL_TOLERANCE or abs(rot[2, 1]) > LEVEL_TOLERANCE:
            raise ValueError("orientation has roll or pitch; the base moves on the floor (rotate about z only)")
        base = np.eye(4)
        base[:3, :3], base[:3, 3] = rot, vals[:3]
        floor = pose_to_state(ros_to_world(base @ self._base_to_floor_optical))
        state = self.state.replace(x=floor.x, z=floor.z, yaw=floor.yaw)
        if self.scene is not None and not self.scene.is_free(state.x, state.z):
            raise ValueError(f"({p.x:.2f}, {p.y:.2f}) in {frame or 'odom'} is not free space (a wall or outside)")
        return state

    def _answer(self, response: Trigger.Response, success: bool, message: str) -> Trigger.Response:
        """Fill a Trigger response and log its message (an error when it failed)."""
        response.success, response.message = success, message
        if success:
            self.get_logger().info(message)
        else:
            # Each caller gets its reason in the response; the log is throttled against a flood of calls.
            self._throttle(f"service:{message.split(' ', 1)[0]}", "error", message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            state = self._start()
        except (OSError, ValueError) as e:
            return self._answer(response, False, f"reset failed, the robot stays where it is: {e}")
        self.state, self._cmd = state, (0.0, 0.0)
        self.intrinsics = self.camera.intrinsics
        return self._answer(
            response, True, f"reset {self.world_name} seed {self.seed} to ({self.state.x:.3f}, {self.state.z:.3f})"
        )

    def _world_file_parameter(self) -> Path:
        """The world_path parameter as a path, checked again now (the file system may have changed since the set)."""
        path = str(self._live["world_path"]).strip()
        if not path:
            raise ValueError(
                f"the world_path parameter is empty; set it first: ros2 param set {self.get_fully_qualified_name()} "
                "world_path /path/to/world.safetensors"
            )
        if (why := world_path_problem(path)) is not None:
            raise ValueError(why)
        return Path(path).expanduser()

    def _no_world_reason(self) -> str | None:
        """Why this node has no stored world to save or load, or None when it has one."""
        if isinstance(self.camera, MemoryCamera):
            return None
        return (
            f"camera {type(self.camera).__name__} has no generated world: its frames are scene {self.world_name} "
            f"(seed {self.seed}) rendered directly, and that id and seed re-create it exactly; start the node with "
            f"a memory camera ({', '.join(MEMORY_CAMERAS)}: camera:=model, for instance) to save and load the worlds "
            "it sees"
        )

    def _on_save_world(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if (why := self._no_world_reason()) is not None:
            return self._answer(response, False, f"save_world: {why}")
        try:
            path = self._world_file_parameter()
        except ValueError as e:
            return self._answer(response, False, f"save_world failed: {e}")
        try:
            self.camera.save_world(path)  # atomic: a failure leaves any file at path as it was
        except (OSError, ValueError, RuntimeError) as e:
            return self._answer(response, False, f"save_world failed, nothing written to {path}: {e}")
        return self._answer(response, True, f"saved the world ({len(self.camera.memory)} frames) to {path}")

    def _on_load_world(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if (why := self._no_world_reason()) is not None:
            return self._answer(response, False, f"load_world: {why}")
        try:
            path = self._world_file_parameter()
        except ValueError as e:
            return self._answer(response, False, f"load_world failed: {e}")
        try:
            self.camera.load_world(path)  # replaces the memory only once the file has been read and checked
        except (OSError, ValueError) as e:
            return self._answer(response, False, f"load_world failed, the world is unchanged ({path}): {e}")
        self.intrinsics = self.camera.intrinsics
        return self._answer(response, True, f"loaded the world ({len(self.camera.memory)} frames) from {path}")

    def _on_timer(self) -> None:
        timeout = self._live["cmd_vel_timeout"]  # checked: finite, >= 0
        now = self.get_clock().now()
        if timeout > 0 and (now - self._cmd_time).nanoseconds * 1e-9 > timeout:
            self._cmd = (0.0, 0.0)
        v, omega = self._cmd
        if self.scene is None:  # a saved world has no walls
            self.state, collided = apply_velocity(self.state, v, omega, self.dt), False
        else:
            self.state, collided = self.scene.move(self.state, (v, omega, self.dt))
        self._last_twist = (0.0 if collided else v, omega)
        poses = self.state.pose()[None]
        if self.depth:
            frames, depths = self.camera.observe_rgbd(poses)
            frame, depth = frames[0], depths[0]
        else:
            frame, depth = self.camera.observe(poses)[0], None
        if self.publish_clock:
            self._sim_ns += self._dt_ns
            stamp = Time(nanoseconds=self._sim_ns).to_msg()
        else:
            stamp = now.to_msg()
        self.publish(frame, stamp, depth)

    # -- output ----------------------------------------------------------------------------

    def publish(self, frame: np.ndarray, stamp: Any, depth: np.ndarray | None = None) -> None:
        """Publish one frame with its camera info, depth, odometry, pose, /tf and /clock, all with ``stamp``.

        ``depth`` ((H, W) metres) is published when the node publishes depth; None sends none.
        """
        h, w = frame.shape[:2]
        image = Image()
        image.header.stamp, image.header.frame_id = stamp, self._frames["camera_frame"]
        image.height, image.width, image.encoding, image.is_bigendian, image.step = h, w, "rgb8", 0, 3 * w
        image.data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()

        info = CameraInfo()
        info.header = image.header
        info.height, info.width, info.distortion_model = h, w, "plumb_bob"
        k = self.intrinsics.K
        info.k = k.ravel().tolist()
        info.p = np.hstack([k, np.zeros((3, 1))]).ravel().tolist()
        info.r = np.eye(3).ravel().tolist()
        info.d = [0.0] * 5

        odom_to_base = state_to_odom(self.state)
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = stamp, self._frames["odom_frame"]
        odom.child_frame_id = self._frames["base_frame"]
        _fill_pose(odom.pose.pose, odom_to_base)
        odom.twist.twist.linear.x, odom.twist.twist.angular.z = self._last_twist

        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self._frames["odom_frame"]
        _fill_pose(pose.pose, world_to_ros(self.state.pose()))

        outputs = [(self.image_pub, image), (self.info_pub, info)]
        if depth is not None and self.depth_pub is not None:
            outputs += [(self.depth_pub, depth_image_msg(depth, image.header)), (self.depth_info_pub, info)]
        outputs += [(self.odom_pub, odom), (self.pose_pub, pose)]
        if self.clock_pub is not None:
            # The clock first, so a node on sim time already has this frame's time when it arrives.
            outputs.insert(0, (self.clock_pub, Clock(clock=stamp)))
        for pub, msg in outputs:
            pub.publish(msg)
            self._record(pub.topic_name, msg)
        if self._tf is not None:
            t = transform_msg(odom_to_base, self._frames["odom_frame"], self._frames["base_frame"], stamp)
            self._tf.sendTransform(t)
            self._record_tf("/tf", t)
        self.frames_published += 1

    def _record(self, topic: str, msg: Any) -> None:
        """Write a published message to the bag, if recording; a failing bag is closed, not fatal."""
        if self._bag is None or self._bag.closed:
            return
        try:
            self._bag.write(topic, msg, time.time_ns())  # log time = wall clock, as ros2 bag record
        except BagError as e:
            self.get_logger().error(f"recording stopped: {e}")
            self._close_bag()

    def _record_tf(self, topic: str, transform: TransformStamped) -> None:
        if self._bag is not None:
            from tf2_msgs.msg import TFMessage  # present wherever tf2_ros is

            self._record(topic, TFMessage(transforms=[transform]))

    def _close_bag(self) -> None:
        try:
            path = self._bag.close()
        except (BagError, OSError) as e:
            self.get_logger().error(f"the bag could not be finished: {e}")
            return
        counts = ", ".join(f"{topic} {n}" for topic, n in self._bag.counts.items())
        self.get_logger().info(f"bag written to {path}: {counts}")

    @property
    def bag_counts(self) -> dict[str, int]:
        """Messages recorded per topic (empty when not recording)."""
        return dict(self._bag.counts) if self._bag is not None else {}

    def destroy_node(self) -> None:
        """Finish the bag, release the camera and the scene's MiniWorld env, then the ROS entities."""
        if self._bag is not None and not self._bag.closed:
            self._close_bag()
        if self.camera is not None:
            self.camera.close()
        if self.scene is not None:
            self.scene.close()
        super().destroy_node()


def spin_until_stopped(node: Node, done: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> str | None:
    """Spin ``node`` until SIGINT or SIGTERM arrives, ``done()`` holds or the context shuts down.

    rclpy must have been initialised with ``SignalHandlerOptions.NO``: rclpy's own handlers
    shut the context down at once, so a frame being published when the signal arrives fails
    (an exception, exit 1) and the caller can no longer finish cleanly. Here a signal only sets
    a flag that the loop reads between callbacks; a second signal of the same kind, while
    finishing, ends the process the default way.

    Returns:
        the name of the signal that stopped the spin, or None.
    """
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C still ends a stuck shutdown

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor(context=node.context)  # one thread: GL stays on it
    executor.add_node(node)
    try:
        # Signal handlers run between callbacks: each wait lasts at most poll_s.
        while not received and not done() and node.context.ok():
            executor.spin_once(timeout_sec=poll_s)
    except ExternalShutdownException:
        pass
    finally:
        executor.remove_node(node)
        executor.shutdown()
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:  # not received: back to the caller's handler
                signal.signal(sig, handler)
    return received[0] if received else None


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C (SIGINT), SIGTERM or an external shutdown; the ``rtfm-camera`` entry point.

    Returns:
        0 on a clean shutdown, :data:`STARTUP_ERROR_EXIT` if the parameters cannot start a simulation.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    stop: list[int] = []
    # Until the spin takes over, a signal (while torch and MiniWorld load) also stops cleanly.
    early = {sig: signal.signal(sig, lambda signum, _: stop.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node = CameraNode()
        if not stop:
            spin_until_stopped(node)
    except StartupError as e:
        rclpy.logging.get_logger("rtfm_camera").error(f"cannot start: {e}")
        return STARTUP_ERROR_EXIT
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in early.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
