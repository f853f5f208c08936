"""Reading, summarising and writing rosbag2 bags (MCAP or sqlite3, with metadata.yaml) with `rosbags`;
no ROS environment needed.
"""
from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import Connection, ConnectionExtRosbag2, Qos
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError

from specvla_ros.ros.bag.types import import_msg_class, make_typestore, register_msg_type
from specvla_ros.ros import topics

if TYPE_CHECKING:
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
