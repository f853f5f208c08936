"""The trajectory gate: an action chunk checked as a path from the measured state.

A chunk of H actions, one per control step of ``dt``, is walked point by point: each
action is checked by the single-step ``SafetyGate`` from the previous point, with the
velocity the previous step implies as the measured one. So every point gets the same
checks a single action gets — finiteness, joint limits, workspace and IK, joint and TCP
speed, acceleration between consecutive points (and from the measured state to the first),
singularity, collisions with the table, static boxes, the robot itself and the scene
objects (along the joint-space segment from the point before, as a controller interpolates
it) — and a point the gate scales or slides is the base of the next. The gate keeps the longest
prefix in which every point passed; the first point that fails ends the path there (the
points after it were planned from it). When the first point fails the robot holds, with the
usual status and reason.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.types import RobotState, SafetyStatus, Verdict


@dataclass
class TrajectoryVerdict:
    """The gate's answer for one chunk.

    points: (m, n) joint targets that passed, in order (m = 0: hold).
    grippers: (m,) gripper opening targets [m] of those points.
    verdicts: the single-step verdict of every point checked (the failing one last, if any).
    status / reason: OK or SCALED when every point passed (SCALED if any was scaled); else the
        failing point's status and reason, prefixed with its index.
    hold: the hold verdict when no point passed (measured joints, as a single-step halt).
    """

    status: SafetyStatus
    reason: str
    points: np.ndarray
    grippers: np.ndarray
    verdicts: list[Verdict] = field(default_factory=list)
    hold: Verdict | None = None
    check_time_s: float = 0.0
    planned: int = 0  # points in the chunk

    @classmethod
    def held(cls, hold: Verdict, planned: int, n_joints: int, reason: str | None = None,
             verdicts: list[Verdict] | None = None, check_time_s: float = 0.0) -> "TrajectoryVerdict":
        """The answer when nothing may move: no points (shape (0, n_joints)), the ``hold`` verdict
        (reason: hold's by default)."""
        return cls(status=hold.status, reason=hold.reason if reason is None else reason,
                   points=np.empty((0, n_joints)),
                   grippers=np.empty(0), verdicts=list(verdicts or []), hold=hold, check_time_s=check_time_s,
                   planned=planned)

    @property
    def published(self) -> int:
        """Points that may reach the controller."""
        return int(self.points.shape[0])

    @property
    def cut(self) -> int:
        """Points of the chunk the gate cut (the failing one and all after it)."""
        return max(0, self.planned - self.published)

    @property
    def is_halt(self) -> bool:
        return self.published == 0


class TrajectoryGate:
    """Checks action chunks with ``gate`` (see the module docstring)."""

    def __init__(self, gate: SafetyGate) -> None:
        self.gate = gate

    def check(self, actions: np.ndarray, state: RobotState, dt: float) -> TrajectoryVerdict:
        """actions: (H, action_dim) in robot units, one per step of ``dt`` seconds, each relative to the
        point before it (the first to the measured state)."""
        t0 = time.perf_counter()
        chunk = np.asarray(actions, dtype=np.float64)
        if chunk.ndim == 1:
            chunk = chunk[None]
        n = self.gate.n
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            hold = self.gate.hold(state, SafetyStatus.HALT_BAD_INPUT,
                                  f"an action chunk must be (H, action_dim) with H >= 1, got shape {chunk.shape}")
            return self._held(hold, 0, [], t0)
        verdicts: list[Verdict] = []
        points: list[np.ndarray] = []
        grippers: list[float] = []
        here = state
        for i, action in enumerate(chunk):
            v = self.gate.check(action, here, dt)
            verdicts.append(v)
            if v.is_halt:
                if not points:
                    return self._held(v, chunk.shape[0], verdicts, t0)
                return TrajectoryVerdict(
                    status=v.status, reason=f"point {i} of {chunk.shape[0]}: {v.reason}",
                    points=np.stack(points), grippers=np.asarray(grippers), verdicts=verdicts,
                    check_time_s=time.perf_counter() - t0, planned=chunk.shape[0])
            q_prev = np.asarray(here.q, dtype=np.float64).reshape(n)
            points.append(v.joint_command.copy())
            grippers.append(float(v.gripper_command))
            # the next point starts where this one ends, moving as this step moved
            here = RobotState(q=v.joint_command.copy(), gripper=float(v.gripper_command),
                              dq=(v.joint_command - q_prev) / dt, stamp=here.stamp + dt)
        scaled = [i for i, v in enumerate(verdicts) if v.status == SafetyStatus.SCALED]
        status = SafetyStatus.SCALED if scaled else SafetyStatus.OK
        reason = "ok" if not scaled else f"points {scaled} scaled: " + verdicts[scaled[0]].reason
        return TrajectoryVerdict(status=status, reason=reason, points=np.stack(points), grippers=np.asarray(grippers),
                                 verdicts=verdicts, check_time_s=time.perf_counter() - t0, planned=chunk.shape[0])

    def _held(self, hold: Verdict, planned: int, verdicts: list[Verdict], t0: float) -> TrajectoryVerdict:
        return TrajectoryVerdict.held(hold, planned, self.gate.n,
                                      f"point 0 of {planned}: {hold.reason}" if planned else hold.reason,
                                      verdicts, time.perf_counter() - t0)


__all__ = ["TrajectoryGate", "TrajectoryVerdict"]
