"""Ctrl-C (SIGINT) or SIGTERM in the middle of `mbpl train` and `mbpl sim` (real processes):
exit status 130, no traceback, one line naming what was kept and the command to resume;
that command ends where an uninterrupted run ends. Bad arguments are refused before
anything is written."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mbpl_ros.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PYTHON = (
    str(ROOT.parent / ".venv" / "bin" / "python")
    if (ROOT.parent / ".venv" / "bin" / "python").exists()
    else sys.executable
)
SIM_CONFIG = ROOT / "config" / "sim_reacher_2link.yaml"
ITERATIONS = 4


def environment() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def mbpl(*args: str) -> list[str]:
    return [PYTHON, "-m", "mbpl_ros.cli", *args]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """The reacher with T=20, two conditions × two rollouts, four iterations."""
    data = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    data.update(
        T=20,
        rollouts_per_condition=2,
        iterations=ITERATIONS,
        seed=3,
        conditions=data["conditions"][:2],
    )
    path = tmp_path_factory.mktemp("experiment") / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def without_wall_time(directory: Path) -> list[dict]:
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if key != "wall_s"} for row in rows]


def controllers(directory: Path) -> list:
    checkpoint = read_checkpoint(directory / f"checkpoint_{ITERATIONS:04d}.pkl")
    return [(c.K.tolist(), c.k.tolist()) for c in checkpoint.algorithm.controllers]


def interrupted(command: list[str], cwd: Path, after_line: str, signum: int) -> tuple[int, str]:
    """Run `command`, send `signum` once a stderr line starts with `after_line`; the exit
    status and the whole stderr."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if line.startswith(after_line):
                process.send_signal(signum)
                break
        lines += process.stderr.readlines()
        return process.wait(timeout=60), "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def resumed(stderr: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command of the resume line (`mbpl` as this venv's python -m mbpl_ros.cli)."""
    last = stderr.strip().splitlines()[-1]
    assert "resume with: " in last, stderr
    words = shlex.split(last.split("resume with: ", 1)[1])
    assert words[0] == "mbpl" and "--resume" in words
    return subprocess.run(
        mbpl(*words[1:]), cwd=cwd, env=environment(), capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def train_reference(experiment, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("train_reference") / "run"
    subprocess.run(
        mbpl("train", "--config", str(experiment), "--output", str(output)),
        check=True,
        env=environment(),
        capture_output=True,
        timeout=240,
    )
    return output


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_train_says_how_to_resume_and_the_resumed_run_is_the_same(
    experiment, train_reference, tmp_path, signum
):
    output = tmp_path / "run"
    code, stderr = interrupted(
        mbpl("train", "--config", str(experiment), "--output", str(output)),
        tmp_path,
        "iteration   2",
        signum,
    )
    assert code == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert (
        last.startswith("mbpl train: stopped; iterations 0 .. ") and "is discarded" in last
    ), last
    result = resumed(stderr, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming from checkpoint_" in result.stderr
    assert without_wall_time(output) == without_wall_time(train_reference)
    assert controllers(output) == controllers(train_reference)


@pytest.mark.timeout(400)
def test_a_stopped_sim_says_how_to_resume_and_the_resumed_run_is_the_same(experiment, tmp_path):
    common = ["sim", "--config", str(SIM_CONFIG), "--experiment", str(experiment)]
    reference = tmp_path / "reference"
    done = subprocess.run(
        mbpl(*common, "--output", str(reference)),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    output = tmp_path / "run"
    code, stderr = interrupted(
        mbpl(*common, "--output", str(output)), tmp_path, "iteration   2", signal.SIGINT
    )
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert (
        "lqr_controller]: shutting down: sent the fallback" in stderr or "is discarded" in stderr
    )
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("mbpl sim: stopped; iterations 0 .. "), last
    kept = int(last.split("iterations 0 .. ")[1].split(" ")[0])
    result = resumed(stderr, tmp_path)
    assert result.returncode == 0, result.stderr
    rows, expected = without_wall_time(output), without_wall_time(reference)
    assert [row["iteration"] for row in rows] == list(range(ITERATIONS + 1))
    assert rows[: kept + 1] == expected[: kept + 1]  # the kept iterations, untouched
    # The discarded iteration is drawn again exactly, and so is everything after it: the
    # restarted dynamics_fitter reads its batches and priors from its state file.
    assert rows == expected
    assert controllers(output) == controllers(reference)
    # Started again without --resume, the run is refused with the flag to use.
    again = subprocess.run(
        mbpl(*common, "--output", str(output)),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2
    assert (
        "already holds a run (checkpoint_0004.pkl); pass --resume to continue it" in again.stderr
    )
    assert "parameter resume" not in again.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--seed", "-1"], "--seed must be >= 0 (as the experiment's seed), got -1"),
        (["train", "--iterations", "0"], "--iterations must be >= 1, got 0"),
        (["train", "--algorithm", "ppo"], "argument --algorithm: invalid choice: 'ppo'"),
        (
            ["sim", "--config", str(SIM_CONFIG), "--seed", "-1"],
            "--seed must be >= 0 (as the experiment's seed)",
        ),
        (["sim", "--config", str(SIM_CONFIG), "--experiment", "no_such.yaml"], "no_such.yaml"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(experiment, tmp_path, args, message):
    output = tmp_path / "run"
    if args[0] == "train":
        args = args + ["--config", str(experiment)]
    result = subprocess.run(
        mbpl(*args, "--output", str(output)),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not output.exists() and not (tmp_path / "runs").exists()


@pytest.mark.timeout(120)
def test_a_run_is_named_for_its_experiment_unless_given(experiment, tmp_path):
    result = subprocess.run(
        mbpl("train", "--config", str(experiment), "--iterations", "1"),
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "small" / "checkpoint_0001.pkl").is_file()
    description = json.loads((tmp_path / "runs" / "small" / "run.json").read_text())
    assert description["experiment_config"] == str(experiment)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [
    ["train", "--config", str(ROOT / "config" / "kuka_reach.yaml")],
    ["sim", "--config", str(SIM_CONFIG)],
    ["replay", "runs/none", "--output", "x.gif"],
])
def test_gui_without_a_display_is_refused_before_anything_starts(tmp_path, command):
    env = {key: value for key, value in environment().items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(mbpl(*command, "--gui"), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=50)
    assert result.returncode == 2, result.stderr
    assert "--gui opens the PyBullet window, which needs a display" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(200)
def test_mbpl_sim_with_another_experiment_is_named_for_it(experiment, tmp_path):
    """--experiment replaces the parameter file's experiment: its run does not land in the
    file's output_dir (runs/sim_reacher_2link) but in runs/sim_<experiment name>."""
    command = mbpl("sim", "--config", str(SIM_CONFIG), "--experiment", str(experiment),
                   "--iterations", "1")
    result = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "sim_small" / "metrics.jsonl").is_file()
    assert not (tmp_path / "runs" / "sim_reacher_2link").exists()
    assert f"results in {Path('runs') / 'sim_small'}" in result.stdout


@pytest.mark.parametrize("more_work", [True, False])
def test_a_signal_during_a_file_write_waits_for_the_write(tmp_path, monkeypatch, more_work):
    """SIGINT arriving inside checkpoint.write_atomically (here: while it fsyncs) stops the
    block only once the file is complete, whether more work follows or the block ends."""
    import os as os_module

    from mbpl_ros import interrupt
    from mbpl_ros.checkpoint import write_atomically

    real_fsync = os_module.fsync

    def fsync_during_a_signal(fd):
        os_module.kill(os_module.getpid(), signal.SIGINT)
        time.sleep(0.1)            # the handler runs here, inside write_atomically
        return real_fsync(fd)

    path, data = tmp_path / "file.bin", b"x" * 100_000
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.interruptible():
            monkeypatch.setattr(os_module, "fsync", fsync_during_a_signal)
            write_atomically(path, data)
            monkeypatch.setattr(os_module, "fsync", real_fsync)
            finished.append("write")
            if more_work:
                time.sleep(2.0)    # the deferred signal arrives here
                finished.append("more work")
    assert finished == ["write"]
    assert path.read_bytes() == data
