"""specvla_node: camera + instruction + joint states -> speculative VLA
decision -> safety gate -> controller command, as a ROS 2 lifecycle node.

The models run in their own process (``inference.backend: process``, the
default): ``specvla_policy_server`` decides while this process only moves
messages. In one process, torch would wait for the GIL again after each of a
decision's ~1000 ops while executor threads handle camera and joint-state
callbacks; at real sensor rates that turns milliseconds into seconds.

Threads (any executor; ``specvla_node`` spins a single-threaded one):
  executor        subscription callbacks store the newest message (the e-stop callback
                  also publishes the hold at once); the control timer only wakes the
                  control thread; watchdog (e-stop backstop) and diagnostics timers
  control thread  one tick per wake: check inputs, ask the inference process, publish

Every control tick publishes exactly one ~/safety verdict, and the tick is a
safety boundary: any exception in it becomes a hold with an ERROR diagnostic.
Every command passes a final joint-limits check under the lock that publishes
(holds included), and that lock also holds the e-stop latch, so nothing but an
e-stop hold goes out between an e-stop and its release.

Known scene objects (``scene_objects_topic``, specvla_msgs/SceneObjects) stay in
the gate's collision scene until a newer set replaces them; a quiet topic is a
WARN diagnostic after ``scene_objects_max_age`` and holds the robot after
``scene_objects_hold_age``.
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
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from specvla_ros.core.safety.command_guard import CommandGuard
from specvla_ros.core.models.frame_resize import ResizeMethod
from specvla_ros.core.serving.backend import PolicyBackend
from specvla_ros.core.serving.client import InferenceError, InferenceTimeout, InferenceUnavailable
from specvla_ros.core.types import DecodeStats, Observation, RobotState, SafetyStatus, Verdict
from specvla_ros.ros import conversions as conv
from specvla_ros.ros import params, qos
from specvla_ros.ros.diagnostics import ERROR, OK, WARN, NodeDiagnostics
from specvla_ros.ros import topics

# Default topic names (remap with --ros-args -r from:=to).

#: Scene objects that moved by this much replace a running plan (it was checked against the old scene) [m].
_SCENE_GRID_M = 0.005

#: Wait this long before trying again after a failed inference process restart [s].
_RESTART_BACKOFF_S = 5.0


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
    instruction_frame: int = 0  # image_seq when the instruction last changed


@dataclass
class _Timing:
    """Node-side figures of one decision (published on ~/timing) [s]."""

    frame_age: float = math.nan
    frame_wait: float = math.nan
    input_time: float = math.nan
    decision_time: float = math.nan
    policy_time: float = math.nan
    tick_start: float = math.nan  # time.monotonic() when the tick began


@dataclass
class _Decision:
    """What one control tick decided to publish."""

    verdict: Verdict
    stats: DecodeStats | None = None
    narration: str | None = None
    stamp: TimeMsg | None = None  # camera frame the decision was made from (None: a hold, stamped now)
    timing: _Timing | None = None
    plan: Any = None  # core.safety.trajectory.TrajectoryVerdict: the checked chunk (None: a hold)
    inputs: tuple | None = None  # (instruction, scene signature) the plan was decided against
    estop_presses: int | None = None  # e-stop presses counted when the decision began
    frame: int | None = None  # key of the camera frame it was decided from (stamp, or arrival count)


@dataclass
class _ActivePlan:
    """The plan the controller is executing: point k is the target of the control step that
    begins ``start + k * dt`` (node clock) and is reached at its end."""

    start: float
    points: np.ndarray  # (m, n) joint positions [rad], every one passed the gate and the final check
    grippers: np.ndarray  # (m,) gripper openings [m]
    dt: float
    inputs: tuple | None = None  # (instruction, scene signature) it was decided against
    streamed: int = 0  # the last point whose step the stream has begun (point 0: sent with the decision)
    final_sent: bool = False  # interpolating: the last point itself has been sent
    hold: bool = False  # a hold (the measured position), not a decision's plan
    frame: int | None = None  # the camera frame it was decided from

    def begun(self, now: float) -> int:
        """Points whose control step has begun by ``now``."""
        return min(self.points.shape[0], int(max(0.0, now - self.start) / self.dt + 1e-9) + 1)

    def remaining(self, now: float) -> int:
        """Points whose step has not begun yet."""
        return self.points.shape[0] - self.begun(now)


class PolicyNode(LifecycleNode):
    """The specvla ROS 2 driver. See the module docstring and the README's topic/parameter tables."""

    def __init__(self, node_name: str = params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._control_thread: threading.Thread | None = None
        self._backend: PolicyBackend | None = None
        self._backend_lock = threading.Lock()  # the backend is replaced while ticks may run
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
        # One publication at a time; guards _active, _estop_latched, _last_sent and _last_status.
        self._pub_lock = threading.Lock()
        self._in = _Inputs()
        self._active = False
        self._estop_latched = False
        self._restarting = False
        self._restart_not_before = 0.0  # time.monotonic() before which no restart is tried
        self._generation = 0  # counts configure/cleanup, so a late restart cannot replace a newer backend
        self._guard: CommandGuard | None = None
        self._image_size: tuple[int, int] = (128, 128)
        self._image_resize: ResizeMethod = "area"
        self._image_cache: tuple[object, np.ndarray] | None = None
        self._last_sent: tuple[np.ndarray, float] | None = None  # last command that passed the final check
        self._plan: _ActivePlan | None = None  # what the controller executes now (under _pub_lock)
        self._estop_presses = 0  # under _pub_lock: a decision begun before the last press never goes out
        self._scene_signature: tuple = ()  # the applied scene objects, rounded (a change replans)
        self._last_status: SafetyStatus | None = None
        self._last_narration: str | None = None
        self._applied_objects: Any = None  # the SceneObjects message the gate holds now (None: none)
        self._objects_problem: str | None = None  # what was wrong with the applied message
        self._tick_wake = threading.Event()  # set by the control timer
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._loop_timers: list[Any] = []  # not _timers: rclpy's Node keeps its own list under that name
        self._input_group = ReentrantCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._watchdog_group = MutuallyExclusiveCallbackGroup()
        self._estop_group = MutuallyExclusiveCallbackGroup()
        self._stream_group = MutuallyExclusiveCallbackGroup()
        self._diag = NodeDiagnostics(self.get_name())
        # Diagnostics run in every lifecycle state so a failed configure is visible.
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.STATUS)
        self._diag_timer = self.create_timer(self._p["diagnostics_period"], self._publish_diagnostics,
                                             callback_group=self._watchdog_group)

    # ------------------------------------------------------------------ parameters
    @property
    def autostart(self) -> bool:
        return bool(self._p["autostart"])

    @property
    def backend(self) -> PolicyBackend | None:
        """Where the policy runs (None while unconfigured)."""
        return self._backend

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
        from specvla_ros.core.models.interface import ModelLoadError
        from specvla_ros.core.safety.config import load_safety_config
        from specvla_ros.core.serving.client import SessionOpenError

        try:
            config = policy_config(self._p)
            safety = load_safety_config(self._p["safety_config"] or None)
            if tuple(self._p["joint_names"]) != tuple(safety.joint_limits.names):
                # the policy's state vector and the gate's limits are in the safety config's order
                raise ValueError(f"joint_names {list(self._p['joint_names'])} must list the joints of "
                                 f"{safety.source} in its order: {list(safety.joint_limits.names)}")
            self._guard = CommandGuard.from_config(safety, self._p["joint_names"])
            backend = self._start_backend(config)
        except (ModelLoadError, SessionOpenError, ValueError, OSError, ImportError) as exc:
            msg = f"model load failed: {exc}"
            self.get_logger().error(msg)
            self._diag.set_model(ERROR, msg)
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        with self._backend_lock:
            self._generation += 1
            self._backend = backend
        self._image_size = tuple(int(v) for v in backend.image_size)  # type: ignore[assignment]
        self._image_resize = backend.image_resize
        self._report_backend(backend)
        self._create_io()
        return TransitionCallbackReturn.SUCCESS

    def _start_backend(self, config: Any) -> PolicyBackend:
        """Load the models where ``inference.backend`` says (blocks for the load and warm-up)."""
        warmup = int(self._p["warmup_steps"])
        if self._p["inference.backend"] == "in_process":
            from specvla_ros.core.serving.backend import InProcessPolicy

            return InProcessPolicy(config, warmup)
        from specvla_ros.core.serving.client import PolicyClient, ServerOptions

        if self._p["inference.server_address"]:
            key_file = self._p["inference.authkey_file"]
            if not key_file:
                raise ValueError("inference.server_address needs inference.authkey_file (the server's key)")
            with open(key_file, encoding="utf-8") as fh:
                authkey = bytes.fromhex(fh.read().strip())
            return PolicyClient.connect(self._p["inference.server_address"], authkey, config,
                                        name=self.get_fully_qualified_name(), warmup_steps=warmup)
        options = ServerOptions(threads=int(self._p["inference.threads"]), nice=int(self._p["inference.nice"]))
        return PolicyClient.spawn(config, name=self.get_fully_qualified_name(), warmup_steps=warmup, options=options)

    def _report_backend(self, backend: PolicyBackend) -> None:
        info = dict(backend.info)
        load_s = float(getattr(backend, "load_s", math.nan))
        warmup_s = float(getattr(backend, "warmup_s", math.nan))
        pid = getattr(backend, "server_pid", None)
        info.update(load_s=load_s, warmup_s=warmup_s, decode_mode=self._p["decode.mode"],
                    drafter=self._p["drafter"], inference=self._p["inference.backend"],
                    inference_pid=pid if pid is not None else "this process")
        self.get_logger().info(
            f"models loaded in {load_s:.2f} s on {info.get('device')} ({info.get('dtype')}), "
            f"target {info.get('target_params')} params, draft {info.get('draft_params')} params, "
            f"{float(info.get('memory_mb', float('nan'))):.1f} MB; warm-up {warmup_s * 1e3:.1f} ms; "
            f"input {self._image_size[0]}x{self._image_size[1]} (other camera sizes resized: {self._image_resize}); "
            f"inference "
            f"{'in process ' + str(pid) if pid is not None else 'in this process'}")
        self._diag.set_model(OK, "loaded", info)

    def _create_io(self) -> None:
        opts = qos.OVERRIDES
        if self._p["command_interface"] == "joint_trajectory":
            self._pubs["command"] = self.create_publisher(JointTrajectory, topics.TRAJECTORY, qos.COMMAND,
                                                          qos_overriding_options=opts)
        else:
            self._pubs["command"] = self.create_publisher(Float64MultiArray, topics.FORWARD, qos.COMMAND,
                                                          qos_overriding_options=opts)
        from specvla_msgs.msg import ControlTiming, SafetyVerdict, SpecDecodeStats

        self._pubs["gripper"] = self.create_publisher(Float64MultiArray, topics.GRIPPER, qos.COMMAND,
                                                      qos_overriding_options=opts)
        self._pubs["narration"] = self.create_publisher(String, topics.NARRATION, qos.STATUS,
                                                        qos_overriding_options=opts)
        self._pubs["safety"] = self.create_publisher(SafetyVerdict, topics.SAFETY, qos.STATUS,
                                                     qos_overriding_options=opts)
        self._pubs["stats"] = self.create_publisher(SpecDecodeStats, topics.STATS, qos.STATUS,
                                                    qos_overriding_options=opts)
        self._pubs["timing"] = self.create_publisher(ControlTiming, topics.TIMING, qos.STATUS,
                                                     qos_overriding_options=opts)
        self._pubs["plan"] = self.create_publisher(JointTrajectory, topics.PLAN, qos.STATUS,
                                                   qos_overriding_options=opts)
        g = self._input_group
        if self._p["use_compressed_image"]:
            self._subs.append(self.create_subscription(CompressedImage, topics.IMAGE + "/compressed", self._on_image,
                                                       qos.CAMERA, callback_group=g, qos_overriding_options=opts))
        else:
            self._subs.append(self.create_subscription(Image, topics.IMAGE, self._on_image, qos.CAMERA,
                                                       callback_group=g, qos_overriding_options=opts))
        self._subs.append(self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED,
                                                   callback_group=g, qos_overriding_options=opts))
        self._subs.append(self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_states,
                                                   qos.JOINT_STATES, callback_group=g, qos_overriding_options=opts))
        # Its own mutually exclusive group: presses and releases are handled in arrival order.
        self._subs.append(self.create_subscription(Bool, topics.ESTOP, self._on_estop, qos.LATCHED,
                                                   callback_group=self._estop_group, qos_overriding_options=opts))
        if self._p["scene_objects_topic"]:
            from specvla_msgs.msg import SceneObjects

            self._subs.append(self.create_subscription(SceneObjects, self._p["scene_objects_topic"],
                                                       self._on_scene_objects, qos.SCENE_OBJECTS,
                                                       callback_group=g, qos_overriding_options=opts))

    def _destroy_io(self) -> None:
        for timer in self._loop_timers:
            self.destroy_timer(timer)
        self._loop_timers.clear()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs.clear()
        with self._pub_lock:
            pubs = list(self._pubs.values())
            self._pubs.clear()
        for pub in pubs:
            self.destroy_publisher(pub)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        period = float(self._p["control_period"])
        with self._pub_lock:
            self._active = True
            self._last_status = None
            self._last_narration = None
            self._last_sent = None  # the arm may have been moved while inactive
            self._plan = None
        # The timer only paces (on the node's clock, so sim time and lockstep replays work);
        # the tick runs on its own thread, so a decision never blocks the executor.
        self._tick_wake.clear()
        self._control_thread = threading.Thread(target=self._control_loop, name="specvla_control", daemon=True)
        self._control_thread.start()
        self._loop_timers.append(self.create_timer(period, self._on_control_timer, callback_group=self._control_group))
        # Backstop for the e-stop callback's own hold, faster than the control rate.
        self._loop_timers.append(self.create_timer(min(period / 4.0, 0.05), self._watchdog_tick,
                                              callback_group=self._watchdog_group))
        # a forward controller holds the last position it got: the node sends the plan's points at
        # their times (interpolated at command_rate); joint_trajectory_controller interpolates the
        # plan itself, and only the gripper's targets are sent point by point
        rate = float(self._p["command_rate"]) if self._p["command_interface"] == "forward_position" else 0.0
        stream_period = min(period / 4.0, 1.0 / rate) if rate > 0 else period / 4.0
        self._loop_timers.append(self.create_timer(stream_period, self._stream_tick, callback_group=self._stream_group))
        self._diag.set_active(True)
        self.get_logger().info(f"active: control every {period * 1e3:.0f} ms, commands on "
                               f"{self._pubs['command'].topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for timer in self._loop_timers:
            self.destroy_timer(timer)
        self._loop_timers.clear()
        self.publish_final_hold("node deactivated")  # after it no tick publishes
        self._stop_control_thread()
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

    def _stop_control_thread(self) -> None:
        """Stop the control loop; a decision in flight finishes (bounded by decision_deadline) first."""
        thread, self._control_thread = self._control_thread, None
        if thread is None:
            return
        with self._pub_lock:
            self._active = False
        if thread is not threading.current_thread():
            self._tick_wake.set()
            thread.join(timeout=float(self._p["decision_deadline"]) + 5.0)

    def _release(self) -> None:
        self._stop_control_thread()
        with self._pub_lock:
            self._active = False
        self._destroy_io()
        with self._backend_lock:
            self._generation += 1
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        self._image_cache = None
        self._applied_objects = None
        self._last_sent = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._diag.set_active(False)
        self._diag.set_model(WARN, "not configured", {})

    def destroy_node(self) -> None:
        """Also stops the control loop and ends the inference session (and a private server)."""
        self._stop_control_thread()
        with self._backend_lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        super().destroy_node()

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
                pub = self._pubs.get(key)
                if pub is not None and not pub.wait_for_all_acked(Duration(seconds=1.0)):
                    self.get_logger().warning(f"final hold on {pub.topic_name} not acknowledged")

    # ------------------------------------------------------------------ input callbacks (store only)
    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        with self._lock:
            self._in.image, self._in.image_received = msg, now
            self._in.image_seq += 1

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            if self._in.instruction is not None and msg.data != self._in.instruction:
                self._in.instruction_frame = self._in.image_seq  # a change, not the first instruction
            self._in.instruction = msg.data

    def _on_joint_states(self, msg: JointState) -> None:
        now = time.monotonic()
        with self._lock:
            conv.merge_joint_state(self._in.joints, msg, now)

    def _on_estop(self, msg: Bool) -> None:
        pressed = bool(msg.data)
        # Latch (or release) under the lock every publication takes, so no decision can
        # slip out after it; the stored input and the latch change together.
        with self._pub_lock:
            first = pressed and not self._estop_latched
            released = not pressed and self._estop_latched
            self._estop_presses += int(first)
            with self._lock:
                self._in.estop = pressed
            self._estop_latched = pressed
        if released:
            self.get_logger().info("emergency stop released")
        if not pressed:
            return
        # React here rather than at the next tick.
        if first:
            self.get_logger().error("emergency stop pressed -> holding")
        self._publish(self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched"))

    def _on_scene_objects(self, msg: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._in.scene_objects, self._in.scene_objects_received = msg, now

    # ------------------------------------------------------------------ control loop
    def _snapshot(self) -> _Inputs:
        with self._lock:
            return _Inputs(self._in.image, self._in.image_received, self._in.image_seq,
                           dict(self._in.joints), self._in.instruction, self._in.estop,
                           self._in.scene_objects, self._in.scene_objects_received, self._in.instruction_frame)

    def _current_instruction(self) -> str | None:
        with self._lock:
            text = self._in.instruction
        return text.strip() if text is not None else None

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
                self.get_logger().warning(f"{key}: {problem}")
            self._publish_diagnostics()

    def _measured_state(self, snap: _Inputs, now: float) -> tuple[RobotState | None, str | None, bool]:
        """(state, problem, stale) from the merged joint states; state None when unusable."""
        max_age = float(self._p["max_input_age"])
        try:
            q, dq, age = conv.joint_vector(snap.joints, self._p["joint_names"], now, max_age)
            grip, _, gage = conv.joint_vector(snap.joints, self._p["gripper_joint_names"], now, max_age)
        except conv.InputError as exc:
            return None, str(exc), False
        if self._guard is not None:
            problem = self._guard.measured_problem(q)
            if problem is not None:
                return None, f"joint_states: {problem}", False
        state = RobotState(q=q, gripper=float(np.sum(grip)), dq=dq, stamp=self.get_clock().now().nanoseconds * 1e-9)
        oldest = max(age, gage)
        if oldest > max_age:
            names = list(self._p["joint_names"]) + list(self._p["gripper_joint_names"])
            worst = max(names, key=lambda n: now - snap.joints[n].received)
            return None, (f"joint_states: {worst} last received {oldest:.2f} s ago "
                          f"(max_input_age {max_age:.2f} s)"), True
        return state, None, False

    def _frame_age(self, snap: _Inputs) -> float:
        """The frame's age by its header stamp on the node's clock [s]; NaN when unstamped or not checked."""
        if snap.image is None or not self._p["check_camera_stamp"]:
            return math.nan
        stamp = conv.stamp_ns(snap.image.header.stamp)
        if stamp <= 0:
            return math.nan
        return (self.get_clock().now().nanoseconds - stamp) * 1e-9

    def _image(self, snap: _Inputs, now: float, frame_age: float) -> tuple[np.ndarray | None, str | None, bool]:
        """(rgb at model size, problem, stale)."""
        if snap.image is None:
            return None, "no camera image received yet", True
        max_age = float(self._p["max_input_age"])
        waited = now - snap.image_received
        if waited > max_age:
            return None, f"camera image {waited:.2f} s old (max_input_age {max_age:.2f} s)", True
        if frame_age > max_age:
            return None, (f"camera frame stamped {frame_age:.2f} s ago (max_input_age {max_age:.2f} s); "
                          "if the camera's clock is not synchronised, set check_camera_stamp false"), True
        if frame_age < -max_age:
            return None, (f"camera frame stamped {-frame_age:.2f} s in the future: camera and node clocks "
                          "differ (synchronise them, or set check_camera_stamp false)"), False
        if self._image_cache is not None and self._image_cache[0] is snap.image:
            return self._image_cache[1], None, False
        try:
            if isinstance(snap.image, CompressedImage):
                rgb = conv.compressed_to_rgb(snap.image, self._image_size, self._image_resize)
            else:
                rgb = conv.image_to_rgb(snap.image, self._image_size, self._image_resize)
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

    def _scene_objects(self, snap: _Inputs, backend: PolicyBackend, now: float) -> str | None:
        """Give the gate the newest scene objects; the reason to hold when they are too old, else None.

        The last known set stays in the gate until a newer one replaces it: objects do
        not vanish because their topic went quiet.
        """
        msg = snap.scene_objects
        if msg is None:
            return None  # never received: static scene only, nothing to report
        if msg is not self._applied_objects:
            try:
                objects, problems = conv.scene_objects_from_msg(msg, self._p["scene_objects_frame"])
                backend.set_scene_objects(objects)
                self._scene_signature = tuple(sorted(
                    (o.name, *np.round(np.asarray(o.center) / _SCENE_GRID_M).astype(int).tolist(),
                     *np.round(np.asarray(o.size) / _SCENE_GRID_M).astype(int).tolist()) for o in objects))
                self._objects_problem = "; ".join(problems) or None
            except conv.InputError as exc:  # refused as a whole: the previous set stays
                self._objects_problem = f"{exc} -> keeping the previous objects"
            self._applied_objects = msg
        age = now - snap.scene_objects_received
        hold_age = float(self._p["scene_objects_hold_age"])
        max_age = float(self._p["scene_objects_max_age"])
        quiet = None
        if age > max_age:
            quiet = (f"not refreshed for over scene_objects_max_age ({max_age:.2f} s); "
                     "the gate keeps the last known objects")
        self._input_problem("scene_objects", "; ".join(p for p in (self._objects_problem, quiet) if p) or None, WARN)
        if hold_age > 0 and age > hold_age:
            return (f"scene_objects: last received {age:.2f} s ago (scene_objects_hold_age {hold_age:.2f} s); "
                    "not deciding against an old scene")
        return None

    def _on_control_timer(self) -> None:
        self._tick_wake.set()

    def _control_loop(self) -> None:
        me = threading.current_thread()
        while True:
            self._tick_wake.wait()
            if self._control_thread is not me:  # stopped (or replaced after a re-activation)
                return
            self._tick_wake.clear()
            if not self._active:
                return
            self._control_tick()

    def _control_tick(self) -> None:
        if not self._active:
            return
        tick = time.monotonic()
        try:
            decision = self._decide(tick)
        except Exception as exc:  # noqa: BLE001 — the tick is a safety boundary: anything becomes a hold
            decision = self._tick_failed("deciding", exc)
        if decision is not None:
            self._publish(decision)

    def _tick_failed(self, stage: str, exc: BaseException) -> _Decision:
        reason = f"internal error while {stage}: {type(exc).__name__}: {exc}"
        self._fault(reason)
        return self._hold(SafetyStatus.HALT_NOT_READY, reason)

    def _fault(self, problem: str | None) -> None:
        """An internal failure the tick turned into a hold (None: the tick ran cleanly)."""
        if self._diag.set_fault(problem):
            if problem is not None:
                self.get_logger().error(f"{problem} -> holding")
            self._publish_diagnostics()

    def _plan_due(self, inputs: tuple, frame: int) -> bool:
        """Whether this tick plans: every period (replan_below 0), when fewer than replan_below points
        of the running plan are left, or when the instruction or the scene objects changed since it
        was decided (it was checked against the old scene). Never again from the frame the running
        plan was decided from: that would only restart the same plan from its first point, applying
        its first steps twice (a decision that outlasts a period, or a simulator in lockstep)."""
        plan = self._plan
        if plan is None or plan.hold or plan.inputs != inputs:
            return True
        if plan.frame == frame:
            return False
        below = int(self._p["replan_below"])
        return below == 0 or plan.remaining(self._now()) < below

    def _now(self) -> float:
        """Node-clock seconds (sim time under use_sim_time): the plan's time base."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _decide(self, tick: float) -> _Decision | None:
        """One control tick's decision: a hold for any input problem, None while the running plan
        needs no new one (every input is still checked each tick)."""
        snap = self._snapshot()
        if snap.estop:
            return self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched", snap=snap)
        backend = self._backend
        if backend is None or backend.problem is not None:
            return self._inference_lost(backend.problem if backend is not None else "no inference backend", snap)
        state, problem, stale = self._measured_state(snap, tick)
        if state is None:
            status = SafetyStatus.HALT_STALE_INPUT if stale else SafetyStatus.HALT_BAD_INPUT
            self._input_problem("joint_states", problem, WARN if stale else ERROR)
            return self._hold(status, problem or "joint states unusable", snap=snap)
        self._input_problem("joint_states", None)
        timing = _Timing(frame_age=self._frame_age(snap), tick_start=tick)
        rgb, problem, stale = self._image(snap, tick, timing.frame_age)
        if problem:
            never = snap.image is None
            status = (SafetyStatus.HALT_NOT_READY if never else
                      SafetyStatus.HALT_STALE_INPUT if stale else SafetyStatus.HALT_BAD_INPUT)
            self._input_problem("image", problem, WARN if stale else ERROR)
            return self._hold(status, problem, snap=snap)
        self._input_problem("image", None)
        text, problem = self._instruction(snap)
        if problem:
            never = snap.instruction is None
            self._input_problem("instruction", problem, WARN if never else ERROR)
            return self._hold(SafetyStatus.HALT_NOT_READY if never else SafetyStatus.HALT_BAD_INPUT, problem,
                              snap=snap)
        self._input_problem("instruction", None)
        problem = self._scene_objects(snap, backend, tick)
        if problem:
            return self._hold(SafetyStatus.HALT_STALE_INPUT, problem, snap=snap)
        inputs = (text, self._scene_signature)
        stamp = conv.stamp_ns(snap.image.header.stamp)  # type: ignore[union-attr]
        # Unstamped cameras: fall back to the arrival counter so each frame is encoded once.
        frame = stamp if stamp > 0 else -snap.image_seq
        if snap.image_seq <= snap.instruction_frame:
            # A changed instruction is acted on from the first frame that arrives after it: the frame
            # before may show a scene it does not refer to (a simulator reset to a new task).
            return None
        if not self._plan_due(inputs, frame):
            return None
        with self._pub_lock:
            presses = self._estop_presses
        proprio = np.concatenate([state.q, [state.gripper]]).astype(np.float32)
        obs = Observation(image=rgb, instruction=text, proprio=proprio,  # type: ignore[arg-type]
                          frame_id=frame)
        deadline = float(self._p["decision_deadline"])
        t_request = time.monotonic()
        timing.frame_wait = tick - snap.image_received
        timing.input_time = t_request - tick
        plan_start = self._now()
        try:
            out = backend.step(obs, state, timeout_s=max(deadline - (t_request - tick), 1e-3),
                               shift=self._plan_shift(plan_start))
        except InferenceTimeout as exc:
            return self._hold(SafetyStatus.HALT_DEADLINE, f"{exc} (decision_deadline {deadline:.3f} s)", snap=snap)
        except InferenceUnavailable as exc:
            return self._inference_lost(str(exc), snap)
        except InferenceError as exc:
            self._fault(str(exc))
            return self._hold(SafetyStatus.HALT_NOT_READY, str(exc), snap=snap)
        self._fault(None)
        timing.decision_time = time.monotonic() - t_request
        timing.policy_time = out.stats.total_time_s
        refused = out.verdict.status == SafetyStatus.HALT_BAD_INPUT
        self._input_problem("model_input", out.verdict.reason if refused else None)
        took = time.monotonic() - tick
        if took > deadline:
            reason = f"decision took {took:.3f} s (decision_deadline {deadline:.3f} s)"
            return self._hold(SafetyStatus.HALT_DEADLINE, reason, out.stats, snap=snap)
        return _Decision(out.verdict, out.stats, out.narration, snap.image.header.stamp, timing,  # type: ignore[union-attr]
                         out.plan, inputs, presses, frame)

    def _plan_shift(self, now: float) -> int:
        """Control steps of the running plan begun since it was planned (the previous chunk's offset
        for this decision's free draft); 0 when no plan runs (the arm holds: the previous chunk's
        steps are all still ahead, and none of the earlier chunks may be blended into this one)."""
        plan = self._plan
        return max(1, plan.begun(now)) if plan is not None and not plan.hold else 0

    def _inference_lost(self, problem: str, snap: _Inputs) -> _Decision:
        """Hold while the inference process is gone, and start a new one (once at a time)."""
        reason = f"inference unavailable: {problem}"
        self._diag.set_model(ERROR, reason)
        with self._backend_lock:
            start = not self._restarting and self._active and time.monotonic() >= self._restart_not_before
            self._restarting = self._restarting or start
        if start:
            self.get_logger().error(f"{reason} -> holding; starting a new inference process")
            threading.Thread(target=self._restart_backend, name="specvla_inference_restart", daemon=True).start()
        return self._hold(SafetyStatus.HALT_NOT_READY, reason, snap=snap)

    def _restart_backend(self) -> None:
        from specvla_ros.core.models.interface import ModelLoadError
        from specvla_ros.core.serving.client import SessionOpenError

        try:
            with self._backend_lock:
                generation = self._generation
                old, self._backend = self._backend, None
            if old is not None:
                old.close()
            try:
                backend = self._start_backend(policy_config(self._p))
            except (ModelLoadError, SessionOpenError, ValueError, OSError, ImportError) as exc:
                self.get_logger().error(f"inference process restart failed: {exc}; holding, next try in "
                                        f"{_RESTART_BACKOFF_S:.0f} s")
                self._diag.set_model(ERROR, f"restart failed: {exc}")
                with self._backend_lock:
                    self._restart_not_before = time.monotonic() + _RESTART_BACKOFF_S
                return
            installed = False
            with self._backend_lock:
                # not if the node was deactivated, cleaned up or configured anew meanwhile
                if self._active and generation == self._generation and self._backend is None:
                    self._applied_objects = None  # the new process has no scene objects yet
                    self._backend = backend
                    installed = True
            if not installed:
                backend.close()
                return
            self._report_backend(backend)
            self.get_logger().info("inference process restarted")
        finally:
            with self._backend_lock:
                self._restarting = False

    def _watchdog_tick(self) -> None:
        with self._pub_lock:
            due = self._active and self._estop_latched and self._last_status != SafetyStatus.HALT_ESTOP
        if due:
            self._publish(self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched"))

    def _hold_target(self, snap: _Inputs | None) -> tuple[np.ndarray | None, float]:
        """(joint positions, gripper opening) to hold at: the fresh measured ones inside the limits.

        None when they are missing, stale or out of range: then nothing positional is commanded.
        """
        if snap is None:
            snap = self._snapshot()
        state, _, _ = self._measured_state(snap, time.monotonic())
        if state is None or self._guard is None:
            return None, math.nan
        return self._guard.hold_target(state.q), self._guard.clamp_gripper(state.gripper)

    def _hold(self, status: SafetyStatus, reason: str, stats: DecodeStats | None = None,
              snap: _Inputs | None = None) -> _Decision:
        try:
            q, gripper = self._hold_target(snap)
        except Exception as exc:  # noqa: BLE001 — a hold must always be possible: then hold without a position
            self.get_logger().error(f"hold position unknown ({type(exc).__name__}: {exc})")
            q, gripper = None, math.nan
        command = q if q is not None else np.empty(0)
        return _Decision(Verdict(status, reason, joint_command=command, gripper_command=gripper), stats, None)

    # ------------------------------------------------------------------ output
    def _publish(self, decision: _Decision, force: bool = False) -> None:
        """Publish a decision; never raises (a failure is logged, diagnosed and answered with a hold)."""
        try:
            self._publish_checked(decision, force)
        except Exception as exc:  # noqa: BLE001 — publishing is part of the safety boundary
            reason = f"internal error while publishing: {type(exc).__name__}: {exc}"
            self._fault(reason)
            try:
                self._publish_checked(self._hold(SafetyStatus.HALT_NOT_READY, reason), force)
            except Exception as again:  # noqa: BLE001 — nothing more can be sent; say so and keep spinning
                self.get_logger().fatal(f"could not publish a hold either: {type(again).__name__}: {again}")

    def _publish_checked(self, decision: _Decision, force: bool) -> None:
        t_start = decision.timing.tick_start if decision.timing is not None else math.nan
        with self._pub_lock:
            if not (self._active or force) or not self._pubs:
                return
            if self._estop_latched and decision.verdict.status != SafetyStatus.HALT_ESTOP:
                # Decided before (or while) the e-stop: only the e-stop hold may go out.
                decision = self._hold(SafetyStatus.HALT_ESTOP, "emergency stop latched")
            elif decision.estop_presses is not None and decision.estop_presses != self._estop_presses:
                # begun before an e-stop that was pressed and released meanwhile: decided on an old state
                decision = self._hold(SafetyStatus.HALT_ESTOP, "decided before the last emergency stop; deciding again")
            elif decision.inputs is not None and decision.inputs[0] != self._current_instruction():
                # the instruction changed while deciding: this plan is for the old one; decide again now
                self._tick_wake.set()
                return
            verdict = self._send_command(decision.verdict, decision.plan, decision.inputs, decision.frame)
            as_decided = verdict is decision.verdict  # not refused at the publisher
            stamp = decision.stamp if decision.stamp is not None and as_decided else self.get_clock().now().to_msg()
            header = Header(stamp=stamp)
            self._pubs["safety"].publish(conv.verdict_to_msg(verdict, header))
            if as_decided and not verdict.is_halt and self._plan is not None:
                plan_msg = conv.joint_trajectory(list(self._p["joint_names"]), self._plan.points,
                                                 self._plan.dt)
                plan_msg.header = header
                self._pubs["plan"].publish(plan_msg)
            if decision.stats is not None and as_decided:
                self._pubs["stats"].publish(conv.stats_to_msg(decision.stats, header))
            if decision.timing is not None and as_decided:
                self._pubs["timing"].publish(_timing_msg(decision.timing, header, time.monotonic() - t_start))
            if decision.narration is not None and as_decided and (
                    self._p["narration_every_step"] or decision.narration != self._last_narration):
                self._pubs["narration"].publish(String(data=decision.narration))
                self._last_narration = decision.narration
            self._last_status = SafetyStatus(verdict.status)
        self._diag.record_tick(time.monotonic(), verdict, decision.stats if as_decided else None)

    def _send_command(self, verdict: Verdict, plan: Any = None, inputs: tuple | None = None,
                      frame: int | None = None) -> Verdict:
        """Publish the verdict's command (with ``plan``, the plan's points) if it passes the final
        check; returns the verdict to report.

        Called under ``_pub_lock``. A command outside the joint limits (or not finite) is
        never sent, whatever produced it: the verdict becomes a halt and the robot holds. A
        plan is cut before its first point that fails the check. Any hold replaces the plan.
        """
        q = np.asarray(verdict.joint_command, dtype=np.float64).reshape(-1)
        gripper = float(verdict.gripper_command)
        problem = "no position to command" if q.size == 0 else None
        if problem is None and self._guard is not None:
            problem = self._guard.command_problem(q, gripper)
            if problem is not None:
                self._fault(f"command refused at the publisher: {problem} ({verdict.status.name}: {verdict.reason})")
                verdict = Verdict(SafetyStatus.HALT_JOINT_LIMIT if "outside" in problem else SafetyStatus.HALT_NONFINITE,
                                  f"command refused at the publisher: {problem} (was {verdict.status.name}: "
                                  f"{verdict.reason})", joint_command=np.empty(0), gripper_command=math.nan,
                                  raw_action=verdict.raw_action)
        if problem is None:
            points, grippers = self._checked_plan(q, gripper, plan if not verdict.is_halt else None)
            self._plan = _ActivePlan(self._now(), points, grippers, float(self._p["control_period"]), inputs,
                                     hold=verdict.is_halt, frame=frame)
            self._publish_position(points if self._p["command_interface"] == "joint_trajectory" else q)
            if math.isfinite(gripper):
                self._pubs["gripper"].publish(conv.gripper_command(gripper))
            self._last_sent = (q.copy(), gripper)
            return verdict
        self._plan = None
        if not verdict.is_halt:
            verdict = Verdict(SafetyStatus.HALT_NONFINITE, f"command not sendable ({verdict.reason})",
                              joint_command=np.empty(0), gripper_command=math.nan, raw_action=verdict.raw_action)
        # Hold without a measured position: joint_trajectory_controller stops and holds where it is
        # on an empty trajectory; a forward controller gets the last command that passed this check.
        if self._p["command_interface"] == "joint_trajectory":
            self._pubs["command"].publish(JointTrajectory(joint_names=list(self._p["joint_names"])))
        elif self._last_sent is not None:
            self._publish_position(self._last_sent[0])
            verdict.joint_command = self._last_sent[0].copy()
        return verdict

    def _checked_plan(self, q0: np.ndarray, gripper0: float, plan: Any) -> tuple[np.ndarray, np.ndarray]:
        """The points to send: the first command (already checked) and the plan's next points up to
        the first that fails the final check -> ((m, n), (m,))."""
        points, grippers = [q0], [gripper0]
        if plan is not None and plan.published > 1 and np.allclose(plan.points[0], q0, rtol=0.0, atol=1e-12):
            for qk, gk in zip(plan.points[1:], plan.grippers[1:]):
                qk = np.asarray(qk, dtype=np.float64)
                problem = self._guard.command_problem(qk, float(gk)) if self._guard is not None else None
                if problem is not None:
                    self._fault(f"plan cut at point {len(points)} by the final check at the publisher: {problem}")
                    break
                points.append(qk)
                grippers.append(float(gk))
        return np.stack(points), np.asarray(grippers, dtype=np.float64)

    def _stream_tick(self) -> None:
        """Send the running plan's point of the current control step: forward_position positions (at
        their times, or interpolated between them at command_rate) and, for both interfaces, the
        gripper. A point is never skipped: a stream that fell behind (a stalled timer) moves the plan's
        time on instead, so no message asks for more than one checked step. Nothing after a hold, an
        e-stop or the plan's end. With replan_below 0 it is the fallback for a late decision."""
        refused = None
        try:
            with self._pub_lock:
                plan = self._plan
                if not self._active or self._estop_latched or plan is None or not self._pubs:
                    return
                m, dt = plan.points.shape[0], plan.dt
                # planning every period, the next plan normally replaces this one as its point 1 is due:
                # the stream only carries on when that plan is half a period late (a fallback)
                now = self._now() - (0.5 * dt if int(self._p["replan_below"]) == 0 else 0.0)
                step = int(max(0.0, now - plan.start) / dt + 1e-9)
                if step > plan.streamed + 1:  # behind: the next point now, the rest of the plan later
                    plan.start += (step - plan.streamed - 1) * dt
                    step = plan.streamed + 1
                forward = self._p["command_interface"] == "forward_position"
                interpolate = forward and float(self._p["command_rate"]) > 0
                if step >= m:  # past the plan's end: the last point stays commanded
                    if interpolate and not plan.final_sent:
                        refused = self._stream_point(plan.points[m - 1], plan.grippers[m - 1], m - 1, plan, forward)
                        plan.final_sent = refused is None
                    return
                if step <= plan.streamed and not (interpolate and step >= 1):
                    return
                q = plan.points[step]
                if interpolate and step >= 1:
                    frac = min(max((now - plan.start - step * dt) / dt, 0.0), 1.0)
                    q = plan.points[step - 1] + frac * (plan.points[step] - plan.points[step - 1])
                refused = self._stream_point(q, plan.grippers[step], step, plan, forward)
        except Exception as exc:  # noqa: BLE001 — part of the safety boundary: anything becomes a hold
            self._publish(self._tick_failed("streaming the plan", exc))
            return
        if refused is not None:
            self._fault(f"plan point refused at the publisher: {refused}")
            self._publish(self._hold(SafetyStatus.HALT_JOINT_LIMIT, f"plan point refused at the publisher: {refused}"))

    def _stream_point(self, q: np.ndarray, gripper: float, step: int, plan: _ActivePlan, forward: bool) -> str | None:
        """Under _pub_lock: send one streamed point (positions only for forward_position; the gripper
        when its step begins) after the final check -> why it was refused, or None."""
        problem = self._guard.command_problem(q, float(gripper)) if self._guard is not None else None
        if problem is not None:
            self._plan = None
            return problem
        if forward:
            self._publish_position(q)
            self._last_sent = (np.asarray(q, dtype=np.float64).copy(), float(gripper))
        if step > plan.streamed:
            if math.isfinite(float(gripper)):
                self._pubs["gripper"].publish(conv.gripper_command(float(gripper)))
            plan.streamed = step
        return None

    def _publish_position(self, q: np.ndarray) -> None:
        if self._p["command_interface"] == "joint_trajectory":
            self._pubs["command"].publish(conv.joint_trajectory(list(self._p["joint_names"]), q,
                                                                float(self._p["control_period"])))
        else:
            self._pubs["command"].publish(conv.position_array(q))

    def _publish_diagnostics(self) -> None:
        """Never raises: it is called from the safety boundary's own error paths."""
        try:
            self._diag_pub.publish(self._diag.build(self.get_clock().now().to_msg()))
        except Exception as exc:  # noqa: BLE001 — a lost diagnostic must not take a hold with it
            self.get_logger().warning(f"diagnostics not published: {type(exc).__name__}: {exc}")


def _timing_msg(timing: _Timing, header: Header, tick_time: float):  # -> specvla_msgs.msg.ControlTiming
    from specvla_msgs.msg import ControlTiming

    return ControlTiming(header=header, frame_age=float(timing.frame_age), frame_wait=float(timing.frame_wait),
                         input_time=float(timing.input_time), decision_time=float(timing.decision_time),
                         policy_time=float(timing.policy_time), tick_time=float(tick_time))


def policy_config(values: dict[str, Any]):  # -> specvla_ros.core.policy.PolicyConfig
    """Node parameters -> PolicyConfig ('default' paths keep PolicyConfig's defaults).

    Raises:
        ValueError: from PolicyConfig/DecodeConfig validation.
    """
    from specvla_ros.core.policy import PolicyConfig
    from specvla_ros.core.decoding.decoder import DecodeConfig

    decode = DecodeConfig(**{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("decode.")})
    kwargs: dict[str, Any] = dict(
        drafter=values["drafter"], decode=decode, device=values["device"], dtype=values["dtype"],
        unnorm_key=values["unnorm_key"] or None, control_period_s=float(values["control_period"]),
        safety_config=values["safety_config"] or None, safe_envelope=bool(values["safe_envelope"]),
        redecode_shrink=float(values["redecode_shrink"]), ensemble=bool(values["ensemble"]),
        ensemble_coeff=float(values["ensemble_coeff"]))
    if values["target_dir"] != "default":
        kwargs["target_dir"] = values["target_dir"]
    if values["draft_dir"] != "default":
        kwargs["draft_dir"] = values["draft_dir"] or None
    return PolicyConfig(**kwargs)


def main(args: list[str] | None = None) -> int:
    """Console script `specvla_node` (accepts --ros-args --params-file ... -r from:=to)."""
    if params.help_requested(list(sys.argv[1:] if args is None else args)):
        print(params.usage("specvla_node", __doc__.split("\n\n")[0].replace("\n", " "), params.SCHEMA,
                           params.defaults()))
        return 0
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
    # One thread spins every callback: with inference in its own process nothing here
    # blocks, and a thread pool would only add GIL hand-offs for each of the hundreds
    # of input messages a second.
    executor = SingleThreadedExecutor()
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
