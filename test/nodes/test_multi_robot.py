"""One gps_trainer, several simulated robots (each in a process of its own, real DDS on
loopback): the batch spread over them is the one a single robot collects, in lockstep to
1e-9, and a robot killed mid-iteration loses its trial to the other without changing the run."""
import io
import json
import re
import threading
import time

import numpy as np
import pytest

from loop_helpers import REPO, small_experiment
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


def rows_of(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


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
    processes = start_robots(SIM_CONFIG, namespaces, str(experiment), tmp_path / "robots")
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
