"""launch/*.launch.py started for real with launch_pytest: the nodes come up, use the right
topics, and shut down cleanly.

launch, launch_ros and launch_pytest are not on PyPI; these tests run with a ROS 2
installation (docs/launch.md) or with the contributors' overlay (CONTRIBUTING.md), as
    . /tmp/ros-launch-overlay/env.sh && .venv/bin/python -m pytest -p launch_pytest.plugin test/launch
and skip elsewhere. The package must be findable through the ament index (colcon install,
or `ros-launch-overlay register mbpl_ros --share ...`, see CONTRIBUTING.md).
"""
import time
from pathlib import Path

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason="launch_pytest is not on PyPI: run with ROS 2 or the overlay, see CONTRIBUTING.md")

import rclpy  # noqa: E402
from launch import LaunchContext, LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription, OpaqueFunction, RegisterEventHandler  # noqa: E402
from launch.event_handlers import OnProcessExit  # noqa: E402
from launch.launch_description_sources import (  # noqa: E402
    PythonLaunchDescriptionSource, get_launch_description_from_python_launch_file)
from launch_pytest.actions import ReadyToTest  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from mbpl_ros.nodes import graph  # noqa: E402
from mbpl_ros.nodes.sim_robot import SimRobotNode  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SIM_LAUNCH = ROOT / "launch" / "sim_gps.launch.py"
ROBOT_LAUNCH = ROOT / "launch" / "robot_gps.launch.py"
START_TIMEOUT_S = 60.0  # five Python processes importing torch/pybullet on a loaded 2-core machine
ROBOT_TOPICS = {"joint_states_topic": "/arm/joint_states",
                "commands_topic": "/arm/effort_controller/commands"}

pytestmark = pytest.mark.ros


class GraphProbe:
    """A node of the test's own (own rclpy Context) that looks at the ROS graph."""

    def __init__(self):
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("launch_test_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def spin_until(self, condition, exits: list, timeout_s: float = START_TIMEOUT_S) -> bool:
        """Spin until `condition()`; False after the timeout or as soon as a launched
        process has ended (`exits`, filled by exit_recorder)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not exits:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.1)
        return condition()

    def node_names(self) -> set:
        return set(self.node.get_node_names())

    def topics_of(self, node_name: str):
        """(published topic names, subscribed topic names) of a node in namespace "/"."""
        published = {name for name, _ in self.node.get_publisher_names_and_types_by_node(node_name, "/")}
        subscribed = {name for name, _ in self.node.get_subscriber_names_and_types_by_node(node_name, "/")}
        return published, subscribed


def exit_recorder(exits: list) -> RegisterEventHandler:
    """Records (process name, return code) of every process the launch starts."""
    return RegisterEventHandler(OnProcessExit(
        on_exit=lambda event, context: exits.append((event.action.name, event.returncode))))


def assert_clean_exit(exits: list, expected_processes: int) -> None:
    assert len(exits) == expected_processes, exits
    assert all(code == 0 for _, code in exits), f"unclean exit: {exits}"


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    """The launched nodes start in a temporary directory: relative outputs (gps_trainer's
    output_dir) land there, not in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- sim_gps.launch.py
@pytest.fixture
def sim_exits():
    return []


@launch_pytest.fixture
def sim_launch(sim_exits, in_tmp_path):
    return LaunchDescription([
        exit_recorder(sim_exits),
        # Ready at once: the test waits for the graph itself, with a timeout, so a launch
        # that fails to start fails the test instead of hanging it.
        ReadyToTest(),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(SIM_LAUNCH))),
    ])


@pytest.mark.launch(fixture=sim_launch)
def test_sim_graph_comes_up_publishes_joint_states_and_shuts_down_cleanly(sim_exits):
    expected = {spec.name for spec in graph.nodes(with_sim=True)}
    probe = GraphProbe()
    try:
        states = []
        probe.node.create_subscription(JointState, "/joint_states", states.append, 10)
        assert probe.spin_until(lambda: len(states) >= 1, sim_exits), \
            f"no /joint_states within {START_TIMEOUT_S} s; exits so far: {sim_exits}"
        assert list(states[-1].name) == ["shoulder", "elbow"]
        assert probe.spin_until(lambda: expected <= probe.node_names(), sim_exits), \
            f"missing nodes {sorted(expected - probe.node_names())}; exits so far: {sim_exits}"
        assert not sim_exits, f"a process ended while the graph should run: {sim_exits}"
    finally:
        probe.close()
    yield
    assert_clean_exit(sim_exits, len(expected))


# ---------------------------------------------------------------- robot_gps.launch.py
@pytest.fixture
def robot_exits():
    return []


@launch_pytest.fixture
def robot_launch(robot_exits, in_tmp_path):
    return LaunchDescription([
        exit_recorder(robot_exits),
        ReadyToTest(),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(ROBOT_LAUNCH)),
                                 launch_arguments=ROBOT_TOPICS.items()),
    ])


@pytest.mark.launch(fixture=robot_launch)
def test_robot_graph_uses_the_remapped_controller_topics(robot_exits):
    expected = {spec.name for spec in graph.nodes(with_sim=False)}
    commands, states = ROBOT_TOPICS["commands_topic"], ROBOT_TOPICS["joint_states_topic"]
    probe = GraphProbe()
    try:
        def controller_wired():
            published, subscribed = probe.topics_of("lqr_controller")
            return commands in published and states in subscribed

        assert probe.spin_until(lambda: expected <= probe.node_names(), robot_exits), \
            f"missing nodes {sorted(expected - probe.node_names())}; exits so far: {robot_exits}"
        assert probe.spin_until(controller_wired, robot_exits), \
            f"lqr_controller topics: {probe.topics_of('lqr_controller')}"
        _, collector_subscribed = probe.topics_of("sample_collector")
        assert states in collector_subscribed
        default_names = {"/" + graph.JOINT_STATES_TOPIC, "/" + graph.EFFORT_COMMANDS_TOPIC}
        for name in expected:
            published, subscribed = probe.topics_of(name)
            assert not (published | subscribed) & default_names, (name, published, subscribed)
        assert "sim_robot" not in probe.node_names()

        # The PyBullet arm on the remapped topics stands in for the robot's controllers: the
        # trainer's first trial makes lqr_controller command it there.
        commands_received = []
        probe.node.create_subscription(Float64MultiArray, commands, commands_received.append, 100)
        stand_in = SimRobotNode("robot_stand_in", context=probe.context, cli_args=[
            "--ros-args", "-r", f"{graph.JOINT_STATES_TOPIC}:={states}",
            "-r", f"{graph.EFFORT_COMMANDS_TOPIC}:={commands}"])
        probe.executor.add_node(stand_in)
        try:
            # config/robot_gps.yaml starts with the e-stop latched (nothing moves until a person
            # releases it): release it as the guide says, with lqr_controller's ~/reset_estop.
            reset = probe.node.create_client(Trigger, "/lqr_controller/reset_estop")
            assert probe.spin_until(reset.service_is_ready, robot_exits), "no reset_estop service"
            answer = reset.call_async(Trigger.Request())
            assert probe.spin_until(answer.done, robot_exits), "no answer from reset_estop"
            assert answer.result().success, answer.result().message
            assert probe.spin_until(lambda: len(commands_received) >= 5, robot_exits), \
                f"no effort commands on {commands}; exits so far: {robot_exits}"
            assert len(commands_received[-1].data) == 2
        finally:
            probe.executor.remove_node(stand_in)
            stand_in.destroy_node()
        assert not robot_exits, f"a process ended while the graph should run: {robot_exits}"
    finally:
        probe.close()
    yield
    assert_clean_exit(robot_exits, len(expected))


def robot_state_publisher_action(rviz_description: str):
    """The robot launch's OpaqueFunction for the URDF publisher, and a context to run it in."""
    description = get_launch_description_from_python_launch_file(str(ROBOT_LAUNCH))
    (action,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    context = LaunchContext()
    context.launch_configurations.update(
        {"rviz_description": rviz_description, "urdf_file": str(ROOT / "urdf" / "reacher_2link.urdf"),
         **ROBOT_TOPICS})
    return action, context


def test_robot_state_publisher_is_started_only_on_request():
    action, context = robot_state_publisher_action("false")
    assert not action.condition.evaluate(context)
    action, context = robot_state_publisher_action("true")
    assert action.condition.evaluate(context)


def test_rviz_description_starts_robot_state_publisher_or_says_it_is_missing():
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    from launch_ros.actions import Node

    action, context = robot_state_publisher_action("true")
    try:
        get_package_prefix("robot_state_publisher")
    except PackageNotFoundError:
        with pytest.raises(RuntimeError, match="robot_state_publisher package"):
            action.execute(context)
        return
    (node,) = action.execute(context)
    assert isinstance(node, Node)
    assert (node.node_package, node.node_executable) == ("robot_state_publisher", "robot_state_publisher")
