"""ROS 2 camera node: achieved publish rate, jitter, and latency from cmd_vel to the image.

For each camera (ground truth, frame model) and each configured rate, the node runs in a
subprocess (``python -m rtfm_env.ros.camera_node``, its own ROS_DOMAIN_ID, discovery on this
host) and this process subscribes to it with rclpy:

* rate and jitter: over ``seconds`` of images, the achieved rate from the node's stamps and
  from arrival times, and the spread of the intervals between images (standard deviation,
  95th percentile and worst deviation from ``1 / rate``);
* latency: with the robot standing still, one Twist (turn in place at 1 rad/s, so no wall is
  in the way) is published; the first odometry whose pose has moved marks the first frame that
  reflects it, and the latency is the arrival time of the image with that odometry's stamp (the
  node stamps all of a frame's messages alike) minus the send time. For the ground-truth camera
  the first image whose pixels differ from the standing image is timed as well. The robot is
  stopped and left standing for a random part of a frame period between trials, so the trials
  sample the phase of the node's timer;
* flood: the ground-truth camera at 10 Hz while another process (its own rclpy node) sends
  ``flood_rate`` malformed messages per second, half NaN Twists on ``cmd_vel`` and half
  ``set_pose`` messages with a zero quaternion; the image rate is measured as above.

    .venv/bin/python benchmarks/ros_node.py --out docs/results/ros_node.json   # ~3 min
    .venv/bin/python benchmarks/ros_node.py --flood-only --out docs/results/ros_node.json   # only the flood row

A smoke run (seconds): ``--cameras ground_truth --rates 10 --seconds 2 --latency-trials 2 --out /tmp/r.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from benchlib import machine_info, write_atomic
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

START_TIMEOUT = 120.0  # seconds for a node to import torch/MiniWorld and publish its first frame
_DOMAINS = itertools.count(120 + (os.getpid() % 20) * 5)


@dataclass
class RosNodeConfig:
    """What the benchmark measures."""

    cameras: list[str] = field(default_factory=lambda: ["ground_truth", "model"])  # camera parameter values
    rates: list[float] = field(default_factory=lambda: [10.0, 30.0])  # rate_hz values, frames/s
    seconds: float = 10.0  # measurement window per (camera, rate), s
    latency_trials: int = 10  # cmd_vel -> image trials per (camera, rate)
    size: int = 64  # width and height, pixels
    torch_threads: int = 1  # the node's torch_threads parameter (model camera); 0: torch's default, one per core
    scene: str = "MiniWorld-OneRoom-v0"  # the simulated world
    seed: int = 0  # its layout
    out: str = "runs/ros_node.json"  # JSON output
    flood_rate: float = 400.0  # malformed messages/s of the flood row (cmd_vel and set_pose); 0: no flood row
    flood_only: bool = False  # measure only the flood row, replacing it in an existing --out JSON


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _interval_stats(times_s: np.ndarray, period: float) -> dict:
    """Rate and jitter of a sequence of event times (seconds)."""
    if len(times_s) < 3:
        raise RuntimeError(f"only {len(times_s)} images arrived: cannot measure a rate")
    dt = np.diff(times_s)
    dev = np.abs(dt - period)
    return {
        "frames": int(len(times_s)),
        "rate_hz": float((len(times_s) - 1) / (times_s[-1] - times_s[0])),
        "interval_mean_ms": float(dt.mean() * 1e3),
        "interval_std_ms": float(dt.std() * 1e3),
        "deviation_p95_ms": float(np.percentile(dev, 95) * 1e3),
        "deviation_max_ms": float(dev.max() * 1e3),
    }


class _Session:
    """One camera node in a subprocess and the rclpy subscriber that measures it."""

    def __init__(self, camera: str, rate: float, cfg: RosNodeConfig) -> None:
        self.domain = next(_DOMAINS) % 233
        env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        params = {
            "camera": camera,
            "rate_hz": float(rate),
            "width": cfg.size,
            "height": cfg.size,
            "scene": cfg.scene,
            "seed": cfg.seed,
            "cmd_vel_timeout": 0.0,  # a slow camera must not time commands out between frames
            "torch_threads": cfg.torch_threads,
        }
        cmd = [sys.executable, "-m", "rtfm_env.ros.camera_node", "--ros-args"]
        cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the node
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain)
        self.node = rclpy.create_node("rtfm_bench_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.images: list[tuple[float, Image]] = []  # (arrival, monotonic s; message)
        self.odoms: list[Odometry] = []
        on_image = lambda m: self.images.append((time.monotonic(), m))  # noqa: E731
        self.node.create_subscription(Image, "camera/image_raw", on_image, qos_profile_sensor_data)
        self.node.create_subscription(Odometry, "odom", self.odoms.append, 50)
        self.cmd_pub = self.node.create_publisher(Twist, "cmd_vel", 10)

    def spin_until(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"node exited with {self.proc.returncode} waiting for {what}:\n{self.log.read()}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.002)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.002)

    def twist(self, omega: float) -> float:
        """Publish a turn-in-place Twist; returns its send time (monotonic s)."""
        msg = Twist()
        msg.angular.z = float(omega)
        t = time.monotonic()
        self.cmd_pub.publish(msg)
        return t

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.executor.shutdown()
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)
            self.log.close()


def _yaw_z(o: Odometry) -> float:
    return float(o.pose.pose.orientation.z)  # enough to tell a turn: sin(yaw/2) changes


def _latency_trial(s: _Session, rate: float, rng: np.random.Generator, check_pixels: bool) -> dict:
    """One cmd_vel -> image trial, from a standing robot; leaves the robot standing again."""
    period = 1.0 / rate
    s.spin_for(float(rng.uniform(0.0, period)))  # a random phase of the node's timer
    still_odom, still_image = len(s.odoms), len(s.images)
    yaw0 = _yaw_z(s.odoms[-1])
    image0 = bytes(s.images[-1][1].data)
    sent = s.twist(1.0)
    s.spin_until(lambda: any(_yaw_z(o) != yaw0 for o in s.odoms[still_odom:]), 30.0, "odometry to move")
    moved = next(o for o in s.odoms[still_odom:] if _yaw_z(o) != yaw0)
    stamp = _stamp_ns(moved.header.stamp)
    s.spin_until(
        lambda: any(_stamp_ns(m.header.stamp) >= stamp for _, m in s.images[still_image:]), 30.0, "the moved image"
    )
    arrival = next(t for t, m in s.images[still_image:] if _stamp_ns(m.header.stamp) >= stamp)
    trial = {"image_of_moved_odom_ms": (arrival - sent) * 1e3}
    if check_pixels:
        changed = [t for t, m in s.images[still_image:] if bytes(m.data) != image0]
        trial["first_changed_image_ms"] = (changed[0] - sent) * 1e3 if changed else None
    # Stop and wait until two frames in a row stand still.
    s.twist(0.0)
    s.spin_until(
        lambda: len(s.odoms) >= 2 and all(o.twist.twist.angular.z == 0.0 for o in s.odoms[-2:]), 30.0, "the stop"
    )
    return trial


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "p50": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "max": float(v.max()),
    }


def measure(camera: str, rate: float, cfg: RosNodeConfig, rng: np.random.Generator) -> dict:
    """Rate, jitter and latency of one node configuration."""
    s = _Session(camera, rate, cfg)
    try:
        s.spin_until(lambda: bool(s.images) and bool(s.odoms), START_TIMEOUT, "the first frame")
        s.spin_until(lambda: s.cmd_pub.get_subscription_count() > 0, 10.0, "the cmd_vel subscription")
        s.spin_for(1.0)  # warm-up: first model calls and discovery settle
        start = len(s.images)
        s.spin_for(cfg.seconds)
        window = s.images[start:]
        arrival = np.array([t for t, _ in window])
        stamps = np.array([_stamp_ns(m.header.stamp) for _, m in window], dtype=np.float64) * 1e-9
        trials = [
            _latency_trial(s, rate, rng, check_pixels=camera == "ground_truth") for _ in range(cfg.latency_trials)
        ]
    finally:
        s.close()
    result = {
        "camera": camera,
        "rate_hz_configured": rate,
        "published": _interval_stats(stamps, 1.0 / rate),
        "received": _interval_stats(arrival, 1.0 / rate),
        "latency_ms": {"image_of_moved_odom": _summary([t["image_of_moved_odom_ms"] for t in trials])},
        "trials": trials,
    }
    changed = [t.get("first_changed_image_ms") for t in trials]
    if changed and all(c is not None for c in changed):
        result["latency_ms"]["first_changed_image"] = _summary(changed)
    return result


# The flooding peer: its own process and rclpy node, so the node under test shares the CPU with
# it as with any other peer. It waits for both subscriptions, then sends for `seconds` and prints
# how many messages it sent and over how long.
FLOODER = r"""
import math, sys, time
import rclpy
from geometry_msgs.msg import PoseStamped, Twist
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
rclpy.init()
node = rclpy.create_node("rtfm_bench_flooder")
cmd, pose = node.create_publisher(Twist, "cmd_vel", 10), node.create_publisher(PoseStamped, "set_pose", 10)
twist = Twist()
twist.linear.x = math.nan
bad = PoseStamped()
bad.header.frame_id = "odom"
bad.pose.orientation.w = 0.0  # zero quaternion: refused by the node
end = time.monotonic() + 60.0
while cmd.get_subscription_count() == 0 or pose.get_subscription_count() == 0:
    assert time.monotonic() < end, "the node's subscriptions never matched"
    rclpy.spin_once(node, timeout_sec=0.05)
print("matched", flush=True)
sent, start = 0, time.monotonic()
while (now := time.monotonic()) < start + seconds:
    due = int((now - start) * rate)
    while sent < due:
        (cmd if sent % 2 == 0 else pose).publish(twist if sent % 2 == 0 else bad)
        sent += 1
    time.sleep(0.002)
print(f"sent {sent} {time.monotonic() - start}", flush=True)
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_flood(cfg: RosNodeConfig) -> dict:
    """Image rate of the ground-truth camera at 10 Hz while a peer floods it with malformed messages."""
    rate = 10.0
    s = _Session("ground_truth", rate, cfg)
    flooder = None
    try:
        s.spin_until(lambda: bool(s.images) and bool(s.odoms), START_TIMEOUT, "the first frame")
        env = dict(os.environ, ROS_DOMAIN_ID=str(s.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        length = cfg.seconds + 2.0  # 1 s to settle before the window and 1 s after it
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOODER, str(cfg.flood_rate), str(length)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = flooder.stdout.readline().strip()
        assert line == "matched", f"the flooder did not start: {line}"
        s.spin_for(1.0)
        start, cpu0, t0 = len(s.images), _cpu_seconds(s.proc.pid), time.monotonic()
        s.spin_for(cfg.seconds)
        window = s.images[start:]
        cpu_percent = 100.0 * (_cpu_seconds(s.proc.pid) - cpu0) / (time.monotonic() - t0)
        out, _ = flooder.communicate(timeout=60.0)
        sent, seconds = out.split("sent ", 1)[1].split()[:2]
        alive = s.proc.poll() is None
        s.log.seek(0)
        log_lines = len(s.log.read().splitlines())
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
        s.close()
    arrival = np.array([t for t, _ in window])
    stamps = np.array([_stamp_ns(m.header.stamp) for _, m in window], dtype=np.float64) * 1e-9
    return {
        "camera": "ground_truth",
        "rate_hz_configured": rate,
        "flood_msgs_per_s_target": cfg.flood_rate,
        "flood_msgs_per_s_sent": int(sent) / float(seconds),
        "node_alive_after": alive,
        "node_cpu_percent": cpu_percent,  # of one core, over the measurement window
        "node_log_lines": log_lines,  # everything the node printed from start to the end of the flood
        "published": _interval_stats(stamps, 1.0 / rate),
        "received": _interval_stats(arrival, 1.0 / rate),
    }


def main(cfg: RosNodeConfig) -> dict:
    """Measure every (camera, rate) and the flood row and write the JSON; returns the result dict.

    With ``flood_only`` the other rows are taken from the existing ``out`` file (if any).
    """
    rng = np.random.default_rng(0)
    out = Path(cfg.out)
    if cfg.flood_only:
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "ros_node", "runs": []}
        result.setdefault("config", asdict(cfg))
        result["flood_config"] = asdict(cfg)
        result["flood_machine"] = machine_info()
    else:
        runs = [measure(camera, rate, cfg, rng) for camera in cfg.cameras for rate in cfg.rates]
        result = {"benchmark": "ros_node", "config": asdict(cfg), "machine": machine_info(), "runs": runs}
    if cfg.flood_rate > 0:
        result["flood"] = measure_flood(cfg)
    write_atomic(out, json.dumps(result, indent=2))
    return result


def _parse() -> RosNodeConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = RosNodeConfig()
    p.add_argument("--cameras", nargs="+", default=d.cameras, choices=["ground_truth", "model"])
    p.add_argument("--rates", nargs="+", type=float, default=d.rates)
    for name in ("seconds", "latency_trials", "size", "torch_threads", "scene", "seed", "out", "flood_rate"):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(d, name)), default=getattr(d, name))
    p.add_argument("--flood-only", action="store_true", help="measure only the flood row, into an existing --out")
    return RosNodeConfig(**vars(p.parse_args()))


def table(result: dict) -> str:
    """The result as a Markdown table."""
    rows = [
        "| camera | configured Hz | published Hz | received Hz | interval std (ms) | p95 / max deviation (ms) "
        "| cmd_vel -> image latency, mean / p95 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        pub, rec, lat = r["published"], r["received"], r["latency_ms"]["image_of_moved_odom"]
        rows.append(
            f"| {r['camera']} | {r['rate_hz_configured']:g} | {pub['rate_hz']:.2f} | {rec['rate_hz']:.2f} "
            f"| {rec['interval_std_ms']:.1f} | {rec['deviation_p95_ms']:.1f} / {rec['deviation_max_ms']:.1f} "
            f"| {lat['mean']:.0f} / {lat['p95']:.0f} |"
        )
    if "flood" in result:
        f = result["flood"]
        pub, rec = f["published"], f["received"]
        rows.append(
            f"| {f['camera']} + flood of {f['flood_msgs_per_s_sent']:.0f} malformed msg/s "
            f"| {f['rate_hz_configured']:g} | {pub['rate_hz']:.2f} | {rec['rate_hz']:.2f} "
            f"| {rec['interval_std_ms']:.1f} "
            f"| {rec['deviation_p95_ms']:.1f} / {rec['deviation_max_ms']:.1f} | - |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(main(_parse())))
