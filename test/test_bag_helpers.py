"""Shared helpers for the test_bag_* tests (this module holds no tests).

A private rclpy context per test (own ROS_DOMAIN_ID in 60-79, discovery
range OFF unless a subprocess must see us), real messages serialized by
rclpy, and a raw-bytes collector that tests wait on with timeouts.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

T0_NS = 1_700_000_000 * 10**9  # bag start time used by the synthetic bags


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition (no fixed sleeps); fail with a message after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@dataclass
class RosFixture:
    rclpy: Any
    context: Any
    node: Any
    executor: Any
    thread: threading.Thread
    extra_nodes: list[Any] = field(default_factory=list)

    def make_node(self, name: str, **kwargs: Any) -> Any:
        node = self.rclpy.create_node(name, context=self.context, **kwargs)
        self.executor.add_node(node)
        self.extra_nodes.append(node)
        return node


@contextmanager
def ros_context(domain_id: int, discovery: str = "OFF") -> Iterator[RosFixture]:
    """rclpy in its own context and domain, spun by a background executor."""
    if not 60 <= domain_id <= 79:
        raise ValueError(f"bag tests own ROS_DOMAIN_IDs 60-79, got {domain_id}")
    old = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("bag_test", context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    fixture = RosFixture(rclpy, context, node, executor, thread)
    try:
        yield fixture
    finally:
        executor.shutdown()
        thread.join(timeout=10)
        for extra in fixture.extra_nodes:
            extra.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if old is None:
            os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        else:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = old


class Collector:
    """Records (topic, raw bytes) pairs from raw subscriptions, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[str, bytes]] = []

    def callback(self, topic: str) -> Callable[[bytes], None]:
        def _store(raw: bytes) -> None:
            with self._lock:
                self.items.append((topic, bytes(raw)))

        return _store

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [raw for t, raw in self.items if t == topic]

    def count(self, topic: str | None = None) -> int:
        with self._lock:
            return sum(1 for t, _ in self.items if topic is None or t == topic)


def best_effort_deep() -> Any:
    """Best effort like the node's camera, but a deep queue: a test subscriber that
    falls behind on a loaded machine must not lose frames the player did send."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)


def subscribe_raw(node: Any, collector: Collector, topic: str, msg_cls: type, qos: Any) -> Any:
    return node.create_subscription(msg_cls, topic, collector.callback(topic), qos, raw=True)


# --------------------------------------------------------------------------- messages


def stamp_msg(header: Any, ns: int) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(ns, 10**9)


def image_msg(ns: int, height: int = 32, width: int = 32, encoding: str = "rgb8", seed: int = 0) -> Any:
    from sensor_msgs.msg import Image

    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "mono8": 1}[encoding]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    msg = Image()
    stamp_msg(msg.header, ns)
    msg.header.frame_id = "camera"
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.step = width * channels
    msg.data = pixels.tobytes()
    return msg


def joint_state_msg(ns: int, k: int) -> Any:
    from sensor_msgs.msg import JointState

    msg = JointState()
    stamp_msg(msg.header, ns)
    msg.name = [f"panda_joint{i}" for i in range(1, 8)]
    msg.position = [0.1 * k + 0.01 * i for i in range(7)]
    # Non-empty velocity/effort: rclpy's serialize_message pads empty float64 sequences
    # with 8 bytes that rosbags (and the wire) do not have.
    msg.velocity = [0.0] * 7
    msg.effort = [0.0] * 7
    return msg


def string_msg(text: str) -> Any:
    from std_msgs.msg import String

    return String(data=text)


def serialize(msg: Any) -> bytes:
    from rclpy.serialization import serialize_message

    return bytes(serialize_message(msg))


def synthetic_messages(frames: int = 6, period_ns: int = 50_000_000) -> list[tuple[str, str, int, bytes]]:
    """A small node-input stream: instruction once, then camera + joint states per frame."""
    msgs = [("/specvla/instruction", "std_msgs/msg/String", T0_NS, serialize(string_msg("pick up the red cube")))]
    for k in range(frames):
        t = T0_NS + (k + 1) * period_ns
        msgs.append(("/joint_states", "sensor_msgs/msg/JointState", t, serialize(joint_state_msg(t, k))))
        msgs.append(("/camera/image_raw", "sensor_msgs/msg/Image", t + 1000, serialize(image_msg(t, seed=k))))
    return msgs


def bag_messages(path: str | Path) -> list[tuple[str, int, bytes]]:
    """(topic, timestamp, raw) in the order a reader yields them."""
    from specvla_ros.ros.bag.io import iter_messages, open_bag

    with open_bag(path) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in iter_messages(reader, path)]
