"""ScriptedExpert: solves reach / push / pick from privileged simulator state.

It speaks the robot's action language (``ee_delta``: TCP translation [m] and
rotation [rad] in the base frame per control step, gripper 1 = open, 0 =
closed) and says what it is doing with one phrase per phase. Each step it
looks at the current TCP and object poses, so it recovers from lag or a
slipping object, and it never asks for more than MAX_STEP_M of TCP motion per
step (the safety gate allows 0.05 m per 0.2 s step).
"""
from __future__ import annotations

import numpy as np

from specvla_ros.core.safety.kinematics import ArmKinematics, ee_delta_to_joint_target, gripper_action_to_opening
from specvla_ros.sim import language
from specvla_ros.sim.scene import SHAPES
from specvla_ros.sim.task_env import TaskEnv
from specvla_ros.sim.tasks import LIFT_HEIGHT, reach_point

MAX_STEP_M = 0.04  # [m] TCP travel per control step when moving freely
SLOW_STEP_M = 0.03  # [m] per step when lowering onto or pushing an object
MAX_ROT_STEP = 0.1  # [rad] orientation correction per step and axis
#: Orientation errors below this [rad] are left alone: corrections of tracking noise made the rotation
#: labels jitter by a bin or two from step to step, which a learnt policy copies (chatter) and which
#: makes consecutive chunks disagree token by token (weak free drafts for speculative decoding).
ROT_DEADBAND = 0.02
#: Fingers down, closing along the base y axis (the TCP's home orientation).
DOWN = np.diag([1.0, -1.0, -1.0])
APPROACH_HEIGHT = 0.1  # [m] TCP above the object centre before lowering
GRASP_BELOW_CENTRE = 0.01  # [m] TCP below the object centre when grasping (pads centre on it)
MIN_TCP_Z = 0.012  # [m] fingertips stay clear of the table
PUSH_Z = 0.018  # [m] TCP height while pushing
PUSH_STANDOFF = 0.035  # [m] gap between the object's face and the TCP before pushing
PUSH_LOW_Z = 0.045  # [m] below this the hand is at the objects' height: it pushes, slides or rises
PUSH_CORRIDOR = 0.02  # [m] lateral offset from the object -> goal line that still pushes
#: [m] horizontal distance from the pushing start point within which the hand starts lowering (the
#: descent steers onto the point on the way down). An exact arrival made "lowering" a label of a
#: spot a learnt policy locates only to a centimetre or two: it hovered there, alternating "move
#: a few cm this way" and "that way", and never went down.
PUSH_LOWER_RADIUS = 0.025
FINGER_HALF_WIDTH = 0.012  # [m] closed fingers' half thickness around the TCP
#: The gripper counts as closed (on the object or on nothing) below this opening [m]: objects are
#: at most 0.044 m across the fingers, open is 0.08, and one 0.2 s step closes it fully. Closing
#: ends on what the camera and joint states show, not on a step count the policy cannot see:
#: a counter made "closing" and "lifting" frames look the same, and the learnt policy kept closing.
CLOSED_OPENING = 0.06
LIFT_TCP_Z = 0.16  # [m]
ARRIVED = 0.008  # [m] waypoint tolerance


def zyx_from_matrix(r: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) with r = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    pitch = -np.arcsin(np.clip(r[2, 0], -1.0, 1.0))
    roll = np.arctan2(r[2, 1], r[2, 2])
    yaw = np.arctan2(r[1, 0], r[0, 0])
    return np.array([roll, pitch, yaw])


def _toward(current: np.ndarray, goal: np.ndarray, max_step: float) -> np.ndarray:
    delta = np.asarray(goal, dtype=float) - current
    dist = float(np.linalg.norm(delta))
    return delta if dist <= max_step else delta * (max_step / dist)


class ScriptedExpert:
    """Privileged-state expert for a TaskEnv; call ``act()`` once per control step
    (``reset()`` at the start of every episode)."""

    def __init__(self, env: TaskEnv) -> None:
        self.env = env
        self.reset()

    def reset(self) -> None:
        self._phase = "start"

    @property
    def phase(self) -> str:
        """Where the expert is in its task (saved and restored around look-ahead rollouts)."""
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value

    # ------------------------------------------------------------------ helpers
    def _say(self, template: str) -> str:
        t = self.env.layout.target
        return language.narration(template, t.color, t.shape)

    def _action(self, translation: np.ndarray, gripper: float) -> np.ndarray:
        _, rot = self.env.tcp_pose()
        error = zyx_from_matrix(DOWN @ rot.T)
        rpy = np.zeros(3) if np.linalg.norm(error) < ROT_DEADBAND else np.clip(error, -MAX_ROT_STEP, MAX_ROT_STEP)
        return np.concatenate([translation, rpy, [gripper]]).astype(np.float32)

    def _extent_along(self, direction: np.ndarray) -> float:
        """Half length of the (possibly turned) object along a horizontal direction."""
        t = self.env.layout.target
        if t.shape == "ball":
            return SHAPES["ball"][1][0]
        rot = self.env.object_rotation(t.color)
        half = np.array(SHAPES[t.shape][1])
        d3 = np.array([direction[0], direction[1], 0.0])
        return float(np.abs(rot.T @ d3) @ half)

    # ------------------------------------------------------------------ policy
    def act(self) -> tuple[np.ndarray, str]:
        """Next ee_delta action (7,) float32 and the narration phrase."""
        if self.env.steps == 0:  # a new episode
            self.reset()
        if self.env.settled:  # not merely successful: a margin the learnt policy's errors can use
            grip = 0.0 if self.env.task in ("pick", "push") else 1.0
            return self._action(np.zeros(3), grip), language.HOLD
        return {"reach": self._reach, "push": self._push, "pick": self._pick}[self.env.task]()

    def _reach(self) -> tuple[np.ndarray, str]:
        tcp, _ = self.env.tcp_pose()
        goal = reach_point(self.env.target_position(), self.env.layout.target)
        return self._action(_toward(tcp, goal, MAX_STEP_M), 1.0), self._say(language.MOVE)

    def _pick(self) -> tuple[np.ndarray, str]:
        env = self.env
        tcp, _ = env.tcp_pose()
        obj = env.target_position()
        above = obj + [0.0, 0.0, APPROACH_HEIGHT]
        grasp = np.array([obj[0], obj[1], max(obj[2] - GRASP_BELOW_CENTRE, MIN_TCP_Z)])
        lifted = obj[2] > env.layout.target.rest_z + 0.01
        if self._phase in ("start", "move"):
            if env.robot_state().gripper < 0.07:  # a failed grasp: open again first
                self._phase = "move"
                return self._action(np.zeros(3), 1.0), self._say(language.OPEN)
            self._phase = "move"
            if np.linalg.norm((tcp - above)[:2]) < 0.01 and abs(tcp[2] - above[2]) < 0.03:
                self._phase = "lower"
            else:
                return self._action(_toward(tcp, above, MAX_STEP_M), 1.0), self._say(language.MOVE)
        if self._phase == "lower":
            if np.linalg.norm(tcp - grasp) < ARRIVED:
                self._phase = "close"
            elif np.linalg.norm((tcp - obj)[:2]) > 0.03:  # object moved away: start over
                self._phase = "move"
                return self._action(_toward(tcp, above, MAX_STEP_M), 1.0), self._say(language.MOVE)
            else:
                return self._action(_toward(tcp, grasp, SLOW_STEP_M), 1.0), self._say(language.LOWER)
        if self._phase == "close":
            if env.robot_state().gripper > CLOSED_OPENING:
                return self._action(_toward(tcp, grasp, SLOW_STEP_M), 0.0), self._say(language.CLOSE)
            self._phase = "lift"
        # lift: if the object stays behind the fingers, the grasp failed
        if tcp[2] - obj[2] > 0.05 and not lifted:
            self._phase = "move"
            return self._action(np.zeros(3), 1.0), self._say(language.OPEN)
        goal = np.array([tcp[0], tcp[1], max(LIFT_TCP_Z, env.layout.target.rest_z + LIFT_HEIGHT + 0.03)])
        return self._action(_toward(tcp, goal, MAX_STEP_M), 0.0), self._say(language.LIFT)

    def push_line(self) -> tuple[np.ndarray, float, np.ndarray]:
        """The push as planned from the object's pose now -> (unit direction object -> goal (2,),
        contact: TCP to object centre along it when touching [m], start point the push begins from (2,))."""
        obj = self.env.target_position()
        to_goal = np.asarray(self.env.layout.goal_xy, dtype=float) - obj[:2]
        direction = to_goal / max(float(np.linalg.norm(to_goal)), 1e-9)
        contact = self._extent_along(direction) + FINGER_HALF_WIDTH
        return direction, contact, obj[:2] - direction * (contact + PUSH_STANDOFF)

    def _push(self) -> tuple[np.ndarray, str]:
        """Push from the far side along the object -> goal line.

        Every branch is chosen from the current TCP, gripper and object poses alone (no phase
        memory), so the same camera view and joint state always get the same label: when the
        expert kept a phase, frames of "lowering" and "retreating" beside the object looked alike
        with opposite labels, and the learnt policy dithered there instead of backing off.
        """
        env = self.env
        tcp, _ = env.tcp_pose()
        obj = env.target_position()
        goal = np.asarray(env.layout.goal_xy, dtype=float)
        direction, contact, start_xy = self.push_line()
        if env.robot_state().gripper > 0.01 and tcp[2] > APPROACH_HEIGHT - 0.03:
            return self._action(np.zeros(3), 0.0), self._say(language.CLOSE)  # push with closed fingers
        rel = tcp[:2] - obj[:2]
        lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])  # off the object -> goal line
        behind = -float(rel @ direction)  # > 0 on the pushing side of the object centre
        to_start = float(np.linalg.norm(tcp[:2] - start_xy))
        if tcp[2] < PUSH_LOW_Z:
            if lateral <= PUSH_CORRIDOR and behind >= contact - 0.02:
                if tcp[2] > PUSH_Z + 0.012 and behind > contact + 0.005:
                    # not touching yet: finish lowering onto the line first
                    on_line = obj[:2] - direction * behind
                    waypoint = np.array([on_line[0], on_line[1], PUSH_Z])
                    return self._action(_toward(tcp, waypoint, SLOW_STEP_M), 0.0), self._say(language.LOWER)
                # drive the contact point so the object's centre ends on the goal; the height is
                # corrected on its own so that the push never drifts up off the object's face
                tcp_goal = goal - direction * contact
                step = np.append(_toward(tcp[:2], tcp_goal, SLOW_STEP_M),
                                 np.clip(PUSH_Z - tcp[2], -0.015, 0.015))
                return self._action(step, 0.0), self._say(language.PUSH)
            if lateral <= 2 * PUSH_CORRIDOR and behind >= contact + 0.01:
                # low but off the line and clear of the object: slide back onto the line
                waypoint = np.array([start_xy[0], start_xy[1], PUSH_Z])
                return self._action(_toward(tcp, waypoint, SLOW_STEP_M), 0.0), self._say(language.LOWER)
            # beside or past the object: straight up before moving round it
            up = np.array([tcp[0], tcp[1], APPROACH_HEIGHT])
            return self._action(_toward(tcp, up, MAX_STEP_M), 0.0), self._say(language.MOVE)
        over_start = to_start < PUSH_LOWER_RADIUS
        if over_start:
            waypoint = np.array([start_xy[0], start_xy[1], PUSH_Z])
            return self._action(_toward(tcp, waypoint, SLOW_STEP_M), 0.0), self._say(language.LOWER)
        # rise first when low, so the hand never sweeps through objects
        waypoint = (np.array([tcp[0], tcp[1], APPROACH_HEIGHT]) if tcp[2] < APPROACH_HEIGHT - 0.03
                    else np.array([start_xy[0], start_xy[1], APPROACH_HEIGHT]))
        return self._action(_toward(tcp, waypoint, MAX_STEP_M), 0.0), self._say(language.MOVE)


def expert_chunk(env: TaskEnv, expert: ScriptedExpert, horizon: int, kin: ArmKinematics) -> np.ndarray:
    """The expert's next ``horizon`` actions (horizon, 7) from the current state: the label of an
    action chunk. The expert is rolled forward in the simulation (its actions executed as
    collection executes them, through the gate's IK), then the episode and the expert are put
    back exactly as they were."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    snap, phase = env.snapshot(), expert.phase
    actions = []
    try:
        for h in range(horizon):
            action, _ = expert.act()
            actions.append(action)
            if h + 1 < horizon:
                result = ee_delta_to_joint_target(kin, env.robot_state().q, action)
                env.command(result.q, gripper_action_to_opening(float(action[6])))
                env.step_control()
    finally:
        env.restore(snap)
        expert.phase = phase
    return np.stack(actions)
