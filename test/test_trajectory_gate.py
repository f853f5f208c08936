"""The trajectory gate: a chunk of actions checked as a path, point after point, from the
measured state; the longest safe prefix is kept; a first point that fails holds the robot."""
from __future__ import annotations

import numpy as np
import pytest

from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.safety.kinematics import ArmKinematics
from specvla_ros.core.safety.trajectory import TrajectoryGate
from specvla_ros.core.types import RobotState, SafetyStatus

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])  # TCP (0.496, 0, 0.248), fingers down
DT = 0.2


@pytest.fixture(scope="module")
def gate() -> SafetyGate:
    return SafetyGate(load_safety_config(), ArmKinematics.from_urdf())


def _chunk(*steps: tuple[float, ...], grip: float = 1.0) -> np.ndarray:
    return np.array([[*s, 0.0, 0.0, 0.0, grip] for s in steps], dtype=float)


def test_a_safe_chunk_is_the_single_step_checks_chained(gate: SafetyGate) -> None:
    chunk = _chunk((0.02, 0.0, 0.0), (0.02, 0.01, 0.0), (0.01, 0.01, -0.01), (0.0, 0.0, -0.01))
    tv = TrajectoryGate(gate).check(chunk, RobotState(q=HOME_Q, gripper=0.08), DT)
    assert tv.status == SafetyStatus.OK and tv.published == 4 and tv.cut == 0 and tv.hold is None
    # the same as checking each action from where the previous one ended, moving as it moved
    q, dq = HOME_Q, None
    for i, a in enumerate(chunk):
        v = gate.check(a, RobotState(q=q, gripper=0.08, dq=dq), DT)
        np.testing.assert_allclose(tv.points[i], v.joint_command, atol=1e-12)
        dq, q = (v.joint_command - q) / DT, v.joint_command
    # and the TCP moved along the summed deltas
    pos0, _ = gate.kin.fk(HOME_Q)
    pos_end, _ = gate.kin.fk(tv.points[-1])
    np.testing.assert_allclose(pos_end - pos0, chunk[:, :3].sum(axis=0), atol=2e-3)


def test_the_longest_safe_prefix_is_kept(gate: SafetyGate) -> None:
    # TCP at z = 0.248 m: the workspace floor is z = 0.01 and the table is below; five steps of
    # -5 cm reach 0.0 m: a later point fails, the points before it stand
    chunk = _chunk(*[(0.0, 0.0, -0.05)] * 6)
    tv = TrajectoryGate(gate).check(chunk, RobotState(q=HOME_Q, gripper=0.08), DT)
    assert 0 < tv.published < 6 and tv.cut == 6 - tv.published
    assert tv.status.is_halt and tv.reason.startswith(f"point {tv.published} of 6:")
    assert tv.verdicts[-1].is_halt and all(not v.is_halt for v in tv.verdicts[:-1])
    for p in tv.points:  # every published point is inside the workspace
        z = gate.kin.fk(p)[0][2]
        assert z >= gate.config.workspace_min[2] - gate.config.ik_position_tolerance


def test_a_first_point_that_fails_holds_the_measured_joints(gate: SafetyGate) -> None:
    chunk = _chunk((np.nan, 0.0, 0.0), (0.01, 0.0, 0.0))
    state = RobotState(q=HOME_Q, gripper=0.08)
    tv = TrajectoryGate(gate).check(chunk, state, DT)
    assert tv.is_halt and tv.published == 0 and tv.cut == 2
    assert tv.status == SafetyStatus.HALT_NONFINITE and tv.hold is not None
    np.testing.assert_array_equal(tv.hold.joint_command, HOME_Q)
    bad = TrajectoryGate(gate).check(np.empty((0, 7)), state, DT)
    assert bad.status == SafetyStatus.HALT_BAD_INPUT and bad.published == 0


def test_a_reversal_is_limited_by_the_acceleration_between_points() -> None:
    """Full speed one way, then full speed back: the second point is checked against the velocity the
    first step implies, so a low acceleration limit scales it, where the same action alone passes."""
    gate = SafetyGate(load_safety_config(), ArmKinematics.from_urdf())
    gate.amax = np.full(gate.n, 1.0)  # [rad/s^2] a slow arm
    there_and_back = _chunk((0.05, 0.0, 0.0), (-0.05, 0.0, 0.0))
    start = RobotState(q=HOME_Q, gripper=0.08, dq=np.zeros(gate.n))
    tv = TrajectoryGate(gate).check(there_and_back, start, DT)
    assert tv.verdicts[0].status != SafetyStatus.OK  # from rest, the first step is limited too
    assert "acceleration" in tv.verdicts[0].reason
    if tv.published == 2:
        second = tv.verdicts[1]
        assert second.status == SafetyStatus.SCALED and "acceleration" in second.reason
    else:
        assert tv.published == 1 and tv.verdicts[1].is_halt
    lone = gate.check(there_and_back[1], RobotState(q=tv.points[0], gripper=0.08), DT)  # no velocity known
    assert lone.status == SafetyStatus.OK
    # every published step keeps |dv| <= amax * dt from the step before (from rest for the first)
    q_prev, v_prev = HOME_Q, np.zeros(gate.n)
    for p in tv.points:
        v = (p - q_prev) / DT
        assert np.all(np.abs(v - v_prev) <= gate.amax * DT + 1e-9)
        q_prev, v_prev = p, v


def test_a_chunk_that_would_dive_into_a_box_is_slid_along_its_top_not_cut() -> None:
    """Sliding applies per point: a chunk moving sideways and down over a box keeps every point,
    each above the box's margin; the halting gate cuts it where the fingers reach the margin."""
    from specvla_ros.core.safety.config import BoxObstacle

    box = BoxObstacle("block", center=(0.5, 0.0, 0.1), size=(0.3, 0.3, 0.2))  # top 4.5 cm under the fingers
    kin = ArmKinematics.from_urdf()
    chunk = _chunk(*[(0.0, 0.015, -0.02)] * 6)
    state = RobotState(q=HOME_Q, gripper=0.08)
    cut = TrajectoryGate(SafetyGate(load_safety_config(boxes=(box,), slide_along_obstacles=False), kin))
    tv_cut = cut.check(chunk, state, DT)
    assert 0 < tv_cut.published < 6 and tv_cut.status == SafetyStatus.HALT_COLLISION, tv_cut.reason
    gate = SafetyGate(load_safety_config(boxes=(box,)), kin)
    tv = TrajectoryGate(gate).check(chunk, state, DT)
    assert tv.published == 6 and tv.status == SafetyStatus.SCALED and "slid" in tv.reason, tv.reason
    lim = gate.config.min_obstacle_distance
    assert all(gate.scene.distances(p).obstacle >= lim for p in tv.points)
    y = [gate.kin.fk(p)[0][1] for p in tv.points]
    assert y[-1] > 0.8 * 6 * 0.015  # the sideways part kept through the whole chunk
