"""Fault injection over real DDS on loopback (docs/safety.md): a dead sensor source,
malformed commands and joint states, a joint-state flood, killed and restarted nodes, the
e-stop. Real nodes in this process and real node processes (killed by pid); a probe checks
every effort command published (finite, within the limits). Every test is bounded in time
(pytest timeout) and in the traffic it makes.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger

from loop_helpers import (REPO, Recorder, TrialGoalSender, create_probe, observe_trial_goals,
                          parameters, small_experiment, spinning, wait_until)
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.dynamics_fitter import DynamicsFitterNode
from mbpl_ros.nodes.gps_trainer import GpsTrainerNode
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.nodes.sample_collector import SampleCollectorNode
from mbpl_ros.nodes.sim_robot import SimRobotNode
from mbpl_ros.sim.arm import Arm
from mbpl_ros.core.controller import rollout_noise
from test_safety_nodes import JOINTS, CommandProbe

RATE_HZ = 20.0
PERIOD_S = 1.0 / RATE_HZ
SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"
#: Observed outcomes are appended here (one JSON line per fault) when set: docs/safety.md's table.
OUTCOMES = os.environ.get("MBPL_FAULT_OUTCOMES")


def note(fault, **outcome):
    if OUTCOMES:
        with open(OUTCOMES, "a") as f:
            f.write(json.dumps({"fault": fault, **outcome}) + "\n")


def initial_controller(config, condition=0):
    with Arm(config.robot) as arm:
        return config.initial_controllers(arm)[condition]


def request_message(trial_id, config, condition=0, purpose="evaluation"):
    spec = config.conditions[condition]
    return wire.encode_trial_request(wire.TrialRequest(
        trial_id=trial_id, condition=condition, iteration=1, index=0, controller_version=0, executor="controller",
        purpose=purpose, initial_positions=np.array(spec.initial_positions), target=np.array(spec.target),
        noise=np.zeros((config.T, config.layout.dU))))


class NodeProcesses:
    """Node processes (python -m mbpl_ros.nodes.<name>), output to files, ended by pid."""

    def __init__(self, directory: Path, params_files):
        self.directory, self.params_files, self.processes, self.logs = directory, params_files, {}, {}
        self.env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1",
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start(self, name, *ros_args):
        count = sum(1 for key in self.logs if key.startswith(name))
        log = self.directory / f"{name}.{count}.log"
        self.logs[f"{name}.{count}"] = log
        command = [sys.executable, "-m", f"mbpl_ros.nodes.{name}", "--ros-args"]
        for params_file in self.params_files:
            command += ["--params-file", str(params_file)]
        with open(log, "w") as out:
            self.processes[name] = subprocess.Popen(command + list(ros_args), env=self.env, cwd=self.directory,
                                                    stdout=out, stderr=subprocess.STDOUT)
        return self.processes[name]

    def kill(self, name):
        process = self.processes[name]
        process.kill()           # SIGKILL, by pid: no clean shutdown
        process.wait(timeout=10)

    def log(self, name, index=0):
        return (self.directory / f"{name}.{index}.log").read_text()

    def report(self, lines=15):
        """The last lines of every log, for a failure message."""
        return "\n".join(f"--- {key}\n" + "\n".join(path.read_text().splitlines()[-lines:])
                         for key, path in self.logs.items())

    def stop_all(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------- a dead sensor source
@pytest.mark.timeout(90)
def test_killing_the_sensor_source_mid_trial_trips_the_watchdog(ros_context, tmp_path):
    """sim_robot (realtime, its own process) is killed during a trial: the controller sends the
    fallback within watchdog_periods (+1 for the check) control periods of the last joint
    state, aborts the trial (WATCHDOG) and publishes nothing more."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=60, N=1)
    config = load_experiment(experiment)
    periods = 3
    nodes = NodeProcesses(tmp_path, [])
    probe = create_probe(ros_context)
    commands = CommandProbe(probe)
    records = Recorder(wire.decode_trial_record)
    probe.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, records, wire.EVENTS_QOS)
    state_times = Recorder(lambda msg: time.monotonic())
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, state_times, 100)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="realtime", reset_mode="pd", watchdog_periods=periods,
        pd_position_tolerance=0.05, pd_velocity_tolerance=0.05))
    try:
        nodes.start("sim_robot", "-p", "mode:=realtime", "-p", f"control_rate_hz:={RATE_HZ}", "-p",
                    f"initial_positions:={list(config.conditions[0].initial_positions)}")
        with spinning(ros_context, [controller, probe]):
            wait_until(lambda: state_times.items and requests.get_subscription_count()
                       and probe.count_publishers(wire.TRIAL_RECORDS_TOPIC), timeout=30, what="sim_robot")
            controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, initial_controller(config))))
            wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
            requests.publish(request_message(1, config))
            assert commands.wait_for_count(10, timeout=20)          # the trial runs (the PD phase may come first)
            nodes.kill("sim_robot")
            killed = time.monotonic()
            assert records.wait_for(lambda items: items, timeout=10)
            last_state = state_times.items[-1]
            count = len(commands.commands)
            time.sleep(10 * PERIOD_S)
            after = len(commands.commands) - count
    finally:
        nodes.stop_all()
    record = records.items[0]
    assert record.status == wire.TrialStatus.WATCHDOG and controller.faults["watchdog"] == 1
    fallback_at = commands.times[-1]
    np.testing.assert_array_equal(commands.commands[-1], [0.0, 0.0])   # watchdog_action zero
    latency = fallback_at - last_state
    assert latency <= (periods + 1) * PERIOD_S + 0.15, latency        # + scheduling slack of a shared CPU
    assert after == 0                                                   # then silence
    assert commands.violations == []
    note("sensor source (sim_robot process) killed mid-trial", watchdog_periods=periods,
         fallback_after_last_state_s=round(latency, 3), fallback_after_kill_s=round(fallback_at - killed, 3),
         record=record.status.name, commands_after_fallback=after, violations=len(commands.violations),
         commands_checked=len(commands.commands))


# ---------------------------------------------------------------- malformed input
@pytest.mark.timeout(60)
def test_malformed_commands_and_joint_states_are_rejected(ros_context, tmp_path):
    """NaN/inf/short/long commands to sim_robot take no step; short/long joint states sent to
    the controller and the collector during a trial are ignored by the controller (the trial
    completes on the real states); a NaN joint state aborts a trial with the fallback
    (IMPLAUSIBLE_STATE), so it never reaches a valid rollout."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=1)
    config = load_experiment(experiment)
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(mode="lockstep"))
    # The watchdog is not under test: 2 s rather than 0.25 s of wall clock, since three nodes and
    # the probe share one process here (CI once stalled 0.3 s between two lockstep states).
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="sim_service",
        watchdog_periods=40))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), assembly_timeout_s=2.0))
    probe = create_probe(ros_context)
    commands = CommandProbe(probe)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    states = Recorder()
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, states, 100)
    raw_commands = probe.create_publisher(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, 100)
    bad_states = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 100)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: raw_commands.get_subscription_count() and requests.get_subscription_count()
                   and bad_states.get_subscription_count() >= 2 and probe.count_publishers(wire.ROLLOUTS_TOPIC)
                   and controller._reset.service_is_ready(), timeout=20, what="discovery")
        # 1. commands sim_robot must reject (the probe's own commands are not checked by the probe)
        steps = sim.steps_taken
        for bad in ([np.nan, 0.0], [0.0, np.inf], [0.1], [0.1, 0.2, 0.3]):
            message = Float64MultiArray()
            message.data = [float(v) for v in bad]
            raw_commands.publish(message)
        wait_until(lambda: sim.rejected_commands == 4, what="4 rejected commands")
        assert commands.wait_for_count(4)
        assert sim.steps_taken == steps
        commands.clear()        # the probe's own bad commands: from here on only the controller's
        # 2. a trial while bad joint states arrive between the real ones
        controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, initial_controller(config))))
        wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
        commands_before = len(commands.commands)
        requests.publish(request_message(5, config))
        # A short and a long state after each command, so between each two real states; not a
        # flood, which would overrun the controller's keep-last queue and lose real states too.
        stamp = 10 ** 9
        for k in range(config.T):
            assert commands.wait_for_count(commands_before + k + 1)
            stamp += 7
            short = wire.encode_joint_state(JOINTS, [0.0, 0.1], [0.0, 0.0], [0.0, 0.0], stamp + 1)
            short.velocity = [0.0]
            long = wire.encode_joint_state(JOINTS, [0.0, 0.1], [0.0, 0.0], [0.0, 0.0], stamp + 2)
            long.position = [0.0, 0.1, 0.2]
            for message in (short, long):
                bad_states.publish(message)
        assert rollouts.wait_for(lambda items: items, timeout=20)
        wait_until(lambda: controller.faults["rejected_state"] == 2 * config.T, what="each bad state rejected")
        rejected = dict(controller.faults)
        # 3. a NaN joint state during a trial: the fallback, the trial aborted, no rollout data
        commands_before_nan = len(commands.commands)
        requests.publish(request_message(6, config))
        assert commands.wait_for_count(commands_before_nan + 2, timeout=10)
        bad_states.publish(wire.encode_joint_state(JOINTS, [np.nan, 0.1], [0.0, 0.0], [0.0, 0.0],
                                                   stamp + 3))
        assert rollouts.wait_for(lambda items: len(items) == 2, timeout=20)
    rollout, aborted = rollouts.items
    assert rollout.status == wire.TrialStatus.OK and np.all(np.isfinite(rollout.X)) and np.all(np.isfinite(rollout.U))
    assert commands_before_nan - commands_before == config.T and commands.violations == []
    assert aborted.status == wire.TrialStatus.IMPLAUSIBLE_STATE and aborted.X.shape[0] == 0
    np.testing.assert_array_equal(commands.commands[-1], [0.0, 0.0])
    note("NaN/inf/short/long commands to sim_robot", rejected=sim.rejected_commands, steps_taken=0)
    note("short/long joint states to lqr_controller and sample_collector during a trial",
         sent=2 * config.T, ignored_by_controller=rejected["rejected_state"], trial=rollout.status.name,
         commands_checked=commands_before_nan - commands_before,
         violations=len(commands.violations))
    note("a NaN joint state during a trial", trial=aborted.status.name,
         last_command="zero fallback")


# ---------------------------------------------------------------- a joint-state flood
@pytest.mark.timeout(60)
@pytest.mark.parametrize("trigger, commands_per_period, wild", [
    ("timer", 1, False), ("joint_state", 2, False), ("joint_state", 2, True)])
def test_a_joint_state_flood_keeps_commands_safe_and_their_rate_bounded(
        ros_context, tmp_path, trigger, commands_per_period, wild):
    """2 s of /joint_states at 10x the control rate while a realtime trial runs: every
    command finite and within the limits; at most one per control period with
    realtime_trigger timer, and at most one per half period (MIN_STEP_PERIODS) with
    joint_state, which steps on every new state. The flood is either plausible (sim_robot's
    latest state carried forward to the flood's stamp) or wild (random poses beyond the
    limits, |qd| ~ 30 rad/s, 10% NaN): the first wild state aborts the trial with the
    fallback (IMPLAUSIBLE_STATE). (T: the trial outlasts the flood with either trigger.)"""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=120, N=1)
    config = load_experiment(experiment)
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        mode="realtime", control_rate_hz=RATE_HZ, initial_positions=list(config.conditions[0].initial_positions)))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="realtime", realtime_trigger=trigger, reset_mode="pd",
        watchdog_periods=5, pd_position_tolerance=0.05, pd_velocity_tolerance=0.05))
    probe = create_probe(ros_context)
    commands = CommandProbe(probe)
    records = Recorder(wire.decode_trial_record)
    probe.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, records,
                              wire.EVENTS_QOS)
    sim_states = []     # (stamp ns, q, qd) of sim_robot's own states

    def on_state(msg):
        if msg.header.frame_id != "flood":
            q, qd, _ = wire.decode_joint_state(msg, JOINTS)
            sim_states.append((wire.nanoseconds_from_stamp(msg.header.stamp), q, qd))
    probe.create_subscription(JointState, wire.JOINT_STATES_TOPIC, on_state, 100)
    flood = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 100)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    rng = np.random.default_rng(6)
    flood_hz, flood_s = 10 * RATE_HZ, 2.0
    with spinning(ros_context, [sim, controller, probe]):
        wait_until(lambda: requests.get_subscription_count() and flood.get_subscription_count()
                   and controller._latest is not None and sim_states, timeout=20, what="discovery")
        controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 0, initial_controller(config))))
        wait_until(lambda: (0, 0) in controller.controllers, what="the controller")
        # The flood is a fault during a run, after the start-up check of the state rate.
        wait_until(lambda: controller.state_rate_hz is not None, what="the state-rate check")
        requests.publish(request_message(9, config))
        assert commands.wait_for_count(3, timeout=10)
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < flood_s:
            now = sim.get_clock().now().nanoseconds
            if wild:
                q = rng.uniform(-3.6, 3.6, size=2)
                qd = rng.normal(scale=30.0, size=2)
                if sent % 10 == 9:
                    q[0] = np.nan
            else:
                stamp, q, qd = sim_states[-1]
                q = q + qd * (now - stamp) * 1e-9
            message = wire.encode_joint_state(JOINTS, q, qd, [0.0, 0.0], now)
            message.header.frame_id = "flood"
            flood.publish(message)
            sent += 1
            time.sleep(max(0.0, start + sent / flood_hz - time.monotonic()))
        end = time.monotonic()
        time.sleep(0.2)
    during = [t for t in commands.times if start <= t <= end]
    bound = commands_per_period * RATE_HZ * (end - start) + 2
    assert len(during) <= bound, (len(during), bound)
    if wild:   # the first impossible state: the fallback and IMPLAUSIBLE_STATE, then no trial runs
        assert [r.status for r in records.items] == [wire.TrialStatus.IMPLAUSIBLE_STATE]
        assert len(during) <= 2 and controller.faults["implausible_state"] >= 1
        np.testing.assert_array_equal(commands.commands[-1], [0.0, 0.0])
    elif trigger == "joint_state":   # it steps on the flood's states (more than a timer would)
        assert len(during) > RATE_HZ * (end - start), (len(during), RATE_HZ * (end - start))
        assert controller.faults["implausible_state"] == 0
    assert commands.violations == []
    kind = ("random poses beyond the limits, |qd| ~ 30 rad/s, 10% NaN" if wild
            else "sim_robot's state carried forward")
    note(f"joint_states flooded at 10x the rate for 2 s ({kind}), realtime_trigger {trigger}",
         states_sent=sent, commands_during=len(during), bound=int(bound),
         violations=len(commands.violations),
         rejected_states=controller.faults["rejected_state"],
         trial=records.items[0].status.name if records.items else "running")


# ---------------------------------------------------------------- killed and restarted nodes
def reset_estop(client, timeout=30.0):
    """Call ~/reset_estop until a live server clears the latch (a killed server may linger
    in the graph for a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.wait_for_service(timeout_sec=1.0):
            try:
                response = client.call(Trigger.Request(), timeout_sec=2.0)
            except TimeoutError:       # the request went to the killed server
                continue
            if response is not None and response.success:
                return response
        time.sleep(0.1)
    raise TimeoutError("~/reset_estop did not succeed")


def wait_for_line(nodes, name, index, text, timeout=30.0):
    wait_until(lambda: text in nodes.log(name, index), timeout=timeout, what=f"{text!r} in {name}.{index}")


@pytest.mark.timeout(150)
def test_killed_and_restarted_trainer_and_controller_recover(ros_context, tmp_path):
    """All five nodes as processes; lqr_controller starts with the e-stop latched (as on
    hardware), which also lets the probe hold the run until it sees every request. The
    trainer is killed (SIGKILL) at its first sample trial and restarted: the new run starts
    over and drives the same controller, collector and fitter. Then the controller is killed
    at the new run's first sample trial and restarted: it comes up latched (the trainer
    pauses; the interrupted trial counts as stopped by the e-stop, or as one failed attempt if
    the controller took longer than trial_timeout_s to come back), gets the controllers from
    the transient-local topic, and after the reset the interrupted trial is requested again
    and the run finishes."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=2)
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(f"/**:\n  ros__parameters:\n    experiment_config: {experiment}\n"
                         f"lqr_controller:\n  ros__parameters:\n    estop_latched_at_start: true\n"
                         f"gps_trainer:\n  ros__parameters:\n    output_dir: {tmp_path / 'out'}\n    iterations: 2\n"
                         f"    trial_timeout_s: 4.0\n    max_attempts: 5\n    dynamics_timeout_s: 20.0\n")
    nodes = NodeProcesses(tmp_path, [SIM_CONFIG, overrides])
    probe = create_probe(ros_context)
    commands = CommandProbe(probe)
    requests = Recorder(wire.decode_trial_request)
    # A trainer's requests reach the probe only once its publisher has matched the probe's
    # subscription: count the matches instead of hoping a sleep was long enough.
    publishers_matched = []
    observe_trial_goals(probe, requests,
                              event_callbacks=SubscriptionEventCallbacks(
                                  matched=lambda info: publishers_matched.append(info.current_count_change)))
    estop = probe.create_publisher(Bool, wire.ESTOP_TOPIC, wire.ESTOP_QOS)
    reset = probe.create_client(Trigger, "/lqr_controller/reset_estop")
    samples_from = lambda first: [r for r in requests.items[first:] if r.purpose == "sample"]
    trainers_matched = lambda: sum(change for change in publishers_matched if change > 0)
    try:
        with spinning(ros_context, [probe]):
            for name in ("sim_robot", "sample_collector", "dynamics_fitter", "lqr_controller", "gps_trainer"):
                nodes.start(name)
            wait_for_line(nodes, "gps_trainer", 0, "paused: the e-stop is latched", timeout=60)
            wait_until(lambda: trainers_matched() >= 1, timeout=30, what="the probe matching the trainer")
            reset_estop(reset)
            # 1. the trainer, at its first sample trial (iteration 1 of 2)
            assert requests.wait_for(lambda items: samples_from(0), timeout=60), nodes.report()
            assert nodes.processes["gps_trainer"].poll() is None, nodes.report()
            nodes.kill("gps_trainer")
            killed_trainer = time.monotonic()
            (tmp_path / "out").rename(tmp_path / "out_killed")
            estop.publish(Bool(data=True))         # hold the new run until the probe sees it
            estop.publish(Bool(data=False))
            first = len(requests.items)
            trainer = nodes.start("gps_trainer")
            wait_for_line(nodes, "gps_trainer", 1, "paused: the e-stop is latched", timeout=60)
            wait_until(lambda: trainers_matched() >= 2, timeout=30, what="the probe matching the new trainer")
            reset_estop(reset)
            # 2. the controller, at the new run's first sample trial
            assert requests.wait_for(lambda items: samples_from(first), timeout=60), nodes.report()
            trainer_resumed = time.monotonic() - killed_trainer
            pauses = lambda: nodes.log("gps_trainer", 1).count("paused: the e-stop is latched")
            paused_before = pauses()
            estops_before = nodes.log("gps_trainer", 1).count("stopped by the e-stop")
            nodes.kill("lqr_controller")
            killed_controller = time.monotonic()
            nodes.start("lqr_controller")           # comes up latched
            wait_for_line(nodes, "lqr_controller", 1, "(latched: call ~/reset_estop)", timeout=60)
            # The interrupted trial ends as stopped by the e-stop (the latch heard within
            # trial_timeout_s) or as one failed attempt; either way the trainer then pauses.
            wait_until(lambda: pauses() > paused_before, timeout=30,
                       what="gps_trainer pausing on the restarted controller's latch")
            reset_estop(reset)
            code = trainer.wait(timeout=90)
            finished = time.monotonic() - killed_controller
    finally:
        nodes.stop_all()
    assert code == 0, nodes.report()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2] and rows[2]["rollouts"] == 4
    assert "training stopped" not in nodes.log("gps_trainer", 1)
    assert commands.violations == []
    stopped = nodes.log("gps_trainer", 1).count("stopped by the e-stop") > estops_before
    note("gps_trainer killed (SIGKILL) at its first sample trial, restarted", outcome="a new run from iteration 0 "
         "on the same controller, collector and fitter", first_sample_request_after_kill_s=round(trainer_resumed, 1))
    note("lqr_controller killed (SIGKILL) at the new run's first sample trial, restarted (estop_latched_at_start)",
         outcome="the controller came up latched, the trainer paused (the interrupted trial: "
         f"{'stopped by the e-stop' if stopped else 'one failed attempt'}); after the reset it "
         f"was requested again; exit code {code}",
         finished_after_kill_s=round(finished, 1), commands_checked=len(commands.commands),
         violations=len(commands.violations))


# ---------------------------------------------------------------- the e-stop
@pytest.mark.timeout(120)
def test_estop_latches_within_a_period_pauses_the_trainer_and_only_reset_clears_it(ros_context, tmp_path):
    """The whole graph in realtime at 20 Hz. A True on gps/estop mid-trial: one zero command
    within a control period, the trial aborted (ESTOP), silence, the trainer paused. A False
    does not clear it; ~/reset_estop is refused while the input says stop and clears it
    after; the trainer then requests the aborted trial again (same noise) and finishes with
    each rollout accepted exactly once."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=20, N=2)
    config = load_experiment(experiment)
    common = dict(experiment_config=str(experiment))
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(mode="realtime", control_rate_hz=RATE_HZ))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        **common, mode="realtime", reset_mode="sim_service", watchdog_periods=10))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(**common, period_tolerance=0.9))
    fitter = DynamicsFitterNode(context=ros_context, parameter_overrides=parameters(**common))
    trainer = GpsTrainerNode(context=ros_context, parameter_overrides=parameters(
        **common, output_dir=str(tmp_path / "out"), iterations=1, trial_timeout_s=10.0, max_attempts=5,
        discovery_timeout_s=30.0), log=io.StringIO())
    probe = create_probe(ros_context)
    commands = CommandProbe(probe)
    requests = Recorder(wire.decode_trial_request)
    observe_trial_goals(probe, requests)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    estop = probe.create_publisher(Bool, wire.ESTOP_TOPIC, wire.ESTOP_QOS)
    reset = probe.create_client(Trigger, "/lqr_controller/reset_estop")
    with spinning(ros_context, [sim, controller, collector, fitter, trainer, probe]):
        wait_until(lambda: estop.get_subscription_count() and reset.service_is_ready(), timeout=30, what="discovery")
        assert requests.wait_for(lambda items: any(r.purpose == "sample" for r in items), timeout=40)
        aborted = [r for r in requests.items if r.purpose == "sample"][0]
        assert commands.wait_for_count(len(commands.commands) + 5, timeout=10)   # mid-trial
        sent_at = time.monotonic()
        estop.publish(Bool(data=True))
        wait_until(lambda: controller.estop_latched, timeout=5, what="the latch")
        wait_until(lambda: commands.times[-1] >= sent_at and np.all(commands.commands[-1] == 0), timeout=5,
                   what="the zero command")
        zero_latency = commands.times[-1] - sent_at
        wait_until(lambda: trainer.paused, timeout=10, what="the trainer pausing")
        count, requested = len(commands.commands), len(requests.items)
        time.sleep(0.5)
        estop.publish(Bool(data=False))                                 # a False does not clear the latch
        time.sleep(0.5)
        silent = len(commands.commands) == count
        assert controller.estop_latched and trainer.paused and silent
        assert len(requests.items) == requested                         # nothing requested while paused
        estop.publish(Bool(data=True))                                  # pressed again: reset is refused
        wait_until(lambda: controller._estop_input, what="the input")
        refused = reset.call(Trigger.Request(), timeout_sec=5.0)
        estop.publish(Bool(data=False))
        wait_until(lambda: not controller._estop_input, what="the release")
        cleared = reset.call(Trigger.Request(), timeout_sec=5.0)
        assert trainer.finished.wait(60), trainer.log.getvalue()
    assert zero_latency <= PERIOD_S + 0.1, zero_latency                  # within a period (+ slack of a shared CPU)
    assert not refused.success and "still says stop" in refused.message
    assert cleared.success and not controller.estop_latched
    assert trainer.exit_code == 0, trainer.error
    assert trainer.estop_aborts >= 1 and commands.violations == []
    by_id = {r.trial_id: r for r in rollouts.items}
    assert by_id[aborted.trial_id].status == wire.TrialStatus.ESTOP
    accepted = [r for r in requests.items if by_id.get(r.trial_id) is not None
                and by_id[r.trial_id].status == wire.TrialStatus.OK]
    kinds = sorted((r.iteration, r.purpose, r.index) for r in accepted)
    assert kinds == [(0, "evaluation", 0), (1, "evaluation", 0), (1, "sample", 0), (1, "sample", 1)]
    retried = [r for r in accepted if (r.purpose, r.index) == (aborted.purpose, aborted.index)][0]
    np.testing.assert_array_equal(retried.noise, aborted.noise)
    np.testing.assert_array_equal(aborted.noise, rollout_noise(config.seed, 1, 0, aborted.index, config.T, 2,
                                                               config.exploration.smoothing,
                                                               config.exploration.renormalize))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1] and rows[1]["rollouts"] == 2
    note("e-stop True mid-trial (realtime, 20 Hz), False, reset while pressed, release, reset",
         zero_command_after_s=round(zero_latency, 3), record="ESTOP", trainer="paused, no request while latched",
         false_clears=False, reset_while_pressed=refused.message, reset_after_release=cleared.message,
         trainer_exit=trainer.exit_code, accepted_rollouts=len(accepted), estop_aborts=trainer.estop_aborts)
