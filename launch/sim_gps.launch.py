"""The learning loop against the PyBullet arm: sim_robot and the four learning nodes.

    ros2 launch mbpl_ros sim_gps.launch.py [params_file:=/path/to/params.yaml]

Every node reads its parameters from one ros__parameters file (default:
share/mbpl_ros/config/sim_reacher_2link.yaml): a `/**` section for what all of them
share (the experiment file) and one section per node. The node set comes from
mbpl_ros.nodes.graph, which the in-process runner (`mbpl sim`) uses too.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from mbpl_ros.nodes import graph


def generate_launch_description() -> LaunchDescription:
    params_file = LaunchConfiguration("params_file")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare(graph.PACKAGE), "config", "sim_reacher_2link.yaml"]),
            description="ros__parameters YAML for the simulator and every learning node"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="log level of every node: debug, info, warn, error or fatal"),
    ]
    nodes = [
        Node(package=graph.PACKAGE, executable=spec.executable, name=spec.name,
             parameters=[params_file], output="screen", emulate_tty=True,
             ros_arguments=["--log-level", LaunchConfiguration("log_level")])
        for spec in graph.nodes(with_sim=True)
    ]
    return LaunchDescription(arguments + nodes)
