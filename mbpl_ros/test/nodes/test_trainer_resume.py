"""gps_trainer's checkpoints (mbpl_ros.checkpoint's format) and `resume`: the lockstep graph
in one process, run for 2 iterations, then resumed to 3; and the trainer alone restarted
mid-iteration while the rest of the graph runs on, continuing exactly as an uninterrupted run."""
import io
import json
import re
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from loop_helpers import (REPO, Recorder, create_probe, observe_trial_goals, parameters,
                          small_experiment, spinning)
from mbpl_ros import sim_runner
from mbpl_ros.checkpoint import Checkpoint, experiment_identity, read_checkpoint, write_checkpoint
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import graph, wire
from mbpl_ros.nodes.gps_trainer import GpsTrainerNode

SIM_CONFIG = REPO / "config" / "sim_reacher_2link.yaml"


def rows_of(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def without_wall_time(rows):
    return [{key: value for key, value in row.items() if key != "wall_s"} for row in rows]


def run(experiment, output, log, **trainer):
    """The whole graph of config/sim_reacher_2link.yaml (lockstep) on `experiment`, in one process."""
    from mbpl_ros import sim_runner

    overrides = {spec.name: {"experiment_config": str(experiment)} for spec in graph.nodes(with_sim=True)}
    overrides["gps_trainer"].update(output_dir=str(output), **trainer)
    return sim_runner.run_graph(SIM_CONFIG, overrides, log=log, timeout_s=100)


@pytest.mark.timeout(150)
def test_a_resumed_graph_run_continues_from_its_checkpoint(tmp_path):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=2, T=20, N=3)
    config = load_experiment(experiment)
    output = tmp_path / "out"
    run(experiment, output, io.StringIO(), iterations=2)
    first = rows_of(output)
    assert [row["iteration"] for row in first] == [0, 1, 2]
    # The offline trainer's checkpoint format, with its integrity checks (no "format version 0").
    checkpoint = read_checkpoint(output / "checkpoint_0002.pkl", experiment_identity(config, config.seed))
    assert checkpoint.iteration == 2 and checkpoint.rollouts_total == 2 * 2 * 3 and checkpoint.metrics == first
    assert set(checkpoint.extra) == {"next_trial_id"}
    assert len(checkpoint.algorithm.controllers) == 2

    # A recording cut short blocks the resume, naming the file and what is missing; restored,
    # it goes on.
    recording = output / "rollouts.mcap"
    intact = recording.read_bytes()
    recording.write_bytes(intact[:len(intact) // 3])
    with pytest.raises(sim_runner.GraphError, match=re.escape(
            f"training stopped: resume: {recording}: the checkpoint covers iterations 1-2 "
            "(12 sample rollouts) but the recording holds ")) as refused:
        run(experiment, output, io.StringIO(), iterations=3, resume=True)
    assert "allow_incomplete_recording: true" in str(refused.value)
    assert rows_of(output) == first and not (output / "checkpoint_0003.pkl").exists()
    recording.write_bytes(intact)

    log = io.StringIO()
    metrics = run(experiment, output, log, iterations=3, resume=True)
    resumed = rows_of(output)
    assert metrics == resumed
    assert [row["iteration"] for row in resumed] == [0, 1, 2, 3]
    assert resumed[:3] == first                       # rows 0-2 as written by the first run, wall_s included
    assert resumed[3]["rollouts"] == 3 * 2 * 3 and resumed[3]["wall_s"] > first[2]["wall_s"]
    assert ("resuming from checkpoint_0002.pkl: iteration 2 complete, 12 rollouts; 12 recorded "
            "rollouts kept; continuing at iteration 3") in log.getvalue()
    assert read_checkpoint(output / "checkpoint_0003.pkl").metrics == resumed


def test_a_run_is_neither_overwritten_nor_resumed_from_a_bad_checkpoint(ros_context, tmp_path):
    """Checked before any trial: the trainer stops (exit code 1) naming the file and the problem."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=10, N=2)
    output = tmp_path / "out"
    output.mkdir()
    (output / "checkpoint_0001.pkl").write_bytes(b"\x80\x04old pickle")  # a bare pickle, as written before

    def error_of(**values):
        trainer = GpsTrainerNode(context=ros_context, log=io.StringIO(), parameter_overrides=parameters(
            experiment_config=str(experiment), output_dir=str(output), **values))
        try:
            assert trainer.finished.wait(10)
            assert trainer.exit_code == 1
            return trainer.error
        finally:
            trainer.destroy_node()

    assert re.search(r"already holds a run \(checkpoint_0001.pkl\); set parameter resume: true to "
                     r"continue it",
                     error_of())
    assert re.search(r"cannot be continued: .*checkpoint_0001.pkl: format version 0 not supported", error_of(resume=True))
    assert (output / "checkpoint_0001.pkl").read_bytes() == b"\x80\x04old pickle"   # left as it was
    assert not (output / "metrics.jsonl").exists()
    # A checkpoint of another experiment (another T): named with the keys that differ.
    other = load_experiment(small_experiment(tmp_path / "other.yaml", conditions=1, T=12, N=2))
    (output / "checkpoint_0001.pkl").unlink()
    write_checkpoint(output, Checkpoint(iteration=1, algorithm={}, metrics=[], rollouts_total=2,
                                        elapsed_s=1.0, seed=other.seed,
                                        experiment=experiment_identity(other, other.seed)))
    assert re.search(r"cannot be continued: .*checkpoint_0001.pkl: made for another experiment: "
                     r"config differs in keys T$", error_of(resume=True))
    assert sorted(path.name for path in output.iterdir()) == ["checkpoint_0001.pkl"]  # no writes


# ---------------------------------------------------------------- the trainer alone restarted
class Graph:
    """sim_robot, lqr_controller, sample_collector and dynamics_fitter of the lockstep sim config,
    in this process, kept running while trainers come and go; a probe counts sample requests."""

    def __init__(self, context, experiment):
        self.parameters = {spec.name: {**graph.parameter_overrides(SIM_CONFIG, spec.name),
                                       "experiment_config": str(experiment)}
                           for spec in graph.nodes(with_sim=True)}
        self.nodes = [graph.load_node_class(spec)(context=context, parameter_overrides=graph.as_rclpy_parameters(
            self.parameters[spec.name])) for spec in graph.nodes(with_sim=True) if spec.name != "gps_trainer"]
        self.probe = create_probe(context, "request_probe")
        self.requests = Recorder(wire.decode_trial_request)
        self.stop_at = lambda request: None      # called with each request, as it arrives
        observe_trial_goals(self.probe, self._on_request)

    def _on_request(self, msg):
        self.requests(msg)
        self.stop_at(self.requests.items[-1])

    def trainer(self, context, output, **values):
        return GpsTrainerNode(context=context, log=io.StringIO(), parameter_overrides=graph.as_rclpy_parameters(
            {**self.parameters["gps_trainer"], "output_dir": str(output), **values}))


def spin_trainer(context, trainer):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(trainer)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor, thread


def end_trainer(trainer, executor, thread):
    trainer.stop()
    executor.shutdown(timeout_sec=5.0)
    thread.join(timeout=5.0)
    trainer.destroy_node()


@pytest.mark.timeout(150)
def test_a_trainer_restarted_mid_iteration_resumes_exactly_as_an_uninterrupted_run(ros_context, tmp_path):
    """Run 1 is stopped at the second sample trial of iteration 3, after checkpoint 2 (its
    trial is left running, as after a kill); run 2 resumes with the same fitter, controller and collector running: it
    redoes iteration 3 from its first rollout and ends with the metrics of an uninterrupted
    3-iteration run on a fresh graph (all keys but wall_s)."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=20, N=3)
    with threadpool_limits(limits=1):
        run(experiment, tmp_path / "reference", io.StringIO(), iterations=3)
        reference = rows_of(tmp_path / "reference")
        output = tmp_path / "out"
        nodes = Graph(ros_context, experiment)
        with spinning(ros_context, nodes.nodes + [nodes.probe]):
            trainer = nodes.trainer(ros_context, output, iterations=3)
            # Stopped from the probe's callback, at once: it ends while awaiting that trial's rollout.
            nodes.stop_at = lambda request: (request.purpose, request.iteration, request.index) == ("sample", 3, 1) \
                and trainer.stop()
            running = spin_trainer(ros_context, trainer)
            try:
                assert trainer.finished.wait(60)
                assert trainer.exit_code == 1 and (output / "checkpoint_0002.pkl").is_file()
            finally:
                nodes.stop_at = lambda request: None
                end_trainer(trainer, *running)
            interrupted = rows_of(output)
            before = len(nodes.requests.items)
            trainer = nodes.trainer(ros_context, output, iterations=3, resume=True)
            running = spin_trainer(ros_context, trainer)
            try:
                assert trainer.finished.wait(60)
            finally:
                end_trainer(trainer, *running)
            assert trainer.exit_code == 0, trainer.error
    resumed = rows_of(output)
    assert [row["iteration"] for row in interrupted] == [0, 1, 2]
    assert resumed[:3] == interrupted
    assert without_wall_time(resumed) == without_wall_time(reference)
    again = [(r.purpose, r.iteration, r.index) for r in nodes.requests.items[before:]]
    assert again == [("sample", 3, 0), ("sample", 3, 1), ("sample", 3, 2), ("evaluation", 3, 0)]
    first_ids = [r.trial_id for r in nodes.requests.items[:before]]
    assert min(r.trial_id for r in nodes.requests.items[before:]) > max(first_ids)  # no id used twice
    np.testing.assert_array_equal(nodes.requests.items[before].noise,
                                  [r for r in nodes.requests.items[:before] if r.purpose == "sample"
                                   and r.iteration == 3 and r.index == 0][0].noise)   # the same noise
