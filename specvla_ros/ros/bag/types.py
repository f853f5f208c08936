"""The rosbags type store: ROS 2 message definitions plus this package's (and any importable package's)
messages, registered from their .msg files.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from specvla_ros.core.paths import PACKAGE_DIR

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

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
    prefixes += [Path(sys.prefix), PACKAGE_DIR.parent / "install"]
    try:
        module = importlib.import_module(package)
        module_file = getattr(module, "__file__", None)
        if module_file:  # <prefix>/lib/pythonX.Y/site-packages/<pkg>/__init__.py
            prefixes.append(Path(module_file).resolve().parents[4])
    except ImportError:
        pass
    dirs = [p / "share" / package / "msg" for p in prefixes]
    dirs.append(PACKAGE_DIR.parent / package / "msg")  # source tree, before colcon ran
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
