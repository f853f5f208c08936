"""The safety gate: a pure function of (action, measured state, limits, scene)
returning a Verdict with the joint command that may be sent.

It behaves like MoveIt Servo: a command over a speed limit that uniform
scaling (same direction) brings back inside is SCALED; anything else that
fails a check halts, and a halt commands the measured joint positions. Motion
that leaves a violated region (back into the workspace, away from a joint
limit, away from an obstacle) is allowed so the robot can recover.

Check order: input finiteness and shape, gripper clamp, raw bounds and speed
(scale), target (IK for ee_delta), joint velocity/acceleration and TCP speed of
the target (scale again), joint limits, workspace, singularity, collision. A
target that would collide or fold the arm into a singular pose is first moved
to the closest one that does not (``_slide``, ``_steer_from_singularity``) and
every check runs again on that.

Collision covers the table and static boxes of the config, the robot itself,
and known scene objects (``set_scene_objects``: perception's or the
simulator's boxes; the task's object may be touched by the gripper links
only). The caller owns the object list's freshness: it replaces the list
whenever it learns something new, clears it when its source goes stale (the
ROS node does both), or passes ``valid_for_s`` so the gate drops the list by
itself once it is that old.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from specvla_ros.core.safety.collision_scene import CollisionScene, Distances, SceneObject
from specvla_ros.core.safety.command_guard import CommandGuard
from specvla_ros.core.safety.kinematics import ArmKinematics, apply_ee_delta, rpy_matrix
from specvla_ros.core.safety.config import SafetyConfig
from specvla_ros.core.safety.envelope import ee_delta_envelope, joint_envelope
from specvla_ros.core.types import ACTION_DIM_NAMES, RobotState, SafetyStatus, Verdict

#: Scale factors this close to 1 count as "no scaling" (floating point).
_SCALE_TOL = 1e-6
#: Re-targeting rounds when the target's joint/TCP speeds still exceed a limit.
_SPEED_ROUNDS = 8
#: Projection rounds of a target that would collide (each may meet another closest pair).
_SLIDE_ROUNDS = 24
#: A slid target aims this much [m] past the distance it must keep (the projection is first order).
_SLIDE_CLEARANCE = 5e-4
#: Distance computations (of the undecided pairs only) a step's path may take to be shown clear.
_PATH_MAX_EVALS = 64
#: A primitive's path on a step is taken this much longer than its end-to-end motion (its curve).
_SWEEP_FACTOR = 1.25
#: How a slide weighs changes of the TCP twist: 1 per m, and 0.1 m per rad of rotation.
_SLIDE_TWIST_WEIGHT = np.array([1.0, 1.0, 1.0, 0.01, 0.01, 0.01])
#: ... and of the joints themselves [m^2 per rad^2]: small, so the null space is not free.
_SLIDE_JOINT_WEIGHT = 0.003
#: Rounds of steering a target away from a singular pose (the condition number is far from linear).
_STEER_ROUNDS = 12
#: A steered target aims this fraction below the condition number it must keep (first order).
_STEER_MARGIN = 0.03
#: Joint step [rad] of the condition number's central-difference gradient.
_COND_GRADIENT_STEP = 1e-5

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Contact:
    """Where a step comes too close: t of the way to the target (1 = the target), the collision pair
    and its distance there [m]; certified False when the path could not be shown clear (not a
    measured contact)."""

    t: float
    pair: int
    distance: float
    certified: bool = True


class SafetyGate:
    """Checks one action against every limit of ``config`` for the arm ``kinematics``.

    Args:
        config: limits and scene (see ``config/safety.yaml``).
        kinematics: the arm (default: loaded from ``config.urdf``, the shipped Panda when None).

    Attributes:
        lower, upper: position limits [rad] (the stricter of URDF and joint_limits YAML).
        vmax: allowed joint speed [rad/s] (``velocity_scale`` x the stricter max velocity).
        collision_checking: set False to skip distance checks (benchmarks; not for robots).
    """

    def __init__(self, config: SafetyConfig, kinematics: ArmKinematics | None = None) -> None:
        self.config = config
        self.kin = kinematics if kinematics is not None else ArmKinematics.from_urdf(config.urdf)
        jl = config.joint_limits
        if tuple(jl.names) != tuple(self.kin.joint_names):
            raise ValueError(f"joint_limits joints {jl.names} differ from the URDF's {self.kin.joint_names}")
        self.n = self.kin.nq
        self.lower = np.maximum(self.kin.lower, jl.min_position)
        self.upper = np.minimum(self.kin.upper, jl.max_position)
        self.vmax = np.minimum(self.kin.velocity_limits, jl.max_velocity) * config.velocity_scale
        self.amax = jl.max_acceleration
        self._guard = CommandGuard(tuple(jl.names), self.lower, self.upper, config.joint_state_tolerance,
                                   config.gripper_min_opening, config.gripper_max_opening)
        self.scene = CollisionScene(self.kin, config) if config.collision_enabled else None
        self.collision_checking = self.scene is not None
        self._lo_raw = np.asarray(config.action_low, dtype=np.float64)
        self._hi_raw = np.asarray(config.action_high, dtype=np.float64)
        self._wmin = np.asarray(config.workspace_min, dtype=np.float64)
        self._wmax = np.asarray(config.workspace_max, dtype=np.float64)
        self._objects: tuple[SceneObject, ...] = ()
        self._objects_expire_at = math.inf  # time.monotonic() after which the objects are dropped
        self.objects_expired = 0  # how often an object list ran out of validity (for diagnostics)

    # --- public API -------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def scene_objects(self) -> tuple[SceneObject, ...]:
        """The known objects the next check uses (after dropping an expired list)."""
        self._expire_objects()
        return self._objects

    def set_scene_objects(self, objects: Sequence[SceneObject], valid_for_s: float | None = None) -> None:
        """Replace the known scene objects (an empty sequence clears them).

        valid_for_s: drop the list by itself this many seconds from now (monotonic
            clock) unless replaced before; None = valid until replaced or cleared.

        Raises TypeError for entries that are not SceneObject and ValueError for a bad
        valid_for_s (SceneObject validates itself on construction); the previous list
        stays in force then.
        """
        objs = tuple(objects)
        bad = [type(o).__name__ for o in objs if not isinstance(o, SceneObject)]
        if bad:
            raise TypeError(f"set_scene_objects needs SceneObject entries, got {bad}")
        if valid_for_s is not None and not (math.isfinite(valid_for_s) and valid_for_s > 0):
            raise ValueError(f"valid_for_s must be finite and > 0 or None, got {valid_for_s}")
        if self.scene is not None and len(objs) > self.scene.object_slots:
            # rare: rebuild once with a larger pool instead of dropping objects unchecked
            self.scene = CollisionScene(self.kin, self.config, object_slots=max(len(objs), 2 * self.scene.object_slots))
        if self.scene is not None:
            self.scene.set_objects(objs)
        self._objects = objs
        self._objects_expire_at = math.inf if valid_for_s is None else time.monotonic() + valid_for_s

    def clear_scene_objects(self) -> None:
        """Forget every known object (the static scene from the config stays)."""
        self.set_scene_objects(())

    def _expire_objects(self) -> None:
        if self._objects and time.monotonic() > self._objects_expire_at:
            _log.warning("%d scene object(s) expired without an update: dropped from the collision scene",
                         len(self._objects))
            self.objects_expired += 1
            self.clear_scene_objects()

    def hold(self, state: RobotState, status: SafetyStatus, reason: str, **figures: float) -> Verdict:
        """The hold command: measured joint positions clipped into the limits, gripper kept (clamped).

        With unusable measured positions (not numeric, wrong count, not finite, or further
        outside the limits than ``joint_state_tolerance``) the command is empty: nothing can be
        sent, and a hold must never command what a broken encoder reported.
        """
        try:
            q = np.array(state.q, dtype=np.float64, copy=True).reshape(-1)
        except (TypeError, ValueError):
            q = np.empty(0)
        if self.measured_problem(q) is not None:
            q = np.empty(0)
        else:
            q = np.clip(q, self.lower, self.upper)
        return Verdict(status=SafetyStatus(status), reason=reason, joint_command=q,
                       gripper_command=self._clamp_gripper(state.gripper), **figures)

    def measured_problem(self, q: np.ndarray) -> str | None:
        """Why measured joint positions are unusable, or None (see ``CommandGuard.measured_problem``)."""
        return self._guard.measured_problem(q)

    def envelope(self, state: RobotState, dt: float, shrink: float = 1.0,
                 steps_ahead: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Robot-unit interval (low, high) per action dimension passing the separable checks.

        Shape (7,) for ee_delta, (n_joints,) for the joint spaces. ``steps_ahead`` k: for the
        action k steps later in a chunk (see ``envelope.ee_delta_envelope``). Raises ValueError
        on a non-finite state or dt (the policy checks those first).
        """
        q = np.asarray(state.q, dtype=np.float64).reshape(-1)
        if q.shape != (self.n,) or not np.all(np.isfinite(q)):
            raise ValueError(f"envelope needs {self.n} finite joint positions, got {state.q}")
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be finite and > 0, got {dt}")
        if self.config.action_space == "ee_delta":
            pos, _ = self.kin.fk(q)
            return ee_delta_envelope(self.config, pos, dt, shrink, steps_ahead)
        return joint_envelope(self.config, q, dt, self.lower, self.upper, self.vmax, shrink, steps_ahead)

    def check(self, action: np.ndarray, state: RobotState, dt: float) -> Verdict:
        """Check one action (robot units) for a control step of ``dt`` seconds."""
        t0 = time.perf_counter()
        self._expire_objects()
        verdict = self._check(action, state, dt)
        verdict.check_time_s = time.perf_counter() - t0
        return verdict

    # --- the checks -------------------------------------------------------------
    def _check(self, action: np.ndarray, state: RobotState, dt: float) -> Verdict:
        cfg = self.config
        try:
            a = np.array(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            return self.hold(state, SafetyStatus.HALT_BAD_INPUT, f"action is not numeric: {exc}")
        try:
            q = np.array(state.q, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            return self._halt(state, a, SafetyStatus.HALT_BAD_INPUT, f"joint state is not numeric: {exc}")
        if q.shape != (self.n,):
            return self._halt(state, a, SafetyStatus.HALT_BAD_INPUT, f"expected {self.n} joint positions, got {q.shape[0]}")
        if not np.all(np.isfinite(q)):
            return self._halt(state, a, SafetyStatus.HALT_NONFINITE, f"measured joint positions not finite: {q}")
        try:
            dt = float(dt)
        except (TypeError, ValueError):
            dt = float("nan")
        if not (np.isfinite(dt) and dt > 0):
            return self._halt(state, a, SafetyStatus.HALT_BAD_INPUT, f"control period dt={dt} must be finite and > 0")
        ee = cfg.action_space == "ee_delta"
        sizes = (len(ACTION_DIM_NAMES),) if ee else (self.n, self.n + 1)
        if a.shape[0] not in sizes:
            return self._halt(state, a, SafetyStatus.HALT_BAD_INPUT,
                              f"{cfg.action_space} action needs {' or '.join(map(str, sizes))} values, got {a.shape[0]}")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            names = [ACTION_DIM_NAMES[i] if ee else f"a[{i}]" for i in bad]
            return self._halt(state, a, SafetyStatus.HALT_NONFINITE, f"action not finite in {', '.join(names)}: {a[bad]}")

        # gripper: clamped, never a reason to halt
        if ee or a.shape[0] == self.n + 1:
            grip_action = a[-1]
            gripper = self._clamp_gripper(grip_action * cfg.gripper_max_opening)
        else:
            gripper = self._clamp_gripper(state.gripper)
        motion = a[:6] if ee else a[:self.n]

        pos0, R0 = self.kin.fk(q)
        reasons: list[str] = []
        if ee:
            s = self._raw_scale(motion, self._lo_raw[:6], self._hi_raw[:6], reasons)
            s = min(s, self._ee_speed_scale(motion, dt, reasons))
            delta = None
        elif cfg.action_space == "joint_delta":
            s = self._raw_scale(motion, self._lo_raw[:self.n], self._hi_raw[:self.n], reasons)
            delta = motion
        else:  # joint_position: raw bounds are absolute; outside them is a limit violation
            out = np.flatnonzero((motion < self._lo_raw[:self.n]) | (motion > self._hi_raw[:self.n]))
            if out.size:
                return self._halt(state, a, SafetyStatus.HALT_JOINT_LIMIT,
                                  f"joint position target outside action bounds for joints {out.tolist()}: {motion[out]}")
            s, delta = 1.0, motion - q

        dq_meas = None
        if state.dq is not None:
            dq_arr = np.asarray(state.dq, dtype=np.float64).reshape(-1)
            if dq_arr.shape == (self.n,) and np.all(np.isfinite(dq_arr)):
                dq_meas = dq_arr

        # target, then shrink it until joint and TCP speeds are inside their limits
        q_t = q
        for _ in range(_SPEED_ROUNDS):
            if ee:
                pos_t, R_t = apply_ee_delta(self.kin, q, s * motion)
                ik = self.kin.ik(pos_t, R_t, q, max_iters=cfg.ik_max_iterations,
                                 pos_tol=cfg.ik_position_tolerance, rot_tol=cfg.ik_rotation_tolerance)
                if not ik.success:
                    return self._halt(state, a, SafetyStatus.HALT_IK,
                                      f"no IK solution within limits (position error {ik.pos_err * 1000:.1f} mm, "
                                      f"rotation error {ik.rot_err:.3f} rad)", scale=s)
                q_t = ik.q
            else:
                q_t = q + s * delta
            f = self._speed_factor(q, q_t, pos0, R0, dt, dq_meas, reasons)
            if f >= 1.0 - _SCALE_TOL:
                break
            if f <= 0.0:
                return self._halt(state, a, SafetyStatus.HALT_VELOCITY,
                                  "speed limits cannot be met by scaling: " + "; ".join(reasons), scale=0.0)
            s *= f * 0.98
        else:
            return self._halt(state, a, SafetyStatus.HALT_VELOCITY,
                              "speed limits still exceeded after scaling: " + "; ".join(reasons), scale=s)

        adjusted = ""
        if cfg.hold_limit_joints:
            q_t, adjusted = self._hold_limit_joints(q, q_t, s * motion if ee else None, pos0, R0, dt, dq_meas)
        figures = self._figures(s, q_t, pos0, dt)
        problem = self._target_problem(q, q_t, pos0, figures)
        remedy = None
        if problem is not None and problem[0] == SafetyStatus.HALT_COLLISION and cfg.slide_along_obstacles:
            remedy = self._slide  # keep the motion along what it would hit
        elif problem is not None and problem[0] == SafetyStatus.HALT_SINGULARITY and cfg.steer_from_singularity:
            remedy = self._steer_from_singularity  # keep the motion that does not fold the arm further
        if remedy is not None:
            # minimal change instead of a halt, re-checked in full
            try:
                slid = remedy(q, q_t, pos0, R0, dt, dq_meas)
            except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
                _log.warning("%s failed (%s): the halt stands", remedy.__name__.strip("_"), exc)
                slid = None
            if slid is not None:
                q_s, how, slide_scale = slid
                figures_s = self._figures(s * slide_scale, q_s, pos0, dt)
                if self._target_problem(q, q_s, pos0, figures_s) is None:
                    off = np.linalg.norm(self.kin.fk(q_s)[0] - self.kin.fk(q_t)[0])
                    how += f"; TCP {off * 1000:.1f} mm from the asked position"
                    q_t, figures, problem = q_s, figures_s, None
                    adjusted = f"{adjusted}; {how}" if adjusted else how
        if problem is not None:
            return self._halt(state, a, problem[0], problem[1], **figures)

        scaled = s < 1.0 - _SCALE_TOL
        status = SafetyStatus.SCALED if scaled or adjusted else SafetyStatus.OK
        reason = f"scaled to {s:.3f}: " + "; ".join(reasons) if scaled else "ok"
        if adjusted:
            reason = adjusted if not scaled else f"{reason}; {adjusted}"
        return Verdict(status=status, reason=reason, joint_command=q_t, gripper_command=gripper,
                       raw_action=a.copy(), **figures)

    def _figures(self, s: float, q_t: np.ndarray, pos0: np.ndarray, dt: float) -> dict[str, float]:
        pos_t, _ = self.kin.fk(q_t)
        return {
            "scale": float(s),
            "tcp_speed": float(np.linalg.norm(pos_t - pos0) / dt),
            "worst_joint_margin": float(np.min(np.minimum(q_t - self.lower, self.upper - q_t))),
        }

    def _target_problem(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray,
                        figures: dict[str, float]) -> tuple[SafetyStatus, str] | None:
        """Joint limits, workspace, singularity and collision of the step q -> q_t: the first failing
        check's (status, reason), or None. Adds ``min_distance`` to ``figures``."""
        cfg = self.config
        m = cfg.joint_limit_margin
        dq = q_t - q
        # joint limits: inside the margin and moving toward the limit
        toward = ((q_t < self.lower + m) & (dq < -1e-9)) | ((q_t > self.upper - m) & (dq > 1e-9))
        if np.any(toward):
            j = np.flatnonzero(toward)
            names = [self.kin.joint_names[i] for i in j]
            return (SafetyStatus.HALT_JOINT_LIMIT, f"{', '.join(names)} within {m} rad of a limit and moving "
                    f"toward it (target {np.round(q_t[j], 4).tolist()})")

        # workspace: the TCP stays in the box, or at least moves no further out
        pos_t, _ = self.kin.fk(q_t)
        tol = cfg.ik_position_tolerance
        out = ((pos_t < self._wmin - tol) & (pos_t < pos0 - tol)) | ((pos_t > self._wmax + tol) & (pos_t > pos0 + tol))
        if np.any(out):
            axes = [("x", "y", "z")[i] for i in np.flatnonzero(out)]
            return (SafetyStatus.HALT_WORKSPACE,
                    f"TCP target {np.round(pos_t, 4).tolist()} leaves the workspace along {', '.join(axes)}")

        # singularity: condition number past the threshold and growing
        cond_t = self.kin.condition_number(q_t)
        if cond_t > cfg.singularity_halt_condition and cond_t > self.kin.condition_number(q):
            return (SafetyStatus.HALT_SINGULARITY,
                    f"Jacobian condition number {cond_t:.1f} > {cfg.singularity_halt_condition} and rising")

        # collision: too close and getting closer
        if not (self.collision_checking and self.scene is not None):
            return None
        d_t = self.scene.distances(q_t)
        figures["min_distance"] = d_t.minimum
        contact = self._collision_along(q, q_t, d_t)
        if contact is None:
            return None
        names = self.scene.pair_names[contact.pair]
        kind = self.scene.pair_kinds[contact.pair]
        other = f"scene object {names[1]!r}" if kind == 1 else names[1]
        limit = float(self._pair_limits()[contact.pair])
        where = "" if contact.t >= 1.0 else f" {contact.t:.0%} of the way to the target"
        if not contact.certified:
            return (SafetyStatus.HALT_COLLISION,
                    f"{names[0]} cannot be shown to stay {limit * 1000:.1f} mm from {other} on the way to the target "
                    f"({contact.distance * 1000:.1f} mm near{where})")
        return (SafetyStatus.HALT_COLLISION,
                f"{names[0]} would come within {contact.distance * 1000:.1f} mm of {other}{where} "
                f"(min {limit * 1000:.1f} mm)")

    def _pair_limits(self) -> np.ndarray:
        """The distance each collision pair must keep [m] (by its kind: table/box, object, self)."""
        cfg = self.config
        kinds = self.scene.pair_kinds if self.scene is not None else np.empty(0, dtype=np.int8)
        return np.choose(kinds, (cfg.min_obstacle_distance, cfg.min_object_distance, cfg.min_self_distance))

    def _collision_along(self, q: np.ndarray, q_t: np.ndarray, d_t: Distances,
                         d_0: Distances | None = None) -> _Contact | None:
        """The first place on the joint-space segment q -> q_t (what the controller interpolates) where a
        collision pair is closer than its limit and closer than it is at q (each pair on its own: one
        pair already inside its margin lets no other pair come closer), or None when the whole
        segment passes.

        The ends are computed. Between them, a pair whose distances at both ends leave room for a
        bound on how far its robot primitive can travel (``CollisionScene.path_bounds``: (d0 + d1 - L)
        / 2 keeps what it must) is clear without a look; the others are bisected with their
        primitives' estimated path length until every piece is shown clear, a computed pose is too
        close, or ``_PATH_MAX_EVALS`` computations are spent (then the step counts as too close).
        Self pairs the same way, with their primitives' motion relative to each other."""
        scene = self.scene
        if scene is None:
            return None
        lim = self._pair_limits()
        end = d_t.per_pair
        length = scene.path_bounds(q, q_t)
        moving = scene.path_checked  # every active pair
        low_end = ~(end >= lim)  # NaN counts as too close
        if not low_end.any() and np.all(end[moving] - length[moving] >= lim[moving]):
            return None  # clear at the end and all the way, without the distances at q
        d_0 = scene.distances(q) if d_0 is None else d_0
        # what each pair must keep: its limit, or where it already is inside that, the present distance
        keep = np.minimum(lim, d_0.per_pair - 1e-9)
        bad = ~(end >= keep)
        if bad.any():
            i = int(np.flatnonzero(bad)[np.argmin(end[bad])])
            return _Contact(1.0, i, float(end[i]))
        pairs = np.flatnonzero(moving & ((d_0.per_pair + end - length) / 2 < keep))
        if pairs.size == 0:
            return None
        # the rest: an interval [a, b] of the way is clear for a pair when (d_a + d_b - S (b - a)) / 2
        # keeps what it must, S the length of its primitive's path (its end-to-end motion, longer by
        # _SWEEP_FACTOR for the curve); otherwise its middle is computed and both halves looked at, up
        # to _PATH_MAX_EVALS computations -- a path still not shown clear then counts as too close
        sweep = scene.pair_sweeps(q, q_t, pairs) * _SWEEP_FACTOR
        stack = [(0.0, 1.0, np.arange(pairs.size), d_0.per_pair[pairs], end[pairs])]
        evals = 0
        while stack:
            ta, tb, ks, da, db = stack.pop()
            open_ = (da + db - sweep[ks] * (tb - ta)) / 2 < keep[pairs[ks]]
            if not open_.any():
                continue
            ks, da, db = ks[open_], da[open_], db[open_]
            tm = (ta + tb) / 2
            if evals >= _PATH_MAX_EVALS:
                j = int(np.argmin(np.minimum(da, db)))
                return _Contact(tm, int(pairs[ks[j]]), float(min(da[j], db[j])), certified=False)
            dm = scene.pair_distances(q + tm * (q_t - q), pairs[ks])
            evals += 1
            low = ~(dm >= keep[pairs[ks]])
            if low.any():
                j = int(np.flatnonzero(low)[np.argmin(dm[low])])
                return _Contact(tm, int(pairs[ks[j]]), float(dm[j]))
            stack.append((tm, tb, ks, dm, db))
            stack.append((ta, tm, ks, da, dm))  # popped first: the earlier half
        return None

    def _slide(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray, R0: np.ndarray, dt: float,
               dq_meas: np.ndarray | None) -> tuple[np.ndarray, str, float] | None:
        """The target closest to ``q_t`` (to first order, measured by the TCP's motion) that brings no
        pair closer than its limit or its present distance, whichever is smaller: the motion along the
        surface is kept, the part into it removed. In rounds: another pair may come too close after a
        projection, and a projected target over a speed limit or the raw action bounds is slid again
        from a shorter asked motion. Returns (target, what was done, the asked motion's scale), or
        None when no round ends clear; the caller re-runs every check on the result."""
        scene = self.scene
        if scene is None:
            return None
        lim = self._pair_limits()
        d_0 = scene.distances(q)
        keep = np.minimum(lim, d_0.per_pair)
        pairs: list[str] = []

        def linearise(cand: np.ndarray, rows: dict, _: int) -> bool:
            contact = self._collision_along(q, cand, scene.distances(cand), d_0)
            if contact is None:
                return False
            # met at q_m = q + t (x - q) on the way to x: linearised there, as a constraint on x
            t, pair = contact.t, contact.pair
            q_m = q + t * (cand - q)
            d, grad = scene.pair_distance_gradient(q_m, pair)
            want = keep[pair] + _SLIDE_CLEARANCE
            rows[(pair, round(t, 3))] = (t * grad, want - d + t * float(grad @ cand))
            names = scene.pair_names[pair]
            label = f"{names[0]} along {names[1]}"
            if label not in pairs:
                pairs.append(label)
            return True

        found = self._closest_passing(q, q_t, pos0, R0, dt, dq_meas, _SLIDE_ROUNDS, linearise)
        if found is None:
            return None
        return found[0], "adjusted: slid " + ", ".join(pairs), found[1]

    def _steer_from_singularity(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray, R0: np.ndarray, dt: float,
                                dq_meas: np.ndarray | None) -> tuple[np.ndarray, str, float] | None:
        """The target closest to ``q_t`` (to first order, in the slide's TCP-weighted metric) whose TCP
        Jacobian condition number stays at or below the larger of the threshold and its present value:
        the part of the motion that drives the arm into the singular pose is dropped, and the redundant
        joints turn the arm away from it where that costs the TCP little. In rounds (the condition
        number is far from linear near a singularity; a target over a speed limit or the raw bounds is
        steered again from a shorter asked motion). Returns (target, what was done, the asked motion's
        scale), or None; the caller re-runs every check on the result."""
        kin = self.kin
        limit = max(self.config.singularity_halt_condition, kin.condition_number(q))
        if not np.isfinite(limit):
            return None
        want = limit * (1.0 - _STEER_MARGIN)

        def linearise(cand: np.ndarray, rows: dict, i: int) -> bool:
            c = kin.condition_number(cand)
            if c <= limit:
                return False
            if not np.isfinite(c):
                raise ValueError("singular target: the condition number is not finite")
            g = self._condition_gradient(cand)
            # cond(y) ~ c + g . (y - cand) <= want, as a row (-g) . y >= c - want - g . cand
            rows[(i, 0.0)] = (-g, c - want - float(g @ cand))
            return True

        found = self._closest_passing(q, q_t, pos0, R0, dt, dq_meas, _STEER_ROUNDS, linearise)
        if found is None:
            return None
        return (found[0], f"adjusted: steered clear of a singular pose (condition number "
                f"{kin.condition_number(found[0]):.1f}, asked {kin.condition_number(q_t):.1f}, limit {limit:.1f})",
                found[1])

    def _closest_passing(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray, R0: np.ndarray, dt: float,
                         dq_meas: np.ndarray | None, rounds: int,
                         linearise: Callable[[np.ndarray, dict, int], bool]) -> tuple[np.ndarray, float] | None:
        """The rounds the slide and the steer share: while ``linearise(candidate, rows, round)`` finds the
        candidate failing its check, it adds a linear constraint row (gradient, offset: grad . x >=
        offset) where it failed, and the asked target is projected onto every row so far at once (two
        faces of a corner do not push it back and forth); a candidate that passes but is over a speed
        limit or a raw bound is projected again from a shorter asked motion. -> (target, scale of the
        asked motion), or None when no round ends passing or nothing would move."""
        cand = q_t.copy()
        rows: dict[tuple[int, float], tuple[np.ndarray, float]] = {}
        scale = 1.0
        for i in range(rounds):
            if not linearise(cand, rows, i):
                f = self._speed_factor(q, cand, pos0, R0, dt, dq_meas, [])
                if f <= 0.0:
                    return None
                if f < 1.0 - _SCALE_TOL:
                    scale *= f * 0.98
                elif not self._within_raw_bounds(q, cand, pos0, R0):
                    scale *= 0.9
                else:
                    break
            # smallest change of the TCP's motion (not of the joints'): metric J^T W J, a little
            # joint-space weight for the null space
            J = self.kin.jacobian(cand)
            metric = J.T @ (_SLIDE_TWIST_WEIGHT[:, None] * J) + _SLIDE_JOINT_WEIGHT * np.eye(self.n)
            projected = _project(q + scale * (q_t - q), metric, rows)
            if projected is None:
                return None  # the constraints cannot all be met
            cand = projected
        else:
            return None
        if not rows or np.max(np.abs(cand - q)) < 1e-6:
            return None
        return cand, scale

    def _condition_gradient(self, q: np.ndarray) -> np.ndarray:
        """d cond / d q by central differences (the condition number has no closed-form gradient)."""
        h = _COND_GRADIENT_STEP
        eye = np.eye(self.n) * h
        return np.array([(self.kin.condition_number(q + e) - self.kin.condition_number(q - e)) / (2 * h) for e in eye])

    def _within_raw_bounds(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray, R0: np.ndarray) -> bool:
        """Whether the step q -> q_t stays inside the raw action bounds (what the main path scales or
        refuses before IK): ee_delta per-axis TCP translation and the rotation angle, joint_delta the
        per-joint step, joint_position the absolute target."""
        cfg = self.config
        if cfg.action_space == "joint_position":
            return bool(np.all(q_t >= self._lo_raw[:self.n]) and np.all(q_t <= self._hi_raw[:self.n]))
        if cfg.action_space == "joint_delta":
            dq = q_t - q
            return bool(np.all(dq >= self._lo_raw[:self.n] - 1e-12) and np.all(dq <= self._hi_raw[:self.n] + 1e-12))
        pos_t, R_t = self.kin.fk(q_t)
        tol = cfg.ik_position_tolerance
        move = pos_t - pos0
        if np.any(move < self._lo_raw[:3] - tol) or np.any(move > self._hi_raw[:3] + tol):
            return False
        max_angle = float(np.min(np.maximum(-self._lo_raw[3:6], self._hi_raw[3:6])))
        return _rotation_angle(R_t @ R0.T) <= max_angle + cfg.ik_rotation_tolerance

    def _hold_limit_joints(self, q: np.ndarray, q_t: np.ndarray, ee_motion: np.ndarray | None, pos0: np.ndarray,
                           R0: np.ndarray, dt: float, dq_meas: np.ndarray | None) -> tuple[np.ndarray, str]:
        """Joints inside their limit margin that ``q_t`` moves toward the limit are held; the other joints
        move to the pose closest to the target (ee_delta: locked IK; joint spaces: the other joints'
        deltas). Returns (target, what was changed, or "" when nothing had to be)."""
        m, cfg = self.config.joint_limit_margin, self.config
        locked = np.zeros(self.n, dtype=bool)
        original_target = q_t
        q_hold = np.clip(q, self.lower, self.upper)  # a measurement may lie a tolerance outside a limit
        asked = apply_ee_delta(self.kin, q, ee_motion) if ee_motion is not None else None  # (pos, R)
        for _ in range(self.n):
            dq = q_t - q
            toward = ((q_t < self.lower + m) & (dq < -1e-9)) | ((q_t > self.upper - m) & (dq > 1e-9))
            if not np.any(toward & ~locked):
                break
            locked |= toward
            if locked.all():
                return original_target, ""
            if asked is None:
                q_t = np.where(locked, q_hold, q_t)
                continue
            q_t = self.kin.ik(*asked, q, max_iters=cfg.ik_max_iterations, pos_tol=cfg.ik_position_tolerance,
                              rot_tol=cfg.ik_rotation_tolerance, locked=locked).q
        if not locked.any():
            return q_t, ""
        q_t = np.where(locked, q_hold, q_t)
        if np.max(np.abs(q_t - q)) < 1e-6:
            return original_target, ""  # nothing else moves: the halt below says why
        # the other joints may now move faster (or brake harder) than the limits allow: scale the move
        # as the main path does; when no scale passes, the halt below stands
        full, k = q_t, 1.0
        for _ in range(_SPEED_ROUNDS):
            f = self._speed_factor(q, q + k * (full - q), pos0, R0, dt, dq_meas, [])
            if f >= 1.0 - _SCALE_TOL:
                break
            if f <= 0.0:
                return original_target, ""
            k *= f * 0.98
        else:
            return original_target, ""
        q_t = q + k * (full - q)
        names = ", ".join(self.kin.joint_names[i] for i in np.flatnonzero(locked))
        off = ""
        if asked is not None:
            got, _ = self.kin.fk(q_t)
            off = f"; TCP {np.linalg.norm(got - asked[0]) * 1000:.1f} mm from the asked position"
        return q_t, f"adjusted: {names} held inside the limit margin, the other joints move{off}"

    # --- helpers ----------------------------------------------------------------
    def _halt(self, state: RobotState, a: np.ndarray, status: SafetyStatus, reason: str, **figures: float) -> Verdict:
        v = self.hold(state, status, reason, **figures)
        if a.ndim == 1:
            v.raw_action = a.copy()
        return v

    def _clamp_gripper(self, opening: float) -> float:
        lo, hi = self.config.gripper_min_opening, self.config.gripper_max_opening
        try:
            g = float(opening)
        except (TypeError, ValueError):
            return lo
        return float(np.clip(g, lo, hi)) if np.isfinite(g) else lo

    @staticmethod
    def _raw_scale(motion: np.ndarray, lo: np.ndarray, hi: np.ndarray, reasons: list[str]) -> float:
        """Largest s <= 1 with s * motion inside [lo, hi] (bounds contain 0, checked by the config)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(motion > hi, hi / motion, np.where(motion < lo, lo / motion, 1.0))
        s = float(np.min(r))
        if s < 1.0 - _SCALE_TOL:
            reasons.append(f"raw action beyond bounds (x{1 / s:.2f})")
        return s

    def _ee_speed_scale(self, motion: np.ndarray, dt: float, reasons: list[str]) -> float:
        cfg = self.config
        s = 1.0
        lin = float(np.linalg.norm(motion[:3])) / dt
        if lin > cfg.tcp_max_speed:
            s = cfg.tcp_max_speed / lin
            reasons.append(f"TCP speed {lin:.3f} m/s > {cfg.tcp_max_speed}")
        ang = _rotation_angle(rpy_matrix(*motion[3:6])) / dt
        if ang > cfg.tcp_max_angular_speed:
            # the composed angle is not linear in s; |r|+|p|+|y| bounds it and is
            s_ang = cfg.tcp_max_angular_speed * dt / float(np.sum(np.abs(motion[3:6])))
            s = min(s, s_ang)
            reasons.append(f"TCP angular speed {ang:.3f} rad/s > {cfg.tcp_max_angular_speed}")
        return s

    def _speed_factor(self, q: np.ndarray, q_t: np.ndarray, pos0: np.ndarray, R0: np.ndarray, dt: float,
                      dq_meas: np.ndarray | None, reasons: list[str]) -> float:
        """Factor (<= 1) that brings the step q -> q_t inside joint velocity,
        joint acceleration and TCP speed limits; 0 when no scaling can."""
        cfg = self.config
        dq = q_t - q
        f = 1.0
        ratio = float(np.max(np.abs(dq) / (self.vmax * dt)))
        if ratio > 1.0:
            f = min(f, 1.0 / ratio)
            reasons.append(f"joint speed x{ratio:.2f} over limit")
        if dq_meas is not None and np.all(np.isfinite(self.amax)):
            f_acc = _accel_factor(dq / dt, dq_meas, self.amax * dt)
            if f_acc < 1.0:
                reasons.append("joint acceleration over limit")
                f = min(f, f_acc)
        pos_t, R_t = self.kin.fk(q_t)
        slack = cfg.ik_position_tolerance
        lin = float(np.linalg.norm(pos_t - pos0))
        if lin > cfg.tcp_max_speed * dt + slack:
            f = min(f, cfg.tcp_max_speed * dt / lin)
            reasons.append(f"TCP speed {lin / dt:.3f} m/s > {cfg.tcp_max_speed}")
        ang = _rotation_angle(R_t @ R0.T)
        if ang > cfg.tcp_max_angular_speed * dt + cfg.ik_rotation_tolerance:
            f = min(f, cfg.tcp_max_angular_speed * dt / ang)
            reasons.append(f"TCP angular speed {ang / dt:.3f} rad/s > {cfg.tcp_max_angular_speed}")
        return max(f, 0.0)


def _project(x: np.ndarray, metric: np.ndarray, rows: dict[tuple[int, float], tuple[np.ndarray, float]]
             ) -> np.ndarray | None:
    """The point closest to x in the metric M with g . y >= b for every (g, b) in rows, or None when the
    rows cannot all be met. y = x + M^-1 G^T l with l >= 0 minimising 1/2 l^T A l - r^T l, A = G M^-1 G^T,
    r = b - G x (the dual), solved by Lawson-Hanson's active set; the result is checked against
    every row."""
    if not rows:
        return x
    G = np.array([g for g, _ in rows.values()])
    b = np.array([c for _, c in rows.values()])
    if np.all(G @ x >= b - 1e-12):
        return x
    MinvGt = np.linalg.solve(metric, G.T)
    A = G @ MinvGt
    r = b - G @ x
    m = len(b)
    lam = np.zeros(m)
    free = np.zeros(m, dtype=bool)  # the passive set: rows whose multiplier may be > 0
    for _ in range(3 * m + 3):
        w = r - A @ lam
        cand = np.flatnonzero(~free & (w > 1e-12))
        if cand.size == 0:
            break
        free[cand[np.argmax(w[cand])]] = True
        for _ in range(3 * m + 3):
            z = np.zeros(m)
            idx = np.flatnonzero(free)
            z[idx] = np.linalg.lstsq(A[np.ix_(idx, idx)], r[idx], rcond=None)[0]
            if np.all(z[idx] > 1e-15):
                lam = z
                break
            neg = idx[z[idx] <= 1e-15]
            step = np.min(lam[neg] / np.maximum(lam[neg] - z[neg], 1e-300))
            lam = lam + step * (z - lam)
            free &= lam > 1e-15
            lam[~free] = 0.0
    y = x + MinvGt @ lam
    return y if np.all(G @ y >= b - 1e-9) else None


def _rotation_angle(R: np.ndarray) -> float:
    return float(np.linalg.norm(pin.log3(R)))


def _accel_factor(v: np.ndarray, w: np.ndarray, dv_max: np.ndarray) -> float:
    """Largest s in [0, 1] with |s v - w| <= dv_max for every joint; 0 if none > 0 exists."""
    lo, hi = 0.0, 1.0
    for vi, wi, ai in zip(v, w, dv_max):
        if abs(vi) < 1e-12:
            if abs(wi) > ai:
                return 0.0
            continue
        a, b = (wi - ai) / vi, (wi + ai) / vi
        lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    return hi if hi >= lo and hi > 0 else 0.0
