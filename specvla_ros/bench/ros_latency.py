"""specvla_node as a robot drives it: the node, a sensor driver and this probe
in three processes, camera and joint states at real rates, idle and with both
cores busy. Prints one JSON report.

    python -m specvla_ros.bench.ros_latency                         # 640x480 @ 30 Hz, joints @ 250 Hz, 60 s per phase
    python -m specvla_ros.bench.ros_latency --duration 300 --json out.json

Processes: ``specvla_node`` (its own process, with its inference process
behind it), ``sensor_feeder`` (camera + joint states), and this one (probe:
instruction, e-stop, and subscriptions to the command, verdict and timing
topics). All three use the shipped Fast DDS shared-memory profile unless
FASTDDS_DEFAULT_PROFILES_FILE is set (--no-shm: Fast DDS defaults).

Per phase (idle; busy = two processes spinning on both cores):
  bare_step       Policy.step in a fresh process without ROS, on the same frame, under the same load,
                  half before the node starts and half after it stops
  node_decision   the node's request -> decision (~/timing decision_time), and its ratio to bare_step
  overhead        command received - frame stamp - frame_age - decision_time: everything the node and the
                  transport add between the tick taking the frame and the command arriving
  intervals       between consecutive verdicts (every control period must get one)
  statuses        verdict counts by status (HALT_DEADLINE and HALT_STALE_INPUT must stay 0)
  estop           e-stop message -> first HALT_ESTOP verdict / hold command, and any non-e-stop
                  verdict between the hold and the release (must be 0)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from specvla_ros.ros import topics


def _pct(values: list[float], scale: float = 1e3) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=np.float64) * scale
    return {"n": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2), "max_ms": round(float(arr.max()), 2)}


def _checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    if args.target_dir:
        return args.target_dir, args.draft_dir or ""
    from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR, shipped_models_present

    if shipped_models_present() and args.preset is None:
        return str(DEFAULT_TARGET_DIR), str(DEFAULT_DRAFT_DIR)
    from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft

    target = make_random_checkpoint(tmp / "target", preset=args.preset or "default", seed=0)
    draft = make_random_draft(tmp / "draft", target, kind="model", seed=1)
    return str(target), str(draft)


# --------------------------------------------------------------------------- bare Policy.step


def bare_steps(values: dict[str, Any], width: int, height: int, n: int) -> list[float]:
    """Policy.step timings in a fresh process without ROS (the feeder's frame, resized as the node does).

    A new frame id each call, so vision runs every time, as in the node.
    """
    cmd = [sys.executable, "-m", "specvla_ros.bench.ros_latency", "--bare-steps", str(n),
           "--bare-config", json.dumps(values), "--width", str(width), "--height", str(height)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bare_main(n: int, values: dict[str, Any], width: int, height: int) -> list[float]:
    from specvla_ros.bench.sensor_feeder import HOME_Q
    from specvla_ros.core.policy import Policy
    from specvla_ros.core.types import Observation, RobotState
    from specvla_ros.core.models.frame_resize import resize_frame  # the resize the node applies
    from specvla_ros.ros.policy_node import policy_config

    threads = int(values.get("inference.threads", 0))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    policy = Policy(policy_config(values))
    policy.warmup(n=int(values.get("warmup_steps", 2)))
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb = resize_frame(frame, tuple(policy.image_size), policy.image_resize)
    q = np.asarray(HOME_Q)
    state = RobotState(q=q, gripper=0.04)
    times = []
    for i in range(n):
        obs = Observation(image=rgb, instruction="pick up the red cube",
                          proprio=np.r_[q, 0.04].astype(np.float32), frame_id=i + 1)
        t0 = time.perf_counter()
        policy.step(obs, state)
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- processes


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """{'decode.mode': x} -> {'decode': {'mode': x}} for a ROS parameter file."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        level = out
        for part in parents:
            level = level.setdefault(part, {})
        level[leaf] = value
    return out


def _script(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def start_node(values: dict[str, Any], tmp: Path) -> subprocess.Popen:
    import yaml

    from specvla_ros.ros import params

    path = tmp / "bench_params.yaml"
    node_values = {k: v for k, v in values.items() if k in params.SPECS}
    node_values["autostart"] = True
    path.write_text(yaml.safe_dump({"specvla_node": {"ros__parameters": _nested(node_values)}}))
    log = open(tmp / "node.log", "w")  # noqa: SIM115 — lives as long as the process
    return subprocess.Popen(_script("specvla_node", "specvla_ros.ros.policy_node") +
                            ["--ros-args", "--params-file", str(path)], stdout=log, stderr=subprocess.STDOUT)


def start_feeder(args: argparse.Namespace) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "specvla_ros.bench.sensor_feeder", "--camera-hz",
                             str(args.camera_hz), "--joint-hz", str(args.joint_hz), "--width", str(args.width),
                             "--height", str(args.height)], stdout=subprocess.PIPE, text=True)


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def _bare_under(phase: str, args: argparse.Namespace, values: dict[str, Any], n: int) -> list[float]:
    hogs = start_hogs(args.busy_cores) if phase == "busy" else []
    try:
        return bare_steps(values, args.width, args.height, n)
    finally:
        _kill(hogs)


def start_hogs(n: int) -> list[subprocess.Popen]:
    """Processes that keep ``n`` cores busy (plain spinning, default priority)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the probe


@dataclass
class Recorder:
    """What the probe saw (received timestamps are DDS arrival times on the system clock, ns)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    commands: list[tuple[int, int, int]] = field(default_factory=list)  # (source ns, received ns, n points)
    verdicts: list[tuple[int, int, int, int]] = field(default_factory=list)  # (source, received, status, stamp)
    timing: dict[int, Any] = field(default_factory=dict)  # frame stamp ns -> ControlTiming

    def window(self, t0_ns: int, t1_ns: int) -> tuple[list, list, dict]:
        with self.lock:
            cmds = [c for c in self.commands if t0_ns <= c[0] <= t1_ns]
            verdicts = [v for v in self.verdicts if t0_ns <= v[0] <= t1_ns]
            return cmds, verdicts, dict(self.timing)


def _phase_report(rec: Recorder, t0_ns: int, t1_ns: int, period: float, status_names: dict[int, str]) -> dict:
    cmds, verdicts, timing = rec.window(t0_ns, t1_ns)
    statuses: dict[str, int] = {}
    for v in verdicts:
        name = status_names.get(v[2], str(v[2]))
        statuses[name] = statuses.get(name, 0) + 1
    sources = np.array([v[0] for v in verdicts], dtype=np.int64)
    intervals = (np.diff(sources) * 1e-9).tolist() if sources.size > 1 else []
    cmd_src = np.array([c[0] for c in cmds], dtype=np.int64)
    decisions, overhead, policy, to_plan = [], [], [], []
    for src, _recv, status, stamp in verdicts:
        t = timing.get(stamp)
        if status >= 20 or t is None or cmd_src.size == 0:  # input holds are not decisions
            continue
        i = int(np.searchsorted(cmd_src, src, side="right")) - 1  # the command published just before
        if i < 0:
            continue
        cmd_recv = cmds[i][1]
        decisions.append(t.decision_time)
        policy.append(t.policy_time)
        to_plan.append((cmd_recv - stamp) * 1e-9)
        if np.isfinite(t.frame_age):
            overhead.append((cmd_recv - stamp) * 1e-9 - t.frame_age - t.decision_time)
    late = [i for i in intervals if i > period + 0.020]
    # the controller ran out of plan: the next command came after the last one's final point was due
    starved = 0
    for (_, recv, n), (_, nxt, _) in zip(cmds, cmds[1:]):
        gap = (nxt - recv) * 1e-9 - max(n, 1) * period
        if n > 0 and gap > 0.020:
            starved += int(np.ceil(gap / period))
    points = [c[2] for c in cmds if c[2] > 0]
    return {
        "seconds": round((t1_ns - t0_ns) * 1e-9, 1),
        "verdicts": len(verdicts), "verdicts_expected": int(round((t1_ns - t0_ns) * 1e-9 / period)),
        "statuses": statuses,
        "halt_deadline": statuses.get("HALT_DEADLINE", 0), "halt_stale_input": statuses.get("HALT_STALE_INPUT", 0),
        "node_decision": _pct(decisions), "policy_in_server": _pct(policy), "overhead": _pct(overhead),
        "camera_to_plan": _pct(to_plan), "starved_periods": starved,
        "points_per_plan": round(float(np.mean(points)), 2) if points else 0.0,
        "intervals": {**_pct(intervals), "over_period_plus_20ms": len(late)},
    }


def _estop_trials(rec: Recorder, estop_pub: Any, n: int, period: float) -> dict:
    from std_msgs.msg import Bool

    verdict_lat, command_lat, leaks = [], [], 0
    for _ in range(n):
        time.sleep(period * (1.0 + np.random.default_rng().random()))  # any phase of the control tick
        t_press = time.time_ns()
        estop_pub.publish(Bool(data=True))
        deadline = time.monotonic() + 5.0
        first = None
        while time.monotonic() < deadline and first is None:
            with rec.lock:
                first = next((v for v in rec.verdicts if v[0] >= t_press and v[2] == 21), None)
            time.sleep(0.001)
        time.sleep(3 * period)  # held for a while: nothing else may come out
        t_release = time.time_ns()
        estop_pub.publish(Bool(data=False))
        if first is None:
            leaks += 1
            continue
        with rec.lock:
            after = [v for v in rec.verdicts if first[0] <= v[0] < t_release]
            # the hold command goes out just before its verdict
            held = [c for c in rec.commands if t_press <= c[0] <= first[0]]
            cmd = held[-1] if held else None
        leaks += sum(1 for v in after if v[2] != 21)
        verdict_lat.append((first[1] - t_press) * 1e-9)
        if cmd is not None:
            command_lat.append((cmd[1] - t_press) * 1e-9)
        time.sleep(period)
    return {"trials": n, "to_verdict": _pct(verdict_lat), "to_command": _pct(command_lat),
            "non_estop_verdicts_while_latched": leaks}


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_bench_log_"))
    if args.shm:
        from specvla_ros.ros.bag.qos import use_shm_profile

        use_shm_profile()  # inherited by the node and the feeder
    import rclpy
    from rclpy.node import Node
    from specvla_msgs.msg import ControlTiming, SafetyVerdict
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from specvla_ros.core.types import SafetyStatus
    from specvla_ros.ros import params, qos

    tmp = Path(tempfile.mkdtemp(prefix="specvla_bench_"))
    target, draft = _checkpoints(args, tmp)
    values = dict(params.defaults())
    values.update(target_dir=target, draft_dir=draft, drafter="model" if draft else "none", device=args.device,
                  control_period=args.control_period, autostart=True, replan_below=args.replan_below)
    values["inference.backend"] = args.backend
    for name in ("threads", "nice"):
        if getattr(args, name) is not None:
            values[f"inference.{name}"] = getattr(args, name)
    names = {s.value: s.name for s in SafetyStatus}
    report: dict[str, Any] = {
        "bench": "ros_latency", "camera": f"{args.width}x{args.height} rgb8 @ {args.camera_hz:g} Hz",
        "joint_states_hz": args.joint_hz, "control_period_s": args.control_period, "cores": os.cpu_count(),
        "node": "separate process", "inference": args.backend, "inference_threads": values["inference.threads"],
        "inference_nice": values["inference.nice"], "dds": "Fast DDS shared-memory profile" if args.shm else "Fast DDS defaults",
        "target_dir": target, "draft_dir": draft, "phases": {},
    }
    rclpy.init()
    probe = Node("latency_probe")
    rec = Recorder()

    def on_command(msg: JointTrajectory, info: Any) -> None:
        with rec.lock:
            rec.commands.append((int(info["source_timestamp"]), int(info["received_timestamp"]), len(msg.points)))

    def on_verdict(v: SafetyVerdict, info: Any) -> None:
        stamp = v.header.stamp.sec * 10**9 + v.header.stamp.nanosec
        with rec.lock:
            rec.verdicts.append((int(info["source_timestamp"]), int(info["received_timestamp"]), int(v.status), stamp))

    def on_timing(t: ControlTiming) -> None:
        with rec.lock:
            rec.timing[t.header.stamp.sec * 10**9 + t.header.stamp.nanosec] = t

    probe.create_subscription(JointTrajectory, topics.TRAJECTORY, on_command,
                              qos.COMMAND)
    probe.create_subscription(SafetyVerdict, topics.resolved(topics.SAFETY), on_verdict, qos.STATUS)
    probe.create_subscription(ControlTiming, topics.resolved(topics.TIMING), on_timing, qos.STATUS)
    estop_pub = probe.create_publisher(Bool, topics.ESTOP, qos.LATCHED)
    estop_pub.publish(Bool(data=False))
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    phases = [p for p in args.phases.split(",") if p]
    half = args.bare_steps // 2
    hogs: list[subprocess.Popen] = []
    # Bare steps before the node starts and after it stops (half each), under each phase's load:
    # the same run and the same load, without the node's own processes competing.
    bare: dict[str, list[float]] = {}
    for phase in phases:
        bare[phase] = _bare_under(phase, args, values, half)
    feeder = start_feeder(args)
    node = start_node(values, tmp)
    try:
        started = time.monotonic()
        while not any(v[2] < 20 for v in rec.verdicts):  # first decision: models loaded, inputs flowing
            if node.poll() is not None or time.monotonic() - started > args.timeout:
                raise RuntimeError(f"specvla_node produced no decision (see {tmp / 'node.log'})")
            time.sleep(0.1)
        time.sleep(2.0)  # settle
        for phase in phases:
            if phase == "busy":
                hogs = start_hogs(args.busy_cores)
                time.sleep(1.0)
            load0 = os.getloadavg()[0]
            t0 = time.time_ns()
            time.sleep(args.duration)
            t1 = time.time_ns()
            time.sleep(0.5)  # the last messages arrive
            result = _phase_report(rec, t0, t1, args.control_period, names)
            result["estop"] = _estop_trials(rec, estop_pub, args.estop_trials, args.control_period)
            result["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            report["phases"][phase] = result
            _kill(hogs)
            hogs = []
    finally:
        _kill(hogs)
        stop(node)
        stop(feeder, timeout=10.0)
        if feeder.stdout is not None:
            rates = feeder.stdout.read().strip().splitlines()
            if rates:
                report["feeder_achieved"] = json.loads(rates[-1])
        executor.shutdown()
        spinner.join(timeout=5.0)
        probe.destroy_node()
        rclpy.try_shutdown()
    for phase in phases:
        bare[phase] += _bare_under(phase, args, values, args.bare_steps - half)
        result = report["phases"].get(phase)
        if result is None:
            continue
        result["bare_step"] = _pct(bare[phase])
        if result["node_decision"].get("n") and result["bare_step"].get("n"):
            result["decision_vs_bare"] = {
                "p50": round(result["node_decision"]["p50_ms"] / result["bare_step"]["p50_ms"], 3),
                "p95": round(result["node_decision"]["p95_ms"] / result["bare_step"]["p95_ms"], 3)}
    report["node_log"] = str(tmp / "node.log")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ros_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-dir", default="", help="target checkpoint (default: shipped, else random)")
    parser.add_argument("--draft-dir", default="", help="draft checkpoint ('' with --target-dir: no draft)")
    parser.add_argument("--preset", choices=("test", "default"), default=None,
                        help="build random checkpoints of this size instead of the shipped ones")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=("process", "in_process"), default="process",
                        help="the node's inference.backend")
    parser.add_argument("--threads", type=int, default=None, help="the node's inference.threads (default: the YAML's)")
    parser.add_argument("--nice", type=int, default=None, help="the node's inference.nice (default: the YAML's)")
    parser.add_argument("--duration", type=float, default=60.0, help="[s] per phase")
    parser.add_argument("--phases", default="idle,busy", help="comma-separated: idle, busy")
    parser.add_argument("--busy-cores", type=int, default=2, help="spinning processes in the busy phase")
    parser.add_argument("--bare-steps", type=int, default=40, help="bare Policy.step calls per phase")
    parser.add_argument("--estop-trials", type=int, default=10, help="e-stop presses per phase")
    parser.add_argument("--control-period", type=float, default=0.2, help="[s]")
    parser.add_argument("--replan-below", type=int, default=0,
                        help="the node's replan_below (chunk models: plan when fewer points are left; 0 = every period)")
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=250.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--no-shm", dest="shm", action="store_false",
                        help="keep Fast DDS defaults instead of the shipped shared-memory profile")
    parser.add_argument("--domain-id", type=int, default=39)
    parser.add_argument("--timeout", type=float, default=120.0, help="[s] wait this long for the first decision")
    parser.add_argument("--json", default="", help="also write the report to this file")
    # internal: run --bare-steps bare Policy.step calls with these node parameters, print their times
    parser.add_argument("--bare-config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_config:
        print(json.dumps(_bare_main(args.bare_steps, json.loads(args.bare_config), args.width, args.height)))
        return 0
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
