"""lqr_controller's start-up check of the joint-state rate (realtime mode): a robot whose
states come at 100 Hz with realtime_trigger joint_state and control_rate_hz 20 (each state
would start a step: the steps are not a control period apart and the rollouts have gaps)
is refused with the fix named; with realtime_trigger timer the same robot works."""

import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState

from loop_helpers import (Recorder, TrialGoalSender, create_probe, parameters, small_experiment,
                          spinning, wait_until)
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.lqr_controller import LqrControllerNode, joint_state_rate_problem
from mbpl_ros.sim.arm import Arm

JOINTS = ["shoulder", "elbow"]


@pytest.mark.parametrize(
    "rate_hz, trigger, refused",
    [
        (100.0, "joint_state", True),
        (20.0, "joint_state", False),
        (22.0, "joint_state", False),
        (10.0, "joint_state", True),
        (100.0, "timer", False),
        (20.0, "timer", False),
        (10.0, "timer", True),
    ],
)
def test_which_state_rates_each_trigger_works_with(rate_hz, trigger, refused):
    intervals = np.tile([1.05, 0.95], 5) / rate_hz  # some jitter
    problem = joint_state_rate_problem(intervals, trigger, 20.0)
    assert (problem is not None) == refused, problem
    if refused:
        assert f"joint states arrive at {rate_hz:.1f} Hz" in problem
        assert "joint_state_broadcaster's publish_rate" in problem
        assert ("set realtime_trigger: timer" in problem) == (
            trigger == "joint_state" and rate_hz > 20
        )


class Robot:
    """Publishes the start pose at rest at `rate_hz` from its own thread."""

    def __init__(self, context, config, rate_hz):
        self.node = create_probe(context, "robot_probe")
        self.config, self.period = config, 1.0 / rate_hz
        self.states = self.node.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)
        self.records = Recorder(wire.decode_trial_record)
        self.node.create_subscription(
            interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, self.records, wire.EVENTS_QOS
        )
        self.controllers = self.node.create_publisher(
            interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS
        )
        self.requests = TrialGoalSender(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish, daemon=True)

    def _publish(self):
        q = np.asarray(self.config.conditions[0].initial_positions, float)
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.states.publish(
                wire.encode_joint_state(
                    JOINTS, q, np.zeros(2), np.zeros(2), int(time.time() * 1e9)
                )
            )
            k += 1
            time.sleep(max(0.0, start + k * self.period - time.monotonic()))

    def destroy_node(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.node.destroy_node()

    def request_trial(self, controller_node):
        config, spec = self.config, self.config.conditions[0]
        with Arm(config.robot) as arm:
            initial = config.initial_controllers(arm)[0]
        self.controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, initial)))
        wait_until(lambda: (0, 0) in controller_node.controllers, what="the controller")
        self.requests.publish(
            wire.encode_trial_request(
                wire.TrialRequest(
                    trial_id=1,
                    condition=0,
                    iteration=1,
                    index=0,
                    controller_version=0,
                    executor="controller",
                    purpose="evaluation",
                    initial_positions=np.array(spec.initial_positions),
                    target=np.array(spec.target),
                    noise=np.zeros((config.T, config.layout.dU)),
                )
            )
        )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("trigger", ["joint_state", "timer"])
def test_a_100_hz_robot_is_refused_with_the_fix_or_works_with_the_timer(
    ros_context, tmp_path, trigger
):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=6, N=1)
    config = load_experiment(experiment)
    node = LqrControllerNode(
        context=ros_context,
        parameter_overrides=parameters(
            experiment_config=str(experiment),
            mode="realtime",
            reset_mode="pd",
            realtime_trigger=trigger,
            control_rate_hz=20.0,
            watchdog_periods=10,
        ),
    )
    robot = Robot(ros_context, config, rate_hz=100.0)
    with spinning(ros_context, [node, robot]):
        wait_until(
            lambda: robot.requests.get_subscription_count()
            and robot.states.get_subscription_count(),
            timeout=20,
            what="discovery",
        )
        robot._thread.start()
        wait_until(lambda: len(node._first_stamps) > 10, timeout=20, what="the rate measurement")
        robot.request_trial(node)
        wait_until(lambda: robot.records.items, timeout=20, what="the trial record")
    record = robot.records.items[0]
    if trigger == "joint_state":
        assert record.status == wire.TrialStatus.ABORTED and len(record.commands) == 0
        assert "set realtime_trigger: timer" in node.state_rate_problem
        assert "joint states arrive at" in node.state_rate_problem
    else:
        assert node.state_rate_problem is None and node.state_rate_hz > 80.0
        assert record.status == wire.TrialStatus.OK and len(record.commands) == config.T
