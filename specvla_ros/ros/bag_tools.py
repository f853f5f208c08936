"""Rosbag2 record / play / info for specvla_ros without a rosbag2 install.

Bags are read and written with `rosbags` (MCAP or sqlite3, with
metadata.yaml, so `ros2 bag` and Foxglove read them on a real install) and
moved on and off the graph with rclpy *raw* publishers and subscriptions: the
CDR bytes in the bag are published as they are, and recorded as received.

rclpy is imported lazily so `info` and the bag readers work without a ROS
environment.
"""
from __future__ import annotations

import importlib
import os
import queue
import sqlite3
import statistics
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from specvla_ros.ros import topics

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from rosbags.typesys.store import Typestore

#: Inputs and outputs of the policy node (defaults of config/specvla.yaml).
NODE_INPUT_TOPICS: tuple[str, ...] = topics.POLICY_INPUTS
NODE_OUTPUT_TOPICS: tuple[str, ...] = topics.POLICY_OUTPUTS
NODE_IO_TOPICS: tuple[str, ...] = NODE_INPUT_TOPICS + NODE_OUTPUT_TOPICS

#: Types whose messages are large: played with sensor-data QoS and paced.
SENSOR_TYPES: frozenset[str] = frozenset(
    {
        "sensor_msgs/msg/Image",
        "sensor_msgs/msg/CompressedImage",
        "sensor_msgs/msg/PointCloud2",
        "sensor_msgs/msg/LaserScan",
    }
)
#: Topics whose last message must reach late joiners (latched).
LATCHED_TOPIC_SUFFIXES: tuple[str, ...] = ("/instruction",)

CLOCK_TOPIC = topics.CLOCK
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
STORAGE_IDS: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

SHM_PROFILE_PATH = Path(__file__).resolve().parents[1] / "data" / "fastdds" / "shm_profile.xml"
_PROFILE_ENV_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_INFINITE_QOS_TIME = QosTime(2147483647, 4294967295)  # what rosbag2 writes for "infinite"


class BagError(Exception):
    """A bag cannot be used; the message is one line meant for the user."""


# --------------------------------------------------------------------------- reading


@contextmanager
def open_bag(path: str | Path) -> Iterator[Reader]:
    """Open a rosbag2 bag (directory, .mcap or .db3) and turn every failure into BagError.

    Failures while iterating messages inside the `with` block (a file
    truncated after its index) are translated too.
    """
    bag = Path(path)
    if not bag.exists():
        raise BagError(f"bag not found: {bag}")
    if bag.is_dir() and not (bag / "metadata.yaml").exists():
        raise BagError(f"{bag} is a directory without metadata.yaml, not a rosbag2 bag")
    try:
        reader = Reader(bag)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError, EOFError) as exc:
        raise BagError(f"cannot read bag {bag}: {_describe(exc)}") from None
    try:
        yield reader
    except (ReaderError, OSError, EOFError) as exc:
        raise BagError(f"bag {bag} is truncated or corrupt: {_describe(exc)}") from None
    finally:
        try:
            reader.close()
        except (ReaderError, OSError):
            pass  # already reported the error that matters


#: What rosbags' readers raise on damaged data while decoding records.
_CORRUPT_DATA_ERRORS = (ReaderError, OSError, EOFError, ValueError, OverflowError, KeyError, IndexError,
                        struct.error, sqlite3.DatabaseError)


def iter_messages(reader: Any, bag: str | Path, **kwargs: Any) -> Iterator[tuple[Connection, int, bytes]]:
    """reader.messages(**kwargs), with damaged data reported as one BagError line.

    Only errors raised while reading are translated, never the caller's own.
    """
    messages = reader.messages(**kwargs)
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except _CORRUPT_DATA_ERRORS as exc:
            raise BagError(f"bag {bag} is truncated or corrupt: {_describe(exc)}") from None
        yield item


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    if "magic" in text.lower() or "malformed" in text.lower():
        text += " (truncated or corrupt file; was the recording stopped before it closed the bag?)"
    return text


def bag_storage(reader: Reader) -> tuple[str, list[Path]]:
    """Storage id ('mcap' or 'sqlite3') and the storage files of an open bag."""
    storage = reader.storage
    files = [Path(getattr(s, "path", "")) for s in getattr(storage, "storages", [storage])]
    files = [f if f.is_absolute() else reader.path / f.name for f in files]
    if not files or not files[0].name:
        files = sorted(p for p in Path(reader.path).glob("*") if p.suffix in (".mcap", ".db3"))
    storage_id = "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"
    return storage_id, files


@dataclass
class TopicSummary:
    name: str
    msgtype: str
    count: int
    installed: bool  # a Python message class exists, so the topic can be played
    offered_qos: list[Qos] = field(default_factory=list)


@dataclass
class BagSummary:
    path: Path
    storage: str
    files: list[Path]
    size_bytes: int
    start_ns: int
    end_ns: int
    message_count: int
    topics: list[TopicSummary]

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "storage": self.storage,
            "files": [str(f) for f in self.files],
            "size_bytes": self.size_bytes,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_s": self.duration_s,
            "message_count": self.message_count,
            "topics": [
                {"name": t.name, "type": t.msgtype, "count": t.count, "installed": t.installed}
                for t in self.topics
            ],
        }


def bag_info(path: str | Path) -> BagSummary:
    """Summarise a bag like `ros2 bag info`: storage, size, duration and topics."""
    with open_bag(path) as reader:
        storage, files = bag_storage(reader)
        counts: dict[tuple[str, str], int] = {}
        qos: dict[tuple[str, str], list[Qos]] = {}
        for conn in reader.connections:
            key = (conn.topic, conn.msgtype)
            counts[key] = counts.get(key, 0) + conn.msgcount
            if isinstance(conn.ext, ConnectionExtRosbag2):
                qos.setdefault(key, list(conn.ext.offered_qos_profiles))
        topics = [
            TopicSummary(topic, msgtype, n, import_msg_class(msgtype) is not None, qos.get((topic, msgtype), []))
            for (topic, msgtype), n in sorted(counts.items())
        ]
        count = reader.message_count
        start = reader.start_time if count else 0
        end = reader.end_time - 1 if count else 0  # rosbags reports end as exclusive (+1 ns)
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else Path(path).stat().st_size
    return BagSummary(Path(path), storage, files, size, start, end, count, topics)


def format_info(summary: BagSummary) -> str:
    """Human-readable text of a BagSummary, laid out like `ros2 bag info`."""
    def stamp(ns: int) -> str:
        return time.strftime("%b %d %Y %H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9:09d} UTC ({ns / 1e9:.9f})"

    lines = [
        f"Files:             {', '.join(f.name for f in summary.files)}",
        f"Bag size:          {_human_size(summary.size_bytes)}",
        f"Storage id:        {summary.storage}",
        f"Duration:          {summary.duration_s:.9f}s",
        f"Start:             {stamp(summary.start_ns)}",
        f"End:               {stamp(summary.end_ns)}",
        f"Messages:          {summary.message_count}",
        f"Topic information: ({len(summary.topics)} topics)",
    ]
    width = max((len(t.name) for t in summary.topics), default=0)
    for t in summary.topics:
        note = "" if t.installed else "  [type not installed: play skips it]"
        lines.append(f"  Topic: {t.name:<{width}} | Type: {t.msgtype} | Count: {t.count}{note}")
    return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


# --------------------------------------------------------------------------- types


def import_msg_class(msgtype: str) -> type | None:
    """The rclpy message class for 'pkg/msg/Name', or None when it is not installed."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        return None
    try:
        module = importlib.import_module(f"{parts[0]}.msg")
    except ImportError:
        return None
    cls = getattr(module, parts[2], None)
    return cls if isinstance(cls, type) else None


def _msg_search_dirs(package: str) -> list[Path]:
    """Where the .msg files of an interface package may live (install, venv, source tree)."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [Path(sys.prefix), _REPO_ROOT / "install"]
    try:
        module = importlib.import_module(package)
        module_file = getattr(module, "__file__", None)
        if module_file:  # <prefix>/lib/pythonX.Y/site-packages/<pkg>/__init__.py
            prefixes.append(Path(module_file).resolve().parents[4])
    except ImportError:
        pass
    dirs = [p / "share" / package / "msg" for p in prefixes]
    dirs.append(_REPO_ROOT / package / "msg")  # source tree, before colcon ran
    return [d for d in dirs if d.is_dir()]


def register_msg_type(typestore: Typestore, msgtype: str) -> bool:
    """Teach the typestore a type (and its dependencies) from its .msg file.

    Returns False when no definition can be found.
    """
    if msgtype in typestore.fielddefs:
        return True
    package, _, name = msgtype.split("/")
    for directory in _msg_search_dirs(package):
        msg_file = directory / f"{name}.msg"
        if msg_file.is_file():
            types = get_types_from_msg(msg_file.read_text(), msgtype)
            typestore.register(types)
            for _, fields in types.values():
                for dep in _field_type_names(fields):
                    if dep not in typestore.fielddefs and not register_msg_type(typestore, dep):
                        return False
            return True
    return False


def _field_type_names(fields: Iterable[Any]) -> list[str]:
    """Names of the message types referenced by rosbags field definitions."""
    def refs(desc: tuple[Any, Any]) -> list[str]:
        kind, payload = desc
        if kind.name == "NAME":
            return [payload]
        if kind.name in ("ARRAY", "SEQUENCE"):
            return refs(payload[0])
        return []

    return [name for _, desc in fields for name in refs(desc)]


def make_typestore(extra_types: Iterable[str] = ()) -> Typestore:
    """ROS 2 Kilted typestore plus the given custom types (e.g. specvla_msgs/msg/SafetyVerdict)."""
    store = get_typestore(Stores.ROS2_KILTED)
    for msgtype in extra_types:
        register_msg_type(store, msgtype)
    return store


# --------------------------------------------------------------------------- QoS


def qos_preset(name: str) -> QoSProfile:
    """Named QoS used by play/record: sensor_data, reliable, latched, system_default."""
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
        qos_profile_system_default,
    )

    presets = {
        "sensor_data": qos_profile_sensor_data,
        "reliable": QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE),
        "latched": QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        ),
        "system_default": qos_profile_system_default,
    }
    if name not in presets:
        raise ValueError(f"unknown QoS preset {name!r}; choose one of {sorted(presets)}")
    return presets[name]


def default_play_qos_name(topic: str, msgtype: str, offered: Sequence[Qos] = ()) -> str:
    """Which preset play uses for a topic unless told otherwise.

    The instruction (and anything recorded transient-local): latched, so a
    late subscriber still gets it. Otherwise the QoS the recorded publishers
    offered, like `ros2 bag play` (reliable only if all were reliable); with
    none recorded: sensor_data for images and other sensor streams (the
    camera QoS of the node), reliable for everything else.
    """
    if topic.endswith(LATCHED_TOPIC_SUFFIXES):
        return "latched"
    if offered:
        if all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered):
            return "latched"
        return "reliable" if all(q.reliability == QosReliability.RELIABLE for q in offered) else "sensor_data"
    return "sensor_data" if msgtype in SENSOR_TYPES else "reliable"


def qos_to_rosbags(profile: QoSProfile) -> Qos:
    """rclpy QoSProfile -> rosbags Qos (stored in the bag as offered_qos_profiles)."""
    def qtime(duration: Any) -> QosTime:
        ns = int(getattr(duration, "nanoseconds", 0))
        if ns <= 0 or ns >= 2**63 - 1:
            return _INFINITE_QOS_TIME if ns else QosTime(0, 0)
        return QosTime(ns // 10**9, ns % 10**9)

    return Qos(
        history=QosHistory[profile.history.name],
        depth=int(profile.depth),
        reliability=QosReliability[profile.reliability.name],
        durability=QosDurability[profile.durability.name],
        deadline=qtime(profile.deadline),
        lifespan=qtime(profile.lifespan),
        liveliness=QosLiveliness[profile.liveliness.name],
        liveliness_lease_duration=qtime(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def parse_mapping(items: Iterable[str], what: str) -> dict[str, str]:
    """Parse `from:=to` pairs (remaps, QoS overrides)."""
    result: dict[str, str] = {}
    for item in items:
        left, sep, right = item.partition(":=")
        if not sep or not left or not right:
            raise ValueError(f"bad {what} {item!r}: expected FROM:=TO")
        result[left] = right
    return result


def use_shm_profile(env: dict[str, str] | os._Environ[str] | None = None) -> Path | None:
    """Point Fast DDS at the shipped shared-memory profile unless the user chose one.

    Must run before rclpy.init() (the participant reads it when created).
    Returns the profile in effect, or None when the user's own is kept.
    """
    env = os.environ if env is None else env
    if any(env.get(var) for var in _PROFILE_ENV_VARS):
        return None
    # Fast DDS 3 (Jazzy/Kilted) reads FASTDDS_*; it warns that FASTRTPS_* (Humble's name) is deprecated.
    env[_PROFILE_ENV_VARS[0]] = str(SHM_PROFILE_PATH)
    return SHM_PROFILE_PATH


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
        qos = qos_preset(self.config.qos[topic]) if topic in self.config.qos else _subscriber_qos(offered)
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


def _subscriber_qos(offered: Sequence[QoSProfile]) -> QoSProfile:
    """A subscription QoS that matches every current publisher (what rosbag2 does).

    Reliable only if all publishers are reliable; transient-local only if all
    are (to catch latched messages); a deep queue so bursts are not dropped.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = bool(offered) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1000,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, str, int, bytes]],
    storage: str = "mcap",
    typestore: Typestore | None = None,
    qos: dict[str, list[Qos]] | None = None,
    custom_data: dict[str, str] | None = None,
) -> Path:
    """Write (topic, msgtype, timestamp_ns, cdr_bytes) tuples to a new bag.

    Used by scripts and tests to build bags from messages made in code;
    timestamps may come in any order (readers sort them).
    """
    if storage not in STORAGE_IDS:
        raise ValueError(f"storage must be one of {sorted(STORAGE_IDS)}, got {storage!r}")
    store = typestore or make_typestore()
    conns: dict[tuple[str, str], Connection] = {}
    with Writer(Path(path), version=9, storage_plugin=STORAGE_IDS[storage]) as writer:
        for key, value in (custom_data or {}).items():
            writer.set_custom_data(key, value)
        for topic, msgtype, stamp, raw in messages:
            if (topic, msgtype) not in conns:
                if not register_msg_type(store, msgtype):
                    raise BagError(f"no definition for message type {msgtype}")
                conns[(topic, msgtype)] = writer.add_connection(
                    topic, msgtype, typestore=store, offered_qos_profiles=(qos or {}).get(topic, [])
                )
            writer.write(conns[(topic, msgtype)], int(stamp), raw)
    return Path(path)
