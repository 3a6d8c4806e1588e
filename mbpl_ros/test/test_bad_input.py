"""Bad configuration from the command line, as a user meets it (real processes): a key given
twice in any YAML the project reads, and output paths that cannot be written, are refused
with the file, key and lines or the path and the reason; exit non-zero, no traceback, and
nothing is left behind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=120)


def tree(directory: Path) -> list:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    experiment = (ROOT / "config" / "reacher_2link.yaml").read_text()
    assert experiment.count("\nT: ") == 1
    (tmp_path / "twice.yaml").write_text(experiment + "T: 40\n")
    first = 1 + experiment.splitlines().index(next(line for line in experiment.splitlines()
                                                   if line.startswith("T: ")))
    last = len(experiment.splitlines()) + 1
    before = tree(tmp_path)
    result = run("-m", "mbpl_ros.cli", "train", "--config", "twice.yaml", "--output", "out",
                 cwd=tmp_path)
    assert result.returncode == 2
    assert (f"mbpl: configuration error: twice.yaml: key 'T' is given twice, on lines {first} "
            f"and {last}; allowed: each key once") in result.stderr
    assert "Traceback" not in result.stderr and tree(tmp_path) == before

    # a ros__parameters file (the graph's) with a duplicate in a node's section
    params = (ROOT / "config" / "sim_reacher_2link.yaml").read_text().replace(
        "    mode: lockstep                     # one",
        "    gui: true\n    mode: lockstep  # one", 1)
    (tmp_path / "params.yaml").write_text(params)
    # (PyYAML alone keeps the last)
    assert yaml.safe_load(params)["sim_robot"]["ros__parameters"]["gui"] is False
    line = params.splitlines().index("    gui: true") + 1
    before = tree(tmp_path)
    result = run("-m", "mbpl_ros.cli", "sim", "--config", "params.yaml", "--output", "out",
                 cwd=tmp_path)
    assert result.returncode != 0
    assert f"key 'gui' is given twice, on lines {line} and {line + 2}" in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr and tree(tmp_path) == before


@pytest.mark.parametrize("output, reason", [
    ("a_file", "is a file"),
    ("a_file/run", "cannot be created: {tmp}/a_file is a file"),
    ("/proc/mbpl_run", "cannot be created (in /proc)"),
    ("read_only/run", "cannot be created (in {tmp}/read_only)"),
])
def test_train_and_sim_refuse_an_output_they_cannot_write_before_anything_runs(tmp_path, output,
                                                                              reason):
    (tmp_path / "a_file").write_text("not a directory\n")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if output.startswith("read_only"):
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only directories")
        read_only.chmod(0o555)
    before = tree(tmp_path)
    reason = reason.format(tmp=tmp_path)
    for command, code in (
            (["train", "--config", str(ROOT / "config" / "reacher_2link.yaml")], 2),
            (["sim", "--config", str(ROOT / "config" / "sim_reacher_2link.yaml")], 2)):
        result = run("-m", "mbpl_ros.cli", *command, "--output", output, cwd=tmp_path)
        assert result.returncode == code, result.stderr
        assert "--output '" in result.stderr and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and tree(tmp_path) == before
    read_only.chmod(0o755)


def test_gps_trainer_refuses_an_output_dir_it_cannot_write(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run("-m", "mbpl_ros.nodes.gps_trainer", "--ros-args", "-p", "output_dir:=a_file/run",
                 "-p", f"experiment_config:={ROOT / 'config' / 'reacher_2link.yaml'}",
                 cwd=tmp_path)
    assert result.returncode == 1
    assert (f"cannot start: parameter 'output_dir' '{tmp_path}/a_file/run' cannot be created: "
            f"{tmp_path}/a_file is a file") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and tree(tmp_path) == ["a_file"]
