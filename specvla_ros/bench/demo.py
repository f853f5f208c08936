"""The main job (`make demo`): the simulated Panda driven by specvla_node.

Starts the same graph as ``launch/sim.launch.py`` (``specvla_sim`` + ``specvla_node``
with the shipped models and ``config/specvla.yaml``) as processes, then an
observer node resets the simulator through ``/specvla_sim/reset`` for a few
episodes, watches the topics a user would watch (camera, narration, safety
verdicts, decode stats, task status), prints a table and writes a GIF of the
camera view with the narration overlaid.

    python -m specvla_ros.bench.demo --episodes 3 --out out/demo
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

TASK_CYCLE = ("reach", "push", "pick")
DEMO_SEED_BASE = 2_000_000  # layouts not used for training


@dataclass
class EpisodeLog:
    task: str
    seed: int
    instruction: str = ""
    done: bool = False
    success: bool = False
    collision: bool = False
    steps: int = 0
    decision_ms: list[float] = field(default_factory=list)
    emitted: int = 0
    target_passes: int = 0
    halts: dict[str, int] = field(default_factory=dict)
    narrations: list[str] = field(default_factory=list)


def _params_file(base: Path, out_dir: Path, task: str, seed: int, mode: str, target: str | None,
                 draft: str | None) -> Path:
    """The shipped parameter file with the demo's overrides (lockstep, so slow CPUs still run fairly)."""
    cfg = yaml.safe_load(base.read_text())
    cfg["specvla_sim"]["ros__parameters"].update(lockstep=True, task=task, seed=seed)
    node = cfg["specvla_node"]["ros__parameters"]
    node.setdefault("decode", {})["mode"] = mode
    if target:
        node["target_dir"] = str(Path(target).resolve())
    if draft is not None:
        node["draft_dir"] = str(Path(draft).resolve()) if draft else ""
    path = out_dir / "demo_params.yaml"
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

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image
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
        self.node.create_subscription(Image, "/camera/image_raw", self._on_image, qos.CAMERA)
        self.node.create_subscription(String, "/specvla/narration", self._on_narration, qos.STATUS)
        self.node.create_subscription(SafetyVerdict, "/specvla_node/safety", self._on_safety, qos.STATUS)
        self.node.create_subscription(SpecDecodeStats, "/specvla_node/spec_stats", self._on_stats, qos.STATUS)
        self.node.create_subscription(TaskStatus, "/specvla_sim/task_status", self._on_status, qos.STATUS)
        self.reset_client = self.node.create_client(ResetEpisode, "/specvla_sim/reset")
        self._reset_type = ResetEpisode
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_image(self, msg) -> None:
        frame = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1)[..., :3]
        with self.lock:
            ep = self.episode
            if ep is not None and not ep.done:
                footer = f"{ep.task} | step {ep.steps}"
                self.frames.append(_overlay(frame, self.narration or "...", footer))

    def _on_narration(self, msg) -> None:
        with self.lock:
            self.narration = msg.data
            if self.episode is not None and not self.episode.done:
                self.episode.narrations.append(msg.data)

    def _on_safety(self, msg) -> None:
        self.active.set()
        with self.lock:
            ep = self.episode
            if ep is not None and not ep.done and msg.status != 0:
                ep.halts[msg.status_name] = ep.halts.get(msg.status_name, 0) + 1

    def _on_stats(self, msg) -> None:
        self.active.set()
        with self.lock:
            ep = self.episode
            if ep is not None and not ep.done and msg.target_passes > 0:
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
                if msg.done:
                    ep.done = True

    def run_episode(self, task: str, seed: int, timeout_s: float) -> EpisodeLog:
        if not self.reset_client.wait_for_service(timeout_sec=60.0):
            raise RuntimeError("/specvla_sim/reset did not appear within 60 s")
        log = EpisodeLog(task=task, seed=seed)
        with self.lock:
            self.episode = log
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


def format_table(logs: list[EpisodeLog]) -> str:
    rows = ["| # | task | instruction | success | collision | steps | decision p50 ms | accepted length | halts |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(logs, 1):
        p50 = f"{np.median(e.decision_ms):.1f}" if e.decision_ms else "-"
        acc = f"{e.emitted / e.target_passes:.2f}" if e.target_passes else "-"
        halts = ", ".join(f"{k} x{v}" for k, v in sorted(e.halts.items())) or "none"
        rows.append(f"| {i} | {e.task} | {e.instruction} | {'yes' if e.success else 'no'} | "
                    f"{'yes' if e.collision else 'no'} | {e.steps} | {p50} | {acc} | {halts} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from specvla_ros.ros.bringup import GRAPHS, command_for
    from specvla_ros.ros.params import default_config_path

    p = argparse.ArgumentParser(prog="specvla_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=3, help="episodes, cycling reach/push/pick")
    p.add_argument("--out", default="out/demo", help="directory for demo.gif and table.md")
    p.add_argument("--mode", default="greedy", choices=("greedy", "relaxed", "sample"), help="decode accept rule")
    p.add_argument("--target", default=None, help="target checkpoint dir (default: the shipped model)")
    p.add_argument("--draft", default=None, help="draft checkpoint dir (default: shipped; '' = no speculation)")
    p.add_argument("--episode-timeout", type=float, default=240.0, help="wall seconds per episode at most")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print("specvla_demo: --episodes must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env.setdefault("ROS_DOMAIN_ID", "77")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_demo_log_"))
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    params = _params_file(default_config_path(), out, TASK_CYCLE[0], DEMO_SEED_BASE, args.mode, args.target, args.draft)

    procs: list[subprocess.Popen] = []
    observer: _Observer | None = None
    logs: list[EpisodeLog] = []
    try:
        for entry in GRAPHS["sim"]:
            cmd = command_for(entry, params, [])
            print(f"demo: starting {entry.name}", flush=True)
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True,
                                          stdout=open(out / f"{entry.name}.log", "w"), stderr=subprocess.STDOUT))
        observer = _Observer()
        print("demo: waiting for specvla_node to load its models and start deciding...", flush=True)
        t0 = time.monotonic()
        while not observer.active.wait(1.0):
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() - t0 > 300:
                print(f"demo: the graph did not come up (see {out}/*.log)", file=sys.stderr)
                return 1
        for i in range(args.episodes):
            task = TASK_CYCLE[i % len(TASK_CYCLE)]
            seed = DEMO_SEED_BASE + i
            log = observer.run_episode(task, seed, args.episode_timeout)
            logs.append(log)
            print(f"demo: episode {i + 1}: {task} seed {seed}: {'success' if log.success else 'no success'}"
                  f" in {log.steps} steps; '{log.instruction}'", flush=True)
    finally:
        if observer is not None:
            observer.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    table = format_table(logs)
    print(table)
    all_ms = [x for e in logs for x in e.decision_ms]
    passes = sum(e.target_passes for e in logs)
    summary = (f"success {sum(e.success for e in logs)}/{len(logs)}, collisions {sum(e.collision for e in logs)}, "
               f"decision latency p50 {np.median(all_ms) if all_ms else float('nan'):.1f} ms "
               f"p95 {np.percentile(all_ms, 95) if all_ms else float('nan'):.1f} ms, "
               f"accepted length {sum(e.emitted for e in logs) / passes if passes else float('nan'):.2f} tokens/pass")
    print(summary)
    (out / "table.md").write_text(table + "\n\n" + summary + "\n")
    if observer is not None and observer.frames:
        import imageio.v2 as imageio

        frames = observer.frames[:: max(1, len(observer.frames) // 300)]
        imageio.mimsave(out / "demo.gif", frames, duration=0.2, loop=0)
        print(f"demo: wrote {out / 'demo.gif'} ({len(frames)} frames) and {out / 'table.md'}")
    return 0 if logs else 1


if __name__ == "__main__":
    sys.exit(main())
