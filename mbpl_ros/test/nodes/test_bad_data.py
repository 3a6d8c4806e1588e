"""Bad data never ends a run or vanishes silently (docs/safety.md, "Bad data"), shown with
real processes over DDS on loopback: impossible joint states during sample and evaluation
trials are rejected and retried, and the run's metrics are those of a run without them; a
joint state stamped in the future, or out of order, holds back no command."""
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from loop_helpers import (REPO, Recorder, TrialGoalSender, create_probe, observe_trial_goals,
                          parameters, small_experiment, spinning, wait_until)
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.nodes.sample_collector import SampleCollectorNode
from mbpl_ros.offline import TrainingRun
from mbpl_ros.recording import read_recording
from test_fault_injection import NodeProcesses, initial_controller, request_message

SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"
JOINTS = ["shoulder", "elbow"]


class Glitcher:
    """Plays a glitching encoder: publishes one joint state with |q| = 1e6 rad (finite, far
    beyond the limits) during each trial it is armed for, after that trial's third command.
    Armed for the trials of iteration `iteration` onwards of each purpose in `purposes` until
    one such glitch has aborted a trial of that purpose: a glitch stamped behind the state the
    controller already holds (the glitcher may see a command before the state it acted on) is
    rightly ignored as out of order, so it is tried again in the next trial."""

    def __init__(self, context, iteration, purposes):
        self.node = create_probe(context, "glitcher")
        self.iteration, self.purposes, self.lock = iteration, set(purposes), threading.Lock()
        self.armed, self.commands_seen, self.injected, self.latest_stamp = None, 0, [], 0
        self.hit = set()   # purposes whose trial a glitch aborted
        self.rollouts = Recorder(wire.decode_rollout)
        subscribe = self.node.create_subscription
        subscribe(interfaces.Rollout, wire.ROLLOUTS_TOPIC, self._on_rollout, wire.EVENTS_QOS)
        observe_trial_goals(self.node, self._on_request)
        subscribe(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, self._on_command, 100)
        subscribe(JointState, wire.JOINT_STATES_TOPIC, self._on_state, 100)
        self.states = self.node.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)

    def _on_rollout(self, msg):
        self.rollouts(msg)
        rollout = self.rollouts.items[-1]
        with self.lock:
            if rollout.status != wire.TrialStatus.OK and rollout.trial_id in self.injected:
                self.hit.add(rollout.purpose)

    def _on_request(self, msg):
        request = wire.decode_trial_request(msg)
        with self.lock:
            # Not while the last glitch's outcome is unknown: this may be its trial's retry.
            settled = {r.trial_id for r in self.rollouts.items} >= set(self.injected)
            wanted = request.iteration >= self.iteration and request.purpose in self.purposes
            self.armed = (request.trial_id if wanted and settled and request.purpose not in self.hit
                          else None)
            self.commands_seen = 0

    def _on_state(self, msg):
        with self.lock:
            stamp = wire.nanoseconds_from_stamp(msg.header.stamp)
            self.latest_stamp = max(self.latest_stamp, stamp)

    def _on_command(self, msg):
        with self.lock:
            self.commands_seen += 1
            if self.armed is None or self.commands_seen < 3:
                return
            trial, self.armed = self.armed, None
            # A newer stamp than the simulator's latest: only the values are wrong.
            self.states.publish(wire.encode_joint_state(JOINTS, [1e6, 0.5], [0.0, 0.0], [0.0, 0.0],
                                                        self.latest_stamp + 1))
            self.injected.append(trial)

    def destroy_node(self):
        self.node.destroy_node()


@pytest.mark.timeout(240)
def test_impossible_states_in_sample_and_evaluation_trials_are_retried_and_change_no_metric(
        ros_context, tmp_path):
    """`mbpl sim` (its own process, lockstep): an encoder glitch in a sample trial and in an
    evaluation trial of iteration 1 (or later: see Glitcher). Each is aborted (IMPLAUSIBLE_STATE), retried
    with the same noise, and the run's metrics equal the offline run's (= a run without
    glitches); the recording holds only the accepted rollouts."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=30, N=2)
    config = load_experiment(experiment)
    output = tmp_path / "out"
    glitcher = Glitcher(ros_context, 1, {"sample", "evaluation"})
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Started with the e-stop latched: nothing runs until the glitcher has found the graph.
    params = tmp_path / "params.yaml"
    latched = "    estop_latched_at_start: true\n    estop_topic: gps/estop"
    params.write_text(SIM_CONFIG.read_text().replace("    estop_topic: gps/estop", latched))
    reset = glitcher.node.create_client(Trigger, "/lqr_controller/reset_estop")
    with spinning(ros_context, [glitcher]):
        run = subprocess.Popen(
            [sys.executable, "-m", "mbpl_ros.cli", "sim", "--config", str(params), "--experiment",
             str(experiment), "--iterations", "2", "--output", str(output)],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            topics = (wire.ROLLOUTS_TOPIC, wire.TRIAL_GOAL_EVENTS_TOPIC, wire.EFFORT_COMMANDS_TOPIC,
                      wire.JOINT_STATES_TOPIC)
            wait_until(lambda: all(glitcher.node.count_publishers(topic) for topic in topics)
                and glitcher.states.get_subscription_count() >= 2 and reset.service_is_ready(),
                timeout=60, what="the graph")
            response = reset.call(Trigger.Request(), timeout_sec=10.0)
            assert response is not None and response.success, response
            stdout, stderr = run.communicate(timeout=180)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert run.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    dropped = [r for r in glitcher.rollouts.items if r.status != wire.TrialStatus.OK]
    assert len(dropped) == 2 and {r.trial_id for r in dropped} <= set(glitcher.injected), \
        (dropped, glitcher.injected)
    implausible = wire.TrialStatus.IMPLAUSIBLE_STATE
    assert {(r.purpose, r.status) for r in dropped} == {("sample", implausible),
                                                        ("evaluation", implausible)}
    assert stderr.count("rollout dropped: IMPLAUSIBLE_STATE") == 2, stderr[-3000:]
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2] and rows[2]["rollouts"] == 4
    offline = TrainingRun(config, tmp_path / "offline", config.seed, log=io.StringIO()).run(2)
    for row, expected in zip(rows, offline):   # `mbpl train`, the same loop on the arm
        np.testing.assert_allclose(row["final_distance_m"], expected["final_distance_m"],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(row["mean_cost"], expected["mean_cost"], rtol=1e-9)
    recording = read_recording(output / "rollouts.mcap")
    assert len(recording.rollouts) == 4
    assert max(np.abs(r.positions).max() for r in recording.rollouts) < 4.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("trigger", ["joint_state", "timer"])
def test_a_future_or_out_of_order_stamp_holds_back_no_command(ros_context, tmp_path, trigger):
    """sim_robot (realtime, its own process) at 20 Hz; during a trial one joint state stamped
    7.7 s in the future (before: no command for 7.66 s with realtime_trigger joint_state) and
    one stamped 0.5 s in the past, both with the arm's real pose. Both are rejected and
    counted by lqr_controller and sample_collector; the commands keep their rate and (with
    the joint_state trigger, which steps on each new state) the rollout is complete."""
    rate_hz, T = 20.0, 60
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=1)
    config = load_experiment(experiment)
    nodes = NodeProcesses(tmp_path, [])
    probe = create_probe(ros_context)
    command_times = []
    probe.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC,
                              lambda msg: command_times.append(time.monotonic()), 100)
    sim_states = []
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, lambda msg: (
        sim_states.append(msg) if msg.header.frame_id != "probe" else None), 100)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    states = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC,
                                         wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="realtime", realtime_trigger=trigger,
        reset_mode="pd",
        watchdog_periods=5, pd_position_tolerance=0.05, pd_velocity_tolerance=0.05))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    try:
        nodes.start("sim_robot", "-p", "mode:=realtime", "-p", f"control_rate_hz:={rate_hz}", "-p",
                    f"initial_positions:={list(config.conditions[0].initial_positions)}")
        with spinning(ros_context, [controller, collector, probe]):
            wait_until(lambda: sim_states and requests.get_subscription_count()
                       and probe.count_publishers(wire.ROLLOUTS_TOPIC), timeout=30,
                       what="sim_robot")
            controllers.publish(wire.encode_controller(
                wire.ControllerMessage(0, 0, initial_controller(config))))
            wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
            requests.publish(request_message(1, config))
            wait_until(lambda: controller._trial is not None
                       and controller._trial.phase == "running" and controller._trial.t >= 10,
                       timeout=20, what="ten steps of the trial")
            for offset_ns in (7_700_000_000, -500_000_000):
                real = sim_states[-1]
                stamp = wire.nanoseconds_from_stamp(real.header.stamp) + offset_ns
                glitch = wire.encode_joint_state(list(real.name), real.position, real.velocity,
                                                 real.effort, stamp)
                glitch.header.frame_id = "probe"
                states.publish(glitch)
                time.sleep(0.3)
            assert rollouts.wait_for(lambda items: items, timeout=20), nodes.report()
    finally:
        nodes.stop_all()
    rollout = rollouts.items[0]
    if trigger == "joint_state":   # (a timer, unsynchronised, may reuse a state: STALE)
        assert rollout.status == wire.TrialStatus.OK and rollout.X.shape[0] == T
    assert controller.faults["rejected_stamp"] == 2 and collector.rejected_stamps == 2
    assert controller.faults["implausible_state"] == 0
    gaps = np.diff(command_times[-T - 1:-1])           # the trial's T commands (then the fallback)
    assert gaps.max() < 2.5 / rate_hz, gaps.max()
