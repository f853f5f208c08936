"""What the node reports on /diagnostics: model, control loop (rates, latency,
acceptance, last halt) and inputs. Collects figures from the control loop and
builds a ``DiagnosticArray``; holds no ROS entities itself.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from std_msgs.msg import Header

from specvla_ros.core.types import DecodeStats, SafetyStatus, Verdict
from specvla_ros.ros.conversions import key_values

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
#: "model_input": what the policy itself refused (e.g. words the model does not know).
INPUTS = ("image", "joint_states", "instruction", "model_input")


class NodeDiagnostics:
    """Thread-safe collector; ``build`` snapshots it into a DiagnosticArray."""

    def __init__(self, node_name: str, window: int = 100) -> None:
        self._name = node_name
        self._lock = threading.Lock()
        self._model: dict[str, object] = {}
        self._model_level, self._model_msg = WARN, "not configured"
        self._inputs: dict[str, tuple[int, str]] = {k: (WARN, "nothing received yet") for k in INPUTS}
        self._ticks: deque[float] = deque(maxlen=window)  # control tick times [s]
        self._decisions: deque[float] = deque(maxlen=window)  # decision times [s]
        self._latency: deque[float] = deque(maxlen=window)  # decision total_time [s]
        self._drafted = self._accepted = self._emitted = self._passes = 0
        self._halts = 0
        self._status = SafetyStatus.HALT_NOT_READY
        self._last_halt = ""
        self._active = False
        self._fault: str | None = None  # internal failure the control tick turned into a hold
        self._last_fault = ""
        self._faults = 0

    # ---------------------------------------------------------------- recording
    def set_model(self, level: int, message: str, info: Mapping[str, object] | None = None) -> None:
        with self._lock:
            self._model_level, self._model_msg = level, message
            if info is not None:
                self._model = dict(info)

    def set_active(self, active: bool) -> None:
        with self._lock:
            self._active = active

    def set_input(self, key: str, problem: str | None, level: int = ERROR) -> bool:
        """Record an input's problem (None = fine). Returns True when the state changed."""
        new = (OK, "ok") if problem is None else (level, problem)
        with self._lock:
            changed = self._inputs.get(key) != new
            self._inputs[key] = new
        return changed

    def set_fault(self, problem: str | None) -> bool:
        """Record an internal failure of the control tick (None: it ran cleanly). True when that changed."""
        with self._lock:
            changed = problem != self._fault
            self._fault = problem
            if problem is not None and changed:
                self._faults += 1
                self._last_fault = problem
        return changed

    def record_tick(self, now: float, verdict: Verdict, stats: DecodeStats | None) -> None:
        with self._lock:
            self._ticks.append(now)
            self._status = SafetyStatus(verdict.status)
            if verdict.is_halt:
                self._halts += 1
                self._last_halt = f"{self._status.name}: {verdict.reason}"
            if stats is not None:
                self._decisions.append(now)
                self._latency.append(stats.total_time_s)
                self._drafted += stats.drafted
                self._accepted += stats.accepted
                self._emitted += stats.emitted
                self._passes += stats.target_passes

    # ---------------------------------------------------------------- reporting
    @staticmethod
    def _rate(times: deque[float]) -> float:
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def build(self, stamp: Time) -> DiagnosticArray:
        with self._lock:
            lat = np.array(self._latency) if self._latency else np.array([np.nan])
            control = {
                "active": self._active,
                "status": self._status.name,
                "control_rate_hz": self._rate(self._ticks),
                "decision_rate_hz": self._rate(self._decisions),
                "decision_latency_p50_s": float(np.nanpercentile(lat, 50)) if self._latency else float("nan"),
                "decision_latency_p95_s": float(np.nanpercentile(lat, 95)) if self._latency else float("nan"),
                "acceptance_rate": self._accepted / self._drafted if self._drafted else 0.0,
                "mean_accepted_length": self._emitted / self._passes if self._passes else 0.0,
                "halts": self._halts,
                "last_halt": self._last_halt or "none",
                "faults": self._faults,
                "last_fault": self._last_fault or "none",
            }
            if self._fault is not None:
                c_level, c_msg = ERROR, self._fault
            elif not self._active:
                c_level, c_msg = WARN, "inactive"
            elif self._status == SafetyStatus.HALT_ESTOP:
                c_level, c_msg = ERROR, "emergency stop latched"
            elif self._status.is_halt:
                c_level, c_msg = WARN, f"holding: {self._last_halt}"
            else:
                c_level, c_msg = OK, f"running ({self._status.name})"
            statuses = [
                DiagnosticStatus(level=self._model_level, name=f"{self._name}: model", message=self._model_msg,
                                 hardware_id=self._name, values=key_values(self._model)),
                DiagnosticStatus(level=c_level, name=f"{self._name}: control", message=c_msg,
                                 hardware_id=self._name, values=key_values(control)),
            ]
            worst = max(level for level, _ in self._inputs.values())
            bad = [f"{k}: {m}" for k, (level, m) in self._inputs.items() if level != OK]
            statuses.append(DiagnosticStatus(
                level=worst, name=f"{self._name}: inputs", message="; ".join(bad) or "ok",
                hardware_id=self._name, values=key_values({k: m for k, (_, m) in self._inputs.items()})))
        return DiagnosticArray(header=Header(stamp=stamp), status=statuses)
