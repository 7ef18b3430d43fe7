"""Hardening of the ROS side (issue 15): parameters from a hostile peer, floods, signals, stale staging.

The process tests reuse the `camera_node` fixture of test_ros_camera_node (a NodeProcess): the node runs in a subprocess
and the test process is the peer that sets its parameters and floods its topics.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")
pytest.importorskip("rosbags", reason="needs the ros extra: pip install -e '.[ros]'")

from geometry_msgs.msg import Twist  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from test_ros_camera_node import _DOMAINS, _pose_msg, camera_node  # noqa: E402, F401  (camera_node: a fixture)

from rtfm_env.ros.bag import LOCK_NAME, STALE_AGE_S, BagRecorder, remove_stale_staging  # noqa: E402
from rtfm_env.ros.camera_node import BOUNDS, PARAMETERS, parameter_problem, world_path_problem  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# -- parameter checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("max_linear_speed", math.nan, "max_linear_speed must be finite"),
        ("max_linear_speed", -1.0, "max_linear_speed must be in [0, 100], got -1.0"),
        ("max_angular_speed", math.inf, "must be finite"),
        ("cmd_vel_timeout", math.nan, "cmd_vel_timeout must be finite"),
        ("cmd_vel_timeout", -0.5, "cmd_vel_timeout must be in [0, 3600]"),
        ("rate_hz", 0.0, "rate_hz must be in (0, 1000]"),
        ("width", 100000, "width must be in [1, 1024], got 100000"),
        ("height", 0, "height must be in [1, 1024]"),
        ("fov", 180.0, "fov must be in (0, 180)"),
        ("fov", 90, "fov must be a double"),
        ("width", True, "width must be an integer"),  # a bool is not a size
        ("seed", -1, "seed must be in"),
        ("k", 10**9, "k must be in [0, 64]"),
        ("publish_depth", 1, "publish_depth must be a bool"),
        ("odom_frame", "", "odom_frame must be a frame id"),
        ("world_path", 5, "world_path must be a string"),
        ("world_path", "/dev/null", "not a regular file"),
        ("no_such", 1, "not a parameter"),
    ],
)
def test_parameter_problem_names_the_parameter_and_bound(name, value, message):
    """Each bad value is refused with a message naming the parameter and its bound or type."""
    assert message in (parameter_problem(name, value) or "")


def test_every_default_is_valid_and_every_bound_names_a_number_parameter():
    """The defaults pass their own checks; bounds exist only for numeric parameters."""
    assert all(parameter_problem(name, p.default) is None for name, p in PARAMETERS.items())
    assert all(type(PARAMETERS[name].default) in (int, float) for name in BOUNDS)
    assert parameter_problem("max_linear_speed", 0.0) is None  # zero holds the robot still


def test_world_path_problem(tmp_path):
    """Regular files (or links to one) and new files in an existing directory pass; everything else is refused."""
    (tmp_path / "w.rtfm").write_bytes(b"x")
    (tmp_path / "to_file").symlink_to(tmp_path / "w.rtfm")
    (tmp_path / "to_dir").symlink_to(tmp_path)
    (tmp_path / "to_dev").symlink_to("/dev/null")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    for ok in ("", "  ", str(tmp_path / "w.rtfm"), str(tmp_path / "to_file"), str(tmp_path / "new.rtfm")):
        assert world_path_problem(ok) is None, ok
    refused = {
        str(tmp_path): "directory",
        str(tmp_path / "to_dir"): "directory",
        "/dev/null": "device",
        str(tmp_path / "to_dev"): "device",
        str(tmp_path / "fifo"): "FIFO",
        str(tmp_path / "dangling"): "symlink to nothing",
        str(tmp_path / "missing" / "w.rtfm"): "does not exist",
        str(tmp_path / "w.rtfm" / "sub"): "is a file, not a directory",
        "x" * 5000: "at most 4096",
    }
    for path, reason in refused.items():
        assert reason in (world_path_problem(path) or ""), path
    assert "string" in world_path_problem(b"/tmp/w")


# -- a hostile peer ---------------------------------------------------------------------------

HOSTILE = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e300, -1, 0, 10**18, True, "x", "", "/dev/null"]


def _value(v: object) -> ParameterValue:
    """The ParameterValue of a Python value, with its own (maybe wrong) type."""
    if isinstance(v, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=v)
    if isinstance(v, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=v)
    if isinstance(v, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(v))


def test_hostile_parameters_and_floods_leave_the_node_alive_and_its_pose_finite(camera_node):  # noqa: F811
    """Every parameter set to NaN, +-inf, negative, zero, huge and wrong-typed values through the service.

    Bad values are refused with a reason and the old value stays; a request rclpy cannot parse
    (an unknown type code, a deletion) is answered; the node keeps publishing a finite pose, a
    zero cmd_vel does not move it, and a flood of malformed set_pose and cmd_vel logs a few
    throttled lines, not one per message.
    """
    n = camera_node(rate_hz=20.0, seed=0, publish_clock="true")
    client = n.node.create_client(SetParameters, "/rtfm_camera/set_parameters")
    assert client.wait_for_service(timeout_sec=10.0)

    def call(params: list[ParameterMsg]) -> list:
        future = client.call_async(SetParameters.Request(parameters=params))
        n.spin_until(future.done, 10.0, "set_parameters")
        return future.result().results

    started = time.monotonic()
    for name, p in PARAMETERS.items():
        results = call([ParameterMsg(name=name, value=_value(v)) for v in HOSTILE])
        for v, r in zip(HOSTILE, results, strict=True):
            if p.read_only or parameter_problem(name, v) is not None:
                assert not r.successful and r.reason, (name, v)
            if not p.read_only and parameter_problem(name, v) is not None:
                assert name in r.reason, (name, v, r.reason)
    # rclpy's own parameter: with publish_clock, sim time would make the frame timer wait for itself.
    (r,) = call([ParameterMsg(name="use_sim_time", value=_value(True))])
    assert not r.successful and "publish_clock" in r.reason, r.reason
    for code in (99, ParameterType.PARAMETER_NOT_SET):  # a type rclpy cannot parse; a deletion
        (r,) = call([ParameterMsg(name="max_linear_speed", value=ParameterValue(type=code))])
        assert not r.successful and r.reason
    assert n.proc.poll() is None, n.output()
    # Back to the defaults: each accepted value was in range; refused ones changed nothing.
    for name, p in PARAMETERS.items():
        if not p.read_only:
            (r,) = call([ParameterMsg(name=name, value=_value(p.default))])
            assert r.successful, (name, r.reason)
    # The cases: NaN speed, negative speed, NaN timeout: all refused, values unchanged.
    for name, v in (("max_linear_speed", math.nan), ("max_linear_speed", -1.0), ("cmd_vel_timeout", math.nan)):
        (r,) = call([ParameterMsg(name=name, value=_value(v))])
        assert not r.successful and name in r.reason
    assert n.get_param("max_linear_speed") == 2.0 and n.get_param("cmd_vel_timeout") == 0.5
    assert time.monotonic() - started < 30.0

    # Floods of malformed messages on both topics; then a zero command must hold the robot still.
    here = n.odoms[-1].pose.pose.position
    bad_pose = _pose_msg(here.x, here.y, 0.0, quat=(0.0, 0.0, 0.0, 0.0))
    nan_twist = Twist()
    nan_twist.linear.x = math.nan
    for i in range(300):
        n.set_pose_pub.publish(bad_pose)
        n.cmd_pub.publish(nan_twist)
        if i % 20 == 0:
            n.executor.spin_once(timeout_sec=0.002)
    n.spin_for(0.5)
    count = len(n.odoms)
    n.spin_for(1.0, each=n.twist(0.0, 0.0))
    n.spin_until(lambda: len(n.odoms) >= count + 10, 10.0, "odometry after the floods")
    for o in n.odoms[count:]:
        p, q = o.pose.pose.position, o.pose.pose.orientation
        assert np.isfinite([p.x, p.y, p.z, q.x, q.y, q.z, q.w]).all()
        np.testing.assert_allclose([p.x, p.y], [here.x, here.y], atol=1e-12)
    output = n.stop()
    assert n.proc.returncode == 0, output  # SIGINT: a clean stop
    for line in ("set_pose ignored", "cmd_vel with non-finite values", "parameter set refused"):
        assert 1 <= output.count(line) <= 6, (line, output.count(line), output[-3000:])


# -- record-bag: signals and stale staging ----------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_record_bag_finishes_the_bag_on_a_signal(tmp_path, sig):
    """SIGINT or SIGTERM: exit 0, the summary printed, a readable bag with the summary's counts, no staging left."""
    bag, log = tmp_path / "bag", tmp_path / "out.txt"
    env = dict(os.environ, ROS_DOMAIN_ID=str(next(_DOMAINS) % 233), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [sys.executable, "-m", "rtfm_env.cli", "record-bag", "--out", str(bag), "--duration", "120"]
    cmd += ["-p", "rate_hz:=20.0"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60.0
        while "recording to" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # some frames, and the signal lands while frames are being published
        proc.send_signal(sig)
        proc.wait(timeout=30.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert f"stopped early by {sig.name}" in text, text
    summary = next(line for line in text.splitlines() if line.startswith("recorded "))
    frames = int(summary.split()[1])
    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert frames >= 2 and counts["/camera/image_raw"] == counts["/odom"] == frames, (counts, summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "out.txt"]


def test_stale_staging_is_removed_by_the_next_recording(tmp_path):
    """Dead recordings' staging (lock not held, or old and lockless) goes; a live one and look-alikes stay."""
    dead = tmp_path / ".bag.partial-abcd1234"  # killed: its lock file is there, nobody holds it
    (dead / "bag").mkdir(parents=True)
    (dead / LOCK_NAME).write_text("")
    old = tmp_path / ".other.partial-x1y2z3w4"  # no lock file (killed at once, or older scheme), old
    old.mkdir()
    os.utime(old, (time.time() - STALE_AGE_S - 60,) * 2)
    fresh = tmp_path / ".new.partial-q1w2e3r4"  # no lock file, but young: maybe being created now
    fresh.mkdir()
    lookalike = tmp_path / ".bag.partial-mine"  # not mkdtemp's name
    lookalike.mkdir()
    (tmp_path / ".link.partial-abcdefgh").symlink_to(lookalike)

    live = BagRecorder(tmp_path / "live")  # the next recording into this directory
    try:
        assert sorted(live.removed_stale) == sorted([dead, old])
        assert not dead.exists() and not old.exists()
        second = BagRecorder(tmp_path / "second")  # a concurrent one: leaves the live staging alone
        assert second.removed_stale == []
        assert fresh.is_dir() and lookalike.is_dir() and (tmp_path / ".link.partial-abcdefgh").is_symlink()
        assert live._staging.is_dir() and second._staging.is_dir()
        assert remove_stale_staging(tmp_path) == []  # both recorders hold their locks
        second.abort()
    finally:
        live.close()
    assert (tmp_path / "live").is_dir() and not live._staging.exists()


def test_world_path_refuses_virtual_file_systems_and_unwritable_directories(tmp_path):
    """/proc, /sys and /dev never take a world, nor does a directory the node cannot write to."""
    from rtfm_env.ros.camera_node import world_path_problem

    assert "virtual file system" in world_path_problem("/proc/self/mem")
    assert world_path_problem("/proc/self/new.rtfm") is not None  # refused: not writable or virtual
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere: the check cannot fail then
            assert "not writable" in world_path_problem(str(locked / "w.rtfm"))
    finally:
        locked.chmod(0o700)
    assert world_path_problem(str(tmp_path / "w.rtfm")) is None
