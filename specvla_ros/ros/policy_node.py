"""specvla_node: camera + instruction + joint states -> speculative VLA
decision -> safety gate -> controller command, as a ROS 2 lifecycle node.

Threads and callback groups (MultiThreadedExecutor):
  inputs   (reentrant)          subscription callbacks; they only store the newest message
  control  (mutually exclusive) fixed-rate timer: check inputs, decode, publish command
  watchdog (mutually exclusive) e-stop reaction while a decision is running, diagnostics

Every control tick publishes exactly one ~/safety verdict. Anything wrong with
the inputs (e-stop, stale, malformed, missing) or a late decision publishes a
hold (the measured joint positions) instead of an action.

Known scene objects (``scene_objects_topic``, specvla_msgs/SceneObjects) go to
the safety gate's collision scene at each control tick; a stale or unusable
set is dropped with a warning and the robot keeps running against the static
scene (a robot without perception still works), it does not hold.
"""
from __future__ import annotations

import gc
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from specvla_ros.core.types import DecodeStats, Observation, RobotState, SafetyStatus, Verdict
from specvla_ros.ros import conversions as conv
from specvla_ros.ros import params, qos
from specvla_ros.ros.diagnostics import ERROR, OK, WARN, NodeDiagnostics

# Default topic names (remap with --ros-args -r from:=to).
TOPIC_IMAGE = "/camera/image_raw"
TOPIC_INSTRUCTION = "/specvla/instruction"
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_ESTOP = "/specvla/estop"
TOPIC_TRAJECTORY = "/joint_trajectory_controller/joint_trajectory"
TOPIC_FORWARD = "/forward_position_controller/commands"
TOPIC_GRIPPER = "/gripper_controller/commands"
TOPIC_NARRATION = "/specvla/narration"
TOPIC_SAFETY = "~/safety"
TOPIC_STATS = "~/spec_stats"
TOPIC_DIAGNOSTICS = "/diagnostics"


@dataclass
class _Inputs:
    """Newest input messages, written by subscription callbacks (under the lock)."""

    image: Image | CompressedImage | None = None
    image_received: float = 0.0
    image_seq: int = 0
    joints: dict[str, conv.JointSample] = field(default_factory=dict)
    instruction: str | None = None
    estop: bool = False
    scene_objects: Any = None  # specvla_msgs/SceneObjects
    scene_objects_received: float = 0.0


@dataclass
class _Decision:
    """What one control tick decided to publish."""

    verdict: Verdict
    stats: DecodeStats | None = None
    narration: str | None = None
    stamp: TimeMsg | None = None  # camera frame the decision was made from (None: a hold, stamped now)


class PolicyNode(LifecycleNode):
    """The specvla ROS 2 driver. See the module docstring and the README's topic/parameter tables."""

    def __init__(self, node_name: str = params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Raises ValueError naming every bad start-up parameter.
        self._p = params.declare_all(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # A typo in the parameter file would otherwise be silently ignored by rclpy.
        unknown = params.unknown_overrides(getattr(self, "_parameter_overrides", {}))
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)} "
                                      f"(known: see config/{params.CONFIG_NAME})")
        self.unknown_parameters = unknown
        self._lock = threading.Lock()  # guards self._in
        self._pub_lock = threading.Lock()  # one command publication at a time; guards _active
        self._in = _Inputs()
        self._active = False
        self._policy: Any = None
        self._image_size: tuple[int, int] = (128, 128)
        self._image_cache: tuple[object, np.ndarray] | None = None
        self._last_state: RobotState | None = None  # last valid measured state (hold target)
        self._last_status: SafetyStatus | None = None
        self._last_narration: str | None = None
        self._applied_objects: Any = None  # the SceneObjects message the gate holds now (None: none)
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._timers: list[Any] = []
        self._input_group = ReentrantCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._watchdog_group = MutuallyExclusiveCallbackGroup()
        self._diag = NodeDiagnostics(self.get_name())
        # Diagnostics run in every lifecycle state so a failed configure is visible.
        self._diag_pub = self.create_publisher(DiagnosticArray, TOPIC_DIAGNOSTICS, qos.STATUS)
        self._diag_timer = self.create_timer(self._p["diagnostics_period"], self._publish_diagnostics,
                                             callback_group=self._watchdog_group)

    # ------------------------------------------------------------------ parameters
    @property
    def autostart(self) -> bool:
        return bool(self._p["autostart"])

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        for change in changes:
            value = list(change.value) if isinstance(change.value, (list, tuple)) else change.value
            reason = params.check_change(change.name, value)
            if reason:
                self.get_logger().warning(f"parameter change refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        for change in changes:
            if change.name in params.SPECS:
                self._p[change.name] = change.value
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from specvla_ros.core.model_interface import ModelLoadError

        try:
            config = policy_config(self._p)
            from specvla_ros.core.policy import Policy

            t0 = time.perf_counter()
            policy = Policy(config)
            load_s = time.perf_counter() - t0
            warmup_s = policy.warmup(n=self._p["warmup_steps"]) if self._p["warmup_steps"] > 0 else 0.0
        except (ModelLoadError, ValueError, OSError, ImportError) as exc:
            msg = f"model load failed: {exc}"
            self.get_logger().error(msg)
            self._diag.set_model(ERROR, msg)
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self._policy = policy
        self._image_size = tuple(int(v) for v in policy.image_size)  # type: ignore[assignment]
        info = dict(policy.info)
        info.update(load_s=load_s, warmup_s=warmup_s, decode_mode=self._p["decode.mode"],
                    drafter=self._p["drafter"])
        self.get_logger().info(
            f"models loaded in {load_s:.2f} s on {info.get('device')} ({info.get('dtype')}), "
            f"target {info.get('target_params')} params, draft {info.get('draft_params')} params, "
            f"{float(info.get('memory_mb', float('nan'))):.1f} MB; warm-up {warmup_s * 1e3:.1f} ms; "
            f"input {self._image_size[0]}x{self._image_size[1]}")
        self._diag.set_model(OK, "loaded", info)
        self._create_io()
        return TransitionCallbackReturn.SUCCESS

    def _create_io(self) -> None:
        opts = qos.OVERRIDES
        if self._p["command_interface"] == "joint_trajectory":
            self._pubs["command"] = self.create_publisher(JointTrajectory, TOPIC_TRAJECTORY, qos.COMMAND,
                                                          qos_overriding_options=opts)
        else:
            self._pubs["command"] = self.create_publisher(Float64MultiArray, TOPIC_FORWARD, qos.COMMAND,
                                                          qos_overriding_options=opts)
        from specvla_msgs.msg import SafetyVerdict, SpecDecodeStats

        self._pubs["gripper"] = self.create_publisher(Float64MultiArray, TOPIC_GRIPPER, qos.COMMAND,
                                                      qos_overriding_options=opts)
        self._pubs["narration"] = self.create_publisher(String, TOPIC_NARRATION, qos.STATUS,
                                                        qos_overriding_options=opts)
        self._pubs["safety"] = self.create_publisher(SafetyVerdict, TOPIC_SAFETY, qos.STATUS,
                                                     qos_overriding_options=opts)
        self._pubs["stats"] = self.create_publisher(SpecDecodeStats, TOPIC_STATS, qos.STATUS,
                                                    qos_overriding_options=opts)
        g = self._input_group
        if self._p["use_compressed_image"]:
            self._subs.append(self.create_subscription(CompressedImage, TOPIC_IMAGE + "/compressed", self._on_image,
                                                       qos.CAMERA, callback_group=g, qos_overriding_options=opts))
        else:
            self._subs.append(self.create_subscription(Image, TOPIC_IMAGE, self._on_image, qos.CAMERA,
                                                       callback_group=g, qos_overriding_options=opts))
        self._subs.append(self.create_subscription(String, TOPIC_INSTRUCTION, self._on_instruction, qos.LATCHED,
                                                   callback_group=g, qos_overriding_options=opts))
        self._subs.append(self.create_subscription(JointState, TOPIC_JOINT_STATES, self._on_joint_states,
                                                   qos.JOINT_STATES, callback_group=g, qos_overriding_options=opts))
        self._subs.append(self.create_subscription(Bool, TOPIC_ESTOP, self._on_estop, qos.LATCHED,
                                                   callback_group=g, qos_overriding_options=opts))
        if self._p["scene_objects_topic"]:
            from specvla_msgs.msg import SceneObjects

            self._subs.append(self.create_subscription(SceneObjects, self._p["scene_objects_topic"],
                                                       self._on_scene_objects, qos.SCENE_OBJECTS,
                                                       callback_group=g, qos_overriding_options=opts))

    def _destroy_io(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers.clear()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs.clear()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        period = float(self._p["control_period"])
        with self._pub_lock:
            self._active = True
            self._last_status = None
            self._last_narration = None
        self._timers.append(self.create_timer(period, self._control_tick, callback_group=self._control_group))
        # Polls the latched e-stop faster than the control rate, so a hold goes out
        # within one period even while a decision is being decoded.
        self._timers.append(self.create_timer(min(period / 4.0, 0.05), self._watchdog_tick,
                                              callback_group=self._watchdog_group))
        self._diag.set_active(True)
        self.get_logger().info(f"active: control every {period * 1e3:.0f} ms, commands on "
                               f"{self._pubs['command'].topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers.clear()
        self.publish_final_hold("node deactivated")
        self._diag.set_active(False)
        self.get_logger().info("inactive: hold published")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: models freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.publish_final_hold("node shutting down")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error in state {state.label}; releasing models")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        with self._pub_lock:
            self._active = False
        self._destroy_io()
        self._policy = None
        self._image_cache = None
        self._applied_objects = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._diag.set_active(False)
        self._diag.set_model(WARN, "not configured", {})

    def run_autostart(self) -> bool:
        """configure + activate (the `autostart` parameter). Returns True when active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def publish_final_hold(self, reason: str = "node stopping") -> None:
        """Stop commanding: one last hold, after which no control tick publishes (deactivate, exit)."""
        if self._active:
            with self._pub_lock:
                self._active = False  # no control tick publishes after this
            self._publish(self._hold(SafetyStatus.HALT_NOT_READY, reason), force=True)
            # Reliable publishers: give subscribers (the controller first) up to 1 s to
            # acknowledge the hold before the process tears the participant down.
            for key in ("command", "gripper", "safety"):
                if key in self._pubs and not self._pubs[key].wait_for_all_acked(Duration(seconds=1.0)):
                    self.get_logger().warning(f"final hold on {self._pubs[key].topic_name} not acknowledged")

    # ------------------------------------------------------------------ input callbacks (store only)
    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        with self._lock:
            self._in.image, self._in.image_received = msg, now
            self._in.image_seq += 1

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self._in.instruction = msg.data

    def _on_joint_states(self, msg: JointState) -> None:
        now = time.monotonic()
        with self._lock:
            conv.merge_joint_state(self._in.joints, msg, now)

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            self._in.estop = bool(msg.data)

    def _on_scene_objects(self, msg: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._in.scene_objects, self._in.scene_objects_received = msg, now

    # ------------------------------------------------------------------ control loop
    def _snapshot(self) -> _Inputs:
        with self._lock:
            return _Inputs(self._in.image, self._in.image_received, self._in.image_seq,
                           dict(self._in.joints), self._in.instruction, self._in.estop,
                           self._in.scene_objects, self._in.scene_objects_received)

    def latest_inputs(self) -> _Inputs:
        """A copy of the newest stored inputs (what the next control tick decides on).

        For tools that drive the node in lockstep (bag replay) and need to know a
        frame has arrived before advancing the clock.
        """
        return self._snapshot()

    def _input_problem(self, key: str, problem: str | None, level: int = ERROR) -> None:
        if self._diag.set_input(key, problem, level):
            if problem is None:
                self.get_logger().info(f"{key}: ok")
            elif level == ERROR:
                self.get_logger().error(f"{key}: {problem} -> holding")
            else:
                self.get_logger().warning(f"{key}: {problem} -> holding")
            self._publish_diagnostics()

    def _measured_state(self, snap: _Inputs, now: float) -> tuple[RobotState | None, str | None, bool]:
        """(state, problem, stale) from the merged joint states."""
        max_age = float(self._p["max_input_age"])
        try:
            q, dq, age = conv.joint_vector(snap.joints, self._p["joint_names"], now, max_age)
            grip, _, gage = conv.joint_vector(snap.joints, self._p["gripper_joint_names"], now, max_age)
        except conv.InputError as exc:
            return None, str(exc), False
        state = RobotState(q=q, gripper=float(np.sum(grip)), dq=dq, stamp=self.get_clock().now().nanoseconds * 1e-9)
        self._last_state = state
        oldest = max(age, gage)
        if oldest > max_age:
            names = list(self._p["joint_names"]) + list(self._p["gripper_joint_names"])
            worst = max(names, key=lambda n: now - snap.joints[n].received)
            return state, (f"joint_states: {worst} last received {oldest:.2f} s ago "
                           f"(max_input_age {max_age:.2f} s)"), True
        return state, None, False

    def _image(self, snap: _Inputs, now: float) -> tuple[np.ndarray | None, str | None, bool]:
        """(rgb at model size, problem, stale)."""
        if snap.image is None:
            return None, "no camera image received yet", True
        age = now - snap.image_received
        max_age = float(self._p["max_input_age"])
        if age > max_age:
            return None, f"camera image {age:.2f} s old (max_input_age {max_age:.2f} s)", True
        if self._image_cache is not None and self._image_cache[0] is snap.image:
            return self._image_cache[1], None, False
        try:
            if isinstance(snap.image, CompressedImage):
                rgb = conv.compressed_to_rgb(snap.image, self._image_size)
            else:
                rgb = conv.image_to_rgb(snap.image, self._image_size)
        except conv.InputError as exc:
            return None, str(exc), False
        self._image_cache = (snap.image, rgb)
        return rgb, None, False

    def _instruction(self, snap: _Inputs) -> tuple[str | None, str | None]:
        if snap.instruction is None:
            return None, "no instruction received yet"
        text = snap.instruction.strip()
        if not text:
            return None, "instruction is empty"
        limit = int(self._p["max_instruction_length"])
        if len(text) > limit:
            return None, f"instruction has {len(text)} characters (max_instruction_length {limit})"
        return text, None

    def _scene_objects_problem(self, problem: str | None) -> None:
        """Diagnostic + one log line per change; never a hold (the static scene still protects)."""
        if self._diag.set_input("scene_objects", problem, WARN):
            if problem is None:
                self.get_logger().info("scene_objects: ok")
            else:
                self.get_logger().warning(f"scene_objects: {problem}")
            self._publish_diagnostics()

    def _apply_scene_objects(self, snap: _Inputs, now: float) -> None:
        """Give the gate the newest scene objects, or drop them when stale or unusable."""
        msg = snap.scene_objects
        if msg is None:
            return  # never received: static scene only, nothing to report
        age = now - snap.scene_objects_received
        max_age = float(self._p["scene_objects_max_age"])
        if age > max_age:
            if self._applied_objects is not None:
                self._policy.set_scene_objects(())
                self._applied_objects = None
            self._scene_objects_problem(f"last received {age:.2f} s ago (scene_objects_max_age {max_age:.2f} s) "
                                        "-> dropped from the collision scene")
            return
        if msg is self._applied_objects:
            return  # converted on an earlier tick
        try:
            objects, problems = conv.scene_objects_from_msg(msg, self._p["scene_objects_frame"])
        except conv.InputError as exc:
            self._policy.set_scene_objects(())
            self._applied_objects = None
            self._scene_objects_problem(f"{exc} -> dropped from the collision scene")
            return
        self._policy.set_scene_objects(objects)
        self._applied_objects = msg
        self._scene_objects_problem("; ".join(problems) if problems else None)

    def _control_tick(self) -> None:
        if not self._active or self._policy is None:
            return
        tick = time.monotonic()
        snap = self._snapshot()
        if snap.estop:
            self._publish(self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched"))
            return
        state, problem, stale = self._measured_state(snap, tick)
        if problem:
            status = SafetyStatus.HALT_STALE_INPUT if stale else SafetyStatus.HALT_BAD_INPUT
            self._input_problem("joint_states", problem, WARN if stale else ERROR)
            self._publish(self._hold(status, problem))
            return
        self._input_problem("joint_states", None)
        rgb, problem, stale = self._image(snap, tick)
        if problem:
            never = snap.image is None
            status = (SafetyStatus.HALT_NOT_READY if never else
                      SafetyStatus.HALT_STALE_INPUT if stale else SafetyStatus.HALT_BAD_INPUT)
            self._input_problem("image", problem, WARN if stale else ERROR)
            self._publish(self._hold(status, problem))
            return
        self._input_problem("image", None)
        text, problem = self._instruction(snap)
        if problem:
            never = snap.instruction is None
            self._input_problem("instruction", problem, WARN if never else ERROR)
            self._publish(self._hold(SafetyStatus.HALT_NOT_READY if never else SafetyStatus.HALT_BAD_INPUT, problem))
            return
        self._input_problem("instruction", None)

        if state is None:  # unreachable: a missing state is reported as a problem above
            return
        self._apply_scene_objects(snap, tick)
        proprio = np.concatenate([state.q, [state.gripper]]).astype(np.float32)
        stamp = conv.stamp_ns(snap.image.header.stamp)  # type: ignore[union-attr]
        # Unstamped cameras: fall back to the arrival counter so each frame is encoded once.
        obs = Observation(image=rgb, instruction=text, proprio=proprio,
                          frame_id=stamp if stamp > 0 else -snap.image_seq)
        try:
            out = self._policy.step(obs, state)
        except Exception as exc:  # noqa: BLE001 — safety boundary: any model failure must hold, not crash
            self.get_logger().error(f"policy step failed: {type(exc).__name__}: {exc} -> holding")
            self._publish(self._hold(SafetyStatus.HALT_NOT_READY, f"policy step failed: {exc}"))
            return
        refused = out.verdict.status == SafetyStatus.HALT_BAD_INPUT
        self._input_problem("model_input", out.verdict.reason if refused else None)
        took = time.monotonic() - tick
        deadline = float(self._p["decision_deadline"])
        if took > deadline:
            reason = f"decision took {took:.3f} s (decision_deadline {deadline:.3f} s)"
            self._publish(self._hold(SafetyStatus.HALT_DEADLINE, reason, out.stats))
            return
        if self._snapshot().estop:  # pressed while decoding
            self._publish(self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched", out.stats))
            return
        self._publish(_Decision(out.verdict, out.stats, out.narration, snap.image.header.stamp))  # type: ignore[union-attr]

    def _watchdog_tick(self) -> None:
        if self._active and self._last_status != SafetyStatus.HALT_ESTOP and self._snapshot().estop:
            self._publish(self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched"))

    def _hold(self, status: SafetyStatus, reason: str, stats: DecodeStats | None = None) -> _Decision:
        """Hold at the last valid measured joint positions (nothing to command if none is known)."""
        state = self._last_state
        if state is not None and self._policy is not None:
            verdict = self._policy.hold(state, status, reason)
        elif state is not None:
            verdict = Verdict(status, reason, joint_command=state.q.copy(), gripper_command=state.gripper)
        else:
            verdict = Verdict(status, reason, joint_command=np.empty(0), gripper_command=math.nan)
        return _Decision(verdict, stats, None)

    def _publish(self, decision: _Decision, force: bool = False) -> None:
        verdict = decision.verdict
        header = Header(stamp=decision.stamp if decision.stamp is not None else self.get_clock().now().to_msg())
        with self._pub_lock:
            if not (self._active or force) or not self._pubs:
                return
            q = np.asarray(verdict.joint_command, dtype=np.float64)
            names = list(self._p["joint_names"])
            if q.shape == (len(names),) and np.all(np.isfinite(q)):
                if self._p["command_interface"] == "joint_trajectory":
                    self._pubs["command"].publish(conv.joint_trajectory(names, q, float(self._p["control_period"])))
                else:
                    self._pubs["command"].publish(conv.position_array(q))
                if math.isfinite(verdict.gripper_command):
                    self._pubs["gripper"].publish(conv.gripper_command(verdict.gripper_command))
            elif verdict.is_halt and self._p["command_interface"] == "joint_trajectory":
                # No measured position to hold at: an empty trajectory makes
                # joint_trajectory_controller stop and hold where it is.
                self._pubs["command"].publish(JointTrajectory(joint_names=names))
            else:
                # Never send an unchecked or malformed command; the verdict still goes out.
                if not verdict.is_halt:
                    verdict = Verdict(SafetyStatus.HALT_NONFINITE, f"command not sendable ({verdict.reason})",
                                      joint_command=np.empty(0), gripper_command=math.nan,
                                      raw_action=verdict.raw_action)
            self._pubs["safety"].publish(conv.verdict_to_msg(verdict, header))
            if decision.stats is not None:
                self._pubs["stats"].publish(conv.stats_to_msg(decision.stats, header))
            if decision.narration is not None and (
                    self._p["narration_every_step"] or decision.narration != self._last_narration):
                self._pubs["narration"].publish(String(data=decision.narration))
                self._last_narration = decision.narration
            self._last_status = SafetyStatus(verdict.status)
        self._diag.record_tick(time.monotonic(), verdict, decision.stats)

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(self._diag.build(self.get_clock().now().to_msg()))


def policy_config(values: dict[str, Any]):  # -> specvla_ros.core.policy.PolicyConfig
    """Node parameters -> PolicyConfig ('default' paths keep PolicyConfig's defaults).

    Raises:
        ValueError: from PolicyConfig/DecodeConfig validation.
    """
    from specvla_ros.core.policy import PolicyConfig
    from specvla_ros.core.spec_decoder import DecodeConfig

    decode = DecodeConfig(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("decode.")})
    kwargs: dict[str, Any] = dict(
        drafter=values["drafter"], decode=decode, device=values["device"], dtype=values["dtype"],
        unnorm_key=values["unnorm_key"] or None, control_period_s=float(values["control_period"]),
        safety_config=values["safety_config"] or None, safe_envelope=bool(values["safe_envelope"]),
        redecode_shrink=float(values["redecode_shrink"]))
    if values["target_dir"] != "default":
        kwargs["target_dir"] = values["target_dir"]
    if values["draft_dir"] != "default":
        kwargs["draft_dir"] = values["draft_dir"] or None
    return PolicyConfig(**kwargs)


def main(args: list[str] | None = None) -> int:
    """Console script `specvla_node` (accepts --ros-args --params-file ... -r from:=to)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = PolicyNode()
    except ValueError as exc:
        print(f"specvla_node: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="specvla_executor", daemon=True)
    spinner.start()
    if node.autostart and not node.run_autostart():
        node.get_logger().error("autostart failed; staying unconfigured (see /diagnostics)")
    while not stop.wait(0.1) and spinner.is_alive():
        pass
    crashed = not stop.is_set()  # the executor thread died (its traceback is on stderr)
    node.get_logger().info("stopping" if not crashed else "executor stopped unexpectedly; stopping")
    node.publish_final_hold()
    executor.shutdown()
    spinner.join(timeout=10.0)
    node.destroy_node()
    rclpy.shutdown()
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
