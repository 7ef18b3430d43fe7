"""Tests of rtfm_env.world_build: world files from MiniWorld, rosbag2 bags and nerfstudio folders; bad input."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rtfm_env.geometry import OPENGL_TO_OPTICAL, invert_pose, pose_to_state, state_to_odom, world_to_ros
from rtfm_env.memory import SpatialMemory
from rtfm_env.world_build import (
    BuildConfig,
    WorldBuildError,
    build_world,
    interpolate_poses,
    square_crop,
)

rosbags = pytest.importorskip("rosbags", reason="needs the ros extra: pip install -e '.[ros]'")

SCENE, SEED = "YMaze", 0  # a public held-out layout
REGION_M = 3.0  # the "visited region": cells within this many metres of the camera path


# -- a MiniWorld walk, written as a bag or a nerfstudio folder -------------------------------------------------


@dataclass
class Walk:
    frames: np.ndarray  # (N, 64, 64, 3) uint8
    depths: np.ndarray  # (N, 64, 64) float32 metres, inf where nothing was hit
    poses: np.ndarray  # (N, 4, 4) camera-to-world
    k: np.ndarray  # (3, 3)
    fov_y: float
    free: np.ndarray  # MiniWorld's own map
    origin: tuple[float, float]
    cell: float


@pytest.fixture(scope="module")
def walk() -> Walk:
    from rtfm_env.scenes.miniworld import MiniWorldScene
    from rtfm_env.worlds import recording

    scene = MiniWorldScene(SCENE, 64, 64, 60.0)
    try:
        rec = recording(scene, "walk", scene.reset(SEED))
        m = scene.top_down_map()
    finally:
        scene.close()
    return Walk(
        np.array(rec.frames), np.array(rec.depths), np.array(rec.poses), rec.intrinsics.K, 60.0,
        m.free, (m.origin_x, m.origin_z), m.cell,
    )  # fmt: skip


def _ts():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def header(ts, ns: int, frame: str):
    t = ts.types["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))
    return ts.types["std_msgs/msg/Header"](stamp=t, frame_id=frame)


def image_msg(ts, ns: int, img: np.ndarray, encoding: str = "rgb8", frame: str = "camera_optical_frame"):
    h, w = img.shape[:2]
    data = np.ascontiguousarray(img).view(np.uint8).reshape(-1)
    return ts.types["sensor_msgs/msg/Image"](
        header=header(ts, ns, frame), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=data.size // h, data=data,
    )  # fmt: skip


def info_msg(ts, ns: int, k: np.ndarray, w: int, h: int):
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=header(ts, ns, "camera_optical_frame"), height=h, width=w, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.asarray(k, np.float64).ravel(), r=np.eye(3).ravel(),
        p=np.hstack([k, np.zeros((3, 1))]).ravel(), binning_x=0, binning_y=0, roi=roi,
    )  # fmt: skip


def _pose(ts, m: np.ndarray):
    import transforms3d

    w, x, y, z = transforms3d.quaternions.mat2quat(m[:3, :3])
    point = ts.types["geometry_msgs/msg/Point"](x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3]))
    q = ts.types["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w))
    return ts.types["geometry_msgs/msg/Pose"](position=point, orientation=q), (x, y, z, w)


def pose_msg(ts, ns: int, m: np.ndarray, kind: str = "PoseStamped", frame: str = "odom", child: str = ""):
    pose, _ = _pose(ts, m)
    if kind == "PoseStamped":
        return ts.types["geometry_msgs/msg/PoseStamped"](header=header(ts, ns, frame), pose=pose)
    v3 = ts.types["geometry_msgs/msg/Vector3"]
    twist = ts.types["geometry_msgs/msg/Twist"](linear=v3(x=0.0, y=0.0, z=0.0), angular=v3(x=0.0, y=0.0, z=0.0))
    return ts.types["nav_msgs/msg/Odometry"](
        header=header(ts, ns, frame), child_frame_id=child or "camera_optical_frame",
        pose=ts.types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
        twist=ts.types["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)),
    )  # fmt: skip


def tf_msg(ts, ns: int, m: np.ndarray, parent: str, child: str):
    _, (x, y, z, w) = _pose(ts, m)
    v3 = ts.types["geometry_msgs/msg/Vector3"](x=float(m[0, 3]), y=float(m[1, 3]), z=float(m[2, 3]))
    q = ts.types["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w))
    t = ts.types["geometry_msgs/msg/TransformStamped"](
        header=header(ts, ns, parent), child_frame_id=child,
        transform=ts.types["geometry_msgs/msg/Transform"](translation=v3, rotation=q),
    )  # fmt: skip
    return ts.types["tf2_msgs/msg/TFMessage"](transforms=[t])


def write_messages(path: Path, messages: list[tuple[str, int, object]], storage: str = "mcap") -> Path:
    """Write (topic, log time ns, rosbags message) to a new rosbag2 bag."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _ts()
    writer = Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()])
    writer.open()
    conns = {}
    for topic, t, msg in messages:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=ts)
        writer.write(conns[topic], t, ts.serialize_cdr(msg, msg.__msgtype__))
    writer.close()
    return path


def walk_messages(
    frames, depths, poses, k, period_ns=100_000_000, depth="32FC1", pose_kind="PoseStamped", t0=1_700_000_000 * 10**9
) -> list[tuple[str, int, object]]:
    """What rtfm-camera publishes for these frames: image, camera info, depth, pose, one stamp each."""
    ts = _ts()
    out = []
    for i in range(len(frames)):
        ns = t0 + i * period_ns
        h, w = frames[i].shape[:2]
        out.append(("/camera/image_raw", ns, image_msg(ts, ns, frames[i])))
        out.append(("/camera/camera_info", ns, info_msg(ts, ns, k, w, h)))
        if depth == "32FC1":
            out.append(("/camera/depth/image_raw", ns, image_msg(ts, ns, depths[i].astype("<f4"), "32FC1")))
        elif depth == "16UC1":
            mm = np.where(np.isfinite(depths[i]), np.round(depths[i] * 1000.0), 0).clip(0, 65535).astype("<u2")
            out.append(("/camera/depth/image_raw", ns, image_msg(ts, ns, mm, "16UC1")))
        topic = "/camera/pose" if pose_kind == "PoseStamped" else "/odom"
        out.append((topic, ns, pose_msg(ts, ns, world_to_ros(poses[i]), pose_kind)))
    return out


def write_nerfstudio(root: Path, walk: Walk, n: int | None = None, opencv: bool = False) -> Path:
    """A nerfstudio capture folder of the walk: PNG frames, 16-bit PNG depth in millimetres."""
    from PIL import Image

    root.mkdir()
    (root / "images").mkdir()
    (root / "depth").mkdir()
    frames = []
    for i in range(len(walk.frames) if n is None else n):
        Image.fromarray(walk.frames[i]).save(root / "images" / f"{i:04d}.png")
        mm = np.where(np.isfinite(walk.depths[i]), np.round(walk.depths[i] * 1000.0), 0).clip(0, 65535)
        Image.fromarray(mm.astype(np.uint16)).save(root / "depth" / f"{i:04d}.png")
        m = walk.poses[i] @ OPENGL_TO_OPTICAL if opencv else walk.poses[i]
        frames.append(
            {
                "file_path": f"images/{i:04d}.png",
                "depth_file_path": f"depth/{i:04d}.png",
                "transform_matrix": m.tolist(),
            }
        )
    f, c = float(walk.k[0, 0]), float(walk.k[0, 2])
    meta = {"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": c, "cy": c, "w": 64, "h": 64, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def check_round_trip(world: Path, walk: Walk, idx: np.ndarray | None = None, depth_tol: float = 0.02) -> SpatialMemory:
    mem = SpatialMemory.load(world)
    idx = np.arange(len(walk.poses)) if idx is None else idx
    ids = mem.ids
    assert len(ids) == len(idx)
    np.testing.assert_allclose(mem.poses(ids), walk.poses[idx], atol=1e-9)
    assert all(abs(i.fov_y - walk.fov_y) < 1e-6 and (i.width, i.height) == (64, 64) for i in mem.intrinsics_of(ids))
    assert np.abs(mem.frames(ids).astype(int) - walk.frames[idx].astype(int)).max() <= 1
    d, ref = mem.depths(ids), walk.depths[idx]
    fin = np.isfinite(ref)
    assert np.array_equal(np.isfinite(d), fin)
    np.testing.assert_allclose(d[fin], ref[fin], rtol=depth_tol, atol=2e-3)
    assert mem.steps(ids) == list(range(len(idx)))
    assert mem.info["kind"] == "rtfm-world" and mem.info["frames"] == len(idx)
    return mem


def grid_iou(mem: SpatialMemory, walk: Walk, region_m: float = REGION_M) -> float:
    """IoU of the world's free space with MiniWorld's own, on cells within region_m of the camera path."""
    fs = mem.info["free_space"]
    free, known = mem.attachments["free_space"].astype(bool), mem.attachments["known_free"].astype(bool)
    rows, cols = free.shape
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    x = fs["origin_x"] + (jj + 0.5) * fs["cell"]
    z = fs["origin_z"] + (ii + 0.5) * fs["cell"]
    r = np.floor((z - walk.origin[1]) / walk.cell).astype(int)
    c = np.floor((x - walk.origin[0]) / walk.cell).astype(int)
    inside = (r >= 0) & (r < walk.free.shape[0]) & (c >= 0) & (c < walk.free.shape[1])
    truth = np.zeros_like(free)
    truth[inside] = walk.free[r[inside], c[inside]]
    region = ndimage.distance_transform_edt(~known) * fs["cell"] <= region_m
    a, b = free & region, truth & region
    return float((a & b).sum() / max((a | b).sum(), 1))


# -- MiniWorld -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_world(tmp_path_factory, walk) -> Path:
    out = tmp_path_factory.mktemp("scene") / "ymaze.world"
    build_world("scene", SCENE, out, BuildConfig(seed=SEED, kind="walk"))
    return out


def test_scene_world_free_space_agrees_with_miniworld(scene_world, walk):
    """The free space from a walk's depth matches MiniWorld's own map (IoU >= 0.85 near the path)."""
    mem = check_round_trip(scene_world, walk, depth_tol=1e-3)
    iou = grid_iou(mem, walk)
    assert iou >= 0.85, iou
    info = mem.info
    fs = info["free_space"]
    assert fs["method"] == "depth" and fs["height_band"] == [0.1, 1.5] and fs["robot_radius"] == 0.4
    assert info["source"] == {"type": "scene", "id": "MiniWorld-YMaze-v0", "seed": SEED, "kind": "walk"}
    assert info["time_span"] is None and math.isclose(info["cam_height"], 1.5)
    known = mem.attachments["known_free"].astype(bool)
    assert known.any() and np.all(mem.attachments["free_space"][known] == 1)  # the path is free
    xs = walk.poses[:, 0, 3]
    assert info["bounds"]["x"] == [float(xs.min()), float(xs.max())]


# -- bags ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage, depth", [("mcap", "32FC1"), ("sqlite3", "16UC1")])
def test_bag_round_trips_poses_intrinsics_frames_and_depth(tmp_path, walk, scene_world, storage, depth):
    """A bag of the walk (as rtfm-camera publishes it) gives the same poses, intrinsics, frames, depth and map."""
    n = 256
    bag = write_messages(
        tmp_path / "bag", walk_messages(walk.frames, walk.depths, walk.poses, walk.k, depth=depth), storage
    )
    info = build_world("bag", bag, tmp_path / "w.world")
    mem = check_round_trip(tmp_path / "w.world", walk)
    assert info["frames"] == n and info["dropped_images"] == {
        "no_pose": 0, "invalid_pose_messages": 0, "frames_without_depth": 0,
    }  # fmt: skip
    assert info["time_span"] == pytest.approx([1_700_000_000.0, 1_700_000_000.0 + 25.5])
    assert info["source"]["pose_topic"] == "/camera/pose" and info["source"]["fixed_frame"] == "odom"
    # Same depth and poses: the same free space as the world built from the scene itself.
    ref = SpatialMemory.load(scene_world)
    a, b = mem.attachments["free_space"].astype(bool), ref.attachments["free_space"].astype(bool)
    if a.shape == b.shape:
        assert (a & b).sum() / (a | b).sum() > 0.97
    assert grid_iou(mem, walk) >= 0.85


def test_bag_poses_are_interpolated_and_far_images_dropped(tmp_path, walk):
    """Images between poses get slerped poses; images farther than --max-pose-gap from any pose are dropped."""
    from scipy.spatial.transform import Rotation, Slerp

    ts = _ts()
    n, t0 = 20, 10**18
    msgs = []
    for i in range(n):  # poses at 10 Hz
        ns = t0 + i * 100_000_000
        msgs.append(("/camera/pose", ns, pose_msg(ts, ns, world_to_ros(walk.poses[i]))))
    stamps = [t0 + 30_000_000 + i * 100_000_000 for i in range(n - 1)] + [t0 + 5 * 10**9]  # last: 3 s after
    for i, ns in enumerate(stamps):
        msgs.append(("/camera/image_raw", ns, image_msg(ts, ns, walk.frames[i])))
        msgs.append(("/camera/camera_info", ns, info_msg(ts, ns, walk.k, 64, 64)))
    bag = write_messages(tmp_path / "bag", msgs)
    info = build_world("bag", bag, tmp_path / "w.world")
    assert info["dropped_images"]["no_pose"] == 1 and info["frames"] == n - 1
    assert info["free_space"]["method"] == "path"  # no depth: a corridor around the path
    mem = SpatialMemory.load(tmp_path / "w.world")
    odom = np.stack([world_to_ros(p) for p in walk.poses[:n]])
    times = np.arange(n) * 0.1
    slerp = Slerp(times, Rotation.from_matrix(odom[:, :3, :3]))
    q = np.arange(n - 1) * 0.1 + 0.03
    expect = np.repeat(np.eye(4)[None], n - 1, axis=0)
    expect[:, :3, :3] = slerp(q).as_matrix()
    for i in range(n - 1):
        expect[i, :3, 3] = 0.7 * odom[i, :3, 3] + 0.3 * odom[i + 1, :3, 3]
    from rtfm_env.geometry import ros_to_world

    np.testing.assert_allclose(mem.poses(mem.ids), np.stack([ros_to_world(p) for p in expect]), atol=1e-9)


def test_bag_poses_from_tf(tmp_path, walk):
    """--tf composes odom -> base_link (/tf) with base_link -> optical (/tf_static) into the same poses."""
    ts = _ts()
    n, t0 = 40, 10**18
    states = [pose_to_state(p) for p in walk.poses[:n]]
    base_to_optical = invert_pose(state_to_odom(states[0])) @ world_to_ros(walk.poses[0])
    msgs = [("/tf_static", t0, tf_msg(ts, t0, base_to_optical, "base_link", "camera_optical_frame"))]
    for i in range(n):
        ns = t0 + i * 100_000_000
        msgs.append(("/tf", ns, tf_msg(ts, ns, state_to_odom(states[i]), "odom", "base_link")))
        msgs.append(("/camera/image_raw", ns, image_msg(ts, ns, walk.frames[i])))
        msgs.append(("/camera/camera_info", ns, info_msg(ts, ns, walk.k, 64, 64)))
        msgs.append(("/camera/depth/image_raw", ns, image_msg(ts, ns, walk.depths[i].astype("<f4"), "32FC1")))
    bag = write_messages(tmp_path / "bag", msgs)
    info = build_world("bag", bag, tmp_path / "w.world", BuildConfig(tf=True))
    assert info["source"]["camera_frame"] == "camera_optical_frame" and info["source"]["fixed_frame"] == "odom"
    mem = SpatialMemory.load(tmp_path / "w.world")
    np.testing.assert_allclose(mem.poses(mem.ids), walk.poses[:n], atol=1e-9)


def test_bag_without_depth_gets_a_path_corridor(tmp_path, walk):
    """--no-depth (or a bag without depth) makes a corridor of robot radius + margin around the path."""
    bag = write_messages(tmp_path / "bag", walk_messages(walk.frames[:50], walk.depths, walk.poses[:50], walk.k))
    info = build_world("bag", bag, tmp_path / "w.world", BuildConfig(no_depth=True))
    mem = SpatialMemory.load(tmp_path / "w.world")
    assert info["free_space"]["method"] == "path" and info["free_space"]["height_band"] is None
    assert info["frames_with_depth"] == 0 and not mem.has_depth(mem.ids).any()
    free, known = mem.attachments["free_space"].astype(bool), mem.attachments["known_free"].astype(bool)
    dist = ndimage.distance_transform_edt(~known) * 0.1
    assert free[dist <= 0.65].all() and not free[dist > 0.75].any()


def test_bag_frames_are_center_cropped_and_resized(tmp_path, walk):
    """A 96x64 camera with the principal point off centre is cropped square around it; fov follows."""
    ts = _ts()
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :, 0] = np.arange(96, dtype=np.uint8)[None, :]
    k = np.array([[40.0, 0, 50.0], [0, 40.0, 30.0], [0, 0, 1]])
    msgs = []
    for i in range(10):
        ns = 10**18 + i * 10**8
        msgs += [
            ("/camera/image_raw", ns, image_msg(ts, ns, img)),
            ("/camera/camera_info", ns, info_msg(ts, ns, k, 96, 64)),
            ("/camera/pose", ns, pose_msg(ts, ns, world_to_ros(walk.poses[i]))),
        ]
    bag = write_messages(tmp_path / "bag", msgs)
    info = build_world("bag", bag, tmp_path / "w.world", BuildConfig(res=32))
    crop = square_crop(96, 64, 40.0, 40.0, 50.0, 30.0, 32)
    assert crop.box == pytest.approx((20.0, 0.0, 80.0, 60.0))  # half-height 30 px: cy limits
    assert info["fov_y"] == pytest.approx(math.degrees(2 * math.atan(30.0 / 40.0)))
    mem = SpatialMemory.load(tmp_path / "w.world")
    row = mem.frames(mem.ids)[0, 16, :, 0].astype(float)
    np.testing.assert_allclose(row, 20 + (np.arange(32) + 0.5) * 60 / 32 - 0.5, atol=1.0)  # columns 20..80
    # fx != fy: equal angular extents, so the output has square pixels
    crop2 = square_crop(100, 100, 50.0, 25.0, 50.0, 50.0, 16)
    x0, y0, x1, y1 = crop2.box
    assert (x1 - x0) / 50.0 == pytest.approx((y1 - y0) / 25.0)


def test_interpolate_poses_never_extrapolates():
    """Queries outside the poses' time range take the end pose within the gap, and nothing beyond it."""
    poses = np.repeat(np.eye(4)[None], 2, axis=0)
    poses[1, 0, 3] = 1.0
    out, ok = interpolate_poses(np.array([-0.02, 0.0, 0.5, 1.0, 1.04, 2.0]), np.array([0.0, 1.0]), poses, 0.05)
    assert ok.tolist() == [True, True, False, True, True, False]  # 0.5: 0.5 s from both poses
    np.testing.assert_allclose(out[ok, 0, 3], [0.0, 0.0, 1.0, 1.0])
    out, ok = interpolate_poses(np.array([0.5]), np.array([0.0, 1.0]), poses, 0.6)
    assert ok.all() and out[0, 0, 3] == pytest.approx(0.5)


# -- nerfstudio ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opencv", [False, True])
def test_nerfstudio_round_trip(tmp_path, walk, opencv):
    """A nerfstudio folder of the walk (OpenGL or OpenCV matrices) gives the same poses, frames and depth."""
    root = write_nerfstudio(tmp_path / "ns", walk, opencv=opencv)
    cfg = BuildConfig(convention="opencv" if opencv else "opengl")
    info = build_world("nerfstudio", root, tmp_path / "w.world", cfg)
    mem = check_round_trip(tmp_path / "w.world", walk, depth_tol=1e-3)
    assert info["source"]["type"] == "nerfstudio" and info["source"]["up_vector"] == pytest.approx([0, 1, 0])
    assert grid_iou(mem, walk) >= 0.85


def test_nerfstudio_up_and_cam_height(tmp_path, walk):
    """A z-up capture with its floor elsewhere is brought to y up, floor at 0, by --up auto and --cam-height."""
    root = write_nerfstudio(tmp_path / "ns", walk, n=60)
    meta = json.loads((root / "transforms.json").read_text())
    y_to_z = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 3.0], [0, 0, 0, 1]])  # y up -> z up, floor at z=3
    for fr in meta["frames"]:
        fr["transform_matrix"] = (y_to_z @ np.array(fr["transform_matrix"])).tolist()
    (root / "transforms.json").write_text(json.dumps(meta))
    build_world("nerfstudio", root, tmp_path / "w.world", BuildConfig(cam_height=1.5))
    mem = SpatialMemory.load(tmp_path / "w.world")
    got = mem.poses(mem.ids)
    # Up is recovered exactly; the heading about it is the smallest rotation's (here: the identity).
    np.testing.assert_allclose(got[:, 1, 3], 1.5, atol=1e-9)
    np.testing.assert_allclose(got, walk.poses[:60], atol=1e-6)


# -- bad input -------------------------------------------------------------------------------------------------


def _bag(tmp_path, walk, n=8, **kw) -> list:
    return walk_messages(walk.frames[:n], walk.depths[:n], walk.poses[:n], walk.k, **kw)


def test_bad_bags_fail_naming_the_problem(tmp_path, walk):
    """No pose topic, poses that never overlap the images, unknown encodings, mixed sizes: clear errors."""
    ts = _ts()
    msgs = _bag(tmp_path, walk)
    no_pose = [m for m in msgs if m[0] != "/camera/pose"]
    with pytest.raises(WorldBuildError, match="no pose topic /camera/pose.*--tf"):
        build_world("bag", write_messages(tmp_path / "a", no_pose), tmp_path / "a.world")
    late = [(t, s, m) for t, s, m in msgs if t != "/camera/pose"]
    late += [
        ("/camera/pose", s + 10**12, pose_msg(ts, s + 10**12, world_to_ros(walk.poses[0]))) for _, s, _ in msgs[:3]
    ]
    with pytest.raises(WorldBuildError, match="never overlap the images"):
        build_world("bag", write_messages(tmp_path / "b", late), tmp_path / "b.world")
    mono = [
        (t, s, image_msg(ts, s, m.data.reshape(64, 64, 3)[..., 0], "mono8")) if t == "/camera/image_raw" else (t, s, m)
        for t, s, m in msgs
    ]
    with pytest.raises(WorldBuildError, match="encoding 'mono8'.*rgb8"):
        build_world("bag", write_messages(tmp_path / "c", mono), tmp_path / "c.world")
    mixed = list(msgs)
    mixed[0] = ("/camera/image_raw", mixed[0][1], image_msg(ts, mixed[0][1], np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(WorldBuildError, match="mixed sizes|CameraInfo"):
        build_world("bag", write_messages(tmp_path / "d", mixed), tmp_path / "d.world")
    odom = _bag(tmp_path, walk, pose_kind="Odometry")
    for t, _, m in odom:
        if t == "/odom":
            m.child_frame_id = "base_link"
    with pytest.raises(WorldBuildError, match="Odometry .* is of \\['base_link'\\]"):
        build_world("bag", write_messages(tmp_path / "e", odom), tmp_path / "e.world", BuildConfig(pose_topic="/odom"))
    assert not any(p.suffix == ".world" for p in tmp_path.iterdir())


def test_bad_nerfstudio_folders_fail_naming_the_problem(tmp_path, walk):
    """Missing files, non-rigid matrices and mixed sizes in transforms.json are clear errors."""
    root = write_nerfstudio(tmp_path / "ns", walk, n=5)
    meta = json.loads((root / "transforms.json").read_text())

    def attempt(m: dict, match: str) -> None:
        (root / "transforms.json").write_text(json.dumps(m))
        with pytest.raises(WorldBuildError, match=match):
            build_world("nerfstudio", root, tmp_path / "w.world")

    bad = json.loads(json.dumps(meta))
    bad["frames"][2]["file_path"] = "images/missing.png"
    attempt(bad, "frame 2: image file .*missing.png is missing")
    bad = json.loads(json.dumps(meta))
    bad["frames"][1]["transform_matrix"] = (2.0 * np.array(bad["frames"][1]["transform_matrix"])).tolist()
    attempt(bad, "frame 1: transform_matrix is not rigid")
    bad = json.loads(json.dumps(meta))
    bad["frames"][3].update(w=32, h=32)
    attempt(bad, "frame 3: images of mixed sizes")
    bad = json.loads(json.dumps(meta))
    bad["frames"][4]["depth_file_path"] = "depth/nope.png"
    attempt(bad, "depth file .*nope.png is missing")
    (root / "transforms.json").unlink()
    with pytest.raises(WorldBuildError, match="no transforms.json"):
        build_world("nerfstudio", root, tmp_path / "w.world")
    assert not (tmp_path / "w.world").exists()


def test_empty_free_space_and_cameras_under_the_floor_are_refused(tmp_path, walk):
    """A robot wider than every open space, or a floor above the cameras, is an error, not an empty world."""
    bag = write_messages(tmp_path / "bag", _bag(tmp_path, walk, n=30))
    with pytest.raises(WorldBuildError, match="free-space map is empty"):
        build_world("bag", bag, tmp_path / "w.world", BuildConfig(robot_radius=6.0))
    with pytest.raises(WorldBuildError, match="median height .* floor"):
        build_world("bag", bag, tmp_path / "w.world", BuildConfig(floor=2.0))
    assert not (tmp_path / "w.world").exists()


def test_existing_world_is_kept_unless_overwrite(tmp_path, walk):
    """An existing --out is refused without --overwrite, kept when a build fails, replaced only when one succeeds."""
    from rtfm_env.cli import main

    out = tmp_path / "w.world"
    out.write_bytes(b"precious")
    bag = write_messages(tmp_path / "bag", _bag(tmp_path, walk, n=10))
    assert main(["world", "build", "--from", "bag", str(bag), "--out", str(out)]) == 2
    assert out.read_bytes() == b"precious"
    broken = write_messages(tmp_path / "broken", [m for m in _bag(tmp_path, walk, n=10) if m[0] != "/camera/pose"])
    assert main(["world", "build", "--from", "bag", str(broken), "--out", str(out), "--overwrite"]) == 2
    assert out.read_bytes() == b"precious"
    assert main(["world", "build", "--from", "bag", str(bag), "--out", str(out), "--overwrite"]) == 0
    assert len(SpatialMemory.load(out)) == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    """The command prints one error line naming the problem and exits 2."""
    from rtfm_env.cli import main

    assert main(["world", "build", "--from", "tape", "x", "--out", str(tmp_path / "w")]) == 2
    assert "unknown source 'tape'" in capsys.readouterr().err
    assert main(["world", "build", "--from", "bag", str(tmp_path / "nope"), "--out", str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["world", "build", "--from", "scene", "NoSuchScene", "--out", str(tmp_path / "w")]) == 2
    assert "NoSuchScene" in capsys.readouterr().err


def test_build_config_fields_are_all_options():
    """Every BuildConfig field is a command-line option with its default."""
    import argparse

    from rtfm_env.world_build import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["build", "--from", "bag", "b", "--out", "o"])
    assert BuildConfig(**{k: getattr(args, k) for k in BuildConfig.__dataclass_fields__}) == replace(BuildConfig())


def test_a_bag_from_rtfm_env_record_bag_builds_with_the_defaults(tmp_path):
    """What 'rtfm-env record-bag' writes (ground truth, depth on) builds with no topic options, at the start pose."""
    pytest.importorskip("rclpy", reason="needs the ros extra")
    import subprocess
    import sys

    from rtfm_env.scenes.miniworld import MiniWorldScene

    bag = tmp_path / "bag"
    cmd = [sys.executable, "-m", "rtfm_env.cli", "record-bag", "--out", str(bag), "--frames", "8"]
    cmd += ["-p", f"scene:={SCENE}", "-p", f"seed:={SEED}", "-p", "camera:=ground_truth", "-p", "rate_hz:=20.0"]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    info = build_world("bag", bag, tmp_path / "w.world")
    assert info["frames"] == 8 and info["frames_with_depth"] == 8 and info["free_space"]["method"] == "depth"
    scene = MiniWorldScene(SCENE, 64, 64, 60.0)
    try:
        start = scene.reset(SEED).pose()
    finally:
        scene.close()
    mem = SpatialMemory.load(tmp_path / "w.world")
    np.testing.assert_allclose(mem.poses(mem.ids), np.repeat(start[None], 8, axis=0), atol=1e-6)
