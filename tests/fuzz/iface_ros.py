"""Fuzzing the ROS 2 camera node from another process: malformed messages and parameter sets.

The worker starts ``rtfm-camera`` (ground-truth camera, 32x32) in a subprocess on its own
domain and, from its own rclpy node, publishes hostile ``Twist`` (cmd_vel) and ``PoseStamped``
(set_pose) messages and sets every writable parameter (and a few read-only ones) to NaN, +-inf,
negative, zero, huge and wrong-typed values through the real parameter service. A node that
exits is a process death; a set that succeeds with an invalid value, or odometry that turns
non-finite, is a silent acceptance. A successful set is reverted at once. Skipped without rclpy.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, ProcessDeath, SilentAcceptance

NAN, INF = float("nan"), float("inf")
FLOATS = [0.0, 0.3, -0.3, 1.0, NAN, INF, -INF, 1e308, -1e308, 5e-324, 5e3, -0.0]
BAD_PARAM_VALUES: list[Any] = [NAN, INF, -INF, -1.0, 0.0, 1e308, -1e308, 10**18, -5, "x", True, "", [1.0, 2.0], 0]


def skip_reason() -> str | None:
    """Why this interface cannot run here (no rclpy), or None."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return "rclpy is not installed (the ros extra)"
    return None


def setup(workdir: Path) -> dict[str, Any]:
    """Start the node and a client; wait for its first odometry."""
    import rclpy
    from geometry_msgs.msg import PoseStamped, Twist
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter_client import AsyncParameterClient

    domain = 150 + os.getpid() % 80
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    params = {"camera": "ground_truth", "width": 32, "height": 32, "rate_hz": 10.0, "publish_depth": "false"}
    cmd = [sys.executable, "-m", "rtfm_env.ros.camera_node", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    log = open(workdir / "node.log", "w")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("rtfm_fuzz_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    odoms: list[Any] = []
    node.create_subscription(Odometry, "odom", odoms.append, 10)
    ctx = {"proc": proc, "log": log, "context": context, "node": node, "executor": executor, "odoms": odoms,
           "twist": node.create_publisher(Twist, "cmd_vel", 10),
           "pose": node.create_publisher(PoseStamped, "set_pose", 10),
           "params": AsyncParameterClient(node, "rtfm_camera"), "workdir": workdir}
    end = time.monotonic() + 90.0
    while not odoms or ctx["twist"].get_subscription_count() == 0 or ctx["pose"].get_subscription_count() == 0:
        if proc.poll() is not None or time.monotonic() > end:
            teardown(ctx)
            raise RuntimeError(f"camera node did not start: {(workdir / 'node.log').read_text()[-2000:]}")
        executor.spin_once(timeout_sec=0.05)
    if not ctx["params"].wait_for_services(timeout_sec=20.0):
        raise RuntimeError("no parameter services")
    return ctx


def teardown(ctx: dict[str, Any]) -> None:
    """Stop the node (SIGINT, then SIGKILL) and the client."""
    import rclpy

    proc = ctx["proc"]
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10.0)
    ctx["log"].close()
    ctx["executor"].shutdown()
    ctx["node"].destroy_node()
    rclpy.try_shutdown(context=ctx["context"])


def _spin(ctx: dict[str, Any], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ctx["executor"].spin_once(timeout_sec=0.005)


def _alive(ctx: dict[str, Any], what: str) -> None:
    code = ctx["proc"].poll()
    if code is not None:
        tail = (Path(ctx["workdir"]) / "node.log").read_text()[-600:].replace("\n", " | ")
        raise ProcessDeath(f"{what}: the node exited with {code}: {tail}")


def _pose_finite(ctx: dict[str, Any], what: str) -> None:
    if not ctx["odoms"]:
        return
    p = ctx["odoms"][-1].pose.pose
    values = [p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y, p.orientation.z,
              p.orientation.w]
    if not all(math.isfinite(v) for v in values) or max(abs(v) for v in values[:3]) > 1e6:
        raise SilentAcceptance(f"{what}: odometry became {values}")
    del ctx["odoms"][:-1]


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """A message to publish or a parameter to set."""
    r = rng.random()
    if r < 0.45:
        return _twist_case(rng, ctx)
    if r < 0.7:
        return _pose_case(rng, ctx)
    return _param_case(rng, ctx)


def _twist_case(rng: np.random.Generator, ctx: dict[str, Any]) -> Case:
    from geometry_msgs.msg import Twist

    msg = Twist()
    values = [FLOATS[int(rng.integers(0, len(FLOATS)))] for _ in range(6)]
    for (part, axis), v in zip(itertools.product(("linear", "angular"), "xyz"), values, strict=True):
        setattr(getattr(msg, part), axis, v)
    what = f"cmd_vel Twist linear={values[:3]} angular={values[3:]}"

    def run() -> None:
        ctx["twist"].publish(msg)
        _spin(ctx, 0.02)
        _alive(ctx, what)
        _pose_finite(ctx, what)

    # A message is never refused to its sender: accepted (clamped, ignored or logged) is the outcome.
    return Case(what, None, run)


def _pose_case(rng: np.random.Generator, ctx: dict[str, Any]) -> Case:
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.frame_id = str(rng.choice(["odom", "", "map", "x" * 300]))
    pos = [FLOATS[int(rng.integers(0, len(FLOATS)))] for _ in range(3)]
    quat = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [NAN, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0],
            [0.0, 0.0, 1e308, 1e308], [0.0, 0.7071, 0.0, 0.7071]][int(rng.integers(0, 6))]
    p = msg.pose
    p.position.x, p.position.y, p.position.z = pos
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = quat
    what = f"set_pose PoseStamped frame={msg.header.frame_id[:10]!r} position={pos} orientation={quat}"

    def run() -> None:
        ctx["pose"].publish(msg)
        _spin(ctx, 0.02)
        _alive(ctx, what)
        _pose_finite(ctx, what)

    return Case(what, None, run)


def _param_case(rng: np.random.Generator, ctx: dict[str, Any]) -> Case:
    from rclpy.parameter import Parameter

    from rtfm_env.ros.camera_node import PARAMETERS

    writable = [n for n, p in PARAMETERS.items() if not p.read_only]
    names = writable * 4 + ["rate_hz", "width", "camera"]  # read-only ones must refuse too
    name = names[int(rng.integers(0, len(names)))]
    default = PARAMETERS[name].default
    value = BAD_PARAM_VALUES[int(rng.integers(0, len(BAD_PARAM_VALUES)))]
    if name == "world_path":
        value = [str(ctx["workdir"]), "/dev/null", "/proc/self/mem", "", "w.rtfm", "\x00", 5, NAN][
            int(rng.integers(0, 8))]
    if PARAMETERS[name].read_only:
        valid: bool | None = False
    elif type(value) is not type(default):
        valid = False
    elif isinstance(value, float) and (not math.isfinite(value) or value < 0 or value > 1e6):
        valid = False
    # A ROS string ends at its first NUL byte (CDR), so "\x00" reaches the node as "" (unset): valid.
    elif name == "world_path" and value in (str(ctx["workdir"]), "/dev/null", "/proc/self/mem"):
        valid = False
    else:
        valid = None
    what = f"set parameter {name} := {value!r}"

    def set_value(v: Any) -> Any:
        future = ctx["params"].set_parameters([Parameter(name, value=v)])
        end = time.monotonic() + 10.0
        while not future.done():
            _alive(ctx, what)
            if time.monotonic() > end:
                raise ProcessDeath(f"{what}: no answer from the parameter service in 10 s")
            ctx["executor"].spin_once(timeout_sec=0.01)
        return future.result().results[0]

    def run() -> None:
        result = set_value(value)
        _spin(ctx, 0.05)
        _alive(ctx, what)
        if result.successful:
            set_value(default)  # revert, so later cases start from the defaults
            _pose_finite(ctx, what)
            return
        raise ValueError(result.reason)

    return Case(what, valid, run)
