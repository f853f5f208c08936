"""specvla_bag tools with real bag files and real rclpy publishers/subscribers.

Bags are written in both storage formats; playback goes through the graph
into raw subscriptions and must deliver every message byte for byte, in
time order; recording goes the other way and must read back identically.
"""
from __future__ import annotations

import json

import pytest
from test_bag_helpers import (
    best_effort_deep,
    T0_NS,
    Collector,
    bag_messages,
    image_msg,
    ros_context,
    serialize,
    string_msg,
    subscribe_raw,
    synthetic_messages,
    wait_until,
)

from specvla_ros.ros.bag import cli as bag_cli
from specvla_ros.ros.bag.io import bag_info, write_bag
from specvla_ros.ros.bag.player import BagPlayer, PlayConfig
from specvla_ros.ros.bag.qos import default_play_qos_name, parse_mapping, qos_preset
from specvla_ros.ros.bag.recorder import BagRecorder, RecordConfig
from specvla_ros.ros.bag.types import make_typestore

pytestmark = pytest.mark.timeout(60)
STORAGES = ("mcap", "sqlite3")


@pytest.fixture(params=STORAGES)
def input_bag(request: pytest.FixtureRequest, tmp_path):
    path = tmp_path / f"inputs_{request.param}"
    write_bag(path, synthetic_messages(), storage=request.param)
    return path, request.param


def test_info_reports_topics_counts_duration_storage(input_bag, capsys) -> None:
    path, storage = input_bag
    summary = bag_info(path)
    assert summary.storage == storage
    assert summary.files and all(f.exists() for f in summary.files)
    assert summary.message_count == 13
    counts = {t.name: (t.msgtype, t.count) for t in summary.topics}
    assert counts == {
        "/camera/image_raw": ("sensor_msgs/msg/Image", 6),
        "/joint_states": ("sensor_msgs/msg/JointState", 6),
        "/specvla/instruction": ("std_msgs/msg/String", 1),
    }
    assert summary.start_ns == T0_NS
    assert summary.duration_s == pytest.approx(0.300001, abs=1e-9)
    assert summary.size_bytes > 6 * 32 * 32 * 3

    assert bag_cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"Storage id:        {storage}" in text and "Count: 6" in text
    assert bag_cli.main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["message_count"] == 13


def test_custom_specvla_types_round_trip_through_typestore(tmp_path) -> None:
    store = make_typestore(["specvla_msgs/msg/SafetyVerdict"])
    verdict_cls = store.types["specvla_msgs/msg/SafetyVerdict"]
    header_cls = store.types["std_msgs/msg/Header"]
    time_cls = store.types["builtin_interfaces/msg/Time"]
    import numpy as np

    verdict = verdict_cls(
        header=header_cls(stamp=time_cls(sec=5, nanosec=7), frame_id="camera"),
        status=11, status_name="HALT_VELOCITY", reason="too fast",
        raw_action=np.arange(7, dtype=np.float64), joint_command=np.zeros(7), gripper_command=0.04,
        scale=1.0, min_distance=float("nan"), tcp_speed=0.3, worst_joint_margin=0.2, check_time=1e-4,
    )
    raw = store.serialize_cdr(verdict, "specvla_msgs/msg/SafetyVerdict")
    for storage in STORAGES:
        path = write_bag(tmp_path / storage, [("/specvla_node/safety", "specvla_msgs/msg/SafetyVerdict", T0_NS, raw)],
                         storage=storage, typestore=store)
        ((topic, _, got),) = bag_messages(path)
        back = store.deserialize_cdr(got, "specvla_msgs/msg/SafetyVerdict")
        assert (topic, back.status, back.reason, back.header.stamp.nanosec) == ("/specvla_node/safety", 11, "too fast", 7)


def test_default_qos_choices() -> None:
    assert default_play_qos_name("/camera/image_raw", "sensor_msgs/msg/Image") == "sensor_data"
    assert default_play_qos_name("/specvla/instruction", "std_msgs/msg/String") == "latched"
    assert default_play_qos_name("/joint_states", "sensor_msgs/msg/JointState") == "reliable"
    # What the recorded publishers offered wins (as in `ros2 bag play`).
    from rclpy.qos import qos_profile_sensor_data

    from specvla_ros.ros.bag.qos import qos_to_rosbags

    reliable, best_effort, latched = (qos_to_rosbags(qos_preset(n)) for n in ("reliable", "sensor_data", "latched"))
    assert default_play_qos_name("/camera/image_raw", "sensor_msgs/msg/Image", [reliable]) == "reliable"
    assert default_play_qos_name("/joint_states", "sensor_msgs/msg/JointState", [reliable, best_effort]) == "sensor_data"
    assert default_play_qos_name("/map", "std_msgs/msg/String", [latched]) == "latched"
    assert qos_to_rosbags(qos_profile_sensor_data).reliability.name == "BEST_EFFORT"
    assert parse_mapping(["/a:=/b"], "remap") == {"/a": "/b"}
    with pytest.raises(ValueError, match="/a=/b"):
        parse_mapping(["/a=/b"], "remap")
    with pytest.raises(ValueError, match="bogus"):
        PlayConfig(qos={"/x": "bogus"})
    with pytest.raises(ValueError, match="-1"):
        PlayConfig(rate=-1)


def test_play_delivers_every_message_byte_identical_in_order(input_bag) -> None:
    path, storage = input_bag
    expected = bag_messages(path)
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    with ros_context(60 if storage == "mcap" else 61) as ros:
        got = Collector()
        # Subscribe as the policy node does (camera best effort, instruction latched), deeper queue.
        subscribe_raw(ros.node, got, "/camera/image_raw", Image, best_effort_deep())
        subscribe_raw(ros.node, got, "/joint_states", JointState, qos_preset("reliable"))
        subscribe_raw(ros.node, got, "/specvla/instruction", String, qos_preset("latched"))
        player = BagPlayer(ros.node, path, PlayConfig(rate=5.0, wait_for_subscribers=1))
        stats = player.play()
        wait_until(lambda: got.count() == len(expected), what="all played messages")
        player.destroy()
    assert stats.total == len(expected) and not stats.skipped_topics
    for topic in ("/camera/image_raw", "/joint_states", "/specvla/instruction"):
        assert got.on(topic) == [raw for t, _, raw in expected if t == topic]
    assert len(stats.lateness_s) == len(expected)
    print(f"{storage}: playback lateness {stats.timing_summary()}")


def test_play_rate_offset_topics_remap_and_clock(tmp_path) -> None:
    path = write_bag(tmp_path / "b", synthetic_messages(frames=8), storage="mcap")
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from rclpy.serialization import deserialize_message

    with ros_context(62) as ros:
        got = Collector()
        subscribe_raw(ros.node, got, "/cam2", Image, best_effort_deep())
        subscribe_raw(ros.node, got, "/clock", Clock, qos_preset("reliable"))
        config = PlayConfig(
            rate=20.0, start_offset_s=0.12, topics=("/camera/image_raw",),
            remap={"/camera/image_raw": "/cam2"}, clock_hz=100.0, wait_for_subscribers=1,
        )
        player = BagPlayer(ros.node, path, config)
        stats = player.play()
        # 0.12 s offset skips frames 1 and 2 (at 50 and 100 ms); frames 3..8 remain.
        wait_until(lambda: got.count("/cam2") == 6, what="remapped images")
        wait_until(lambda: got.count("/clock") == stats.clock_published, what="clock ticks")
        player.destroy()
    assert stats.published == {"/cam2": 6}
    stamps = [deserialize_message(raw, Image).header.stamp for raw in got.on("/cam2")]
    assert [s.sec * 10**9 + s.nanosec for s in stamps] == [T0_NS + k * 50_000_000 for k in range(3, 9)]
    clock_ns = [c.clock.sec * 10**9 + c.clock.nanosec for c in (deserialize_message(r, Clock) for r in got.on("/clock"))]
    assert clock_ns == sorted(clock_ns), "sim time must not go backwards within a loop"
    for k in range(3, 9):  # /clock reached each image's bag time before the image went out
        assert T0_NS + k * 50_000_000 + 1000 in clock_ns


def test_latched_instruction_reaches_a_late_subscriber_and_loops(tmp_path) -> None:
    path = write_bag(tmp_path / "b", synthetic_messages(frames=2), storage="sqlite3")
    from std_msgs.msg import String

    with ros_context(63) as ros:
        player = BagPlayer(ros.node, path, PlayConfig(rate=50.0, topics=("/specvla/instruction",), loops=3))
        stats = player.play()
        got = Collector()
        subscribe_raw(ros.node, got, "/specvla/instruction", String, qos_preset("latched"))
        wait_until(lambda: got.count() == 1, what="latched instruction")
        player.destroy()
    assert stats.loops_done == 3 and stats.published == {"/specvla/instruction": 3}
    assert got.on("/specvla/instruction") == [serialize(string_msg("pick up the red cube"))]


@pytest.mark.parametrize("storage", STORAGES)
def test_record_then_read_back(tmp_path, storage: str) -> None:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    out = tmp_path / f"rec_{storage}"
    with ros_context(64 if storage == "mcap" else 65) as ros:
        pub_node = ros.make_node("bag_test_pub")
        cam = pub_node.create_publisher(Image, "/camera/image_raw", qos_preset("sensor_data"))
        instr = pub_node.create_publisher(String, "/specvla/instruction", qos_preset("latched"))
        instr.publish(string_msg("push the blue block"))  # before the recorder exists: latched
        from specvla_msgs.msg import SafetyVerdict

        safety = pub_node.create_publisher(SafetyVerdict, "/specvla_node/safety", qos_preset("reliable"))
        rec_node = ros.make_node("bag_test_recorder")
        recorder = BagRecorder(rec_node, RecordConfig(
            output=out, storage=storage, topics=("/camera/image_raw", "/specvla/instruction", "/specvla_node/safety")))
        wait_until(lambda: len(recorder.subscribed_topics) == 3, what="recorder subscriptions")
        wait_until(lambda: safety.get_subscription_count() == 1, what="recorder matched the custom type")
        safety.publish(SafetyVerdict(status=11, status_name="HALT_VELOCITY", reason="too fast", raw_action=[0.1] * 7))
        wait_until(lambda: cam.get_subscription_count() == 1, what="recorder matched camera")
        wait_until(lambda: recorder.counts.get("/specvla/instruction") == 1, what="latched message recorded")
        frames = [serialize(image_msg(T0_NS + k, seed=k)) for k in range(5)]
        for k, raw in enumerate(frames):
            cam.publish(raw)
            wait_until(lambda k=k: recorder.counts["/camera/image_raw"] == k + 1, what=f"frame {k} recorded")
        wait_until(lambda: recorder.counts["/specvla_node/safety"] == 1, what="verdict recorded")
        recorder.close()
    summary = bag_info(out)
    assert summary.storage == storage
    assert {t.name: t.count for t in summary.topics} == {
        "/camera/image_raw": 5, "/specvla/instruction": 1, "/specvla_node/safety": 1}
    # The custom type's definition went into the bag: rosbags decodes it without our .msg files.
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([out], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/specvla_node/safety"]
        verdict = reader.deserialize(next(raw for _, _, raw in reader.messages([conn])), conn.msgtype)
    assert (conn.msgtype, verdict.status, verdict.reason) == ("specvla_msgs/msg/SafetyVerdict", 11, "too fast")
    recorded = bag_messages(out)
    assert [raw for t, _, raw in recorded if t == "/camera/image_raw"] == frames
    qos = {t.name: t.offered_qos for t in summary.topics}
    assert qos["/specvla/instruction"][0].durability.name == "TRANSIENT_LOCAL"
    assert qos["/camera/image_raw"][0].reliability.name == "BEST_EFFORT"
    assert (out / "metadata.yaml").read_text().count("RIHS01_") == 3  # type hashes, as rosbag2 writes them


def test_record_refuses_existing_output(tmp_path) -> None:
    with pytest.raises(ValueError, match="exists already"):
        RecordConfig(output=tmp_path, topics=("/x",))
    with pytest.raises(ValueError, match="nothing to record"):
        RecordConfig(output=tmp_path / "new")


def test_shm_profile_is_set_only_when_the_user_has_none(tmp_path) -> None:
    from specvla_ros.ros.bag.qos import SHM_PROFILE_PATH, use_shm_profile

    assert SHM_PROFILE_PATH.is_file() and "<segment_size>33554432</segment_size>" in SHM_PROFILE_PATH.read_text()
    env: dict[str, str] = {}
    assert use_shm_profile(env) == SHM_PROFILE_PATH and env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(SHM_PROFILE_PATH)}
    mine = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(tmp_path / "mine.xml")}
    assert use_shm_profile(mine) is None and "FASTDDS_DEFAULT_PROFILES_FILE" not in mine


def test_node_io_topics_match_the_policy_node() -> None:
    """`record --node-io` and the regression harness follow the node's topic names."""
    from specvla_ros.ros.bag import regression as reg
    from specvla_ros.ros import params
    from specvla_ros.ros import topics
    from specvla_ros.ros.bag.io import NODE_INPUT_TOPICS, NODE_IO_TOPICS

    private = [f"/{params.NODE_NAME}/{t[2:]}" for t in (topics.SAFETY, topics.STATS)]
    scene_topic = params.defaults()["scene_objects_topic"]
    inputs = {topics.IMAGE, topics.INSTRUCTION, topics.JOINT_STATES, topics.ESTOP, scene_topic}
    outputs = {topics.TRAJECTORY, topics.FORWARD, topics.GRIPPER, topics.NARRATION,
               topics.DIAGNOSTICS, *private}
    assert set(NODE_INPUT_TOPICS) == inputs
    assert set(NODE_IO_TOPICS) == inputs | outputs
    assert set(reg.OUTPUT_TYPES) == outputs - {topics.DIAGNOSTICS}
