"""Run specvla_node against a real robot (ros2_control + a camera driver).

    ros2 launch specvla_ros specvla.launch.py
    ros2 launch specvla_ros specvla.launch.py params_file:=/path/my.yaml \
        camera_topic:=/wrist_camera/image_raw command_interface:=forward_position

Machines without `ros2 launch`: `specvla_bringup --robot` starts the same node.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("specvla_ros"), "config", "specvla.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameter file of specvla_node"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic of the camera"),
        DeclareLaunchArgument("joint_states_topic", default_value="/joint_states",
                              description="sensor_msgs/JointState topic"),
        DeclareLaunchArgument("command_interface", default_value="joint_trajectory",
                              description="joint_trajectory | forward_position"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure + activate without a lifecycle manager"),
        Node(
            package="specvla_ros",
            executable="specvla_node",
            name="specvla_node",
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "command_interface": LaunchConfiguration("command_interface"),
                    "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                },
            ],
            remappings=[
                ("/camera/image_raw", LaunchConfiguration("camera_topic")),
                ("/joint_states", LaunchConfiguration("joint_states_topic")),
            ],
        ),
    ])
