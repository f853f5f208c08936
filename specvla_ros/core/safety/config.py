"""Safety limits and scene for the gate, read from YAML.

Two files: ``config/safety.yaml`` (workspace, speeds, action bounds, margins,
scene obstacles, collision distances, singularity threshold, gripper range)
and ros2_control's ``joint_limits:`` YAML (``config/panda_joint_limits.yaml``)
that it names. Both ship inside the package too (``specvla_ros/data/config``),
so a pip-installed user has them without the repository.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from specvla_ros.core.paths import DATA_DIR, PACKAGE_DIR
from specvla_ros.core.types import ACTION_DIM, PANDA_JOINT_NAMES

ACTION_SPACES = ("ee_delta", "joint_delta", "joint_position")
SPEED_ENVELOPES = ("inscribed", "per_axis")

#: Panda link pairs that never touch within the joint limits (MoveIt's Panda SRDF,
#: "Never"), plus link5/link7 whose simple primitives overlap in many poses.
PANDA_SELF_COLLISION_IGNORE: tuple[tuple[str, str], ...] = tuple(
    (f"panda_link{a}", f"panda_link{b}")
    for a, b in ((0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (2, 4), (2, 6), (3, 5), (3, 6), (3, 7), (4, 6), (4, 7), (5, 7))
)

_PKG_CONFIG = DATA_DIR / "config"
_REPO_CONFIG = PACKAGE_DIR.parent / "config"


def default_config_dir() -> Path:
    """Directory holding the shipped ``safety.yaml`` (package data first, then the repo's ``config/``)."""
    for d in (_PKG_CONFIG, _REPO_CONFIG):
        if (d / "safety.yaml").is_file():
            return d
    raise FileNotFoundError(f"shipped safety.yaml not found in {_PKG_CONFIG} or {_REPO_CONFIG}")


def default_safety_config_path() -> Path:
    return default_config_dir() / "safety.yaml"


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits (arrays in ``names`` order); inf where a limit is absent."""

    names: tuple[str, ...]
    min_position: np.ndarray
    max_position: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.names)
        for attr in ("min_position", "max_position", "max_velocity", "max_acceleration"):
            arr = np.asarray(getattr(self, attr), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"JointLimits.{attr} must have shape ({n},), got {arr.shape}")
            if np.any(np.isnan(arr)):
                raise ValueError(f"JointLimits.{attr} has NaN: {arr}")
            object.__setattr__(self, attr, arr)
        if np.any(self.max_position <= self.min_position):
            raise ValueError(f"joint limits need max_position > min_position, got {self.min_position} / {self.max_position}")
        if np.any(self.max_velocity <= 0) or np.any(self.max_acceleration <= 0):
            raise ValueError(f"max_velocity {self.max_velocity} and max_acceleration {self.max_acceleration} must be > 0")


def load_joint_limits(path: str | Path, joint_names: tuple[str, ...] = PANDA_JOINT_NAMES) -> JointLimits:
    """Read ros2_control ``joint_limits:`` YAML (top level, or under ``<node>: ros__parameters:``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read joint limits {path}: {exc}") from exc
    limits = _find_joint_limits(data)
    if limits is None:
        raise ValueError(f"{path}: no 'joint_limits:' mapping found")
    out: dict[str, list[float]] = {"min": [], "max": [], "vel": [], "acc": []}
    for name in joint_names:
        j = limits.get(name)
        if not isinstance(j, dict):
            raise ValueError(f"{path}: joint_limits has no entry for joint {name!r}")
        try:
            has_pos = bool(j.get("has_position_limits", False))
            out["min"].append(float(j["min_position"]) if has_pos else -np.inf)
            out["max"].append(float(j["max_position"]) if has_pos else np.inf)
            out["vel"].append(float(j["max_velocity"]) if j.get("has_velocity_limits", False) else np.inf)
            out["acc"].append(float(j["max_acceleration"]) if j.get("has_acceleration_limits", False) else np.inf)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: joint {name!r} limit entry incomplete or not a number: {exc}") from exc
    return JointLimits(tuple(joint_names), np.array(out["min"]), np.array(out["max"]), np.array(out["vel"]),
                       np.array(out["acc"]))


def _find_joint_limits(data: Any) -> dict | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("joint_limits"), dict):
        return data["joint_limits"]
    for value in data.values():  # <node>: ros__parameters: joint_limits:
        found = _find_joint_limits(value)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class BoxObstacle:
    """Axis-aligned box in the base frame [m]."""

    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]

    def __post_init__(self) -> None:
        c, s = np.asarray(self.center, dtype=float), np.asarray(self.size, dtype=float)
        if c.shape != (3,) or s.shape != (3,) or not np.all(np.isfinite(c)) or not np.all(np.isfinite(s)):
            raise ValueError(f"box {self.name!r}: center {self.center} and size {self.size} must be 3 finite numbers")
        if np.any(s <= 0):
            raise ValueError(f"box {self.name!r}: size {self.size} must be > 0")


@dataclass(frozen=True)
class SafetyConfig:
    """Every limit the gate enforces. Units: m, rad, s."""

    joint_limits: JointLimits
    action_space: str = "ee_delta"
    joint_limit_margin: float = 0.05  # [rad] halt when inside it and moving toward the limit
    # instead of halting when joints inside their margin would move toward the limit: hold those
    # joints and move with the others (the least-squares closest TCP motion; a minimal change to a
    # safe action, checked like any other) -- a robot parked near a limit can still move away
    hold_limit_joints: bool = True
    # instead of halting a motion that would come too close to an obstacle, a scene object or
    # the arm itself (and closer than now): keep its part along the surface and drop the part
    # into it (the first-order closest joint target that keeps the distance; checked like any
    # other) -- a robot started next to an object, or skimming the table, can still move
    slide_along_obstacles: bool = True
    # instead of halting a motion that would raise the Jacobian's condition number past the
    # singularity threshold: drop the part that folds the arm into the singular pose and turn the
    # redundant joints away from it (the first-order closest target; checked like any other) --
    # a policy that drove the arm near a singularity can still move on
    steer_from_singularity: bool = True
    # [rad] measured positions further outside the limits are bad input (broken encoder, wrong
    # units): nothing is commanded from them, not even a hold at them
    joint_state_tolerance: float = 0.05
    velocity_scale: float = 1.0  # fraction of each joint's max_velocity allowed
    tcp_max_speed: float = 0.25  # [m/s] ISO 10218 reduced speed
    tcp_max_angular_speed: float = 1.5  # [rad/s]
    speed_envelope: str = "per_axis"  # how the TCP speed limits become per-dimension intervals
    workspace_min: tuple[float, float, float] = (0.2, -0.45, 0.01)  # [m] TCP box, base frame
    workspace_max: tuple[float, float, float] = (0.8, 0.45, 0.6)
    action_low: tuple[float, ...] = (-0.05, -0.05, -0.05, -0.3, -0.3, -0.3, 0.0)  # robot units per step
    action_high: tuple[float, ...] = (0.05, 0.05, 0.05, 0.3, 0.3, 0.3, 1.0)
    gripper_min_opening: float = 0.0  # [m]
    gripper_max_opening: float = 0.08  # [m], what gripper action 1.0 means
    collision_enabled: bool = True
    table_height: float | None = 0.0  # [m] table top z (everything below is an obstacle); None = no table
    boxes: tuple[BoxObstacle, ...] = ()
    min_obstacle_distance: float = 0.005  # [m] robot links to table/boxes
    min_self_distance: float = 0.01  # [m] between non-adjacent links
    min_object_distance: float = 0.002  # [m] robot links to known scene objects (SafetyGate.set_scene_objects)
    # links that may touch an object marked gripper_may_touch (the task's object)
    gripper_links: tuple[str, ...] = ("panda_hand", "panda_leftfinger", "panda_rightfinger")
    # the two finger links: the space between them counts as solid against scene objects
    # (the gate's fingers are locked open; a closed gripper must not straddle an object); () = off
    finger_links: tuple[str, ...] = ("panda_leftfinger", "panda_rightfinger")
    scene_object_slots: int = 8  # box slots pre-allocated for scene objects (the pool grows when exceeded)
    obstacle_ignore_links: tuple[str, ...] = ("panda_link0",)  # resting on the table
    self_collision_ignore: tuple[tuple[str, str], ...] = PANDA_SELF_COLLISION_IGNORE
    singularity_halt_condition: float = 90.0  # Jacobian condition number (MoveIt Servo's hard stop)
    ik_max_iterations: int = 50
    ik_position_tolerance: float = 1e-4  # [m]
    ik_rotation_tolerance: float = 1e-3  # [rad]
    urdf: str | None = None  # None = shipped Panda
    source: str = ""  # file it came from (for messages)

    def __post_init__(self) -> None:
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"action_space {self.action_space!r} must be one of {ACTION_SPACES}")
        if self.speed_envelope not in SPEED_ENVELOPES:
            raise ValueError(f"speed_envelope {self.speed_envelope!r} must be one of {SPEED_ENVELOPES}")
        for name in ("joint_limit_margin", "joint_state_tolerance", "min_obstacle_distance", "min_self_distance", "min_object_distance",
                     "gripper_min_opening"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        for name in ("tcp_max_speed", "tcp_max_angular_speed", "gripper_max_opening", "singularity_halt_condition",
                     "ik_position_tolerance", "ik_rotation_tolerance"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")
        if not (0.0 < self.velocity_scale <= 1.0):
            raise ValueError(f"velocity_scale must be in (0, 1], got {self.velocity_scale}")
        if self.gripper_min_opening >= self.gripper_max_opening:
            raise ValueError(f"gripper_min_opening {self.gripper_min_opening} must be < gripper_max_opening "
                             f"{self.gripper_max_opening}")
        if not (isinstance(self.scene_object_slots, int) and 0 <= self.scene_object_slots <= 256):
            raise ValueError(f"scene_object_slots must be an integer in [0, 256], got {self.scene_object_slots!r}")
        if not all(isinstance(n, str) and n for n in self.gripper_links):
            raise ValueError(f"gripper_links must be non-empty link names, got {self.gripper_links!r}")
        if len(self.finger_links) not in (0, 2) or not all(isinstance(n, str) and n for n in self.finger_links):
            raise ValueError(f"finger_links must be two link names or empty, got {self.finger_links!r}")
        if self.ik_max_iterations < 1:
            raise ValueError(f"ik_max_iterations must be >= 1, got {self.ik_max_iterations}")
        wmin, wmax = np.asarray(self.workspace_min, float), np.asarray(self.workspace_max, float)
        if wmin.shape != (3,) or wmax.shape != (3,) or np.any(~np.isfinite(wmin)) or np.any(~np.isfinite(wmax)) \
                or np.any(wmax <= wmin):
            raise ValueError(f"workspace min {self.workspace_min} / max {self.workspace_max} must be 3 finite "
                             "numbers each with max > min")
        n = self.action_dim
        lo, hi = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if lo.shape != (n,) or hi.shape != (n,):
            raise ValueError(f"action_low/action_high need {n} values for action_space {self.action_space!r}, "
                             f"got {lo.shape[0] if lo.ndim else lo} / {hi.shape[0] if hi.ndim else hi}")
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(hi <= lo):
            raise ValueError(f"action bounds need high > low, got low={self.action_low} high={self.action_high}")
        motion = slice(0, 6) if self.action_space == "ee_delta" else slice(0, self.n_joints)
        if self.action_space != "joint_position" and (np.any(lo[motion] >= 0) or np.any(hi[motion] <= 0)):
            # uniform scaling toward zero motion must stay inside the bounds
            raise ValueError(f"delta action bounds must contain 0, got low={self.action_low} high={self.action_high}")
        if self.table_height is not None and not np.isfinite(self.table_height):
            raise ValueError(f"table_height must be finite or null, got {self.table_height}")

    @property
    def n_joints(self) -> int:
        return len(self.joint_limits.names)

    @property
    def action_dim(self) -> int:
        """7 for ee_delta (OpenVLA layout); n_joints for the joint spaces (gripper held)."""
        return ACTION_DIM if self.action_space == "ee_delta" else self.n_joints


def _tuple3(v: Any, what: str, path: Path) -> tuple[float, float, float]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {what} must be a list of 3 numbers, got {v!r}") from exc
    if len(t) != 3:
        raise ValueError(f"{path}: {what} must be a list of 3 numbers, got {v!r}")
    return t  # type: ignore[return-value]


def load_safety_config(path: str | Path | None = None, **overrides: Any) -> SafetyConfig:
    """Read ``safety.yaml`` (None = the shipped one); ``overrides`` replace fields after loading.

    Raises ValueError naming the file and the bad entry.
    """
    path = Path(path) if path else default_safety_config_path()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read safety config {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("safety"), dict):
        raise ValueError(f"{path}: expected a top-level 'safety:' mapping")
    s = data["safety"]
    known = {"action_space", "joint_limits_file", "joint_names", "urdf", "joint_limit_margin", "hold_limit_joints",
             "slide_along_obstacles", "steer_from_singularity",
             "joint_state_tolerance", "velocity_scale",
             "tcp_max_speed", "tcp_max_angular_speed", "speed_envelope", "workspace", "action_bounds", "gripper",
             "collision", "singularity", "ik"}
    unknown = set(s) - known
    if unknown:
        raise ValueError(f"{path}: unknown safety keys {sorted(unknown)}; known: {sorted(known)}")
    names = tuple(s.get("joint_names", PANDA_JOINT_NAMES))
    jl_file = Path(s.get("joint_limits_file", "panda_joint_limits.yaml"))
    if not jl_file.is_absolute():
        jl_file = path.parent / jl_file
    kw: dict[str, Any] = {"joint_limits": load_joint_limits(jl_file, names), "source": str(path)}
    for key in ("hold_limit_joints", "slide_along_obstacles", "steer_from_singularity"):
        if key in s:
            if not isinstance(s[key], bool):
                raise ValueError(f"{path}: {key} must be true or false, got {s[key]!r}")
            kw[key] = s[key]
    for key in ("action_space", "joint_limit_margin", "joint_state_tolerance", "velocity_scale", "tcp_max_speed", "tcp_max_angular_speed",
                "speed_envelope"):
        if key in s:
            kw[key] = s[key]
    if s.get("urdf"):
        urdf = Path(s["urdf"])
        kw["urdf"] = str(urdf if urdf.is_absolute() else path.parent / urdf)
    if "workspace" in s:
        kw["workspace_min"] = _tuple3(s["workspace"].get("min"), "workspace.min", path)
        kw["workspace_max"] = _tuple3(s["workspace"].get("max"), "workspace.max", path)
    if "action_bounds" in s:
        kw["action_low"] = tuple(float(x) for x in s["action_bounds"]["low"])
        kw["action_high"] = tuple(float(x) for x in s["action_bounds"]["high"])
    g = s.get("gripper", {})
    if "min_opening" in g:
        kw["gripper_min_opening"] = float(g["min_opening"])
    if "max_opening" in g:
        kw["gripper_max_opening"] = float(g["max_opening"])
    c = s.get("collision", {})
    if "enabled" in c:
        kw["collision_enabled"] = bool(c["enabled"])
    if "table_height" in c:
        kw["table_height"] = None if c["table_height"] is None else float(c["table_height"])
    if "min_obstacle_distance" in c:
        kw["min_obstacle_distance"] = float(c["min_obstacle_distance"])
    if "min_self_distance" in c:
        kw["min_self_distance"] = float(c["min_self_distance"])
    if "min_object_distance" in c:
        kw["min_object_distance"] = float(c["min_object_distance"])
    if "gripper_links" in c:
        links = c["gripper_links"] or ()
        if not isinstance(links, (list, tuple)):
            raise ValueError(f"{path}: collision.gripper_links must be a list of link names")
        kw["gripper_links"] = tuple(str(n) for n in links)
    if "finger_links" in c:
        links = c["finger_links"] or ()
        if not isinstance(links, (list, tuple)):
            raise ValueError(f"{path}: collision.finger_links must be a list of two link names")
        kw["finger_links"] = tuple(str(n) for n in links)
    if "scene_object_slots" in c:
        kw["scene_object_slots"] = c["scene_object_slots"]
    if "obstacle_ignore_links" in c:
        kw["obstacle_ignore_links"] = tuple(c["obstacle_ignore_links"] or ())
    if "self_collision_ignore" in c:
        pairs = c["self_collision_ignore"] or ()
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise ValueError(f"{path}: collision.self_collision_ignore must be a list of [link_a, link_b] pairs")
        kw["self_collision_ignore"] = tuple((str(a), str(b)) for a, b in pairs)
    boxes = []
    for i, b in enumerate(c.get("boxes") or ()):
        if not isinstance(b, dict):
            raise ValueError(f"{path}: collision.boxes[{i}] must be a mapping with center and size")
        boxes.append(BoxObstacle(str(b.get("name", f"box{i}")), _tuple3(b.get("center"), f"boxes[{i}].center", path),
                                 _tuple3(b.get("size"), f"boxes[{i}].size", path)))
    kw["boxes"] = tuple(boxes)
    if "halt_condition_number" in s.get("singularity", {}):
        kw["singularity_halt_condition"] = float(s["singularity"]["halt_condition_number"])
    ik = s.get("ik", {})
    for src, dst in (("max_iterations", "ik_max_iterations"), ("position_tolerance", "ik_position_tolerance"),
                     ("rotation_tolerance", "ik_rotation_tolerance")):
        if src in ik:
            kw[dst] = ik[src]
    kw.update(overrides)
    try:
        return SafetyConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
