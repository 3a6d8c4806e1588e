"""lqr_controller's realtime_trigger over DDS: a probe plays the robot (joint states with
chosen stamps and timing) and checks which state each command acted on and when it came."""
import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from loop_helpers import (Recorder, TrialGoalSender, create_probe, parameters, small_experiment,
                          spinning, wait_until)
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.sim.arm import Arm

JOINTS = ["shoulder", "elbow"]
STAMP0_NS = 1_700_000_000 * 10 ** 9


class RobotProbe:
    """Publishes joint states at the start pose (at rest) and records the commands with their
    arrival times (time.monotonic) and the trial records."""

    def __init__(self, context, config):
        self.node = create_probe(context, "robot_probe")
        self.config = config
        self.command_times = []
        self.records = Recorder(wire.decode_trial_record)
        self.node.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC,
                                      lambda msg: self.command_times.append(time.monotonic()), 100)
        self.node.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, self.records, wire.EVENTS_QOS)
        self.states = self.node.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)
        self.controllers = self.node.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC,
                                                      wire.CONTROLLERS_QOS)
        self.requests = TrialGoalSender(self.node)

    def start_trial(self, controller_node):
        config, spec = self.config, self.config.conditions[0]
        wait_until(lambda: self.requests.get_subscription_count() and self.states.get_subscription_count()
                   and self.node.count_publishers(wire.EFFORT_COMMANDS_TOPIC), timeout=20, what="discovery")
        with Arm(config.robot) as arm:
            initial = config.initial_controllers(arm)[0]
        self.controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, initial)))
        wait_until(lambda: (0, 0) in controller_node.controllers, what="the controller")
        self.requests.publish(wire.encode_trial_request(wire.TrialRequest(
            trial_id=1, condition=0, iteration=1, index=0, controller_version=0, executor="controller",
            purpose="evaluation", initial_positions=np.array(spec.initial_positions),
            target=np.array(spec.target), noise=np.zeros((config.T, config.layout.dU)))))
        wait_until(lambda: controller_node._trial is not None, what="the trial to start")

    def destroy_node(self):
        self.node.destroy_node()

    def publish_state(self, stamp_ns):
        """The start pose at rest (the PD reset is done at the first state), robot joint order."""
        q = np.asarray(self.config.conditions[0].initial_positions, float)
        self.states.publish(wire.encode_joint_state(JOINTS, q, np.zeros(2), np.zeros(2), int(stamp_ns)))


def controller(context, experiment, **values):
    return LqrControllerNode(context=context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="realtime", reset_mode="pd", **values))


@pytest.mark.timeout(60)
def test_joint_state_trigger_commands_each_new_state_at_once_and_ignores_repeats(ros_context, tmp_path):
    """control_rate_hz 1 (a timer would act up to 1 s after a state): each new state gets its
    command within 0.3 s, a repeated stamp gets none, and the record names every state once."""
    T = 4
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=1)
    config = load_experiment(experiment)
    node = controller(ros_context, experiment, realtime_trigger="joint_state", control_rate_hz=1.0,
                      watchdog_periods=5)
    robot = RobotProbe(ros_context, config)
    stamps = STAMP0_NS + np.cumsum([0, 7_000_000, 13_000_000, 5_000_000])  # irregular, as a robot may be
    latencies = []
    with spinning(ros_context, [node, robot]):
        robot.start_trial(node)
        for t, stamp in enumerate(stamps):
            before = len(robot.command_times)
            sent = time.monotonic()
            robot.publish_state(stamp)
            wait_until(lambda: len(robot.command_times) > before, timeout=5, what=f"the command of step {t}")
            latencies.append(robot.command_times[before] - sent)
            if t < T - 1:
                robot.publish_state(stamp)               # the same state again: no step
                time.sleep(0.6)                          # > MIN_STEP_PERIODS: the next state is stepped on
                assert len(robot.command_times) == before + 1, f"a repeated state made a command at step {t}"
        assert robot.records.wait_for(lambda items: items, timeout=5)
    record = robot.records.items[0]
    assert record.status == wire.TrialStatus.OK
    used = record.state_stamps[:, 0].astype(np.int64) * 10 ** 9 + record.state_stamps[:, 1].astype(np.int64)
    np.testing.assert_array_equal(used, stamps)
    assert len(robot.command_times) == T + 1             # T steps, then the end-of-trial fallback
    assert max(latencies) < 0.3, latencies               # a 1 Hz timer would wait 0.5 s on average


@pytest.mark.timeout(60)
def test_timer_trigger_acts_on_the_latest_state_at_the_control_rate(ros_context, tmp_path):
    """realtime_trigger timer: one joint state, then none: the timer steps on it every period
    (the record names the same stamp T times) until the trial ends."""
    T = 5
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=1)
    config = load_experiment(experiment)
    node = controller(ros_context, experiment, realtime_trigger="timer", control_rate_hz=20.0,
                      watchdog_periods=100)
    robot = RobotProbe(ros_context, config)
    with spinning(ros_context, [node, robot]):
        robot.start_trial(node)
        robot.publish_state(STAMP0_NS)
        assert robot.records.wait_for(lambda items: items, timeout=10)
    record = robot.records.items[0]
    assert record.status == wire.TrialStatus.OK
    used = record.state_stamps[:, 0].astype(np.int64) * 10 ** 9 + record.state_stamps[:, 1].astype(np.int64)
    np.testing.assert_array_equal(used, np.full(T, STAMP0_NS))
    gaps = np.diff(robot.command_times[:T])
    assert np.median(gaps) > 0.02, gaps                  # paced by the 20 Hz timer, not by states


def test_realtime_trigger_rejects_unknown_values(ros_context, tmp_path):
    from mbpl_ros.nodes.common import NodeParameterError

    experiment = small_experiment(tmp_path / "experiment.yaml")
    with pytest.raises(NodeParameterError, match=r"parameter 'realtime_trigger' is 'state'; allowed: one of "
                                                 r"\['joint_state', 'timer'\]"):
        controller(ros_context, experiment, realtime_trigger="state")
