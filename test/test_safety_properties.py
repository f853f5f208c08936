"""Property tests of the safety gate: from random reachable states that are
inside every limit, whatever action comes in (NaN, inf, huge, ordinary), the
command the gate returns is inside every joint, velocity, workspace, singularity
and distance limit -- or it is the hold command."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specvla_ros.core.safety.kinematics import ArmKinematics, rpy_matrix
from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.types import RobotState, SafetyStatus

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])
DT = 0.2
PROPS = settings(max_examples=150, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

_KIN = ArmKinematics.from_urdf()
_GATES = {
    "ee_delta": SafetyGate(load_safety_config(), _KIN),
    "inscribed": SafetyGate(load_safety_config(speed_envelope="inscribed"), _KIN),
    "joint_delta": SafetyGate(load_safety_config(action_space="joint_delta", action_low=(-0.4,) * 7,
                                                 action_high=(0.4,) * 7), _KIN),
    "joint_position": SafetyGate(load_safety_config(action_space="joint_position", action_low=tuple(_KIN.lower),
                                                    action_high=tuple(_KIN.upper)), _KIN),
}


def _valid(gate: SafetyGate, q: np.ndarray) -> bool:
    """Inside every limit with room to spare: what 'a reachable state' means here."""
    cfg = gate.config
    m = cfg.joint_limit_margin
    if np.any(q < gate.lower + m) or np.any(q > gate.upper - m):
        return False
    pos, _ = gate.kin.fk(q)
    if np.any(pos < np.asarray(cfg.workspace_min)) or np.any(pos > np.asarray(cfg.workspace_max)):
        return False
    if gate.kin.condition_number(q) > cfg.singularity_halt_condition:
        return False
    d = gate.scene.distances(q)
    return d.obstacle >= cfg.min_obstacle_distance and d.self_ >= cfg.min_self_distance


def _state_pool(n: int = 60) -> list[np.ndarray]:
    """Valid states near the task region: IK to random TCP poses, plus random joints."""
    gate = _GATES["ee_delta"]
    rng = np.random.default_rng(1234)
    _, R0 = _KIN.fk(HOME_Q)
    pool: list[np.ndarray] = []
    while len(pool) < n:
        p = rng.uniform([0.25, -0.4, 0.02], [0.75, 0.4, 0.55])
        res = _KIN.ik(p, rpy_matrix(*rng.uniform(-0.6, 0.6, 3)) @ R0, HOME_Q)
        if res.success and _valid(gate, res.q):
            pool.append(res.q)
        q = rng.uniform(_KIN.lower, _KIN.upper)
        if _valid(gate, q):
            pool.append(q)
    return pool


POOL = _state_pool()

_special = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0])
_scalar = st.one_of(
    st.floats(-0.1, 0.1, allow_nan=False),  # ordinary actions
    st.floats(-2.0, 2.0, allow_nan=False),  # too fast
    st.floats(allow_nan=True, allow_infinity=True),  # anything a float can be
    _special,
)
_action = st.lists(_scalar, min_size=7, max_size=7).map(np.array)
_state_idx = st.integers(0, len(POOL) - 1)
_dq = st.one_of(st.none(), st.lists(st.floats(-2.0, 2.0), min_size=7, max_size=7).map(np.array))


def _assert_safe(gate: SafetyGate, q: np.ndarray, v, check_accel_dq: np.ndarray | None = None) -> None:
    cfg = gate.config
    if v.is_halt:
        np.testing.assert_array_equal(v.joint_command, q)
        assert cfg.gripper_min_opening <= v.gripper_command <= cfg.gripper_max_opening
        return
    assert v.status in (SafetyStatus.OK, SafetyStatus.SCALED)
    qc = v.joint_command
    assert np.all(np.isfinite(qc))
    m = cfg.joint_limit_margin
    assert np.all(qc >= gate.lower + m - 1e-9) and np.all(qc <= gate.upper - m + 1e-9)
    assert np.all(np.abs(qc - q) <= gate.vmax * DT * (1 + 1e-9))
    if check_accel_dq is not None:
        assert np.all(np.abs((qc - q) / DT - check_accel_dq) <= gate.amax * DT * (1 + 1e-9) + 1e-9)
    p0, R0 = gate.kin.fk(q)
    p1, R1 = gate.kin.fk(qc)
    tol = cfg.ik_position_tolerance
    assert np.linalg.norm(p1 - p0) <= cfg.tcp_max_speed * DT + tol
    ang = np.arccos(np.clip((np.trace(R1 @ R0.T) - 1) / 2, -1, 1))
    assert ang <= cfg.tcp_max_angular_speed * DT + cfg.ik_rotation_tolerance + 1e-9
    assert np.all(p1 >= np.asarray(cfg.workspace_min) - tol) and np.all(p1 <= np.asarray(cfg.workspace_max) + tol)
    assert gate.kin.condition_number(qc) <= cfg.singularity_halt_condition
    d = gate.scene.distances(qc)
    assert d.obstacle >= cfg.min_obstacle_distance and d.self_ >= cfg.min_self_distance
    assert cfg.gripper_min_opening <= v.gripper_command <= cfg.gripper_max_opening


def test_pool_is_diverse() -> None:
    qs = np.array(POOL)
    assert len(qs) >= 60
    assert np.ptp(qs[:, 0]) > 1.0  # base rotation varies


@PROPS
@given(idx=_state_idx, action=_action, dq=_dq)
def test_ee_delta_commands_are_safe_or_hold(idx: int, action: np.ndarray, dq: np.ndarray | None) -> None:
    gate = _GATES["ee_delta"]
    q = POOL[idx]
    v = gate.check(action, RobotState(q=q, gripper=0.04, dq=dq), DT)
    _assert_safe(gate, q, v, dq)
    if not np.all(np.isfinite(action)):
        assert v.status == SafetyStatus.HALT_NONFINITE


@PROPS
@given(idx=_state_idx, action=_action, space=st.sampled_from(["joint_delta", "joint_position"]))
def test_joint_space_commands_are_safe_or_hold(idx: int, action: np.ndarray, space: str) -> None:
    gate = _GATES[space]
    q = POOL[idx]
    if space == "joint_position":
        action = np.where(np.abs(action) < 1.0, q + action, action)  # mostly near the current pose
    v = gate.check(action, RobotState(q=q, gripper=0.04), DT)
    _assert_safe(gate, q, v)


@PROPS
@given(idx=_state_idx, u=st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7).map(np.array),
       shrink=st.sampled_from([1.0, 0.5]), envelope=st.sampled_from(["inscribed", "ee_delta"]))
def test_actions_inside_the_envelope_pass_the_separable_checks(idx: int, u: np.ndarray, shrink: float,
                                                               envelope: str) -> None:
    gate = _GATES[envelope]
    q = POOL[idx]
    state = RobotState(q=q, gripper=0.04)
    low, high = gate.envelope(state, DT, shrink)
    assert np.all(low <= high)
    action = low + u * (high - low)
    v = gate.check(action, state, DT)
    _assert_safe(gate, q, v)
    # raw bounds and the workspace never trigger inside the envelope ...
    assert v.status != SafetyStatus.HALT_WORKSPACE, v.reason
    assert "raw action" not in v.reason, v.reason
    # ... nor, for the inscribed box, the TCP speed limits (per_axis may scale a diagonal move)
    if envelope == "inscribed":
        assert "TCP speed" not in v.reason and "angular" not in v.reason, v.reason


@pytest.mark.parametrize("space", ["joint_delta", "joint_position"])
def test_joint_envelope_actions_respect_joint_limits(space: str) -> None:
    gate = _GATES[space]
    rng = np.random.default_rng(5)
    for q in POOL[:30]:
        state = RobotState(q=q)
        low, high = gate.envelope(state, DT)
        assert np.all(low <= high)
        action = rng.uniform(low, high)
        v = gate.check(action, state, DT)
        _assert_safe(gate, q, v)
        assert v.status not in (SafetyStatus.HALT_JOINT_LIMIT,), v.reason
        assert "joint speed" not in v.reason and "raw action" not in v.reason


# --- near the table and objects: the slide never trades a halt for a collision -------------
_OBJECTS = [SceneObject("block", (0.5, 0.06, 0.03), (0.05, 0.05, 0.06)),
            SceneObject("cube", (0.42, -0.12, 0.025), (0.05, 0.05, 0.05), gripper_may_touch=True)]
_NEAR_GATE = SafetyGate(load_safety_config(), _KIN)
_NEAR_GATE.set_scene_objects(_OBJECTS)


def _near_pool(n: int = 40) -> list[np.ndarray]:
    """Valid states with the fingers 0-2 cm from the table or 0-2 cm beside the block."""
    gate = _NEAR_GATE
    cfg = gate.config
    rng = np.random.default_rng(99)
    _, R0 = _KIN.fk(HOME_Q)
    pool: list[np.ndarray] = []
    while len(pool) < n:
        if rng.random() < 0.5:
            p = np.array([rng.uniform(0.3, 0.65), rng.uniform(-0.3, 0.3), rng.uniform(0.012, 0.035)])
        else:  # beside the block's -y face, or above it
            p = np.array([rng.uniform(0.47, 0.53), rng.uniform(0.0, 0.03), rng.uniform(0.03, 0.1)])
        res = _KIN.ik(p, rpy_matrix(*rng.uniform(-0.3, 0.3, 3)) @ R0, HOME_Q)
        if not (res.success and _valid(gate, res.q)):
            continue
        d = gate.scene.distances(res.q)
        if d.object >= cfg.min_object_distance and min(d.obstacle, d.object) < 0.02:
            pool.append(res.q)
    return pool


NEAR = _near_pool()
_motion = st.lists(st.floats(-0.06, 0.06, allow_nan=False), min_size=3, max_size=3)


@PROPS
@given(idx=st.integers(0, len(NEAR) - 1), motion=_motion, rot=st.lists(st.floats(-0.2, 0.2), min_size=3, max_size=3))
def test_near_obstacles_no_command_comes_closer_inside_a_margin(idx: int, motion: list[float],
                                                               rot: list[float]) -> None:
    gate = _NEAR_GATE
    cfg = gate.config
    q = NEAR[idx]
    v = gate.check(np.array([*motion, *rot, 1.0]), RobotState(q=q, gripper=0.04), DT)
    _assert_safe(gate, q, v)
    if v.is_halt:
        return
    before, after = gate.scene.distances(q).per_pair, gate.scene.distances(v.joint_command).per_pair
    lim = np.choose(gate.scene.pair_kinds, (cfg.min_obstacle_distance, cfg.min_object_distance, cfg.min_self_distance))
    # every pair on its own: at its limit or beyond, or no closer than it was
    bad = np.flatnonzero((after < lim) & (after < before - 1e-9))
    assert bad.size == 0, ([gate.scene.pair_names[i] for i in bad], before[bad], after[bad], v.reason)
    # and along the way (sampled finely here): no pair dips into its margin unless it was already there
    path = [q + t * (v.joint_command - q) for t in np.linspace(0.0, 1.0, 41)[1:-1]]
    worst = np.min([gate.scene.distances(p).per_pair for p in path], axis=0)
    checked = gate.scene.path_checked
    dip = np.flatnonzero(checked & (worst < np.minimum(lim, before) - 2e-4))
    assert dip.size == 0, ([gate.scene.pair_names[i] for i in dip], before[dip], worst[dip], v.reason)


_JOINT_NEAR = SafetyGate(load_safety_config(action_space="joint_delta", action_low=(-0.1,) * 7,
                                            action_high=(0.1,) * 7), _KIN)
_JOINT_NEAR.set_scene_objects(_OBJECTS)


@PROPS
@given(idx=st.integers(0, len(NEAR) - 1), step=st.lists(st.floats(-0.12, 0.12), min_size=7, max_size=7).map(np.array))
def test_a_slid_joint_step_stays_inside_the_raw_bounds(idx: int, step: np.ndarray) -> None:
    gate = _JOINT_NEAR
    q = NEAR[idx]
    v = gate.check(step, RobotState(q=q, gripper=0.04), DT)
    _assert_safe(gate, q, v)
    if not v.is_halt:
        dq = v.joint_command - q
        assert np.all(dq >= -0.1 - 1e-9) and np.all(dq <= 0.1 + 1e-9), (dq, v.reason)


def test_near_obstacles_most_motions_still_move() -> None:
    """Safe must not mean stuck: from states next to the table or the block, motions a policy asks
    for (a few cm, any direction) are slid rather than refused -- and refused without the slide."""
    rng = np.random.default_rng(3)
    halt = SafetyGate(dataclasses.replace(_NEAR_GATE.config, slide_along_obstacles=False), _KIN)
    halt.set_scene_objects(_OBJECTS)
    moved = {True: 0, False: 0}
    blocked = 0
    for q in NEAR:
        for _ in range(5):
            a = np.array([*rng.uniform(-0.04, 0.04, 2), rng.uniform(-0.04, 0.0), 0.0, 0.0, 0.0, 1.0])
            v_halt = halt.check(a, RobotState(q=q, gripper=0.04), DT)
            if v_halt.status != SafetyStatus.HALT_COLLISION:
                continue
            blocked += 1
            v = _NEAR_GATE.check(a, RobotState(q=q, gripper=0.04), DT)
            moved[not v.is_halt and np.max(np.abs(v.joint_command - q)) > 1e-4] += 1
    assert blocked >= 20, blocked  # the states are really next to something
    assert moved[True] >= 0.9 * blocked, moved
