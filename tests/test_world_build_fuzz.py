"""Fuzz test of ``rtfm-env world build``: generated malformed bags and nerfstudio folders end in clear errors.

Every case is built from a seed: a small valid recording (a few 16x16 frames facing a wall) is
written as a rosbag2 bag or a nerfstudio folder and then broken in one way (a wrong encoding,
truncated data, NaN poses, a missing topic, mismatched sizes, an empty bag, garbage files, ...).
Each must end in a :class:`WorldBuildError` with a message (or, for the few mutations that leave a
usable recording, in a world that loads), never in another exception type, and must never touch
an existing output file. Every tenth case also goes through the command line, which must exit 2.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="needs the ros extra: pip install -e '.[ros]'")

from test_world_build import _ts, image_msg, info_msg, pose_msg, tf_msg, write_messages  # noqa: E402

from rtfm_env.geometry import Intrinsics, camera_pose, world_to_ros  # noqa: E402
from rtfm_env.memory import SpatialMemory  # noqa: E402
from rtfm_env.world_build import BuildConfig, WorldBuildError, build_world  # noqa: E402

N_CASES = 240
SIDE = 16
INTR = Intrinsics(SIDE, SIDE, 60.0)
Case = tuple[str, Path, BuildConfig, bool]  # source, path, options, must fail


def _recording(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (n of them) of a camera stepping towards a wall 3-4 m ahead: frames, depths, poses."""
    frames = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    depths = np.full((n, SIDE, SIDE), 3.0, np.float32) + np.linspace(0.5, 0.0, n, dtype=np.float32)[:, None, None]
    poses = np.stack([camera_pose(0.0, -0.05 * i, math.pi / 2, 1.5) for i in range(n)])
    return frames, depths, poses


def _bag_messages(rng: np.random.Generator, n: int | None = None) -> list[list]:
    n = int(rng.integers(3, 8)) if n is None else n
    frames, depths, poses = _recording(rng, n)
    ts = _ts()
    out = []
    for i in range(n):
        ns = 10**18 + i * 100_000_000
        out.append(["/camera/image_raw", ns, image_msg(ts, ns, frames[i])])
        out.append(["/camera/camera_info", ns, info_msg(ts, ns, INTR.K, SIDE, SIDE)])
        out.append(["/camera/depth/image_raw", ns, image_msg(ts, ns, depths[i].astype("<f4"), "32FC1")])
        out.append(["/camera/pose", ns, pose_msg(ts, ns, world_to_ros(poses[i]))])
    return out


def _write(tmp: Path, msgs: list, storage: str = "mcap") -> Path:
    return write_messages(tmp / "bag", [tuple(m) for m in msgs], storage)


def _of(msgs: list, topic: str) -> list:
    return [m for m in msgs if m[0] == topic]


# -- bag families ----------------------------------------------------------------------------------------------


def bag_encoding(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    enc = str(rng.choice(["mono8", "rgba8", "bgra8", "16UC1", "32FC1", "yuv422", "", "RGB8", "jpeg", "rgb16"]))
    for m in _of(msgs, "/camera/image_raw")[: int(rng.integers(1, 3))]:
        m[2].encoding = enc
    return "bag", _write(tmp, msgs, str(rng.choice(["mcap", "sqlite3"]))), BuildConfig(), True


def bag_truncated_image(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    topic = str(rng.choice(["/camera/image_raw", "/camera/depth/image_raw"]))
    m = _of(msgs, topic)[int(rng.integers(0, 3))][2]
    m.data = m.data[: int(rng.integers(0, m.data.size - 1))]
    return "bag", _write(tmp, msgs), BuildConfig(), True


def bag_bad_fields(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    m = _of(msgs, "/camera/image_raw")[0][2]
    field, value = [("step", 3), ("width", 100_000), ("height", 0), ("width", 0), ("height", 5000), ("step", 0)][
        int(rng.integers(0, 6))
    ]
    setattr(m, field, value)
    return "bag", _write(tmp, msgs), BuildConfig(), True


def bag_bad_poses(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    poses = _of(msgs, "/camera/pose")
    kind = int(rng.integers(0, 6))
    every = bool(rng.integers(0, 2)) or kind == 5
    for m in poses if every else poses[:1]:
        p = m[2].pose
        if kind == 0:
            p.position.x = float("nan")
        elif kind == 1:
            p.orientation.w = float("inf")
        elif kind == 2:
            p.orientation.x = p.orientation.y = p.orientation.z = p.orientation.w = 0.0
        elif kind == 3:
            p.orientation.w *= 5.0
            p.orientation.x *= 5.0
        elif kind == 4:
            p.position.z = 1e300
        else:
            p.position.z = -10.0  # every camera under the floor
    return "bag", _write(tmp, msgs), BuildConfig(), every


def bag_missing_topics(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    topics = ["/camera/image_raw", "/camera/camera_info", "/camera/pose"]
    drop = {t for t in topics if rng.random() < 0.5} or {topics[int(rng.integers(0, 3))]}
    cfg = BuildConfig(depth_topic="/camera/depth/image_raw") if rng.random() < 0.3 else BuildConfig()
    if cfg.depth_topic:
        drop.add("/camera/depth/image_raw")
    return "bag", _write(tmp, [m for m in msgs if m[0] not in drop]), cfg, True


def bag_sizes(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    ts = _ts()
    kind = int(rng.integers(0, 3))
    if kind == 0:  # camera info for another size
        for m in _of(msgs, "/camera/camera_info"):
            m[2].width = SIDE * 2
    elif kind == 1:  # mixed colour sizes
        m = _of(msgs, "/camera/image_raw")[-1]
        m[2] = image_msg(ts, m[1], np.zeros((SIDE + 2, SIDE, 3), np.uint8))
    else:  # depth of another size
        m = _of(msgs, "/camera/depth/image_raw")[0]
        m[2] = image_msg(ts, m[1], np.full((SIDE // 2, SIDE // 2), 3.0, "<f4"), "32FC1")
    return "bag", _write(tmp, msgs), BuildConfig(), True


def bag_empty(tmp: Path, rng: np.random.Generator) -> Case:
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = tmp / "bag"
    storage = str(rng.choice(["MCAP", "SQLITE3"]))
    writer = Writer(path, version=9, storage_plugin=StoragePlugin[storage])
    writer.open()
    ts = _ts()
    for topic, kind in [
        ("/camera/image_raw", "sensor_msgs/msg/Image"),
        ("/camera/camera_info", "sensor_msgs/msg/CameraInfo"),
    ]:
        if rng.random() < 0.5:
            writer.add_connection(topic, kind, typestore=ts)  # a topic without messages
    writer.close()
    return "bag", path, BuildConfig(), True


def bag_garbage(tmp: Path, rng: np.random.Generator) -> Case:
    kind = int(rng.integers(0, 6))
    junk = rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
    path = tmp / "bag"
    if kind == 0:  # a file, not a bag directory
        path.write_bytes(junk)
    elif kind == 1:  # garbage metadata
        path.mkdir()
        (path / "metadata.yaml").write_bytes(junk)
    elif kind == 2:  # an empty directory
        path.mkdir()
    else:  # a real bag whose storage file is cut short, replaced by junk, or missing
        _write(tmp, _bag_messages(rng), "mcap" if kind != 4 else "sqlite3")
        store = next(p for p in path.iterdir() if p.name != "metadata.yaml")
        data = store.read_bytes()
        if kind == 3:
            store.write_bytes(data[: int(rng.integers(0, len(data) - 1))])
        elif kind == 4:
            store.write_bytes(junk)
        else:
            store.unlink()
    return "bag", path, BuildConfig(), True


def bag_bad_calibration(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    k = INTR.K.copy()
    kind = int(rng.integers(0, 4))
    if kind == 0:
        k[:] = 0.0
    elif kind == 1:
        k[0, 0] = float("nan")
    elif kind == 2:
        k[1, 1] = -50.0
    else:
        k[0, 2] = SIDE * 3.0  # principal point outside the image
    for m in _of(msgs, "/camera/camera_info"):
        m[2].k = k.ravel()
    return "bag", _write(tmp, msgs), BuildConfig(), True


def bag_time(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    shift = int(rng.choice([-1, 1])) * int(rng.integers(2, 10**6)) * 10**9
    for m in _of(msgs, "/camera/pose"):
        m[2].header.stamp.sec += shift // 10**9
    return "bag", _write(tmp, msgs), BuildConfig(max_pose_gap=float(rng.choice([0.01, 0.05, 1.0]))), True


def bag_bad_depth(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    kind = int(rng.integers(0, 3))
    for m in _of(msgs, "/camera/depth/image_raw"):
        if kind == 0:
            m[2].encoding = str(rng.choice(["16SC1", "mono8", "32FC3", "rgb8"]))
        elif kind == 1:
            m[2].data = np.full(m[2].data.size // 4, np.nan, "<f4").view(np.uint8)  # all NaN: no return
        else:
            m[2].data = np.zeros_like(m[2].data)  # all 0: no return
    return "bag", _write(tmp, msgs), BuildConfig(), True


def bag_wrong_types(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = _bag_messages(rng)
    ts = _ts()
    topic = str(rng.choice(["/camera/pose", "/camera/camera_info", "/camera/image_raw"]))
    others = [m for m in msgs if m[0] != topic]
    if topic == "/camera/image_raw":
        wrong = [[topic, m[1], pose_msg(ts, m[1], np.eye(4))] for m in _of(msgs, topic)]
    else:
        wrong = [[topic, m[1], image_msg(ts, m[1], np.zeros((4, 4, 3), np.uint8))] for m in _of(msgs, topic)]
    return "bag", _write(tmp, others + wrong), BuildConfig(), True


def bag_tf(tmp: Path, rng: np.random.Generator) -> Case:
    msgs = [m for m in _bag_messages(rng) if m[0] != "/camera/pose"]
    ts = _ts()
    kind = int(rng.integers(0, 4))
    if kind == 1:  # a cycle
        msgs.append(["/tf", 10**18, tf_msg(ts, 10**18, np.eye(4), "a", "camera_optical_frame")])
        msgs.append(["/tf", 10**18, tf_msg(ts, 10**18, np.eye(4), "camera_optical_frame", "a")])
    elif kind == 2:  # another frame only
        msgs.append(["/tf", 10**18, tf_msg(ts, 10**18, np.eye(4), "odom", "base_link")])
    elif kind == 3:  # two parents
        msgs.append(["/tf", 10**18, tf_msg(ts, 10**18, np.eye(4), "odom", "camera_optical_frame")])
        msgs.append(["/tf", 10**18, tf_msg(ts, 10**18, np.eye(4), "map", "camera_optical_frame")])
    return "bag", _write(tmp, msgs), BuildConfig(tf=True), True


# -- nerfstudio families ---------------------------------------------------------------------------------------


def _folder(tmp: Path, rng: np.random.Generator, n: int | None = None, depth: bool = True) -> tuple[Path, dict]:
    from PIL import Image

    n = int(rng.integers(3, 7)) if n is None else n
    frames, depths, poses = _recording(rng, n)
    root = tmp / "ns"
    root.mkdir()
    out = []
    for i in range(n):
        Image.fromarray(frames[i]).save(root / f"f{i}.png")
        fr = {"file_path": f"f{i}.png", "transform_matrix": poses[i].tolist()}
        if depth:
            Image.fromarray(np.round(depths[i] * 1000).astype(np.uint16)).save(root / f"d{i}.png")
            fr["depth_file_path"] = f"d{i}.png"
        out.append(fr)
    f, c = INTR.focal, SIDE / 2
    meta = {"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": c, "cy": c, "w": SIDE, "h": SIDE, "frames": out}
    return root, meta


def _save(root: Path, meta: object) -> None:
    (root / "transforms.json").write_text(json.dumps(meta))


def ns_json(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng)
    kind = int(rng.integers(0, 7))
    text = json.dumps(meta)
    if kind == 0:
        pass  # no transforms.json at all
    elif kind == 1:
        (root / "transforms.json").write_text(text[: int(rng.integers(0, len(text) - 1))])
    elif kind == 2:
        _save(root, meta["frames"])  # a list, not an object
    elif kind == 3:
        _save(root, {**meta, "frames": []})
    elif kind == 4:
        _save(root, {**meta, "frames": {"0": meta["frames"][0]}})
    elif kind == 5:
        _save(root, {**meta, "frames": [1, "two", None]})
    else:
        (root / "transforms.json").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    return "nerfstudio", root, BuildConfig(), True


def ns_files(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng)
    fr = meta["frames"][int(rng.integers(0, len(meta["frames"])))]
    kind = int(rng.integers(0, 6))
    if kind == 0:
        (root / fr["file_path"]).unlink()
    elif kind == 1:
        fr["file_path"] = [None, 3, "", {"a": 1}][int(rng.integers(0, 4))]
    elif kind == 2:
        (root / fr["file_path"]).write_bytes(rng.integers(0, 256, int(rng.integers(0, 500)), dtype=np.uint8).tobytes())
    elif kind == 3:
        (root / fr["file_path"]).write_bytes(b"")
    elif kind == 4:
        fr["file_path"] = "../" * 8 + "etc/hostname"
    else:
        from PIL import Image

        Image.fromarray(np.zeros((SIDE, SIDE), np.uint16)).save(root / fr["file_path"])  # 16-bit grey, not colour
    _save(root, meta)
    return "nerfstudio", root, BuildConfig(), True


def ns_matrices(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng)
    fr = meta["frames"][int(rng.integers(0, len(meta["frames"])))]
    m = np.array(fr["transform_matrix"])
    kind = int(rng.integers(0, 7))
    if kind == 0:
        fr["transform_matrix"] = (m * float(rng.uniform(1.2, 3.0))).tolist()  # scaled: not rigid
    elif kind == 1:
        fr["transform_matrix"] = (m @ np.diag([-1.0, 1, 1, 1])).tolist()  # a reflection
    elif kind == 2:
        m[1, 1] = float("nan")
        fr["transform_matrix"] = m.tolist()
    elif kind == 3:
        fr["transform_matrix"] = m[:2].tolist()
    elif kind == 4:
        fr["transform_matrix"] = [["a", "b"], ["c", "d"]]
    elif kind == 5:
        m[:3, :3] += rng.normal(0, 0.2, (3, 3))  # sheared
        fr["transform_matrix"] = m.tolist()
    else:
        fr["transform_matrix"] = [[1, [2]], 3]
    _save(root, meta)
    return "nerfstudio", root, BuildConfig(), True


def ns_sizes(tmp: Path, rng: np.random.Generator) -> Case:
    from PIL import Image

    root, meta = _folder(tmp, rng)
    i = int(rng.integers(1, len(meta["frames"])))
    if rng.random() < 0.5:
        meta["frames"][i].update(w=SIDE * 2, h=SIDE)
    else:
        Image.fromarray(np.zeros((SIDE, SIDE + 4, 3), np.uint8)).save(root / meta["frames"][i]["file_path"])
    _save(root, meta)
    return "nerfstudio", root, BuildConfig(), True


def ns_intrinsics(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng)
    key = str(rng.choice(["fl_x", "fl_y", "cx", "cy", "w", "h"]))
    bad = [None, -5.0, 0, True, "12", float("nan"), 1e9, 12.5][int(rng.integers(0, 8))]
    if bad is None:
        meta.pop(key)
    else:
        meta[key] = bad
    if key in ("w", "h") and bad == 1e9:
        meta[key] = 10**9
    _save(root, meta)
    # 12.5 px is a fine focal length or principal point (off centre: cropped around it), not a fine size.
    return "nerfstudio", root, BuildConfig(), not (bad == 12.5 and key not in ("w", "h"))


def ns_camera_model(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng)
    meta["camera_model"] = str(rng.choice(["OPENCV_FISHEYE", "EQUIRECTANGULAR", "SIMPLE_RADIAL", "opencv", ""]))
    _save(root, meta)
    return "nerfstudio", root, BuildConfig(), True


def ns_depth(tmp: Path, rng: np.random.Generator) -> Case:
    from PIL import Image

    root, meta = _folder(tmp, rng)
    fr = meta["frames"][0]
    kind = int(rng.integers(0, 6))
    if kind == 0:
        (root / fr["depth_file_path"]).unlink()
    elif kind == 1:
        (root / fr["depth_file_path"]).write_bytes(b"\x89PNG garbage")
    elif kind == 2:
        Image.fromarray(np.zeros((SIDE // 2, SIDE), np.uint16)).save(root / fr["depth_file_path"])
    elif kind == 3:
        np.save(root / "d.npy", np.ones((SIDE, SIDE, 3)))
        fr["depth_file_path"] = "d.npy"
    elif kind == 4:
        meta["depth_unit_scale_factor"] = [-1.0, 0, "mm", None][int(rng.integers(0, 4))]
    else:
        (root / "d.npy").write_bytes(b"\x93NUMPY" + rng.integers(0, 256, 50, dtype=np.uint8).tobytes())
        fr["depth_file_path"] = "d.npy"
    _save(root, meta)
    return "nerfstudio", root, BuildConfig(), True


def ns_all_below_floor(tmp: Path, rng: np.random.Generator) -> Case:
    root, meta = _folder(tmp, rng, depth=bool(rng.integers(0, 2)))
    _save(root, meta)
    cfg = BuildConfig(up="y", floor=float(rng.uniform(1.6, 100.0)))  # a floor above every camera
    return "nerfstudio", root, cfg, True


def scene_bad(tmp: Path, rng: np.random.Generator) -> Case:
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return "scene", Path("NoSuchScene"), BuildConfig(), True
    if kind == 1:
        return "scene", Path("OneRoom"), BuildConfig(seed=-3), True
    return str(rng.choice(["rosbag1", "colmap", ""])), tmp, BuildConfig(), True


FAMILIES: list[Callable[[Path, np.random.Generator], Case]] = [
    bag_encoding, bag_truncated_image, bag_bad_fields, bag_bad_poses, bag_missing_topics, bag_sizes, bag_empty,
    bag_garbage, bag_bad_calibration, bag_time, bag_bad_depth, bag_wrong_types, bag_tf,
    ns_json, ns_files, ns_matrices, ns_sizes, ns_intrinsics, ns_camera_model, ns_depth, ns_all_below_floor,
    bag_encoding, bag_garbage, ns_matrices,
]  # fmt: skip


@pytest.mark.parametrize("case", range(N_CASES))
def test_malformed_input_ends_in_a_clear_error(tmp_path, case, capsys):
    """A malformed recording raises WorldBuildError naming the problem and never touches an existing output."""
    family = FAMILIES[case % len(FAMILIES)] if case % 40 != 39 else scene_bad
    source, path, cfg, must_fail = family(tmp_path, np.random.default_rng(case))
    out = tmp_path / "out.world"
    out.write_bytes(b"keep")
    try:
        build_world(source, path, out, cfg, overwrite=True)
    except WorldBuildError as e:
        assert str(e).strip(), f"{family.__name__}: empty message"
        assert out.read_bytes() == b"keep", f"{family.__name__}: the existing output was touched"
    else:
        assert not must_fail, f"{family.__name__} (case {case}) built a world from malformed input"
        assert SpatialMemory.load(out).info["kind"] == "rtfm-world"
        return
    if case % 10 == 0:
        from rtfm_env.cli import main

        capsys.readouterr()
        argv = ["world", "build", "--from", source, str(path), "--out", str(out), "--overwrite"]
        argv += ["--tf"] if cfg.tf else []
        if cfg == BuildConfig(tf=cfg.tf):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith("rtfm-env world build: error: ") and len(err.splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.world")]  # no temp file left behind
    shutil.rmtree(tmp_path, ignore_errors=True)
