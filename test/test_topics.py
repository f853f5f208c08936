"""ros/topics.py: every name has a message type that exists and a QoS profile that exists."""
from __future__ import annotations

import importlib

from specvla_ros.ros import qos, topics


def test_every_topic_has_a_real_type_and_profile() -> None:
    for name, type_name in topics.TYPES.items():
        package, kind, msg = type_name.split("/")
        assert kind == "msg" and hasattr(importlib.import_module(f"{package}.msg"), msg), type_name
    for name, profile in topics.QOS.items():
        assert name in topics.TYPES, name
        assert topics.qos_profile(name) is getattr(qos, profile)
    assert set(topics.POLICY_INPUTS) | set(topics.POLICY_OUTPUTS) <= set(topics.TYPES)


def test_private_names_resolve_under_the_node() -> None:
    assert topics.resolved(topics.SAFETY) == "/specvla_node/safety"
    assert topics.resolved(topics.TIMING, "robot2") == "/robot2/timing"
    assert topics.resolved(topics.IMAGE) == topics.IMAGE
