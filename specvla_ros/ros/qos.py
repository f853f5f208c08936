"""QoS profiles of every specvla topic, named per use.

Each publisher/subscription is created with ``OVERRIDES``, so any topic's
history/depth/reliability/durability can be overridden from the parameter
file with ROS' standard ``qos_overrides./topic.subscription.reliability``
parameters (read at creation time, i.e. on configure).
"""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

#: Cameras publish best effort: a reliable subscription would receive nothing
#: from them. Depth 1 — only the newest frame matters.
CAMERA = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)

#: Joint states are usually published reliable, but best effort is
#: compatible with both; keep a few in case two arrive between reads.
JOINT_STATES = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

#: Latched: a late joiner still gets the last instruction / e-stop state.
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

#: Commands to controllers: reliable, volatile (an old command must never be replayed to a late joiner).
COMMAND = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

#: Known scene objects (perception / simulator): only the newest set matters; best
#: effort subscribes to reliable and best-effort publishers alike.
SCENE_OBJECTS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
#: Monitoring outputs (verdicts, stats, narration, diagnostics).
STATUS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

#: Lets users override every QoS policy of a topic from parameters.
OVERRIDES = QoSOverridingOptions.with_default_policies()
