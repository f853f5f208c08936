"""Bad bags, as real files: wrong paths, truncated storage files in both
formats, missing topics, out-of-order stamps and message types that are not
installed. Errors must be one clear line (no traceback), warnings must name
what was skipped, and playback must still deliver what it can.
"""
from __future__ import annotations

import os
import shutil
import warnings

import pytest
from test_bag_helpers import (
    T0_NS,
    Collector,
    best_effort_deep,
    ros_context,
    serialize,
    string_msg,
    subscribe_raw,
    synthetic_messages,
    wait_until,
)

from specvla_ros.ros.bag import cli as bag_cli
from specvla_ros.ros.bag.io import BagError, bag_info, write_bag
from specvla_ros.ros.bag.player import BagPlayer, PlayConfig
from specvla_ros.ros.bag.qos import qos_preset
from specvla_ros.ros.bag.types import make_typestore

pytestmark = pytest.mark.timeout(60)
STORAGES = ("mcap", "sqlite3")


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, require a failure with exactly one stderr line, return it."""
    rc = bag_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("specvla_bag: error: ")
    return lines[0]


def test_wrong_path_is_one_clear_line(tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_bag"
    for command in ("info", "play"):
        assert str(missing) in _cli_error([command, str(missing)], capsys)
    (tmp_path / "empty_dir").mkdir()
    assert "without metadata.yaml" in _cli_error(["info", str(tmp_path / "empty_dir")], capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bag")
    assert "cannot read bag" in _cli_error(["play", str(notes)], capsys)


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_storage_file_is_one_clear_line(tmp_path, capsys, storage: str) -> None:
    bag = write_bag(tmp_path / storage, synthetic_messages(), storage=storage)
    (data_file,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    os.truncate(data_file, data_file.stat().st_size // 2)
    for command in ("info", "play"):
        line = _cli_error([command, str(bag)], capsys)
        assert "truncated or corrupt" in line and str(bag) in line
    with pytest.raises(BagError, match="truncated or corrupt"):
        bag_info(bag)


def test_storage_file_missing_behind_metadata(tmp_path, capsys) -> None:
    bag = write_bag(tmp_path / "b", synthetic_messages(), storage="mcap")
    next(bag.glob("*.mcap")).unlink()
    assert "missing" in _cli_error(["info", str(bag)], capsys)


@pytest.mark.parametrize("storage", STORAGES)
def test_out_of_order_stamps_play_in_time_order(tmp_path, storage: str) -> None:
    order = [4, 0, 3, 1, 5, 2]  # written out of order, as a recorder with several writers might
    msgs = [("/chatter", "std_msgs/msg/String", T0_NS + k * 10_000_000, serialize(string_msg(f"m{k}"))) for k in order]
    bag = write_bag(tmp_path / storage, msgs, storage=storage)
    summary = bag_info(bag)
    assert (summary.start_ns, summary.end_ns) == (T0_NS, T0_NS + 50_000_000)
    from std_msgs.msg import String

    with ros_context(66 if storage == "mcap" else 67) as ros:
        got = Collector()
        subscribe_raw(ros.node, got, "/chatter", String, qos_preset("reliable"))
        player = BagPlayer(ros.node, bag, PlayConfig(rate=10.0, wait_for_subscribers=1))
        player.play()
        wait_until(lambda: got.count() == 6, what="six strings")
        player.destroy()
    assert got.on("/chatter") == [serialize(string_msg(f"m{k}")) for k in range(6)]


def _bag_with_foreign_type(path, storage: str):
    store = make_typestore()
    from rosbags.typesys import get_types_from_msg

    store.register(get_types_from_msg("float64 reading\nstring unit", "acme_msgs/msg/Gauge"))
    gauge = store.types["acme_msgs/msg/Gauge"](reading=1.5, unit="bar")
    raw = store.serialize_cdr(gauge, "acme_msgs/msg/Gauge")
    msgs = [("/gauge", "acme_msgs/msg/Gauge", T0_NS + k, raw) for k in range(3)]
    msgs += [("/chatter", "std_msgs/msg/String", T0_NS + k, serialize(string_msg(str(k)))) for k in range(3)]
    return write_bag(path, msgs, storage=storage, typestore=store)


@pytest.mark.parametrize("storage", STORAGES)
def test_uninstalled_type_is_skipped_with_a_warning(tmp_path, capsys, storage: str) -> None:
    bag = _bag_with_foreign_type(tmp_path / storage, storage)
    topics = {t.name: t for t in bag_info(bag).topics}
    assert not topics["/gauge"].installed and topics["/chatter"].installed
    assert bag_cli.main(["info", str(bag)]) == 0
    assert "type not installed" in capsys.readouterr().out
    from std_msgs.msg import String

    with ros_context(68 if storage == "mcap" else 69) as ros:
        got = Collector()
        subscribe_raw(ros.node, got, "/chatter", String, qos_preset("reliable"))
        with pytest.warns(UserWarning, match="skipping /gauge: message type acme_msgs/msg/Gauge is not installed"):
            player = BagPlayer(ros.node, bag, PlayConfig(rate=100.0, wait_for_subscribers=1))
        stats = player.play()
        wait_until(lambda: got.count() == 3, what="the installed topic")
        player.destroy()
    assert stats.published == {"/chatter": 3}
    assert "/gauge" in stats.skipped_topics


def test_missing_topic_warns_and_plays_the_rest(tmp_path) -> None:
    bag = write_bag(tmp_path / "b", synthetic_messages(frames=3), storage="sqlite3")
    from sensor_msgs.msg import JointState

    with ros_context(72) as ros:
        got = Collector()
        subscribe_raw(ros.node, got, "/joint_states", JointState, qos_preset("reliable"))
        with pytest.warns(UserWarning, match="topic /wrist_camera/image_raw is not in bag"):
            player = BagPlayer(ros.node, bag, PlayConfig(rate=100.0, topics=("/joint_states", "/wrist_camera/image_raw"),
                                                         wait_for_subscribers=1))
        stats = player.play()
        wait_until(lambda: got.count() == 3, what="joint states")
        player.destroy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(BagError, match="nothing to play"):
                BagPlayer(ros.node, bag, PlayConfig(topics=("/wrist_camera/image_raw",)))
    assert stats.published == {"/joint_states": 3}
    assert stats.skipped_topics == {"/wrist_camera/image_raw": "not in bag"}


def test_copied_bag_directory_still_reads(tmp_path) -> None:
    """A bag moved or renamed as a directory keeps working (relative file paths)."""
    bag = write_bag(tmp_path / "orig", synthetic_messages(frames=2), storage="mcap")
    moved = shutil.copytree(bag, tmp_path / "renamed")
    assert bag_info(moved).message_count == 5


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8"])
def test_camera_in_other_encodings_plays_through_conversions(tmp_path, encoding: str) -> None:
    """A bag from a camera that is not rgb8 still yields the right RGB frames for the node."""
    import numpy as np
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from test_bag_helpers import image_msg

    from specvla_ros.ros.conversions import image_to_rgb

    frames = [image_msg(T0_NS + k * 10**8, height=24, width=20, encoding=encoding, seed=k) for k in range(3)]
    bag = write_bag(tmp_path / encoding,
                    [("/camera/image_raw", "sensor_msgs/msg/Image", T0_NS + k * 10**8, serialize(f))
                     for k, f in enumerate(frames)], storage="sqlite3" if encoding == "mono8" else "mcap")
    with ros_context({"bgr8": 73, "mono8": 74, "rgba8": 75}[encoding]) as ros:
        got = Collector()
        subscribe_raw(ros.node, got, "/camera/image_raw", Image, best_effort_deep())
        player = BagPlayer(ros.node, bag, PlayConfig(rate=20.0, wait_for_subscribers=1))
        player.play()
        wait_until(lambda: got.count() == 3, what="three frames")
        player.destroy()
    for frame, raw in zip(frames, got.on("/camera/image_raw")):
        msg = deserialize_message(raw, Image)
        assert msg.encoding == encoding
        rgb = image_to_rgb(msg, (24, 20))
        src = np.frombuffer(bytes(frame.data), np.uint8).reshape(24, 20, -1)
        expected = {"bgr8": src[..., ::-1], "mono8": np.repeat(src, 3, axis=2), "rgba8": src[..., :3]}[encoding]
        assert rgb.shape == (24, 20, 3) and np.array_equal(rgb, expected)


def test_damaged_mcap_chunk_is_one_clear_line(tmp_path, capsys, monkeypatch) -> None:
    """The index survives but a chunk in the middle is overwritten: reading fails cleanly."""
    from test_bag_helpers import bag_messages

    bag = write_bag(tmp_path / "damaged", synthetic_messages(frames=20), storage="mcap")
    data_file = next(bag.glob("*.mcap"))
    size = data_file.stat().st_size
    with data_file.open("r+b") as fh:
        fh.seek(size // 3)
        fh.write(b"\xff" * 4000)
    with pytest.raises(BagError, match="truncated or corrupt"):
        bag_messages(bag)
    # play gets as far as starting ROS (in this process: private domain, no discovery).
    monkeypatch.setenv("ROS_DOMAIN_ID", "77")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "OFF")
    line = _cli_error(["play", str(bag), "--rate", "1000", "--no-shm"], capsys)
    assert "truncated or corrupt" in line
