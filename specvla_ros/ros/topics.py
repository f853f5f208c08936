"""Every topic and service of specvla_ros: its default name, message type and QoS.

The policy node, the simulator, the bag tools, the bring-up, the launch checks and the
benches all take names from here. They are defaults: remap any of them at launch
(``-r /camera/image_raw:=/wrist/image``). Names starting with ``~/`` are private to the
node that publishes them (``resolved`` gives the full name).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no rclpy import here: the bag tools read these names without ROS installed
    from rclpy.qos import QoSProfile

POLICY_NODE = "specvla_node"
SIM_NODE = "specvla_sim"

# --- policy node inputs
IMAGE = "/camera/image_raw"
COMPRESSED_SUFFIX = "/compressed"  # CompressedImage topic = IMAGE + this (use_compressed_image)
INSTRUCTION = "/specvla/instruction"
JOINT_STATES = "/joint_states"
ESTOP = "/specvla/estop"
SCENE_OBJECTS = "/specvla/scene_objects"

# --- policy node outputs
TRAJECTORY = "/joint_trajectory_controller/joint_trajectory"  # command_interface: joint_trajectory
FORWARD = "/forward_position_controller/commands"  # command_interface: forward_position
GRIPPER = "/gripper_controller/commands"
NARRATION = "/specvla/narration"
SAFETY = "~/safety"
STATS = "~/spec_stats"
TIMING = "~/timing"
PLAN = "~/plan"  # the checked plan of each decision (every point that may reach the controller)
DIAGNOSTICS = "/diagnostics"

# --- simulator
CLOCK = "/clock"
SIM_STATUS = "/specvla_sim/task_status"
SIM_RESET = "/specvla_sim/reset"  # service


def resolved(name: str, node: str = POLICY_NODE) -> str:
    """Full name of a node-private topic (``~/safety`` -> ``/specvla_node/safety``)."""
    return f"/{node}/{name[2:]}" if name.startswith("~/") else name


#: What the policy node reads and writes, by full name (the recorder's and the replay's defaults).
POLICY_INPUTS: tuple[str, ...] = (IMAGE, INSTRUCTION, JOINT_STATES, ESTOP, SCENE_OBJECTS)
POLICY_OUTPUTS: tuple[str, ...] = (TRAJECTORY, FORWARD, GRIPPER, NARRATION, resolved(SAFETY), resolved(STATS),
                                   DIAGNOSTICS)

#: Message type of every topic above, by full name.
TYPES: dict[str, str] = {
    IMAGE: "sensor_msgs/msg/Image",
    IMAGE + COMPRESSED_SUFFIX: "sensor_msgs/msg/CompressedImage",
    INSTRUCTION: "std_msgs/msg/String",
    JOINT_STATES: "sensor_msgs/msg/JointState",
    ESTOP: "std_msgs/msg/Bool",
    SCENE_OBJECTS: "specvla_msgs/msg/SceneObjects",
    TRAJECTORY: "trajectory_msgs/msg/JointTrajectory",
    FORWARD: "std_msgs/msg/Float64MultiArray",
    GRIPPER: "std_msgs/msg/Float64MultiArray",
    NARRATION: "std_msgs/msg/String",
    resolved(SAFETY): "specvla_msgs/msg/SafetyVerdict",
    resolved(STATS): "specvla_msgs/msg/SpecDecodeStats",
    resolved(TIMING): "specvla_msgs/msg/ControlTiming",
    resolved(PLAN): "trajectory_msgs/msg/JointTrajectory",
    DIAGNOSTICS: "diagnostic_msgs/msg/DiagnosticArray",
    CLOCK: "rosgraph_msgs/msg/Clock",
    SIM_STATUS: "specvla_msgs/msg/TaskStatus",
}

#: QoS profile (a name in ``specvla_ros.ros.qos``, which says why) of every topic above, by full name.
QOS: dict[str, str] = {
    IMAGE: "CAMERA",
    IMAGE + COMPRESSED_SUFFIX: "CAMERA",
    INSTRUCTION: "LATCHED",
    JOINT_STATES: "JOINT_STATES",
    ESTOP: "LATCHED",
    SCENE_OBJECTS: "SCENE_OBJECTS",
    TRAJECTORY: "COMMAND",
    FORWARD: "COMMAND",
    GRIPPER: "COMMAND",
    NARRATION: "STATUS",
    resolved(SAFETY): "STATUS",
    resolved(STATS): "STATUS",
    resolved(TIMING): "STATUS",
    resolved(PLAN): "STATUS",
    DIAGNOSTICS: "STATUS",
    SIM_STATUS: "STATUS",
}


def qos_profile(topic: str) -> QoSProfile:
    """The QoS profile of ``topic`` (full name)."""
    from specvla_ros.ros import qos

    return getattr(qos, QOS[topic])
