"""Files for a Gazebo (gz sim) Panda that specvla_node drives: ``launch/gazebo.launch.py`` uses them.

- the robot description: the shipped Panda URDF with visuals (its collision primitives,
  so the camera sees the arm), fixed to the world, a ``ros2_control`` block for
  ``gz_ros2_control`` (position commands, the home pose as initial positions, the second
  finger mimicking the first) and the plugin that loads the controllers;
- the controllers: joint_state_broadcaster, the arm controller named as the node's command
  topic expects (``joint_trajectory_controller`` or ``forward_position_controller``) and
  the gripper's ``forward_command_controller``;
- the world: the MuJoCo workcell's table, floor, camera pose and field of view, a few
  objects, and the systems a camera needs (Sensors with ogre2).

Everything is derived from the node's topics and defaults and from the simulator's scene
constants, so names and poses cannot drift apart. Gazebo itself is not installed on the
machines this package is tested on: the files are checked for content, not run.
"""
from __future__ import annotations

import argparse
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from specvla_ros.core.safety.kinematics import DEFAULT_URDF
from specvla_ros.ros import params
from specvla_ros.sim import scene
from specvla_ros.ros import topics

#: command_interface parameter -> the controller whose topic the node publishes on.
ARM_CONTROLLERS: dict[str, str] = {"joint_trajectory": topics.TRAJECTORY.split("/")[1],
                                   "forward_position": topics.FORWARD.split("/")[1]}
GRIPPER_CONTROLLER = topics.GRIPPER.split("/")[1]
JOINT_STATE_BROADCASTER = "joint_state_broadcaster"
CONTROLLER_RATE_HZ = 250
#: The camera of a typical arm cell: VGA at 30 Hz (the node resizes to the model's input).
CAMERA_WIDTH, CAMERA_HEIGHT, CAMERA_RATE_HZ = 640, 480, 30.0
CAMERA_FRAME = "camera"
#: One fixed layout of the workcell's objects: (name, colour, centre xyz [m], half-extents [m]).
OBJECTS: tuple[tuple[str, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("red_cube", "red", (0.5, -0.1, 0.022), (0.022, 0.022, 0.022)),
    ("blue_block", "blue", (0.55, 0.15, 0.02), (0.032, 0.02, 0.02)),
)
PUSH_TARGET_XY = (0.4, 0.25)
_VISUAL_RGBA = "0.92 0.92 0.92 1"


def controller_for(command_interface: str) -> str:
    """Name of the arm controller the node's ``command_interface`` publishes to."""
    try:
        return ARM_CONTROLLERS[command_interface]
    except KeyError:
        raise ValueError(f"command_interface must be one of {sorted(ARM_CONTROLLERS)}, "
                         f"got {command_interface!r}") from None


def controllers_yaml(joint_names: Sequence[str] | None = None, gripper_joint: str | None = None) -> str:
    """The controller manager's parameters (loaded by the gz_ros2_control plugin)."""
    d = params.defaults()
    joints = list(joint_names or d["joint_names"])
    finger = gripper_joint or d["gripper_joint_names"][0]
    doc = {
        "controller_manager": {"ros__parameters": {
            "update_rate": CONTROLLER_RATE_HZ,
            JOINT_STATE_BROADCASTER: {"type": "joint_state_broadcaster/JointStateBroadcaster"},
            ARM_CONTROLLERS["joint_trajectory"]: {"type": "joint_trajectory_controller/JointTrajectoryController"},
            ARM_CONTROLLERS["forward_position"]: {"type": "forward_command_controller/ForwardCommandController"},
            GRIPPER_CONTROLLER: {"type": "forward_command_controller/ForwardCommandController"},
        }},
        ARM_CONTROLLERS["joint_trajectory"]: {"ros__parameters": {
            "joints": list(joints), "command_interfaces": ["position"], "state_interfaces": ["position", "velocity"],
        }},
        ARM_CONTROLLERS["forward_position"]: {"ros__parameters": {"joints": list(joints),
                                                                  "interface_name": "position"}},
        GRIPPER_CONTROLLER: {"ros__parameters": {"joints": [finger], "interface_name": "position"}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def robot_description(controllers_file: Path | str, urdf: Path = DEFAULT_URDF,
                      initial_q: Sequence[float] = tuple(scene.HOME_Q),
                      initial_finger: float = scene.FINGER_MAX) -> str:
    """The Panda URDF ready for gz sim + gz_ros2_control (see the module docstring)."""
    d = params.defaults()
    arm, fingers = list(d["joint_names"]), list(d["gripper_joint_names"])
    if len(initial_q) != len(arm):
        raise ValueError(f"initial_q has {len(initial_q)} values for {len(arm)} joints")
    robot = ET.parse(urdf).getroot()
    joints = {j.get("name"): j for j in robot.findall("joint")}
    missing = [n for n in arm + fingers if n not in joints]
    if missing:
        raise ValueError(f"{urdf} has no joints {missing}")
    for name, q in zip(arm, initial_q):
        lim = joints[name].find("limit")
        lo, hi = float(lim.get("lower")), float(lim.get("upper"))  # type: ignore[union-attr,arg-type]
        if not lo <= q <= hi:
            raise ValueError(f"initial position {q} of {name} is outside its limits [{lo}, {hi}]")
    for link in robot.findall("link"):  # the camera renders visuals only
        for i, col in enumerate(link.findall("collision")):
            vis = ET.SubElement(link, "visual", name=f"{link.get('name')}_visual_{i}")
            for child in col:
                vis.append(child)
            ET.SubElement(ET.SubElement(vis, "material", name="panda_white"), "color", rgba=_VISUAL_RGBA)
    root_link = robot.find("link").get("name")  # type: ignore[union-attr]
    robot.insert(0, ET.Element("link", name="world"))
    fixed = ET.SubElement(robot, "joint", name="world_to_base", type="fixed")
    ET.SubElement(fixed, "parent", link="world")
    ET.SubElement(fixed, "child", link=str(root_link))
    ET.SubElement(fixed, "origin", xyz="0 0 0", rpy="0 0 0")

    control = ET.SubElement(robot, "ros2_control", name="GazeboSimSystem", type="system")
    ET.SubElement(ET.SubElement(control, "hardware"), "plugin").text = "gz_ros2_control/GazeboSimSystem"
    commanded = [(n, q) for n, q in zip(arm, initial_q)] + [(fingers[0], initial_finger)]
    for name, q in commanded:
        j = ET.SubElement(control, "joint", name=name)
        ET.SubElement(j, "command_interface", name="position")
        ET.SubElement(ET.SubElement(j, "state_interface", name="position"), "param",
                      name="initial_value").text = f"{q:.6f}"
        ET.SubElement(j, "state_interface", name="velocity")
    for name in fingers[1:]:  # mimics the first finger (<mimic> in the URDF): state only
        j = ET.SubElement(control, "joint", name=name)
        ET.SubElement(ET.SubElement(j, "state_interface", name="position"), "param",
                      name="initial_value").text = f"{initial_finger:.6f}"
        ET.SubElement(j, "state_interface", name="velocity")
    plugin = ET.SubElement(ET.SubElement(robot, "gazebo"), "plugin", filename="gz_ros2_control-system",
                           name="gz_ros2_control::GazeboSimROS2ControlPlugin")
    ET.SubElement(plugin, "parameters").text = str(controllers_file)
    ET.indent(robot)
    return ET.tostring(robot, encoding="unicode")


def camera_pose() -> tuple[float, float, float, float, float, float]:
    """SDF pose (x y z roll pitch yaw) of the workcell camera: at CAMERA_POS looking at CAMERA_LOOKAT.

    A gz camera looks along its +x axis with +z up; positive pitch tilts it down.
    """
    pos, target = np.asarray(scene.CAMERA_POS, float), np.asarray(scene.CAMERA_LOOKAT, float)
    d = target - pos
    yaw = math.atan2(d[1], d[0])
    pitch = math.atan2(-d[2], math.hypot(d[0], d[1]))
    return float(pos[0]), float(pos[1]), float(pos[2]), 0.0, pitch, yaw


def horizontal_fov(width: int = CAMERA_WIDTH, height: int = CAMERA_HEIGHT) -> float:
    """Horizontal field of view [rad] with the workcell camera's vertical one (MuJoCo's fovy)."""
    return 2.0 * math.atan(math.tan(math.radians(scene.CAMERA_FOVY) / 2.0) * width / height)


def _box(parent: ET.Element, name: str, pose: Sequence[float], half: Sequence[float], rgba: str,
         collide: bool = True) -> None:
    link = ET.SubElement(parent, "link", name=name)
    ET.SubElement(link, "pose").text = " ".join(f"{v:.4f}" for v in pose)
    size = " ".join(f"{2 * h:.4f}" for h in half)
    for kind in ("visual", "collision") if collide else ("visual",):
        el = ET.SubElement(link, kind, name=kind)
        ET.SubElement(ET.SubElement(el, "geometry"), "box").append(_text("size", size))
        if kind == "visual":
            mat = ET.SubElement(el, "material")
            mat.append(_text("ambient", rgba))
            mat.append(_text("diffuse", rgba))


def _text(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


def world_sdf(camera_topic: str = topics.IMAGE, width: int = CAMERA_WIDTH, height: int = CAMERA_HEIGHT,
              rate_hz: float = CAMERA_RATE_HZ) -> str:
    """The workcell as a gz sim world (table top at z = 0 where the robot stands)."""
    sdf = ET.Element("sdf", version="1.9")
    world = ET.SubElement(sdf, "world", name="specvla_workcell")
    physics = ET.SubElement(world, "physics", name="1ms", type="ignored")
    physics.append(_text("max_step_size", "0.001"))
    physics.append(_text("real_time_factor", "1.0"))
    for filename, name in (("gz-sim-physics-system", "gz::sim::systems::Physics"),
                           ("gz-sim-user-commands-system", "gz::sim::systems::UserCommands"),
                           ("gz-sim-scene-broadcaster-system", "gz::sim::systems::SceneBroadcaster")):
        ET.SubElement(world, "plugin", filename=filename, name=name)
    sensors = ET.SubElement(world, "plugin", filename="gz-sim-sensors-system", name="gz::sim::systems::Sensors")
    sensors.append(_text("render_engine", "ogre2"))
    light = ET.SubElement(world, "light", type="directional", name="sun")
    for tag, text in (("cast_shadows", "false"), ("pose", "0.6 0.4 1.6 0 0 0"), ("diffuse", "0.8 0.8 0.8 1"),
                      ("specular", "0.2 0.2 0.2 1"), ("direction", "-0.2 -0.2 -1.0")):
        light.append(_text(tag, text))

    ground = ET.SubElement(world, "model", name="floor")
    ground.append(_text("static", "true"))
    _box(ground, "floor", (0.0, 0.0, scene.FLOOR_Z - 0.01, 0, 0, 0), (3.0, 3.0, 0.01), "0.35 0.35 0.38 1")
    table = ET.SubElement(world, "model", name="table")
    table.append(_text("static", "true"))
    (x0, x1), (y0, y1) = scene.TABLE_X_RANGE, scene.TABLE_Y_RANGE
    top_z = scene.TABLE_TOP_Z - scene.TABLE_THICKNESS / 2
    _box(table, "top", ((x0 + x1) / 2, 0.0, top_z, 0, 0, 0), ((x1 - x0) / 2, (y1 - y0) / 2,
                                                                scene.TABLE_THICKNESS / 2), "0.72 0.6 0.45 1")
    leg_h = (scene.TABLE_TOP_Z - scene.TABLE_THICKNESS) - scene.FLOOR_Z
    for i, (sx, sy) in enumerate((x, y) for x in (x0 + 0.05, x1 - 0.05) for y in (y0 + 0.05, y1 - 0.05)):
        _box(table, f"leg{i}", (sx, sy, scene.FLOOR_Z + leg_h / 2, 0, 0, 0), (0.025, 0.025, leg_h / 2),
             "0.4 0.33 0.25 1", collide=False)
    for name, colour, centre, half in OBJECTS:
        model = ET.SubElement(world, "model", name=name)
        model.append(_text("pose", " ".join(f"{v:.4f}" for v in centre) + " 0 0 0"))
        rgba = " ".join(f"{c:.2f}" for c in scene.COLORS[colour])
        _box(model, "link", (0, 0, 0, 0, 0, 0), half, rgba)
        link = model.find("link")
        inertial = ET.SubElement(link, "inertial")  # type: ignore[arg-type]
        inertial.append(_text("mass", f"{scene.OBJECT_MASS}"))
    target = ET.SubElement(world, "model", name="push_target")
    target.append(_text("static", "true"))
    _box(target, "disc", (*PUSH_TARGET_XY, 0.0008, 0, 0, 0), (scene.TARGET_RADIUS, scene.TARGET_RADIUS, 0.0008),
         "0.95 0.95 0.95 1", collide=False)

    cam = ET.SubElement(world, "model", name="specvla_camera")
    cam.append(_text("static", "true"))
    cam.append(_text("pose", " ".join(f"{v:.6f}" for v in camera_pose())))
    sensor = ET.SubElement(ET.SubElement(cam, "link", name="link"), "sensor", name="camera", type="camera")
    for tag, text in (("always_on", "true"), ("update_rate", f"{rate_hz:g}"), ("topic", camera_topic),
                      ("gz_frame_id", CAMERA_FRAME)):
        sensor.append(_text(tag, text))
    camera = ET.SubElement(sensor, "camera")
    camera.append(_text("horizontal_fov", f"{horizontal_fov(width, height):.6f}"))
    image = ET.SubElement(camera, "image")
    for tag, text in (("width", str(width)), ("height", str(height)), ("format", "R8G8B8")):
        image.append(_text(tag, text))
    clip = ET.SubElement(camera, "clip")
    clip.append(_text("near", "0.05"))
    clip.append(_text("far", "8.0"))
    ET.indent(sdf)
    return '<?xml version="1.0"?>\n' + ET.tostring(sdf, encoding="unicode")


@dataclass(frozen=True)
class GazeboFiles:
    description: str  # robot_description (URDF text)
    controllers: Path
    world: Path


def write_files(out_dir: Path) -> GazeboFiles:
    """Write the controllers and the world into ``out_dir``; return them with the description."""
    out_dir.mkdir(parents=True, exist_ok=True)
    controllers = out_dir / "specvla_gazebo_controllers.yaml"
    controllers.write_text(controllers_yaml())
    world = out_dir / "specvla_workcell.sdf"
    world.write_text(world_sdf())
    return GazeboFiles(robot_description(controllers), controllers, world)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m specvla_ros.ros.gazebo",
                                 description="Write the Gazebo files of launch/gazebo.launch.py (for inspection).")
    ap.add_argument("out_dir", type=Path)
    files = write_files(ap.parse_args(argv).out_dir)
    (files.world.parent / "panda_gazebo.urdf").write_text(files.description)
    print(f"wrote {files.controllers}, {files.world}, {files.world.parent / 'panda_gazebo.urdf'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
