"""The simulator's objects as the safety gate's ``SceneObject`` boxes: the one
conversion both the ROS simulator node and the direct evaluation use, so the
two back-ends gate against the same scene.

What a perception pipeline would report: every object on the table as an
axis-aligned box in the robot base frame (the world frame of the workcell),
the box bounding the object's current pose (a tilted block gets a larger box),
and the object the instruction names marked ``gripper_may_touch``.
"""
from __future__ import annotations

import numpy as np

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.sim.scene import SHAPES
from specvla_ros.sim.task_env import TaskEnv

#: Frame the boxes are expressed in: the robot base (= the workcell's world frame).
BASE_FRAME = "panda_link0"


def _half_extents(shape: str) -> np.ndarray:
    size = SHAPES[shape][1]
    if shape == "ball":
        return np.full(3, size[0])
    return np.asarray(size, dtype=float)


def task_scene_objects(env: TaskEnv) -> list[SceneObject]:
    """The episode's objects at the current simulator state, task object first."""
    target = env.layout.target.color
    out: list[SceneObject] = []
    for obj in env.layout.objects:
        center = env.object_position(obj.color)
        R = env.object_rotation(obj.color)
        half = np.abs(R) @ _half_extents(obj.shape)  # world-aligned bounding box of the rotated box
        out.append(SceneObject(name=f"{obj.color}_{obj.shape}", center=tuple(center.tolist()),
                               size=tuple((2.0 * half).tolist()), gripper_may_touch=obj.color == target))
    return out
