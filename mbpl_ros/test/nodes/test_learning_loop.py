"""The learning loop over real DDS: collector checks, the trial protocol, the whole graph in
one process (learning, and the same numbers as offline) and in separate processes."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from rclpy.context import Context
from sensor_msgs.msg import JointState
from threadpoolctl import threadpool_limits

import rclpy
from loop_helpers import (REPO, Recorder, TrialGoalSender, create_probe, parameters,
                          small_experiment, small_mdgps_experiment, spinning, wait_until)
from mbpl_ros.core.dynamics import fit_dynamics
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros_interfaces.action import RunTrial
from rclpy.action import ActionServer
from mbpl_ros.nodes.gps_trainer import GpsTrainerNode
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.nodes.sample_collector import SampleCollectorNode
from mbpl_ros.nodes.sim_robot import SimRobotNode
from mbpl_ros.offline import TrainingRun
from mbpl_ros.recording import read_recording
from mbpl_ros.sim.arm import Arm
from mbpl_ros.core.controller import rollout_noise
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.sim.rollout import run_rollout

PERIOD_NS = 50_000_000
SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"


# ---------------------------------------------------------------- sample_collector
def _record(stamps_ns, commands, trial_id=1, target=(0.2, 0.3, 0.0)):
    return wire.encode_trial_record(wire.TrialRecord(
        trial_id=trial_id, condition=0, iteration=1, index=0, controller_version=0, purpose="sample",
        status=wire.TrialStatus.OK, target=np.array(target), state_stamps=wire.stamps_to_pairs(stamps_ns),
        commands=np.asarray(commands, float)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, status", [
    ("complete", wire.TrialStatus.OK), ("gap", wire.TrialStatus.GAP), ("stale", wire.TrialStatus.STALE),
    ("nan_state", wire.TrialStatus.NON_FINITE), ("missing", wire.TrialStatus.MISSING_STATE),
    ("absurd_position", wire.TrialStatus.IMPLAUSIBLE_STATE),
    ("absurd_velocity", wire.TrialStatus.IMPLAUSIBLE_STATE),
    ("impossible_step", wire.TrialStatus.IMPLAUSIBLE_STATE),
    ("future_stamp", wire.TrialStatus.MISSING_STATE),
])
def test_collector_builds_the_state_by_kinematics_and_flags_bad_rollouts(ros_context, case, status):
    T = 6
    rng = np.random.default_rng(0)
    # a path an arm can take (0.3 rad per step at most)
    q = rng.uniform(-1, 1, size=2) + np.cumsum(rng.uniform(-0.3, 0.3, size=(T, 2)), axis=0)
    qd = rng.uniform(-1, 1, size=(T, 2))
    stamps = 10 ** 18 + PERIOD_NS * np.arange(T)          # wall-clock sized stamps
    commands = rng.uniform(-3, 3, size=(T, 2))            # beyond the limits (2, 1) N·m: clamped
    published = list(range(T))
    if case == "gap":
        stamps[3:] += PERIOD_NS                            # two periods between steps 2 and 3
    elif case == "stale":
        stamps[4] = stamps[3]                              # step 4 reused step 3's state
        published.remove(4)
    elif case == "nan_state":
        q[2, 1] = np.nan
    elif case == "missing":
        published.remove(5)
    elif case == "absurd_position":                        # the glitching encoder of issue 13
        q[2, 0] = 1e6
    elif case == "absurd_velocity":
        qd[4, 1] = 1e300
    elif case == "impossible_step":
        q[3:, 1] += 1.5                          # 1.5 rad in 0.05 s: 2 x 10 rad/s allows 1.01
    elif case == "future_stamp":                 # ahead of the collector's clock: not kept
        stamps = time.time_ns() + 10 ** 9 + PERIOD_NS * np.arange(T)
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(assembly_timeout_s=0.3))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    states = probe.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 100)
    records = probe.create_publisher(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC, wire.EVENTS_QOS)
    with spinning(ros_context, [collector, probe]):
        wait_until(lambda: states.get_subscription_count() and records.get_subscription_count()
                   and probe.count_publishers(wire.ROLLOUTS_TOPIC), what="discovery")
        for t in published:
            states.publish(wire.encode_joint_state(["elbow", "shoulder"], q[t, ::-1], qd[t, ::-1], [0, 0], int(stamps[t])))
        records.publish(_record(stamps, commands, trial_id=77))
        assert rollouts.wait_for(lambda items: items)
    rollout = rollouts.items[0]
    assert (rollout.trial_id, rollout.status) == (77, status)
    assert collector.rejected_stamps == (T if case == "future_stamp" else 0)
    if status != wire.TrialStatus.OK:
        assert rollout.X.shape == (0, 10) and collector.published == {status.name: 1}
        return
    with JointStateToState("reacher_2link") as state_of:  # names were reordered; x by FK + Jacobian
        expected = np.stack([state_of(q[t], qd[t], [0.2, 0.3, 0.0]) for t in range(T)])
        np.testing.assert_array_equal(rollout.X, expected)
        J = state_of.model.jacobian(q[1])
        np.testing.assert_allclose(rollout.X[1, 7:10], J @ qd[1], rtol=1e-12)
    np.testing.assert_array_equal(rollout.U, np.clip(commands, [-2.0, -1.0], [2.0, 1.0]))


# ---------------------------------------------------------------- the trial protocol (trainer side)
class FakeRobot:
    """Plays lqr_controller + sample_collector + dynamics_fitter for gps_trainer: answers each
    RunTrial goal by `behaviours` (in order; then "ok"), with rollouts of the offline arm."""

    def __init__(self, context, config, behaviours):
        self.node = create_probe(context, "fake_robot")
        self.config, self.behaviours = config, list(behaviours)
        self.arm = Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps)
        self.controllers, self.requests, self.batch = {}, [], {}
        self.rollouts = self.node.create_publisher(interfaces.Rollout, wire.ROLLOUTS_TOPIC, wire.EVENTS_QOS)
        self.dynamics = self.node.create_publisher(interfaces.LinearGaussianDynamics, wire.DYNAMICS_TOPIC, wire.EVENTS_QOS)
        self.node.create_subscription(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, self._on_controller,
                                      wire.CONTROLLERS_QOS)
        ActionServer(self.node, RunTrial, wire.RUN_TRIAL_ACTION, self._execute)

    def _execute(self, goal_handle):
        self._on_request(goal_handle.request)
        goal_handle.succeed()
        return RunTrial.Result()

    def _on_controller(self, msg):
        message = wire.decode_controller(msg)
        self.controllers[(message.condition, message.version)] = message.controller

    def _on_request(self, msg):
        request = wire.decode_trial_request(msg)
        self.requests.append(request)
        behaviour = self.behaviours.pop(0) if self.behaviours else "ok"
        if behaviour == "silent":
            return
        controller = self.controllers[(request.condition, request.controller_version)]
        X, U = run_rollout(self.arm, self.config.layout, lambda t, x: controller.act(t, x, request.noise[t]),
                           request.initial_positions, request.target, request.T)
        if behaviour == "wrong_id_first":  # a result of another trial, with data that would ruin learning
            self._publish(request, wire.TrialStatus.OK, X * 0 + 1e6, U, trial_id=request.trial_id + 1000)
        if behaviour == "dropped":
            self._publish(request, wire.TrialStatus.GAP, np.zeros((0, X.shape[1])), np.zeros((0, U.shape[1])))
            return
        self._publish(request, wire.TrialStatus.OK, X, U)
        if request.purpose == "sample":
            batch = self.batch.setdefault((request.condition, request.controller_version), {})
            batch[request.index] = (request.trial_id, X, U)
            if len(batch) == self.config.rollouts_per_condition:
                ids, Xs, Us = zip(*(batch[n] for n in sorted(batch)))
                self.dynamics.publish(wire.encode_dynamics(wire.DynamicsMessage(
                    request.condition, request.controller_version, ids, True,
                    fit_dynamics(np.stack(Xs), np.stack(Us), regularization=1e-6))))

    def _publish(self, request, status, X, U, trial_id=None):
        self.rollouts.publish(wire.encode_rollout(wire.RolloutMessage(
            trial_id=request.trial_id if trial_id is None else trial_id, condition=request.condition,
            iteration=request.iteration, index=request.index, controller_version=request.controller_version,
            purpose=request.purpose, status=status, X=X, U=U)))

    def destroy_node(self):
        self.arm.close()
        self.node.destroy_node()


def _trainer(context, experiment, output, **overrides):
    values = dict(experiment_config=str(experiment), output_dir=str(output), iterations=1,
                  trial_timeout_s=0.5, max_attempts=3, discovery_timeout_s=20.0)
    values.update(overrides)
    return GpsTrainerNode(context=context, parameter_overrides=parameters(**values), log=io.StringIO())


@pytest.mark.timeout(90)
def test_trainer_ignores_wrong_ids_and_retries_dropped_and_silent_trials(ros_context, tmp_path):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=2)
    config = load_experiment(experiment)
    # requests: evaluation 0, sample 0 (wrong id first), sample 1 (dropped, then silent, then ok), evaluation 1
    robot = FakeRobot(ros_context, config, ["ok", "wrong_id_first", "dropped", "silent", "ok"])
    trainer = _trainer(ros_context, experiment, tmp_path / "out")
    with spinning(ros_context, [trainer, robot]):
        assert trainer.finished.wait(60)
    assert trainer.exit_code == 0, trainer.error
    assert trainer.ignored_results == 1
    kinds = [(r.purpose, r.index) for r in robot.requests]
    assert kinds == [("evaluation", 0), ("sample", 0), ("sample", 1), ("sample", 1), ("sample", 1), ("evaluation", 0)]
    ids = [r.trial_id for r in robot.requests]
    assert len(set(ids)) == len(ids)                                    # a retry is a new trial id
    np.testing.assert_array_equal(robot.requests[2].noise, robot.requests[4].noise)  # ... with the same noise
    np.testing.assert_array_equal(robot.requests[2].noise, rollout_noise(config.seed, 1, 0, 1, 10, 2, 2.0, True))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1] and rows[1]["rollouts"] == 2
    assert np.isfinite(rows[1]["mean_cost"]) and max(rows[1]["final_distance_m"]) < 1.0  # not the 1e6 data
    assert (tmp_path / "out" / "checkpoint_0001.pkl").is_file() and (tmp_path / "out" / "learning_curve.png").is_file()


@pytest.mark.timeout(60)
def test_trainer_stops_with_a_clear_message_after_max_attempts(ros_context, tmp_path):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=2)
    robot = FakeRobot(ros_context, load_experiment(experiment), ["silent"] * 10)
    trainer = _trainer(ros_context, experiment, tmp_path / "out", trial_timeout_s=0.3, max_attempts=2)
    with spinning(ros_context, [trainer, robot]):
        assert trainer.finished.wait(30)
    assert trainer.exit_code == 1
    assert "iteration 0, condition 0, evaluation 0: no valid rollout in 2 attempts" in trainer.error
    assert "no rollout within trial_timeout_s=0.3 s" in trainer.error
    assert len(robot.requests) == 2


# ---------------------------------------------------------------- the whole graph, one process
def graph_run(experiment, output, iterations, log=None):
    """`mbpl sim`'s graph (config/sim_reacher_2link.yaml, lockstep) on `experiment`, in one
    process."""
    from mbpl_ros import sim_runner
    from mbpl_ros.nodes import graph

    overrides = {spec.name: {"experiment_config": str(experiment)}
                 for spec in graph.nodes(with_sim=True)}
    overrides["gps_trainer"].update(output_dir=str(output), iterations=iterations)
    return sim_runner.run_graph(SIM_CONFIG, overrides, log=log, timeout_s=150)


def offline_run(experiment, output, iterations):
    """`mbpl train` (the same training loop over the in-process arm) on `experiment`."""
    import torch

    config = load_experiment(experiment)
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        run = TrainingRun(config, output, config.seed, log=io.StringIO(), record=True)
        return run.run(iterations)


def assert_same_metrics(rows, reference, rtol=1e-9):
    """Every metrics value but wall_s within rtol (relative; 1e-12 absolute for ~0 values)."""
    assert len(rows) == len(reference)
    for row, expected in zip(rows, reference):
        assert set(row) == set(expected)
        for key in sorted(set(row) - {"wall_s"}):
            if expected[key] is None:
                assert row[key] is None, key
            else:
                np.testing.assert_allclose(row[key], expected[key], rtol=rtol, atol=1e-12,
                                           err_msg=key)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algorithm", ["lqr_flm", "mdgps", "mdgps_on_policy"])
def test_three_lockstep_iterations_of_the_graph_reproduce_mbpl_train(tmp_path, algorithm):
    """The graph (trials through lqr_controller, sample_collector, dynamics_fitter over DDS)
    and `mbpl train` run the one training loop: the same metrics, recordings and policy.
    mdgps_on_policy: iterations 2 and 3 are sampled by lqr_controller's policy executor."""
    if algorithm == "lqr_flm":
        experiment = small_experiment(tmp_path / "experiment.yaml", conditions=2, T=20, N=3)
    else:
        on_policy = algorithm == "mdgps_on_policy"
        experiment = small_mdgps_experiment(tmp_path / "experiment.yaml", conditions=2, T=20, N=3,
                                            policy={"sample_on_policy": on_policy})
    reference = offline_run(experiment, tmp_path / "offline", iterations=3)
    rows = graph_run(experiment, tmp_path / "graph", iterations=3)
    lines = (tmp_path / "graph" / "metrics.jsonl").read_text().splitlines()
    assert rows == [json.loads(line) for line in lines]
    assert [row["iteration"] for row in rows] == [0, 1, 2, 3] and rows[3]["rollouts"] == 3 * 2 * 3
    assert_same_metrics(rows, reference)
    initial = np.mean(rows[0]["final_distance_m"])
    reached = [np.mean(row["final_distance_m"]) for row in rows[1:]]
    if algorithm == "lqr_flm":
        assert reached[-1] < 0.7 * initial, (initial, reached)
    elif algorithm == "mdgps":
        # Its C-steps are anchored to a policy of 60 Adam steps on 2 conditions, so the
        # controllers need not improve at every one of 3 iterations: at one of them.
        assert min(reached) < 0.7 * initial, (initial, reached)
    # mdgps_on_policy: sampling from an untrained policy need not learn yet.
    assert (tmp_path / "graph" / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "graph" / "checkpoint_0003.pkl").is_file()
    graph_recording = read_recording(tmp_path / "graph" / "rollouts.mcap")
    offline_recording = read_recording(tmp_path / "offline" / "rollouts.mcap")
    assert graph_recording.problem is None and len(graph_recording.rollouts) == 3 * 2 * 3
    for recorded, expected in zip(graph_recording.rollouts, offline_recording.rollouts):
        assert (recorded.iteration, recorded.condition, recorded.index) == \
            (expected.iteration, expected.condition, expected.index)
        np.testing.assert_allclose(recorded.positions, expected.positions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(recorded.efforts, expected.efforts, rtol=1e-9, atol=1e-12)
    if algorithm != "lqr_flm":
        from mbpl_ros.core.policy.deploy import load_exported_policy

        assert rows[3]["policy_final_distance_m"] is not None
        assert rows[0]["policy_final_distance_m"] is None
        graph_policy = load_exported_policy(tmp_path / "graph" / "policy.pt")
        offline_policy = load_exported_policy(tmp_path / "offline" / "policy.pt")
        assert graph_policy.metadata["extra"]["iterations"] == 3
        states = np.stack([r.positions for r in offline_recording.rollouts])   # any states will do
        X = np.zeros((states.shape[0] * states.shape[1], graph_policy.dX))
        X[:, :2] = states.reshape(-1, 2)
        np.testing.assert_allclose(graph_policy(X), offline_policy(X), rtol=1e-6, atol=1e-9)

    # Re-fitting offline from the graph's recording replays the run.
    config = load_experiment(experiment)
    if algorithm == "lqr_flm":
        with threadpool_limits(limits=1):
            refit = TrainingRun(config, tmp_path / "refit", config.seed, log=io.StringIO()).refit(
                tmp_path / "graph" / "rollouts.mcap")
        assert_same_metrics(refit, rows)


@pytest.mark.timeout(60)
def test_sim_runner_reports_a_bad_parameter_and_exits_non_zero(tmp_path, capsys):
    from mbpl_ros import sim_runner

    params = tmp_path / "params.yaml"
    params.write_text(SIM_CONFIG.read_text().replace("reset_mode: sim_service", "reset_mode: teleport"))
    assert sim_runner.main(["--config", str(params), "--iterations", "1", "--output", str(tmp_path)]) == 1
    assert "lqr_controller cannot start: parameter 'reset_mode' is 'teleport'; allowed: one of ['pd', 'sim_service']" \
        in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_sim_runner_refuses_nodes_that_run_different_experiments(tmp_path):
    from mbpl_ros import sim_runner

    mdgps = str(REPO / "config" / "reacher_2link_mdgps.yaml")
    overrides = {"lqr_controller": {"experiment_config": mdgps},
                 "gps_trainer": {"output_dir": str(tmp_path / "out")}}
    message = (r"lqr_controller parameter 'experiment_config' is '.*reacher_2link_mdgps.yaml' but "
               r"sim_robot's is '.*reacher_2link.yaml'; allowed: one experiment for every node")
    with pytest.raises(sim_runner.GraphError, match=message):
        sim_runner.run_graph(SIM_CONFIG, overrides)
    overrides = {"sim_robot": {"robot": "panda"},
                 "gps_trainer": {"output_dir": str(tmp_path / "out")}}
    with pytest.raises(sim_runner.GraphError, match=r"sim_robot parameter 'robot' is 'panda'; "
                       r"allowed: the experiment's robot 'reacher_2link'"):
        sim_runner.run_graph(SIM_CONFIG, overrides)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- lqr_controller alone
@pytest.mark.timeout(60)
def test_pd_reset_drives_the_arm_to_the_start_pose_before_the_trial(ros_context, tmp_path):
    """reset_mode pd in lockstep: the trial starts only once the arm is within the tolerances."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=2, T=8, N=1)
    config = load_experiment(experiment)
    common = dict(experiment_config=str(experiment), mode="lockstep")
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(mode="lockstep"))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        **common, reset_mode="pd", pd_natural_frequency=6.0, pd_position_tolerance=0.005,
        pd_velocity_tolerance=0.01))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    controllers = probe.create_publisher(interfaces.LinearGaussianController, wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
    requests = TrialGoalSender(probe)
    spec = config.conditions[1]                     # start (1.5, 0.2); sim_robot starts at home (0, 1.5)
    with Arm(config.robot) as arm:
        initial = config.initial_controllers(arm)[1]
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: requests.get_subscription_count() and controllers.get_subscription_count()
                   and probe.count_publishers(wire.ROLLOUTS_TOPIC), what="discovery")
        controllers.publish(wire.encode_controller(wire.ControllerMessage(1, 0, initial)))
        requests.publish(wire.encode_trial_request(wire.TrialRequest(
            trial_id=5, condition=1, iteration=1, index=0, controller_version=0, executor="controller",
            purpose="evaluation", initial_positions=np.array(spec.initial_positions), target=np.array(spec.target),
            noise=np.zeros((8, 2)))))
        assert rollouts.wait_for(lambda items: items, timeout=30)
    rollout = rollouts.items[0]
    assert rollout.status == wire.TrialStatus.OK and rollout.X.shape == (8, 10)
    assert np.abs(rollout.X[0, :2] - spec.initial_positions).max() <= 0.005
    assert np.abs(rollout.X[0, 2:4]).max() <= 0.01
    assert sim.steps_taken > 8                      # the PD phase took steps before the trial's 8
    np.testing.assert_allclose(rollout.U, np.clip(initial.mean_actions(rollout.X[None])[0], -np.array([2, 1]),
                                                  np.array([2, 1])), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- separate processes
@pytest.mark.timeout(180)
def test_the_nodes_learn_as_separate_processes_over_dds(tmp_path):
    """sim_robot and the four learning nodes as five processes (python -m ...), one iteration."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=2, T=20, N=2)
    output = tmp_path / "out"
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    # A second file: its node sections override the first's (a `-p` would not: rcl ranks a
    # node's section of a file above a process-wide -p).
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(f"/**:\n  ros__parameters:\n    experiment_config: {experiment}\n"
                         f"gps_trainer:\n  ros__parameters:\n    output_dir: {output}\n    iterations: 1\n")
    processes = {}
    try:
        for name in ("sim_robot", "lqr_controller", "sample_collector", "dynamics_fitter", "gps_trainer"):
            command = [sys.executable, "-m", f"mbpl_ros.nodes.{name}", "--ros-args", "--params-file", str(SIM_CONFIG),
                       "--params-file", str(overrides)]
            processes[name] = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True)
        trainer = processes["gps_trainer"]
        try:
            output_text, _ = trainer.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            trainer.kill()
            output_text, _ = trainer.communicate()
        assert trainer.returncode == 0, output_text
    finally:
        for name, process in processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for name, process in processes.items():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1] and rows[1]["rollouts"] == 4
    assert "iteration   1 | rollouts    4" in output_text
    assert all(process.returncode is not None for process in processes.values())


@pytest.mark.timeout(60)
def test_controller_runs_the_exported_torchscript_policy(ros_context, tmp_path):
    torch = pytest.importorskip("torch")
    from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy
    from mbpl_ros.core.policy.network import Policy

    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=8, N=1)
    config = load_experiment(experiment)
    torch.manual_seed(0)
    policy_path = tmp_path / "policy.pt"
    export_torchscript(Policy(config.layout.dX, config.layout.dU, hidden_sizes=(8,)), policy_path)
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(mode="lockstep"))
    controller = LqrControllerNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep", reset_mode="sim_service", policy_path=str(policy_path)))
    collector = SampleCollectorNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    probe = create_probe(ros_context)
    rollouts = Recorder(wire.decode_rollout)
    probe.create_subscription(interfaces.Rollout, wire.ROLLOUTS_TOPIC, rollouts, wire.EVENTS_QOS)
    requests = TrialGoalSender(probe)
    spec = config.conditions[0]
    with spinning(ros_context, [sim, controller, collector, probe]):
        wait_until(lambda: requests.get_subscription_count() and probe.count_publishers(wire.ROLLOUTS_TOPIC)
                   and controller._reset.service_is_ready(), what="discovery")
        requests.publish(wire.encode_trial_request(wire.TrialRequest(
            trial_id=3, condition=0, iteration=0, index=0, controller_version=0, executor="policy",
            purpose="evaluation", initial_positions=np.array(spec.initial_positions), target=np.array(spec.target),
            noise=np.zeros((8, 2)))))
        assert rollouts.wait_for(lambda items: items, timeout=30)
    rollout = rollouts.items[0]
    assert rollout.status == wire.TrialStatus.OK
    np.testing.assert_array_equal(rollout.X[0, :2], spec.initial_positions)   # the sim reset, exactly
    expected = np.clip(load_exported_policy(policy_path)(rollout.X), [-2.0, -1.0], [2.0, 1.0])
    np.testing.assert_allclose(rollout.U, expected, rtol=1e-5, atol=1e-6)  # float32 network: batch vs one


def test_controller_refuses_a_policy_of_other_joints_or_state_layout(ros_context, tmp_path):
    pytest.importorskip("torch")
    from mbpl_ros.core.policy.deploy import export_torchscript
    from mbpl_ros.core.policy.network import Policy
    from mbpl_ros.nodes.common import NodeParameterError

    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=8, N=1)
    policy = Policy(10, 2, hidden_sizes=(4,))
    cases = [(dict(joint_names=["elbow", "shoulder"]),
              r"key joint_names is \['elbow', 'shoulder'\]; allowed: \['shoulder', 'elbow'\]"),
             (dict(extra_metadata={"state_layout": {"n_joints": 2, "n_points": 2}}),
              r"key extra.state_layout is \{'n_joints': 2, 'n_points': 2\}; "
              r"allowed: \{'n_joints': 2, 'n_points': 1\}")]
    for i, (export, message) in enumerate(cases):
        path = tmp_path / f"policy_{i}.pt"
        export_torchscript(policy, path, **export)
        with pytest.raises(NodeParameterError,
                           match=rf"parameter 'policy_path': {re.escape(str(path))}: {message}"):
            LqrControllerNode(context=ros_context, parameter_overrides=parameters(
                experiment_config=str(experiment), policy_path=str(path)))


@pytest.mark.timeout(120)
def test_the_trainer_publishes_its_progress_and_markers(ros_context, tmp_path):
    """A dashboard's view of a graph run: typed progress at every trial and phase (the time
    left included) and markers of the targets and end-effector paths."""
    from mbpl_ros_interfaces.msg import TrainingProgress
    from visualization_msgs.msg import MarkerArray

    from mbpl_ros import sim_runner

    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=2, T=10, N=2)
    probe = create_probe(ros_context)
    progress, markers = Recorder(), Recorder()
    probe.create_subscription(TrainingProgress, wire.PROGRESS_TOPIC, progress, 100)
    probe.create_subscription(MarkerArray, wire.MARKERS_TOPIC, markers, 100)
    overrides = {name: {"experiment_config": str(experiment)} for name in
                 ("sim_robot", "sample_collector", "dynamics_fitter", "lqr_controller")}
    overrides["gps_trainer"] = {"experiment_config": str(experiment), "iterations": 2,
                                "output_dir": str(tmp_path / "out")}
    with spinning(ros_context, [probe]):
        sim_runner.run_graph(SIM_CONFIG, overrides, timeout_s=100)
        wait_until(lambda: progress.items and progress.items[-1].phase == TrainingProgress.PHASE_DONE,
                   timeout=10, what="the final progress message")
    phases = {message.phase for message in progress.items}
    assert {TrainingProgress.PHASE_SAMPLING, TrainingProgress.PHASE_UPDATING,
            TrainingProgress.PHASE_EVALUATING, TrainingProgress.PHASE_DONE} <= phases
    last = progress.items[-1]
    assert (last.iteration, last.iterations, last.algorithm) == (2, 2, "lqr_flm")
    assert len(last.final_distance_m) == 2 and last.rollouts == 8 and last.eta_s == 0.0
    assert any(message.eta_s > 0 for message in progress.items)
    final = markers.items[-1].markers
    assert {(marker.ns, marker.id) for marker in final} == {("targets", 0), ("targets", 1),
                                                            ("paths", 0), ("paths", 1)}
    assert all(len(marker.points) == 10 for marker in final if marker.ns == "paths")


@pytest.mark.timeout(180)
def test_on_a_running_graph_only_the_effort_commands_carry_float64_multiarray(ros_context, tmp_path):
    """While `mbpl sim`'s graph runs, a probe lists the graph's topics and their types: every
    /gps topic is typed, Float64MultiArray is the ros2_control effort command alone, and
    lqr_controller serves the RunTrial action."""
    from rclpy.action import get_action_server_names_and_types_by_node

    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=2)
    probe = create_probe(ros_context, "type_probe")
    seen, servers, done = {}, set(), threading.Event()

    def look():
        while not done.is_set():
            for name, types in probe.get_topic_names_and_types():
                seen.setdefault(name, set()).update(types)
            try:
                servers.update((name, tuple(types)) for name, types in
                               get_action_server_names_and_types_by_node(probe, "lqr_controller", "/"))
            except Exception:   # lqr_controller not (or no longer) in the graph
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=look, daemon=True)
    watcher.start()
    try:
        rows = graph_run(experiment, tmp_path / "graph", iterations=1)
    finally:
        done.set()
        watcher.join(timeout=5)
        probe.destroy_node()
    assert [row["iteration"] for row in rows] == [0, 1]
    multiarray = sorted(name for name, types in seen.items() if "std_msgs/msg/Float64MultiArray" in types)
    assert multiarray == ["/effort_controller/commands"], multiarray
    expected = {"/gps/controllers": "mbpl_ros_interfaces/msg/LinearGaussianController",
                "/gps/trial_records": "mbpl_ros_interfaces/msg/TrialRecord",
                "/gps/rollouts": "mbpl_ros_interfaces/msg/Rollout",
                "/gps/dynamics": "mbpl_ros_interfaces/msg/LinearGaussianDynamics",
                "/gps/progress": "mbpl_ros_interfaces/msg/TrainingProgress"}
    for name, type_name in expected.items():
        assert seen.get(name) == {type_name}, (name, seen.get(name))
    gps = sorted(name for name in seen if name.startswith("/gps/") and "/_action/" not in name)
    assert all(not any(t.startswith("std_msgs/msg/Float64") for t in seen[name]) for name in gps), gps
    assert ("/gps/run_trial", ("mbpl_ros_interfaces/action/RunTrial",)) in servers, servers
