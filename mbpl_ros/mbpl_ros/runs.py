"""
Read a run directory as the commands after training see it.

A run directory as the commands after training see it: what experiment it belongs to,
which checkpoint holds which controllers, and what a file handed to them really is.

`mbpl train` and `mbpl sim` write RUN/run.json (the experiment file's absolute path and the
command line), so `mbpl replay RUN` and `mbpl eval --run RUN` need no --config; a run
moved to another machine takes --config, which must be the same experiment (a checkpoint
names the keys that differ otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from mbpl_ros.checkpoint import (
    CHECKPOINT_MAGIC,
    Checkpoint,
    CheckpointError,
    checkpoint_path,
    checkpoint_paths,
    experiment_identity,
    read_checkpoint,
    read_checkpoint_header,
    write_atomically,
)
from mbpl_ros.experiment import ExperimentConfig, load_experiment

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
RECORDING_FILE = "rollouts.mcap"
MCAP_MAGIC = b"\x89MCAP0\r\n"


class RunError(ValueError):
    """
    A run directory, or a file given for one, cannot be used.

    A run directory or a file given for one cannot be used; the message says what it is
    and what was expected.
    """


def default_output(experiment_path: str | os.PathLike, prefix: str = "") -> Path:
    """runs/<prefix><experiment file's stem>: where a run goes unless told otherwise."""
    return Path("runs") / f"{prefix}{Path(experiment_path).stem}"


def existing_run(output: Path) -> Optional[str]:
    """Say what in `output` shows that a run was started there (None if nothing)."""
    checkpoints = checkpoint_paths(output)
    if checkpoints:
        return checkpoints[-1].name
    for name in (METRICS_FILE, RECORDING_FILE):
        if (output / name).is_file() and (output / name).stat().st_size > 0:
            return name
    return None


def write_run_description(
    output: Path, experiment_path: str | os.PathLike, command: Sequence[str]
) -> None:
    """RUN/run.json: the experiment file (absolute) and the command that started the run."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(
            {"experiment_config": str(Path(experiment_path).resolve()), "command": list(command)},
            indent=2,
        )
        + "\n"
    )
    write_atomically(output / RUN_FILE, text.encode())


def read_run_description(run: Path) -> Optional[dict]:
    """RUN/run.json as a dict; None when there is none."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise RunError(f"{path} is not JSON; delete it and pass --config") from None


def describe_file(path: str | os.PathLike) -> str:
    """Say what `path` is, in a few words (for a message about a file in the wrong place)."""
    path = Path(path)
    if not path.exists():
        return "missing (no such file or directory)"
    if path.is_dir():
        if checkpoint_paths(path):
            kinds = [name for name in ("policy.pt",) if (path / name).is_file()]
            return "a run directory (checkpoints" + (", policy.pt" if kinds else "") + ")"
        return "a directory without checkpoints"
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "an empty file"
    if head.startswith(CHECKPOINT_MAGIC):
        try:
            header, _ = read_checkpoint_header(path)
        except CheckpointError as error:
            return f"a damaged mbpl_ros checkpoint ({error.problem})"
        return f"an mbpl_ros checkpoint (iteration {header['iteration']}, {header['algorithm']})"
    if head.startswith(MCAP_MAGIC):
        return "an MCAP recording"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(name.endswith("constants.pkl") for name in names):
            return "a TorchScript module"
        if any(name.endswith("data.pkl") for name in names):
            return "a torch.save file (not an exported policy)"
        return "a zip archive"
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return "a binary file of unknown kind"
    stripped = text.lstrip()
    if stripped.startswith("{") and path.suffix in (".json", ".jsonl"):
        return "a JSON file"
    if "ros__parameters" in text:
        return "a ros__parameters YAML file"
    if path.suffix in (".yaml", ".yml"):
        return "a YAML file"
    return "a text file"


def run_config(run: Path, config_path: Optional[str | os.PathLike] = None) -> ExperimentConfig:
    """Load the experiment of `run`: `config_path` if given, else the one run.json names."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(
            f"{run} is {describe_file(run)}; expected a run directory (the --output of "
            "`mbpl train` or `mbpl sim`)"
        )
    if config_path is None:
        description = read_run_description(run)
        if description is None:
            raise RunError(
                f"{run} has no {RUN_FILE} (it names the experiment of a run); pass --config "
                "with the experiment YAML the run was trained with"
            )
        config_path = description["experiment_config"]
        if not Path(config_path).is_file():
            raise RunError(
                f"{run}/{RUN_FILE} names the experiment {config_path}, which is not a file "
                "(the run was moved?); pass --config with the experiment YAML"
            )
    return load_experiment(config_path)


def run_checkpoint(
    run: Path, config: ExperimentConfig, iteration: Optional[int] = None
) -> tuple[Checkpoint, ExperimentConfig]:
    """
    Load the checkpoint of `iteration` (default: the newest) in `run`.

    It is checked against the experiment, and returned with the experiment as the run used
    it (its algorithm, e.g. a --algorithm override). RunError naming what is there
    otherwise.
    """
    run = Path(run)
    paths = checkpoint_paths(run)
    if not paths:
        raise RunError(
            f"{run} is {describe_file(run)}; expected a run directory with checkpoints "
            "(checkpoint_NNNN.pkl, written after every iteration)"
        )
    path = paths[-1] if iteration is None else checkpoint_path(run, iteration)
    if not path.is_file():
        available = [int(p.stem.split("_")[1]) for p in paths]
        raise RunError(
            f"{run} has no checkpoint of iteration {iteration}; iterations: "
            f"{available[0]} .. {available[-1]}"
        )
    header, _ = read_checkpoint_header(path)
    stored = header.get("experiment", {})
    if stored.get("algorithm") in ("lqr_flm", "mdgps") and stored["algorithm"] != config.algorithm:
        config = dataclasses.replace(config, algorithm=stored["algorithm"])
    seed = int(stored.get("run_seed", config.seed))
    return read_checkpoint(path, experiment_identity(config, seed)), config
