"""Replay-based regression testing of the policy node.

An input bag (camera, instruction, joint states) is replayed through a real
`PolicyNode` (in this process, own rclpy context, sim time) in *lockstep*:
for each camera frame the harness publishes the inputs up to that frame,
waits until the node holds them, advances /clock by one control period (the
node's control timer runs on sim time, so exactly one decision happens) and
waits for that decision's ~/safety verdict. Outputs are therefore tied to the
frame they answer whatever the machine's speed.

Alignment: a decision's verdict and stats carry the camera frame's header
stamp (holds carry the tick time); commands and narration have no stamp and
are grouped with the verdict published in the same step, by the DDS source
timestamps (commands are published just before the verdict, stats and
narration just after).

The outputs go into a bag (bag time = the frame's stamp) that can serve as a
golden bag; `compare` diffs two such bags message by message: greedy mode
exactly, relaxed/sample mode with tolerances on actions, verdicts and
narration always exactly.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specvla_ros.ros import topics
from specvla_ros.ros.bag.io import NODE_INPUT_TOPICS, BagError, bag_info, write_bag
from specvla_ros.ros.bag.player import BagPlayer, PlayConfig
from specvla_ros.ros.bag.qos import parse_mapping, qos_preset
from specvla_ros.ros.bag.types import import_msg_class, make_typestore


#: Outputs compared, with their types. /diagnostics is not: it carries timings.
OUTPUT_TYPES: dict[str, str] = {
    topics.TRAJECTORY: "trajectory_msgs/msg/JointTrajectory",
    topics.FORWARD: "std_msgs/msg/Float64MultiArray",
    topics.GRIPPER: "std_msgs/msg/Float64MultiArray",
    topics.resolved(topics.SAFETY): "specvla_msgs/msg/SafetyVerdict",
    topics.resolved(topics.STATS): "specvla_msgs/msg/SpecDecodeStats",
    topics.NARRATION: "std_msgs/msg/String",
}
_COMMAND_TOPICS = (topics.TRAJECTORY, topics.FORWARD, topics.GRIPPER)  # published before the verdict
REQUIRED_INPUTS = (topics.IMAGE, topics.JOINT_STATES, topics.INSTRUCTION)
METADATA_KEY = "specvla_regression"
RANDOM_MODELS = "random"  # `models` value: seeded random tiny checkpoints (as the tests' fixture)
RANDOM_CHUNK_MODELS = "random_chunk"  # the same with an action-chunk target (H = 4: multi-point plans)
RANDOM_CHUNK_HORIZON = 4
_GROUP_SLOTS = 16  # messages of one frame sit at bag times stamp + 0..15 ns
_DISCOVERY_ENV = "ROS_AUTOMATIC_DISCOVERY_RANGE"


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayConfig:
    """How to replay an input bag through the node.

    models: "default" (shipped checkpoints), "random" (seeded random tiny
        checkpoints built on the fly, like the tests' fixture), "random_chunk"
        (the same with an action-chunk target: multi-point plans) or
        "TARGET_DIR[:DRAFT_DIR]".
    mode / drafter / relax_bins: the node's decode.mode, drafter, decode.relax_bins.
    params: further node parameters (e.g. {"control_period": 0.1}).
    remap: bag topic -> node input topic, for bags recorded under other names.
    max_frames: replay only the first N camera frames (0 = all).
    tick_timeout_s: give up when a decision takes longer than this [s] (wall).
    """

    input_bag: Path
    models: str = "default"
    mode: str = "greedy"
    drafter: str = "model"
    relax_bins: int = 9
    params: dict[str, Any] = field(default_factory=dict)
    remap: dict[str, str] = field(default_factory=dict)  # bag topic -> node input topic
    max_frames: int = 0
    tick_timeout_s: float = 120.0
    domain_id: int | None = None

    def __post_init__(self) -> None:
        self.input_bag = Path(self.input_bag)
        if self.mode not in ("greedy", "relaxed", "sample"):
            raise ValueError(f"mode must be greedy, relaxed or sample, got {self.mode!r}")
        if self.drafter not in ("model", "eagle", "none"):
            raise ValueError(f"drafter must be model, eagle or none, got {self.drafter!r}")
        if self.relax_bins < 0:
            raise ValueError(f"relax_bins must be >= 0, got {self.relax_bins}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {self.max_frames}")
        if self.tick_timeout_s <= 0:
            raise ValueError(f"tick_timeout_s must be > 0, got {self.tick_timeout_s}")
        if self.domain_id is not None and not 0 <= self.domain_id <= 101:
            raise ValueError(f"domain_id must be in 0..101, got {self.domain_id}")


@dataclass
class FrameOutputs:
    """What the node published in answer to one camera frame (publish order)."""

    index: int
    frame_stamp_ns: int
    tick_ns: int
    messages: list[tuple[str, bytes]]  # (topic, raw CDR)


@dataclass
class ReplayResult:
    frames: list[FrameOutputs]
    settings: dict[str, Any]
    stale_ticks: int = 0  # ticks that decided on an older frame (re-ticked; should be 0)
    wall_s: float = 0.0


def _resolve_models(models: str, drafter: str, workdir: Path) -> tuple[str, str, str]:
    """(target_dir, draft_dir, fingerprint) for a `models` setting."""
    if models in (RANDOM_MODELS, RANDOM_CHUNK_MODELS):
        from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft

        horizon = RANDOM_CHUNK_HORIZON if models == RANDOM_CHUNK_MODELS else 1
        target = make_random_checkpoint(workdir / "target", preset="test", seed=0, chunk_horizon=horizon)
        draft = ""
        if drafter != "none":
            draft = str(make_random_draft(workdir / "draft", target, kind=drafter, seed=1 if drafter == "model" else 2))
        target_dir, draft_dir = str(target), draft
    elif models == "default":
        from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR

        target_dir, draft_dir = str(DEFAULT_TARGET_DIR), "" if drafter == "none" else str(DEFAULT_DRAFT_DIR)
    else:
        target_dir, _, draft_dir = models.partition(":")
        if drafter == "none":
            draft_dir = ""
    return target_dir, draft_dir, _fingerprint(target_dir, draft_dir)


def _fingerprint(*dirs: str) -> str:
    """Hash of the weights (tensor names, dtypes, shapes, values), so a golden bag
    knows which models made it. File bytes are not used: the same tensors can be
    laid out differently in a safetensors file."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    for d in dirs:
        if not d:
            continue
        for f in sorted(Path(d).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as weights:
                for name in sorted(weights.keys()):
                    tensor = weights.get_tensor(name).contiguous()
                    digest.update(f"{f.name}:{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                    digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_input_bag(path: Path, remap: dict[str, str]) -> list[str]:
    """Bag topics to play (after remapping they are node inputs); BagError if the bag cannot drive the node."""
    summary = bag_info(path)
    present = {remap.get(t.name, t.name): t for t in summary.topics if t.count}
    missing = [t for t in REQUIRED_INPUTS if t not in present]
    if missing:
        raise BagError(f"input bag {path} lacks {', '.join(missing)}; the node needs camera, joint states and "
                       "instruction (use --remap BAG_TOPIC:=NODE_TOPIC for other names)")
    return [present[t].name for t in NODE_INPUT_TOPICS if t in present]


def _node_holds(node: Any, frame_stamp_ns: int, joints: dict[str, float]) -> bool:
    """True once the node's newest inputs are this frame and these joint positions.

    Reads the node's ``latest_inputs()`` (the snapshot its control tick uses). A
    node without it falls back to the stale-verdict check in `replay`.
    """
    snapshot = getattr(node, "latest_inputs", None)
    if snapshot is None:
        return True
    snap = snapshot()
    if snap.image is None:
        return False
    stamp = snap.image.header.stamp
    if stamp.sec * 10**9 + stamp.nanosec != frame_stamp_ns:
        return False
    return all(name in snap.joints and snap.joints[name].position == pos for name, pos in joints.items())


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay: timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.001)


def replay(config: ReplayConfig) -> ReplayResult:
    """Replay the input bag through a PolicyNode in lockstep; return its outputs per frame."""
    input_topics = _check_input_bag(config.input_bag, config.remap)
    with tempfile.TemporaryDirectory(prefix="specvla_replay_") as tmp:
        target_dir, draft_dir, fingerprint = _resolve_models(config.models, config.drafter, Path(tmp))
        return _replay(config, input_topics, target_dir, draft_dir, fingerprint)


def _replay(config: ReplayConfig, input_topics: list[str], target_dir: str, draft_dir: str,
            fingerprint: str) -> ReplayResult:
    return _LockstepReplay(config, input_topics, target_dir, draft_dir, fingerprint).run()


class _LockstepReplay:
    """The policy node and a harness node in one private graph; the harness owns /clock and
    advances it one control period at a time, after each camera frame, until the node has
    decided on that frame."""

    def __init__(self, config: ReplayConfig, input_topics: list[str], target_dir: str, draft_dir: str,
                 fingerprint: str) -> None:
        self.config = config
        self.input_topics = input_topics
        self.overrides: dict[str, Any] = {
            "autostart": False,
            "target_dir": target_dir,
            "draft_dir": draft_dir,
            "drafter": config.drafter,
            "decode.mode": config.mode,
            "decode.relax_bins": config.relax_bins,
            "narration_every_step": True,  # one narration per decision, so each frame's text is compared
            "warmup_steps": 0,
            # Lockstep: wall-clock age and deadline checks must not depend on the machine's load.
            "max_input_age": 60.0,
            "decision_deadline": 60.0,
            **config.params,
        }
        self.settings = {
            "models": config.models, "fingerprint": fingerprint, "mode": config.mode, "drafter": config.drafter,
            "relax_bins": config.relax_bins, "params": dict(config.params),
        }
        self._lock = threading.Lock()
        self.received: list[tuple[int, int, str, bytes]] = []  # (source ts, arrival, topic, raw)
        self.chosen: dict[int, tuple[int, int, int]] = {}  # verdict source ts -> (frame index, frame stamp, tick ns)
        self.joints: dict[str, float] = {}
        self.frame_stamps: list[int] = []
        self.last_frame: bytes | None = None  # the last camera frame played (serialized)
        self.ticks = 0
        self.stale = 0
        self.clock0 = 0
        self.period_ns = 0
        self.node: Any = None
        self.harness: Any = None
        self.player: BagPlayer | None = None

    # ------------------------------------------------------------------ the run
    def run(self) -> ReplayResult:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        started = time.monotonic()
        context = Context()
        # Keep the replay's /clock and inputs inside this process: a robot stack on
        # the same domain must never see them.
        saved_range = os.environ.get(_DISCOVERY_ENV)
        os.environ[_DISCOVERY_ENV] = "OFF"
        rclpy.init(context=context, domain_id=self.config.domain_id)
        executor = SingleThreadedExecutor(context=context)  # the node ticks on its own thread
        spinner = None
        try:
            self._create_nodes(context)
            _restore_env(_DISCOVERY_ENV, saved_range)
            executor.add_node(self.node)
            executor.add_node(self.harness)
            spinner = threading.Thread(target=executor.spin, name="specvla_replay_executor", daemon=True)
            spinner.start()
            self._start_node()
            self._subscribe_outputs()
            self._play()
            self._fence()
            return ReplayResult(_group(self.received, self.chosen), self.settings, self.stale,
                                time.monotonic() - started)
        finally:
            if self.player is not None:
                self.player.destroy()
            executor.shutdown()
            if spinner is not None:
                spinner.join(timeout=30)
            for n in (self.harness, self.node):
                if n is not None:
                    n.destroy_node()
            rclpy.try_shutdown(context=context)
            _restore_env(_DISCOVERY_ENV, saved_range)

    def _create_nodes(self, context: Any) -> None:
        import rclpy
        from rclpy.parameter import Parameter
        from rosgraph_msgs.msg import Clock

        from specvla_ros.ros.policy_node import PolicyNode

        self.node = PolicyNode(context=context, parameter_overrides=[Parameter("use_sim_time", value=True)] + [
            Parameter(k, value=v) for k, v in self.overrides.items()])
        self.harness = rclpy.create_node("specvla_replay", context=context)
        self.period_ns = int(round(float(self.node.get_parameter("control_period").value) * 1e9))
        self._clock_pub = self.harness.create_publisher(Clock, topics.CLOCK, qos_preset("reliable"))
        self._clock_msg = Clock

    def _set_clock(self, ns: int) -> None:
        msg = self._clock_msg()
        msg.clock.sec, msg.clock.nanosec = divmod(ns, 10**9)
        self._clock_pub.publish(msg)

    def _start_node(self) -> None:
        """Put the node on the bag's clock, then configure and activate it."""
        from rclpy.lifecycle import TransitionCallbackReturn

        self.clock0 = bag_info(self.config.input_bag).start_ns
        _wait(lambda: self._clock_pub.get_subscription_count() > 0, 30, "the node's /clock subscription")
        self._set_clock(self.clock0)
        _wait(lambda: self.node.get_clock().now().nanoseconds == self.clock0, 30, "the node to take the sim clock")
        if self.node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise BagError("the policy node failed to configure (model load); see its log")
        if self.node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise BagError("the policy node failed to activate; see its log")

    def _subscribe_outputs(self) -> None:
        subs = {}
        for topic, msgtype in OUTPUT_TYPES.items():
            cls = import_msg_class(msgtype)
            if cls is None:
                raise BagError(f"message type {msgtype} is not installed (build specvla_msgs: make setup)")
            subs[topic] = self.harness.create_subscription(cls, topic, self._collector(topic), qos_preset("reliable"),
                                                           raw=True)
        expected = [topics.resolved(topics.SAFETY), topics.GRIPPER, topics.NARRATION]
        _wait(lambda: all(subs[t].get_publisher_count() > 0 for t in expected), 30, "the node's publishers")

    def _collector(self, topic: str) -> Callable[[bytes, Any], None]:
        def store(raw: bytes, info: Any) -> None:
            with self._lock:
                self.received.append((int(info["source_timestamp"]), len(self.received), topic, bytes(raw)))
        return store

    def _play(self) -> None:
        self.player = BagPlayer(self.harness, self.config.input_bag, PlayConfig(
            rate=1e9, topics=tuple(self.input_topics), remap=dict(self.config.remap), max_bytes_per_s=0.0,
            wait_for_subscribers=1, subscriber_timeout_s=30.0))
        self.player.play(after_publish=self._after_publish)

    # ------------------------------------------------------------------ lockstep
    def _verdicts(self) -> list[tuple[int, int, str, bytes]]:
        with self._lock:
            return [r for r in self.received if r[2] == topics.resolved(topics.SAFETY)]

    def _tick_and_wait(self) -> tuple[int, bytes, int]:
        """Advance the clock one control period; -> (source ts, raw verdict, tick time) of the decision."""
        before = len(self._verdicts())
        self.ticks += 1
        tick_ns = self.clock0 + self.ticks * self.period_ns
        self._set_clock(tick_ns)
        _wait(lambda: len(self._verdicts()) > before, self.config.tick_timeout_s, f"the decision of tick {self.ticks}")
        src, _, _, raw = self._verdicts()[before]
        return src, raw, tick_ns

    def _fence(self) -> None:
        """One more decision, so everything of the last frame has arrived before it. The node plans
        once per camera frame, so the last frame goes again with a stamp 1 ns later."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        from specvla_ros.ros import qos

        if self.last_frame is None:
            self._tick_and_wait()
            return
        msg = deserialize_message(self.last_frame, Image)
        frame_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec + 1
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(frame_ns, 10**9)
        pub = self.harness.create_publisher(Image, topics.IMAGE, qos.CAMERA)
        try:
            deadline = time.monotonic() + 30.0
            while not _node_holds(self.node, frame_ns, self.joints):  # sent again until matched and received
                if time.monotonic() > deadline:
                    raise TimeoutError("replay: timed out after 30 s waiting for the node to receive the fence frame")
                pub.publish(msg)
                time.sleep(0.05)
            self._tick_and_wait()
        finally:
            self.harness.destroy_publisher(pub)

    def _after_publish(self, topic: str, msgtype: str, stamp_ns: int, raw: bytes) -> None:
        """After each bag message: keep joint states; after a camera frame, tick until the node decides on it."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image, JointState

        if topic == topics.JOINT_STATES:
            msg = deserialize_message(raw, JointState)
            self.joints.update(zip(msg.name, (float(p) for p in msg.position)))
            return
        if topic != topics.IMAGE:
            return
        if self.config.max_frames and len(self.frame_stamps) >= self.config.max_frames:
            self.player.stop()
            return
        header = deserialize_message(raw, Image).header.stamp
        frame_ns = header.sec * 10**9 + header.nanosec
        index = len(self.frame_stamps)
        if frame_ns == 0 or frame_ns in self.frame_stamps:
            raise BagError(f"camera frame {index} in {self.config.input_bag} has a zero or repeated "
                           "header stamp; regression inputs need one unique stamp per frame")
        self.frame_stamps.append(frame_ns)
        self.last_frame = raw
        _wait(lambda: _node_holds(self.node, frame_ns, self.joints), 30, f"the node to receive frame {index}")
        for _ in range(3):
            src, raw_verdict, tick_ns = self._tick_and_wait()
            if _verdict_stamp(raw_verdict) in (frame_ns, tick_ns):
                self.chosen[src] = (index, frame_ns, tick_ns)
                return
            self.stale += 1  # decided on an older frame: tick again
        raise BagError(f"the node never decided on camera frame {index} ({frame_ns} ns)")


def _verdict_stamp(raw: bytes) -> int:
    from rclpy.serialization import deserialize_message
    from specvla_msgs.msg import SafetyVerdict

    stamp = deserialize_message(raw, SafetyVerdict).header.stamp
    return stamp.sec * 10**9 + stamp.nanosec


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _group(received: list[tuple[int, int, str, bytes]], chosen: dict[int, tuple[int, int, int]]) -> list[FrameOutputs]:
    """Split the output stream into per-decision groups anchored on verdicts."""
    groups: list[tuple[int, list[tuple[str, bytes]]]] = []
    pending: list[tuple[str, bytes]] = []
    for src, _, topic, raw in sorted(received):
        if topic == topics.resolved(topics.SAFETY):
            groups.append((src, pending + [(topic, raw)]))
            pending = []
        elif topic in _COMMAND_TOPICS:
            pending.append((topic, raw))
        elif groups:
            groups[-1][1].append((topic, raw))
    frames = [FrameOutputs(*chosen[src], msgs) for src, msgs in groups if src in chosen]
    return sorted(frames, key=lambda f: f.index)


def write_outputs(result: ReplayResult, path: str | Path, input_bag: Path, storage: str = "mcap") -> Path:
    """Write a replay's outputs as a bag; bag time = the frame's stamp (+ order within the frame)."""
    store = make_typestore(OUTPUT_TYPES.values())
    messages = []
    for frame in result.frames:
        if len(frame.messages) > _GROUP_SLOTS:
            raise BagError(f"frame {frame.index} produced {len(frame.messages)} outputs (max {_GROUP_SLOTS})")
        for slot, (topic, raw) in enumerate(frame.messages):
            messages.append((topic, OUTPUT_TYPES[topic], frame.frame_stamp_ns + slot, raw))
    meta = {
        "version": 1,
        "input_bag": Path(input_bag).name,
        "frames": [[f.index, f.frame_stamp_ns, f.tick_ns] for f in result.frames],
        "settings": result.settings,
        "stale_ticks": result.stale_ticks,
    }
    if not messages:
        raise BagError("the replay produced no outputs")
    return write_bag(path, messages, storage=storage, typestore=store, custom_data={METADATA_KEY: json.dumps(meta)})


# --------------------------------------------------------------------------- comparison


@dataclass
class Difference:
    frame: int
    frame_stamp_ns: int
    topic: str
    field: str
    expected: Any
    got: Any
    tolerance: float | None = None

    def line(self) -> str:
        tol = f" (tolerance {self.tolerance:g})" if self.tolerance is not None else ""
        return f"frame {self.frame} [{self.frame_stamp_ns}] {self.topic} {self.field}: expected {self.expected!r}, got {self.got!r}{tol}"


@dataclass
class RegressionReport:
    golden: str
    candidate: str
    mode: str
    frames_compared: int
    messages_compared: int
    differences: list[Difference]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return json.loads(json.dumps(out, default=_jsonable))

    def format(self, limit: int = 50) -> str:
        head = (f"regression {'PASSED' if self.ok else 'FAILED'}: {self.frames_compared} frames, "
                f"{self.messages_compared} messages compared ({self.mode} mode), {len(self.differences)} differences")
        lines = [head] + [f"  note: {n}" for n in self.notes]
        lines += ["  " + d.line() for d in self.differences[:limit]]
        if len(self.differences) > limit:
            lines.append(f"  ... and {len(self.differences) - limit} more (see the JSON report)")
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclass
class OutputBag:
    meta: dict[str, Any]
    frames: dict[int, dict[str, list[Any]]]  # frame stamp -> topic -> messages (publish order)
    index: dict[int, int]  # frame stamp -> frame index


def load_outputs(path: str | Path) -> OutputBag:
    """Read a bag written by write_outputs, messages deserialized."""
    from rosbags.highlevel import AnyReader
    from rosbags.highlevel.anyreader import AnyReaderError

    from specvla_ros.ros.bag.io import iter_messages, open_bag

    with open_bag(path) as reader:  # clear errors for missing/corrupt bags
        custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
    store = make_typestore(OUTPUT_TYPES.values())
    try:
        with AnyReader([Path(path)], default_typestore=store) as reader:
            meta_text = custom.get(METADATA_KEY)
            if not meta_text:
                raise BagError(f"{path} is not a regression output bag (no {METADATA_KEY} in its metadata)")
            meta = json.loads(meta_text)
            index = {int(stamp): int(i) for i, stamp, _ in meta["frames"]}
            frames: dict[int, dict[str, list[Any]]] = {stamp: {} for stamp in index}
            for conn, t, raw in iter_messages(reader, path):
                stamp = next((t - s for s in range(_GROUP_SLOTS) if t - s in index), None)
                if stamp is None:
                    raise BagError(f"{path}: message on {conn.topic} at {t} ns belongs to no frame")
                frames[stamp].setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    except AnyReaderError as exc:
        raise BagError(f"cannot read {path}: {exc}") from None
    return OutputBag(meta, frames, index)


#: Exact (greedy) comparisons allow this much [robot units] between action values: rounding,
#: far below one action bin (about 1e-4 of the range), so a different token still shows.
EXACT_FLOAT_TOLERANCE = 1e-9


def _floats_differ(a: Sequence[float], b: Sequence[float], tol: float) -> bool:
    if len(a) != len(b):
        return True
    for x, y in zip(a, b):
        x, y = float(x), float(y)
        if math.isnan(x) or math.isnan(y):
            if math.isnan(x) != math.isnan(y):
                return True
        elif abs(x - y) > tol:
            return True
    return False


def _msg_fields(topic: str, msg: Any) -> dict[str, tuple[Any, bool]]:
    """Compared fields of one output message: name -> (value, is_action)."""
    if topic == topics.resolved(topics.SAFETY):
        return {
            "status": (int(msg.status), False), "status_name": (msg.status_name, False),
            "reason": (msg.reason, False), "raw_action": ([float(v) for v in msg.raw_action], True),
            "joint_command": ([float(v) for v in msg.joint_command], True),
            "gripper_command": ([float(msg.gripper_command)], True), "scale": ([float(msg.scale)], True),
        }
    if topic == topics.TRAJECTORY:
        out: dict[str, tuple[Any, bool]] = {"joint_names": (list(msg.joint_names), False),
                                            "points": (len(msg.points), False)}
        for i, p in enumerate(msg.points):
            out[f"points[{i}].positions"] = ([float(v) for v in p.positions], True)
            out[f"points[{i}].time_from_start"] = ((p.time_from_start.sec, p.time_from_start.nanosec), False)
        return out
    if topic in (topics.GRIPPER, topics.FORWARD):
        return {"data": ([float(v) for v in msg.data], True)}
    if topic == topics.NARRATION:
        return {"data": (msg.data, False)}
    if topic == topics.resolved(topics.STATS):
        return {"mode": (msg.mode, False)}
    return {}


def compare(golden: str | Path, candidate: str | Path, action_tolerance: float = 0.02,
            exact: bool | None = None) -> RegressionReport:
    """Diff two output bags frame by frame, message by message.

    exact: compare actions exactly (default: when the golden's mode is greedy): the same tokens,
    so the same values up to ``EXACT_FLOAT_TOLERANCE`` (the last bits of the IK and the gate's
    floating point differ between CPUs and library builds); otherwise action values (raw
    actions, joint and gripper commands) may differ by action_tolerance. Verdict status,
    narration and trajectory layout always match exactly.
    """
    if action_tolerance < 0:
        raise ValueError(f"action_tolerance must be >= 0, got {action_tolerance}")
    gold, cand = load_outputs(golden), load_outputs(candidate)
    mode = str(gold.meta.get("settings", {}).get("mode", "greedy"))
    exact = (mode == "greedy") if exact is None else exact
    tol = EXACT_FLOAT_TOLERANCE if exact else action_tolerance
    diffs: list[Difference] = []
    notes: list[str] = []
    gs, cs = gold.meta.get("settings", {}), cand.meta.get("settings", {})
    for key in ("mode", "drafter", "fingerprint"):
        if gs.get(key) != cs.get(key):
            notes.append(f"settings differ: {key} golden={gs.get(key)!r} candidate={cs.get(key)!r}")
    if cand.meta.get("stale_ticks"):
        notes.append(f"candidate run re-ticked {cand.meta['stale_ticks']} stale decision(s)")
    compared = 0
    for stamp, frame_index in sorted(gold.index.items(), key=lambda kv: kv[1]):
        expected = gold.frames.get(stamp, {})
        got = cand.frames.get(stamp)
        if got is None:
            diffs.append(Difference(frame_index, stamp, "*", "frame", "present", "missing from candidate"))
            continue
        for topic in sorted(set(expected) | set(got)):
            e_msgs, g_msgs = expected.get(topic, []), got.get(topic, [])
            if len(e_msgs) != len(g_msgs):
                diffs.append(Difference(frame_index, stamp, topic, "message count", len(e_msgs), len(g_msgs)))
            for e_msg, g_msg in zip(e_msgs, g_msgs):
                compared += 1
                e_fields, g_fields = _msg_fields(topic, e_msg), _msg_fields(topic, g_msg)
                for name, (e_val, is_action) in e_fields.items():
                    g_val = g_fields.get(name, (None, is_action))[0]
                    if is_action:
                        if _floats_differ(e_val, g_val, tol):
                            diffs.append(Difference(frame_index, stamp, topic, name, e_val, g_val,
                                                    None if exact else tol))
                    elif name == "reason" and not exact:
                        continue  # reasons quote measured numbers that move within the tolerance
                    elif e_val != g_val:
                        diffs.append(Difference(frame_index, stamp, topic, name, e_val, g_val))
    for stamp in sorted(set(cand.index) - set(gold.index)):
        diffs.append(Difference(cand.index[stamp], stamp, "*", "frame", "absent", "extra in candidate"))
    return RegressionReport(str(golden), str(candidate), mode, len(gold.index), compared, diffs, notes)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `specvla_bag regress` (also used by this module's main)."""
    parser.add_argument("input_bag", help="bag with camera, instruction and joint states")
    parser.add_argument("--golden", required=True, help="golden output bag to compare with (or to create with --update)")
    parser.add_argument("--update", action="store_true", help="write the golden bag instead of comparing")
    parser.add_argument("--output", default=None, help="keep this run's outputs as a bag here")
    parser.add_argument("--report", default=None, help="write the JSON report here")
    parser.add_argument("--models", default=None,
                        help="default | random | TARGET_DIR[:DRAFT_DIR] (default: what the golden was made with)")
    parser.add_argument("--mode", choices=("greedy", "relaxed", "sample"), default=None)
    parser.add_argument("--drafter", choices=("model", "eagle", "none"), default=None)
    parser.add_argument("--relax-bins", type=int, default=None)
    parser.add_argument("--action-tolerance", type=float, default=0.02,
                        help="relaxed/sample mode: allowed difference of action values (default 0.02)")
    parser.add_argument("--remap", nargs="+", default=[], metavar="BAG_TOPIC:=NODE_TOPIC",
                        help="feed a bag topic to a node input of another name")
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")


def run_cli(args: argparse.Namespace) -> int:
    golden = Path(args.golden)
    settings: dict[str, Any] = {}
    if not args.update:
        settings = load_outputs(golden).meta.get("settings", {})
    elif golden.exists():
        raise BagError(f"golden bag {golden} exists already; delete it to regenerate")
    config = ReplayConfig(
        input_bag=Path(args.input_bag),
        models=args.models or settings.get("models", "default"),
        mode=args.mode or settings.get("mode", "greedy"),
        drafter=args.drafter or settings.get("drafter", "model"),
        relax_bins=args.relax_bins if args.relax_bins is not None else int(settings.get("relax_bins", 9)),
        params=dict(settings.get("params", {})),
        remap=parse_mapping(args.remap, "remap"),
        max_frames=args.max_frames,
    )
    result = replay(config)
    if args.update:
        write_outputs(result, golden, config.input_bag, args.storage)
        print(f"wrote golden {golden}: {len(result.frames)} frames in {result.wall_s:.1f} s")
        return 0
    with tempfile.TemporaryDirectory(prefix="specvla_regress_") as tmp:
        out = Path(args.output) if args.output else Path(tmp) / "candidate"
        write_outputs(result, out, config.input_bag, args.storage)
        report = compare(golden, out, args.action_tolerance)
    print(report.format())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m specvla_ros.ros.bag.regression` (same as `specvla_bag regress`)."""
    parser = argparse.ArgumentParser(prog="specvla_bag regress", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except (BagError, ValueError, FileNotFoundError, TimeoutError) as exc:
        print(f"specvla_bag regress: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
