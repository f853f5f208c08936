"""A Panda in Gazebo (gz sim) driven by specvla_node: for users who have Gazebo.

    ros2 launch specvla_ros gazebo.launch.py
    ros2 launch specvla_ros gazebo.launch.py gz_args:=-s instruction:="pick up the red cube"
    ros2 launch specvla_ros gazebo.launch.py command_interface:=forward_position

Starts gz sim with the workcell world (table, objects, a 640x480 camera at 30 Hz in the
MuJoCo workcell's pose), spawns the Panda with gz_ros2_control, bridges /clock and the
camera with ros_gz_bridge, spawns joint_state_broadcaster, the arm controller the node's
command_interface publishes to and the gripper controller, and runs specvla_node on sim
time. Needs ros_gz_sim, ros_gz_bridge, gz_ros2_control, robot_state_publisher and
ros2_controllers (Jazzy/Harmonic or later). The files it generates come from
specvla_ros.ros.gazebo (`python -m specvla_ros.ros.gazebo DIR` writes them for inspection).
"""
import tempfile
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from specvla_ros.ros.gazebo import GRIPPER_CONTROLLER, JOINT_STATE_BROADCASTER, write_files


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("specvla_ros"), "config", "specvla.yaml"])
    files = write_files(Path(tempfile.mkdtemp(prefix="specvla_gazebo_")))
    command_interface = LaunchConfiguration("command_interface")
    instruction = LaunchConfiguration("instruction")

    spawn_robot = Node(
        package="ros_gz_sim",
        executable="create",
        name="spawn_panda",
        output="screen",
        arguments=["-topic", "robot_description", "-name", "panda"],
    )
    joint_state_broadcaster = Node(
        package="controller_manager",
        executable="spawner",
        name="spawn_joint_state_broadcaster",
        arguments=[JOINT_STATE_BROADCASTER],
    )
    arm_and_gripper = Node(
        package="controller_manager",
        executable="spawner",
        name="spawn_arm_and_gripper_controllers",
        # joint_trajectory -> joint_trajectory_controller, forward_position -> forward_position_controller
        arguments=[[command_interface, "_controller"], GRIPPER_CONTROLLER],
    )
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameter file of specvla_node"),
        DeclareLaunchArgument("command_interface", default_value="joint_trajectory",
                              description="joint_trajectory | forward_position (the controller spawned to match)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure + activate specvla_node without a lifecycle manager"),
        DeclareLaunchArgument("gz_args", default_value="",
                              description="extra gz sim arguments, e.g. -s for a server without GUI"),
        DeclareLaunchArgument("instruction", default_value="",
                              description="task to latch on /specvla/instruction ('' = publish it yourself)"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])),
            launch_arguments=[("gz_args", [LaunchConfiguration("gz_args"), " -r -v 1 ", str(files.world)])],
        ),
        Node(
            package="robot_state_publisher",
            executable="robot_state_publisher",
            name="robot_state_publisher",
            output="screen",
            parameters=[{"robot_description": ParameterValue(files.description, value_type=str),
                         "use_sim_time": True}],
        ),
        spawn_robot,
        Node(
            package="ros_gz_bridge",
            executable="parameter_bridge",
            name="gz_bridge",
            output="screen",
            arguments=["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
                       "/camera/image_raw@sensor_msgs/msg/Image[gz.msgs.Image"],
        ),
        # controllers once the robot (and with it the controller manager) exists
        RegisterEventHandler(OnProcessExit(target_action=spawn_robot, on_exit=[joint_state_broadcaster])),
        RegisterEventHandler(OnProcessExit(target_action=joint_state_broadcaster, on_exit=[arm_and_gripper])),
        Node(
            package="specvla_ros",
            executable="specvla_node",
            name="specvla_node",
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "use_sim_time": True,
                    "command_interface": command_interface,
                    "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                },
            ],
        ),
        ExecuteProcess(
            cmd=["ros2", "topic", "pub", "--qos-durability", "transient_local", "--qos-reliability", "reliable",
                 "/specvla/instruction", "std_msgs/msg/String", ["{data: '", instruction, "'}"]],
            condition=IfCondition(PythonExpression(["'", instruction, "' != ''"])),
            output="log",
        ),
    ])
