"""Recording what the camera node publishes as a rosbag2 bag (MCAP), and ``rtfm-env record-bag``.

:class:`BagRecorder` writes ROS messages to a rosbag2 bag with the pure-Python ``rosbags``
library, so no ROS install is needed; ``ros2 bag info``, ``ros2 bag play`` and Foxglove read the
result. The bag is written under a hidden temporary directory beside its final path and moved
into place only when it is closed, so an interrupted recording never leaves a half-written bag
under the requested name and never touches an existing one.

The camera node records when its ``record_bag`` parameter names a directory; the ``record-bag``
subcommand runs the node in-process with that parameter for a fixed time or number of frames::

    rtfm-env record-bag --out runs/maze_bag --duration 20 -p scene:=Maze -p rate_hz:=30.0
    ros2 bag info runs/maze_bag            # in a ROS install; or read it with rosbags

While it runs, the node listens to ``cmd_vel`` like any camera node, so a teleop or planner can
drive it. This module imports ``rosbags`` and ``rclpy`` only when used, so ``rtfm-env --help``
works without the ``ros`` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["BagRecorder", "BagError", "STORAGE", "add_arguments", "run"]

#: storage plugin name -> rosbags StoragePlugin member name
STORAGE: dict[str, str] = {"mcap": "MCAP", "sqlite3": "SQLITE3"}
BAG_VERSION = 9  # rosbag2 metadata version written (read by Humble and later)


class BagError(RuntimeError):
    """A bag cannot be created or finished (the path exists, the directory is not writable, ...)."""


def message_type_name(msg: Any) -> str:
    """The ROS 2 type name (``sensor_msgs/msg/Image``) of an rclpy message instance."""
    cls = type(msg)
    package, kind = cls.__module__.split(".")[:2]  # e.g. sensor_msgs.msg._image
    return f"{package}/{kind}/{cls.__name__}"


class BagRecorder:
    """Writes rclpy messages to a new rosbag2 bag; the bag appears at ``path`` on :meth:`close`.

    Args:
        path: directory of the bag to create; it must not exist.
        storage: a key of :data:`STORAGE` (``mcap`` or ``sqlite3``).

    Raises:
        BagError: ``path`` exists, its parent is not a writable directory, or ``storage`` is unknown.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGE:
            raise BagError(f"unknown bag storage {storage!r}; valid: {sorted(STORAGE)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"bag path {self.path} exists already; choose a new directory (bags are never overwritten)")
        parent = self.path.parent
        if not parent.is_dir():
            raise BagError(f"cannot record a bag at {self.path}: {parent} is not a directory")
        try:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=parent))
        except OSError as e:
            raise BagError(f"cannot record a bag at {self.path}: {e}") from e
        # The Kilted wheels publish these types; the store gives rosbags their definitions.
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(
            self._staging / self.path.name, version=BAG_VERSION, storage_plugin=StoragePlugin[STORAGE[storage]]
        )
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.closed = False

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Append one message on ``topic`` (its type is taken from ``msg``) at ``log_time_ns``."""
        from rclpy.serialization import serialize_message
        from rosbags.rosbag2 import WriterError

        if self.closed:
            raise BagError(f"bag {self.path} is closed")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, message_type_name(msg), typestore=self._typestore)
            self._connections[topic] = conn
            self.counts[topic] = 0
        try:
            self._writer.write(conn, int(log_time_ns), serialize_message(msg))
        except (OSError, WriterError) as e:
            raise BagError(f"cannot write {topic} to the bag {self.path}: {e}") from e
        self.counts[topic] += 1

    def close(self) -> Path:
        """Finish the bag (metadata.yaml) and move it to ``path``; returns ``path``.

        Raises:
            BagError: ``path`` appeared while recording; the finished bag is left in the
                staging directory named in the message.
        """
        if self.closed:
            return self.path
        self.closed = True
        self._writer.close()
        try:
            os.rename(self._staging / self.path.name, self.path)  # fails rather than replace a directory made meanwhile
        except OSError as e:
            raise BagError(f"cannot move the finished bag to {self.path} ({e}); it is at {self._staging}") from e
        shutil.rmtree(self._staging, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Stop recording and delete the unfinished bag."""
        if not self.closed:
            self.closed = True
            try:
                self._writer.close()
            finally:
                shutil.rmtree(self._staging, ignore_errors=True)


# -- rtfm-env record-bag ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtfm-env record-bag``."""
    parser.add_argument("--out", required=True, help="directory of the bag to create (must not exist)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to record (wall clock)")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: only --duration)")
    parser.add_argument("--storage", choices=sorted(STORAGE), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="a camera-node parameter, as after 'rtfm-camera --ros-args -p' (repeatable), e.g. -p scene:=Maze",
    )


def run(args: argparse.Namespace) -> int:
    """Run the camera node in-process, recording to ``args.out``; returns the exit status."""
    import rclpy

    from rtfm_env.ros.camera_node import STARTUP_ERROR_EXIT, CameraNode, StartupError

    if not (args.duration > 0 or args.frames > 0):
        raise ValueError(f"give a positive --duration or --frames, got {args.duration} and {args.frames}")
    for kv in args.param:
        if ":=" not in kv:
            raise ValueError(f"parameter {kv!r} is not NAME:=VALUE")
        if kv.split(":=", 1)[0] in ("record_bag", "bag_storage"):
            raise ValueError(f"{kv!r}: the bag is set by --out and --storage")
    ros_args = ["--ros-args", "-p", f"record_bag:={args.out}", "-p", f"bag_storage:={args.storage}"]
    for kv in args.param:
        ros_args += ["-p", kv]
    rclpy.init(args=["rtfm-env", *ros_args])
    node = None
    try:
        node = CameraNode()
        end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        while rclpy.ok() and time.monotonic() < end and not (0 < args.frames <= node.frames_published):
            rclpy.spin_once(node, timeout_sec=0.01)
    except StartupError as e:
        rclpy.logging.get_logger("rtfm_camera").error(f"cannot start: {e}")
        return STARTUP_ERROR_EXIT
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()  # finishes the bag
        rclpy.try_shutdown()
    if node is None:
        return 0
    counts = ", ".join(f"{topic} {n}" for topic, n in node.bag_counts.items())
    print(f"recorded {node.frames_published} frames to {args.out}: {counts}")
    return 0
