"""
Launch one robot of a multi-robot run, on the robot's own machine.

sample_collector and lqr_controller run in the robot's namespace, talking to its
ros2_control interfaces.

    ros2 launch mbpl_ros robot_ns.launch.py namespace:=robot_0 \
        joint_states_topic:=/joint_states commands_topic:=/effort_controller/commands \
        [params_file:=...]

The trainer (trainer.launch.py, anywhere on the network) hands this robot trials as goals
of its RunTrial action /<namespace>/gps/run_trial and reads its rollouts from
/<namespace>/gps/rollouts.
Parameters are the params file's lqr_controller and sample_collector sections overlaid by
its /<namespace>/... sections (mbpl_ros.multi_robot.robot_parameters, as `mbpl sim
--robots` resolves them). The robot's e-stop is /<namespace>/gps/estop; /gps/estop stops
every robot. The node set comes from mbpl_ros.nodes.graph (ROBOT_NODES).
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
        DeclareLaunchArgument("namespace", description="the robot's namespace, e.g. robot_0"),
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "robot_gps.yaml"]),
            description="ros__parameters YAML (the trainer's file: the same experiment)"),
        DeclareLaunchArgument(
            "joint_states_topic", default_value="/joint_states",
            description="sensor_msgs/JointState of this arm (absolute: outside the namespace)"),
        DeclareLaunchArgument(
            "commands_topic", default_value="/effort_controller/commands",
            description="std_msgs/Float64MultiArray effort commands of this arm"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="log level of every node: debug, info, warn, error or fatal"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_nodes)])


def _nodes(context):
    from mbpl_ros.multi_robot import robot_parameters

    namespace = LaunchConfiguration("namespace").perform(context).strip("/")
    params_file = LaunchConfiguration("params_file").perform(context)
    remappings = [
        (graph.JOINT_STATES_TOPIC, LaunchConfiguration("joint_states_topic")),
        (graph.EFFORT_COMMANDS_TOPIC, LaunchConfiguration("commands_topic")),
    ]
    return [Node(package=graph.PACKAGE, executable=graph.node_spec(name).executable, name=name,
                 namespace=namespace, remappings=remappings, output="screen", emulate_tty=True,
                 parameters=[robot_parameters(params_file, name, namespace)],
                 ros_arguments=["--log-level", LaunchConfiguration("log_level")])
            for name in graph.ROBOT_NODES]
