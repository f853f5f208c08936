#!/usr/bin/env python3
"""Regenerate the shipped test bags in test/data/bags/.

sim_inputs/          camera (rgb8 128x128), instruction and joint states, recorded
                     with real rclpy publishing from the specvla_sim node (sim
                     clock stamps) while a scripted driver moves the arm, so the
                     frames differ.
sim_golden/          the policy node's outputs for sim_inputs (greedy decoding),
                     made by the lockstep replay harness.
sim_golden_relaxed/  the same in relaxed mode (compared with a tolerance).
sim_golden_chunk/    greedy, with a seeded random action-chunk target (H = 4): each
                     command is a multi-point plan, compared point by point.

Usage:
    .venv/bin/python scripts/make_test_bags.py            # everything
    .venv/bin/python scripts/make_test_bags.py --golden-only   # keep the inputs, redo the goldens
    .venv/bin/python scripts/make_test_bags.py --models default  # goldens from the shipped models

`--models random` (the default) uses seeded random tiny checkpoints, built the
same way as the tests' `tiny_checkpoints` fixture, so the goldens do not change
when the shipped models are retrained.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "test" / "data" / "bags"
INPUT_TOPICS = ("/camera/image_raw", "/joint_states", "/specvla/instruction")


def record_sim_inputs(out: Path, frames: int, domain_id: int) -> None:
    """Run specvla_sim in this process and record its camera, joint states and instruction."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
    from builtin_interfaces.msg import Duration

    from specvla_ros.ros.bag.qos import qos_preset
    from specvla_ros.ros.bag.recorder import BagRecorder, RecordConfig
    from specvla_ros.ros.sim_node import SimNode

    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    sim = recorder_node = driver = None
    spinner = threading.Thread(target=executor.spin, daemon=True)
    try:
        recorder_node = rclpy.create_node("specvla_bag_recorder", context=context,
                                          parameter_overrides=[Parameter("use_sim_time", value=True)])
        driver = rclpy.create_node("make_test_bags_driver", context=context)
        executor.add_node(recorder_node)
        executor.add_node(driver)
        spinner.start()
        recorder = BagRecorder(recorder_node, RecordConfig(output=out, storage="mcap", topics=INPUT_TOPICS))
        # Simulator after the recorder: the recording starts at the first frame.
        sim = SimNode(context=context, parameter_overrides=[
            Parameter("task", value="pick"), Parameter("seed", value=0), Parameter("sim_clock", value=True),
            Parameter("camera_rate", value=10.0), Parameter("joint_state_rate", value=50.0)])
        executor.add_node(sim)
        arm = driver.create_publisher(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                      qos_preset("reliable"))
        home = None
        deadline = time.monotonic() + 120
        sent = -1
        while recorder.counts.get("/camera/image_raw", 0) < frames:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recorded only {recorder.counts} in 120 s")
            seen = recorder.counts.get("/camera/image_raw", 0)
            if seen != sent and sim.env is not None:
                # Sway joints 1 and 4 a little per frame so consecutive images differ.
                if home is None:
                    home = np.asarray(sim.env.robot_state().q, dtype=float)
                target = home.copy()
                target[0] += 0.25 * np.sin(0.3 * seen)
                target[3] += 0.15 * np.sin(0.2 * seen)
                arm.publish(JointTrajectory(
                    joint_names=[f"panda_joint{i}" for i in range(1, 8)],
                    points=[JointTrajectoryPoint(positions=target.tolist(), time_from_start=Duration(nanosec=200_000_000))]))
                sent = seen
            time.sleep(0.01)  # polling loop of a script, not a test
        recorder.close()
        print(f"recorded {out}: {recorder.counts}")
    finally:
        executor.shutdown()
        spinner.join(timeout=10)
        for node in (sim, driver, recorder_node):
            if node is not None:
                node.destroy_node()
        rclpy.try_shutdown(context=context)


def make_golden(inputs: Path, out: Path, models: str, mode: str, domain_id: int) -> None:
    from specvla_ros.ros.bag.regression import ReplayConfig, replay, write_outputs

    result = replay(ReplayConfig(input_bag=inputs, models=models, mode=mode, domain_id=domain_id))
    if result.stale_ticks:
        raise RuntimeError(f"{result.stale_ticks} stale ticks while making {out}; run again on a quieter machine")
    write_outputs(result, out, inputs)
    print(f"wrote {out}: {len(result.frames)} frames ({mode}, models {models}) in {result.wall_s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--frames", type=int, default=20, help="camera frames in the input bag")
    parser.add_argument("--models", default="random",
                        help="random (+ random_chunk for sim_golden_chunk) | default | TARGET_DIR[:DRAFT_DIR]")
    parser.add_argument("--golden-only", action="store_true", help="keep sim_inputs, regenerate the golden bags")
    parser.add_argument("--domain-id", type=int, default=79)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_roslog_"))
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = args.out / "sim_inputs"
    if not args.golden_only:
        shutil.rmtree(inputs, ignore_errors=True)
        record_sim_inputs(inputs, args.frames, args.domain_id)
    elif not inputs.is_dir():
        parser.error(f"{inputs} does not exist; run without --golden-only first")
    chunk_models = "random_chunk" if args.models == "random" else args.models
    for mode, name, models in (("greedy", "sim_golden", args.models), ("relaxed", "sim_golden_relaxed", args.models),
                               ("greedy", "sim_golden_chunk", chunk_models)):
        shutil.rmtree(args.out / name, ignore_errors=True)
        make_golden(inputs, args.out / name, models, mode, args.domain_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
