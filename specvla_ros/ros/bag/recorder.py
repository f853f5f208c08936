"""Recording topics to a bag as received (raw CDR), with the QoS each publisher offers.
"""
from __future__ import annotations

import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.errors import WriterError

from specvla_ros.ros.bag.io import BagError, STORAGE_IDS
from specvla_ros.ros.bag.qos import subscriber_qos, qos_preset, qos_to_rosbags
from specvla_ros.ros.bag.types import import_msg_class, make_typestore, register_msg_type

if TYPE_CHECKING:
    from rclpy.node import Node

# --------------------------------------------------------------------------- record


@dataclass
class RecordConfig:
    """What to record.

    output: bag directory to create (must not exist).
    storage: 'mcap' (default, what Foxglove opens) or 'sqlite3'.
    topics: topics to record; they are subscribed once they appear on the graph.
    all_topics: record every topic seen (except /rosout and /parameter_events).
    max_messages: stop after this many messages in total (0 = no limit).
    qos: topic -> preset name, overriding QoS adapted to the publishers.
    """

    output: Path
    storage: str = "mcap"
    topics: tuple[str, ...] = ()
    all_topics: bool = False
    max_messages: int = 0
    qos: dict[str, str] = field(default_factory=dict)
    discovery_period_s: float = 0.05

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.storage not in STORAGE_IDS:
            raise ValueError(f"storage must be one of {sorted(STORAGE_IDS)}, got {self.storage!r}")
        if not self.topics and not self.all_topics:
            raise ValueError("nothing to record: give topics or all_topics=True")
        if self.max_messages < 0:
            raise ValueError(f"max_messages must be >= 0, got {self.max_messages}")
        if self.discovery_period_s <= 0:
            raise ValueError(f"discovery_period_s must be > 0, got {self.discovery_period_s}")
        if self.output.exists():
            raise ValueError(f"output {self.output} exists already; rosbag2 bags are never overwritten")


_IGNORED_TOPICS = frozenset({"/rosout", "/parameter_events"})


class _WriterThread:
    """Owns a rosbags Writer on one thread.

    sqlite3 objects may not cross threads, and disk writes should not block
    executor callbacks: callbacks only enqueue, this thread writes.
    """

    def __init__(self, output: Path, storage: str) -> None:
        self.output = output
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._error: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage,), name="bag_writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise BagError(self._error)

    def add_connection(self, topic: str, msgtype: str, msgdef: str, rihs01: str, offered: list[Qos]) -> None:
        self._queue.put(("conn", topic, msgtype, msgdef, rihs01, offered))

    def write(self, topic: str, stamp_ns: int, raw: bytes) -> None:
        self._queue.put(("msg", topic, stamp_ns, raw))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error:
            raise BagError(self._error)

    def _run(self, storage: str) -> None:
        try:
            writer = Writer(self.output, version=9, storage_plugin=STORAGE_IDS[storage])
            writer.open()
        except (WriterError, OSError) as exc:
            self._error = f"cannot create bag {self.output}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        conns: dict[str, Connection] = {}
        try:
            while (item := self._queue.get()) is not None:
                if item[0] == "conn":
                    _, topic, msgtype, msgdef, rihs01, offered = item
                    conns[topic] = writer.add_connection(
                        topic, msgtype, msgdef=msgdef, rihs01=rihs01, offered_qos_profiles=offered
                    )
                else:
                    _, topic, stamp_ns, raw = item
                    writer.write(conns[topic], stamp_ns, raw)
            writer.close()
        except (WriterError, OSError, sqlite3.Error) as exc:
            self._error = f"error while writing bag {self.output}: {exc}"
            writer.abort()
            while self._queue.get() is not None:  # drain so close() returns
                pass


class BagRecorder:
    """Record topics from the graph into a rosbag2 bag with raw subscriptions.

    Topic types are discovered from the graph (a timer keeps looking for
    topics that appear later); custom types are added to the typestore from
    their .msg files. Subscription QoS adapts to the publishers (like
    rosbag2), and their offered QoS is stored in the bag. Timestamps are the
    node clock at reception (sim time when the node uses it). Call `close()`
    to write metadata.yaml.
    """

    def __init__(self, node: Node, config: RecordConfig) -> None:
        self.node = node
        self.config = config
        self.typestore = make_typestore()
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self.done = threading.Event()  # set when max_messages is reached
        self._lock = threading.Lock()
        self._closed = False
        self._subs: dict[str, Any] = {}
        self._writer = _WriterThread(config.output, config.storage)
        self._timer = node.create_timer(config.discovery_period_s, self.discover)
        self.discover()

    def discover(self) -> None:
        """Subscribe to wanted topics that have appeared on the graph."""
        with self._lock:  # runs from the timer and from __init__
            if self._closed:
                return
            for topic, types in self.node.get_topic_names_and_types():
                if topic in self._subs or topic in self.skipped or not types:
                    continue
                if self.config.all_topics:
                    if topic in _IGNORED_TOPICS:
                        continue
                elif topic not in self.config.topics:
                    continue
                self._subscribe(topic, types[0])

    def _subscribe(self, topic: str, msgtype: str) -> None:
        cls = import_msg_class(msgtype)
        if cls is None or not register_msg_type(self.typestore, msgtype):
            reason = f"message type {msgtype} is not installed"
            self.skipped[topic] = reason
            self.node.get_logger().warning(f"not recording {topic}: {reason}")
            return
        offered = [info.qos_profile for info in self.node.get_publishers_info_by_topic(topic)]
        qos = qos_preset(self.config.qos[topic]) if topic in self.config.qos else subscriber_qos(offered)
        msgdef, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
        self._writer.add_connection(
            topic, msgtype, msgdef, self.typestore.hash_rihs01(msgtype), [qos_to_rosbags(q) for q in offered]
        )
        self.counts[topic] = 0
        self._subs[topic] = self.node.create_subscription(
            cls, topic, lambda raw, t=topic: self._on_message(t, raw), qos, raw=True
        )

    def _on_message(self, topic: str, raw: bytes) -> None:
        stamp = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self._closed:
                return
            self._writer.write(topic, stamp, bytes(raw))
            self.counts[topic] += 1
            if self.config.max_messages and sum(self.counts.values()) >= self.config.max_messages:
                self.done.set()

    @property
    def subscribed_topics(self) -> list[str]:
        with self._lock:
            return sorted(self._subs)

    def close(self) -> Path:
        """Stop recording and finish the bag (writes metadata.yaml). Idempotent."""
        with self._lock:
            if self._closed:
                return self.config.output
            self._closed = True
            subs, self._subs = list(self._subs.values()), {}
        self.node.destroy_timer(self._timer)
        for sub in subs:
            self.node.destroy_subscription(sub)
        self._writer.close()
        return self.config.output
