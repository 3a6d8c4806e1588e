"""One gps_trainer, several simulated robots (each in a process of its own, real DDS on
loopback): the batch spread over them is the one a single robot collects, in lockstep to
1e-9, and a robot killed mid-iteration loses its trial to the other without changing the run."""
import io
import re
import threading
import time

import numpy as np
import pytest

from loop_helpers import REPO, rows_of, small_experiment
from mbpl_ros.multi_robot import run_robots, start_robots, stop_robots
from mbpl_ros.nodes import graph
from mbpl_ros.recording import read_recording
from test_learning_loop import assert_same_metrics, graph_run

SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"
ITERATIONS = 3


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return small_experiment(tmp_path_factory.mktemp("experiment") / "experiment.yaml",
                            conditions=2, T=20, N=3)


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
    """The one-robot run (not namespaced) of the same experiment and seed."""
    output = tmp_path_factory.mktemp("reference") / "out"
    graph_run(experiment, output, ITERATIONS)
    return output


def overrides_for(experiment, output, **trainer):
    values = {spec.name: {"experiment_config": str(experiment)}
              for spec in graph.nodes(with_sim=True)}   # as --experiment: every node
    values["gps_trainer"].update(output_dir=str(output), iterations=ITERATIONS, **trainer)
    return values


def assert_same_recording(output, reference):
    """Every sample rollout once, in the same order, with the same data."""
    recording, expected = (read_recording(path / "rollouts.mcap") for path in (output, reference))
    assert recording.problem is None
    keys = [(r.iteration, r.condition, r.index) for r in recording.rollouts]
    assert keys == [(r.iteration, r.condition, r.index) for r in expected.rollouts]
    assert len(set(keys)) == len(keys) == ITERATIONS * 2 * 3
    for r, e in zip(recording.rollouts, expected.rollouts):
        np.testing.assert_allclose(r.positions, e.positions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.efforts, e.efforts, rtol=1e-9, atol=1e-12)


@pytest.mark.timeout(240)
def test_lockstep_two_robots_equal_one(experiment, reference, tmp_path):
    log = io.StringIO()
    output = tmp_path / "out"
    rows = run_robots(SIM_CONFIG, 2, overrides_for(experiment, output), log=log, timeout_s=150,
                      log_dir=tmp_path / "robots")
    assert_same_metrics(rows, rows_of(reference))
    assert_same_metrics(rows_of(output), rows_of(reference))
    assert_same_recording(output, reference)
    [line] = [line for line in log.getvalue().splitlines() if line.startswith("trials per robot")]
    counts = [int(part.split()[-1]) for part in line.split(";")[0].split(":")[1].split(",")]
    assert len(counts) == 2 and min(counts) > 0, line      # both robots ran trials


@pytest.mark.timeout(240)
def test_a_robot_killed_mid_iteration_loses_its_trial_to_the_other(experiment, reference,
                                                                  tmp_path):
    output = tmp_path / "out"
    namespaces = graph.robot_namespaces(2)
    overrides = overrides_for(experiment, output, robots=namespaces, trial_timeout_s=5.0,
                              max_attempts=3)
    processes = start_robots(SIM_CONFIG, namespaces, overrides, tmp_path / "robots")
    outcome, log = {}, io.StringIO()

    def train():
        from mbpl_ros.sim_runner import run_graph
        try:
            trainer_overrides = {name: overrides[name] for name in graph.TRAINER_NODES}
            outcome["rows"] = run_graph(SIM_CONFIG, trainer_overrides, log=log,
                                        timeout_s=150,
                                        only=list(graph.TRAINER_NODES))
        except Exception as error:   # reported below
            outcome["error"] = error
    trainer = threading.Thread(target=train)
    try:
        trainer.start()
        deadline = time.monotonic() + 120
        # Iteration 2 under way: rows 0 and 1 are there, and its first trials have begun.
        while not ((output / "metrics.jsonl").exists() and len(rows_of(output)) >= 2):
            assert time.monotonic() < deadline and trainer.is_alive(), outcome
            time.sleep(0.02)
        time.sleep(0.3)
        assert len(rows_of(output)) == 2, "iteration 2 ended before the kill"
        processes["robot_1"].kill()          # its nodes, SIGKILL, by pid
        trainer.join(timeout=180)
        assert not trainer.is_alive()
    finally:
        stop_robots(processes)
        trainer.join(timeout=30)
    assert "error" not in outcome, outcome
    assert_same_metrics(outcome["rows"], rows_of(reference))
    assert_same_recording(output, reference)
    # robot_1 died in a trial: that trial was run again (by robot_0)
    lost = re.search(r"trials lost by a robot and run again: (\d+)", log.getvalue())
    assert lost is not None and int(lost.group(1)) >= 1, log.getvalue()


class Training:
    """The trainer's nodes (run_graph) in a thread over robot processes started here."""

    def __init__(self, experiment, output, tmp_path, **trainer):
        self.namespaces = graph.robot_namespaces(2)
        overrides = overrides_for(experiment, output, robots=self.namespaces, **trainer)
        self.overrides = {name: overrides[name] for name in graph.TRAINER_NODES}
        self.processes = start_robots(SIM_CONFIG, self.namespaces, overrides,
                                      tmp_path / "robots")
        self.output, self.log, self.outcome = output, io.StringIO(), {}
        self.thread = threading.Thread(target=self._train)
        self.thread.start()

    def _train(self):
        from mbpl_ros.sim_runner import run_graph
        try:
            self.outcome["rows"] = run_graph(SIM_CONFIG, self.overrides, log=self.log,
                                             timeout_s=150, only=list(graph.TRAINER_NODES))
        except Exception as error:   # reported by the test
            self.outcome["error"] = error

    def wait_for_rows(self, count, timeout=120):
        deadline = time.monotonic() + timeout
        while not ((self.output / "metrics.jsonl").exists()
                   and len(rows_of(self.output)) >= count):
            assert time.monotonic() < deadline and self.thread.is_alive(), self.outcome
            time.sleep(0.02)

    def finish(self, timeout=180):
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive()
        assert "error" not in self.outcome, self.outcome
        return self.outcome["rows"]

    def close(self):
        stop_robots(self.processes)
        self.thread.join(timeout=30)


@pytest.mark.timeout(240)
def test_one_robots_estop_stops_that_robot_only(experiment, reference, tmp_path, ros_context):
    from std_msgs.msg import Bool

    from loop_helpers import create_probe, spinning

    probe = create_probe(ros_context)
    estop = probe.create_publisher(Bool, "/robot_1/gps/estop", 10)
    latched = []
    probe.create_subscription(Bool, "/robot_1/gps/estop_latched",
                              lambda msg: latched.append(msg.data), wire_latched_qos())
    training = Training(experiment, tmp_path / "out", tmp_path)
    try:
        with spinning(ros_context, [probe]):
            training.wait_for_rows(2)
            time.sleep(0.2)
            estop.publish(Bool(data=True))
            rows = training.finish()
            assert latched and latched[-1] is True     # robot_1 stayed stopped
    finally:
        training.close()
    assert_same_metrics(rows, rows_of(reference))
    assert_same_recording(tmp_path / "out", reference)
    assert "paused" not in training.log.getvalue()       # robot_0 went on: no pause


@pytest.mark.timeout(240)
def test_the_global_estop_stops_every_robot_until_reset(experiment, reference, tmp_path,
                                                       ros_context):
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    from loop_helpers import create_probe, spinning, wait_until

    probe = create_probe(ros_context)
    estop = probe.create_publisher(Bool, "/gps/estop", 10)
    resets = [probe.create_client(Trigger, f"/{ns}/lqr_controller/reset_estop")
              for ns in graph.robot_namespaces(2)]
    training = Training(experiment, tmp_path / "out", tmp_path)
    try:
        with spinning(ros_context, [probe]):
            training.wait_for_rows(2)
            time.sleep(0.2)
            estop.publish(Bool(data=True))
            wait_until(lambda: "paused: every robot" in training.log.getvalue(), timeout=20,
                       what="the trainer paused")
            rows_then = len(rows_of(training.output))
            time.sleep(1.0)
            assert len(rows_of(training.output)) == rows_then   # nothing runs while stopped
            estop.publish(Bool(data=False))
            for client in resets:
                assert client.wait_for_service(timeout_sec=10.0)
                response = client.call(Trigger.Request(), timeout_sec=10.0)
                assert response is not None and response.success, response
            rows = training.finish()
    finally:
        training.close()
    assert_same_metrics(rows, rows_of(reference))
    assert_same_recording(tmp_path / "out", reference)


def wire_latched_qos():
    from mbpl_ros.nodes import wire
    return wire.LATCHED_STATE_QOS
