"""``rtfm-env record-bag``: run the camera node in-process and record what it publishes to a bag.

The command starts a :class:`~rtfm_env.ros.camera_node.CameraNode` with its ``record_bag`` and
``bag_storage`` parameters set from ``--out`` and ``--storage``, spins it for a fixed time or
number of frames, and shuts it down, which finishes the bag (:mod:`rtfm_env.ros.bag`)::

    rtfm-env record-bag --out runs/maze_bag --duration 20 -p scene:=Maze -p rate_hz:=30.0
    ros2 bag info runs/maze_bag            # in a ROS install; or read it with rosbags

Everything the node publishes is recorded: images, camera info, odometry, pose, and depth,
/clock and /tf where the node publishes them. While it runs, the node listens to ``cmd_vel``
like any camera node, so a teleop or planner can drive it.

SIGINT (Ctrl-C) or SIGTERM ends the recording early as a clean stop: the frame in progress
completes, the bag is finished, the summary is printed and the exit status is 0. A recording
killed outright leaves a staging directory, which the next recording into the same parent
directory removes (:func:`rtfm_env.ros.bag.remove_stale_staging`).

Imports go one way: this module imports :mod:`rtfm_env.ros.camera_node` (which imports
:mod:`rtfm_env.ros.bag`), and no module imports this one. It imports ``rclpy`` and the node only
in :func:`run`, so ``rtfm-env --help`` works without the ``ros`` extra.
"""

from __future__ import annotations

import argparse
import time

from rtfm_env.ros.bag import STORAGE

__all__ = ["add_arguments", "run"]

#: camera-node parameters that the command sets itself, from --out and --storage
OWN_PARAMETERS = ("record_bag", "bag_storage")


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
    """Run the camera node in-process, recording to ``args.out``; returns the exit status.

    Raises:
        ValueError: no positive ``--duration`` or ``--frames``, a ``-p`` option that is not
            ``NAME:=VALUE``, or one that sets the bag (use ``--out`` and ``--storage``).
    """
    if not (args.duration > 0 or args.frames > 0):
        raise ValueError(f"give a positive --duration or --frames, got {args.duration} and {args.frames}")
    for kv in args.param:
        if ":=" not in kv:
            raise ValueError(f"parameter {kv!r} is not NAME:=VALUE")
        if kv.split(":=", 1)[0] in OWN_PARAMETERS:
            raise ValueError(f"{kv!r}: the bag is set by --out and --storage")

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from rtfm_env.ros.camera_node import STARTUP_ERROR_EXIT, CameraNode, StartupError, spin_until_stopped

    ros_args = ["--ros-args", "-p", f"record_bag:={args.out}", "-p", f"bag_storage:={args.storage}"]
    for kv in args.param:
        ros_args += ["-p", kv]
    # Signals are handled by spin_until_stopped, between frames, rather than by rclpy, whose
    # handlers shut the context down under a frame being published (exit 1, no summary).
    rclpy.init(args=["rtfm-env", *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    node = None
    stopped_by = None
    try:
        node = CameraNode()
        end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        stopped_by = spin_until_stopped(
            node,
            done=lambda: time.monotonic() >= end or 0 < args.frames <= node.frames_published,
            poll_s=0.01,
        )
    except StartupError as e:
        rclpy.logging.get_logger("rtfm_camera").error(f"cannot start: {e}")
        return STARTUP_ERROR_EXIT
    finally:
        if node is not None:
            node.destroy_node()  # finishes the bag
        rclpy.try_shutdown()
    if node is None:
        return 0
    counts = ", ".join(f"{topic} {n}" for topic, n in node.bag_counts.items())
    early = f" (stopped early by {stopped_by})" if stopped_by else ""
    print(f"recorded {node.frames_published} frames to {args.out}{early}: {counts}", flush=True)
    return 0
