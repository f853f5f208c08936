"""TaskEnv: the simulated Panda workcell with one task per episode.

Behaves like an arm behind a joint position controller: ``command`` sets the
joint and gripper targets, ``step_control`` advances one control period of
real MuJoCo physics under them, ``render`` returns the camera image. Success
and collisions are judged from the simulator's state only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import mujoco
import numpy as np

from specvla_ros.core.types import RobotState
from specvla_ros.sim import scene
from specvla_ros.sim.tasks import Layout, is_settled, is_success, sample_layout, success_report

PARK_XY = (-1.2, 0.0)  # unused object slots rest on the floor here, out of view
SETTLE_S = 0.1  # [s] of physics after a reset so objects rest on the table
CONTACT_CHECK_EVERY = 10  # physics steps between collision checks (20 ms)


@dataclass
class TaskEnvConfig:
    """Settings of a TaskEnv."""

    image_size: tuple[int, int] = (128, 128)  # (height, width) [px]
    control_period_s: float = 0.2  # physics advanced by one step_control [s]

    def __post_init__(self) -> None:
        h, w = self.image_size
        if not (8 <= int(h) <= 480 and 8 <= int(w) <= 640):
            raise ValueError(f"image_size {self.image_size} must lie within 8..480 x 8..640")
        if not (scene.PHYSICS_TIMESTEP <= self.control_period_s <= 5.0):
            raise ValueError(f"control_period_s {self.control_period_s} must be in "
                             f"[{scene.PHYSICS_TIMESTEP}, 5.0] s")


@dataclass(frozen=True)
class EnvSnapshot:
    """A copy of an episode's state at one instant (``TaskEnv.snapshot`` / ``restore``)."""

    data: mujoco.MjData
    steps: int
    q_target: np.ndarray
    gripper_target: float
    collisions: list[tuple[str, str]]
    episode_collisions: set[tuple[str, str]]
    success_ever: bool


class TaskEnv:
    """One simulated workcell; ``reset`` starts an episode of ``task`` from ``seed``.

    Args:
        task: "reach", "push" or "pick".
        seed: layout seed of the first episode.
        image_size: camera image (height, width) [px].
        control_period_s: seconds of physics per ``step_control``.
    """

    def __init__(self, task: str = "reach", seed: int = 0, image_size: tuple[int, int] = (128, 128),
                 control_period_s: float = 0.2) -> None:
        self.config = TaskEnvConfig(image_size=tuple(image_size), control_period_s=control_period_s)
        self.model = scene.build_model()
        self.data = mujoco.MjData(self.model)
        self.ids = scene.SceneIds.from_model(self.model)
        self._renderer: mujoco.Renderer | None = None  # made by the thread that renders first
        self._scene_option = mujoco.MjvOption()
        self._scene_option.sitegroup[:] = 0
        self._scene_option.geomgroup[:] = 0
        self._scene_option.geomgroup[1] = 1
        self._scene_option.geomgroup[scene.VISIBLE_GROUP] = 1
        self._slot_of_color = {c: i for i, c in enumerate(scene.COLORS)}
        self._body_label: dict[int, str] = {}
        self._active_slots: dict[int, str] = {}  # body id -> "red_cube"
        self.layout: Layout = sample_layout(task, seed)
        self.steps = 0
        self.collisions: list[tuple[str, str]] = []  # seen during the last control period
        self.episode_collisions: set[tuple[str, str]] = set()
        self.success_ever = False
        self._q_target = np.zeros(7)
        self._gripper_target = 0.0
        self.reset(seed, task)

    # ------------------------------------------------------------------ episode
    @property
    def task(self) -> str:
        return self.layout.task

    @property
    def seed(self) -> int:
        return self.layout.seed

    @property
    def instruction(self) -> str:
        return self.layout.instruction

    @property
    def max_steps(self) -> int:
        return self.layout.max_steps

    def reset(self, seed: int | None = None, task: str | None = None, start_q: np.ndarray | None = None) -> dict:
        """Start a new episode; same (task, seed) -> same layout and physics. ``start_q`` starts the
        arm there instead of the layout's start pose (e.g. parked close to a joint limit)."""
        task = self.task if task is None else task
        seed = self.seed if seed is None else int(seed)
        self.layout = sample_layout(task, seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._active_slots = {}
        for slot_idx in range(len(scene.OBJECT_SLOTS)):
            self._show_shape(slot_idx, None)
            self._place_slot(slot_idx, np.array([*PARK_XY, scene.FLOOR_Z - 0.5]) + [0.0, 0.3 * slot_idx, 0.0], park=True)
        for obj in self.layout.objects:
            idx = self._slot_of_color[obj.color]
            self._show_shape(idx, obj.shape)
            self._place_slot(idx, np.array([obj.xy[0], obj.xy[1], obj.rest_z]))
            self._active_slots[int(self.ids.slot_body[idx])] = f"{obj.color}_{obj.shape}"
        goal = self.layout.goal_xy
        d.mocap_pos[self.ids.target_mocap] = (
            [goal[0], goal[1], scene.TABLE_TOP_Z + 0.0008] if goal is not None else [*PARK_XY, -0.7])
        q0 = self.layout.start_q if start_q is None else np.asarray(start_q, dtype=np.float64).reshape(-1)
        if q0.shape != (len(self.ids.arm_qpos),) or not np.all(np.isfinite(q0)):
            raise ValueError(f"start_q must hold {len(self.ids.arm_qpos)} finite joint positions, got {start_q}")
        d.qpos[self.ids.arm_qpos] = q0
        d.qpos[self.ids.finger_qpos] = [scene.FINGER_MAX, -scene.FINGER_MAX]
        self.command(q0, 2 * scene.FINGER_MAX)
        mujoco.mj_forward(m, d)
        self._advance(SETTLE_S, track_collisions=False)
        d.time = 0.0
        self.steps = 0
        self.collisions = []
        self.episode_collisions = set()
        self.success_ever = self.success
        return {"instruction": self.instruction, "task": self.task, "seed": self.seed}

    def snapshot(self) -> EnvSnapshot:
        """Everything ``restore`` needs to bring the episode back to this instant (same layout)."""
        return EnvSnapshot(copy.copy(self.data), self.steps, self._q_target.copy(), self._gripper_target,
                           list(self.collisions), set(self.episode_collisions), self.success_ever)

    def restore(self, snap: EnvSnapshot) -> None:
        """Back to ``snap`` (taken in this episode): physics, command, step count, collision and success records."""
        self.data = copy.copy(snap.data)
        self.steps = snap.steps
        self._q_target, self._gripper_target = snap.q_target.copy(), snap.gripper_target
        self.collisions, self.episode_collisions = list(snap.collisions), set(snap.episode_collisions)
        self.success_ever = snap.success_ever

    def _show_shape(self, slot_idx: int, shape: str | None) -> None:
        """Make one shape of a slot visible and solid, the others invisible and ghost."""
        for name, gid in self.ids.slot_geoms[scene.OBJECT_SLOTS[slot_idx]].items():
            on = name == shape
            self.model.geom_rgba[gid, 3] = 1.0 if on else 0.0
            self.model.geom_contype[gid] = 1 if on else 0
            self.model.geom_conaffinity[gid] = 1 if on else 0

    def _place_slot(self, slot_idx: int, pos: np.ndarray, park: bool = False) -> None:
        adr = int(self.ids.slot_qpos[slot_idx])
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = [1.0, 0.0, 0.0, 0.0]
        # a parked slot has no solid geom: let it float (gravity compensated) out of view
        self.model.body_gravcomp[self.ids.slot_body[slot_idx]] = 1.0 if park else 0.0

    # ------------------------------------------------------------------ control
    def command(self, q_target: np.ndarray, gripper_opening_m: float) -> None:
        """Set the joint position targets [rad] (7,) and the gripper opening [m] (0..0.08)."""
        q = np.asarray(q_target, dtype=float).reshape(-1)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"q_target must be 7 finite joint positions, got {q_target!r}")
        if not np.isfinite(gripper_opening_m):
            raise ValueError(f"gripper_opening_m must be finite, got {gripper_opening_m!r}")
        lo, hi = self.model.actuator_ctrlrange[self.ids.arm_act].T
        self._q_target = np.clip(q, lo, hi)
        self._gripper_target = float(np.clip(gripper_opening_m, 0.0, 2 * scene.FINGER_MAX))
        self.data.ctrl[self.ids.arm_act] = self._q_target
        half = self._gripper_target / 2
        self.data.ctrl[self.ids.finger_act] = [half, -half]

    def step_control(self) -> None:
        """Advance one control period of physics under the last command."""
        self.advance(self.config.control_period_s)
        self.steps += 1

    def advance(self, duration_s: float) -> None:
        """Advance physics by duration_s [s] (rounded to whole physics steps),
        recording collisions and success along the way."""
        self.collisions = []
        self._advance(duration_s, track_collisions=True)
        self.success_ever = self.success_ever or self.success

    def _advance(self, duration_s: float, track_collisions: bool) -> None:
        n = max(1, int(round(duration_s / self.model.opt.timestep)))
        seen: dict[tuple[str, str], None] = dict.fromkeys(self.collisions)
        while n > 0:
            k = min(n, CONTACT_CHECK_EVERY)
            mujoco.mj_step(self.model, self.data, nstep=k)
            n -= k
            if track_collisions:
                seen.update(dict.fromkeys(self._current_collisions()))
        if track_collisions:
            self.collisions = list(seen)
            self.episode_collisions.update(seen)

    @property
    def time(self) -> float:
        """Simulated seconds since the episode started."""
        return float(self.data.time)

    # ------------------------------------------------------------------ state
    def robot_state(self) -> RobotState:
        d = self.data
        fingers = d.qpos[self.ids.finger_qpos]
        return RobotState(q=d.qpos[self.ids.arm_qpos].copy(), gripper=float(fingers[0] - fingers[1]),
                          dq=d.qvel[self.ids.arm_dof].copy(), stamp=float(d.time))

    def finger_positions(self) -> np.ndarray:
        """panda_finger_joint1/2 positions as a real Panda reports them (both >= 0) [m]."""
        f = self.data.qpos[self.ids.finger_qpos]
        return np.array([f[0], -f[1]])

    def finger_velocities(self) -> np.ndarray:
        """panda_finger_joint1/2 velocities, signs as finger_positions [m/s]."""
        v = self.data.qvel[self.ids.finger_dof]
        return np.array([v[0], -v[1]])

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position [m] and rotation matrix in the base frame (core.kinematics' TCP)."""
        sid = self.ids.tcp_site
        return self.data.site_xpos[sid].copy(), self.data.site_xmat[sid].reshape(3, 3).copy()

    def object_position(self, color: str) -> np.ndarray:
        """Centre of the object of that colour [m]."""
        body = int(self.ids.slot_body[self._slot_of_color[color]])
        return self.data.xpos[body].copy()

    def object_rotation(self, color: str) -> np.ndarray:
        """Rotation matrix of the object of that colour in the base frame."""
        body = int(self.ids.slot_body[self._slot_of_color[color]])
        return self.data.xmat[body].reshape(3, 3).copy()

    def target_position(self) -> np.ndarray:
        """Centre of the object the instruction names [m]."""
        return self.object_position(self.layout.target.color)

    @property
    def success(self) -> bool:
        """Whether the task is achieved in the current state."""
        return is_success(self.layout, self.tcp_pose()[0], self.target_position())

    @property
    def settled(self) -> bool:
        """Whether the task is achieved with the expert's margin (``tasks.is_settled``)."""
        return is_settled(self.layout, self.tcp_pose()[0], self.target_position())

    @property
    def success_report(self) -> str:
        """The success test's measurement now against its threshold, in words."""
        return success_report(self.layout, self.tcp_pose()[0], self.target_position())

    @property
    def truncated(self) -> bool:
        """The episode has used its step budget."""
        return self.steps >= self.max_steps

    def _label(self, body: int) -> str:
        if body in self._active_slots:
            return self._active_slots[body]
        return mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_BODY, body) or f"body{body}"

    def _current_collisions(self) -> list[tuple[str, str]]:
        """Contacts that should not happen: the robot touching the table, itself, or
        any object except the gripper touching the task's object."""
        ids, m, d = self.ids, self.model, self.data
        target_body = int(ids.slot_body[self._slot_of_color[self.layout.target.color]])
        out: list[tuple[str, str]] = []
        for i in range(d.ncon):
            c = d.contact[i]
            b1, b2 = int(m.geom_bodyid[c.geom1]), int(m.geom_bodyid[c.geom2])
            r1, r2 = b1 in ids.robot_bodies, b2 in ids.robot_bodies
            if not (r1 or r2):
                continue  # objects on the table, objects on each other
            if r1 and r2:
                if b1 in ids.gripper_bodies and b2 in ids.gripper_bodies:
                    continue  # fingertips touch each other when closed
            else:
                robot, other = (b1, b2) if r1 else (b2, b1)
                if other == target_body and robot in ids.gripper_bodies:
                    continue
            pair = tuple(sorted((self._label(b1), self._label(b2))))
            out.append(pair)  # type: ignore[arg-type]
        return out

    # ------------------------------------------------------------------ camera
    def render(self) -> np.ndarray:
        """Camera image, uint8 (H, W, 3) RGB. The GL context belongs to the calling
        thread of the first call; render from that thread only."""
        if self._renderer is None:
            h, w = self.config.image_size
            self._renderer = mujoco.Renderer(self.model, int(h), int(w))
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self._renderer.update_scene(self.data, camera=self.ids.camera, scene_option=self._scene_option)
        return self._renderer.render()

    def close(self) -> None:
        """Release the renderer's GL context."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
