"""sim_robot over real DDS: the node and a probe node spun by an executor thread in this process."""
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from mbpl_ros.nodes import wire
from mbpl_ros.nodes.sim_robot import SimRobotNode, SimRobotParameterError
from mbpl_ros.sim.arm import Arm

REPO = Path(__file__).resolve().parents[2]
LOCKSTEP = {"mode": "lockstep"}


def parameters(**values):
    return [Parameter(name, value=value) for name, value in values.items()]


class Probe:
    """A test node: records what sim_robot publishes, sends commands, calls ~/reset."""

    def __init__(self, context):
        self.node = rclpy.create_node("probe", context=context)
        self.states, self.poses, self.twists, self.clocks = [], [], [], []
        self._arrived = threading.Condition()
        for msg_type, topic, store in ((JointState, "joint_states", self.states),
                                       (PoseStamped, "ee_pose", self.poses),
                                       (TwistStamped, "ee_twist", self.twists),
                                       (Clock, "/clock", self.clocks)):
            self.node.create_subscription(msg_type, topic, self._recorder(store), 100)
        self.commands = self.node.create_publisher(Float64MultiArray, "effort_controller/commands", 100)
        self.reset_client = self.node.create_client(Trigger, "/sim_robot/reset")

    def _recorder(self, store):
        def record(msg):
            with self._arrived:
                store.append(msg)
                self._arrived.notify_all()
        return record

    def wait_for(self, condition, timeout=5.0):
        with self._arrived:
            return self._arrived.wait_for(condition, timeout)

    def wait_until_connected(self, sim, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Matched on both sides: the probe's writer may still count the reader of a
            # simulator destroyed a moment ago, so the simulator's own reader is asked too.
            if (self.commands.get_subscription_count() > 0 and self.reset_client.service_is_ready()
                    and all(subscription.get_publisher_count() > 0 for subscription in sim.subscriptions
                            if subscription.topic_name == "/" + wire.EFFORT_COMMANDS_TOPIC)
                    and sim.count_subscribers("joint_states") > 0 and sim.count_subscribers("ee_pose") > 0):
                return
            time.sleep(0.01)
        raise TimeoutError("sim_robot and the probe did not discover each other")

    def reset(self):
        """Call ~/reset and wait for the state it publishes."""
        count = len(self.states)
        response = self.reset_client.call(Trigger.Request(), timeout_sec=5.0)
        assert response is not None and response.success, response
        assert self.wait_for(lambda: len(self.states) > count)
        return response

    def lockstep(self, command):
        """Send one command and wait for the state of the step it caused."""
        count = len(self.states)
        self.commands.publish(wire.encode_effort_command(command))
        assert self.wait_for(lambda: len(self.states) > count, timeout=10.0), "no state after a valid command"
        assert len(self.states) == count + 1
        return self.states[-1]


@contextmanager
def running(context, overrides):
    """sim_robot and the probe, each spun by a SingleThreadedExecutor (as `main` spins the
    node) in a thread of its own, so that the test's subscribers never delay sim_robot."""
    sim = SimRobotNode(context=context, parameter_overrides=overrides)
    probe = Probe(context)
    executors = [SingleThreadedExecutor(context=context), SingleThreadedExecutor(context=context)]
    executors[0].add_node(sim)
    executors[1].add_node(probe.node)
    spinners = [threading.Thread(target=executor.spin, daemon=True) for executor in executors]
    for spinner in spinners:
        spinner.start()
    try:
        probe.wait_until_connected(sim)
        yield sim, probe
    finally:
        for executor, spinner in zip(executors, spinners):
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=5.0)
        probe.node.destroy_node()
        sim.destroy_node()


@contextmanager
def fresh_context():
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def state_vector(msg):
    return np.concatenate([msg.position, msg.velocity, msg.effort])


# ---------------------------------------------------------------- interface
@pytest.mark.timeout(60)
def test_topics_types_and_the_published_state(ros_context):
    with running(ros_context, parameters(robot="kuka_iiwa")) as (sim, probe):
        assert probe.wait_for(lambda: probe.states and probe.poses and probe.twists)
        topics = dict(probe.node.get_topic_names_and_types())
        assert topics["/joint_states"] == ["sensor_msgs/msg/JointState"]
        assert topics["/ee_pose"] == ["geometry_msgs/msg/PoseStamped"]
        assert topics["/ee_twist"] == ["geometry_msgs/msg/TwistStamped"]
        assert topics["/effort_controller/commands"] == ["std_msgs/msg/Float64MultiArray"]
        assert probe.node.get_publishers_info_by_topic("/clock") == []  # realtime: system time
        services = dict(probe.node.get_service_names_and_types())
        assert services["/sim_robot/reset"] == ["std_srvs/srv/Trigger"]

        state = probe.states[-1]
        assert list(state.name) == [f"lbr_iiwa_joint_{i}" for i in range(1, 8)]
        assert len(state.position) == len(state.velocity) == len(state.effort) == 7
        assert state.header.stamp.sec > 0
        position, orientation = wire.decode_pose(probe.poses[-1])
        assert probe.poses[-1].header.frame_id == "world"
        assert np.linalg.norm(orientation) == pytest.approx(1.0)
        with Arm("kuka_iiwa") as offline:  # the pose is the forward kinematics of the state
            np.testing.assert_allclose(position, offline.forward_kinematics(np.array(state.position)), atol=1e-3)


@pytest.mark.timeout(60)
def test_realtime_publishes_joint_states_at_100_hz(ros_context):
    """The stamps of 3 s of joint states are one control period apart.

    The median spacing is the timer's period; a count over a wall-clock window is not: on a
    loaded machine a late tick is skipped (rcl timers do not run twice to catch up), and CI
    measured 81 Hz that way with the period right.
    """
    overrides = parameters(control_rate_hz=100.0, physics_dt=0.0025)  # 4 physics steps per control step
    with running(ros_context, overrides) as (sim, probe):
        time.sleep(0.5)  # settle
        first = len(probe.states)
        time.sleep(3.0)
        states = probe.states[first:]
    stamps_ns = np.array([wire.nanoseconds_from_stamp(state.header.stamp) for state in states])
    assert len(stamps_ns) > 150  # over half the ticks of 3 s
    assert np.all(np.diff(stamps_ns) > 0)
    assert np.median(np.diff(stamps_ns)) == pytest.approx(10_000_000, rel=0.05)


@pytest.mark.timeout(60)
def test_realtime_holds_the_last_command_then_times_out_to_zero_effort(ros_context):
    overrides = parameters(control_rate_hz=100.0, physics_dt=0.0025, command_timeout_s=0.3)
    with running(ros_context, overrides) as (sim, probe):
        assert probe.wait_for(lambda: len(probe.states) > 3)
        np.testing.assert_array_equal(probe.states[-1].effort, [0.0, 0.0])
        # The command goes out once: only after the simulator's subscription has matched it.
        assert probe.wait_for(lambda: probe.commands.get_subscription_count() > 0)
        sent = time.monotonic()
        probe.commands.publish(wire.encode_effort_command([0.2, -0.1]))
        assert probe.wait_for(lambda: list(probe.states[-1].effort) == [0.2, -0.1], timeout=1.0)
        first_held = len(probe.states) - 1
        assert probe.wait_for(lambda: list(probe.states[-1].effort) == [0.0, 0.0], timeout=2.0)
        released, last_held = time.monotonic(), len(probe.states) - 2
        efforts = np.array([msg.effort for msg in probe.states[first_held:last_held + 1]])
    np.testing.assert_array_equal(efforts, np.tile([0.2, -0.1], (len(efforts), 1)))  # held
    assert 0.3 <= released - sent < 0.6
    assert len(efforts) >= 20  # about 30 steps at 100 Hz within the timeout


# ---------------------------------------------------------------- lockstep
def lockstep_run(overrides, commands):
    """Reset, then one command per step; returns the states and /clock stamps seen."""
    with fresh_context() as context, running(context, overrides) as (sim, probe):
        probe.reset()
        states = [probe.states[-1]] + [probe.lockstep(command) for command in commands]
        assert probe.wait_for(lambda: len(probe.clocks) >= len(commands) + 1)
        clocks = [wire.nanoseconds_from_stamp(msg.clock) for msg in probe.clocks]
        return states, clocks


@pytest.mark.timeout(60)
def test_lockstep_is_deterministic_and_equals_the_offline_arm():
    commands = np.random.default_rng(0).uniform(-1.0, 1.0, size=(15, 2))
    first, clocks = lockstep_run(parameters(**LOCKSTEP), commands)
    second, _ = lockstep_run(parameters(**LOCKSTEP), commands)
    first_states = np.array([state_vector(msg) for msg in first])
    np.testing.assert_array_equal(first_states, np.array([state_vector(msg) for msg in second]))

    with Arm("reacher_2link") as offline:  # the node steps exactly the same simulation
        offline.reset("home")
        expected = [np.concatenate(offline.joint_state())]
        for command in commands:
            offline.step(command)
            expected.append(np.concatenate(offline.joint_state()))
    np.testing.assert_array_equal(first_states, np.array(expected))

    # stamps are simulated time: one control period (50 ms) per command, also on /clock
    stamps = [wire.nanoseconds_from_stamp(msg.header.stamp) for msg in first]
    assert np.all(np.diff(stamps) == 50_000_000)
    assert clocks[-len(commands):] == stamps[1:]


@pytest.mark.timeout(60)
def test_bad_commands_never_reach_the_simulator(ros_context):
    with running(ros_context, parameters(**LOCKSTEP)) as (sim, probe):
        probe.reset()
        count = len(probe.states)
        for bad in ([1.0], [0.1, 0.2, 0.3], [np.nan, 0.0], [0.0, np.inf]):
            probe.commands.publish(Float64MultiArray(data=bad))
        assert not probe.wait_for(lambda: len(probe.states) > count, timeout=0.5)  # no step taken
        assert sim.rejected_commands == 4 and sim.steps_taken == 0

        beyond = probe.lockstep([10.0, -10.0])  # clamped to the limits (2, 1) N·m
        assert sim.clamped_commands == 1 and sim.steps_taken == 1
    with Arm("reacher_2link") as offline:
        offline.reset("home")
        offline.step([2.0, -1.0])
        np.testing.assert_array_equal(state_vector(beyond), np.concatenate(offline.joint_state()))


@pytest.mark.timeout(60)
def test_commands_follow_the_joints_parameter_order(ros_context):
    overrides = parameters(mode="lockstep", joints=["elbow", "shoulder"], initial_positions=[1.0, 0.5])
    with running(ros_context, overrides) as (sim, probe):
        probe.reset()
        assert list(probe.states[-1].name) == ["elbow", "shoulder"]
        np.testing.assert_array_equal(probe.states[-1].position, [1.0, 0.5])
        state = probe.lockstep([0.4, -0.3])  # elbow 0.4, shoulder -0.3
    with Arm("reacher_2link") as offline:
        offline.reset([0.5, 1.0])
        offline.step([-0.3, 0.4])
        q, qd, effort = offline.joint_state()
        np.testing.assert_array_equal(state.position, q[::-1])
        np.testing.assert_array_equal(state.velocity, qd[::-1])
        np.testing.assert_array_equal(state.effort, effort[::-1])


@pytest.mark.timeout(60)
def test_reset_service_returns_to_the_initial_condition(ros_context):
    with running(ros_context, parameters(**LOCKSTEP)) as (sim, probe):
        probe.reset()
        for _ in range(5):
            moved = probe.lockstep([1.0, 1.0])
        assert np.abs(np.array(moved.position) - [0.0, 1.5]).max() > 0.01
        response = probe.reset()
        assert "initial_positions [0.0, 1.5]" in response.message
        state = probe.states[-1]
        np.testing.assert_array_equal(state.position, [0.0, 1.5])
        np.testing.assert_array_equal(state.velocity, [0.0, 0.0])
        np.testing.assert_array_equal(state.effort, [0.0, 0.0])
        # simulated time keeps running forward across a reset
        assert wire.nanoseconds_from_stamp(state.header.stamp) == 5 * 50_000_000


# ---------------------------------------------------------------- parameters
@pytest.mark.timeout(60)
@pytest.mark.parametrize("overrides, message", [
    (dict(robot="ur5"), r"parameter 'robot' is 'ur5'; allowed: one of \['kuka_iiwa', 'reacher_2link'\]"),
    (dict(control_rate_hz=0.0), r"parameter 'control_rate_hz' is invalid.*allowed: a double in \[0.1, 1000.0\]"),
    (dict(control_rate_hz=-20.0), r"parameter 'control_rate_hz'.*allowed: a double in \[0.1, 1000.0\]"),
    (dict(control_rate_hz=20), r"parameter 'control_rate_hz'.*expecting type 'DOUBLE'"),
    (dict(physics_dt=0.007), r"parameter 'physics_dt' = 0.007 does not divide the control period 1/control_rate_hz"),
    (dict(mode="fast"), r"parameter 'mode' is 'fast'; allowed: one of \['realtime', 'lockstep'\]"),
    (dict(joints=["shoulder", "wrist"]), r"parameter 'joints'.*unknown: \['wrist'\].*\['shoulder', 'elbow'\]"),
    (dict(joints=["shoulder"]), r"parameter 'joints'.*each joint of reacher_2link exactly once"),
    (dict(initial_positions=[0.0]), r"parameter 'initial_positions' is \[0.0\]; allowed: 2 finite angles"),
    (dict(initial_positions=[0.0, 3.1]), r"parameter 'initial_positions'.*outside the position limits"),
    (dict(command_timeout_s=0.0), r"parameter 'command_timeout_s'.*allowed: a double in \[0.001, 60.0\]"),
])
def test_bad_parameters_stop_start_up_naming_the_parameter(ros_context, overrides, message):
    with pytest.raises(SimRobotParameterError, match=message):
        SimRobotNode(context=ros_context, parameter_overrides=parameters(**overrides))


@pytest.mark.timeout(60)
def test_the_config_file_starts_the_node_through_the_rcl_yaml_parser(ros_context):
    node = SimRobotNode(context=ros_context,
                        cli_args=["--ros-args", "--params-file", str(REPO / "config" / "sim_robot.yaml")])
    try:
        settings = node.settings
        assert (settings.robot, settings.mode, settings.substeps) == ("reacher_2link", "realtime", 12)
        assert settings.control_rate_hz == 20.0 and settings.joints == ("shoulder", "elbow")
    finally:
        node.destroy_node()


@pytest.mark.timeout(60)
def test_main_exits_non_zero_with_the_message_on_a_bad_parameter():
    result = subprocess.run(
        [sys.executable, "-m", "mbpl_ros.nodes.sim_robot", "--ros-args", "-p", "mode:=fast"],
        capture_output=True, text=True, timeout=50, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert result.returncode == 1
    assert "parameter 'mode' is 'fast'; allowed: one of ['realtime', 'lockstep']" in result.stderr


@pytest.mark.timeout(60)
def test_robot_and_timing_default_to_the_experiment_config(ros_context):
    """A robot described in an experiment file (the Panda) is simulated from that file alone."""
    config = Path(__file__).resolve().parents[2] / "config" / "panda_reach.yaml"
    node = SimRobotNode(context=ros_context, parameter_overrides=parameters(experiment_config=str(config)))
    try:
        assert node.settings.robot == "panda"
        assert node.settings.substeps == 12 and node.settings.control_rate_hz == pytest.approx(20.0)
        assert list(node.settings.joints) == [f"panda_joint{i}" for i in range(1, 8)]
    finally:
        node.destroy_node()
    with pytest.raises(SimRobotParameterError, match="parameter 'experiment_config'"):
        SimRobotNode(context=ros_context, parameter_overrides=parameters(experiment_config="absent.yaml"))


PEG = REPO / "config" / "peg_insertion.yaml"


def set_sim_parameters(probe, **values):
    """Set sim_robot's parameters over ~/set_parameters, as lqr_controller's sim_service reset
    does; returns the results."""
    from rcl_interfaces.srv import SetParameters

    client = probe.node.create_client(SetParameters, "/sim_robot/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=5.0)
        request = SetParameters.Request(
            parameters=[p.to_parameter_msg() for p in parameters(**values)])
        response = client.call(request, timeout_sec=5.0)
        assert response is not None
        return response.results
    finally:
        probe.node.destroy_client(client)


def press_peg(sim, probe, kinematics, goal_tip, seconds, approach_height):
    """Drive both peg points to their targets for goal_tip (3,) by a gravity-compensated
    task-space PD over sim_robot's topics (lockstep: one command per state); the first half
    of the time the goals are `approach_height` higher. Returns the deepest penetration of
    the peg into the fixtures of sim_robot's world seen after any step (m)."""
    spec = kinematics.spec
    goals = spec.point_targets(goal_tip)
    steps = int(round(seconds / kinematics.control_dt))
    state, deepest = probe.states[-1], 0.0
    client, zeros = kinematics.client, [0.0] * spec.n_joints
    for t in range(steps):
        q, qd = np.array(state.position), np.array(state.velocity)
        points, velocities = kinematics.points_kinematics(q, qd)
        effort = kinematics.gravity_torque(q) - 2.0 * qd
        lift = np.array([0.0, 0.0, approach_height if t < steps // 2 else 0.0])
        for offset, point, velocity, goal in zip(spec.point_offsets, points, velocities, goals):
            jacobian = np.array(client.calculateJacobian(
                kinematics.body, kinematics._ee_link_index, offset.tolist(), q.tolist(), zeros,
                zeros)[0])
            effort = effort + jacobian.T @ (300.0 * (goal + lift - point) - 30.0 * velocity)
        state = probe.lockstep(effort)
        deepest = max(deepest, sim.arm.fixture_penetration())   # lockstep: the arm is idle now
    return deepest


@pytest.mark.timeout(180)
def test_the_peg_experiments_block_is_in_the_world_moves_with_the_target_and_holds_the_peg(
        ros_context):
    """sim_robot with the peg experiment builds its block with the offline Arm (its contact
    settings included) and at each ~/reset puts it at the `target` set before over
    ~/set_parameters (as lqr_controller does): the hole's bottom at the target, nothing left
    where it was. Pressed onto the block beside the hole (a task-space PD at 240 Hz over the
    effort topic), the peg stays on top: penetration below 2 mm, as offline
    (test_peg_insertion.py)."""
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.sim.arm import CONTACT_SETTINGS

    config = load_experiment(PEG)
    block, = config.scene
    walls = [box for box in block.boxes if box.lower[2] >= -1e-9]
    depth = min(box.upper[2] for box in walls)                  # the hole's bottom is z = 0
    half_width = min(min(abs(box.lower[0]), abs(box.upper[0])) for box in walls
                     if box.lower[0] * box.upper[0] > 0)
    overrides = parameters(experiment_config=str(PEG), mode="lockstep", control_rate_hz=240.0,
                           physics_dt=1.0 / 240.0)
    with running(ros_context, overrides) as (sim, probe), \
            Arm(config.robot_spec, physics_dt=1.0 / 240.0, substeps=1) as kinematics:
        client = sim.arm.client
        assert client.getPhysicsEngineParameters()["numSolverIterations"] == \
            CONTACT_SETTINGS["numSolverIterations"]
        assert len(sim.arm.scene.bodies) == 1
        # Before any trial: at the first condition's target (the parameter's default).
        np.testing.assert_allclose(client.getBasePositionAndOrientation(
            sim.arm.scene.bodies[0])[0], config.conditions[0].target, atol=1e-12)
        previous = None
        for condition in (config.conditions[3], config.conditions[0]):
            start, target = list(condition.initial_positions), list(condition.target)
            results = set_sim_parameters(probe, initial_positions=start, target=target)
            assert all(result.successful for result in results), results
            response = probe.reset()
            assert f"fixtures placed for target {target}" in response.message
            x, y, z = target
            beside = (x + half_width + 0.015, y)
            hits = client.rayTestBatch([[x, y, z + 0.2], [*beside, z + 0.2]],
                                       [[x, y, 0.0], [*beside, 0.0]])
            assert [hit[0] for hit in hits] == [sim.arm.scene.bodies[0]] * 2
            assert hits[0][3][2] == pytest.approx(z, abs=1e-6)          # down the hole
            assert hits[1][3][2] == pytest.approx(z + depth, abs=1e-6)  # onto its top
            if previous is not None:   # the block left the previous condition's place
                px, py, pz = previous
                old = client.rayTestBatch([[px + half_width + 0.015, py, pz + 0.2]],
                                          [[px + half_width + 0.015, py, 0.0]])
                assert old[0][0] != sim.arm.scene.bodies[0]
            previous = target
            goal = np.array([*beside, z + depth - 0.03])               # 3 cm inside the block
            deepest = press_peg(sim, probe, kinematics, goal, seconds=2.0, approach_height=0.06)
            tip = probe.poses[-1].pose.position
            assert deepest < 0.002, deepest
            assert tip.z > z + depth - 0.002, (tip, z + depth)


@pytest.mark.timeout(60)
def test_a_bad_target_is_refused_at_start_up_and_at_runtime(ros_context):
    with pytest.raises(SimRobotParameterError,
                       match=r"parameter 'target' is .*allowed: 3 finite numbers \[x, y, z\]"):
        SimRobotNode(context=ros_context, parameter_overrides=parameters(target=[0.1, 0.2]))
    with running(ros_context, parameters(**LOCKSTEP)) as (sim, probe):
        results = set_sim_parameters(probe, target=[0.1, float("nan"), 0.0])
        assert not results[0].successful and "parameter 'target'" in results[0].reason
        np.testing.assert_array_equal(sim.settings.target, [0.0, 0.0, 0.0])
