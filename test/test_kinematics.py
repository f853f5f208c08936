"""Kinematics: the shipped URDF against robosuite's MuJoCo Panda, IK accuracy,
the Jacobian, and the ee_delta convention the simulator shares."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import mujoco
import numpy as np
import pytest

from specvla_ros.core.safety.kinematics import (
    DEFAULT_URDF,
    GRIPPER_MAX_OPENING,
    ArmKinematics,
    apply_ee_delta,
    ee_delta_to_joint_target,
    gripper_action_to_opening,
    rpy_matrix,
)
from specvla_ros.core.types import PANDA_JOINT_NAMES

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics.from_urdf()


def _robosuite_panda() -> Path:
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("robosuite assets not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "assets" / "robots" / "panda" / "robot.xml"


def _random_q(kin: ArmKinematics, rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(kin.lower, kin.upper, size=(n, kin.nq))


def test_model_matches_panda_datasheet(kin: ArmKinematics) -> None:
    assert kin.joint_names == PANDA_JOINT_NAMES
    np.testing.assert_allclose(kin.lower, [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
    np.testing.assert_allclose(kin.upper, [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
    np.testing.assert_allclose(kin.velocity_limits, [2.175] * 4 + [2.61] * 3)
    assert kin.urdf_path == DEFAULT_URDF


def test_fk_matches_robosuite_mujoco_panda(kin: ArmKinematics) -> None:
    """Every link frame and the TCP agree with the MuJoCo model within 1 mm."""
    m = mujoco.MjModel.from_xml_path(str(_robosuite_panda()))
    d = mujoco.MjData(m)
    link7 = m.body("link7").id
    rng = np.random.default_rng(0)
    for q in _random_q(kin, rng, 40):
        d.qpos[:7] = q
        mujoco.mj_kinematics(m, d)
        for i in range(1, 8):
            pos, R = kin.frame_pose(q, f"panda_link{i}")
            np.testing.assert_allclose(pos, d.xpos[m.body(f"link{i}").id], atol=1e-3)
            np.testing.assert_allclose(R, d.xmat[m.body(f"link{i}").id].reshape(3, 3), atol=1e-6)
        # robosuite's right_hand is franka's panda_hand (0.5 mm shorter flange)
        pos, R = kin.frame_pose(q, "panda_hand")
        np.testing.assert_allclose(pos, d.xpos[m.body("right_hand").id], atol=1e-3)
        np.testing.assert_allclose(R, d.xmat[m.body("right_hand").id].reshape(3, 3), atol=1e-3)
        # TCP convention: link8 (link7 + 0.107 z) + 0.1034 z, orientation R7 @ Rz(-pi/4)
        R7 = d.xmat[link7].reshape(3, 3)
        tcp = d.xpos[link7] + R7 @ np.array([0.0, 0.0, 0.107 + 0.1034])
        pos, R = kin.fk(q)
        np.testing.assert_allclose(pos, tcp, atol=1e-3)
        np.testing.assert_allclose(R, R7 @ rpy_matrix(0.0, 0.0, -np.pi / 4), atol=1e-9)


def test_fk_matches_the_simulator_tcp_site(kin: ArmKinematics) -> None:
    scene = pytest.importorskip("specvla_ros.sim.scene")
    if not hasattr(scene, "build_spec") or not hasattr(scene, "TCP_SITE"):
        pytest.skip("simulator scene has no TCP site")
    m = scene.build_spec().compile()
    d = mujoco.MjData(m)
    qadr = [m.jnt_qposadr[m.joint(n).id] for n in PANDA_JOINT_NAMES]
    site = m.site(scene.TCP_SITE).id
    for q in _random_q(kin, np.random.default_rng(1), 20):
        d.qpos[qadr] = q
        mujoco.mj_kinematics(m, d)
        pos, _ = kin.fk(q)
        np.testing.assert_allclose(pos, d.site_xpos[site], atol=1e-3)


def test_jacobian_matches_finite_differences(kin: ArmKinematics) -> None:
    rng = np.random.default_rng(2)
    eps = 1e-6
    for q in _random_q(kin, rng, 5):
        J = kin.jacobian(q)
        assert J.shape == (6, 7)
        p0, R0 = kin.fk(q)
        for j in range(7):
            dq = np.zeros(7)
            dq[j] = eps
            p1, R1 = kin.fk(q + dq)
            np.testing.assert_allclose((p1 - p0) / eps, J[:3, j], atol=1e-4)
            # angular part: R1 R0^T ~ I + [w eps]x
            W = (R1 @ R0.T - np.eye(3)) / eps
            np.testing.assert_allclose([W[2, 1], W[0, 2], W[1, 0]], J[3:, j], atol=1e-4)


def test_ik_reaches_random_reachable_targets(kin: ArmKinematics) -> None:
    rng = np.random.default_rng(3)
    for q_true in _random_q(kin, rng, 60):
        pos, R = kin.fk(q_true)
        q0 = np.clip(q_true + rng.normal(0.0, 0.15, 7), kin.lower, kin.upper)
        res = kin.ik(pos, R, q0)
        assert res.success, res
        assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)
        p, Rs = kin.fk(res.q)
        assert np.linalg.norm(p - pos) < 2e-4
        assert np.linalg.norm(Rs - R) < 3e-3


def test_ik_respects_joint_limits_for_unreachable_targets(kin: ArmKinematics) -> None:
    pos, R = kin.fk(HOME_Q)
    res = kin.ik(pos + np.array([2.0, 0.0, 0.0]), R, HOME_Q)  # 2 m away: out of reach
    assert not res.success
    assert res.pos_err > 0.5
    assert np.all(res.q >= kin.lower) and np.all(res.q <= kin.upper)
    bad = kin.ik(np.array([np.nan, 0, 0]), R, HOME_Q)
    assert not bad.success


def test_ee_delta_convention(kin: ArmKinematics) -> None:
    p0, R0 = kin.fk(HOME_Q)
    action = np.array([0.01, -0.02, 0.015, 0.05, -0.03, 0.08, 1.0])
    pos_t, R_t = apply_ee_delta(kin, HOME_Q, action)
    np.testing.assert_allclose(pos_t, p0 + action[:3])
    c, s = np.cos, np.sin
    Rx = np.array([[1, 0, 0], [0, c(0.05), -s(0.05)], [0, s(0.05), c(0.05)]])
    Ry = np.array([[c(-0.03), 0, s(-0.03)], [0, 1, 0], [-s(-0.03), 0, c(-0.03)]])
    Rz = np.array([[c(0.08), -s(0.08), 0], [s(0.08), c(0.08), 0], [0, 0, 1]])
    np.testing.assert_allclose(R_t, Rz @ Ry @ Rx @ R0, atol=1e-12)
    res = ee_delta_to_joint_target(kin, HOME_Q, action)
    assert res.success
    p1, R1 = kin.fk(res.q)
    np.testing.assert_allclose(p1, pos_t, atol=2e-4)
    np.testing.assert_allclose(R1, R_t, atol=3e-3)


def test_home_pose_points_fingers_down(kin: ArmKinematics) -> None:
    pos, R = kin.fk(HOME_Q)
    assert 0.2 < pos[2] < 0.4 and 0.4 < pos[0] < 0.6
    np.testing.assert_allclose(R[:, 2], [0.0, 0.0, -1.0], atol=1e-6)  # approach axis down


def test_gripper_action_mapping() -> None:
    assert gripper_action_to_opening(1.0) == pytest.approx(GRIPPER_MAX_OPENING)
    assert gripper_action_to_opening(0.0) == 0.0
    assert gripper_action_to_opening(7.0) == pytest.approx(GRIPPER_MAX_OPENING)
    assert gripper_action_to_opening(-1.0) == 0.0
    assert gripper_action_to_opening(float("nan")) == 0.0


def test_collision_model_uses_capsules(kin: ArmKinematics) -> None:
    import coal

    geoms = [o.geometry for o in kin.collision_model.geometryObjects]
    assert sum(isinstance(g, coal.Capsule) for g in geoms) == 14
    assert not any(isinstance(g, coal.Cylinder) for g in geoms)


def _inside(obj, pts: np.ndarray) -> np.ndarray:
    """Signed distance-ish: how far each point (joint frame) lies outside a capsule/box/sphere."""
    import coal

    M = obj.placement
    local = (pts - M.translation) @ M.rotation  # into the primitive's frame
    g = obj.geometry
    if isinstance(g, coal.Capsule):
        z = np.clip(local[:, 2], -g.halfLength, g.halfLength)
        return np.linalg.norm(local - np.c_[np.zeros((len(z), 2)), z], axis=1) - g.radius
    if isinstance(g, coal.Sphere):
        return np.linalg.norm(local, axis=1) - g.radius
    if isinstance(g, coal.Box):
        return np.max(np.abs(local) - g.halfSide, axis=1)
    raise TypeError(type(g))


def test_collision_primitives_enclose_the_simulated_meshes(kin: ArmKinematics) -> None:
    """Every vertex of robosuite's collision mesh of links 0..7 lies inside that link's
    primitives (within 1.5 mm of rounding): the gate's distances are conservative."""
    m = mujoco.MjModel.from_xml_path(str(_robosuite_panda()))
    for i in range(8):
        gid = m.geom(f"link{i}_collision").id
        mesh = m.geom_dataid[gid]
        verts = m.mesh_vert[m.mesh_vertadr[mesh]: m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]].astype(float)
        R = np.zeros(9)
        mujoco.mju_quat2Mat(R, m.geom_quat[gid])
        pts = verts @ R.reshape(3, 3).T + m.geom_pos[gid]  # in the link (= joint) frame
        objs = [o for o in kin.collision_model.geometryObjects
                if kin.model.frames[o.parentFrame].name == f"panda_link{i}"]
        assert objs, f"no primitives on panda_link{i}"
        outside = np.min(np.stack([_inside(o, pts) for o in objs]), axis=0)
        assert outside.max() < 1.5e-3, (f"panda_link{i}", float(outside.max()))


def test_bad_urdf_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.urdf"):
        ArmKinematics.from_urdf(tmp_path / "nope.urdf")
    bad = tmp_path / "bad.urdf"
    bad.write_text("<robot name='x'><link name='a'/></robot>")
    with pytest.raises(ValueError):
        ArmKinematics.from_urdf(bad)
    with pytest.raises(ValueError, match="frame"):
        ArmKinematics.from_urdf(tcp_frame="no_such_frame")
