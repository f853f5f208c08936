"""QoS for playing and recording: named presets, the default per topic, conversion to the bag's
QoS records, and the shared-memory transport profile for large images.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

from specvla_ros.core.paths import DATA_DIR
from specvla_ros.ros.bag.io import LATCHED_TOPIC_SUFFIXES, SENSOR_TYPES

if TYPE_CHECKING:
    from rclpy.qos import QoSProfile

SHM_PROFILE_PATH = DATA_DIR / "fastdds" / "shm_profile.xml"
_PROFILE_ENV_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
_INFINITE_QOS_TIME = QosTime(2147483647, 4294967295)  # what rosbag2 writes for "infinite"


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


def subscriber_qos(offered: Sequence[QoSProfile]) -> QoSProfile:
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
