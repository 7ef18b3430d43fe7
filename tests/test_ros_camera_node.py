"""Tests of rtfm_env.ros.camera_node with real processes: the node runs in a subprocess.

Each test starts its own node with its own ROS_DOMAIN_ID (discovery kept on this host), talks
to it through rclpy from the test process, and always stops it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")

import transforms3d  # noqa: E402
from geometry_msgs.msg import PoseStamped, Twist  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from rtfm_env.cameras import CAMERAS  # noqa: E402
from rtfm_env.geometry import Intrinsics, RobotState, invert_pose, ros_to_world, state_to_odom, world_to_ros  # noqa: E402
from rtfm_env.memory import SpatialMemory  # noqa: E402
from rtfm_env.ros.camera_node import (  # noqa: E402
    CAMERA_ONLY_PARAMETERS,
    MEMORY_CAMERAS,
    PARAMETERS,
    STARTUP_ERROR_EXIT,
    CameraNode,
    StartupError,
    depth_image_msg,
    is_world_file,
    transform_msg,
)
from rtfm_env.worlds import WALK_FRAMES  # noqa: E402

START_TIMEOUT = 60.0  # seconds for the node to import torch/MiniWorld and publish its first frame
# Domain ids 0-232 are valid for Fast DDS; spread by pid so parallel sessions do not meet.
_DOMAINS = itertools.count(10 + (os.getpid() % 40) * 5)


def _yaw(q) -> float:
    """Yaw about z of a geometry_msgs/Quaternion."""
    return float(transforms3d.euler.quat2euler([q.w, q.x, q.y, q.z], axes="sxyz")[2])


class NodeProcess:
    """A camera node in a subprocess plus a test-side rclpy node that records what it publishes."""

    def __init__(
        self,
        params: dict[str, object],
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.domain = next(_DOMAINS) % 233
        env = dict(os.environ, **(env or {}), ROS_DOMAIN_ID=str(self.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        args = [f"{k}:={v}" for k, v in params.items()]
        cmd = [sys.executable, "-m", "rtfm_env.ros.camera_node", "--ros-args"] if command is None else list(command)
        cmd += [a for kv in args for a in ("-p", kv)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain)
        self.node = rclpy.create_node("rtfm_test_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.images: list[tuple[float, Image]] = []  # (arrival time, message)
        self.infos: list[CameraInfo] = []
        self.depths: list[Image] = []
        self.depth_infos: list[CameraInfo] = []
        self.odoms: list[Odometry] = []
        self.poses: list[PoseStamped] = []
        self.clocks: list[Clock] = []
        qos = qos_profile_sensor_data
        on_image = lambda m: self.images.append((time.monotonic(), m))  # noqa: E731
        self.node.create_subscription(Image, "camera/image_raw", on_image, qos)
        self.node.create_subscription(CameraInfo, "camera/camera_info", self.infos.append, qos)
        self.node.create_subscription(Image, "camera/depth/image_raw", self.depths.append, qos)
        self.node.create_subscription(CameraInfo, "camera/depth/camera_info", self.depth_infos.append, qos)
        self.node.create_subscription(Odometry, "odom", self.odoms.append, 10)
        self.node.create_subscription(PoseStamped, "camera/pose", self.poses.append, 10)
        self.node.create_subscription(Clock, "/clock", self.clocks.append, 10)
        self.cmd_pub = self.node.create_publisher(Twist, "cmd_vel", 10)
        self.set_pose_pub = self.node.create_publisher(PoseStamped, "set_pose", 10)
        self.clients = {name: self.node.create_client(Trigger, name) for name in ("reset", "save_world", "load_world")}
        self.params = AsyncParameterClient(self.node, "rtfm_camera")

    def spin_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        """Process callbacks until ``cond()`` holds; fail with ``what`` (and the node's output) on timeout."""
        end = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"node exited with {code} while waiting for {what}:\n{self.output()}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, seconds: float, each: Callable[[], None] | None = None, period: float = 0.05) -> None:
        """Process callbacks for ``seconds``, calling ``each`` every ``period`` seconds."""
        end, next_call = time.monotonic() + seconds, 0.0
        while (now := time.monotonic()) < end:
            if each is not None and now >= next_call:
                each()
                next_call = now + period
            self.executor.spin_once(timeout_sec=0.01)

    def wait_started(self) -> None:
        """Wait for the first odometry and image."""
        self.spin_until(lambda: bool(self.odoms) and bool(self.images), START_TIMEOUT, "the first frame")
        # Commands published before discovery matches the node's subscriptions would be lost.
        matched = (self.cmd_pub, self.set_pose_pub)
        self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in matched), 10.0, "subscriptions")

    def twist(self, v: float, omega: float) -> Callable[[], None]:
        """A callable publishing one Twist with linear.x = v, angular.z = omega."""
        msg = Twist()
        msg.linear.x, msg.angular.z = float(v), float(omega)
        return lambda: self.cmd_pub.publish(msg)

    def call(self, service: str) -> Trigger.Response:
        """Call one of the node's Trigger services (reset, save_world, load_world); return its response."""
        client = self.clients[service]
        assert client.wait_for_service(timeout_sec=10.0), f"{service} service not available"
        future = client.call_async(Trigger.Request())
        self.spin_until(future.done, 30.0, f"the {service} response")
        return future.result()

    def set_param(self, name: str, value: object, expect_success: bool = True) -> str:
        """Set one of the node's parameters at run time; assert the outcome; return the refusal's reason."""
        assert self.params.wait_for_services(timeout_sec=10.0), "parameter services not available"
        future = self.params.set_parameters([Parameter(name, value=value)])
        self.spin_until(future.done, 10.0, f"setting {name}")
        (result,) = future.result().results
        assert result.successful is expect_success, (name, value, result)
        return result.reason

    def get_param(self, name: str) -> object:
        """The current value of one of the node's parameters."""
        assert self.params.wait_for_services(timeout_sec=10.0), "parameter services not available"
        future = self.params.get_parameters([name])
        self.spin_until(future.done, 10.0, f"getting {name}")
        return parameter_value_to_python(future.result().values[0])

    def images_keep_coming(self) -> None:
        """Assert that the node still publishes frames."""
        count = len(self.images)
        self.spin_until(lambda: len(self.images) >= count + 2, 30.0, "more images")

    def drive(self, v: float, omega: float, frames: int) -> None:
        """Publish a Twist every 50 ms until ``frames`` more odometry messages have arrived."""
        target, send = len(self.odoms) + frames, self.twist(v, omega)
        end = time.monotonic() + 60.0
        while len(self.odoms) < target:
            assert time.monotonic() < end and self.proc.poll() is None, f"no {frames} frames while driving"
            send()
            self.spin_for(0.05)

    def output(self) -> str:
        """What the node printed, once it has exited."""
        return self.proc.stdout.read() if self.proc.poll() is not None else ""

    def stop(self) -> str:
        """Stop the node (SIGINT, then SIGKILL) and the test-side rclpy context; return its output."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10.0)
            return self.proc.stdout.read()
        finally:
            self.executor.shutdown()
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)


@pytest.fixture
def camera_node() -> Iterator[Callable[..., NodeProcess]]:
    """Factory of started camera nodes; every node it made is stopped at teardown."""
    made: list[NodeProcess] = []

    def start(
        command: list[str] | None = None, env: dict[str, str] | None = None, cwd: Path | None = None, **params: object
    ) -> NodeProcess:
        node = NodeProcess(params, command, env, cwd)
        made.append(node)
        node.wait_started()
        return node

    yield start
    for node in made:
        node.stop()


def _xy(odom: Odometry) -> np.ndarray:
    p = odom.pose.pose.position
    return np.array([p.x, p.y])


def _stamp(msg) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def _depth_array(msg: Image) -> np.ndarray:
    """The (H, W) float32 metres of a 32FC1 depth image."""
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("32FC1", 4 * msg.width, 0)
    return np.frombuffer(bytes(msg.data), dtype="<f4").reshape(msg.height, msg.width)


def _pose_matrix(msg: PoseStamped) -> np.ndarray:
    """The 4x4 pose of a geometry_msgs/PoseStamped."""
    p, q = msg.pose.position, msg.pose.orientation
    matrix = np.eye(4)
    matrix[:3, :3] = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    matrix[:3, 3] = p.x, p.y, p.z
    return matrix


def _check_ground_truth_depth(n: NodeProcess, env_id: str, seed: int, intrinsics: Intrinsics) -> None:
    """The last depth images equal the scene's own depth render at the pose published with them."""
    from rtfm_env.scenes import MiniWorldScene

    poses = {_stamp(m): m for m in n.poses}
    scene = MiniWorldScene(env_id, intrinsics.width, intrinsics.height, intrinsics.fov_y)
    try:
        scene.reset(seed)
        checked = 0
        for msg in n.depths[-3:]:
            if _stamp(msg) not in poses:
                continue
            expected = scene.render_depth(ros_to_world(_pose_matrix(poses[_stamp(msg)])))
            depth = _depth_array(msg)
            np.testing.assert_array_equal(np.isinf(depth), np.isinf(expected))
            np.testing.assert_allclose(depth[np.isfinite(expected)], expected[np.isfinite(expected)], rtol=1e-5)
            checked += 1
        assert checked >= 1, "no depth image with a pose of the same stamp"
    finally:
        scene.close()


@pytest.mark.parametrize("rate_hz, reliable, depth", [(10.0, False, True), (20.0, True, False)])
def test_images_arrive_at_rate_with_matching_camera_info(camera_node, rate_hz, reliable, depth):
    """Images arrive at rate_hz within 20%; CameraInfo K/P/D match the intrinsics; one stamp per frame.

    With publish_depth (the default), ground-truth depth arrives as 32FC1 with the image's stamp
    and frame and equals the scene's depth render; publish_depth:=false publishes no depth topic.
    """
    n = camera_node(rate_hz=rate_hz, reliable_images=reliable, width=48, height=32, fov=70.0, publish_depth=depth)
    n.images.clear()
    n.spin_for(3.0)
    times = [t for t, _ in n.images]
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert abs(rate - rate_hz) <= 0.2 * rate_hz, f"images at {rate:.2f} Hz, configured {rate_hz} Hz"

    image = n.images[-1][1]
    assert (image.width, image.height, image.encoding, image.step) == (48, 32, "rgb8", 48 * 3)
    assert len(image.data) == 48 * 32 * 3 and image.header.frame_id == "camera_optical_frame"
    k = Intrinsics(48, 32, 70.0).K
    info = n.infos[-1]
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), k)
    np.testing.assert_allclose(np.reshape(info.p, (3, 4)), np.hstack([k, np.zeros((3, 1))]))
    np.testing.assert_allclose(np.reshape(info.r, (3, 3)), np.eye(3))
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    # Every message of one frame carries the same stamp.
    stamps = {
        name: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs}
        for name, msgs in (("image", [m for _, m in n.images]), ("info", n.infos), ("odom", n.odoms), ("pose", n.poses))
    }
    common = stamps["image"] & stamps["info"] & stamps["odom"] & stamps["pose"]
    assert len(common) >= len(stamps["image"]) - 3, "image, camera_info, odom and pose stamps differ"
    assert n.odoms[-1].header.frame_id == "odom" and n.odoms[-1].child_frame_id == "base_link"

    depth_publishers = [n.node.count_publishers(f"/camera/depth/{t}") for t in ("image_raw", "camera_info")]
    if not depth:
        assert not n.depths and not n.depth_infos and depth_publishers == [0, 0]
        return
    assert depth_publishers == [1, 1]
    depth_stamps = {_stamp(m) for m in n.depths}
    assert len(depth_stamps & stamps["image"]) >= len(stamps["image"]) - 3, "depth and image stamps differ"
    assert {_stamp(m) for m in n.depth_infos} & depth_stamps
    last = n.depths[-1]
    assert (last.width, last.height, last.header.frame_id) == (48, 32, "camera_optical_frame")
    assert _depth_array(last).dtype == np.float32 and np.isfinite(_depth_array(last)).any()
    np.testing.assert_allclose(np.reshape(n.depth_infos[-1].k, (3, 3)), k)
    _check_ground_truth_depth(n, "MiniWorld-OneRoom-v0", 0, Intrinsics(48, 32, 70.0))


def test_depth_image_msg_follows_rep_118():
    """32FC1 little-endian; NaN and +inf pass through, values a depth cannot have become NaN."""
    depth = np.array([[1.5, np.inf, np.nan], [0.0, -1.0, -np.inf]], dtype=np.float32)
    image = Image()
    image.header.frame_id = "camera_optical_frame"
    msg = depth_image_msg(depth, image.header)
    assert (msg.encoding, msg.width, msg.height, msg.step, msg.header.frame_id) == (
        "32FC1",
        3,
        2,
        12,
        "camera_optical_frame",
    )
    out = _depth_array(msg)
    assert out[0, 0] == 1.5 and out[0, 1] == np.inf and np.isnan(out[0, 2]) and np.isnan(out[1]).all()


def test_odometry_follows_twist(camera_node):
    """A (v, omega) Twist moves odom by exactly v/rate per frame along the heading and turns omega/rate."""
    rate, v, omega = 20.0, 0.5, 0.4
    n = camera_node(rate_hz=rate, seed=0)  # OneRoom seed 0 starts with > 1 m free ahead
    n.odoms.clear()
    n.spin_for(1.5, each=n.twist(v, omega))
    moving = [(a, b) for a, b in itertools.pairwise(n.odoms) if b.twist.twist.linear.x == pytest.approx(v)]
    assert len(moving) >= 0.8 * 1.5 * rate * 0.8, f"only {len(moving)} frames moved"
    for a, b in moving:
        # Exact unicycle arc: chord length and direction at the mean heading.
        dyaw = (_yaw(b.pose.pose.orientation) - _yaw(a.pose.pose.orientation) + math.pi) % (2 * math.pi) - math.pi
        assert dyaw == pytest.approx(omega / rate, abs=1e-9)
        chord = 2 * v / omega * math.sin(omega / rate / 2)
        step = _xy(b) - _xy(a)
        assert np.linalg.norm(step) == pytest.approx(chord, rel=1e-6)
        mid = _yaw(a.pose.pose.orientation) + dyaw / 2
        np.testing.assert_allclose(step / np.linalg.norm(step), [math.cos(mid), math.sin(mid)], atol=1e-6)
    assert all(o.pose.pose.position.z == 0.0 for o in n.odoms)


def test_wall_stops_robot_and_reset_returns_to_start(camera_node):
    """Driving straight at full speed ends against a wall (odom stops, twist 0); reset returns to the start."""
    n = camera_node(rate_hz=20.0, seed=0)
    start = _xy(n.odoms[0])
    n.spin_for(8.0, each=n.twist(2.0, 0.0))  # OneRoom is at most ~12 m across
    last = n.odoms[-10:]
    assert all(o.twist.twist.linear.x == 0.0 for o in last), "robot still moving after 8 s at 2 m/s"
    np.testing.assert_array_equal(_xy(last[0]), _xy(last[-1]))
    assert np.linalg.norm(_xy(last[-1]) - start) > 1.0

    response = n.call("reset")
    assert response.success, response.message
    n.odoms.clear()
    n.spin_until(lambda: len(n.odoms) >= 2, 10.0, "odometry after reset")
    np.testing.assert_allclose(_xy(n.odoms[-1]), start, atol=1e-9)


def _pose_msg(x: float, y: float, yaw: float, frame: str = "odom", quat=None) -> PoseStamped:
    msg = PoseStamped()
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y = float(x), float(y)
    w, qx, qy, qz = quat if quat is not None else transforms3d.euler.euler2quat(0.0, 0.0, yaw, axes="sxyz")
    o = msg.pose.orientation
    o.w, o.x, o.y, o.z = float(w), float(qx), float(qy), float(qz)
    return msg


def test_set_pose_teleports_and_rejects_malformed(camera_node):
    """Malformed set_pose messages (NaN, zero quaternion, roll, wrong frame, in a wall) leave odom unchanged."""
    n = camera_node(rate_hz=20.0, seed=0)
    here = _xy(n.odoms[-1])
    bad = [
        _pose_msg(float("nan"), here[1], 0.0),
        _pose_msg(here[0], here[1], 0.0, quat=(0.0, 0.0, 0.0, 0.0)),
        _pose_msg(here[0], here[1], 0.0, quat=transforms3d.euler.euler2quat(0.3, 0.0, 0.0, axes="sxyz")),
        _pose_msg(here[0] + 0.5, here[1], 0.0, frame="map"),
        _pose_msg(1e6, -1e6, 0.0),
    ]
    for msg in bad:
        n.set_pose_pub.publish(msg)
    n.spin_for(1.0)
    np.testing.assert_allclose(_xy(n.odoms[-1]), here, atol=1e-12)

    target = (here[0] + 0.3, here[1] - 0.2, 1.0)
    n.set_pose_pub.publish(_pose_msg(*target))
    n.spin_for(0.5)
    np.testing.assert_allclose(_xy(n.odoms[-1]), target[:2], atol=1e-9)
    assert _yaw(n.odoms[-1].pose.pose.orientation) == pytest.approx(target[2], abs=1e-9)


def test_fuzz_twists_keep_node_alive(camera_node):
    """1,000 random Twists (NaN, inf, huge, zero, ordinary) leave the node publishing with a finite pose."""
    n = camera_node(rate_hz=20.0, seed=0)
    rng = np.random.default_rng(0)
    specials = np.array([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 1e-300])
    pub = n.cmd_pub
    for i in range(1000):
        msg = Twist()
        vals = np.where(rng.random(6) < 0.5, rng.choice(specials, 6), rng.normal(0.0, 3.0, 6))
        msg.linear.x, msg.linear.y, msg.linear.z, msg.angular.x, msg.angular.y, msg.angular.z = map(float, vals)
        pub.publish(msg)
        if i % 20 == 0:
            n.executor.spin_once(timeout_sec=0.005)
    count = len(n.odoms)
    n.spin_until(lambda: len(n.odoms) >= count + 10, 10.0, "odometry after the fuzz")
    assert n.proc.poll() is None, "node died under fuzzed cmd_vel"
    for o in n.odoms[count:]:
        p, q = o.pose.pose.position, o.pose.pose.orientation
        assert np.isfinite([p.x, p.y, p.z, q.x, q.y, q.z, q.w]).all()
    assert abs(n.odoms[-1].twist.twist.linear.x) <= 2.0 and abs(n.odoms[-1].twist.twist.angular.z) <= math.pi


@pytest.mark.parametrize(
    "params, message",
    [
        ({"scene": "NoSuchWorld"}, "MiniWorld-OneRoom-v0"),  # the valid ids are listed
        ({"camera": "pinhole"}, "ground_truth"),
        ({"camera": "model", "checkpoint": "/nonexistent/checkpoint"}, "/nonexistent/checkpoint"),
        ({"fov": 90}, "fov"),  # an integer where a double is declared
        ({"scene": "/nonexistent/world.safetensors", "camera": "model"}, "no saved world file"),
        ({"scene": "world.rtfm"}, "camera:=model"),  # a file without ./ is a file; it needs a memory camera
        ({"world": "walk"}, "parameter world"),  # the ground-truth camera has no memory to fill
        ({"record_bag": "/tmp"}, "exists already"),  # bags are never overwritten
        ({"publish_clock": "true", "use_sim_time": "true"}, "use_sim_time"),
        ({"width": 100000}, "width must be in [1, 1024], got 100000"),  # not a traceback and exit 1
        ({"max_linear_speed": -1.0, "cmd_vel_timeout": ".nan"}, "cmd_vel_timeout must be finite"),
        ({"world_path": "/dev/null"}, "not a regular file"),
    ],
)
def test_bad_start_parameters_exit_with_clear_error(params, message):
    """Bad start parameters exit with status 2 naming the problem.

    Unknown scene, camera or world file, a missing checkpoint, a parameter the camera does not
    take, an existing bag, or a clock setup that would wait for itself.
    """
    env = dict(os.environ, ROS_DOMAIN_ID=str(next(_DOMAINS) % 233), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [sys.executable, "-m", "rtfm_env.ros.camera_node", "--ros-args"]
    cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == STARTUP_ERROR_EXIT, out
    assert "cannot start" in out and message in out, out


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight T frame model at 64x64: worlds are about files and services, not image quality."""
    from rtfm_env.model import FrameNetwork, model_config, save_checkpoint

    cfg = model_config("T", height=64, width=64)
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(directory, FrameNetwork(cfg), cfg, {"note": "random weights for the ROS node tests"})
    return directory


def test_model_camera_saves_and_loads_worlds_and_restarts_from_one(camera_node, tmp_path, tiny_checkpoint):
    """save_world writes the memory; bad paths and corrupt files fail cleanly; scene:=FILE starts from it."""
    good = tmp_path / "world.safetensors"
    model = {"camera": "model", "checkpoint": str(tiny_checkpoint), "cmd_vel_timeout": 0.0}
    # cmd_vel never times out: the model camera may run below rate_hz on a loaded machine.
    n = camera_node(rate_hz=10.0, world_path=str(good), **model)
    start = _xy(n.odoms[0])
    n.drive(0.0, 1.0, frames=3)  # turn: the memory grows with generated views
    response = n.call("save_world")
    assert response.success, response.message
    saved = SpatialMemory.load(good)
    assert len(saved) >= 2 and f"({len(saved)} frames)" in response.message
    assert set(saved.sources(saved.ids)) == {"observed", "generated"}
    before = good.read_bytes()

    # Unwritable targets are refused when set: a path under a file, an existing directory, a device,
    # a missing directory, a symlink to a directory. world_path keeps its value.
    (tmp_path / "link").symlink_to(tmp_path)
    for bad in (good / "sub.safetensors", tmp_path, "/dev/null", tmp_path / "no" / "w.rtfm", tmp_path / "link"):
        reason = n.set_param("world_path", str(bad), expect_success=False)
        assert "world_path" in reason and str(bad) in reason, reason
    assert n.get_param("world_path") == str(good)
    # A path that becomes a directory after it was set: save_world checks again and writes nothing.
    later = tmp_path / "later.safetensors"
    n.set_param("world_path", str(later))
    later.mkdir()
    response = n.call("save_world")
    assert not response.success and "save_world failed" in response.message and "directory" in response.message
    n.images_keep_coming()
    later.rmdir()
    (tmp_path / "link").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world.safetensors"]

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(before[: len(before) // 2])
    for path, reason in ((corrupt, "not a readable spatial memory"), (tmp_path / "none.safetensors", "no spatial")):
        n.set_param("world_path", str(path))
        response = n.call("load_world")
        assert not response.success and reason in response.message, response.message
        n.images_keep_coming()

    n.drive(0.0, 1.0, frames=2)  # the memory moves on from the saved one
    n.set_param("world_path", str(good))
    response = n.call("load_world")
    assert response.success and f"({len(saved)} frames)" in response.message, response.message
    n.images_keep_coming()

    m = camera_node(scene=str(good), rate_hz=10.0, width=32, **model)
    assert (m.images[-1][1].width, m.images[-1][1].height) == (64, 64)  # the file's frame size wins
    np.testing.assert_allclose(_xy(m.odoms[0]), start, atol=1e-9)  # the world's first frame is the start
    m.drive(1.0, 0.0, frames=3)
    assert m.odoms[-1].twist.twist.linear.x == 1.0  # moving, by 1 m/s / 10 Hz a frame
    assert np.linalg.norm(_xy(m.odoms[-1]) - start) >= 0.1 - 1e-9
    m.drive(0.0, 0.0, frames=2)  # stopped, so no queued command moves the robot after the reset
    # A node slower than rate_hz may still hold queued 1 m/s commands: wait until it has applied a stop.
    m.spin_until(lambda: m.odoms[-1].twist.twist.linear.x == 0.0, 30.0, "the robot to stop")
    assert m.call("reset").success
    m.odoms.clear()
    m.spin_until(lambda: len(m.odoms) >= 2, 30.0, "odometry after reset")
    np.testing.assert_allclose(_xy(m.odoms[-1]), start, atol=1e-9)


def test_ground_truth_camera_refuses_world_services_and_logs_tf_once(camera_node):
    """With the ground-truth camera save/load_world say there is no generated world; /tf absence is logged once."""
    n = camera_node(rate_hz=20.0, world_path="/tmp/unused.safetensors")
    for service in ("save_world", "load_world"):
        response = n.call(service)
        assert not response.success and "no generated world" in response.message, response.message
        n.images_keep_coming()
    assert not Path("/tmp/unused.safetensors").exists()
    output = n.stop()
    assert output.count("not publishing /tf") == 1 and "tf2_ros" in output, output


def test_record_bag_with_clock_matches_published_messages(camera_node, tmp_path):
    """rtfm-env record-bag: counts, types, /clock at n/rate and the bag's images equal the published ones."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    bag, rate = tmp_path / "bag", 20.0
    command = [sys.executable, "-m", "rtfm_env.cli", "record-bag", "--out", str(bag), "--frames", "60"]
    n = camera_node(command, rate_hz=rate, publish_clock="true")
    n.spin_for(0.5, each=n.twist(0.5, 0.5))
    n.spin_until(lambda: n.proc.poll() is not None, 30.0, "record-bag to finish")
    assert n.proc.returncode == 0, n.output()

    typestore = get_typestore(Stores.ROS2_KILTED)
    expected = {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
        "/camera/depth/image_raw": "sensor_msgs/msg/Image",
        "/camera/depth/camera_info": "sensor_msgs/msg/CameraInfo",
        "/odom": "nav_msgs/msg/Odometry",
        "/camera/pose": "geometry_msgs/msg/PoseStamped",
        "/clock": "rosgraph_msgs/msg/Clock",
    }
    with Reader(bag) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == expected
        assert {c.topic: c.msgcount for c in reader.connections} == dict.fromkeys(expected, 60)
        msgs = {topic: [] for topic in expected}
        for conn, _, raw in reader.messages():
            msgs[conn.topic].append(typestore.deserialize_cdr(raw, conn.msgtype))
    clock_ns = [_stamp_ns(m.clock) for m in msgs["/clock"]]
    assert clock_ns == [round(i * 1e9 / rate) for i in range(1, 61)]
    for topic in set(expected) - {"/clock"}:
        assert [_stamp_ns(m.header.stamp) for m in msgs[topic]] == clock_ns, topic
    assert all(m.encoding == "32FC1" for m in msgs["/camera/depth/image_raw"])

    assert len(n.images) >= 10 and len(n.clocks) >= 10
    by_stamp = {_stamp_ns(m.header.stamp): m for m in msgs["/camera/image_raw"]}
    for _, published in n.images:
        recorded = by_stamp[_stamp_ns(published.header.stamp)]
        assert (recorded.width, recorded.height, recorded.encoding) == (published.width, published.height, "rgb8")
        np.testing.assert_array_equal(recorded.data, np.frombuffer(bytes(published.data), np.uint8))
    assert {_stamp_ns(c.clock) for c in n.clocks} <= set(clock_ns)


def test_transform_msg_round_trips_base_to_optical():
    """transform_msg carries a 4x4 pose exactly (translation and quaternion) with its frames and stamp."""
    state = RobotState(1.0, 2.0, 0.3, cam_height=1.2, pitch=-0.2)
    matrix = invert_pose(state_to_odom(state)) @ world_to_ros(state.pose())
    stamp = rclpy.time.Time(seconds=3, nanoseconds=5).to_msg()
    t = transform_msg(matrix, "base_link", "camera_optical_frame", stamp)
    assert (t.header.frame_id, t.child_frame_id, _stamp_ns(t.header.stamp)) == (
        "base_link",
        "camera_optical_frame",
        3 * 10**9 + 5,
    )
    tr, r = t.transform.translation, t.transform.rotation
    np.testing.assert_allclose([tr.x, tr.y, tr.z], matrix[:3, 3], atol=1e-12)
    np.testing.assert_allclose(transforms3d.quaternions.quat2mat([r.w, r.x, r.y, r.z]), matrix[:3, :3], atol=1e-12)
    np.testing.assert_allclose([tr.x, tr.y, tr.z], [0.0, 0.0, 1.2], atol=1e-12)  # the camera sits above the base


@pytest.mark.parametrize(
    "scene, expected",
    [
        ("Maze", False),
        ("MiniWorld-OneRoom-v0", False),
        ("", False),
        ("world.safetensors", True),
        ("world.rtfm", True),
        ("./world.rtfm", True),
        ("/tmp/runs/w", True),
        ("~/w", True),
    ],
)
def test_is_world_file(scene, expected):
    """A scene parameter with a directory part or a suffix names a saved world file; env ids have neither."""
    assert is_world_file(scene) is expected


def test_is_world_file_for_an_existing_file_without_suffix(tmp_path, monkeypatch):
    """An existing file is a world file even with neither a suffix nor a directory part."""
    monkeypatch.chdir(tmp_path)
    assert not is_world_file("myworld")
    (tmp_path / "myworld").write_bytes(b"")
    assert is_world_file("myworld")


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_camera_only_parameters_are_refused_for_other_cameras(camera):
    """Each camera takes its own parameters at any value and refuses, by name, the others set off their default."""
    changed = {"world": "walk", "checkpoint": "/ckpt", "k": 3, "sampling_steps": 4, "torch_threads": 2}
    changed["compile_model"] = True
    assert set(changed) == set(CAMERA_ONLY_PARAMETERS)
    defaults = {name: p.default for name, p in PARAMETERS.items()}
    CameraNode._check_camera_parameters(camera, defaults)  # defaults are fine for every camera
    for name, cameras in CAMERA_ONLY_PARAMETERS.items():
        par = dict(defaults, **{name: changed[name]})
        if camera in cameras:
            CameraNode._check_camera_parameters(camera, par)
        else:
            with pytest.raises(StartupError, match=f"parameter {name} .* camera:={cameras[0]}"):
                CameraNode._check_camera_parameters(camera, par)
    assert CAMERA_ONLY_PARAMETERS["world"] == MEMORY_CAMERAS == ("model", "nearest", "reprojection")


def test_reprojection_camera_walk_world_publishes_depth_and_restarts_from_its_file(camera_node, tmp_path):
    """camera:=reprojection with world:=walk: images, depth, and a world file to restart from.

    save_world holds the walk, load_world refuses a world without depth, and scene:=world.rtfm
    (no ./) starts from the saved file.
    """
    saved = tmp_path / "world.rtfm"
    n = camera_node(camera="reprojection", world="walk", world_path=str(saved), rate_hz=10.0, cmd_vel_timeout=0.0)
    n.drive(0.0, 1.0, frames=3)
    image = n.images[-1][1]
    assert (image.encoding, image.width, image.height) == ("rgb8", 64, 64)
    assert {_stamp(m) for m in n.depths} & {_stamp(m) for _, m in n.images}, "depth and image stamps differ"
    depth = _depth_array(n.depths[-1])
    assert depth.shape == (64, 64) and (np.isfinite(depth) & (depth > 0)).mean() > 0.5

    response = n.call("save_world")
    assert response.success, response.message
    memory = SpatialMemory.load(saved)
    assert len(memory) == WALK_FRAMES + 1  # the start's view and the walk: world:=walk reached the camera
    assert memory.depth_fraction == 1.0 and set(memory.sources(memory.ids)) == {"observed"}

    flat = SpatialMemory()
    flat.add(np.zeros((64, 64, 3), np.uint8), np.eye(4), Intrinsics(64, 64, 60.0), "observed")
    flat.save(tmp_path / "flat.rtfm")
    n.set_param("world_path", str(tmp_path / "flat.rtfm"))
    response = n.call("load_world")
    assert not response.success and "no depth" in response.message, response.message
    n.images_keep_coming()

    m = camera_node(cwd=tmp_path, scene="world.rtfm", camera="reprojection", rate_hz=10.0)
    np.testing.assert_allclose(_xy(m.odoms[0]), _xy(n.odoms[0]), atol=1e-9)  # the world's first frame
    m.spin_until(lambda: len(m.depths) >= 2, 30.0, "depth from the saved world")
    assert m.depths[-1].encoding == "32FC1" and m.images[-1][1].encoding == "rgb8"


# A stand-in for tf2_ros (which only a ROS install has) that logs what the node broadcasts.
FAKE_TF2_ROS = """
import json, os

def _log(kind, t):
    tr, r = t.transform.translation, t.transform.rotation
    row = {"kind": kind, "parent": t.header.frame_id, "child": t.child_frame_id,
           "stamp": [t.header.stamp.sec, t.header.stamp.nanosec],
           "xyz": [tr.x, tr.y, tr.z], "xyzw": [r.x, r.y, r.z, r.w]}
    with open(os.environ["FAKE_TF_LOG"], "a") as f:
        f.write(json.dumps(row) + "\\n")

class TransformBroadcaster:
    def __init__(self, node):
        pass
    def sendTransform(self, t):
        _log("tf", t)

class StaticTransformBroadcaster(TransformBroadcaster):
    def sendTransform(self, t):
        _log("tf_static", t)
"""


def test_tf_broadcast_matches_odometry_where_tf2_ros_imports(camera_node, tmp_path):
    """With tf2_ros importable: one static base_link->optical transform, and odom->base_link equal to odom per frame."""
    (tmp_path / "tf2_ros.py").write_text(FAKE_TF2_ROS)
    log = tmp_path / "tf.jsonl"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), "FAKE_TF_LOG": str(log)}
    n = camera_node(env=env, rate_hz=20.0, seed=0)
    n.drive(0.5, 0.5, frames=5)
    output = n.stop()
    assert "not publishing /tf" not in output, output
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    static = [r for r in rows if r["kind"] == "tf_static"]
    assert len(static) == 1 and (static[0]["parent"], static[0]["child"]) == ("base_link", "camera_optical_frame")
    state = RobotState(0.0, 0.0, 0.0)  # the camera's height and pitch are MiniWorld's defaults
    expected = invert_pose(state_to_odom(state)) @ world_to_ros(state.pose())
    np.testing.assert_allclose(static[0]["xyz"], expected[:3, 3], atol=1e-9)
    x, y, z, w = static[0]["xyzw"]
    np.testing.assert_allclose(transforms3d.quaternions.quat2mat([w, x, y, z]), expected[:3, :3], atol=1e-9)

    tf = {tuple(r["stamp"]): r for r in rows if r["kind"] == "tf"}
    assert all((r["parent"], r["child"]) == ("odom", "base_link") for r in tf.values())
    assert len(n.odoms) >= 5
    for o in n.odoms:
        r = tf[(o.header.stamp.sec, o.header.stamp.nanosec)]
        p, q = o.pose.pose.position, o.pose.pose.orientation
        np.testing.assert_allclose(r["xyz"] + r["xyzw"], [p.x, p.y, p.z, q.x, q.y, q.z, q.w], atol=1e-12)


def test_model_camera_with_a_v2_checkpoint_publishes_its_depth(camera_node, tiny_v2_checkpoint):
    """A checkpoint that predicts depth (v2) makes the model camera publish depth like the others."""
    n = camera_node(camera="model", checkpoint=str(tiny_v2_checkpoint), world="image", rate_hz=10.0,
                    cmd_vel_timeout=0.0)
    n.drive(0.3, 0.0, frames=3)
    assert {_stamp(m) for m in n.depths} & {_stamp(m) for _, m in n.images}, "depth and image stamps differ"
    depth = _depth_array(n.depths[-1])
    assert n.depths[-1].encoding == "32FC1" and depth.shape == (64, 64)
    assert not np.isnan(depth).all() and (depth[np.isfinite(depth)] > 0).all()
