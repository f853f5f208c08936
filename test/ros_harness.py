"""Helpers for the ROS integration tests (test_ros_*.py): one rclpy context per
test on its own ROS_DOMAIN_ID, an executor spinning in a thread, message
collectors that wait on conditions with timeouts (never fixed sleeps)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

T = TypeVar("T")


@contextmanager
def ros_context(domain_id: int, discovery: str = "OFF") -> Iterator[Context]:
    """An initialised rclpy context on ``domain_id``; discovery OFF keeps topics in-process."""
    if not 10 <= domain_id <= 39:
        raise ValueError(f"ROS node tests use domain ids 10-39, got {domain_id}")
    # Set for this context (and subprocesses started inside it), restored afterwards so
    # later tests in the same pytest process do not inherit them.
    saved = {k: os.environ.get(k) for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    ctx = Context()
    try:
        rclpy.init(context=ctx, domain_id=domain_id)
        yield ctx
    finally:
        ctx.try_shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Spinner:
    """A SingleThreadedExecutor spinning ``nodes`` in a thread, as specvla_node runs;
    ``stop`` shuts down and joins it.

    Not rclpy's thread-pool executor: it spends most of a core handing callbacks between
    its threads, and an entity destroyed under it (a timer a test removes, a context shut
    down) leaves failed tasks that print "exception was never retrieved" at exit.
    """

    def __init__(self, ctx: Context, *nodes: Node) -> None:
        self.executor = SingleThreadedExecutor(context=ctx)
        for node in nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=10.0)


class Collector(Generic[T]):
    """Stores every message of a topic; ``wait_for`` blocks until one matches."""

    def __init__(self, node: Node, msg_type: type[T], topic: str, qos: QoSProfile | int = 10) -> None:
        self.msgs: list[tuple[float, T]] = []
        self._cond = threading.Condition()
        self.sub = node.create_subscription(msg_type, topic, self._cb, qos)

    def _cb(self, msg: T) -> None:
        with self._cond:
            self.msgs.append((time.monotonic(), msg))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[T], bool] = lambda m: True, timeout: float = 10.0,
                 after: float = 0.0) -> tuple[float, T] | None:
        """First (arrival time, msg) received at or after ``after`` that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self.msgs:
                    if t >= after and pred(m):
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def since(self, t0: float) -> list[T]:
        with self._cond:
            return [m for t, m in self.msgs if t >= t0]


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
