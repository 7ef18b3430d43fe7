"""The rtfm-sim camera as a ROS 2 node: a simulated camera driven by ``cmd_vel``.

Every ``1 / rate_hz`` seconds the node integrates the latest velocity command over one frame
period with the scene's collision test (:meth:`MiniWorldScene.move`), asks its camera for the
frame at the new pose and publishes, all with one stamp:

* ``<camera_ns>/image_raw`` (sensor_msgs/Image, rgb8) and ``<camera_ns>/camera_info``
  (sensor_msgs/CameraInfo: K, P, R, plumb_bob D of zeros) in the camera's optical frame,
  sensor-data QoS unless ``reliable_images`` is set;
* ``odom`` (nav_msgs/Odometry, ``odom`` -> ``base_link``, REP-103/105);
* ``<camera_ns>/pose`` (geometry_msgs/PoseStamped): the optical frame's pose in ``odom``.

It subscribes ``cmd_vel`` (geometry_msgs/Twist, or TwistStamped with ``twist_stamped``) and
``set_pose`` (geometry_msgs/PoseStamped of ``base_link`` in ``odom``, to teleport), and serves
``reset`` (std_srvs/Trigger: back to the scene's start). Every frame conversion goes through
:func:`rtfm_env.geometry.world_to_ros` and :func:`rtfm_env.geometry.state_to_odom`.

Bad input never stops the node: a non-finite command stops the robot and is logged, a finite
but excessive one is clamped to ``max_linear_speed`` / ``max_angular_speed``, and a malformed
``set_pose`` is logged and ignored. A bad start configuration (unknown scene, missing
checkpoint) is logged and the process exits with status 2.

Rendering happens in the spin thread, which is the thread that created the scene's GL
context; the node must therefore run in a single-threaded executor (``main`` does).

Run it with ``rtfm-camera --ros-args -p scene:=Maze -p rate_hz:=10.0`` from the virtualenv, or
``ros2 run rtfm_ros camera_node`` in a ROS 2 install.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import transforms3d
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from rtfm_env.cameras import CAMERAS, Camera, make_camera
from rtfm_env.geometry import RobotState, invert_pose, pose_to_state, ros_to_world, state_to_odom, world_to_ros
from rtfm_env.scenes import MiniWorldScene

__all__ = ["CameraNode", "Param", "PARAMETERS", "main", "STARTUP_ERROR_EXIT"]

STARTUP_ERROR_EXIT = 2  # process exit status when the node's parameters cannot start a simulation
LOG_THROTTLE_S = 2.0  # seconds between repeats of one bad-input log line
LEVEL_TOLERANCE = 1e-3  # |sin| of roll/pitch accepted in a set_pose: the base stays on the floor


@dataclass(frozen=True)
class Param:
    """One ROS parameter of the node: default value, description, and whether it is fixed at start."""

    default: Any
    description: str
    read_only: bool = True


#: The node's parameters. The launch file declares an argument for each of the main ones.
PARAMETERS: dict[str, Param] = {
    "scene": Param("MiniWorld-OneRoom-v0", "MiniWorld env id or short name (e.g. Maze) of the simulated world"),
    "seed": Param(0, "layout seed of the scene; reset returns to this layout's start"),
    "camera": Param("ground_truth", f"what renders frames: one of {sorted(CAMERAS)}"),
    "checkpoint": Param("", "frame-model checkpoint directory (camera=model); empty uses the shipped one"),
    "k": Param(2, "context frames per generated frame (camera=model)"),
    "sampling_steps": Param(0, "Euler sampling steps of the frame model; 0 uses the checkpoint's default"),
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
}


def _quaternion_xyzw(rotation: np.ndarray) -> tuple[float, float, float, float]:
    w, x, y, z = transforms3d.quaternions.mat2quat(rotation)
    return float(x), float(y), float(z), float(w)


def _fill_pose(msg_pose: Any, matrix: np.ndarray) -> None:
    """Write a 4x4 rigid transform into a geometry_msgs/Pose."""
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = (float(v) for v in matrix[:3, 3])
    o = msg_pose.orientation
    o.x, o.y, o.z, o.w = _quaternion_xyzw(matrix[:3, :3])


class StartupError(RuntimeError):
    """The node's parameters cannot start a simulation (unknown scene, missing checkpoint, ...)."""


class CameraNode(Node):
    """Publishes a simulated camera's frames, camera info, odometry and pose, driven by cmd_vel.

    Args:
        node_name: the ROS node name.
        **kwargs: passed to :class:`rclpy.node.Node` (e.g. ``parameter_overrides``).

    Raises:
        StartupError: a parameter names an unknown scene or camera, a checkpoint that cannot be
            loaded, or an invalid size, rate or field of view.
    """

    def __init__(self, node_name: str = "rtfm_camera", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, p in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only)
            try:
                self.declare_parameter(name, p.default, descriptor)
            except InvalidParameterTypeException as e:
                raise StartupError(f"parameter {name} must be a {type(p.default).__name__}: {e}") from e
        par = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._frames = {k: str(par[k]) for k in ("odom_frame", "base_frame", "camera_frame")}
        self.rate_hz = float(par["rate_hz"])
        if not (math.isfinite(self.rate_hz) and 0.0 < self.rate_hz <= 1000.0):
            raise StartupError(f"rate_hz must be in (0, 1000], got {par['rate_hz']!r}")
        self.dt = 1.0 / self.rate_hz  # seconds of motion integrated per frame

        self.scene, self.camera = self._make_world(par)
        self.seed = int(par["seed"])
        self.state = self.scene.reset(self.seed)
        self.camera.reset(self.scene, self.state.pose(), seed=self.seed)
        self.intrinsics = self.scene.intrinsics
        # base_link -> optical frame of a camera at floor height and no pitch, taken from the
        # geometry module's own conversions so that set_pose inverts exactly what odom publishes.
        ref = RobotState(0.0, 0.0, 0.0, cam_height=0.0)
        self._base_to_floor_optical = invert_pose(state_to_odom(ref)) @ world_to_ros(ref.pose())

        self._cmd = (0.0, 0.0)  # (v m/s, omega rad/s) applied at each frame
        self._cmd_time = self.get_clock().now()
        self._last_twist = (0.0, 0.0)  # what the robot actually did in the last frame
        self.frames_published = 0

        image_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if par["reliable_images"] else (
            qos_profile_sensor_data
        )
        ns = str(par["camera_namespace"]).strip("/")
        prefix = f"{ns}/" if ns else ""
        self.image_pub = self.create_publisher(Image, f"{prefix}image_raw", image_qos)
        self.info_pub = self.create_publisher(CameraInfo, f"{prefix}camera_info", image_qos)
        self.pose_pub = self.create_publisher(PoseStamped, f"{prefix}pose", 10)
        self.odom_pub = self.create_publisher(Odometry, "odom", 10)
        if par["twist_stamped"]:
            self.create_subscription(TwistStamped, "cmd_vel", lambda m: self._on_twist(m.twist), 10)
        else:
            self.create_subscription(Twist, "cmd_vel", self._on_twist, 10)
        self.create_subscription(PoseStamped, "set_pose", self._on_set_pose, 10)
        self.create_service(Trigger, "reset", self._on_reset)
        try:
            import tf2_ros  # noqa: F401  (only a full ROS install provides it)
        except ImportError:
            self.get_logger().info("tf2_ros is not importable (no ROS install): not publishing /tf")
        self.timer = self.create_timer(self.dt, self._on_timer)
        self.get_logger().info(
            f"{self.scene!r} camera={par['camera']} at {self.rate_hz:g} Hz, "
            f"{self.intrinsics.width}x{self.intrinsics.height}, start ({self.state.x:.2f}, {self.state.z:.2f})"
        )

    # -- setup -----------------------------------------------------------------------------

    def _make_world(self, par: dict[str, Any]) -> tuple[MiniWorldScene, Camera]:
        for name in ("width", "height", "k", "sampling_steps", "seed"):
            if not isinstance(par[name], int) or par[name] < 0:
                raise StartupError(f"parameter {name} must be a non-negative integer, got {par[name]!r}")
        try:
            scene = MiniWorldScene(str(par["scene"]), int(par["width"]), int(par["height"]), float(par["fov"]))
        except (ValueError, KeyError) as e:
            raise StartupError(f"bad scene parameters: {e}") from e
        name = str(par["camera"])
        kwargs: dict[str, Any] = {}
        if name == "model":
            kwargs = {
                "checkpoint": str(par["checkpoint"]) or None,
                "k": int(par["k"]),
                "steps": int(par["sampling_steps"]) or None,
                "seed": int(par["seed"]),
                "resolution": (int(par["height"]), int(par["width"])),
            }
        try:
            camera = make_camera(name, **kwargs)
        except (ValueError, OSError, RuntimeError) as e:
            scene.close()
            raise StartupError(f"cannot make camera {name!r}: {e}") from e
        return scene, camera

    # -- callbacks -------------------------------------------------------------------------

    def _on_twist(self, msg: Twist) -> None:
        v, omega = float(msg.linear.x), float(msg.angular.z)
        self._cmd_time = self.get_clock().now()
        if not (math.isfinite(v) and math.isfinite(omega)):
            self._cmd = (0.0, 0.0)
            self.get_logger().error(
                f"cmd_vel with non-finite values (linear.x={v}, angular.z={omega}): stopping the robot",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
            return
        vmax = float(self.get_parameter("max_linear_speed").value)
        wmax = float(self.get_parameter("max_angular_speed").value)
        if abs(v) > vmax or abs(omega) > wmax:
            self.get_logger().warning(
                f"cmd_vel (linear.x={v:.3g}, angular.z={omega:.3g}) beyond the limits ({vmax:g} m/s, {wmax:g} rad/s):"
                " clamped",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
        self._cmd = (float(np.clip(v, -vmax, vmax)), float(np.clip(omega, -wmax, wmax)))

    def _on_set_pose(self, msg: PoseStamped) -> None:
        try:
            self.state = self._state_from_base_pose(msg)
        except ValueError as e:
            self.get_logger().error(f"set_pose ignored: {e}")
            return
        self._cmd = (0.0, 0.0)
        self.get_logger().info(f"teleported to ({self.state.x:.2f}, {self.state.z:.2f}, yaw {self.state.yaw:.2f})")

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
        if not self.scene.is_free(state.x, state.z):
            raise ValueError(f"({p.x:.2f}, {p.y:.2f}) in {frame or 'odom'} is not free space (a wall or outside)")
        return state

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.state = self.scene.reset(self.seed)
        self.camera.reset(self.scene, self.state.pose(), seed=self.seed)
        self._cmd = (0.0, 0.0)
        response.success = True
        response.message = f"reset {self.scene.env_id} seed {self.seed} to ({self.state.x:.3f}, {self.state.z:.3f})"
        return response

    def _on_timer(self) -> None:
        timeout = float(self.get_parameter("cmd_vel_timeout").value)
        now = self.get_clock().now()
        if timeout > 0 and (now - self._cmd_time).nanoseconds * 1e-9 > timeout:
            self._cmd = (0.0, 0.0)
        v, omega = self._cmd
        self.state, collided = self.scene.move(self.state, (v, omega, self.dt))
        self._last_twist = (0.0 if collided else v, omega)
        frame = self.camera.observe(self.state.pose()[None])[0]
        self.publish(frame, now.to_msg())

    # -- output ----------------------------------------------------------------------------

    def publish(self, frame: np.ndarray, stamp: Any) -> None:
        """Publish one frame with its camera info, odometry and pose, all with ``stamp``."""
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

        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = stamp, self._frames["odom_frame"]
        odom.child_frame_id = self._frames["base_frame"]
        _fill_pose(odom.pose.pose, state_to_odom(self.state))
        odom.twist.twist.linear.x, odom.twist.twist.angular.z = self._last_twist

        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self._frames["odom_frame"]
        _fill_pose(pose.pose, world_to_ros(self.state.pose()))

        self.image_pub.publish(image)
        self.info_pub.publish(info)
        self.odom_pub.publish(odom)
        self.pose_pub.publish(pose)
        self.frames_published += 1

    def destroy_node(self) -> None:
        """Release the camera and the scene's MiniWorld env, then the ROS entities."""
        self.camera.close()
        self.scene.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or an external shutdown; the ``rtfm-camera`` entry point.

    Returns:
        0 on a clean shutdown, :data:`STARTUP_ERROR_EXIT` if the parameters cannot start a simulation.
    """
    rclpy.init(args=args)
    node = None
    try:
        node = CameraNode()
        rclpy.spin(node)  # the default single-threaded executor: GL stays on this thread
    except StartupError as e:
        rclpy.logging.get_logger("rtfm_camera").error(f"cannot start: {e}")
        return STARTUP_ERROR_EXIT
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
