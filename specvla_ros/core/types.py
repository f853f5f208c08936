"""Plain data passed between the layers: observations, robot state, safety
verdicts, decode statistics and what one policy step returns.

These are the contracts between core, sim, ros and bench; keep them free of
torch and rclpy so every layer can build and read them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from specvla_ros.core.safety.trajectory import TrajectoryVerdict

#: Order of the 7 action dimensions (OpenVLA's layout).
ACTION_DIM_NAMES: tuple[str, ...] = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
ACTION_DIM = len(ACTION_DIM_NAMES)
#: Most actions one decision may emit (an action chunk of H control steps; H = 1 is one action).
MAX_CHUNK_HORIZON = 32

#: Weight dtypes a model can be loaded in (node parameter ``dtype``, ``specvla_eval --dtype``);
#: "auto": bfloat16 on CUDA when supported, else float32.
WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "auto")

#: Franka Panda arm joints, in the order every array in the project uses.
PANDA_JOINT_NAMES: tuple[str, ...] = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_FINGER_JOINT_NAMES: tuple[str, ...] = ("panda_finger_joint1", "panda_finger_joint2")


@dataclass
class Observation:
    """What the policy sees at one control step.

    image: HxWx3 uint8 RGB; other sizes than the model's input are resized with the
        model's own method (``VLAModel.image_resize``).
    instruction: the task in plain language.
    proprio: float32 vector (arm joint positions then gripper opening [m]).
    frame_id: identifies the camera frame so vision features are computed once
        per frame (e.g. the image message stamp in ns); None means "always new".
    """

    image: np.ndarray
    instruction: str
    proprio: np.ndarray
    frame_id: int | None = None


@dataclass
class RobotState:
    """Measured state of the arm, in PANDA_JOINT_NAMES order (or the configured order)."""

    q: np.ndarray  # joint positions [rad], shape (n,)
    gripper: float = 0.0  # gripper opening [m] (sum of both fingers)
    dq: np.ndarray | None = None  # joint velocities [rad/s], shape (n,), optional
    stamp: float = 0.0  # seconds


class SafetyStatus(enum.IntEnum):
    """Verdict codes. Values match specvla_msgs/SafetyVerdict constants."""

    OK = 0
    SCALED = 1
    HALT_JOINT_LIMIT = 10
    HALT_VELOCITY = 11
    HALT_WORKSPACE = 12
    HALT_COLLISION = 13
    HALT_IK = 14
    HALT_SINGULARITY = 15
    HALT_NONFINITE = 16
    HALT_STALE_INPUT = 20
    HALT_ESTOP = 21
    HALT_DEADLINE = 22
    HALT_BAD_INPUT = 23
    HALT_NOT_READY = 24

    @property
    def is_halt(self) -> bool:
        return self.value >= 10


@dataclass
class Verdict:
    """Outcome of the safety gate for one action.

    joint_command is what may be sent: the checked joint target, or the hold
    command (measured positions) on any HALT_*.
    """

    status: SafetyStatus
    reason: str
    joint_command: np.ndarray  # joint position target [rad], shape (n,)
    gripper_command: float  # gripper opening target [m], clamped to range
    raw_action: np.ndarray = field(default_factory=lambda: np.full(ACTION_DIM, np.nan))
    scale: float = 1.0  # uniform speed scale applied (1.0 = none)
    min_distance: float = float("nan")  # [m] to obstacles / between links
    tcp_speed: float = float("nan")  # [m/s] of the commanded motion
    worst_joint_margin: float = float("nan")  # [rad] smallest distance to a joint limit
    check_time_s: float = 0.0

    @property
    def is_halt(self) -> bool:
        return self.status.is_halt


@dataclass
class DecodeStats:
    """Per-decision statistics of the speculative decoder (all times in seconds)."""

    mode: str = "greedy"
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted by the target
    emitted: int = 0  # tokens produced in total (narration + EON + 7 per action)
    chunk_len: int = 1  # actions decoded (the action chunk's length H)
    points_published: int = 0  # plan points that passed the trajectory gate (Policy.step)
    points_cut: int = 0  # chunk points the trajectory gate cut
    target_passes: int = 0
    draft_passes: int = 0
    vision_time_s: float = 0.0
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    overhead_time_s: float = 0.0
    gate_time_s: float = 0.0
    total_time_s: float = 0.0
    vision_cached: bool = False
    # safety-aware verification paths
    redecoded: int = 0
    safety_path: str = ""  # "accepted", "redecoded", "scaled", "halted"

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per target verify pass (>= 1)."""
        return self.emitted / self.target_passes if self.target_passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class PolicyOutput:
    """What one policy decision produces: narration, the decoded actions, the plan that passed the
    trajectory gate, the first point's verdict and stats.

    verdict: the first point's single-step verdict (the hold verdict when nothing passed): what a
        one-step controller would be sent.
    plan: the checked chunk (``core.safety.trajectory.TrajectoryVerdict``): the points that passed,
        how many were cut and why; None only where a caller builds an output without the gate.
    """

    narration: str
    action: np.ndarray  # the first 7-DoF action in robot units (NaN when nothing decoded)
    verdict: Verdict
    stats: DecodeStats
    plan: "TrajectoryVerdict | None" = None
    actions: np.ndarray | None = None  # (H, 7) the decoded chunk in robot units
