"""specvla_node as a robot runs it: its own process (with its inference process
behind it), fed by a sensor driver in a third process at real rates (camera
30 Hz, joint states 250 Hz), observed and attacked from this one over DDS.

Timings are printed, never asserted: the assertions count control ticks and
check what was published.
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
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Header, String
from trajectory_msgs.msg import JointTrajectory

from ros_harness import Collector, Spinner, ros_context
from specvla_ros.bench.sensor_feeder import HOME_Q
from specvla_ros.core.safety.command_guard import CommandGuard
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES
from specvla_ros.ros import qos

SafetyVerdict = pytest.importorskip("specvla_msgs.msg", reason="run `make setup`").SafetyVerdict

BIN = Path(sys.executable).parent
STARTUP = 120.0  # imports + two processes + model load on a loaded 2-core machine
WAIT = 30.0
GUARD = CommandGuard.from_config(load_safety_config(), PANDA_JOINT_NAMES)


def _positions(cmd: JointTrajectory) -> np.ndarray:
    return np.asarray(cmd.points[0].positions if cmd.points else [], dtype=np.float64)


def _inside_limits(cmd: JointTrajectory) -> bool:
    q = _positions(cmd)
    return q.size == 0 or GUARD.command_problem(q, math.nan) is None


class Robot:
    """specvla_node + sensor_feeder processes and the observing probe in this process."""

    def __init__(self, ctx, tmp_path: Path, tiny_checkpoints, domain: int) -> None:
        target, draft, _ = tiny_checkpoints
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"specvla_node": {"ros__parameters": {
            "target_dir": str(target), "draft_dir": str(draft), "device": "cpu", "warmup_steps": 1,
            "control_period": 0.2, "max_input_age": 0.5, "autostart": True}}}))
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        exe = BIN / "specvla_node"
        node_cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "specvla_ros.ros.policy_node"]
        self.log = open(tmp_path / "node.log", "w+")  # noqa: SIM115 — closed in stop()
        self.node = subprocess.Popen(node_cmd + ["--ros-args", "--params-file", str(params)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.feeder = subprocess.Popen([sys.executable, "-m", "specvla_ros.bench.sensor_feeder", "--camera-hz", "30",
                                        "--joint-hz", "250", "--width", "320", "--height", "240"], env=env,
                                       stdout=subprocess.DEVNULL)
        self.probe = Node("robot_probe", context=ctx)
        self.verdicts = Collector(self.probe, SafetyVerdict, "/specvla_node/safety", qos.STATUS)
        self.commands = Collector(self.probe, JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                  qos.COMMAND)
        self.diagnostics = Collector(self.probe, DiagnosticArray, "/diagnostics", qos.STATUS)
        self.estop = self.probe.create_publisher(Bool, "/specvla/estop", qos.LATCHED)
        self.spinner = Spinner(ctx, self.probe)

    def node_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def wait_decisions(self, n: int, after: float = 0.0, timeout: float = STARTUP) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.poll() is not None:
                pytest.fail(f"specvla_node exited with {self.node.returncode}:\n{self.node_log()}")
            got = [t for t, v in self.verdicts.msgs if t >= after and v.status < 10]
            if len(got) >= n:
                return got[n - 1]
            time.sleep(0.05)
        pytest.fail(f"fewer than {n} decisions in {timeout:.0f} s:\n{self.node_log()}")

    def stop(self) -> None:
        for proc in (self.node, self.feeder):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (self.node, self.feeder):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.spinner.stop()
        self.probe.destroy_node()
        self.log.close()


@pytest.fixture
def robot(tmp_path, tiny_checkpoints, request):
    domain = request.param
    with ros_context(domain, discovery="LOCALHOST") as ctx:
        r = Robot(ctx, tmp_path, tiny_checkpoints, domain)
        try:
            yield r
        finally:
            r.stop()


@pytest.mark.parametrize("robot", [23], indirect=True)
def test_at_sensor_rates_every_period_is_decided_and_the_estop_is_atomic(robot: Robot) -> None:
    t_first = robot.wait_decisions(3)
    t_window = robot.wait_decisions(15, after=t_first)
    window = [v for t, v in robot.verdicts.msgs if t_first <= t <= t_window]
    statuses = {v.status_name for v in window}
    stamps = np.array([v.header.stamp.sec + v.header.stamp.nanosec * 1e-9 for v in window])
    gaps = np.diff(stamps) * 1e3
    print(f"\n{len(window)} verdicts, statuses {sorted(statuses)}; verdict intervals p50 {np.median(gaps):.1f} ms, "
          f"max {gaps.max():.1f} ms")
    # 250 Hz joint states and a 30 Hz camera from another process never starve the node
    assert not statuses & {"HALT_STALE_INPUT", "HALT_DEADLINE", "HALT_NOT_READY"}, statuses

    t_press = time.monotonic()
    robot.estop.publish(Bool(data=True))
    hit = robot.verdicts.wait_for(lambda v: v.status == SafetyVerdict.HALT_ESTOP, timeout=WAIT, after=t_press)
    assert hit is not None, robot.node_log()
    t_hold = hit[0]
    print(f"e-stop -> hold verdict received after {1e3 * (t_hold - t_press):.1f} ms")
    assert robot.verdicts.wait_for(lambda v: True, timeout=WAIT, after=t_hold + 1.0) is not None
    t_release = time.monotonic()
    robot.estop.publish(Bool(data=False))
    latched = [v for t, v in robot.verdicts.msgs if t_hold <= t < t_release]
    assert len(latched) >= 4 and all(v.status == SafetyVerdict.HALT_ESTOP for v in latched)
    held = [c for t, c in robot.commands.msgs if t_hold < t < t_release]
    assert held and all(np.allclose(_positions(c), HOME_Q, atol=1e-9) for c in held)
    robot.wait_decisions(1, after=time.monotonic(), timeout=WAIT)
    assert all(_inside_limits(c) for _, c in robot.commands.msgs)


def _inference_pid(robot: Robot) -> int:
    hit = robot.diagnostics.wait_for(lambda d: any(
        kv.key == "inference_pid" and kv.value.isdigit() for s in d.status for kv in s.values), timeout=WAIT)
    assert hit is not None
    return int(next(kv.value for s in hit[1].status for kv in s.values if kv.key == "inference_pid"))


@pytest.mark.parametrize("robot", [24], indirect=True)
def test_hostile_inputs_and_a_dead_inference_process_only_ever_hold(robot: Robot) -> None:
    robot.wait_decisions(2)
    hostile = robot.probe
    image_pub = hostile.create_publisher(Image, "/camera/image_raw", qos.CAMERA)
    joint_pub = hostile.create_publisher(JointState, "/joint_states", 10)
    instr_pub = hostile.create_publisher(String, "/specvla/instruction", qos.LATCHED)
    names = list(PANDA_JOINT_NAMES) + list(PANDA_FINGER_JOINT_NAMES)

    def now() -> Header:
        return Header(stamp=hostile.get_clock().now().to_msg(), frame_id="camera")

    attacks = {
        "depth image": lambda: image_pub.publish(Image(header=now(), height=8, width=8, encoding="32FC1", step=32,
                                                       data=bytes(256))),
        "huge declared size": lambda: image_pub.publish(Image(header=now(), height=60000, width=60000,
                                                              encoding="rgb8", step=180000, data=bytes(64))),
        "zero step": lambda: image_pub.publish(Image(header=now(), height=4, width=4, encoding="rgb8", step=0,
                                                     data=bytes(48))),
        "16-bit rows shorter than the width": lambda: image_pub.publish(Image(
            header=now(), height=9, width=7, encoding="bgra16", is_bigendian=1, step=55, data=bytes(range(256)) * 3)),
        "absurd joints": lambda: joint_pub.publish(JointState(name=names, position=[1e9] * 9)),
        "fewer positions than names": lambda: joint_pub.publish(JointState(name=names, position=[0.0])),
        "NaN joints": lambda: joint_pub.publish(JointState(name=names, position=[math.nan] * 9)),
        "long instruction": lambda: instr_pub.publish(String(data="x" * 100_000)),
    }
    for label, attack in attacks.items():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:  # five control periods, faster than the driver's good messages
            attack()
            time.sleep(0.001)
        assert robot.node.poll() is None, f"{label}: node died\n{robot.node_log()}"
        holds = [v for t, v in robot.verdicts.msgs if t >= t0 and v.status >= 20]
        assert holds, f"{label}: no hold"
        print(f"{label}: {holds[0].status_name}: {holds[0].reason[:100]}")
    instr_pub.publish(String(data="pick up the red cube"))
    robot.wait_decisions(1, after=time.monotonic(), timeout=WAIT)

    # the inference process dies: holds with a reason, a new one is started, decisions resume
    pid = _inference_pid(robot)
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    hit = robot.verdicts.wait_for(lambda v: "inference unavailable" in v.reason, timeout=WAIT, after=t_kill)
    assert hit is not None and hit[1].status == SafetyVerdict.HALT_NOT_READY, robot.node_log()
    t_back = robot.wait_decisions(1, after=hit[0], timeout=STARTUP)
    print(f"inference process killed -> decisions again after {t_back - t_kill:.1f} s")
    assert robot.diagnostics.wait_for(lambda d: any(
        kv.key == "inference_pid" and kv.value.isdigit() and int(kv.value) != pid
        for s in d.status for kv in s.values), timeout=WAIT, after=hit[0]) is not None
    assert robot.node.poll() is None
    bad = [c for _, c in robot.commands.msgs if not _inside_limits(c)]
    assert not bad, f"commands outside the joint limits: {[_positions(c) for c in bad[:3]]}"
