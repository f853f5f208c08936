"""specvla_node in-process, with the real Policy on the tiny random checkpoints:
real rclpy publishers feed camera / instruction / joint states / e-stop and
real subscriptions observe commands, narration, verdicts, stats and diagnostics.

Timing requirements are checked in control ticks (verdicts), not wall time;
every wait has a timeout and no test sleeps for a fixed time.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from ros_harness import Collector, Spinner, ros_context, wait_until
from specvla_ros.core.types import PANDA_JOINT_NAMES, SafetyStatus
from specvla_ros.ros import conversions as conv
from specvla_ros.ros import qos
from specvla_ros.ros.policy_node import PolicyNode

pytest.importorskip("specvla_ros.core.policy", reason="core.policy (issue 3) not in the tree yet")
SafetyVerdict = pytest.importorskip("specvla_msgs.msg", reason="run `make setup`").SafetyVerdict
SpecDecodeStats = pytest.importorskip("specvla_msgs.msg").SpecDecodeStats

PERIOD = 0.2
MAX_AGE = 0.5
Q0 = np.array([0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8])
FINGERS = (0.02, 0.02)
RNG = np.random.default_rng(1)
FRAME = RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8)
WAIT = 30.0  # generous upper bound for anything to show up on a loaded 2-core machine


def joint_state(names=PANDA_JOINT_NAMES, q=Q0, fingers=FINGERS) -> JointState:
    return JointState(name=list(names) + ["panda_finger_joint1", "panda_finger_joint2"],
                      position=[float(v) for v in q] + list(fingers))


@dataclass
class Feeder:
    """A test node that publishes camera frames and joint states at 20 Hz (what a robot driver does)."""

    node: Node
    image: Image | CompressedImage | None = field(default_factory=lambda: conv.rgb_to_image(FRAME))
    joints: JointState | None = field(default_factory=joint_state)
    stamp_offset: float = 0.0  # [s] added to each frame's stamp (a camera clock that is off)
    frames_sent: int = 0
    restamp: bool = True  # False: the frame keeps its stamp (one frame sent again and again)

    def __post_init__(self) -> None:
        compressed = isinstance(self.image, CompressedImage)
        topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
        self.image_pub = self.node.create_publisher(CompressedImage if compressed else Image, topic, qos.CAMERA)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.instr_pub = self.node.create_publisher(String, "/specvla/instruction", qos.LATCHED)
        self.estop_pub = self.node.create_publisher(Bool, "/specvla/estop", qos.LATCHED)
        self.timer = self.node.create_timer(0.05, self._tick)

    def _tick(self) -> None:
        if self.image is not None:
            self.frames_sent += 1
            if self.restamp:
                now = self.node.get_clock().now().nanoseconds + int(self.stamp_offset * 1e9)
                self.image.header.stamp.sec, self.image.header.stamp.nanosec = divmod(now, 10**9)
            self.image_pub.publish(self.image)
        if self.joints is not None:
            self.joint_pub.publish(self.joints)

    def instruct(self, text: str) -> None:
        self.instr_pub.publish(String(data=text))


@dataclass
class Graph:
    policy: PolicyNode
    feeder: Feeder
    verdicts: Collector
    commands: Collector
    gripper: Collector
    narration: Collector
    stats: Collector
    diagnostics: Collector
    probe: Node


@pytest.fixture
def make_graph(tiny_checkpoints):
    """Builds a node + feeder + observers on a given domain; tears everything down in order."""
    stack: list = []

    def build(domain: int, *, image: Image | CompressedImage | None = None, **overrides) -> Graph:
        target, draft, _ = tiny_checkpoints
        ctx_mgr = ros_context(domain)
        ctx = ctx_mgr.__enter__()
        stack.append(ctx_mgr)
        values = {"target_dir": str(target), "draft_dir": str(draft), "drafter": "model", "device": "cpu",
                  "control_period": PERIOD, "max_input_age": MAX_AGE, "decision_deadline": 5.0,
                  "warmup_steps": 1, "autostart": False, **overrides}
        policy = PolicyNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        probe = Node("probe", context=ctx)
        feeder = Feeder(probe, image=image) if image is not None else Feeder(probe)
        iface = values.get("command_interface", "joint_trajectory")
        cmd_type, cmd_topic = ((JointTrajectory, "/joint_trajectory_controller/joint_trajectory")
                               if iface == "joint_trajectory" else
                               (Float64MultiArray, "/forward_position_controller/commands"))
        graph = Graph(
            policy=policy, feeder=feeder, probe=probe,
            verdicts=Collector(probe, SafetyVerdict, "/specvla_node/safety", qos.STATUS),
            commands=Collector(probe, cmd_type, cmd_topic, qos.COMMAND),
            gripper=Collector(probe, Float64MultiArray, "/gripper_controller/commands", qos.COMMAND),
            narration=Collector(probe, String, "/specvla/narration", qos.STATUS),
            stats=Collector(probe, SpecDecodeStats, "/specvla_node/spec_stats", qos.STATUS),
            diagnostics=Collector(probe, DiagnosticArray, "/diagnostics", qos.STATUS),
        )
        stack.append(graph)
        stack.append(Spinner(ctx, policy, probe))  # torn down first: stop spinning, then destroy
        return graph

    yield build
    for item in reversed(stack):
        if isinstance(item, Spinner):
            item.stop()
        elif isinstance(item, Graph):
            item.policy.destroy_node()
            item.probe.destroy_node()
        else:
            item.__exit__(None, None, None)


def positions(cmd: JointTrajectory | Float64MultiArray) -> np.ndarray:
    """Commanded positions; empty for an empty trajectory (the controller holds where it is)."""
    if isinstance(cmd, JointTrajectory):
        return np.asarray(cmd.points[0].positions if cmd.points else [], dtype=np.float64)
    return np.asarray(cmd.data, dtype=np.float64)


def is_hold(cmd: JointTrajectory | Float64MultiArray, q: np.ndarray = Q0) -> bool:
    """Holds the measured positions ``q``, or (an empty trajectory) wherever the arm is."""
    p = positions(cmd)
    return p.size == 0 or bool(np.allclose(p, q, atol=1e-9, rtol=0))


def start(g: Graph, instruction: str = "pick up the red cube") -> None:
    g.feeder.instruct(instruction)
    assert g.policy.run_autostart(), "configure/activate failed"


def first_status(g: Graph, status: SafetyStatus, after: float = 0.0) -> tuple[float, object]:
    hit = g.verdicts.wait_for(lambda v: v.status == status, timeout=WAIT, after=after)
    assert hit is not None, f"no {status.name} verdict; seen {[v.status_name for _, v in g.verdicts.msgs[-5:]]}"
    return hit


def decided(v) -> bool:
    return v.status in (SafetyVerdict.OK, SafetyVerdict.SCALED) or v.status < 20 and v.status >= 10


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iface,compressed,every,domain", [("joint_trajectory", False, False, 12),
                                                           ("forward_position", True, True, 13)])
def test_inputs_in_command_narration_verdict_stats_out(make_graph, iface: str, compressed: bool, every: bool,
                                                       domain: int) -> None:
    image = None
    if compressed:
        import cv2

        image = CompressedImage(format="png", data=cv2.imencode(".png", cv2.cvtColor(FRAME, cv2.COLOR_RGB2BGR))[1].tobytes())
    g = make_graph(domain, image=image, command_interface=iface, use_compressed_image=compressed,
                   narration_every_step=every)
    start(g)
    # a decision: a verdict from the policy's gate (not an input hold), with stats and narration
    t, v = g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision verdict")
    assert len(v.raw_action) == 7 and len(v.joint_command) == 7
    assert g.stats.wait_for(lambda s: s.target_passes >= 1 and s.emitted >= 8, timeout=WAIT)
    assert g.narration.wait_for(timeout=WAIT) is not None
    # the command sent is the verdict's joint command, for the configured joints
    _, cmd = g.commands.wait_for(lambda c: positions(c).size and np.allclose(positions(c), v.joint_command),
                                 timeout=WAIT) \
        or pytest.fail("no command matching the verdict")
    if iface == "joint_trajectory":
        assert list(cmd.joint_names) == list(PANDA_JOINT_NAMES)
        tfs = cmd.points[0].time_from_start
        assert tfs.sec + tfs.nanosec * 1e-9 == pytest.approx(PERIOD)
    _, grip = g.gripper.wait_for(timeout=WAIT) or pytest.fail("no gripper command")
    assert len(grip.data) == 1 and math.isfinite(grip.data[0])
    # every command ever published is finite and has 7 joints
    assert all(np.all(np.isfinite(positions(c))) and positions(c).shape in ((7,), (0,)) for _, c in g.commands.msgs)
    # diagnostics report the model and the control loop
    _, diag = g.diagnostics.wait_for(
        lambda d: any(s.name.endswith("model") and s.level == DiagnosticStatus.OK for s in d.status),
        timeout=WAIT) or pytest.fail("no model diagnostics")
    model = next(s for s in diag.status if s.name.endswith("model"))
    assert {kv.key for kv in model.values} >= {"device", "dtype", "warmup_s"}
    # narration: only when it changes (default), or once per decision (narration_every_step)
    n_stats = len(g.stats.msgs)
    assert g.stats.wait_for(lambda s: True, timeout=WAIT, after=time.monotonic()) is not None
    texts = [m.data for _, m in g.narration.msgs]
    if every:
        assert len(texts) >= n_stats - 1
    else:
        assert all(a != b for a, b in zip(texts, texts[1:]))


def test_without_any_joint_state_the_trajectory_controller_is_told_to_stop(make_graph) -> None:
    g = make_graph(20)
    g.feeder.joints = None
    start(g)
    t_bad, v = first_status(g, SafetyStatus.HALT_BAD_INPUT)
    assert "lacks joint" in v.reason and len(v.joint_command) == 0
    # nothing to hold at: an empty trajectory (joint_trajectory_controller stops and holds)
    _, cmd = g.commands.wait_for(lambda c: True, timeout=WAIT) or pytest.fail("no command")
    assert len(cmd.points) == 0 and list(cmd.joint_names) == list(PANDA_JOINT_NAMES)
    assert all(len(c.points) == 0 for _, c in g.commands.msgs)
    assert not g.gripper.msgs


def test_estop_holds_within_one_control_period_until_released(make_graph) -> None:
    g = make_graph(14)
    start(g)
    t_dec, _ = g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    t_press = time.monotonic()
    g.feeder.estop_pub.publish(Bool(data=True))
    t_hold, _ = first_status(g, SafetyStatus.HALT_ESTOP, after=t_press)
    # "within one control period", counted in control ticks: at most the verdict of the
    # tick already running may precede the e-stop hold.
    between = [v for v in g.verdicts.since(t_press) if v.status != SafetyVerdict.HALT_ESTOP]
    print(f"e-stop -> hold verdict: {1e3 * (t_hold - t_press):.1f} ms")
    assert len([v for v in between if decided(v)]) <= 1
    # latched: every later verdict is a hold and every command holds the measured positions
    hit = g.verdicts.wait_for(lambda v: True, timeout=WAIT, after=t_hold + 3 * PERIOD)
    assert hit is not None
    after = [v for v in g.verdicts.since(t_hold)]
    assert after and all(v.status == SafetyVerdict.HALT_ESTOP for v in after)
    assert all(is_hold(c) for c in g.commands.since(t_hold + 1e-3))
    # released -> decisions again
    t_rel = time.monotonic()
    g.feeder.estop_pub.publish(Bool(data=False))
    assert g.verdicts.wait_for(decided, timeout=WAIT, after=t_rel) is not None


def test_stale_camera_holds_within_max_input_age_plus_one_period(make_graph) -> None:
    g = make_graph(15)
    start(g)
    g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    g.feeder.image = None  # camera dies
    t_stop = time.monotonic()
    t_stale, v = first_status(g, SafetyStatus.HALT_STALE_INPUT, after=t_stop)
    assert "camera" in v.reason
    ticks = len(g.verdicts.since(t_stop))
    print(f"camera stopped -> stale hold: {1e3 * (t_stale - t_stop):.1f} ms, {ticks} ticks")
    # counted in ticks: max_input_age / period ticks, + one period, + the tick in flight
    assert ticks <= math.ceil(MAX_AGE / PERIOD) + 2
    g.commands.wait_for(lambda c: True, timeout=WAIT, after=t_stale) or pytest.fail("no hold command")
    assert all(is_hold(c) for c in g.commands.since(t_stale + 1e-3))
    assert list(v.joint_command) == pytest.approx(Q0.tolist())
    # camera back -> decisions again
    g.feeder.image = conv.rgb_to_image(FRAME)
    assert g.verdicts.wait_for(decided, timeout=WAIT, after=time.monotonic()) is not None


BAD, STALE = SafetyStatus.HALT_BAD_INPUT, SafetyStatus.HALT_STALE_INPUT
ERROR, WARN = DiagnosticStatus.ERROR, DiagnosticStatus.WARN
# (label, diagnostic key, how to break the input, expected hold, words in the reason, diagnostic level)
BAD_INPUTS = [
    ("16-bit depth image", "image", lambda f: setattr(f, "image", Image(
        height=8, width=8, encoding="16UC1", step=16, data=bytes(128))), BAD, "depth", ERROR),
    ("unknown encoding", "image", lambda f: setattr(f, "image", Image(
        height=8, width=8, encoding="hsv8", step=24, data=bytes(192))), BAD, "not supported", ERROR),
    ("yuv image of odd width", "image", lambda f: setattr(f, "image", Image(
        height=8, width=7, encoding="yuv422", step=14, data=bytes(112))), BAD, "even width", ERROR),
    ("truncated image", "image", lambda f: setattr(f, "image", Image(
        height=8, width=8, encoding="rgb8", step=24, data=bytes(10))), BAD, "bytes", ERROR),
    ("frame stamped in the future", "image", lambda f: setattr(f, "stamp_offset", 30.0), BAD, "future", ERROR),
    ("frame stamped long ago", "image", lambda f: setattr(f, "stamp_offset", -30.0), STALE, "stamped", WARN),
    ("empty instruction", "instruction", lambda f: f.instruct("   "), BAD, "empty", ERROR),
    ("over-long instruction", "instruction", lambda f: f.instruct("go " * 400), BAD, "max_instruction_length",
     ERROR),
    ("instruction the model cannot read", "model_input", lambda f: f.instruct("qwxzv plughh"), BAD,
     "does not know", ERROR),
    ("NaN joint", "joint_states", lambda f: setattr(f, "joints", joint_state(q=np.r_[Q0[:4], np.nan, Q0[5:]])),
     BAD, "non-finite", ERROR),
    # a broken encoder or wrong units: finite, nowhere near the arm's range
    ("joint far outside its limits", "joint_states", lambda f: setattr(f, "joints", joint_state(
        q=np.r_[Q0[:2], 1e9, Q0[3:]])), BAD, "outside the limits", ERROR),
    # a joint that stops being reported goes stale (drivers may split joints over several messages)
    ("missing joint", "joint_states", lambda f: setattr(f, "joints", JointState(
        name=[n for n in PANDA_JOINT_NAMES if n != "panda_joint3"] + ["panda_finger_joint1", "panda_finger_joint2"],
        position=[float(q) for i, q in enumerate(Q0) if i != 2] + list(FINGERS))), STALE, "panda_joint3", WARN),
]


def test_each_bad_input_holds_with_a_diagnostic_and_the_node_recovers(make_graph) -> None:
    g = make_graph(16)
    start(g)
    g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    for label, key, apply, status, needle, level in BAD_INPUTS:
        apply(g.feeder)
        t0 = time.monotonic()
        t_bad, v = first_status(g, status, after=t0)
        assert needle in v.reason, (label, v.reason)
        # a diagnostic names the problem
        hit = g.diagnostics.wait_for(lambda d: any(
            s.name.endswith("inputs") and s.level == level and key in s.message for s in d.status),
            timeout=WAIT, after=t0)
        assert hit is not None, f"{label}: no diagnostic for {key}"
        # held: every command from then on holds the measured positions (never an action)
        hit = g.verdicts.wait_for(lambda v: True, timeout=WAIT, after=t_bad + 2 * PERIOD)
        assert hit is not None, f"{label}: node stopped publishing"
        assert all(v.status == status for v in g.verdicts.since(t_bad)), label
        cmds = g.commands.since(t_bad + 1e-3)
        assert cmds and all(is_hold(c) for c in cmds), label
        if key == "joint_states":  # unusable measurements are never commanded: the controller holds itself
            assert all(positions(c).size == 0 for c in cmds), label
        # repair the input -> decisions again
        g.feeder.image, g.feeder.joints, g.feeder.stamp_offset = conv.rgb_to_image(FRAME), joint_state(), 0.0
        g.feeder.instruct("pick up the red cube")
        assert g.verdicts.wait_for(decided, timeout=WAIT, after=time.monotonic()) is not None, label


def test_forward_controller_hold_without_a_position_repeats_the_last_checked_command(make_graph) -> None:
    g = make_graph(21, command_interface="forward_position")
    start(g)
    t_dec, v = g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    g.feeder.joints = joint_state(q=np.r_[Q0[:2], 1e9, Q0[3:]])
    t_bad, _ = first_status(g, BAD, after=time.monotonic())
    before = [c for t, c in g.commands.msgs if t < t_bad]
    assert before, "no command before the bad joint states"
    g.verdicts.wait_for(lambda v: True, timeout=WAIT, after=t_bad + 2 * PERIOD) or pytest.fail("node stopped")
    after = g.commands.since(t_bad + 1e-3)
    assert after and all(np.array_equal(positions(c), positions(before[-1])) for c in after)
    assert all(np.all(np.abs(positions(c)) < 10) for _, c in g.commands.msgs)  # 1e9 was never sent


class Boom(RuntimeError):
    pass


def test_a_failure_at_any_stage_of_the_tick_holds_and_the_node_recovers(make_graph, monkeypatch) -> None:
    """The control tick is a safety boundary: an exception in input conversion, in the inference
    call, in the gate's verdict or in publishing becomes a hold with an ERROR diagnostic."""
    from specvla_ros.core.types import PolicyOutput, Verdict
    from specvla_ros.ros import policy_node

    g = make_graph(22)
    start(g)
    g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    backend = g.policy.backend
    real_step, real_verdict_msg = backend.step, conv.verdict_to_msg

    def raise_boom(*_a, **_k):
        raise Boom("injected")

    def out_of_limits(obs, state, timeout_s, shift=1):
        out = real_step(obs, state, timeout_s, shift)
        bad = Verdict(SafetyStatus.OK, "ok", joint_command=np.full(7, 10.0), gripper_command=0.04)
        return PolicyOutput(out.narration, out.action, bad, out.stats)

    failing_once = {"left": 1}

    def verdict_msg_fails_once(verdict, header):
        if failing_once["left"]:
            failing_once["left"] -= 1
            raise Boom("publisher")
        return real_verdict_msg(verdict, header)

    stages = [
        ("image conversion", lambda: monkeypatch.setattr(conv, "image_to_rgb", raise_boom),
         SafetyStatus.HALT_NOT_READY, "internal error while deciding"),
        ("joint states", lambda: monkeypatch.setattr(conv, "joint_vector", raise_boom),
         SafetyStatus.HALT_NOT_READY, "internal error while deciding"),
        ("inference call", lambda: monkeypatch.setattr(backend, "step", raise_boom),
         SafetyStatus.HALT_NOT_READY, "internal error while deciding"),
        ("a verdict outside the joint limits", lambda: monkeypatch.setattr(backend, "step", out_of_limits),
         SafetyStatus.HALT_JOINT_LIMIT, "refused at the publisher"),
        ("publishing", lambda: monkeypatch.setattr(policy_node.conv, "verdict_to_msg", verdict_msg_fails_once),
         SafetyStatus.HALT_NOT_READY, "internal error while publishing"),
    ]
    for label, inject, status, needle in stages:
        t0 = time.monotonic()
        inject()
        t_hold, v = first_status(g, status, after=t0)
        assert needle in v.reason, (label, v.reason)
        assert g.diagnostics.wait_for(lambda d: any(
            s.name.endswith("control") and s.level == ERROR for s in d.status), timeout=WAIT, after=t0), label
        assert all(positions(c).size == 0 or np.all(np.abs(positions(c)) < 5) for c in g.commands.since(t0)), label
        monkeypatch.undo()
        assert g.verdicts.wait_for(decided, timeout=WAIT, after=time.monotonic()) is not None, label


def test_late_decision_holds_with_halt_deadline(make_graph) -> None:
    g = make_graph(17)
    start(g)
    g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision")
    assert g.policy.set_parameters([Parameter("decision_deadline", value=1e-3)])[0].successful
    t0 = time.monotonic()
    t_late, v = first_status(g, SafetyStatus.HALT_DEADLINE, after=t0)
    assert "decision_deadline" in v.reason
    g.commands.wait_for(lambda c: True, timeout=WAIT, after=t_late) or pytest.fail("no command")
    assert all(is_hold(c) for c in g.commands.since(t_late + 1e-3))
    assert g.policy.set_parameters([Parameter("decision_deadline", value=5.0)])[0].successful
    assert g.verdicts.wait_for(decided, timeout=WAIT, after=time.monotonic()) is not None


def test_lifecycle_transitions_over_the_standard_services(make_graph) -> None:
    g = make_graph(18)
    g.feeder.instruct("push the blue block")
    client = g.probe.create_client(ChangeState, "/specvla_node/change_state")
    assert client.wait_for_service(timeout_sec=WAIT)

    def change(transition: int) -> bool:
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        assert wait_until(future.done, timeout=WAIT)
        return future.result().success

    assert not g.verdicts.msgs  # unconfigured: nothing is commanded
    assert change(Transition.TRANSITION_CONFIGURE)
    assert g.policy.backend is not None
    assert change(Transition.TRANSITION_ACTIVATE)
    g.verdicts.wait_for(decided, timeout=WAIT) or pytest.fail("no decision after activate")
    t0 = time.monotonic()
    assert change(Transition.TRANSITION_DEACTIVATE)
    _, v = g.verdicts.wait_for(lambda v: "deactivated" in v.reason, timeout=WAIT, after=t0) \
        or pytest.fail("no hold on deactivate")
    assert v.status == SafetyVerdict.HALT_NOT_READY and list(v.joint_command) == pytest.approx(Q0.tolist())
    t_inactive = time.monotonic()
    assert change(Transition.TRANSITION_CLEANUP)
    assert g.policy.backend is None  # models freed
    # inactive/unconfigured: no more verdicts or commands
    assert not [v for v in g.verdicts.since(t_inactive) if "deactivated" not in v.reason]
    assert change(Transition.TRANSITION_CONFIGURE) and change(Transition.TRANSITION_ACTIVATE)
    assert g.verdicts.wait_for(decided, timeout=WAIT, after=time.monotonic()) is not None


def test_bad_model_path_fails_configure_and_reports_it(make_graph, tmp_path) -> None:
    g = make_graph(19, target_dir=str(tmp_path / "nowhere"))
    assert not g.policy.run_autostart()
    hit = g.diagnostics.wait_for(lambda d: any(
        s.name.endswith("model") and s.level == DiagnosticStatus.ERROR and "nowhere" in s.message
        for s in d.status), timeout=WAIT)
    assert hit is not None
    assert not g.commands.msgs


def test_joint_names_out_of_the_safety_configs_order_fail_configure(make_graph) -> None:
    g = make_graph(37, joint_names=list(PANDA_JOINT_NAMES[::-1]))
    assert not g.policy.run_autostart()
    hit = g.diagnostics.wait_for(lambda d: any(
        s.name.endswith("model") and s.level == DiagnosticStatus.ERROR and "in its order" in s.message
        for s in d.status), timeout=WAIT)
    assert hit is not None and not g.commands.msgs


# --------------------------------------------------------------------------- scene objects


def test_scene_objects_stay_in_the_gate_until_replaced_and_a_quiet_topic_holds(make_graph, tmp_path) -> None:
    """Real publisher -> node -> the policy's gate: a box under the fingers refuses the step down
    that passes without it; when the topic goes quiet the box stays (WARN after
    scene_objects_max_age) and the robot holds after scene_objects_hold_age; a set in another
    frame is refused as a whole (the previous set stays); a NaN object alone is dropped.

    The in-process backend, so the test can make the model always ask for the same step down
    (that the objects reach the inference process is test_policy_server's job). The gate halts
    instead of sliding along the box (slide_along_obstacles: false in the node's safety.yaml), so
    every refused step shows."""
    from pathlib import Path

    from geometry_msgs.msg import Point, Vector3
    from specvla_msgs.msg import SceneObject as SceneObjectMsg
    from specvla_msgs.msg import SceneObjects

    from specvla_ros.core.safety.collision_scene import SceneObject
    from specvla_ros.core.safety.config import load_safety_config
    from specvla_ros.core.safety.gate import SafetyGate
    from specvla_ros.core.decoding.decoder import DecodeResult
    from specvla_ros.core.types import DecodeStats, RobotState

    down = np.array([0.0, 0.0, -0.04, 0.0, 0.0, 0.0, 1.0])
    shipped = Path(load_safety_config().source)
    safety_yaml = tmp_path / "safety.yaml"
    safety_yaml.write_text(shipped.read_text().replace("slide_along_obstacles: true", "slide_along_obstacles: false"))
    (tmp_path / "panda_joint_limits.yaml").write_text((shipped.parent / "panda_joint_limits.yaml").read_text())
    gate = SafetyGate(load_safety_config(safety_yaml))
    assert not gate.config.slide_along_obstacles
    tcp, _ = gate.kin.fk(Q0)
    block = SceneObject("block", (tcp[0], tcp[1], tcp[2] - 0.06), (0.12, 0.12, 0.04))
    state = RobotState(q=Q0, gripper=sum(FINGERS))
    assert gate.check(down, state, PERIOD).status == SafetyStatus.OK  # precondition: clear without it
    gate.set_scene_objects([block])
    assert gate.check(down, state, PERIOD).status == SafetyStatus.HALT_COLLISION

    g = make_graph(36, scene_objects_max_age=0.4, scene_objects_hold_age=1.2, safety_config=str(safety_yaml),
                   **{"inference.backend": "in_process"})
    start(g)
    assert g.verdicts.wait_for(decided, timeout=WAIT) is not None
    # the model is not under test here: it always asks for the same step down
    g.policy.backend.policy.decoder.decode = lambda obs, mask=None, shift=1: DecodeResult(
        "", [], np.zeros(7, dtype=np.int64), down.copy()[None], DecodeStats(emitted=8, target_passes=1), [])
    assert g.verdicts.wait_for(lambda v: v.status == SafetyVerdict.OK, timeout=WAIT, after=time.monotonic())
    pub = g.probe.create_publisher(SceneObjects, "/specvla/scene_objects", 10)
    sending = {"msg": conv.scene_objects_to_msg([block], Header(frame_id="panda_link0"))}
    timer = g.probe.create_timer(0.05, lambda: pub.publish(sending["msg"]))
    _, v = first_status(g, SafetyStatus.HALT_COLLISION, after=time.monotonic())
    assert "'block'" in v.reason

    # the publisher stops: the block stays in the gate, then the robot holds for the old scene
    g.probe.destroy_timer(timer)
    t_stop = time.monotonic()
    assert g.diagnostics.wait_for(lambda d: any(
        kv.key == "scene_objects" and "not refreshed" in kv.value for s in d.status for kv in s.values),
        timeout=WAIT, after=t_stop) is not None
    t_stale, v = first_status(g, SafetyStatus.HALT_STALE_INPUT, after=t_stop)
    assert "scene_objects_hold_age" in v.reason
    quiet = [m for t, m in g.verdicts.msgs if t_stop <= t < t_stale]
    assert quiet and all(v.status == SafetyVerdict.HALT_COLLISION for v in quiet)  # never decided without it

    # a set in another frame: refused as a whole, the block stays
    sending["msg"] = conv.scene_objects_to_msg([], Header(frame_id="camera"))
    timer = g.probe.create_timer(0.05, lambda: pub.publish(sending["msg"]))
    assert g.diagnostics.wait_for(lambda d: any(
        kv.key == "scene_objects" and "frame 'camera'" in kv.value for s in d.status for kv in s.values),
        timeout=WAIT) is not None
    t_frame = time.monotonic()
    first_status(g, SafetyStatus.HALT_COLLISION, after=t_frame)
    assert [o.name for o in g.policy.backend.policy.scene_objects] == ["block"]

    # the right frame with a NaN object: that object alone is dropped (with a warning); the scene is clear
    mixed = conv.scene_objects_to_msg([], Header(frame_id="panda_link0"))
    mixed.objects.append(SceneObjectMsg(name="ghost", center=Point(x=math.nan), size=Vector3(x=0.1, y=0.1, z=0.1)))
    sending["msg"] = mixed
    t_clear = time.monotonic()
    assert g.verdicts.wait_for(lambda v: v.status == SafetyVerdict.OK, timeout=WAIT, after=t_clear) is not None
    assert g.policy.backend.policy.scene_objects == ()
    assert g.diagnostics.wait_for(lambda d: any(
        kv.key == "scene_objects" and "objects[0] dropped" in kv.value for s in d.status for kv in s.values),
        timeout=WAIT, after=t_clear) is not None
    g.probe.destroy_timer(timer)
