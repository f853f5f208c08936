"""The files launch/gazebo.launch.py hands to Gazebo, checked for what the node needs:
names, poses and limits agree with the node's topics and defaults and the simulator's
workcell. (Gazebo cannot be installed here; nothing in this file runs it.)"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from specvla_ros.core.safety.kinematics import ArmKinematics
from specvla_ros.ros import gazebo, params, topics
from specvla_ros.sim import scene


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> gazebo.GazeboFiles:
    return gazebo.write_files(tmp_path_factory.mktemp("gz"))


def test_robot_description_is_the_panda_under_gz_ros2_control(files, tmp_path: Path) -> None:
    d = params.defaults()
    robot = ET.fromstring(files.description)
    fixed = next(j for j in robot.findall("joint") if j.get("name") == "world_to_base")
    assert fixed.get("type") == "fixed" and fixed.find("parent").get("link") == "world"
    assert fixed.find("child").get("link") == "panda_link0"
    control = robot.find("ros2_control")
    assert control.find("hardware/plugin").text == "gz_ros2_control/GazeboSimSystem"
    joints = {j.get("name"): j for j in control.findall("joint")}
    assert list(joints) == list(d["joint_names"]) + list(d["gripper_joint_names"])
    commanded = [n for n, j in joints.items() if j.find("command_interface") is not None]
    assert commanded == list(d["joint_names"]) + [d["gripper_joint_names"][0]]
    initial = [float(joints[n].find("state_interface[@name='position']/param").text) for n in d["joint_names"]]
    np.testing.assert_allclose(initial, scene.HOME_Q, atol=1e-6)
    urdf_joints = {j.get("name"): j for j in robot.findall("joint")}
    assert urdf_joints["panda_finger_joint2"].find("mimic").get("joint") == "panda_finger_joint1"
    plugin = robot.find("gazebo/plugin")
    assert plugin.get("filename") == "gz_ros2_control-system"
    assert plugin.find("parameters").text == str(files.controllers)
    for link in robot.findall("link"):  # the camera sees what collides
        assert len(link.findall("visual")) == len(link.findall("collision")), link.get("name")
    # still a valid URDF with the same kinematics
    path = tmp_path / "panda_gazebo.urdf"
    path.write_text(files.description)
    ours, shipped = ArmKinematics.from_urdf(path), ArmKinematics.from_urdf(None)
    for q in (scene.HOME_Q, scene.HOME_Q + 0.2):
        np.testing.assert_allclose(ours.fk(q)[0], shipped.fk(q)[0], atol=1e-9)


def test_an_initial_pose_outside_the_limits_is_refused(files) -> None:
    q = scene.HOME_Q.copy()
    q[3] = 0.0  # panda_joint4's upper limit is -0.0698
    with pytest.raises(ValueError, match="panda_joint4"):
        gazebo.robot_description(files.controllers, initial_q=q)


def test_controllers_match_the_nodes_topics_and_joints(files) -> None:
    d = params.defaults()
    doc = yaml.safe_load(files.controllers.read_text())
    manager = doc["controller_manager"]["ros__parameters"]
    for topic, kind in ((topics.TRAJECTORY, "joint_trajectory_controller/JointTrajectoryController"),
                        (topics.FORWARD, "forward_command_controller/ForwardCommandController"),
                        (topics.GRIPPER, "forward_command_controller/ForwardCommandController")):
        name = topic.split("/")[1]
        assert manager[name]["type"] == kind
    assert manager[gazebo.JOINT_STATE_BROADCASTER]["type"] == "joint_state_broadcaster/JointStateBroadcaster"
    jtc = doc["joint_trajectory_controller"]["ros__parameters"]
    assert jtc["joints"] == list(d["joint_names"]) and jtc["command_interfaces"] == ["position"]
    assert doc["forward_position_controller"]["ros__parameters"]["joints"] == list(d["joint_names"])
    gripper = doc["gripper_controller"]["ros__parameters"]
    assert gripper == {"joints": [d["gripper_joint_names"][0]], "interface_name": "position"}


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def test_world_has_the_workcells_camera_and_table(files) -> None:
    world = ET.parse(files.world).getroot().find("world")
    plugins = {p.get("name"): p for p in world.findall("plugin")}
    assert plugins["gz::sim::systems::Sensors"].find("render_engine").text == "ogre2"
    assert "gz::sim::systems::Physics" in plugins
    cam = next(m for m in world.findall("model") if m.get("name") == "specvla_camera")
    sensor = cam.find("link/sensor")
    assert sensor.get("type") == "camera" and sensor.find("topic").text == topics.IMAGE
    assert (int(sensor.find("camera/image/width").text), int(sensor.find("camera/image/height").text)) == (640, 480)
    x, y, z, roll, pitch, yaw = (float(v) for v in cam.find("pose").text.split())
    np.testing.assert_allclose((x, y, z), scene.CAMERA_POS, atol=1e-6)
    # a gz camera looks along its +x axis: the ray must pass through the workcell camera's look-at point
    forward = _rpy_matrix(roll, pitch, yaw)[:, 0]
    to_target = np.asarray(scene.CAMERA_LOOKAT) - np.asarray(scene.CAMERA_POS)
    np.testing.assert_allclose(forward, to_target / np.linalg.norm(to_target), atol=1e-6)
    up = _rpy_matrix(roll, pitch, yaw)[:, 2]
    assert up[2] > 0.5  # not upside down
    hfov = float(sensor.find("camera/horizontal_fov").text)
    vfov = 2 * math.atan(math.tan(hfov / 2) * 480 / 640)
    assert math.degrees(vfov) == pytest.approx(scene.CAMERA_FOVY, abs=1e-3)
    table = next(m for m in world.findall("model") if m.get("name") == "table")
    top = table.find("link[@name='top']")
    top_z = float(top.find("pose").text.split()[2]) + float(top.find("collision/geometry/box/size").text.split()[2]) / 2
    assert top_z == pytest.approx(scene.TABLE_TOP_Z, abs=1e-4)  # the robot stands on the table top


def test_cli_writes_the_files_for_inspection(tmp_path: Path, capsys) -> None:
    assert gazebo.main([str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"specvla_gazebo_controllers.yaml", "specvla_workcell.sdf",
                                                    "panda_gazebo.urdf"}
    ET.parse(tmp_path / "panda_gazebo.urdf")
    assert "wrote" in capsys.readouterr().out
