"""Nothing is lost when a node dies: each learning node, and the whole `mbpl sim`, killed with
SIGKILL at a random point of an iteration (real processes over loopback) and restarted; the
run then ends with the metrics, controllers, policy and recording of an uninterrupted run.

The kill comes during iteration 3, after a fraction (from random.Random(KILL_SEED + test index))
of the time iteration 2 took, so it is reproducible.
The experiment is a small MDGPS one (the policy, the GMM priors and the trial ids all matter).
"""
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from loop_helpers import REPO, rows_of, small_mdgps_experiment
from mbpl_ros.checkpoint import read_checkpoint
from mbpl_ros.core.policy.deploy import load_exported_policy
from mbpl_ros.recording import read_recording
from test_fault_injection import NodeProcesses
from test_learning_loop import assert_same_metrics, graph_run

SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"
ITERATIONS = 4   # the kill falls in iteration 3; the 4th is a margin for a slow kill
KILL_SEED = 11
NODES = ("sim_robot", "lqr_controller", "sample_collector", "dynamics_fitter", "gps_trainer")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return small_mdgps_experiment(tmp_path_factory.mktemp("experiment") / "experiment.yaml",
                                  conditions=1, T=20, N=3)


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
    """The uninterrupted run: the graph in one process (lockstep)."""
    output = tmp_path_factory.mktemp("reference") / "out"
    graph_run(experiment, output, ITERATIONS)
    return output


def assert_same_run(output, reference):
    """Metrics (but wall_s), the final controllers, the policy and the recording."""
    assert_same_metrics(rows_of(output), rows_of(reference))
    final = f"checkpoint_{ITERATIONS:04d}.pkl"
    actual, expected = read_checkpoint(output / final), read_checkpoint(reference / final)
    for a, e in zip(actual.algorithm.controllers, expected.algorithm.controllers):
        np.testing.assert_allclose(a.K, e.K, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.k, e.k, rtol=1e-9, atol=1e-12)
    recording = read_recording(output / "rollouts.mcap")
    expected_recording = read_recording(reference / "rollouts.mcap")
    assert recording.problem is None
    keys = [(r.iteration, r.condition, r.index) for r in recording.rollouts]
    assert keys == [(r.iteration, r.condition, r.index) for r in expected_recording.rollouts]
    for r, e in zip(recording.rollouts, expected_recording.rollouts):
        np.testing.assert_allclose(r.positions, e.positions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(r.efforts, e.efforts, rtol=1e-9, atol=1e-12)
    policy = load_exported_policy(output / "policy.pt")
    expected_policy = load_exported_policy(reference / "policy.pt")
    X = np.stack([np.concatenate([r.positions[t], r.velocities[t], np.zeros(policy.dX - 4)])
                  for r in expected_recording.rollouts for t in range(0, 20, 5)])
    np.testing.assert_allclose(policy(X), expected_policy(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(policy.action_covariance, expected_policy.action_covariance)


def wait_for_rows(output, count, processes, timeout):
    """Until metrics.jsonl has `count` rows (the run's processes still alive); returns the
    wall time between the last two (s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (output / "metrics.jsonl").exists() and len(rows := rows_of(output)) >= count:
            return rows[count - 1]["wall_s"] - rows[count - 2]["wall_s"]
        for name, process in processes.items():
            assert process.poll() is None, f"{name} ended with {process.returncode}"
        time.sleep(0.05)
    raise TimeoutError(f"no {count} metrics rows within {timeout} s")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("index, victim", list(enumerate(
    ["gps_trainer", "dynamics_fitter", "sample_collector", "lqr_controller"])))
def test_a_node_killed_mid_iteration_and_restarted_changes_nothing(experiment, reference, tmp_path,
                                                                   index, victim):
    output = tmp_path / "out"
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(
        f"/**:\n  ros__parameters:\n    experiment_config: {experiment}\n"
        f"dynamics_fitter:\n  ros__parameters:\n"
        f"    state_file: {output / 'dynamics_fitter.state'}\n"
        f"gps_trainer:\n  ros__parameters:\n    output_dir: {output}\n"
        f"    iterations: {ITERATIONS}\n    trial_timeout_s: 5.0\n    max_attempts: 5\n"
        f"    dynamics_timeout_s: 60.0\n")
    resume = tmp_path / "resume.yaml"   # a file: rcl ranks a node's section of a file above a -p
    resume.write_text("gps_trainer:\n  ros__parameters:\n    resume: true\n")
    nodes = NodeProcesses(tmp_path, [SIM_CONFIG, overrides])
    fraction = random.Random(KILL_SEED + index).uniform(0.0, 0.9)
    try:
        for name in NODES:
            nodes.start(name)
        # Rows 0-2 are there: iteration 3 runs, for about as long as iteration 2 took (the
        # first one imports torch and compiles the exported policy: longer).
        delay = fraction * wait_for_rows(output, 3, nodes.processes, timeout=120)
        time.sleep(delay)
        assert nodes.processes["gps_trainer"].poll() is None, nodes.report()
        nodes.kill(victim)
        nodes.start(victim, *(["--params-file", str(resume)] if victim == "gps_trainer" else []))
        trainer = nodes.processes["gps_trainer"]
        try:
            trainer.wait(timeout=150)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish after {victim} was killed {delay:.2f} s into "
                        "iteration 3\n" + nodes.report())
        assert trainer.returncode == 0, nodes.report()
    finally:
        nodes.stop_all()
    assert_same_run(output, reference)


@pytest.mark.timeout(240)
def test_mbpl_sim_killed_mid_iteration_and_resumed_changes_nothing(experiment, reference,
                                                                    tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "mbpl_ros.sim_runner", "--config", str(SIM_CONFIG),
               "--experiment", str(experiment), "--output", str(output),
               "--iterations", str(ITERATIONS)]
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fraction = random.Random(KILL_SEED + 4).uniform(0.0, 0.9)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        time.sleep(fraction * wait_for_rows(output, 3, {"mbpl sim": first}, timeout=120))
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=10)
    assert len(rows_of(output)) < ITERATIONS + 1      # killed before the end
    second = subprocess.run(command + ["--resume"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=150)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from checkpoint_" in second.stderr
    assert_same_run(output, reference)
