"""The safety envelope: per action dimension, the interval of values that pass
the gate's separable checks (raw action bounds, workspace box, speed limits,
joint-limit margins) from the current state.

The speculative decoder turns it into its allowed-token mask
(``ActionTokenizer.bin_mask_for_interval``), so a token outside it can be
neither accepted nor resampled. Every interval contains "no motion" when the
raw bounds do, so it is never empty because of the state.
"""
from __future__ import annotations

import numpy as np

from specvla_ros.core.safety.config import SafetyConfig

#: Pulls every bound in by this fraction so values on the boundary pass the
#: gate's floating-point checks too.
_EDGE = 1e-6


def ee_delta_envelope(cfg: SafetyConfig, tcp_pos: np.ndarray, dt: float,
                      shrink: float = 1.0, steps_ahead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), shape (7,), for an ee_delta action at TCP position ``tcp_pos``.

    Translation: raw bounds, workspace box (a TCP outside the box may only move
    back), and the TCP speed limit split over the three axes; rotation: raw bounds
    and the angular speed limit (|roll|+|pitch|+|yaw| bounds the composed angle);
    gripper: raw bounds (the gate clamps it). ``shrink`` in (0, 1] scales the
    motion intervals toward zero (the tighter envelope of a re-decode).
    ``steps_ahead`` k > 0: the action runs k steps later in a chunk, when the TCP may be up to
    k speed-limited steps from ``tcp_pos``: the workspace bounds widen by that much (the
    interval admits every action that may be safe after the steps before it; the trajectory
    gate checks the actual path).
    """
    _check_shrink(shrink)
    if steps_ahead < 0:
        raise ValueError(f"steps_ahead must be >= 0, got {steps_ahead}")
    lo_raw, hi_raw = np.asarray(cfg.action_low, float), np.asarray(cfg.action_high, float)
    inscribed = cfg.speed_envelope == "inscribed"
    lin = cfg.tcp_max_speed * dt / (np.sqrt(3.0) if inscribed else 1.0)
    ang = cfg.tcp_max_angular_speed * dt / (3.0 if inscribed else 1.0)
    p = np.asarray(tcp_pos, dtype=np.float64)
    wmin, wmax = np.asarray(cfg.workspace_min, float), np.asarray(cfg.workspace_max, float)
    low, high = lo_raw.copy(), hi_raw.copy()
    drift = steps_ahead * cfg.tcp_max_speed * dt
    low[:3] = np.maximum.reduce([lo_raw[:3], np.full(3, -lin), np.minimum(wmin - p - drift, 0.0)])
    high[:3] = np.minimum.reduce([hi_raw[:3], np.full(3, lin), np.maximum(wmax - p + drift, 0.0)])
    low[3:6] = np.maximum(lo_raw[3:6], -ang)
    high[3:6] = np.minimum(hi_raw[3:6], ang)
    k = shrink * (1.0 - _EDGE)
    low[:6] *= k
    high[:6] *= k
    return low, high


def joint_envelope(cfg: SafetyConfig, q: np.ndarray, dt: float, lower: np.ndarray, upper: np.ndarray,
                   vmax: np.ndarray, shrink: float = 1.0, steps_ahead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), shape (n_joints,), for joint_delta or joint_position actions.

    Per joint: raw bounds, velocity limit, and the joint-limit margin (no motion
    toward a limit once inside its margin). For joint_position the interval is
    absolute (q + delta interval, intersected with the raw bounds). ``steps_ahead`` k > 0:
    the action runs k steps later in a chunk; for joint_delta the limit margins widen by k
    velocity-limited steps, for joint_position the target may lie k + 1 such steps from q.
    """
    _check_shrink(shrink)
    if steps_ahead < 0:
        raise ValueError(f"steps_ahead must be >= 0, got {steps_ahead}")
    q = np.asarray(q, dtype=np.float64)
    m = cfg.joint_limit_margin
    drift = steps_ahead * vmax * dt
    lo_d = np.maximum(-vmax * dt, np.minimum(lower + m - q - drift, 0.0))
    hi_d = np.minimum(vmax * dt, np.maximum(upper - m - q + drift, 0.0))
    lo_raw, hi_raw = np.asarray(cfg.action_low, float), np.asarray(cfg.action_high, float)
    k = shrink * (1.0 - _EDGE)
    if cfg.action_space == "joint_delta":
        return np.maximum(lo_d, lo_raw) * k, np.minimum(hi_d, hi_raw) * k
    if steps_ahead > 0:  # absolute targets k steps on: within k + 1 velocity-limited steps of q
        reach = (steps_ahead + 1) * vmax * dt
        lo_d = np.maximum(-reach, np.minimum(lower + m - q, 0.0))
        hi_d = np.minimum(reach, np.maximum(upper - m - q, 0.0))
    return np.maximum(q + lo_d * k, lo_raw), np.minimum(q + hi_d * k, hi_raw)


def _check_shrink(shrink: float) -> None:
    if not (0.0 < shrink <= 1.0):
        raise ValueError(f"shrink must be in (0, 1], got {shrink}")
