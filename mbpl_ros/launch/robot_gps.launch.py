"""
The learning loop on a real arm driven by ros2_control: the four learning nodes, no simulator.

    ros2 launch mbpl_ros robot_gps.launch.py \
        joint_states_topic:=/joint_states commands_topic:=/effort_controller/commands \
        [params_file:=...] [rviz_description:=true urdf_file:=/path/to/robot.urdf]

The nodes read and write the ros2_control interfaces: sensor_msgs/JointState on
`joint_states_topic`, std_msgs/Float64MultiArray effort commands (one per joint, in the
order of the `joints` parameter) on `commands_topic`, e.g. a forward effort controller's
`/<controller>/commands`. The default parameters (share/mbpl_ros/config/robot_gps.yaml)
are conservative: see that file before the first run on hardware.

rviz_description:=true also starts robot_state_publisher with `urdf_file` as
robot_description (for RViz); it needs the robot_state_publisher package and says so
when it is missing. With the default (false) that package is not needed.
The node set comes from mbpl_ros.nodes.graph, which the in-process runner uses too.
"""
from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import FileContent, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from mbpl_ros.nodes import graph

ROBOT_STATE_PUBLISHER = "robot_state_publisher"


def _robot_state_publisher(context, *args, **kwargs):
    """robot_state_publisher with the URDF's contents as robot_description, if installed."""
    try:
        get_package_prefix(ROBOT_STATE_PUBLISHER)
    except PackageNotFoundError:
        raise RuntimeError(
            "rviz_description:=true needs the robot_state_publisher package, which is not "
            "installed (apt install ros-$ROS_DISTRO-robot-state-publisher); "
            "or launch with rviz_description:=false") from None
    return [Node(
        package=ROBOT_STATE_PUBLISHER, executable=ROBOT_STATE_PUBLISHER, output="screen",
        parameters=[{"robot_description": ParameterValue(
            FileContent(LaunchConfiguration("urdf_file")), value_type=str)}],
        remappings=[(graph.JOINT_STATES_TOPIC, LaunchConfiguration("joint_states_topic"))])]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(graph.PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "robot_gps.yaml"]),
            description="ros__parameters YAML for every learning node (conservative defaults)"),
        DeclareLaunchArgument(
            "joint_states_topic", default_value="/joint_states",
            description="sensor_msgs/JointState of the arm (ros2_control "
                        "joint_state_broadcaster)"),
        DeclareLaunchArgument(
            "commands_topic", default_value="/effort_controller/commands",
            description="std_msgs/Float64MultiArray effort commands (ros2_control forward "
                        "effort controller)"),
        DeclareLaunchArgument(
            "rviz_description", default_value="false", choices=["true", "false"],
            description="also start robot_state_publisher with urdf_file as robot_description"),
        DeclareLaunchArgument(
            "urdf_file", default_value=PathJoinSubstitution([share, "urdf", "reacher_2link.urdf"]),
            description="URDF of the arm, published as robot_description when "
                        "rviz_description:=true"),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            description="log level of every node: debug, info, warn, error or fatal"),
    ]
    remappings = [
        (graph.JOINT_STATES_TOPIC, LaunchConfiguration("joint_states_topic")),
        (graph.EFFORT_COMMANDS_TOPIC, LaunchConfiguration("commands_topic")),
    ]
    nodes = [
        Node(package=graph.PACKAGE, executable=spec.executable, name=spec.name,
             parameters=[LaunchConfiguration("params_file")], remappings=remappings,
             output="screen", emulate_tty=True,
             ros_arguments=["--log-level", LaunchConfiguration("log_level")])
        for spec in graph.nodes(with_sim=False)
    ]
    description = OpaqueFunction(function=_robot_state_publisher,
                                 condition=IfCondition(LaunchConfiguration("rviz_description")))
    return LaunchDescription(arguments + nodes + [description])
