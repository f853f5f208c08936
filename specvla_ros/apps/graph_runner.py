"""Run the simulated robot and specvla_node as a real ROS graph and watch it.

``SimGraph`` starts the graph of ``launch/sim.launch.py`` (``specvla_sim`` +
``specvla_node``, the shipped parameter file with overrides) as processes, the
same way ``specvla_bringup`` does, plus an observer node in this process that
resets episodes through ``/specvla_sim/reset`` and listens to what a user
would watch: camera, narration, safety verdicts, decode stats, task status.
Used by the demo (``make demo``) and by ``specvla_eval --backend ros``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from specvla_ros.core.types import PANDA_JOINT_NAMES
from specvla_ros.ros import topics


@dataclass
class EpisodeLog:
    task: str
    seed: int
    instruction: str = ""
    done: bool = False
    success: bool = False
    progress: str = ""  # the success test's last measurement (why it failed)
    collision: bool = False
    steps: int = 0
    decision_ms: list[float] = field(default_factory=list)
    emitted: int = 0
    target_passes: int = 0
    halts: dict[str, int] = field(default_factory=dict)
    verdicts: int = 0
    unsafe: int = 0
    narrations: list[str] = field(default_factory=list)
    points_cut: int = 0  # plan points the trajectory gate cut
    joint_positions: list[list[float]] = field(default_factory=list)  # arm joints, one row per new joint state


def write_params_file(base: Path, path: Path, node: dict, sim: dict) -> Path:
    """``base`` (the shipped parameter file) with overrides merged in; nested dicts merge key by key."""
    cfg = yaml.safe_load(base.read_text())

    def merge(into: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(cfg["specvla_node"]["ros__parameters"], node)
    merge(cfg["specvla_sim"]["ros__parameters"], sim)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _overlay(frame: np.ndarray, text: str, footer: str, scale: int = 3) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 36), (20, 20, 20))
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, img.height + 3), text[:60], fill=(255, 255, 255))
    draw.text((6, img.height + 19), footer[:60], fill=(170, 200, 255))
    return np.asarray(canvas)


class _Observer:
    """An rclpy node (in this process) that watches the graph and drives episode resets."""

    def __init__(self, record_frames: bool) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState
        from specvla_msgs.msg import SafetyVerdict, SpecDecodeStats, TaskStatus
        from specvla_msgs.srv import ResetEpisode
        from std_msgs.msg import String

        from specvla_ros.ros import qos

        rclpy.init()
        self._rclpy = rclpy
        self.node = Node("specvla_demo")
        self.lock = threading.Lock()
        self.episode: EpisodeLog | None = None
        self.frames: list[np.ndarray] = []
        self.narration = ""
        self.last_status = None
        self.active = threading.Event()
        self.record_frames = record_frames
        self.node.create_subscription(Image, topics.IMAGE, self._on_image, qos.CAMERA)
        self.node.create_subscription(String, topics.NARRATION, self._on_narration, qos.STATUS)
        self.node.create_subscription(SafetyVerdict, topics.resolved(topics.SAFETY), self._on_safety, qos.STATUS)
        self.node.create_subscription(SpecDecodeStats, topics.resolved(topics.STATS), self._on_stats, qos.STATUS)
        self.node.create_subscription(TaskStatus, topics.SIM_STATUS, self._on_status, qos.STATUS)
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, qos.JOINT_STATES)
        self._joints_stamp = 0  # [ns] newest joint state recorded
        self._episode_start = 0  # [ns] when this episode's reset was asked for (the sim stamps with the same clock)
        self.reset_client = self.node.create_client(ResetEpisode, topics.SIM_RESET)
        self._reset_type = ResetEpisode
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_image(self, msg) -> None:
        frame = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1)[..., :3]
        with self.lock:
            ep = self.episode
            if self.record_frames and ep is not None and not ep.done:
                footer = f"{ep.task} | step {ep.steps}"
                self.frames.append(_overlay(frame, self.narration or "...", footer))

    def _on_joints(self, msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            ep = self.episode
            # a state resent (same stamp: the arm has not moved) or from before this episode's reset
            if ep is None or ep.done or stamp <= max(self._joints_stamp, self._episode_start):
                return
            self._joints_stamp = stamp
            try:
                ep.joint_positions.append([float(msg.position[msg.name.index(n)]) for n in PANDA_JOINT_NAMES])
            except ValueError:  # not the arm's joints
                return

    def _on_narration(self, msg) -> None:
        with self.lock:
            self.narration = msg.data
            if self.episode is not None and not self.episode.done:
                self.episode.narrations.append(msg.data)

    def _on_safety(self, msg) -> None:
        self.active.set()
        with self.lock:
            ep = self.episode
            if ep is None or ep.done:
                return
            ep.verdicts += 1
            if msg.status >= 10:  # HALT_* (SafetyStatus.is_halt)
                ep.unsafe += 1
            if msg.status != 0:
                ep.halts[msg.status_name] = ep.halts.get(msg.status_name, 0) + 1

    def _on_stats(self, msg) -> None:
        self.active.set()
        with self.lock:
            ep = self.episode
            if ep is not None and not ep.done and msg.target_passes > 0:
                ep.points_cut += int(msg.points_cut)
                ep.decision_ms.append(1e3 * msg.total_time)
                ep.emitted += msg.emitted
                ep.target_passes += msg.target_passes

    def _on_status(self, msg) -> None:
        with self.lock:
            self.last_status = msg
            ep = self.episode
            if ep is not None and not ep.done and msg.seed == ep.seed and msg.task == ep.task:
                ep.steps = int(msg.step)
                ep.collision = ep.collision or bool(msg.collision)
                ep.success = ep.success or bool(msg.success)
                if not ep.success:
                    ep.progress = str(msg.progress)
                if msg.done:
                    ep.done = True

    def run_episode(self, task: str, seed: int, timeout_s: float) -> EpisodeLog:
        if not self.reset_client.wait_for_service(timeout_sec=60.0):
            raise RuntimeError(f"{topics.SIM_RESET} did not appear within 60 s")
        log = EpisodeLog(task=task, seed=seed)
        with self.lock:
            self.episode = log
            self._episode_start = self.node.get_clock().now().nanoseconds
            self.narration = ""
        req = self._reset_type.Request(task=task, seed=seed)
        fut = self.reset_client.call_async(req)
        deadline = time.monotonic() + 60.0
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not fut.done() or not fut.result().success:
            raise RuntimeError(f"reset failed: {fut.result().message if fut.done() else 'timeout'}")
        log.instruction = fut.result().instruction
        deadline = time.monotonic() + timeout_s
        while not log.done and time.monotonic() < deadline:
            time.sleep(0.1)
        with self.lock:
            log.done = True
        return log

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self._rclpy.shutdown()


class SimGraph:
    """Context manager: the sim + node graph up, an observer attached; ``run_episode`` drives it.

    node / sim: parameter overrides for specvla_node / specvla_sim (merged into config/specvla.yaml).
    The simulator runs in lockstep (one control period of physics per command), so a
    slow CPU changes latency, not what the robot does.
    """

    def __init__(self, out_dir: Path, node: dict | None = None, sim: dict | None = None,
                 record_frames: bool = False, domain_id: int | None = None, startup_timeout_s: float = 300.0) -> None:
        self.out_dir = Path(out_dir)
        # In lockstep the world waits for each command, so a slow decision or a frame
        # older than usual is still current: relax the wall-clock deadline and
        # freshness limits meant for a real, moving robot (a caller may override them).
        self.node_overrides = {"decision_deadline": 30.0, "max_input_age": 10.0, **(node or {})}
        self.sim_overrides = {"lockstep": True, **(sim or {})}
        self.record_frames = record_frames
        self.domain_id = domain_id
        self.startup_timeout_s = startup_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.observer: _Observer | None = None

    def __enter__(self) -> "SimGraph":
        from specvla_ros.ros.bringup import GRAPHS, command_for
        from specvla_ros.ros.params import default_config_path

        self.out_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        # the caller's ROS_DOMAIN_ID wins; else a domain of its own, away from a user's default 0
        env["ROS_DOMAIN_ID"] = str(self.domain_id if self.domain_id is not None else env.get("ROS_DOMAIN_ID", "88"))
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_graph_log_"))
        os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
        params = write_params_file(default_config_path(), self.out_dir / "graph_params.yaml",
                                   self.node_overrides, self.sim_overrides)
        try:
            for entry in GRAPHS["sim"]:
                log = open(self.out_dir / f"{entry.name}.log", "w")
                self.procs.append(subprocess.Popen(command_for(entry, params, []), env=env, start_new_session=True,
                                                   stdout=log, stderr=subprocess.STDOUT))
                log.close()
            self.observer = _Observer(self.record_frames)
            t0 = time.monotonic()
            while not self.observer.active.wait(1.0):
                if any(p.poll() is not None for p in self.procs) or time.monotonic() - t0 > self.startup_timeout_s:
                    raise RuntimeError(f"the sim + node graph did not come up; see {self.out_dir}/*.log")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def frames(self) -> list[np.ndarray]:
        return self.observer.frames if self.observer is not None else []

    def run_episode(self, task: str, seed: int, timeout_s: float = 240.0) -> EpisodeLog:
        if self.observer is None:
            raise RuntimeError("SimGraph is not running (use it in a with block)")
        return self.observer.run_episode(task, seed, timeout_s)

    def __exit__(self, *exc: object) -> None:
        if self.observer is not None:
            self.observer.close()
            self.observer = None
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
