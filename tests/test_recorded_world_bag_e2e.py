"""End to end from a moving bag: record-bag --drive walk in a held-out scene, world build, navigate it, drive it.

The chain a user recording a site follows, in-process: ``rtfm-env record-bag --drive walk``
(ground-truth camera, depth on) in a held-out MiniWorld layout, ``rtfm-env world build --from bag``,
then the built world as a scene: its free space against MiniWorld's own, PointNav's oracle in it,
and the camera node driving in it on ``cmd_vel`` until the grid stops it.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")
rosbags = pytest.importorskip("rosbags", reason="needs the ros extra: pip install -e '.[ros]'")

from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from test_envs_recorded import oracle_successes  # noqa: E402
from test_world_build import REGION_M, grid_iou  # noqa: E402

import rtfm_env  # noqa: E402, F401  (registers the envs)
from rtfm_env.cli import main as rtfm_env_main  # noqa: E402
from rtfm_env.geometry import pose_to_state, ros_to_world  # noqa: E402
from rtfm_env.memory import SpatialMemory  # noqa: E402
from rtfm_env.ros.record_bag import DRIVES, run  # noqa: E402
from rtfm_env.scenes import HELDOUT_IDS, MiniWorldScene, RecordedScene  # noqa: E402
from rtfm_env.worlds import WALK_FRAMES, recording  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SCENE, SEED = "MiniWorld-WallGap-v0", 0  # a public held-out layout: two rooms joined by a gap in a wall
RATE_HZ = 100.0
# A fast robot at a high frame rate, so that the recording takes seconds: each step of the walk
# (0.25 m, or a 15 degree turn) spans exactly two frames (12.5 m/s * 0.01 s = 0.125 m;
# 0.2618 rad / (13.1 rad/s * 0.01 s) = 2.0 -> 2 frames).
MAX_LINEAR, MAX_ANGULAR = 12.5, 13.1
FRAMES_PER_STEP = 2
FRAMES = 1 + FRAMES_PER_STEP * (WALK_FRAMES - 1)  # the start, then the walk regime's 255 steps
TOPICS = (
    "/camera/image_raw",
    "/camera/camera_info",
    "/camera/depth/image_raw",
    "/camera/depth/camera_info",
    "/odom",
    "/camera/pose",
)


def _messages(bag) -> dict[str, list]:
    """Every message of a bag, deserialised, per topic, in log-time order."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            out.setdefault(conn.topic, []).append(typestore.deserialize_cdr(raw, conn.msgtype))
    return out


def _pose_matrix(p) -> np.ndarray:
    """The 4x4 matrix of a geometry_msgs/Pose."""
    import transforms3d

    m = np.eye(4)
    q = p.orientation
    m[:3, :3] = transforms3d.quaternions.quat2mat([q.w, q.x, q.y, q.z])
    m[:3, 3] = p.position.x, p.position.y, p.position.z
    return m


@pytest.fixture(scope="module")
def walk() -> SimpleNamespace:
    """The world="walk" regime's recording of the layout and MiniWorld's own free-space map."""
    assert SCENE in HELDOUT_IDS
    scene = MiniWorldScene(SCENE, 64, 64, 60.0)
    try:
        rec = recording(scene, "walk", scene.reset(SEED))
        m = scene.top_down_map()
    finally:
        scene.close()
    return SimpleNamespace(rec=rec, free=m.free, origin=(m.origin_x, m.origin_z), cell=m.cell)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Record a bag per storage with ``rtfm-env record-bag --drive walk`` and build its world; cached."""
    made: dict[str, SimpleNamespace] = {}

    def get(storage: str) -> SimpleNamespace:
        if storage not in made:
            root = tmp_path_factory.mktemp(f"bag_{storage}")
            bag, world = root / "wallgap_bag", root / "wallgap.world"
            params = [f"scene:={SCENE}", f"seed:={SEED}", f"rate_hz:={RATE_HZ}"]
            params += [f"max_linear_speed:={MAX_LINEAR}", f"max_angular_speed:={MAX_ANGULAR}"]
            # sqlite3 also runs on simulated time: stamps are n / rate_hz exactly.
            sim_time = storage == "sqlite3"
            if sim_time:
                params.append("publish_clock:=true")
            argv = ["record-bag", "--out", str(bag), "--storage", storage, "--drive", "walk"]
            argv += ["--duration", "0", "--frames", str(FRAMES)]
            for p in params:
                argv += ["-p", p]
            t0 = time.time()
            assert rtfm_env_main(argv) == 0
            t1 = time.time()
            assert rtfm_env_main(["world", "build", "--from", "bag", str(bag), "--out", str(world)]) == 0
            made[storage] = SimpleNamespace(bag=bag, world=world, wall=(t0, t1), sim_time=sim_time)
        return made[storage]

    return get


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_holds_the_walk_regimes_walk_with_every_topic(recordings, walk, storage):
    """The bag is a moving camera: every topic at every frame, and its step ends are the walk regime's frames."""
    r = recordings(storage)
    msgs = _messages(r.bag)
    assert {t: len(msgs.get(t, [])) for t in TOPICS} == dict.fromkeys(TOPICS, FRAMES)
    assert ("/clock" in msgs) == r.sim_time
    image, depth = msgs["/camera/image_raw"][0], msgs["/camera/depth/image_raw"][0]
    info = msgs["/camera/camera_info"][0]
    assert (image.encoding, image.width, image.height, depth.encoding) == ("rgb8", 64, 64, "32FC1")
    assert info.k[0] == pytest.approx(32.0 / math.tan(math.radians(30.0)))
    odom = [_pose_matrix(o.pose.pose)[:2, 3] for o in msgs["/odom"]]
    assert sum(np.linalg.norm(b - a) for a, b in zip(odom, odom[1:], strict=False)) > 20.0  # it moved

    mem = SpatialMemory.load(r.world)
    poses = mem.poses(mem.ids)
    ends = slice(0, FRAMES, FRAMES_PER_STEP)
    np.testing.assert_allclose(poses[ends], walk.rec.poses, atol=1e-9)
    assert np.abs(mem.frames(mem.ids)[ends].astype(int) - walk.rec.frames.astype(int)).max() <= 1
    d, ref = mem.depths(mem.ids)[ends], walk.rec.depths
    assert np.array_equal(np.isfinite(d), np.isfinite(ref))
    np.testing.assert_allclose(d[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-3, atol=2e-3)  # float16


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_world_free_space_agrees_with_miniworld(recordings, walk, storage):
    """The free space built from the bag's depth matches MiniWorld's map: IoU >= 0.85 within 3 m of the path."""
    mem = SpatialMemory.load(recordings(storage).world)
    iou = grid_iou(mem, walk, REGION_M)  # the visited region: cells within REGION_M of the cells the path crossed
    assert iou >= 0.85, iou
    fs = mem.info["free_space"]
    assert fs["method"] == "depth" and fs["height_band"] == [0.1, 1.5] and fs["cell"] == 0.1
    known = mem.attachments["known_free"].astype(bool)
    assert known.any() and mem.attachments["free_space"][known].all()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_world_metadata(recordings, walk, storage):
    """Source bag and topics, frame counts, time span of the stamps, path bounds and camera height are right."""
    r = recordings(storage)
    info = SpatialMemory.load(r.world).info
    assert info["source"] == {
        "type": "bag", "path": str(r.bag.resolve()), "image_topic": "/camera/image_raw",
        "info_topic": "/camera/camera_info", "depth_topic": "/camera/depth/image_raw", "pose_topic": "/camera/pose",
        "fixed_frame": "odom", "floor": 0.0, "max_pose_gap": 0.05, "source_size": [64, 64],
        "distortion_ignored": False,
    }  # fmt: skip
    assert info["frames"] == info["frames_with_depth"] == FRAMES
    assert info["dropped_images"] == {"no_pose": 0, "invalid_pose_messages": 0, "frames_without_depth": 0}
    assert info["resolution"] == [64, 64] and info["fov_y"] == pytest.approx(60.0)
    start, end = info["time_span"]
    if r.sim_time:  # frame n is stamped n / rate_hz
        assert (start, end) == pytest.approx((1 / RATE_HZ, FRAMES / RATE_HZ), abs=1e-9)
    else:  # wall clock, within the recording's run, at no more than rate_hz
        assert r.wall[0] <= start and end <= r.wall[1] and end - start >= (FRAMES - 1) / RATE_HZ * 0.9
    xs, zs = walk.rec.poses[:, 0, 3], walk.rec.poses[:, 2, 3]  # midway frames lie between the step ends
    assert info["bounds"]["x"] == pytest.approx([xs.min(), xs.max()], abs=1e-9)
    assert info["bounds"]["z"] == pytest.approx([zs.min(), zs.max()], abs=1e-9)
    assert info["cam_height"] == pytest.approx(1.5)


def test_shortest_path_agent_succeeds_in_the_bag_world(recordings):
    """PointNav's oracle with the reprojection camera succeeds on >= 90% of 20 episodes in the bag's world."""
    env = gym.make("RTFM/PointNav-v0", world=str(recordings("mcap").world), camera="reprojection", max_steps=200)
    try:
        successes = oracle_successes(env, 20)
        assert np.mean(successes) >= 0.9, successes
    finally:
        env.close()


def test_camera_node_drives_the_bag_world_on_cmd_vel_into_a_wall(recordings, tmp_path):
    """world:=BAG_WORLD: the node publishes RGB-D, camera info and odometry; cmd_vel drives it until the grid stops it.

    tests/test_ros_recorded.py checks this at the topic level for a world with MiniWorld's own
    grid (a subprocess); here the world and its grid come from the bag, the node runs in-process
    and its output is read from the bag it records.
    """
    import rclpy
    from geometry_msgs.msg import Twist
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from rtfm_env.ros.camera_node import CameraNode, spin_until_stopped

    world, out = recordings("mcap").world, tmp_path / "drive_bag"
    v, rate, frames = 10.0, 50.0, 150  # 0.2 m a frame, 30 m in all: far more than the layout is wide
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = teleop = None
    try:
        overrides = {"world": str(world), "camera": "reprojection", "rate_hz": rate, "seed": 3}
        overrides |= {"max_linear_speed": v, "record_bag": str(out)}
        node = CameraNode(context=ctx, parameter_overrides=[Parameter(k, value=x) for k, x in overrides.items()])
        assert isinstance(node.scene, RecordedScene)
        teleop = rclpy.create_node("teleop", context=ctx)
        pub = teleop.create_publisher(Twist, "cmd_vel", 10)
        cmd = Twist()
        cmd.linear.x = v

        def done() -> bool:
            pub.publish(cmd)  # a teleop streaming "forward" on the cmd_vel topic
            return node.frames_published >= frames

        spin_until_stopped(node, done=done, poll_s=0.01)
    finally:
        if node is not None:
            node.destroy_node()  # finishes the bag
        if teleop is not None:
            teleop.destroy_node()
        rclpy.try_shutdown(context=ctx)

    msgs = _messages(out)
    assert all(len(msgs[t]) >= frames for t in TOPICS), {t: len(msgs.get(t, [])) for t in TOPICS}
    image, depth = msgs["/camera/image_raw"][-1], msgs["/camera/depth/image_raw"][-1]
    assert (image.encoding, image.width, image.height) == ("rgb8", 64, 64) and np.frombuffer(image.data, np.uint8).std()
    d = np.frombuffer(bytes(depth.data), dtype="<f4")
    assert depth.encoding == "32FC1" and (np.isfinite(d) & (d > 0)).mean() > 0.3
    assert msgs["/camera/camera_info"][-1].k[0] > 0

    scene = RecordedScene(world)
    states = [pose_to_state(ros_to_world(_pose_matrix(p.pose))) for p in msgs["/camera/pose"]]
    assert all(scene.is_free(s.x, s.z) for s in states)  # never inside an occupied cell
    start, stop = scene.reset(3), states[-1]
    assert math.hypot(states[0].x - start.x, states[0].z - start.z) <= v / rate + 1e-9  # the seeded start
    assert math.hypot(stop.x - start.x, stop.z - start.z) > 0.5
    last = msgs["/odom"][-10:]
    assert all(o.twist.twist.linear.x == 0.0 for o in last), "still moving after 30 m of commands"
    assert len({(o.pose.pose.position.x, o.pose.pose.position.y) for o in last}) == 1
    _, collided = scene.move(stop, (v, 0.0, 1.0 / rate))  # the grid blocks the next frame's move
    assert collided


def test_record_bag_refuses_an_unknown_drive(tmp_path):
    """--drive outside DRIVES fails before anything starts, naming the valid drives."""
    args = SimpleNamespace(out=str(tmp_path / "bag"), duration=1.0, frames=0, storage="mcap", param=[], drive="teleop")
    with pytest.raises(ValueError, match=r"valid: \['none', 'walk'\]"):
        run(args)
    assert DRIVES == ("none", "walk") and list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        rtfm_env_main(["record-bag", "--out", str(tmp_path / "bag"), "--drive", "teleop"])


def test_record_bag_walk_needs_a_world_with_walls(tmp_path):
    """--drive walk in a saved memory without a free-space map exits 2 naming the way out, and leaves no bag."""
    from rtfm_env.geometry import Intrinsics, RobotState

    memory = SpatialMemory()
    depth = np.full((8, 8), 2.0, np.float32)
    memory.add(np.zeros((8, 8, 3), np.uint8), RobotState(0.0, 0.0, 0.0).pose(), Intrinsics(8, 8), "observed", 0, depth)
    memory.save(tmp_path / "saved.rtfm")
    argv = ["record-bag", "--out", str(tmp_path / "bag"), "--drive", "walk", "--frames", "5"]
    argv += ["-p", f"scene:={tmp_path / 'saved.rtfm'}", "-p", "camera:=reprojection"]
    assert rtfm_env_main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.rtfm"]
