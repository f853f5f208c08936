"""The publisher's last check: limits in command order, holds from measured positions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from specvla_ros.core.safety.command_guard import CommandGuard
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.types import PANDA_JOINT_NAMES

CONFIG = load_safety_config()
GUARD = CommandGuard.from_config(CONFIG, PANDA_JOINT_NAMES)
Q0 = np.array([0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8])


def test_limits_follow_the_command_order() -> None:
    reordered = CommandGuard.from_config(CONFIG, PANDA_JOINT_NAMES[::-1])
    np.testing.assert_array_equal(reordered.min_position, GUARD.min_position[::-1])
    with pytest.raises(ValueError, match="no joint limits for elbow"):
        CommandGuard.from_config(CONFIG, ["elbow"])


def test_commands_inside_pass_and_outside_or_nonfinite_are_refused() -> None:
    assert GUARD.command_problem(Q0, 0.04) is None
    assert GUARD.command_problem(GUARD.max_position, math.nan) is None  # on the limit, no gripper command
    over = Q0.copy()
    over[3] = GUARD.max_position[3] + 1e-6
    assert "panda_joint4" in GUARD.command_problem(over, 0.04)
    assert "non-finite" in GUARD.command_problem(np.r_[Q0[:6], np.inf], 0.04)
    assert "7" in GUARD.command_problem(Q0[:5], 0.04)
    assert "gripper" in GUARD.command_problem(Q0, 0.5)
    assert "gripper" in GUARD.command_problem(Q0, math.inf)


def test_measured_positions_within_the_tolerance_hold_at_the_limit_beyond_it_not_at_all() -> None:
    q = Q0.copy()
    q[0] = GUARD.max_position[0] + 0.5 * GUARD.tolerance
    assert GUARD.measured_problem(q) is None
    hold = GUARD.hold_target(q)
    assert hold[0] == GUARD.max_position[0] and GUARD.command_problem(hold, math.nan) is None
    q[0] = 1e9  # a broken encoder, wrong units
    assert "outside the limits" in GUARD.measured_problem(q) and GUARD.hold_target(q) is None
    assert GUARD.hold_target(np.r_[Q0[:6], np.nan]) is None
    assert GUARD.clamp_gripper(1.0) == GUARD.gripper_max and math.isnan(GUARD.clamp_gripper(math.nan))
