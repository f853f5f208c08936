"""The simulated workcell: a Franka Panda with its gripper on a table, four
coloured object slots and a push-target marker, built with ``mujoco.MjSpec``.

Frames (shared with ``core.kinematics``): the robot base ``panda_link0`` sits at
the world origin and the table top is the plane ``z = TABLE_TOP_Z = 0``, so the
world frame *is* the robot's base frame.

The model is compiled once; episodes only move objects and switch which shape
each slot shows (geom rgba / contype at run time), so a reset never recompiles
and the renderer's GL context stays valid.

robosuite's MJCF assets are located with ``importlib.util.find_spec`` and never
imported (importing robosuite needs many packages we do not install).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES

#: Height of the table top in the world (= robot base) frame [m].
TABLE_TOP_Z = 0.0
#: Table extent in x and y [m] (the robot base sits near its back edge).
TABLE_X_RANGE = (-0.25, 0.95)
TABLE_Y_RANGE = (-0.6, 0.6)
TABLE_THICKNESS = 0.04
FLOOR_Z = -0.75

#: Colours an object can have; each episode gives every object a different one.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.1, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.12, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.82, 0.1, 1.0),
}
#: Object shapes: name -> (mujoco geom type, size). Sizes are half-extents [m].
SHAPES: dict[str, tuple[int, tuple[float, float, float]]] = {
    "cube": (mujoco.mjtGeom.mjGEOM_BOX, (0.022, 0.022, 0.022)),
    # long axis along x so the gripper (closing along y) can grasp it
    "block": (mujoco.mjtGeom.mjGEOM_BOX, (0.032, 0.02, 0.02)),
    "ball": (mujoco.mjtGeom.mjGEOM_SPHERE, (0.022, 0.0, 0.0)),
}
OBJECT_MASS = 0.06  # [kg]
#: Radius of the push-target disc [m].
TARGET_RADIUS = 0.05

#: Ready pose of the arm [rad] (TCP ~0.3 m above the table, fingers down).
HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])
#: TCP as core.kinematics defines it: panda_link8 = link7 + 0.107 m along z, then
#: 0.1034 m further along z (between the fingertips), rotated Rz(-pi/4).
TCP_OFFSET_FROM_LINK7 = 0.107 + 0.1034
TCP_SITE = "tcp"
#: Fingers fully open: each finger's travel [m] (opening = 2 * this).
FINGER_MAX = 0.04

#: Geom group rendered by the camera: robosuite's visual meshes are group 1, its
#: collision meshes group 0 (hidden), the scene's geoms this one.
VISIBLE_GROUP = 2
PHYSICS_TIMESTEP = 0.002  # [s]
# Joint servo (like the Franka's joint impedance controller): stiffness
# [Nm/rad], damping [Nms/rad] and torque limits [Nm] per joint.
ARM_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
ARM_KV = (450.0, 450.0, 350.0, 350.0, 200.0, 200.0, 200.0)
ARM_TORQUE = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)

#: Body names of the robot in the compiled model (URDF-style names).
ROBOT_LINK_NAMES: tuple[str, ...] = tuple(f"panda_link{i}" for i in range(8))
HAND_BODY = "panda_hand"
FINGER_BODIES: tuple[str, ...] = ("panda_leftfinger", "panda_rightfinger", "panda_leftfinger_tip",
                                  "panda_rightfinger_tip")
TABLE_BODY = "table"
OBJECT_SLOTS: tuple[str, ...] = tuple(f"object_{c}" for c in COLORS)  # one slot per colour
TARGET_BODY = "push_target"
CAMERA_NAME = "front"
#: Third-person camera: position and the point it looks at (world frame) [m].
CAMERA_POS = (1.1, 0.42, 0.72)
CAMERA_LOOKAT = (0.45, 0.0, 0.1)
CAMERA_FOVY = 42.0


def robosuite_assets() -> Path:
    """Directory of robosuite's MJCF assets (found without importing robosuite)."""
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "robosuite assets not found: install them with `pip install --no-deps robosuite==1.5.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "assets"
    if not (path / "robots" / "panda" / "robot.xml").is_file():
        raise FileNotFoundError(f"robosuite Panda MJCF missing under {path}")
    return path


def _lookat_basis(pos: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of a camera at pos looking at target, z up."""
    fwd = np.asarray(target, dtype=np.float64) - pos
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return right, np.cross(right, fwd), fwd


def project_to_image(points: np.ndarray) -> np.ndarray:
    """(..., 3) world points [m] -> (..., 2) in the camera image: x right, y down, [-1, 1] across a
    square image (the fixed look-at camera above)."""
    pos = np.array(CAMERA_POS)
    right, up, fwd = _lookat_basis(pos, np.array(CAMERA_LOOKAT))
    d = np.asarray(points, dtype=np.float64) - pos
    depth = d @ fwd
    focal = 1.0 / np.tan(np.radians(CAMERA_FOVY) / 2)
    return np.stack([focal * (d @ right) / depth, -focal * (d @ up) / depth], axis=-1)


def _lookat_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Quaternion (w x y z) of a MuJoCo camera at pos looking at target, z up."""
    right, up, fwd = _lookat_basis(pos, target)
    # MuJoCo cameras look along -z with +y up
    mat = np.column_stack([right, up, -fwd])
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def _rename(spec: mujoco.MjSpec) -> None:
    """Give the robosuite robot URDF-style names so topics and collisions read like a real Panda."""
    for i, name in enumerate(PANDA_JOINT_NAMES, start=1):
        spec.joint(f"joint{i}").name = name
    for i in range(8):
        spec.body(f"link{i}").name = f"panda_link{i}"


def build_spec() -> mujoco.MjSpec:
    """The whole workcell as an editable spec (compile with ``.compile()``)."""
    assets = robosuite_assets()
    spec = mujoco.MjSpec.from_file(str(assets / "robots" / "panda" / "robot.xml"))
    spec.modelname = "specvla_workcell"
    spec.option.timestep = PHYSICS_TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.compiler.autolimits = True
    _rename(spec)

    # Replace robosuite's torque motors with a joint position servo and let the
    # "firmware" compensate gravity, as a real Franka does.
    for act in list(spec.actuators):
        spec.delete(act)
    for i, name in enumerate(PANDA_JOINT_NAMES):
        act = spec.add_actuator(name=f"{name}_servo", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=ARM_KP[i], kv=ARM_KV[i])
        act.forcelimited = True
        act.forcerange = [-ARM_TORQUE[i], ARM_TORQUE[i]]
        act.ctrlrange = spec.joint(name).range
        act.ctrllimited = True
        spec.joint(name).armature = 0.1
    for body in spec.bodies:
        if body.name.startswith("panda_link") or body.name == "right_hand":
            body.gravcomp = 1.0

    gripper = mujoco.MjSpec.from_file(str(assets / "grippers" / "panda_gripper.xml"))
    frame = spec.body("right_hand").add_frame()
    spec.attach(gripper, frame=frame, prefix="g_")  # an empty prefix drops the actuators
    spec.joint("g_finger_joint1").name = PANDA_FINGER_JOINT_NAMES[0]
    spec.joint("g_finger_joint2").name = PANDA_FINGER_JOINT_NAMES[1]
    for old, new in zip(("g_right_gripper", "g_leftfinger", "g_rightfinger", "g_finger_joint1_tip",
                         "g_finger_joint2_tip"), (HAND_BODY, *FINGER_BODIES)):
        spec.body(old).name = new
    for i, act in enumerate(("g_gripper_finger_joint1", "g_gripper_finger_joint2")):
        spec.actuator(act).name = f"{PANDA_FINGER_JOINT_NAMES[i]}_servo"
        spec.actuator(f"{PANDA_FINGER_JOINT_NAMES[i]}_servo").target = PANDA_FINGER_JOINT_NAMES[i]
    for body in spec.bodies:
        if body.name in (HAND_BODY, *FINGER_BODIES, "g_eef"):
            body.gravcomp = 1.0

    spec.body("panda_link7").add_site(
        name=TCP_SITE, pos=[0.0, 0.0, TCP_OFFSET_FROM_LINK7], size=[0.005, 0.0, 0.0],
        quat=[np.cos(-np.pi / 8), 0.0, 0.0, np.sin(-np.pi / 8)], group=5)
    _add_table(spec)
    _add_objects(spec)
    _add_camera_and_lights(spec)
    # fast offscreen rendering: no multisampling, small shadow map unused
    spec.visual.quality.offsamples = 0
    spec.visual.quality.shadowsize = 0
    spec.visual.global_.offwidth = 640
    spec.visual.global_.offheight = 480
    spec.stat.extent = 1.5
    return spec


def _add_table(spec: mujoco.MjSpec) -> None:
    wb = spec.worldbody
    table = wb.add_body(name=TABLE_BODY)
    cx = 0.5 * (TABLE_X_RANGE[0] + TABLE_X_RANGE[1])
    hx = 0.5 * (TABLE_X_RANGE[1] - TABLE_X_RANGE[0])
    hy = 0.5 * (TABLE_Y_RANGE[1] - TABLE_Y_RANGE[0])
    table.add_geom(name="table_top", type=mujoco.mjtGeom.mjGEOM_BOX,
                   size=[hx, hy, TABLE_THICKNESS / 2],
                   pos=[cx, 0.0, TABLE_TOP_Z - TABLE_THICKNESS / 2],
                   rgba=[0.72, 0.6, 0.45, 1.0], friction=[0.6, 0.005, 0.0001], group=VISIBLE_GROUP)
    leg_h = (TABLE_TOP_Z - TABLE_THICKNESS) - FLOOR_Z
    for sx in (TABLE_X_RANGE[0] + 0.05, TABLE_X_RANGE[1] - 0.05):
        for sy in (TABLE_Y_RANGE[0] + 0.05, TABLE_Y_RANGE[1] - 0.05):
            table.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.025, 0.025, leg_h / 2],
                           pos=[sx, sy, FLOOR_Z + leg_h / 2], rgba=[0.4, 0.33, 0.25, 1.0], group=VISIBLE_GROUP,
                           contype=0, conaffinity=0)
    wb.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.1],
                pos=[0.0, 0.0, FLOOR_Z], rgba=[0.35, 0.35, 0.38, 1.0], group=VISIBLE_GROUP)


def _add_objects(spec: mujoco.MjSpec) -> None:
    """One free body per colour, carrying a geom for every shape; the episode
    enables one shape per slot (the others are invisible and collide with nothing)."""
    for slot, color in zip(OBJECT_SLOTS, COLORS.values()):
        body = spec.worldbody.add_body(name=slot, pos=[0.0, 0.0, -0.5])
        body.add_freejoint(name=f"{slot}_free")
        body.explicitinertial = True
        body.mass = OBJECT_MASS
        i = 2.0 / 5.0 * OBJECT_MASS * 0.022 ** 2 * 1.5
        body.inertia = [i, i, i]
        for shape, (gtype, size) in SHAPES.items():
            body.add_geom(name=f"{slot}_{shape}", type=gtype, size=list(size), rgba=list(color),
                          friction=[1.0, 0.01, 0.0005], condim=4, mass=0.0, group=VISIBLE_GROUP)
    target = spec.worldbody.add_body(name=TARGET_BODY, mocap=True, pos=[0.0, 0.0, -0.5])
    target.add_geom(name="push_target_disc", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                    size=[TARGET_RADIUS, 0.0008, 0.0], rgba=[0.95, 0.95, 0.95, 1.0],
                    contype=0, conaffinity=0, group=VISIBLE_GROUP)
    target.add_geom(name="push_target_dot", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                    size=[0.012, 0.0012, 0.0], rgba=[0.1, 0.1, 0.1, 1.0], contype=0, conaffinity=0,
                    group=VISIBLE_GROUP)


def _add_camera_and_lights(spec: mujoco.MjSpec) -> None:
    pos = np.array(CAMERA_POS)
    spec.worldbody.add_camera(name=CAMERA_NAME, pos=pos,
                              quat=_lookat_quat(pos, np.array(CAMERA_LOOKAT)), fovy=CAMERA_FOVY)
    spec.worldbody.add_light(name="key", pos=[0.6, 0.4, 1.6], dir=[-0.2, -0.2, -1.0],
                             castshadow=False, diffuse=[0.7, 0.7, 0.7])
    spec.worldbody.add_light(name="fill", pos=[1.2, -0.6, 1.0], dir=[-1.0, 0.5, -0.8],
                             castshadow=False, diffuse=[0.35, 0.35, 0.35])


@dataclass(frozen=True)
class SceneIds:
    """Indices into a compiled model that the task code needs every step."""

    arm_qpos: np.ndarray  # qpos addresses of panda_joint1..7
    arm_dof: np.ndarray  # dof addresses of panda_joint1..7
    finger_qpos: np.ndarray  # qpos addresses of both finger joints
    finger_dof: np.ndarray  # dof addresses of both finger joints
    arm_act: np.ndarray  # actuator ids of the arm servos
    finger_act: np.ndarray  # actuator ids of the finger servos
    slot_body: np.ndarray  # body id per object slot
    slot_qpos: np.ndarray  # qpos address of each slot's free joint
    slot_geoms: dict[str, dict[str, int]]  # slot -> shape -> geom id
    target_mocap: int
    camera: int
    tcp_site: int
    robot_bodies: frozenset[int]
    gripper_bodies: frozenset[int]  # hand + fingers (may touch the task's object)
    finger_bodies: frozenset[int]
    table_body: int

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> SceneIds:
        def jid(name: str) -> int:
            return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)

        def bid(name: str) -> int:
            i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            if i < 0:
                raise KeyError(f"body {name!r} not in the model")
            return i

        arm_j = [jid(n) for n in PANDA_JOINT_NAMES]
        fin_j = [jid(n) for n in PANDA_FINGER_JOINT_NAMES]
        acts = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"{n}_servo")
                for n in PANDA_JOINT_NAMES]
        fin_a = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"{n}_servo")
                 for n in PANDA_FINGER_JOINT_NAMES]
        slots = [bid(s) for s in OBJECT_SLOTS]
        geoms = {s: {shape: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, f"{s}_{shape}")
                     for shape in SHAPES} for s in OBJECT_SLOTS}
        fingers = frozenset(bid(n) for n in FINGER_BODIES)
        gripper = fingers | {bid(HAND_BODY)}
        robot = frozenset(b for b in range(model.nbody)
                          if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) in
                          (*ROBOT_LINK_NAMES, "right_hand")) | gripper
        return cls(
            arm_qpos=np.array([model.jnt_qposadr[j] for j in arm_j]),
            arm_dof=np.array([model.jnt_dofadr[j] for j in arm_j]),
            finger_qpos=np.array([model.jnt_qposadr[j] for j in fin_j]),
            finger_dof=np.array([model.jnt_dofadr[j] for j in fin_j]),
            arm_act=np.array(acts),
            finger_act=np.array(fin_a),
            slot_body=np.array(slots),
            slot_qpos=np.array([model.jnt_qposadr[model.body_jntadr[b]] for b in slots]),
            slot_geoms=geoms,
            target_mocap=int(model.body_mocapid[bid(TARGET_BODY)]),
            camera=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME),
            tcp_site=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, TCP_SITE),
            robot_bodies=robot,
            gripper_bodies=gripper,
            finger_bodies=fingers,
            table_body=bid(TABLE_BODY),
        )


def build_model() -> mujoco.MjModel:
    """Compile the workcell."""
    return build_spec().compile()
