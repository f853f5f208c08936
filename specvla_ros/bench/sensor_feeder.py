"""A stand-in robot driver for benchmarks and process tests: publishes a camera
(rgb8, stamped at publish time) and joint states at fixed rates from its own
process, as a camera driver and a joint_state_broadcaster would.

    python -m specvla_ros.bench.sensor_feeder --camera-hz 30 --joint-hz 250 --width 640 --height 480

Runs until SIGINT/SIGTERM or --duration; prints the achieved rates as JSON on exit.
Pacing uses its own threads with absolute deadlines, not ROS timers, so the
rates hold even when the process is busy.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES
from specvla_ros.ros import topics

#: A reachable Panda pose inside the shipped workspace.
HOME_Q = (0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8)


def _paced(hz: float, stop: threading.Event, send: Callable[[], None], counter: list[int]) -> None:
    period = 1.0 / hz
    next_t = time.monotonic()
    while not stop.is_set():
        send()
        counter[0] += 1
        next_t += period
        delay = next_t - time.monotonic()
        if delay < -period:  # fell behind by more than a period: do not burst to catch up
            next_t = time.monotonic()
        elif delay > 0:
            stop.wait(delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sensor_feeder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=250.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-topic", default=topics.IMAGE)
    parser.add_argument("--joint-topic", default=topics.JOINT_STATES)
    parser.add_argument("--instruction", default="pick up the red cube",
                        help="latched on /specvla/instruction ('' = do not publish one)")
    parser.add_argument("--duration", type=float, default=0.0, help="[s] stop after this long (0 = until signalled)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random camera frame")
    args = parser.parse_args(argv)
    for name in ("camera_hz", "joint_hz"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from specvla_ros.ros import conversions as conv
    from specvla_ros.ros import qos

    rclpy.init()
    node = rclpy.create_node("sensor_feeder")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    frame = np.random.default_rng(args.seed).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    image = conv.rgb_to_image(frame)
    image_pub = node.create_publisher(type(image), args.camera_topic, qos.CAMERA)
    # joint_state_broadcaster publishes reliable; the node subscribes best effort (compatible).
    joint_pub = node.create_publisher(JointState, args.joint_topic,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    if args.instruction:
        node.create_publisher(String, topics.INSTRUCTION, qos.LATCHED).publish(String(data=args.instruction))
    joints = JointState(name=list(PANDA_JOINT_NAMES) + list(PANDA_FINGER_JOINT_NAMES),
                        position=list(HOME_Q) + [0.02, 0.02], velocity=[0.0] * 9)
    clock = node.get_clock()

    def send_image() -> None:
        image.header.stamp = clock.now().to_msg()
        image_pub.publish(image)

    def send_joints() -> None:
        joints.header.stamp = clock.now().to_msg()
        joint_pub.publish(joints)

    counts = {"camera": [0], "joints": [0]}
    threads = [threading.Thread(target=_paced, args=(args.camera_hz, stop, send_image, counts["camera"]), daemon=True),
               threading.Thread(target=_paced, args=(args.joint_hz, stop, send_joints, counts["joints"]), daemon=True)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(args.duration if args.duration > 0 else None)
    stop.set()
    for t in threads:
        t.join(timeout=2.0)
    elapsed = time.monotonic() - t0
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps({"camera_hz": round(counts["camera"][0] / elapsed, 2),
                      "joint_hz": round(counts["joints"][0] / elapsed, 2), "seconds": round(elapsed, 1),
                      "pid": os.getpid()}), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
