"""The `specvla_bag` console script across processes (LOCALHOST discovery).

`play` in a child process feeds subscribers in this process; `record` in a
child process records publishers of this process. Large 640x480 images go
through the shipped Fast DDS shared-memory profile and must all arrive.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bag_helpers import (
    T0_NS,
    Collector,
    bag_messages,
    image_msg,
    joint_state_msg,
    ros_context,
    serialize,
    string_msg,
    subscribe_raw,
    wait_until,
)

from specvla_ros.ros.bag.io import bag_info, write_bag
from specvla_ros.ros.bag.qos import SHM_PROFILE_PATH, qos_preset

pytestmark = pytest.mark.timeout(90)


def _cli() -> list[str]:
    exe = shutil.which("specvla_bag", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "specvla_ros.ros.bag.cli"]


def _env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return env


def test_cli_wrong_path_in_a_real_process_prints_one_line(tmp_path) -> None:
    proc = subprocess.run(_cli() + ["play", str(tmp_path / "missing_bag")], capture_output=True, text=True,
                          env=_env(76), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"specvla_bag: error: bag not found: {tmp_path / 'missing_bag'}"


def test_cli_play_large_images_across_processes_drops_nothing(tmp_path, monkeypatch) -> None:
    """30 frames of 640x480 rgb8 (0.9 MB each) at 30 Hz into another process."""
    frames = [serialize(image_msg(T0_NS + k * 33_333_333, height=480, width=640, seed=k)) for k in range(30)]
    msgs = [("/camera/image_raw", "sensor_msgs/msg/Image", T0_NS + k * 33_333_333, raw) for k, raw in enumerate(frames)]
    msgs.append(("/specvla/instruction", "std_msgs/msg/String", T0_NS, serialize(string_msg("reach the green cube"))))
    bag = write_bag(tmp_path / "big", msgs)
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    # Both sides load the same shared-memory profile, as a user would for the node.
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(SHM_PROFILE_PATH))
    with ros_context(77, discovery="LOCALHOST") as ros:
        got = Collector()
        # Reliable subscriber: playing the camera reliable makes delivery checkable (no silent drops).
        subscribe_raw(ros.node, got, "/camera/image_raw", Image, qos_preset("reliable"))
        subscribe_raw(ros.node, got, "/specvla/instruction", String, qos_preset("latched"))
        proc = subprocess.run(
            _cli() + ["play", str(bag), "--wait-for-subscribers", "1", "--subscriber-timeout", "30",
                      "--qos", "/camera/image_raw:=reliable"],
            capture_output=True, text=True, env=_env(77), timeout=80,
        )
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: got.count("/camera/image_raw") == 30, timeout=20, what="all 30 large frames")
        wait_until(lambda: got.count("/specvla/instruction") == 1, what="instruction")
    assert got.on("/camera/image_raw") == frames
    assert "played 31 messages" in proc.stdout
    match = re.search(r"lateness median ([\d.]+) ms, p95 ([\d.]+) ms, max ([\d.]+) ms", proc.stdout)
    assert match, proc.stdout
    print(f"cross-process 640x480 playback: {match.group(0)}; 0 of 30 frames dropped")


def test_cli_record_across_processes(tmp_path) -> None:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    out = tmp_path / "rec"
    with ros_context(78, discovery="LOCALHOST") as ros:
        js = ros.node.create_publisher(JointState, "/joint_states", qos_preset("reliable"))
        instr = ros.node.create_publisher(String, "/specvla/instruction", qos_preset("latched"))
        instr.publish(string_msg("open the drawer"))
        proc = subprocess.Popen(
            _cli() + ["record", "-o", str(out), "-s", "sqlite3", "--node-io", "--max-messages", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(78),
        )
        try:
            wait_until(lambda: js.get_subscription_count() >= 1, timeout=40, what="the recorder's subscription")
            for k in range(5):
                js.publish(joint_state_msg(T0_NS + k, k))
            stdout, stderr = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    counts = {t.name: t.count for t in bag_info(out).topics}
    assert counts == {"/joint_states": 5, "/specvla/instruction": 1}
    from rclpy.serialization import deserialize_message

    # Compared as messages: rclpy's serialize_message pads a JointState with empty
    # float64 sequences by 8 bytes that the wire format does not carry.
    assert [deserialize_message(raw, JointState) for t, _, raw in bag_messages(out) if t == "/joint_states"] == [
        joint_state_msg(T0_NS + k, k) for k in range(5)
    ]
    assert "wrote" in stdout


def test_cli_record_closes_the_bag_on_sigint(tmp_path) -> None:
    import signal

    from sensor_msgs.msg import JointState

    out = tmp_path / "interrupted"
    with ros_context(79, discovery="LOCALHOST") as ros:
        js = ros.node.create_publisher(JointState, "/joint_states", qos_preset("reliable"))
        proc = subprocess.Popen(_cli() + ["record", "-o", str(out), "/joint_states"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(79))
        try:
            wait_until(lambda: js.get_subscription_count() >= 1, timeout=40, what="the recorder's subscription")
            js.publish(joint_state_msg(T0_NS, 0))
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    assert (out / "metadata.yaml").is_file() and "Traceback" not in stderr
    # The topic was subscribed before the signal, so the finished bag lists it.
    assert [t.name for t in bag_info(out).topics] == ["/joint_states"]


def test_live_flow_play_clock_into_node_process_and_record_node_io(tiny_checkpoints, tmp_path) -> None:
    """The user's flow, three processes: specvla_node on sim time, `specvla_bag record --node-io
    --use-sim-time`, and `specvla_bag play --clock` of the shipped simulator bag."""
    import signal

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    target, draft, _ = tiny_checkpoints
    inputs = Path(__file__).parent / "data" / "bags" / "sim_inputs"
    out = tmp_path / "live"
    env = _env(75)
    node_exe = shutil.which("specvla_node", path=os.path.dirname(sys.executable))
    node_cmd = [node_exe] if node_exe else [sys.executable, "-m", "specvla_ros.ros.policy_node"]
    node = subprocess.Popen(node_cmd + ["--ros-args", "-p", "use_sim_time:=true", "-p", f"target_dir:={target}",
                                        "-p", f"draft_dir:={draft}", "-p", "warmup_steps:=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    recorder = subprocess.Popen(_cli() + ["record", "--node-io", "--use-sim-time", "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with ros_context(75, discovery="LOCALHOST") as ros:
            wait_until(lambda: ros.node.count_publishers("/specvla_node/safety") >= 1, timeout=80,
                       what="the node to configure (model load)")
        # Two camera subscribers: the node and the recorder, so no frame goes out before both listen.
        play = subprocess.run(_cli() + ["play", str(inputs), "--clock", "--wait-for-subscribers", "2",
                                        "--subscriber-timeout", "30", "--topics", "/camera/image_raw",
                                        "/joint_states", "/specvla/instruction"],
                              capture_output=True, text=True, env=env, timeout=80)
        assert play.returncode == 0, play.stderr
    finally:
        for proc in (recorder, node):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        rec_out, rec_err = recorder.communicate(timeout=40)
        node.communicate(timeout=40)
    assert recorder.returncode == 0, rec_err
    frames = {deserialize_message(raw, Image).header.stamp.sec * 10**9 + deserialize_message(raw, Image).header.stamp.nanosec
              for t, _, raw in bag_messages(inputs) if t == "/camera/image_raw"}
    from specvla_msgs.msg import SafetyVerdict

    recorded = bag_messages(out)
    verdicts = [(t, deserialize_message(raw, SafetyVerdict)) for topic, t, raw in recorded if topic == "/specvla_node/safety"]
    decisions = [v for _, v in verdicts if v.status_name in ("OK", "SCALED")]
    assert decisions, [v.status_name for _, v in verdicts]
    # Decisions carry the stamp of the camera frame they answer (how outputs align to inputs).
    assert all(v.header.stamp.sec * 10**9 + v.header.stamp.nanosec in frames for v in decisions)
    # Everything was stamped with the bag's sim time (/clock from play), not the wall clock.
    start, end = min(frames), max(frames)
    assert all(start - 10**9 <= t <= end + 10**9 for _, t, _ in recorded)
