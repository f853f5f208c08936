"""The last check before a controller topic, whatever produced the command.

The safety gate decides what the policy may do; this guard only makes sure
that nothing leaving the process — a decision, a hold, a final stop — has a
joint position outside the limits, and that a hold never commands positions a
broken encoder reported. Pure numpy: the ROS node runs it under the lock that
publishes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specvla_ros.core.safety.config import SafetyConfig

#: Round-off allowed past a limit in a command [rad] (the gate's targets sit exactly on it).
_EPS = 1e-9


@dataclass(frozen=True)
class CommandGuard:
    """Joint limits in command order, the gripper range and the measured-position tolerance.

    names: joints in the order commands list them.
    min_position / max_position: [rad] per joint, in ``names`` order.
    tolerance: [rad] a measured position further outside its limits is bad input.
    gripper_min / gripper_max: [m] gripper opening range.
    """

    names: tuple[str, ...]
    min_position: np.ndarray
    max_position: np.ndarray
    tolerance: float
    gripper_min: float
    gripper_max: float

    def __post_init__(self) -> None:
        n = len(self.names)
        lo, hi = np.asarray(self.min_position, float), np.asarray(self.max_position, float)
        if lo.shape != (n,) or hi.shape != (n,):
            raise ValueError(f"CommandGuard needs {n} limits per side, got {lo.shape} / {hi.shape}")
        if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(hi < lo):
            raise ValueError(f"CommandGuard limits need max >= min, got {lo} / {hi}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"CommandGuard.tolerance must be finite and >= 0, got {self.tolerance}")
        if not self.gripper_min < self.gripper_max:
            raise ValueError(f"CommandGuard gripper range [{self.gripper_min}, {self.gripper_max}] is empty")
        object.__setattr__(self, "min_position", lo)
        object.__setattr__(self, "max_position", hi)

    @classmethod
    def from_config(cls, config: SafetyConfig, names: Sequence[str]) -> CommandGuard:
        """The limits of ``names`` (command order) from a safety config.

        Raises:
            ValueError: a name has no limits in the config.
        """
        limits = config.joint_limits
        index = {n: i for i, n in enumerate(limits.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"no joint limits for {', '.join(missing)} in {config.source or 'the safety config'} "
                             f"(it has {', '.join(limits.names)})")
        order = [index[n] for n in names]
        return cls(tuple(names), np.asarray(limits.min_position)[order], np.asarray(limits.max_position)[order],
                   float(config.joint_state_tolerance), float(config.gripper_min_opening),
                   float(config.gripper_max_opening))

    def measured_problem(self, q: np.ndarray) -> str | None:
        """Why measured positions cannot be used (beyond the tolerance outside a limit), or None."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape != (len(self.names),):
            return f"expected {len(self.names)} joint positions, got {q.shape[0]}"
        if not np.all(np.isfinite(q)):
            return "joint positions not finite"
        below = q < self.min_position - self.tolerance
        above = q > self.max_position + self.tolerance
        bad = np.flatnonzero(below | above)
        if bad.size == 0:
            return None
        parts = [f"{self.names[i]} = {q[i]:.4g} rad (limits [{self.min_position[i]:.4g}, {self.max_position[i]:.4g}])"
                 for i in bad[:3]]
        more = f" and {bad.size - 3} more" if bad.size > 3 else ""
        return (f"measured joint position outside the limits by more than {self.tolerance:g} rad: "
                f"{'; '.join(parts)}{more}")

    def hold_target(self, q: np.ndarray) -> np.ndarray | None:
        """The position to hold at: the measured one clipped into the limits; None when unusable."""
        if self.measured_problem(q) is not None:
            return None
        return np.clip(np.asarray(q, dtype=np.float64).reshape(-1), self.min_position, self.max_position)

    def clamp_gripper(self, opening: float) -> float:
        """Gripper opening clipped into range; NaN (no gripper command) when not finite."""
        if not math.isfinite(opening):
            return math.nan
        return float(min(max(opening, self.gripper_min), self.gripper_max))

    def command_problem(self, q: np.ndarray, gripper: float) -> str | None:
        """Why a command must not be published, or None. ``gripper`` NaN means no gripper command."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape != (len(self.names),):
            return f"command has {q.shape[0]} joint positions, the controller takes {len(self.names)}"
        if not np.all(np.isfinite(q)):
            return "command has non-finite joint positions"
        out = np.flatnonzero((q < self.min_position - _EPS) | (q > self.max_position + _EPS))
        if out.size:
            i = int(out[0])
            return (f"command {self.names[i]} = {q[i]:.6g} rad is outside its limits "
                    f"[{self.min_position[i]:.6g}, {self.max_position[i]:.6g}]")
        if not math.isnan(gripper) and not (self.gripper_min - _EPS <= gripper <= self.gripper_max + _EPS):
            return f"gripper command {gripper:.6g} m is outside [{self.gripper_min:g}, {self.gripper_max:g}]"
        return None
