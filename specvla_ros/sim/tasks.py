"""Task families and their seeded layouts; success judged from object and TCP poses.

A layout is a pure function of (task, seed): which coloured objects lie where,
which one the instruction names, where the push target is and how the arm
starts. Success checks take poses, so they can be tested without physics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specvla_ros.sim import language
from specvla_ros.sim.scene import HOME_Q, SHAPES, TABLE_TOP_Z, TARGET_RADIUS

#: Where objects may be placed (base frame) [m].
WORKSPACE_X = (0.36, 0.62)
WORKSPACE_Y = (-0.22, 0.22)
MIN_OBJECT_SPACING = 0.1  # [m] between object centres
N_OBJECTS = (3, 4)  # objects per episode (target + 2..3 distractors), inclusive
PUSH_DISTANCE = (0.10, 0.15)  # [m] from the object to the target centre
PUSH_CLEARANCE = 0.085  # [m] distractor distance from the pusher's path
HOME_NOISE = 0.05  # [rad] uniform noise on the start joint positions

#: Success thresholds.
REACH_HOVER = 0.05  # [m] the reach point is this far above the object's top
REACH_TOLERANCE = 0.03  # [m] TCP distance to the reach point
PUSH_TOLERANCE = 0.035  # [m] object centre to target centre (xy)
LIFT_HEIGHT = 0.05  # [m] the picked object must rise this far above its resting height
#: Where the expert stops (tighter than success): an expert that stops right at the success threshold
#: teaches a policy to stop there, and the policy's few-centimetre errors then fall on both sides of it.
REACH_SETTLE = 0.01  # [m] TCP distance to the reach point
PUSH_SETTLE = 0.015  # [m] object centre to target centre (xy)

#: Control steps an episode may last, per task (0.2 s each).
MAX_STEPS: dict[str, int] = {"reach": 30, "push": 60, "pick": 60}


@dataclass(frozen=True)
class ObjectSpec:
    """One object on the table."""

    color: str
    shape: str
    xy: tuple[float, float]

    @property
    def half_height(self) -> float:
        gtype_size = SHAPES[self.shape][1]
        return gtype_size[0] if self.shape == "ball" else gtype_size[2]

    @property
    def rest_z(self) -> float:
        """Centre height of the object resting on the table [m]."""
        return TABLE_TOP_Z + self.half_height

    @property
    def phrase(self) -> str:
        return language.object_phrase(self.color, self.shape)


@dataclass(frozen=True)
class Layout:
    """Everything random about an episode."""

    task: str
    seed: int
    target: ObjectSpec  # the object the instruction names
    distractors: tuple[ObjectSpec, ...]
    goal_xy: tuple[float, float] | None  # push target centre, None for other tasks
    start_q: np.ndarray  # arm joint positions at reset [rad]

    @property
    def objects(self) -> tuple[ObjectSpec, ...]:
        return (self.target, *self.distractors)

    @property
    def instruction(self) -> str:
        return language.instruction(self.task, self.target.color, self.target.shape)

    @property
    def max_steps(self) -> int:
        return MAX_STEPS[self.task]


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def _uniform_xy(rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.uniform(*WORKSPACE_X), rng.uniform(*WORKSPACE_Y)])


def _in_workspace(xy: np.ndarray, margin: float = 0.0) -> bool:
    return (WORKSPACE_X[0] - margin <= xy[0] <= WORKSPACE_X[1] + margin
            and WORKSPACE_Y[0] - margin <= xy[1] <= WORKSPACE_Y[1] + margin)


def sample_layout(task: str, seed: int) -> Layout:
    """Draw a layout for the task; the same (task, seed) always gives the same layout."""
    if task not in language.TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {language.TASKS}")
    rng = np.random.default_rng([seed, language.TASKS.index(task)])
    for _ in range(1000):
        layout = _try_layout(task, seed, rng)
        if layout is not None:
            return layout
    raise RuntimeError(f"no valid layout for task {task!r} seed {seed}")  # pragma: no cover


def _try_layout(task: str, seed: int, rng: np.random.Generator) -> Layout | None:
    n = int(rng.integers(N_OBJECTS[0], N_OBJECTS[1] + 1))
    colors = rng.permutation(language.COLOR_NAMES)[:n]
    target_shape = str(rng.choice(language.TASK_SHAPES[task]))
    shapes = [target_shape] + [str(rng.choice(language.SHAPE_NAMES)) for _ in range(n - 1)]
    target_xy = _uniform_xy(rng)
    goal = None
    pusher_path: tuple[np.ndarray, np.ndarray] | None = None
    if task == "push":
        direction = np.array([(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)][int(rng.integers(4))])
        goal = target_xy + direction * rng.uniform(*PUSH_DISTANCE)
        if not _in_workspace(goal, margin=0.02):
            return None
        pusher_path = (target_xy - direction * 0.08, goal)
    placed = [target_xy]
    for _ in range(n - 1):
        for _attempt in range(50):
            xy = _uniform_xy(rng)
            if min(np.linalg.norm(xy - p) for p in placed) < MIN_OBJECT_SPACING:
                continue
            if pusher_path is not None and (
                    _point_segment_distance(xy, *pusher_path) < PUSH_CLEARANCE
                    or np.linalg.norm(xy - goal) < TARGET_RADIUS + MIN_OBJECT_SPACING / 2):
                continue
            placed.append(xy)
            break
        else:
            return None
    objects = [ObjectSpec(str(c), s, (float(p[0]), float(p[1]))) for c, s, p in zip(colors, shapes, placed)]
    start_q = HOME_Q + rng.uniform(-HOME_NOISE, HOME_NOISE, size=HOME_Q.shape)
    return Layout(task=task, seed=int(seed), target=objects[0], distractors=tuple(objects[1:]),
                  goal_xy=None if goal is None else (float(goal[0]), float(goal[1])),
                  start_q=start_q)


def reach_point(obj_pos: np.ndarray, obj: ObjectSpec) -> np.ndarray:
    """Where the TCP should be to have reached an object (hovering above its top)."""
    return np.asarray(obj_pos, dtype=float) + np.array([0.0, 0.0, obj.half_height + REACH_HOVER])


def is_success(layout: Layout, tcp_pos: np.ndarray, target_pos: np.ndarray) -> bool:
    """Whether the task is achieved, from the TCP and the named object's position [m]."""
    return _achieved(layout, tcp_pos, target_pos, REACH_TOLERANCE, PUSH_TOLERANCE)


def is_settled(layout: Layout, tcp_pos: np.ndarray, target_pos: np.ndarray) -> bool:
    """Whether the task is achieved with margin (the expert holds still from here; pick: lifted)."""
    return _achieved(layout, tcp_pos, target_pos, REACH_SETTLE, PUSH_SETTLE)


def _achieved(layout: Layout, tcp_pos: np.ndarray, target_pos: np.ndarray, reach_tol: float,
              push_tol: float) -> bool:
    target_pos = np.asarray(target_pos, dtype=float)
    if layout.task == "reach":
        return bool(np.linalg.norm(np.asarray(tcp_pos) - reach_point(target_pos, layout.target)) < reach_tol)
    if layout.task == "push":
        # must rest on the table at the goal (not carried there)
        return bool(np.linalg.norm(target_pos[:2] - np.asarray(layout.goal_xy)) < push_tol
                    and target_pos[2] < layout.target.rest_z + 0.01)
    return bool(target_pos[2] > layout.target.rest_z + LIFT_HEIGHT)


def success_report(layout: Layout, tcp_pos: np.ndarray, target_pos: np.ndarray) -> str:
    """What ``is_success`` measures now against its threshold, in words (why an episode failed)."""
    target_pos = np.asarray(target_pos, dtype=float)
    name = layout.target.phrase
    if layout.task == "reach":
        d = float(np.linalg.norm(np.asarray(tcp_pos) - reach_point(target_pos, layout.target)))
        return f"gripper {_cm(d)} cm from the point above the {name} (needs < {_cm(REACH_TOLERANCE)})"
    if layout.task == "push":
        d = float(np.linalg.norm(target_pos[:2] - np.asarray(layout.goal_xy)))
        text = f"{name} {_cm(d)} cm from the target centre (needs < {_cm(PUSH_TOLERANCE)})"
        lifted = float(target_pos[2] - layout.target.rest_z)
        return text + (f", and {_cm(lifted)} cm off the table (must rest on it)" if lifted >= 0.01 else "")
    lifted = float(target_pos[2] - layout.target.rest_z)
    return f"{name} raised {_cm(lifted)} cm (needs > {_cm(LIFT_HEIGHT)})"


def _cm(metres: float) -> str:
    return f"{round(100.0 * metres, 1) + 0.0:.1f}"  # + 0.0: no "-0.0" for a hair below zero
