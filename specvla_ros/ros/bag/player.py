"""Publishing a bag's messages on the graph as they are (raw CDR), paced in bag time, optionally
with /clock.
"""
from __future__ import annotations

import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specvla_ros.ros.bag.io import BagError, CLOCK_TOPIC, bag_info, iter_messages, open_bag
from specvla_ros.ros.bag.qos import default_play_qos_name, qos_preset
from specvla_ros.ros.bag.types import import_msg_class

if TYPE_CHECKING:
    from rclpy.node import Node

# --------------------------------------------------------------------------- play


@dataclass
class PlayConfig:
    """How to play a bag.

    rate: playback speed factor (1.0 = original timing).
    start_offset_s: skip this much of the bag's beginning [s].
    topics: play only these (original names; empty = all).
    remap: original topic -> published topic.
    qos: topic -> preset name (see qos_preset), overriding the defaults.
    clock_hz: publish /clock at this rate [Hz] (and before every message); 0 = no clock.
    wait_for_subscribers: before starting, wait until every publisher has this many subscribers.
    subscriber_timeout_s: give up waiting for subscribers after this long [s].
    max_bytes_per_s: pacing: never publish faster than this [bytes/s]; bursts of
        large images otherwise overflow subscriber queues (0 = unpaced).
    loops: how many times to play (loop=True in the CLI plays until interrupted).
    """

    rate: float = 1.0
    start_offset_s: float = 0.0
    topics: tuple[str, ...] = ()
    remap: dict[str, str] = field(default_factory=dict)
    qos: dict[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0
    wait_for_subscribers: int = 0
    subscriber_timeout_s: float = 10.0
    max_bytes_per_s: float = 200e6
    loops: int = 1
    loop_forever: bool = False

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.start_offset_s < 0:
            raise ValueError(f"start_offset_s must be >= 0, got {self.start_offset_s}")
        if self.clock_hz < 0:
            raise ValueError(f"clock_hz must be >= 0, got {self.clock_hz}")
        if self.wait_for_subscribers < 0:
            raise ValueError(f"wait_for_subscribers must be >= 0, got {self.wait_for_subscribers}")
        if self.subscriber_timeout_s <= 0:
            raise ValueError(f"subscriber_timeout_s must be > 0, got {self.subscriber_timeout_s}")
        if self.max_bytes_per_s < 0:
            raise ValueError(f"max_bytes_per_s must be >= 0, got {self.max_bytes_per_s}")
        if self.loops < 1:
            raise ValueError(f"loops must be >= 1, got {self.loops}")
        for topic, name in self.qos.items():
            if name not in ("sensor_data", "reliable", "latched", "system_default"):
                raise ValueError(f"unknown QoS preset {name!r} for {topic}")


@dataclass
class PlayStats:
    """What a playback did. Lateness: publish time minus scheduled time [s]."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)  # topic -> reason
    lateness_s: list[float] = field(default_factory=list)
    clock_published: int = 0
    loops_done: int = 0
    wall_time_s: float = 0.0
    unacked_topics: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.published.values())

    def timing_summary(self) -> dict[str, float]:
        if not self.lateness_s:
            return {"median_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0}
        ordered = sorted(self.lateness_s)
        return {
            "median_ms": 1e3 * statistics.median(ordered),
            "p95_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max_ms": 1e3 * ordered[-1],
        }


#: Called around each publish: (published topic, msgtype, bag time [ns], raw CDR bytes).
PublishHook = Callable[[str, str, int, bytes], None]


class BagPlayer:
    """Publish a bag's messages on a node with their recorded timing.

    The node is the caller's (it may already be spun by an executor;
    publishing needs no spinning). `play()` blocks until done or `stop()`.
    """

    def __init__(self, node: Node, bag: str | Path, config: PlayConfig | None = None) -> None:
        self.node = node
        self.bag = Path(bag)
        self.config = config or PlayConfig()
        self._stop = threading.Event()
        self._publishers: dict[tuple[str, str], Any] = {}
        self._clock_pub: Any = None
        self.stats = PlayStats()
        self._create_publishers()

    def _create_publishers(self) -> None:
        summary = bag_info(self.bag)
        present = {t.name for t in summary.topics}
        for wanted in self.config.topics:
            if wanted not in present:
                warnings.warn(f"topic {wanted} is not in bag {self.bag}; nothing to play for it", stacklevel=3)
                self.stats.skipped_topics[wanted] = "not in bag"
        for topic in summary.topics:
            if self.config.topics and topic.name not in self.config.topics:
                continue
            if topic.name == CLOCK_TOPIC and self.config.clock_hz > 0:
                self.stats.skipped_topics[topic.name] = "replaced by the player's own /clock"
                continue
            cls = import_msg_class(topic.msgtype)
            if cls is None:
                reason = f"message type {topic.msgtype} is not installed"
                warnings.warn(f"skipping {topic.name}: {reason}", stacklevel=3)
                self.stats.skipped_topics[topic.name] = reason
                continue
            preset = self.config.qos.get(topic.name) or default_play_qos_name(topic.name, topic.msgtype, topic.offered_qos)
            out_topic = self.config.remap.get(topic.name, topic.name)
            self._publishers[(topic.name, topic.msgtype)] = (
                out_topic,
                self.node.create_publisher(cls, out_topic, qos_preset(preset)),
            )
            self.stats.published.setdefault(out_topic, 0)
        if not self._publishers:
            raise BagError(f"nothing to play from {self.bag}: no selected topic with an installed type")
        if self.config.clock_hz > 0:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = self.node.create_publisher(Clock, CLOCK_TOPIC, qos_preset("reliable"))

    @property
    def publishers(self) -> dict[str, Any]:
        """Published topic name -> rclpy publisher."""
        return {name: pub for name, pub in self._publishers.values()}

    def stop(self) -> None:
        self._stop.set()

    def wait_for_subscribers(self) -> bool:
        """Wait until every publisher has config.wait_for_subscribers subscribers (or timeout)."""
        need = self.config.wait_for_subscribers
        if need <= 0:
            return True
        deadline = time.monotonic() + self.config.subscriber_timeout_s
        while not self._stop.is_set():
            if all(pub.get_subscription_count() >= need for pub in self.publishers.values()):
                return True
            if time.monotonic() > deadline:
                return False
            self._stop.wait(0.01)
        return False

    def publish_clock(self, stamp_ns: int) -> None:
        if self._clock_pub is None:
            return
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 10**9)
        self._clock_pub.publish(msg)
        self.stats.clock_published += 1

    def play(self, after_publish: PublishHook | None = None) -> PlayStats:
        """Play (all loops); returns statistics. `after_publish` runs after each message."""
        cfg = self.config
        if not self.wait_for_subscribers():
            missing = [t for t, p in self.publishers.items() if p.get_subscription_count() < cfg.wait_for_subscribers]
            warnings.warn(f"playing although these topics lack subscribers: {missing}", stacklevel=2)
        started = time.monotonic()
        loop = 0
        while not self._stop.is_set() and (cfg.loop_forever or loop < cfg.loops):
            self._play_once(after_publish)
            loop += 1
            self.stats.loops_done = loop
        self.stats.wall_time_s = time.monotonic() - started
        self.stats.unacked_topics = self.wait_for_acks()
        return self.stats

    def wait_for_acks(self, timeout_s: float = 10.0) -> list[str]:
        """Block until reliable subscribers acknowledged everything published.

        Without this a player process that exits right after its last publish
        loses the reliable messages still in flight. Returns the topics that
        did not confirm in time (best-effort publishers confirm at once).
        """
        from rclpy.duration import Duration

        return [
            topic for topic, pub in self.publishers.items()
            if not pub.wait_for_all_acked(Duration(nanoseconds=int(timeout_s * 1e9)))
        ]

    def _play_once(self, after_publish: PublishHook | None) -> None:
        cfg = self.config
        with open_bag(self.bag) as reader:
            if not reader.message_count:
                return
            bag_start = reader.start_time + int(cfg.start_offset_s * 1e9)
            conns = [c for c in reader.connections if (c.topic, c.msgtype) in self._publishers]
            wall_start = time.monotonic()
            clock_period = 1.0 / cfg.clock_hz if cfg.clock_hz > 0 else 0.0
            next_clock = wall_start
            paced_until = wall_start
            for conn, stamp_ns, raw in iter_messages(reader, self.bag, connections=conns, start=bag_start):
                due = wall_start + (stamp_ns - bag_start) / 1e9 / cfg.rate
                due = max(due, paced_until)
                # Wait for the message's time, keeping /clock ticking meanwhile.
                while not self._stop.is_set():
                    now = time.monotonic()
                    if clock_period and now >= next_clock:
                        elapsed_bag_ns = int((now - wall_start) * cfg.rate * 1e9)
                        self.publish_clock(min(bag_start + elapsed_bag_ns, stamp_ns))
                        next_clock = now + clock_period
                    if now >= due:
                        break
                    wake = min(due, next_clock) if clock_period else due
                    self._stop.wait(max(0.0, wake - now))
                if self._stop.is_set():
                    return
                self.publish_clock(stamp_ns)  # sim time never lags the message it goes with
                out_topic, pub = self._publishers[(conn.topic, conn.msgtype)]
                pub.publish(raw)
                now = time.monotonic()
                self.stats.lateness_s.append(now - due)
                self.stats.published[out_topic] += 1
                if cfg.max_bytes_per_s > 0:
                    paced_until = now + len(raw) / cfg.max_bytes_per_s
                if after_publish is not None:
                    after_publish(out_topic, conn.msgtype, stamp_ns, raw)

    def destroy(self) -> None:
        for _, pub in self._publishers.values():
            self.node.destroy_publisher(pub)
        if self._clock_pub is not None:
            self.node.destroy_publisher(self._clock_pub)
        self._publishers.clear()
        self._clock_pub = None
