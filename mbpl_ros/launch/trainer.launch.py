"""
Launch the trainer of a multi-robot run: gps_trainer and the one dynamics_fitter.

They run on any machine of the robots' network.

    ros2 launch mbpl_ros trainer.launch.py robots:="[robot_0, robot_1]" [params_file:=...]

Each robot runs robot_ns.launch.py with its namespace; the trainer spreads every batch over
the robots it finds (gps_trainer parameter `robots`). The node set comes from
mbpl_ros.nodes.graph (TRAINER_NODES).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from mbpl_ros.nodes import graph


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(graph.PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "robot_gps.yaml"]),
            description="ros__parameters YAML (the robots' file: the same experiment)"),
        DeclareLaunchArgument(
            "robots", description="the robots' namespaces, a YAML list: [robot_0, robot_1]"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="log level of every node: debug, info, warn, error or fatal"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])


def _nodes(context):
    import yaml

    robots = yaml.safe_load(LaunchConfiguration("robots").perform(context))
    if not isinstance(robots, list) or not robots:
        raise RuntimeError(f"robots:={robots!r}; allowed: a YAML list of namespaces, "
                           "e.g. \"[robot_0, robot_1]\"")
    params_file = LaunchConfiguration("params_file").perform(context)
    return [Node(package=graph.PACKAGE, executable=graph.node_spec(name).executable, name=name,
                 parameters=[params_file] + ([{"robots": [str(r) for r in robots]}]
                                             if name == "gps_trainer" else []),
                 output="screen", emulate_tty=True,
                 ros_arguments=["--log-level", LaunchConfiguration("log_level")])
            for name in graph.TRAINER_NODES]
