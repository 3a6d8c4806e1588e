"""Resuming a training run: whatever point the trainer was killed at, `mbpl train --resume`
ends with the same metrics, controllers and recorded rollouts as an uninterrupted run."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

from mbpl_ros import cli
from mbpl_ros.checkpoint import checkpoint_paths, latest_checkpoint, read_checkpoint, read_metrics
from mbpl_ros.config import from_dict
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.offline import TrainingRun
from mbpl_ros.recording import read_recording

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT.parent / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
ITERATIONS = 4
TRIALS = 20


def small_experiment(**changes) -> dict:
    """The reacher with T=20, two conditions × two rollouts, four iterations."""
    data = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    data.update(T=20, rollouts_per_condition=2, iterations=ITERATIONS, seed=3, conditions=data["conditions"][:2])
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(yaml.safe_dump(small_experiment()))
    return path


def train_command(config_file: Path, output: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "mbpl_ros.cli", "train", "--config", str(config_file), "--output", str(output), *extra]


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and how long it computed after its first metrics row (s)."""
    output = tmp_path_factory.mktemp("reference")
    process = subprocess.Popen(train_command(config_file, output), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    first = last = None
    for line in process.stderr:
        if line.startswith("iteration"):
            last = time.monotonic()
            first = first or last
    assert process.wait(timeout=120) == 0
    return output, last - first


def without_wall_time(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "wall_s"} for row in rows]


_parsed: dict = {}


def parsed_run(directory: Path) -> tuple:
    """metrics rows without wall time, checkpoint names, the newest checkpoint, the recording."""
    return (without_wall_time(read_metrics(directory / "metrics.jsonl")),
            [p.name for p in checkpoint_paths(directory)], latest_checkpoint(directory),
            read_recording(directory / "rollouts.mcap"))


def assert_same_run(output: Path, reference: Path) -> None:
    """Identical metrics rows (but wall time), final controllers and their LQR-FLM state,
    bit for bit, and the same recorded rollouts."""
    if reference not in _parsed:
        _parsed[reference] = parsed_run(reference)
    metrics, names, ours, recorded = parsed_run(output)
    expected_metrics, expected_names, theirs, expected = _parsed[reference]
    assert metrics == expected_metrics
    assert names == expected_names
    assert ours.iteration == theirs.iteration == ITERATIONS
    assert ours.rollouts_total == theirs.rollouts_total
    for a, b in zip(ours.algorithm.conditions, theirs.algorithm.conditions):
        for name in ("K", "k", "covar"):
            np.testing.assert_array_equal(getattr(a.controller, name), getattr(b.controller, name))
        assert (a.eta, a.step_mult) == (b.eta, b.step_mult)
        np.testing.assert_array_equal(a.prior.gmm.means, b.prior.gmm.means)
    assert recorded.problem is None and len(recorded.rollouts) == len(expected.rollouts) == ITERATIONS * 4
    for a, b in zip(recorded.rollouts, expected.rollouts):
        assert a.info() == b.info()
        for name in ("positions", "velocities", "efforts", "commands"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not list(output.glob(".*.tmp"))


def test_killing_the_trainer_at_a_random_point_in_20_seeded_trials_always_resumes_identically(
        config_file, reference, tmp_path):
    reference_dir, compute_s = reference
    rng = np.random.default_rng(20240611)
    checkpoints_at_kill = []
    for trial in range(TRIALS):
        output = tmp_path / f"trial{trial:02d}"
        process = subprocess.Popen(train_command(config_file, output), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        try:
            # From the first metrics row on, the run computes: kill it at a uniformly drawn
            # moment of that stretch (or a little after: then only the plot is left).
            for line in process.stderr:
                if line.startswith("iteration"):
                    break
            time.sleep(rng.uniform(0.0, 1.2 * compute_s))
        finally:
            process.kill()      # SIGKILL to the pid we started; not yet reaped, so not reused
            process.wait(timeout=30)
            process.stderr.close()
        checkpoints_at_kill.append(len(checkpoint_paths(output)))
        # `mbpl train --resume`, in this process to spare a second interpreter start per
        # trial: everything it knows of the killed run comes from the files.
        assert cli.main(train_command(config_file, output, "--resume")[3:]) == 0, trial
        assert_same_run(output, reference_dir)
        shutil.rmtree(output)
    # The kills fell throughout the run, not only before or after it.
    interrupted = [n for n in checkpoints_at_kill if n < ITERATIONS]
    assert len(interrupted) >= TRIALS // 4, checkpoints_at_kill
    assert len(set(checkpoints_at_kill)) >= 3, checkpoints_at_kill


def crash_state(reference: Path, output: Path, complete: int) -> None:
    """What a crash during iteration complete + 1 can leave behind, built from a finished
    run: the checkpoints up to `complete`, the next iteration's metrics row with half of
    another after it, a temporary checkpoint cut short, and the recording cut in the
    middle of the next iteration's rollouts (no footer)."""
    shutil.copytree(reference, output)
    for path in checkpoint_paths(output):
        if int(path.stem.split("_")[1]) > complete:
            path.unlink()
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    (output / "metrics.jsonl").write_text("".join(lines[:complete + 2]) + lines[complete + 2][:25])
    partial = (reference / f"checkpoint_{complete + 1:04d}.pkl").read_bytes()
    (output / f".checkpoint_{complete + 1:04d}.pkl.12345.tmp").write_bytes(partial[:len(partial) // 3])
    data = (reference / "rollouts.mcap").read_bytes()
    # The complete file's index says where iteration complete + 1's third rollout ends.
    from mcap.reader import make_reader
    with open(reference / "rollouts.mcap", "rb") as f:
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    third = chunks[complete * 4 + 2]
    (output / "rollouts.mcap").write_bytes(data[:third.chunk_start_offset + third.chunk_length // 2])


@pytest.mark.parametrize("complete", [0, 2])
def test_resume_repairs_what_a_crash_mid_iteration_leaves(config_file, reference, tmp_path, complete):
    output = tmp_path / "run"
    crash_state(reference[0], output, complete)
    before = read_recording(output / "rollouts.mcap")
    assert len(before.rollouts) == complete * 4 + 2 and "truncated" in before.problem
    config = from_dict(ExperimentConfig, small_experiment())
    log = io.StringIO()
    with threadpool_limits(limits=1):
        TrainingRun(config, output, seed=3, log=log, record=True).run(ITERATIONS, resume=True)
    if complete:
        assert f"resuming from checkpoint_{complete:04d}.pkl: iteration {complete} complete, " \
               f"{complete * 4} rollouts; {complete * 4} recorded rollouts kept" in log.getvalue()
    assert_same_run(output, reference[0])


def test_resume_with_more_iterations_continues_the_run(config_file, reference, tmp_path):
    config = from_dict(ExperimentConfig, small_experiment())
    with threadpool_limits(limits=1):
        TrainingRun(config, tmp_path, seed=3, log=io.StringIO(), record=True).run(2)
        TrainingRun(config, tmp_path, seed=3, log=io.StringIO(), record=True).run(ITERATIONS, resume=True)
    assert_same_run(tmp_path, reference[0])


def test_mdgps_resume_restores_the_policy_exactly(tmp_path):
    import torch

    data = small_experiment(algorithm="mdgps", policy={"hidden_sizes": [16], "iterations": 40, "batch_size": 32})
    config = from_dict(ExperimentConfig, data)
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        TrainingRun(config, tmp_path / "reference", seed=3, log=io.StringIO()).run(2)
        TrainingRun(config, tmp_path / "resumed", seed=3, log=io.StringIO()).run(1)
        TrainingRun(config, tmp_path / "resumed", seed=3, log=io.StringIO()).run(2, resume=True)
    assert without_wall_time(read_metrics(tmp_path / "resumed" / "metrics.jsonl")) == \
        without_wall_time(read_metrics(tmp_path / "reference" / "metrics.jsonl"))
    ours = read_checkpoint(tmp_path / "resumed" / "checkpoint_0002.pkl").algorithm
    theirs = read_checkpoint(tmp_path / "reference" / "checkpoint_0002.pkl").algorithm
    for a, b in zip(ours.policy.state_dict().values(), theirs.policy.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(ours.policy_covariance, theirs.policy_covariance)
    assert (tmp_path / "resumed" / "policy.pt").is_file()


# ------------------------------------------------------------------------------ the command


def test_train_refuses_a_directory_that_holds_a_run(config_file, reference, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(reference[0], output)
    assert cli.main(["train", "--config", str(config_file), "--output", str(output)]) == 2
    assert f"{output} already holds a run (checkpoint_0004.pkl); pass --resume" in capsys.readouterr().err
    assert (output / "checkpoint_0004.pkl").read_bytes() == (reference[0] / "checkpoint_0004.pkl").read_bytes()


def test_resume_of_another_experiment_is_refused_naming_the_keys(config_file, reference, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(reference[0], output)
    changed = tmp_path / "changed.yaml"
    data = small_experiment(T=25)
    data["cost"]["action"]["weight"] = 0.02
    changed.write_text(yaml.safe_dump(data))
    assert cli.main(["train", "--config", str(changed), "--output", str(output), "--resume"]) == 2
    assert (f"mbpl: cannot resume: {output / 'checkpoint_0004.pkl'}: made for another experiment: "
            "config differs in keys T, cost.action.weight") in capsys.readouterr().err
    assert cli.main(["train", "--config", str(config_file), "--output", str(output), "--resume", "--seed", "4"]) == 2
    assert "config differs in keys run_seed" in capsys.readouterr().err
    assert (output / "checkpoint_0004.pkl").read_bytes() == (reference[0] / "checkpoint_0004.pkl").read_bytes()


def test_resume_from_a_damaged_checkpoint_says_which_and_why(config_file, reference, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(reference[0], output)
    newest = output / "checkpoint_0004.pkl"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert cli.main(["train", "--config", str(config_file), "--output", str(output), "--resume"]) == 2
    error = capsys.readouterr().err
    assert f"mbpl: cannot resume: {newest}: truncated" in error
    assert newest.stat().st_size == 1000  # nothing was overwritten


def test_resume_without_a_checkpoint_starts_from_the_beginning(config_file, reference, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "metrics.jsonl").write_text('{"iteration": 0, "roll')
    with threadpool_limits(limits=1):
        assert cli.main(["train", "--config", str(config_file), "--output", str(output), "--resume"]) == 0
    assert_same_run(output, reference[0])


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_resume_with_a_recording_that_lacks_covered_rollouts_refuses_unless_asked(
        config_file, reference, tmp_path, capsys, damage):
    """The recording is data: a rollouts.mcap cut short (or gone) blocks `--resume`, naming
    the file and the missing rollouts, and nothing changes; --allow-incomplete-recording goes
    on and marks the recording incomplete."""
    output = tmp_path / "run"
    shutil.copytree(reference[0], output)
    recording = output / "rollouts.mcap"
    if damage == "truncated":
        recording.write_bytes(recording.read_bytes()[:recording.stat().st_size // 2])
    else:
        recording.unlink()
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    command = ["train", "--config", str(config_file), "--output", str(output), "--resume"]
    assert cli.main(command) == 2
    error = capsys.readouterr().err
    assert (f"mbpl: {recording}: the checkpoint covers iterations 1-{ITERATIONS} "
            f"({ITERATIONS * 4} sample rollouts) but the recording ") in error
    assert ("does not exist" if damage == "deleted" else "truncated at byte") in error
    assert "missing " in error and "(4, 1, 1)" in error and "--allow-incomplete-recording" in error
    assert "Traceback" not in error
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before     # nothing was touched

    with threadpool_limits(limits=1):
        assert cli.main(command + ["--allow-incomplete-recording"]) == 0
    kept = read_recording(recording)
    missing = kept.run_info["incomplete"]
    assert len(kept.rollouts) + len(missing) == ITERATIONS * 4 and [4, 1, 1] in missing
    present = {(r.iteration, r.condition, r.index) for r in kept.rollouts}
    assert present.isdisjoint(map(tuple, missing))
