"""Arm kinematics from a URDF with Pinocchio: TCP forward kinematics, the
Jacobian, damped-least-squares IK, and the ee_delta action convention.

Conventions (shared with ``specvla_ros.sim``):

- Base frame = ``panda_link0`` at the world origin.
- TCP = ``panda_link8`` origin + R_link8 @ [0, 0, 0.1034] (between the
  fingertips), orientation R_link8 @ Rz(-pi/4) -- franka's ``panda_hand_tcp``.
  The shipped URDF has that frame; other URDFs name theirs with ``tcp_frame``.
- ee_delta action ``dx dy dz droll dpitch dyaw gripper``: translation [m] of
  the TCP in the base frame for one control step; rotation [rad] applied in
  the base frame, ``R_new = Rz(dyaw) Ry(dpitch) Rx(droll) @ R_now``; gripper in
  [0, 1], 1 = open (``GRIPPER_MAX_OPENING``), 0 = closed.

The finger joints of the URDF are locked (fully open, the widest and so most
conservative shape for collision checking); the arm model has 7 DoF.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pinocchio as pin

from specvla_ros.core.paths import DATA_DIR

#: The shipped Franka Panda URDF (kinematics + collision primitives).
DEFAULT_URDF = DATA_DIR / "robots" / "panda.urdf"
DEFAULT_TCP_FRAME = "panda_hand_tcp"
#: Opening [m] between the fingers that gripper action 1.0 means.
GRIPPER_MAX_OPENING = 0.08


@dataclass
class IKResult:
    """Outcome of inverse kinematics.

    q: joint solution [rad] (the best iterate when not successful), within the joint limits.
    success: both errors within the tolerances.
    pos_err: TCP position error [m]; rot_err: orientation error [rad] (angle of R_err).
    iterations: iterations run.
    """

    q: np.ndarray
    success: bool
    pos_err: float
    rot_err: float
    iterations: int = 0


class ArmKinematics:
    """Kinematics of one serial arm (Pinocchio model with any extra joints locked).

    Build it with :meth:`from_urdf`. Arrays are in ``joint_names`` order.
    """

    def __init__(self, model: pin.Model, collision_model: pin.GeometryModel | None, tcp_frame: str,
                 urdf_path: Path) -> None:
        if not model.existFrame(tcp_frame):
            raise ValueError(f"URDF {urdf_path} has no frame {tcp_frame!r} for the TCP")
        self.model = model
        self.data = model.createData()
        self.collision_model = collision_model
        self.urdf_path = urdf_path
        self.tcp_frame = tcp_frame
        self.tcp_frame_id = model.getFrameId(tcp_frame)
        if model.nq != model.nv:
            raise ValueError(f"only revolute/prismatic arms are supported, got nq={model.nq} nv={model.nv}")
        self.joint_names: tuple[str, ...] = tuple(model.names[1:])
        self.lower = np.array(model.lowerPositionLimit, dtype=np.float64)
        self.upper = np.array(model.upperPositionLimit, dtype=np.float64)
        self.velocity_limits = np.array(model.velocityLimit, dtype=np.float64)

    @classmethod
    def from_urdf(cls, path: str | Path | None = None, tcp_frame: str = DEFAULT_TCP_FRAME,
                  arm_joints: int = 7, locked_joint_positions: dict[str, float] | None = None) -> "ArmKinematics":
        """Load a URDF (None = the shipped Franka Panda).

        Joints after the first ``arm_joints`` movable ones (e.g. fingers) are locked at
        ``locked_joint_positions`` (default: their upper limit, i.e. gripper open).
        Raises FileNotFoundError / ValueError with the path on a missing or bad file.
        """
        urdf = Path(path) if path else DEFAULT_URDF
        if not urdf.is_file():
            raise FileNotFoundError(f"robot URDF not found: {urdf}")
        try:
            full = pin.buildModelFromUrdf(str(urdf))
            geom = pin.buildGeomFromUrdf(full, str(urdf), pin.GeometryType.COLLISION)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"cannot parse URDF {urdf}: {exc}") from exc
        if full.njoints - 1 < arm_joints:
            raise ValueError(f"URDF {urdf} has {full.njoints - 1} joints, need at least {arm_joints}")
        locked = locked_joint_positions or {}
        q_ref = pin.neutral(full)
        lock_ids = []
        for jid in range(arm_joints + 1, full.njoints):
            name = full.names[jid]
            idx = full.joints[jid].idx_q
            q_ref[idx] = locked.get(name, full.upperPositionLimit[idx])
            lock_ids.append(jid)
        if lock_ids:
            model, geom = pin.buildReducedModel(full, geom, lock_ids, q_ref)
        else:
            model = full
        return cls(model, _merge_capsules(geom), tcp_frame, urdf)

    # --- forward kinematics ------------------------------------------------
    @property
    def nq(self) -> int:
        return self.model.nq

    def _check_q(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape != (self.nq,):
            raise ValueError(f"expected {self.nq} joint positions, got shape {q.shape}")
        return q

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) [m] and rotation (3, 3) in the base frame."""
        q = self._check_q(q)
        pin.framesForwardKinematics(self.model, self.data, q)
        oMf = self.data.oMf[self.tcp_frame_id]
        return oMf.translation.copy(), oMf.rotation.copy()

    def frame_pose(self, q: np.ndarray, frame: str) -> tuple[np.ndarray, np.ndarray]:
        """Position and rotation of any named URDF frame (link) in the base frame."""
        q = self._check_q(q)
        if not self.model.existFrame(frame):
            raise ValueError(f"no frame {frame!r} in {self.urdf_path}")
        pin.framesForwardKinematics(self.model, self.data, q)
        oMf = self.data.oMf[self.model.getFrameId(frame)]
        return oMf.translation.copy(), oMf.rotation.copy()

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """TCP Jacobian (6, nq): rows = linear velocity [m/s] then angular velocity
        [rad/s] of the TCP, both expressed in the base frame."""
        q = self._check_q(q)
        return pin.computeFrameJacobian(self.model, self.data, q, self.tcp_frame_id,
                                        pin.ReferenceFrame.LOCAL_WORLD_ALIGNED).copy()

    def condition_number(self, q: np.ndarray) -> float:
        """Condition number of the TCP Jacobian (large near singularities)."""
        s = np.linalg.svd(self.jacobian(q), compute_uv=False)
        return float(s[0] / s[-1]) if s[-1] > 1e-12 else float("inf")

    # --- inverse kinematics -------------------------------------------------
    def ik(self, pos: np.ndarray, R: np.ndarray, q0: np.ndarray, *, max_iters: int = 100,
           pos_tol: float = 1e-4, rot_tol: float = 1e-3, damping: float = 1e-6,
           max_step: float = 0.2, locked: np.ndarray | None = None) -> IKResult:
        """Damped-least-squares IK for the TCP pose (pos, R), warm-started from q0.

        Each iterate is clamped to the joint limits, so the answer always respects
        them (a target only reachable beyond a limit ends unsuccessful). The damping
        grows with the error so large steps stay stable; ``max_step`` [rad] caps the
        per-iteration joint change. ``locked`` (bool per joint): those joints stay at
        q0 and the others do the work (the best iterate is the least-squares closest
        pose they reach).
        """
        pos = np.asarray(pos, dtype=np.float64).reshape(3)
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
        q = np.clip(self._check_q(q0).copy(), self.lower, self.upper)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(R)) and np.all(np.isfinite(q))):
            return IKResult(q=q, success=False, pos_err=float("inf"), rot_err=float("inf"))
        model, data, fid = self.model, self.data, self.tcp_frame_id
        best = (float("inf"), q.copy(), float("inf"), float("inf"))
        eye6 = np.eye(6)
        for it in range(1, max_iters + 1):
            pin.framesForwardKinematics(model, data, q)
            oMf = data.oMf[fid]
            e_pos = pos - oMf.translation
            e_rot = pin.log3(R @ oMf.rotation.T)  # base-frame rotation error
            pe, re = float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot))
            score = pe + 0.1 * re
            if score < best[0]:
                best = (score, q.copy(), pe, re)
            if pe <= pos_tol and re <= rot_tol:
                return IKResult(q=q, success=True, pos_err=pe, rot_err=re, iterations=it)
            J = pin.computeFrameJacobian(model, data, q, fid, pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
            if locked is not None:
                J[:, locked] = 0.0
            err = np.concatenate([e_pos, e_rot])
            lam = damping + 1e-3 * float(err @ err)
            dq = J.T @ np.linalg.solve(J @ J.T + lam * eye6, err)
            # joints pinned at a limit and pushed outward would stall the solve:
            # take them out of this step and let the others do the work
            pinned = ((q >= self.upper - 1e-9) & (dq > 0)) | ((q <= self.lower + 1e-9) & (dq < 0))
            if np.any(pinned):
                J = J.copy()
                J[:, pinned] = 0.0
                dq = J.T @ np.linalg.solve(J @ J.T + lam * eye6, err)
            peak = float(np.max(np.abs(dq)))
            if peak > max_step:
                dq *= max_step / peak
            q = np.clip(q + dq, self.lower, self.upper)
        _, q_best, pe, re = best
        return IKResult(q=q_best, success=pe <= pos_tol and re <= rot_tol, pos_err=pe, rot_err=re,
                        iterations=max_iters)


def _merge_capsules(geom: pin.GeometryModel) -> pin.GeometryModel:
    """Replace each URDF "capsule" (a cylinder plus a sphere of equal radius on each
    end, on the same frame) by one coal.Capsule: the same volume, a third of the pairs."""
    import coal  # noqa: PLC0415 - Pinocchio's collision backend, only needed here

    objs = list(geom.geometryObjects)
    used: set[int] = set()
    out = pin.GeometryModel()
    for i, obj in enumerate(objs):
        if not isinstance(obj.geometry, coal.Cylinder):
            continue
        r, half = obj.geometry.radius, obj.geometry.halfLength
        axis = obj.placement.rotation[:, 2]
        ends = [obj.placement.translation + s * half * axis for s in (-1.0, 1.0)]
        caps = []
        for j, other in enumerate(objs):
            if j in used or other.parentFrame != obj.parentFrame or not isinstance(other.geometry, coal.Sphere):
                continue
            if abs(other.geometry.radius - r) < 1e-9 and any(
                    np.linalg.norm(other.placement.translation - e) < 1e-6 for e in ends):
                caps.append(j)
        if len(caps) == 2:
            used.update([i, *caps])
            out.addGeometryObject(pin.GeometryObject(obj.name, obj.parentJoint, obj.parentFrame, obj.placement,
                                                     coal.Capsule(r, 2.0 * half)))
    for i, obj in enumerate(objs):
        if i not in used:
            out.addGeometryObject(obj)
    return out


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    return pin.rpy.rpyToMatrix(float(roll), float(pitch), float(yaw))


def gripper_action_to_opening(g: float, max_opening: float = GRIPPER_MAX_OPENING) -> float:
    """Gripper action in [0, 1] (1 = open) -> finger opening [m], clamped to [0, max_opening]."""
    return float(np.clip(g, 0.0, 1.0) * max_opening) if np.isfinite(g) else 0.0


def apply_ee_delta(kin: ArmKinematics, q: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TCP target (pos (3,), R (3, 3)) after applying an ee_delta action at joints q."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape[0] < 6:
        raise ValueError(f"ee_delta action needs >= 6 values, got {a.shape[0]}")
    pos, R = kin.fk(q)
    return pos + a[:3], rpy_matrix(a[3], a[4], a[5]) @ R


def ee_delta_to_joint_target(kin: ArmKinematics, q: np.ndarray, action: np.ndarray, **ik_kwargs: float) -> IKResult:
    """Joint target reaching the ee_delta target, by IK warm-started from q."""
    pos, R = apply_ee_delta(kin, q, action)
    return kin.ik(pos, R, q, **ik_kwargs)
