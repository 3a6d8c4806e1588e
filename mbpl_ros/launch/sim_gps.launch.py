"""
The learning loop against the PyBullet arm: sim_robot and the four learning nodes.

    ros2 launch mbpl_ros sim_gps.launch.py [params_file:=/path/to/params.yaml] [robots:=K]

Every node reads its parameters from one ros__parameters file (default:
share/mbpl_ros/config/sim_reacher_2link.yaml): a `/**` section for what all of them
share (the experiment file) and one section per node. The node set comes from
mbpl_ros.nodes.graph, which the in-process runner (`mbpl sim`) uses too.

robots:=K (K >= 1): K simulated robots in namespaces robot_0 ... robot_{K-1}, each with its
sim_robot, sample_collector and lqr_controller (parameters as `mbpl sim --robots K` gives
them: mbpl_ros.multi_robot.robot_parameters), and one gps_trainer and dynamics_fitter that
spread each batch over them. robots:=0 (default): the one robot, not namespaced.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from mbpl_ros.nodes import graph


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare(graph.PACKAGE), "config", "sim_reacher_2link.yaml"]),
            description="ros__parameters YAML for the simulator and every learning node"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="log level of every node: debug, info, warn, error or fatal"),
        DeclareLaunchArgument(
            "robots", default_value="0",
            description="simulated robots in namespaces robot_0 ...; 0: one, not namespaced"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])


def _nodes(context):
    from mbpl_ros.multi_robot import robot_parameters

    params_file = LaunchConfiguration("params_file").perform(context)
    log_level = ["--log-level", LaunchConfiguration("log_level").perform(context)]
    count = int(LaunchConfiguration("robots").perform(context))
    if count < 1:
        return [Node(package=graph.PACKAGE, executable=spec.executable, name=spec.name,
                     parameters=[params_file], output="screen", emulate_tty=True,
                     ros_arguments=log_level)
                for spec in graph.nodes(with_sim=True)]
    namespaces = graph.robot_namespaces(count)
    nodes = []
    for namespace in namespaces:
        for name in [spec.name for spec in graph.SIM_NODES] + list(graph.ROBOT_NODES):
            spec = graph.node_spec(name)
            # A namespaced node does not match the file's "lqr_controller" section: its
            # parameters are resolved here, as mbpl sim --robots resolves them.
            nodes.append(Node(package=graph.PACKAGE, executable=spec.executable, name=name,
                              namespace=namespace, output="screen", emulate_tty=True,
                              parameters=[robot_parameters(params_file, name, namespace)],
                              ros_arguments=log_level))
    for name in graph.TRAINER_NODES:
        spec = graph.node_spec(name)
        extra = [{"robots": namespaces}] if name == "gps_trainer" else []
        nodes.append(Node(package=graph.PACKAGE, executable=spec.executable, name=name,
                          parameters=[params_file] + extra, output="screen", emulate_tty=True,
                          ros_arguments=log_level))
    return nodes
