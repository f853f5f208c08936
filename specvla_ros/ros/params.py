"""The node's parameter schema: one declaration per parameter (type, units,
range, read-only), with the default values read from ``config/specvla.yaml``
so that file stays the single source of defaults for node, launch files and
bring-up.

Pure Python apart from building ``ParameterDescriptor`` objects; validation
helpers return a reason string (or None) so the node can refuse a change and
say why.
"""
from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from specvla_ros.core.types import WEIGHT_DTYPES

NODE_NAME = "specvla_node"
CONFIG_NAME = "specvla.yaml"

BOOL, INT, DOUBLE, STRING, STRING_ARRAY = "bool", "int", "double", "string", "string_array"
_PY_TYPES: dict[str, tuple[type, ...]] = {
    BOOL: (bool,),
    INT: (int,),
    DOUBLE: (float, int),
    STRING: (str,),
    STRING_ARRAY: (list, tuple),
}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its type, description (with units), bounds and whether it needs a restart."""

    name: str
    type: str
    description: str
    read_only: bool = True
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # regular expression a string value must match fully

    def __post_init__(self) -> None:
        if self.type not in _PY_TYPES:
            raise ValueError(f"parameter {self.name}: unknown type {self.type!r}")
        if (self.min is not None or self.max is not None) and self.type not in (INT, DOUBLE):
            raise ValueError(f"parameter {self.name}: a range needs an int or double type")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"parameter {self.name}: min {self.min} > max {self.max}")

    def check(self, value: Any) -> str | None:
        """Reason the value is not acceptable, or None when it is."""
        if self.type != DOUBLE and isinstance(value, bool) != (self.type == BOOL):
            return f"{self.name}: expected {self.type}, got {type(value).__name__}"
        if not isinstance(value, _PY_TYPES[self.type]):
            return f"{self.name}: expected {self.type}, got {type(value).__name__}"
        if self.type == DOUBLE and (isinstance(value, bool) or not math.isfinite(float(value))):
            return f"{self.name}: expected a finite number, got {value!r}"
        if self.min is not None and value < self.min:
            return f"{self.name}: {value} is below the minimum {self.min}"
        if self.max is not None and value > self.max:
            return f"{self.name}: {value} is above the maximum {self.max}"
        if self.choices and value not in self.choices:
            return f"{self.name}: {value!r} is not one of {', '.join(self.choices)}"
        if self.pattern and not re.fullmatch(self.pattern, str(value)):
            return f"{self.name}: {value!r} does not match {self.pattern}"
        if self.type == STRING_ARRAY and not all(isinstance(v, str) and v for v in value):
            return f"{self.name}: every entry must be a non-empty string"
        return None


_MODEL = "(restart)"
SCHEMA: tuple[ParamSpec, ...] = (
    ParamSpec("autostart", BOOL, "Configure and activate on start-up, for users without a lifecycle manager"),
    # models: loaded on configure, so a change needs a cleanup + configure (restart)
    ParamSpec("target_dir", STRING, f"Target VLA checkpoint directory; 'default' = the shipped model {_MODEL}"),
    ParamSpec("draft_dir", STRING, f"Draft checkpoint directory; 'default' = shipped, '' = no speculation {_MODEL}"),
    ParamSpec("drafter", STRING, f"Drafter kind {_MODEL}", choices=("model", "eagle", "none")),
    ParamSpec("device", STRING, f"Torch device {_MODEL}", pattern=r"auto|cpu|mps|cuda(:\d+)?"),
    ParamSpec("dtype", STRING, f"Model weight dtype {_MODEL}", choices=WEIGHT_DTYPES),
    ParamSpec("unnorm_key", STRING, f"Action statistics key; '' = the checkpoint's only/default one {_MODEL}"),
    ParamSpec("safety_config", STRING, f"safety.yaml for the gate (workspace, speed, obstacles; names the joint_limits YAML); '' = shipped Panda config {_MODEL}"),
    ParamSpec("safe_envelope", BOOL, f"Accept/resample only action bins inside the safety envelope {_MODEL}"),
    ParamSpec("redecode_shrink", DOUBLE, f"Envelope shrink factor when re-decoding a halted action [1] {_MODEL}",
              min=0.0, max=1.0),
    ParamSpec("ensemble", BOOL, f"Blend each plan with the earlier plans' predictions for the same steps "
              f"(temporal ensembling of overlapping chunks) before the safety gate {_MODEL}"),
    ParamSpec("ensemble_coeff", DOUBLE, f"Ensembling weight decay, w_i = exp(-coeff i) with i = 0 the oldest "
              f"prediction (0 = plain mean) [1] {_MODEL}", min=0.0, max=10.0),
    ParamSpec("warmup_steps", INT, f"Decisions run on configure to warm up the models [steps] {_MODEL}",
              min=0, max=50),
    ParamSpec("decode.mode", STRING, f"Accept rule of the speculative decoder {_MODEL}",
              choices=("greedy", "sample", "relaxed")),
    ParamSpec("decode.relax_bins", INT, f"Relaxed mode: accept |bin_draft - bin_target| <= this [bins] {_MODEL}",
              min=0, max=255),
    ParamSpec("decode.draft_len", INT, f"Draft tokens per verify pass (start value when adaptive) [tokens] {_MODEL}",
              min=1, max=64),
    ParamSpec("decode.max_draft_len", INT, f"Upper bound of the adaptive draft length [tokens] {_MODEL}",
              min=1, max=64),
    ParamSpec("decode.max_proposal_len", INT, f"Most tokens one target pass verifies, free drafts and the prefill "
              f"guess included [tokens] {_MODEL}", min=1, max=512),
    ParamSpec("decode.adaptive_draft", BOOL, f"Adapt the draft length to acceptance {_MODEL}"),
    ParamSpec("decode.history_actions", BOOL,
              f"Also draft the previous decision's action tokens (free, lossless in greedy/sample) {_MODEL}"),
    ParamSpec("decode.history_min_accept", DOUBLE,
              f"history_actions drafts an action dimension only while the previous decision's tokens matched "
              f"the target's at least this often there (running, per dimension; the draft model drafts the "
              f"others; 0 = always) [1] {_MODEL}", min=0.0, max=1.0),
    ParamSpec("decode.lookahead", BOOL,
              f"Draft the target's own predictions past a rejected draft (free, lossless in greedy/sample) {_MODEL}"),
    ParamSpec("decode.whole_narration", BOOL,
              f"The draft model drafts the whole narration in one proposal (draft_len limits action tokens) {_MODEL}"),
    ParamSpec("decode.max_narration_tokens", INT, f"Narration budget before the action tokens [tokens] {_MODEL}",
              min=0, max=512),
    ParamSpec("decode.horizon", INT, f"Actions decoded per decision: 0 = the model's action-chunk length, fewer is "
              f"allowed (a plan of that many points) [steps] {_MODEL}", min=0, max=32),
    ParamSpec("decode.temperature", DOUBLE, f"Sample mode temperature [1] {_MODEL}", min=1e-3, max=10.0),
    ParamSpec("decode.seed", INT, f"Sample mode RNG seed {_MODEL}", min=0, max=2**31 - 1),
    # inference process
    ParamSpec("inference.backend", STRING,
              "process: the models run in their own process (specvla_policy_server), safe from the GIL of "
              "the node's executor threads; in_process: on the node's control thread (debugging only: high-rate "
              f"inputs starve it) {_MODEL}", choices=("process", "in_process")),
    ParamSpec("inference.server_address", STRING,
              "Unix socket of a running specvla_policy_server to join (one server, several robots); "
              f"'' = start a private server {_MODEL}"),
    ParamSpec("inference.authkey_file", STRING,
              f"File with the shared server's key in hex (with inference.server_address) {_MODEL}"),
    ParamSpec("inference.threads", INT, f"Torch intra-op threads in a private server; 0 = torch's default [threads] {_MODEL}",
              min=0, max=256),
    ParamSpec("inference.nice", INT,
              f"Niceness added to a private server; negative = higher priority (needs CAP_SYS_NICE) [nice steps] {_MODEL}",
              min=-20, max=19),
    # control loop
    ParamSpec("control_period", DOUBLE, "1 / control rate [s] (restart)", min=0.01, max=10.0),
    ParamSpec("max_input_age", DOUBLE, "Camera / joint states older than this hold the robot (HALT_STALE_INPUT) [s]",
              read_only=False, min=0.01, max=60.0),
    ParamSpec("check_camera_stamp", BOOL,
              "Also judge the camera frame's age by its header stamp against the node's clock (false for a "
              "camera whose clock is not synchronised with this machine's)", read_only=False),
    ParamSpec("replan_below", INT,
              "Plan again when fewer than this many points of the current plan are left unexecuted; 0 = plan "
              "every control period that brings a new camera frame [points]", read_only=False, min=0, max=32),
    ParamSpec("command_rate", DOUBLE,
              "forward_position: rate at which the plan is streamed, interpolated between its points; 0 = one "
              "command per control period [Hz] (restart)", min=0.0, max=1000.0),
    ParamSpec("decision_deadline", DOUBLE,
              "A decision that took longer than this is not sent; the robot holds (HALT_DEADLINE) [s]",
              read_only=False, min=0.001, max=60.0),
    ParamSpec("scene_objects_topic", STRING,
              "specvla_msgs/SceneObjects topic whose boxes the safety gate checks every link against; "
              "'' = static scene only (restart)"),
    ParamSpec("scene_objects_frame", STRING,
              "frame the scene objects must be in (the robot base frame); others are dropped (restart)",
              pattern=r"[A-Za-z0-9_/]+"),
    ParamSpec("scene_objects_max_age", DOUBLE,
              "Scene objects not refreshed for this long raise a WARN diagnostic; the gate keeps the last "
              "known objects [s]", read_only=False, min=0.01, max=3600.0),
    ParamSpec("scene_objects_hold_age", DOUBLE,
              "Scene objects not refreshed for this long hold the robot (HALT_STALE_INPUT) rather than "
              "decide against an old scene; 0 = never hold [s]", read_only=False, min=0.0, max=3600.0),
    ParamSpec("command_interface", STRING,
              "joint_trajectory: trajectory_msgs/JointTrajectory; forward_position: std_msgs/Float64MultiArray (restart)",
              choices=("joint_trajectory", "forward_position")),
    ParamSpec("joint_names", STRING_ARRAY, "Arm joints in command order (restart)"),
    ParamSpec("gripper_joint_names", STRING_ARRAY, "Finger joints; gripper opening = their sum [m] (restart)"),
    ParamSpec("use_compressed_image", BOOL,
              "Subscribe to <camera>/compressed (sensor_msgs/CompressedImage) instead of the raw image (restart)"),
    ParamSpec("narration_every_step", BOOL, "Publish the narration every step, not only when it changes",
              read_only=False),
    ParamSpec("max_instruction_length", INT, "Longer instructions are rejected [characters]",
              read_only=False, min=1, max=4096),
    ParamSpec("diagnostics_period", DOUBLE, "/diagnostics publishing period [s] (restart)", min=0.1, max=60.0),
)
SPECS: dict[str, ParamSpec] = {s.name: s for s in SCHEMA}


# --------------------------------------------------------------------------- the YAML


def config_candidates() -> list[Path]:
    """Where config/specvla.yaml is looked for: source tree, then install prefixes."""
    here = Path(__file__).resolve()
    paths = [here.parents[2] / "config" / CONFIG_NAME,
             Path(sys.prefix) / "share" / "specvla_ros" / "config" / CONFIG_NAME]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            paths.append(Path(prefix) / "share" / "specvla_ros" / "config" / CONFIG_NAME)
    return paths


def default_config_path() -> Path:
    """The shipped config/specvla.yaml.

    Raises:
        FileNotFoundError: naming every place looked at.
    """
    for path in config_candidates():
        if path.is_file():
            return path
    raise FileNotFoundError(f"{CONFIG_NAME} not found in: " + ", ".join(str(p) for p in config_candidates()))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ROS parameter YAML -> {'decode.mode': ...} (lists are values, not levels)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_node_params(path: str | os.PathLike[str], node_name: str = NODE_NAME) -> dict[str, Any]:
    """The flattened ``ros__parameters`` of ``node_name`` in a ROS parameter file.

    Raises:
        ValueError: the file has no such section.
    """
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    for key in (node_name, f"/{node_name}", "/**"):
        section = doc.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("ros__parameters"), Mapping):
            return flatten(section["ros__parameters"])
    raise ValueError(f"{path}: no '{node_name}: ros__parameters:' section")


@lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    """Schema parameters' defaults, from the shipped YAML; validated against the schema.

    Raises:
        ValueError: the YAML lacks a parameter, has an unknown one, or a default breaks its spec.
    """
    path = default_config_path()
    values = {k: v for k, v in load_node_params(path).items() if not k.startswith("qos_overrides.")}
    problems = [f"missing {n}" for n in SPECS if n not in values]
    problems += [f"unknown parameter {n}" for n in values if n not in SPECS]
    problems += [r for n, v in values.items() if n in SPECS and (r := SPECS[n].check(v))]
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return {n: (float(values[n]) if SPECS[n].type == DOUBLE else values[n]) for n in SPECS}


def check_change(name: str, value: Any) -> str | None:
    """Reason a runtime change of ``name`` to ``value`` is refused, or None to accept it.

    Parameters outside the schema (use_sim_time, qos_overrides.*) are left to rclpy.
    """
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.read_only:
        return f"{name} is read-only (needs a restart)"
    return spec.check(value)


def unknown_overrides(names: Mapping[str, Any] | list[str]) -> list[str]:
    """Names given at start-up that no one declares (typos), sorted.

    rclpy's own parameters (use_sim_time, qos_overrides.*, start_type_description_service) are known.
    """
    builtin = {"use_sim_time", "start_type_description_service"}
    return sorted(n for n in names if n not in SPECS and n not in builtin and not n.startswith("qos_overrides."))


# --------------------------------------------------------------------------- rclpy glue


def descriptor(spec: ParamSpec):  # -> rcl_interfaces.msg.ParameterDescriptor
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    ptype = {BOOL: ParameterType.PARAMETER_BOOL, INT: ParameterType.PARAMETER_INTEGER,
             DOUBLE: ParameterType.PARAMETER_DOUBLE, STRING: ParameterType.PARAMETER_STRING,
             STRING_ARRAY: ParameterType.PARAMETER_STRING_ARRAY}[spec.type]
    constraints = []
    if spec.choices:
        constraints.append("one of: " + ", ".join(spec.choices))
    if spec.pattern:
        constraints.append(f"matches {spec.pattern}")
    desc = ParameterDescriptor(name=spec.name, type=ptype, description=spec.description,
                               read_only=spec.read_only, additional_constraints="; ".join(constraints))
    if spec.type == INT and (spec.min is not None or spec.max is not None):
        desc.integer_range = [IntegerRange(from_value=int(spec.min if spec.min is not None else -(2**63)),
                                           to_value=int(spec.max if spec.max is not None else 2**63 - 1), step=0)]
    if spec.type == DOUBLE and (spec.min is not None or spec.max is not None):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.min if spec.min is not None else -math.inf),
            to_value=float(spec.max if spec.max is not None else math.inf), step=0.0)]
    return desc


def declare_all(node: Any) -> dict[str, Any]:
    """Declare every schema parameter on ``node`` (defaults from the YAML) and return the values.

    Raises:
        ValueError: a value given at start-up (params file, -p) breaks its spec; the message says which.
    """
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in SCHEMA:
        if node.has_parameter(spec.name):
            param = node.get_parameter(spec.name)
        else:
            try:
                param = node.declare_parameter(spec.name, defaults()[spec.name], descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                problems.append(f"{spec.name}: {exc}")
                continue
        value = param.value
        if spec.type == STRING_ARRAY:
            value = list(value)
        reason = spec.check(value)
        if reason:
            problems.append(reason)
        values[spec.name] = value
    if problems:
        raise ValueError("invalid parameters: " + "; ".join(problems))
    return values


# --------------------------------------------------------------------------- --help


def help_requested(argv: list[str]) -> bool:
    """True when -h/--help comes before any --ros-args (ROS' own arguments are not ours)."""
    ours = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    return "-h" in ours or "--help" in ours


def usage(program: str, summary: str, specs: list[ParamSpec] | tuple[ParamSpec, ...],
          defaults_of: dict[str, Any]) -> str:
    """Usage text of a ROS node console script: how to pass parameters, then each parameter."""
    lines = [f"usage: {program} [--ros-args [--params-file FILE] [-p NAME:=VALUE] [-r FROM:=TO] ...]", "",
             summary, "", "parameters (name (type, default): meaning):"]
    for spec in specs:
        lines.append(f"  {spec.name} ({spec.type}, default {defaults_of.get(spec.name)!r}): {spec.description}")
    return "\n".join(lines)
