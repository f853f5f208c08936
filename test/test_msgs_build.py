"""specvla_msgs is built by `make setup` (colcon, into the venv prefix) and
importable from pytest and from child processes; its constants match core."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from specvla_ros.core.types import SafetyStatus

msg = pytest.importorskip("specvla_msgs.msg", reason="run `make setup` to build specvla_msgs")


def test_safety_verdict_constants_match_core_enum() -> None:
    for status in SafetyStatus:
        assert getattr(msg.SafetyVerdict, status.name) == status.value, status.name
    # and no extra constant the core enum lacks
    consts = {n for n in dir(msg.SafetyVerdict) if n.isupper() and n != "SLOT_TYPES"}
    assert consts == {s.name for s in SafetyStatus}


def test_messages_round_trip_through_cdr() -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    verdict = msg.SafetyVerdict(
        status=msg.SafetyVerdict.HALT_STALE_INPUT,
        status_name="HALT_STALE_INPUT",
        reason="camera 0.8 s old",
        raw_action=[0.1] * 7,
        joint_command=[0.0, -0.5, 0.0, -2.0, 0.0, 1.5, 0.8],
        gripper_command=0.04,
        scale=1.0,
        min_distance=float("nan"),
    )
    back = deserialize_message(serialize_message(verdict), msg.SafetyVerdict)
    assert back.status == 20 and back.reason == "camera 0.8 s old"
    assert list(back.joint_command) == list(verdict.joint_command)

    stats = msg.SpecDecodeStats(mode="relaxed", drafted=8, accepted=6, emitted=9, target_passes=3,
                                total_time=0.05, vision_cached=True, safety_path="accepted")
    back_stats = deserialize_message(serialize_message(stats), msg.SpecDecodeStats)
    assert (back_stats.mode, back_stats.accepted, back_stats.vision_cached) == ("relaxed", 6, True)

    task = msg.TaskStatus(task="lift", episode=2, seed=-5, collision_bodies=["hand", "table"])
    back_task = deserialize_message(serialize_message(task), msg.TaskStatus)
    assert back_task.seed == -5 and list(back_task.collision_bodies) == ["hand", "table"]


def test_reset_episode_service_types() -> None:
    from specvla_msgs.srv import ResetEpisode

    req = ResetEpisode.Request(task="lift", seed=3)
    resp = ResetEpisode.Response(success=True, message="", instruction="pick up the cube")
    assert (req.task, req.seed, resp.instruction) == ("lift", 3, "pick up the cube")


def test_importable_in_a_fresh_interpreter_without_bootstrap_env() -> None:
    # A console script or subprocess starts with a clean environment: the venv
    # interpreter alone must find the generated Python package and its libraries.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE", "PYTHONPATH")}
    code = ("from specvla_msgs.msg import SafetyVerdict; from rclpy.serialization import serialize_message; "
            "print(len(serialize_message(SafetyVerdict(status=21))))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0
