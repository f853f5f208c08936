"""End-to-end latency of specvla_node, camera message -> command message, and
the ROS plumbing overhead over a bare ``Policy.step`` call, in one run.

    python -m specvla_ros.bench.ros_latency                 # shipped models, else random "default" ones
    python -m specvla_ros.bench.ros_latency --preset test --decisions 30

By default one process, discovery OFF (--cross-process: the node as its own
process, discovery LOCALHOST, shared-memory transport): a camera publisher (640x480
rgb8 at --camera-hz) and joint states feed the node; the command's arrival is
matched to the frame it was computed from through the verdict's header stamp
(= that frame's stamp). Reported (milliseconds, p50/p95), printed as JSON:
  bare_step        Policy.step on the same inputs, no ROS (same process; half before, half after the node)
  node_step        the node's own decision time (SpecDecodeStats.total_time)
  end_to_end       camera publish -> command received
  overhead         end_to_end - node_step of the same decision: transport, the frame's age when the
                   control tick takes it (0..1/camera_hz), conversion and resize, publishing
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1e3
    return {"n": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2), "mean_ms": round(float(arr.mean()), 2)}


def _checkpoints(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    if args.target_dir:
        return args.target_dir, args.draft_dir or ""
    from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR, shipped_models_present

    if shipped_models_present() and args.preset is None:
        return str(DEFAULT_TARGET_DIR), str(DEFAULT_DRAFT_DIR)
    from specvla_ros.core.tiny_vla import make_random_checkpoint, make_random_draft

    target = make_random_checkpoint(tmp / "target", preset=args.preset or "default", seed=0)
    draft = make_random_draft(tmp / "draft", target, kind="model", seed=1)
    return str(target), str(draft)


def bare_steps(values: dict[str, Any], frame: np.ndarray, n: int) -> list[float]:
    """Policy.step timings without ROS, run on a worker thread like the node's executor thread.

    (On a loaded 2-core machine torch's OpenMP pool on the main thread measured 10-80x slower
    than the same step on a secondary thread, so the thread is part of a fair comparison.)
    """
    out: list[list[float]] = []
    worker = threading.Thread(target=lambda: out.append(_bare_steps(values, frame, n)))
    worker.start()
    worker.join()
    return out[0] if out else []


def _bare_steps(values: dict[str, Any], frame: np.ndarray, n: int) -> list[float]:
    """New frame id each call, so vision runs every time, as in the node."""
    from specvla_ros.core.policy import Policy
    from specvla_ros.core.types import Observation, RobotState
    from specvla_ros.ros.conversions import _resize  # same resize the node applies
    from specvla_ros.ros.policy_node import policy_config

    policy = Policy(policy_config(values))
    policy.warmup(n=2)
    rgb = _resize(frame, tuple(policy.image_size))
    q = np.array([0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8])
    state = RobotState(q=q, gripper=0.04)
    times = []
    for i in range(n):
        obs = Observation(image=rgb, instruction="pick up the red cube",
                          proprio=np.r_[q, 0.04].astype(np.float32), frame_id=i + 1)
        t0 = time.perf_counter()
        policy.step(obs, state)
        times.append(time.perf_counter() - t0)
    del policy
    return times


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


def _start_node_process(values: dict[str, Any], args: argparse.Namespace, tmp: Path):  # -> subprocess.Popen
    import subprocess
    import sys

    import yaml

    from specvla_ros.ros import params

    path = tmp / "bench_params.yaml"
    node_values = {k: v for k, v in values.items() if k in params.SPECS}
    node_values["autostart"] = True
    path.write_text(yaml.safe_dump({"specvla_node": {"ros__parameters": _nested(node_values)}}))
    exe = Path(sys.executable).parent / "specvla_node"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "specvla_ros.ros.policy_node"]
    return subprocess.Popen(cmd + ["--ros-args", "--params-file", str(path)], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST" if args.cross_process else "OFF"
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_bench_log_"))
    if args.cross_process and args.shm:
        from specvla_ros.ros.bag_tools import use_shm_profile

        use_shm_profile()  # big images over shared memory, not UDP fragments
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from specvla_msgs.msg import SafetyVerdict, SpecDecodeStats
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from specvla_ros.core.types import PANDA_JOINT_NAMES
    from specvla_ros.ros import conversions as conv
    from specvla_ros.ros import params, qos
    from specvla_ros.ros.policy_node import PolicyNode

    tmp = Path(tempfile.mkdtemp(prefix="specvla_bench_ckpt_"))
    target, draft = _checkpoints(args, tmp)
    values = dict(params.defaults())
    values.update(target_dir=target, draft_dir=draft, drafter="model" if draft else "none", device=args.device,
                  control_period=args.control_period, decision_deadline=10.0, max_input_age=2.0, autostart=False)
    frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    # Bare steps half before and half after the node run, so drifting machine load hits both alike.
    bare = bare_steps(values, frame, args.decisions // 2)
    load_before = os.getloadavg()[0]

    ctx = Context()
    rclpy.init(context=ctx, domain_id=args.domain_id)
    node = proc = None
    if args.cross_process:
        proc = _start_node_process(values, args, tmp)
    else:
        overrides = [Parameter(k, value=v) for k, v in values.items() if k in params.SPECS]
        node = PolicyNode(context=ctx, parameter_overrides=overrides)
    probe = Node("latency_probe", context=ctx)
    lock = threading.Lock()
    published: dict[int, float] = {}  # frame stamp ns -> publish time
    last_cmd = [0.0]
    e2e: list[float] = []
    node_step: dict[int, float] = {}
    pairs: list[tuple[float, float]] = []
    done = threading.Event()

    image_pub = probe.create_publisher(type(conv.rgb_to_image(frame[:2, :2])), "/camera/image_raw", qos.CAMERA)
    joint_pub = probe.create_publisher(JointState, "/joint_states", 10)
    instr_pub = probe.create_publisher(String, "/specvla/instruction", qos.LATCHED)
    image_msg = conv.rgb_to_image(frame)
    joints = JointState(name=list(PANDA_JOINT_NAMES) + ["panda_finger_joint1", "panda_finger_joint2"],
                        position=[0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8, 0.02, 0.02])

    def camera() -> None:
        stamp = probe.get_clock().now().to_msg()
        image_msg.header.stamp = stamp
        with lock:
            published[conv.stamp_ns(stamp)] = time.monotonic()
        image_pub.publish(image_msg)
        joint_pub.publish(joints)

    def on_command(_msg: JointTrajectory) -> None:
        last_cmd[0] = time.monotonic()

    def on_verdict(v: SafetyVerdict) -> None:
        if v.status >= SafetyVerdict.HALT_STALE_INPUT:  # input holds are not decisions
            return
        key = conv.stamp_ns(v.header.stamp)
        with lock:
            t_pub = published.get(key)
            if t_pub is not None and last_cmd[0] >= t_pub:
                e2e.append(last_cmd[0] - t_pub)
                pairs.append((key, last_cmd[0] - t_pub))
            if len(e2e) >= args.decisions:
                done.set()

    def on_stats(s: SpecDecodeStats) -> None:
        with lock:
            node_step[conv.stamp_ns(s.header.stamp)] = s.total_time

    probe.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", on_command,
                              qos.COMMAND)
    probe.create_subscription(SafetyVerdict, "/specvla_node/safety", on_verdict, qos.STATUS)
    probe.create_subscription(SpecDecodeStats, "/specvla_node/spec_stats", on_stats, qos.STATUS)
    executor = MultiThreadedExecutor(num_threads=5, context=ctx)
    if node is not None:
        executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    cam_timer = None
    try:
        instr_pub.publish(String(data="pick up the red cube"))
        if node is not None and not node.run_autostart():
            raise RuntimeError("specvla_node failed to configure/activate")
        cam_timer = probe.create_timer(1.0 / args.camera_hz, camera)
        finished = done.wait(timeout=args.timeout)
    finally:
        if cam_timer is not None:
            cam_timer.cancel()  # no new frames while the node stops
        if proc is not None:
            import signal

            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        executor.shutdown()
        spinner.join(timeout=10.0)
        if node is not None:
            node.destroy_node()
        probe.destroy_node()
        ctx.try_shutdown()
    bare += bare_steps(values, frame, args.decisions - args.decisions // 2)
    with lock:
        steps = [node_step[k] for k, _ in pairs if k in node_step]
        overhead = [lat - node_step[k] for k, lat in pairs if k in node_step]
    return {
        "bench": "ros_latency",
        "image": f"{args.width}x{args.height} rgb8 @ {args.camera_hz} Hz",
        "node": ("separate process" + (" (Fast DDS shared-memory profile)" if args.shm else "")
                 if args.cross_process else "same process"),
        "control_period_s": args.control_period,
        "target_dir": target, "draft_dir": draft, "device": args.device,
        "completed": bool(finished),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "bare_step": _pct(bare),
        "node_step": _pct(steps),
        "end_to_end": _pct(e2e),
        "overhead": _pct(overhead),
        "overhead_note": "includes the age of the newest frame when the control tick starts (0..1/camera_hz)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-dir", default="", help="target checkpoint (default: shipped, else random)")
    parser.add_argument("--draft-dir", default="", help="draft checkpoint ('' with --target-dir: no draft)")
    parser.add_argument("--preset", choices=("test", "default"), default=None,
                        help="build random checkpoints of this size instead of the shipped ones")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decisions", type=int, default=40, help="decisions to measure")
    parser.add_argument("--control-period", type=float, default=0.2, help="[s]")
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--cross-process", action="store_true",
                        help="run specvla_node as its own process (the console script), as deployed")
    parser.add_argument("--no-shm", dest="shm", action="store_false",
                        help="cross-process: keep Fast DDS defaults instead of the shipped shared-memory profile")
    parser.add_argument("--domain-id", type=int, default=39)
    parser.add_argument("--timeout", type=float, default=300.0, help="[s] give up after this long")
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
