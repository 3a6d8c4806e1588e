"""Command safety in the nodes over real DDS: lqr_controller's guard, clamp, fallback and
runtime parameters, driven by a probe that plays the robot (it publishes the joint states
and checks every command), and gps_trainer's runtime parameters.

The probe-as-robot makes a lockstep trial deterministic: with reset_mode pd and the probe
at the start pose at rest, the controller takes one step per joint state the probe sends.
"""
import re
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import Bool, Float64MultiArray
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from loop_helpers import (REPO, Recorder, TrialGoalSender, create_probe, parameters, small_experiment,
                          spinning, wait_until)
from mbpl_ros.core import sanity
from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.gps_trainer import GpsTrainerNode
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.robot_model import RobotModel
from mbpl_ros.robots import robot_spec

URDF_EFFORT = np.array([2.0, 1.0])          # reacher_2link: shoulder, elbow (N·m)
URDF_POSITION = np.array([[-3.14159265359, 3.14159265359], [-3.04159265359, 3.04159265359]])
JOINTS = ["shoulder", "elbow"]
T = 6


class CommandProbe:
    """Subscribes to the effort commands and checks every one: finite, within `limits`
    (joints order). Violations are kept, never raised in the callback."""

    def __init__(self, node, limits=URDF_EFFORT, n_joints=2):
        self.limits, self.n_joints = np.asarray(limits, float), n_joints
        self.commands, self.times, self.violations = [], [], []
        self._arrived = threading.Condition()
        node.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, self._on_command, 1000)

    def _on_command(self, msg):
        values = np.array(msg.data, dtype=float)
        with self._arrived:
            if values.shape != (self.n_joints,) or not np.all(np.isfinite(values)) \
                    or np.any(np.abs(values) > self.limits):
                self.violations.append(values.tolist())
            self.commands.append(values)
            self.times.append(time.monotonic())
            self._arrived.notify_all()

    def clear(self):
        """Forget what came so far (e.g. a test's own deliberately bad commands)."""
        with self._arrived:
            self.commands, self.times, self.violations = [], [], []

    def wait_for_count(self, count, timeout=10.0):
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.commands) >= count, timeout)


class ProbeRobot:
    """Plays the robot for lqr_controller: publishes joint states (stamps one control period
    apart), controllers and trial requests; records commands and trial records."""

    def __init__(self, context, name="probe_robot"):
        self.node = create_probe(context, name)
        self.commands = CommandProbe(self.node)
        self.records = Recorder(wire.decode_trial_record)
        self.node.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, self.records, wire.EVENTS_QOS)
        self.latched = Recorder(lambda msg: msg.data)
        self.node.create_subscription(Bool, wire.ESTOP_LATCHED_TOPIC, self.latched, wire.LATCHED_STATE_QOS)
        self.states = self.node.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 100)
        self.controllers = self.node.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
        self.requests = TrialGoalSender(self.node)
        self.estop = self.node.create_publisher(Bool, wire.ESTOP_TOPIC, wire.ESTOP_QOS)
        self.reset_estop = self.node.create_client(Trigger, "/lqr_controller/reset_estop")
        self.stamp_ns = 10 ** 18
        self.stamp_step_ns = 50_000_000   # one control period

    def wait_connected(self):
        wait_until(lambda: self.states.get_subscription_count() and self.requests.get_subscription_count()
                   and self.controllers.get_subscription_count() and self.estop.get_subscription_count()
                   and self.node.count_publishers(wire.TRIAL_RECORDS_TOPIC)
                   and self.node.count_publishers(wire.EFFORT_COMMANDS_TOPIC)
                   and self.reset_estop.service_is_ready(), timeout=20, what="discovery")

    def start_at(self, controller, q0) -> np.ndarray:
        """Connected, with the controller holding q0 (J,) as its first joint state."""
        self.wait_connected()
        q0 = np.asarray(q0, dtype=float)
        self.state(q0)
        wait_until(lambda: controller._latest is not None, what="the first state")
        return q0

    def state(self, q, qd=(0.0, 0.0), names=JOINTS):
        self.stamp_ns += self.stamp_step_ns
        self.states.publish(wire.encode_joint_state(names, q, qd, np.zeros(len(names)), self.stamp_ns))

    def controller(self, K=None, k=(0.0, 0.0), version=0, dX=10):
        K = np.zeros((T, 2, dX)) if K is None else K
        self.controllers.publish(wire.encode_controller(wire.ControllerMessage(0, version, (
            LinearGaussianController.from_covar(K, np.tile(np.asarray(k, float), (T, 1)), 0.01 * np.eye(2))))))

    def request(self, trial_id, q0, version=0):
        self.requests.publish(wire.encode_trial_request(wire.TrialRequest(
            trial_id=trial_id, condition=0, iteration=1, index=0, controller_version=version, executor="controller",
            purpose="evaluation", initial_positions=np.asarray(q0, float), target=np.array([0.1, 0.1, 0.0]),
            noise=np.zeros((T, 2)))))

    def step(self, q, qd=(0.0, 0.0), timeout=10.0):
        """Publish one state and wait for the command it causes; returns that command."""
        count = len(self.commands.commands)
        self.state(q, qd)
        assert self.commands.wait_for_count(count + 1, timeout), "no command for the joint state"
        return self.commands.commands[count]

    def destroy_node(self):
        self.node.destroy_node()


def controller_node(context, experiment, **overrides):
    values = dict(experiment_config=str(experiment), mode="lockstep", reset_mode="pd",
                  pd_position_tolerance=0.01, pd_velocity_tolerance=0.01)
    values.update(overrides)
    return LqrControllerNode(context=context, parameter_overrides=parameters(**values))


@pytest.fixture
def experiment(tmp_path):
    return small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=2)


def run_trial(robot, trial_id, q0, states):
    """Request a trial at q0 (the probe already at q0 at rest) and feed it `states` (T - 1
    joint positions after the first); the commands of its T steps."""
    count = len(robot.commands.commands)
    robot.request(trial_id, q0)
    assert robot.commands.wait_for_count(count + 1), "the trial's first command never came"
    for q in states:
        robot.step(q)
    return np.array(robot.commands.commands[count:count + T])


# ---------------------------------------------------------------- command safety on the wire
@pytest.mark.timeout(60)
def test_every_command_is_clamped_and_guarded_near_the_position_limits(ros_context, experiment):
    controller = controller_node(ros_context, experiment, joint_limit_margin=0.2, joint_limit_damping=0.5)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.0, 1.0])
        robot.stamp_step_ns = 10 ** 9     # states 1 s apart: the jumps between these are possible
        robot.controller(k=(5.0, -5.0))   # pushes far beyond both effort limits
        # free, within the shoulder's margin (s = 0.5), beyond its upper limit, at the elbow's lower limit
        states = [[0.5, 0.5], [URDF_POSITION[0, 1] - 0.1, 0.5], [3.2, 0.5], [0.0, URDF_POSITION[1, 0]],
                  [0.0, -3.1]]
        commands = run_trial(robot, 1, q0, states)
        assert robot.records.wait_for(lambda items: items)
    assert robot.commands.violations == []
    np.testing.assert_allclose(commands[:2], [[2.0, -1.0]] * 2)           # clamped to the URDF's limits
    np.testing.assert_allclose(commands[2], [2.0, -1.0])                   # 0.5 * 5 = 2.5 -> clamped to 2
    np.testing.assert_allclose(commands[3], [0.0, -1.0])                   # beyond the upper limit: no push
    np.testing.assert_allclose(commands[4], [2.0, 0.0], atol=1e-12)        # at the lower limit: no push down
    np.testing.assert_allclose(commands[5], [2.0, 0.0])
    record = robot.records.items[0]
    assert record.status == wire.TrialStatus.OK
    np.testing.assert_allclose(record.commands, commands)                  # the record holds what was sent


@pytest.mark.timeout(60)
def test_non_finite_controller_output_sends_the_fallback_and_aborts_the_trial(ros_context, experiment):
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.5, 1.5])
        K = np.zeros((T, 2, 10))
        K[3:, 0, :2] = 1e308                 # finite gains whose K x overflows to inf from step 3 on
        robot.controller(K=K, k=(0.3, 0.2))
        count = len(robot.commands.commands)
        robot.request(7, q0)
        assert robot.commands.wait_for_count(count + 1)
        for _ in range(3):
            robot.step(q0)
        assert robot.records.wait_for(lambda items: items)
    record = robot.records.items[0]
    assert (record.trial_id, record.status, record.commands.shape) == (7, wire.TrialStatus.UNSAFE_COMMAND, (0, 2))
    sent = np.array(robot.commands.commands[count:])
    np.testing.assert_allclose(sent, [[0.3, 0.2]] * 3 + [[0.0, 0.0]])    # three steps, then the zero fallback
    assert robot.commands.violations == [] and controller.faults["unsafe_command"] == 1


@pytest.mark.timeout(60)
def test_malformed_joint_states_are_ignored(ros_context, experiment):
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.0, 1.5])
        robot.controller(k=(0.1, 0.1))
        count = len(robot.commands.commands)
        robot.request(3, q0)
        assert robot.commands.wait_for_count(count + 1)
        msg = wire.encode_joint_state(JOINTS, [0.0, 1.5], [0.0, 0.0], [0.0, 0.0], robot.stamp_ns + 1)
        msg.position = [0.0]                                              # short
        robot.states.publish(msg)
        robot.states.publish(wire.encode_joint_state(["gripper"], [0.0], [0.0], [0.0],
                                                     robot.stamp_ns + 2))
        wait_until(lambda: controller.faults["rejected_state"] == 2, what="two rejected states")
        assert len(robot.commands.commands) == count + 1                   # none of them made a step
        for _ in range(T - 1):
            robot.step(q0)
        assert robot.records.wait_for(lambda items: items)
    assert robot.records.items[0].status == wire.TrialStatus.OK
    assert robot.commands.violations == [] and controller.faults["implausible_state"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("q, qd, reason", [
    ([np.nan, 1.5], [0.0, 0.0], "not finite"),
    ([0.0, 1.5], [np.inf, 0.0], "not finite"),
    ([1e6, 1.5], [0.0, 0.0], "joint 0 at 1e\\+06 rad, beyond its limits"),
    ([0.0, 1.5], [0.0, 1e300], "joint 1 at 1e\\+300 rad/s, above 2 x its velocity limit 10 rad/s"),
    ([0.0, 2.7], [0.0, 0.0], "joint 1 moved 1.2 rad in 0.05 s; at most 1.01 rad is possible"),
])
def test_impossible_joint_states_send_the_fallback_and_abort_the_trial(ros_context, experiment, q,
                                                                       qd, reason):
    """A state no arm can be in (core.sanity) is never acted on: the fallback, the trial
    aborted (IMPLAUSIBLE_STATE), the fault counted and named in the log."""
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.0, 1.5])
        robot.controller(k=(0.1, 0.1))
        count = len(robot.commands.commands)
        robot.request(4, q0)
        assert robot.commands.wait_for_count(count + 1)
        robot.step(q0)                                          # step 1: a plausible state
        robot.state(q, qd)
        assert robot.records.wait_for(lambda items: items)
    record = robot.records.items[0]
    assert (record.trial_id, record.status) == (4, wire.TrialStatus.IMPLAUSIBLE_STATE)
    np.testing.assert_allclose(robot.commands.commands[count:], [[0.1, 0.1]] * 2 + [[0.0, 0.0]])
    assert controller.faults["implausible_state"] == 1 and robot.commands.violations == []
    envelope = sanity.StateEnvelope(URDF_POSITION, [10.0, 10.0])
    fault = sanity.state_fault(q, qd, envelope) or sanity.step_fault(q0, q, 0.05, envelope)
    assert re.search(reason, fault), fault


# ---------------------------------------------------------------- runtime parameters
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, value, reason", [
    ("effort_limits", [3.0, 1.0], r"may only lower the robot's \[2.0, 1.0\]; \[3.0, 1.0\] raises joints \[0\]"),
    ("effort_limits", [1.0], r"one per joint of \['shoulder', 'elbow'\] is needed"),
    ("effort_limits", [float("nan"), 1.0], r"effort limits must be finite and > 0"),
    ("effort_limits", [0.0, 1.0], r"effort limits must be finite and > 0"),
    ("effort_limits", [1, 1], r"Wrong parameter type"),
    ("joint_limit_damping", -1.0, r"out of range"),
    ("joint_limit_margin", float("nan"), r"out of range"),
    ("watchdog_periods", 0, r"out of range"),
    ("watchdog_action", "brake", r"parameter 'watchdog_action' is 'brake'; allowed: one of \['zero', 'hold'\]"),
    ("control_rate_hz", -20.0, r"read-only"),
    ("mode", "realtime", r"read-only"),
    ("policy_path", "/nonexistent/policy.pt", r"parameter 'policy_path' is '/nonexistent/policy.pt'"),
])
def test_unsafe_runtime_parameters_of_the_controller_are_rejected_with_the_reason(ros_context, experiment, name,
                                                                                  value, reason):
    controller = controller_node(ros_context, experiment)
    try:
        before = controller.settings
        [result] = controller.set_parameters([Parameter(name, value=value)])
        assert not result.successful
        assert __import__("re").search(reason, result.reason), result.reason
        assert controller.settings is before and controller._staged is None
    finally:
        controller.destroy_node()


@pytest.mark.timeout(60)
def test_safe_runtime_parameters_apply_between_trials_not_during_one(ros_context, experiment):
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.0, 1.5])
        robot.controller(k=(5.0, 5.0))
        count = len(robot.commands.commands)
        robot.request(1, q0)
        assert robot.commands.wait_for_count(count + 1)
        robot.step(q0), robot.step(q0)
        results = controller.set_parameters([Parameter("effort_limits", value=[0.5, 0.25]),
                                             Parameter("watchdog_action", value="hold")])
        assert all(result.successful for result in results)
        assert controller.settings.effort_limits == (2.0, 1.0)              # staged, not applied mid-trial
        for _ in range(T - 3):
            robot.step(q0)
        assert robot.records.wait_for(lambda items: items)
        first = np.array(robot.commands.commands[count:count + T])
        assert controller.settings.effort_limits == (0.5, 0.25) and controller.settings.watchdog_action == "hold"
        # idle: a change applies at once; the next trial runs under the lowered limits
        [result] = controller.set_parameters([Parameter("effort_limits", value=[0.4, 0.25])])
        assert result.successful and controller.settings.effort_limits == (0.4, 0.25)
        second = run_trial(robot, 2, q0, [q0] * (T - 1))
    np.testing.assert_allclose(first, [[2.0, 1.0]] * T)
    np.testing.assert_allclose(second, [[0.4, 0.25]] * T)
    assert robot.commands.violations == []
    assert list(controller.get_parameter("effort_limits").value) == [0.4, 0.25]


@pytest.mark.timeout(60)
def test_trainer_runtime_parameters_are_validated(ros_context, tmp_path, experiment):
    trainer = GpsTrainerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), output_dir=str(tmp_path / "out"), discovery_timeout_s=30.0))
    try:
        assert trainer.kl_step == load_experiment(experiment).trajectory_optimization.kl_step
        for name, value, reason in (("noise_scale", -0.5, "out of range"), ("kl_step", 0.0, "out of range"),
                                    ("kl_step", float("inf"), "out of range"), ("max_attempts", 0, "out of range"),
                                    ("trial_timeout_s", float("nan"), "out of range"),
                                    ("iterations", 5, "read-only"), ("seed", 3, "read-only")):
            [result] = trainer.set_parameters([Parameter(name, value=value)])
            assert not result.successful and reason in result.reason, (name, result.reason)
        result = trainer.set_parameters_atomically([Parameter("noise_scale", value=0.5),
                                                      Parameter("kl_step", value=0.25),
                                                      Parameter("max_attempts", value=5)])
        assert result.successful
        assert (trainer.noise_scale, trainer.kl_step, trainer.max_attempts) == (0.5, 0.25, 5)
    finally:
        trainer.destroy_node()


# ---------------------------------------------------------------- the e-stop latch (unit level)
@pytest.mark.timeout(60)
def test_a_controller_started_latched_refuses_trials_until_reset(ros_context, experiment):
    controller = controller_node(ros_context, experiment, estop_latched_at_start=True)
    robot = ProbeRobot(ros_context)
    with spinning(ros_context, [controller, robot]):
        robot.wait_connected()
        assert robot.latched.wait_for(lambda items: items == [True])      # transient local: known at once
        q0 = np.array([0.0, 1.5])
        robot.state(q0)
        wait_until(lambda: controller._latest is not None, what="the first state")
        robot.controller(k=(0.1, 0.1))
        wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
        robot.request(1, q0)
        assert robot.records.wait_for(lambda items: items)
        assert robot.records.items[0].status == wire.TrialStatus.ESTOP and robot.commands.commands == []
        robot.estop.publish(Bool(data=False))                              # a False does not clear it
        time.sleep(0.2)
        assert controller.estop_latched
        response = robot.reset_estop.call(Trigger.Request(), timeout_sec=5.0)
        assert response.success and not controller.estop_latched
        assert robot.latched.wait_for(lambda items: items == [True, False])
        commands = run_trial(robot, 2, q0, [q0] * (T - 1))
        assert robot.records.wait_for(lambda items: len(items) == 2)
    assert robot.records.items[1].status == wire.TrialStatus.OK and commands.shape == (T, 2)
    assert robot.commands.violations == []


@pytest.mark.timeout(60)
def test_watchdog_hold_sends_the_gravity_torque_at_the_last_pose(ros_context):
    """On the 7-joint iiwa (gravity loads its joints): a PD reset whose joint states stop ->
    the fallback is the gravity torque at the last valid pose, clamped, in `joints` order."""
    experiment = REPO / "config" / "kuka_reach.yaml"
    config = load_experiment(experiment)
    robot_joints = list(robot_spec(config.robot).joint_names)
    names = robot_joints[::-1]                                         # commands in reversed joint order
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="pd", joints=names, watchdog_periods=2,
        watchdog_action="hold"))
    probe = create_probe(ros_context)
    commands = CommandProbe(probe, limits=np.full(7, np.inf), n_joints=7)
    records = Recorder(wire.decode_trial_record)
    probe.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, records, wire.EVENTS_QOS)
    states = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    q_last = np.array([0.3, 0.9, 0.1, -1.2, 0.2, 0.8, 0.0])           # robot order, away from the start pose
    spec = config.conditions[0]
    with spinning(ros_context, [controller, probe]):
        wait_until(lambda: states.get_subscription_count() and requests.get_subscription_count()
                   and probe.count_publishers(wire.TRIAL_RECORDS_TOPIC), timeout=20, what="discovery")
        states.publish(wire.encode_joint_state(robot_joints, q_last, np.zeros(7), np.zeros(7), 10 ** 9))
        wait_until(lambda: controller._latest is not None, what="the state")
        controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, LinearGaussianController.from_covar(
            np.zeros((config.T, 7, config.layout.dX)), np.zeros((config.T, 7)), 0.01 * np.eye(7)))))
        wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
        requests.publish(wire.encode_trial_request(wire.TrialRequest(
            trial_id=4, condition=0, iteration=0, index=0, controller_version=0, executor="controller",
            purpose="evaluation", initial_positions=np.array(spec.initial_positions), target=np.array(spec.target),
            noise=np.zeros((config.T, 7)))))
        assert records.wait_for(lambda items: items, timeout=20)   # one PD command, then no state: the watchdog
    model = RobotModel(config.robot)   # what the node computes G(q) with (on hardware too)
    hold = np.clip(model.gravity_torque(q_last), -model.effort_limits, model.effort_limits)
    order = [robot_joints.index(name) for name in names]
    assert records.items[0].status == wire.TrialStatus.WATCHDOG and len(commands.commands) == 2
    np.testing.assert_allclose(commands.commands[-1], hold[order], rtol=1e-12)
    assert np.abs(hold).max() > 1.0                                    # a real hold, not zero
    assert all(np.all(np.isfinite(c)) for c in commands.commands)
