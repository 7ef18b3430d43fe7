"""Tests of rtfm_env.ros.bag (BagRecorder writes rosbag2 bags that rosbags reads back, atomically) and record_bag."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")
rosbags = pytest.importorskip("rosbags", reason="needs the ros extra: pip install -e '.[ros]'")

from nav_msgs.msg import Odometry  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from rtfm_env.ros.bag import STORAGE, BagError, BagRecorder, message_type_name  # noqa: E402
from rtfm_env.ros.record_bag import run  # noqa: E402


def _image(i: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.frame_id = i, "camera_optical_frame"
    msg.height, msg.width, msg.encoding, msg.step = 2, 3, "rgb8", 9
    msg.data = bytes(np.arange(18, dtype=np.uint8) + i)
    return msg


@pytest.mark.parametrize("storage", sorted(STORAGE))
def test_recorded_messages_read_back_with_rosbags(tmp_path, storage):
    """Every written message comes back with its topic, type, log time and content; counts match."""
    path = tmp_path / "bag"
    bag = BagRecorder(path, storage)
    assert not path.exists()  # only the staging directory exists while recording
    for i in range(4):
        bag.write("/camera/image_raw", _image(i), 1_000 + i)
    odom = Odometry()
    odom.pose.pose.position.x = 1.5
    bag.write("/odom", odom, 2_000)
    assert bag.close() == path and bag.counts == {"/camera/image_raw": 4, "/odom": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]  # the staging directory is gone

    typestore = get_typestore(Stores.ROS2_KILTED)
    with Reader(path) as reader:
        assert {c.topic: (c.msgtype, c.msgcount) for c in reader.connections} == {
            "/camera/image_raw": ("sensor_msgs/msg/Image", 4),
            "/odom": ("nav_msgs/msg/Odometry", 1),
        }
        read = [(c.topic, t, typestore.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]
    images = [(t, m) for topic, t, m in read if topic == "/camera/image_raw"]
    assert [t for t, _ in images] == [1_000, 1_001, 1_002, 1_003]
    for i, (_, m) in enumerate(images):
        assert (m.header.stamp.sec, m.width, m.height, m.encoding) == (i, 3, 2, "rgb8")
        np.testing.assert_array_equal(m.data, np.arange(18, dtype=np.uint8) + i)
    assert next(m for topic, _, m in read if topic == "/odom").pose.pose.position.x == 1.5


def test_existing_path_is_never_overwritten(tmp_path):
    """A bag path that exists is refused at creation, and its content is left alone."""
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "keep.txt").write_text("data")
    with pytest.raises(BagError, match="exists already"):
        BagRecorder(tmp_path / "bag")
    assert (tmp_path / "bag" / "keep.txt").read_text() == "data"


def test_path_taken_while_recording_keeps_the_finished_bag_aside(tmp_path):
    """If the path appears during recording, close fails naming where the finished bag is; nothing is replaced."""
    bag = BagRecorder(tmp_path / "bag")
    bag.write("/camera/image_raw", _image(0), 1)
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "keep.txt").write_text("data")
    with pytest.raises(BagError, match="it is at") as info:
        bag.close()
    assert (tmp_path / "bag" / "keep.txt").read_text() == "data"
    staged = [p for p in tmp_path.iterdir() if p.name.startswith(".bag.partial-")]
    assert len(staged) == 1 and str(staged[0]) in str(info.value)
    with Reader(staged[0] / "bag") as reader:
        assert reader.message_count == 1


def test_abort_leaves_nothing(tmp_path):
    """An aborted recording removes its staging directory and never creates the bag."""
    bag = BagRecorder(tmp_path / "bag")
    bag.write("/camera/image_raw", _image(0), 1)
    bag.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BagError, match="closed"):
        bag.write("/camera/image_raw", _image(1), 2)


@pytest.mark.parametrize(
    "path, storage, message",
    [
        ("missing_dir/bag", "mcap", "not a directory"),
        ("bag", "rosbag1", "valid: \\['mcap', 'sqlite3'\\]"),
    ],
)
def test_bad_bag_arguments_fail_clearly(tmp_path, path, storage, message):
    """A bag under a missing directory or an unknown storage plugin fails naming the problem."""
    with pytest.raises(BagError, match=message):
        BagRecorder(tmp_path / path, storage)
    assert list(tmp_path.iterdir()) == []


def test_message_type_name():
    """Message classes of rclpy map to their ROS 2 type names."""
    assert message_type_name(Image()) == "sensor_msgs/msg/Image"
    assert message_type_name(Odometry()) == "nav_msgs/msg/Odometry"


@pytest.mark.parametrize(
    "params, duration, frames, message",
    [
        (["scene=Maze"], 1.0, 0, "NAME:=VALUE"),
        (["record_bag:=/tmp/x"], 1.0, 0, "--out"),
        ([], 0.0, 0, "positive --duration or --frames"),
    ],
)
def test_record_bag_command_rejects_bad_options(tmp_path, params, duration, frames, message):
    """record-bag refuses malformed -p options, a bag set through -p, and no stopping condition."""
    args = argparse.Namespace(out=str(tmp_path / "bag"), duration=duration, frames=frames, storage="mcap", param=params)
    with pytest.raises(ValueError, match=message):
        run(args)
    assert list(tmp_path.iterdir()) == []
