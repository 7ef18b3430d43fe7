"""``rtfm-env record-bag``: run the camera node in-process and record what it publishes to a bag.

The command starts a :class:`~rtfm_env.ros.camera_node.CameraNode` with its ``record_bag`` and
``bag_storage`` parameters set from ``--out`` and ``--storage``, spins it for a fixed time or
number of frames, and shuts it down, which finishes the bag (:mod:`rtfm_env.ros.bag`)::

    rtfm-env record-bag --out runs/maze_bag --duration 20 -p scene:=Maze -p rate_hz:=30.0
    ros2 bag info runs/maze_bag            # in a ROS install; or read it with rosbags

Everything the node publishes is recorded: images, camera info, odometry, pose, and depth,
/clock and /tf where the node publishes them.

Driving. With ``--drive none`` (the default) the node listens to ``cmd_vel`` like any camera
node, so a teleop or planner drives it, and it stands still until one does. ``--drive walk``
moves it without one, as a person recording a site would: along the exploration walk of the
``world="walk"`` regime (:func:`rtfm_env.data.trajectories.random_walk`, a random walk with
momentum that turns away from walls, started at the node's start and seeded by its ``seed``
parameter, so in a MiniWorld scene it is that layout's walk exactly). Each step of the walk
(0.25 m forward, a 15 degree turn) becomes velocity commands that the node's own ``cmd_vel``
handling takes, as fast as ``max_linear_speed`` and ``max_angular_speed`` allow at ``rate_hz``
(a step spans as few frames as those limits permit, at a constant speed), and the node moves
with its scene's collisions as always. The first frame is the start, unmoved. The drive issues
its command before every frame, so a ``cmd_vel`` from elsewhere is overridden; if the robot is
not where the walk took it (a ``set_pose``, a ``reset``, a blocked move), the walk goes on from
where it is. It needs a scene with walls (a MiniWorld scene or a world file with a free-space
map)::

    rtfm-env record-bag --out runs/ymaze_bag --duration 0 --frames 600 --drive walk \
        -p scene:=YMaze -p rate_hz:=50.0 -p max_linear_speed:=6.25 -p max_angular_speed:=6.6
    rtfm-env world build --from bag runs/ymaze_bag --out ymaze.world

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
import math
import time
from typing import Any

from rtfm_env.ros.bag import STORAGE

__all__ = ["add_arguments", "run", "DRIVES", "WalkDrive"]

#: camera-node parameters that the command sets itself, from --out and --storage
OWN_PARAMETERS = ("record_bag", "bag_storage")
#: what moves the camera during a recording: ``none`` (cmd_vel from elsewhere) or ``walk``
DRIVES = ("none", "walk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtfm-env record-bag``."""
    parser.add_argument("--out", required=True, help="directory of the bag to create (must not exist)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to record (wall clock)")
    parser.add_argument(
        "--frames", type=int, default=0,
        help="stop after this many frames (0: only --duration); whichever of the two comes first stops the "
        "recording, so give --duration 0 to stop on frames alone",
    )
    parser.add_argument("--storage", choices=sorted(STORAGE), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument(
        "--drive",
        choices=DRIVES,
        default="none",
        help="what moves the camera: none (default) waits for cmd_vel from a teleop or planner; walk drives it "
        "along the world=walk regime's exploration walk (seeded by -p seed), with velocity commands at most "
        "max_linear_speed / max_angular_speed, colliding with the scene's walls",
    )
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
            ``NAME:=VALUE``, one that sets the bag (use ``--out`` and ``--storage``), or an
            unknown ``--drive``.
    """
    drive_name = getattr(args, "drive", "none")  # a Namespace from before --drive existed
    if drive_name not in DRIVES:
        raise ValueError(f"unknown --drive {drive_name!r}; valid: {list(DRIVES)}")
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
    drive: WalkDrive | None = None
    stopped_by = None
    try:
        node = CameraNode()
        if drive_name == "walk":
            try:
                drive = WalkDrive(node)
            except ValueError as e:
                node._bag.abort()  # nothing was recorded: leave no bag behind
                raise StartupError(f"--drive walk: {e}") from e
        end = time.monotonic() + args.duration if args.duration > 0 else float("inf")

        def done() -> bool:
            if time.monotonic() >= end or 0 < args.frames <= node.frames_published:
                return True
            # Called between the executor's callbacks, so the drive's command is in place
            # before the next frame's timer fires.
            if drive is not None:
                drive()
            return False

        stopped_by = spin_until_stopped(node, done=done, poll_s=0.01)
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
    walked = ""
    if drive is not None:
        restarts = f" ({drive.restarts} restarts off the walk)" if drive.restarts else ""
        walked = f", {drive.steps} walk steps{restarts}"
    print(f"recorded {node.frames_published} frames{walked} to {args.out}{early}: {counts}", flush=True)
    return 0


class WalkDrive:
    """Drives a camera node along the ``walk`` regime's exploration walk with velocity commands.

    Call it between the executor's callbacks (``spin_until_stopped``'s ``done``). At each call it
    hands the command for the node's next frame to the node's ``cmd_vel`` callback, the same
    handling a Twist on ``cmd_vel`` gets (clamping, the timeout), and repeats it at every call so
    that ``cmd_vel_timeout`` never stops the robot between two frames. When a new frame has been
    published it moves on to the next command: the first frame stands still at the start; then
    each step of :func:`~rtfm_env.data.trajectories.random_walk` (from the node's start, seeded by
    its ``seed``) takes ``n`` frames of ``(step / (n dt), 0)`` forward or ``(0, ±turn / (n dt))``
    turning, ``n`` the fewest frames within the speed limits. Before each step the node's state is
    compared with where the walk took it; if they differ (a ``set_pose``, a ``reset``, a move
    that the node's collision test stopped part-way), the walk restarts from the node's state,
    drawing on the same random stream.

    Args:
        node: a started :class:`~rtfm_env.ros.camera_node.CameraNode`.

    Raises:
        ValueError: the node has no scene with walls (a saved world without a free-space map), or
            a speed limit is zero.
    """

    #: how far (metres, radians) the node may be from the walk's state before the walk restarts
    TOLERANCE = 1e-6

    def __init__(self, node: Any) -> None:
        import numpy as np

        from rtfm_env.data.trajectories import random_walk

        if node.scene is None:
            raise ValueError(
                f"{node.world_name} has no free-space map to walk in (a memory saved by save_world); build a world "
                "with 'rtfm-env world build', or drive with cmd_vel (--drive none)"
            )
        self._node = node
        self._random_walk = random_walk
        self._rng = np.random.default_rng(node.seed)
        self._kinematics = node.scene.kinematics
        self._limits()  # refuse zero limits now, not at the first step
        self._expected = node.state
        self._steps = random_walk(node.scene, node.state, self._rng, kinematics=self._kinematics)
        self._command = (0.0, 0.0)  # (v m/s, omega rad/s) of the current step; the first frame: the start
        self._left = 1  # frames the current command has yet to be given to
        self._frames = -1  # frames_published when the current frame's command was chosen
        #: walk steps begun so far (the recording's end may cut the last one short)
        self.steps = 0
        #: times the walk restarted because the robot was not where the walk took it
        self.restarts = 0

    def _limits(self) -> tuple[float, float]:
        """The node's speed limits (m/s, rad/s), read now: they may be set at run time."""
        vmax = float(self._node.get_parameter("max_linear_speed").value)
        wmax = float(self._node.get_parameter("max_angular_speed").value)
        if not (vmax > 0 and wmax > 0):
            raise ValueError(
                f"the walk needs max_linear_speed and max_angular_speed above 0, got {vmax:g} m/s and {wmax:g} rad/s"
            )
        return vmax, wmax

    def _off_walk(self) -> bool:
        s, e = self._node.state, self._expected
        turn = abs((s.yaw - e.yaw + math.pi) % (2 * math.pi) - math.pi)
        return math.hypot(s.x - e.x, s.z - e.z) > self.TOLERANCE or turn > self.TOLERANCE

    def _plan_step(self) -> None:
        """Set the command of the walk's next step and the frames it takes."""
        from rtfm_env.geometry import DiscreteAction

        node = self._node
        try:
            vmax, wmax = self._limits()
        except ValueError as e:  # set to 0 at run time: hold still until they are raised again
            node.get_logger().warning(f"--drive walk holds still: {e}", throttle_duration_sec=2.0)
            self._command, self._left = (0.0, 0.0), 1
            return
        if self._off_walk():
            self.restarts += 1
            self._steps = self._random_walk(node.scene, node.state, self._rng, kinematics=self._kinematics)
        step = next(self._steps)
        self._expected = step.state
        self.steps += 1
        dt = node.dt
        if step.action == DiscreteAction.FORWARD:
            d = float(self._kinematics.forward_step)
            n = max(1, math.ceil(d / (vmax * dt)))
            command = (min(d / (n * dt), vmax), 0.0)
        elif step.action in (DiscreteAction.TURN_LEFT, DiscreteAction.TURN_RIGHT):
            a = float(self._kinematics.turn_step)
            n = max(1, math.ceil(a / (wmax * dt)))
            sign = 1.0 if step.action == DiscreteAction.TURN_LEFT else -1.0
            command = (0.0, sign * min(a / (n * dt), wmax))
        else:  # random_walk moves and turns only
            raise RuntimeError(f"the walk took action {DiscreteAction.NAMES[step.action]!r}, which it never should")
        self._command, self._left = command, n

    def __call__(self) -> None:
        """Give the node the command for its next frame (a new one once a frame has been published)."""
        from geometry_msgs.msg import Twist

        node = self._node
        if node.frames_published != self._frames:
            self._frames = node.frames_published
            if self._left == 0:
                self._plan_step()
            self._left -= 1
        msg = Twist()
        msg.linear.x, msg.angular.z = self._command
        node._on_twist(msg)  # the node's cmd_vel subscription callback: clamping and timeout as for a topic
