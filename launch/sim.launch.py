"""Simulator (specvla_sim) + policy node (specvla_node) with one parameter file.

    ros2 launch specvla_ros sim.launch.py
    ros2 launch specvla_ros sim.launch.py params_file:=/path/my.yaml

Machines without `ros2 launch`: `specvla_bringup` starts the same graph.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("specvla_ros"), "config", "specvla.yaml"])
    params = LaunchConfiguration("params_file")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameter file of specvla_sim and specvla_node"),
        Node(
            package="specvla_ros",
            executable="specvla_sim",
            name="specvla_sim",
            output="screen",
            emulate_tty=True,
            parameters=[params],
        ),
        Node(
            package="specvla_ros",
            executable="specvla_node",
            name="specvla_node",
            output="screen",
            emulate_tty=True,
            parameters=[params],
        ),
    ])
