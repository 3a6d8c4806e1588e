"""
Checkpoints that are complete or absent, and that say clearly when they cannot be used.

A training run writes one checkpoint per iteration, `checkpoint_<iteration:04d>.pkl`,
holding everything needed to continue exactly where it stopped (the algorithm with its
GMM priors and policy weights, the metrics so far, the rollout count, RNG states and the
identity of the experiment). The file is

    magic b"MBPLCKPT" (8 bytes) | header length (uint32, big-endian)
    | CRC-32 of the header (uint32, big-endian) | header (UTF-8 JSON) | payload (pickle)

and the header names the format version, the mbpl_ros version that wrote it, the
iteration, the experiment (as plain data) and its fingerprint, and the payload's length
and SHA-256, so the header alone tells what a checkpoint is without unpickling it. Reading
checks all of them, so a truncated, corrupted, foreign or incompatible file raises
CheckpointError naming the file and the problem instead of loading garbage.

Writing is atomic: a temporary file in the same directory, fsync, rename over the final
name, then fsync of the directory, so after a crash at any point the final name holds
either the previous complete checkpoint or the new complete one, never a partial file.

Trust: the payload is a pickle, and unpickling can run arbitrary code. Checkpoints are
trusted local files written by this package; never load one from an untrusted source.
The checksum detects corruption, not tampering.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

import mbpl_ros

#: The checkpoint format this version of mbpl_ros writes and reads.
CHECKPOINT_FORMAT = 1
CHECKPOINT_MAGIC = b"MBPLCKPT"
_PREFIX = struct.Struct(">II")          # header length, CRC-32 of the header
_NAME = re.compile(r"^checkpoint_(\d{4,})\.pkl$")
#: Experiment keys that may change between a run and its resumption.
RESUMABLE_CHANGES = ("iterations",)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: the message names the file and the problem."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Checkpoint:
    """
    The state of a run after `iteration` complete iterations.

    algorithm: the LqrFlm or Mdgps object (controllers, dynamics priors, step sizes,
        policy weights; no optimiser state, which is fresh at every S-step).
    metrics: the metrics rows of iterations 0 .. iteration (what metrics.jsonl holds).
    rollouts_total: sample rollouts drawn so far.
    elapsed_s: wall time of the run so far (the resumed run's wall_s continues from it).
    seed: the run's seed.
    experiment: experiment_identity(config, seed): the experiment as plain data.
    rng_states: RNG states to restore (see capture_rng_states); the exploration noise
        needs none, since each rollout's noise comes from its own generator.
    extra: anything else a caller wants to keep (e.g. a node's next trial id).
    path: the file it was read from (None before it is written).
    """

    iteration: int
    algorithm: Any
    metrics: list
    rollouts_total: int
    elapsed_s: float
    seed: int
    experiment: dict
    rng_states: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def fingerprint(self) -> str:
        return experiment_fingerprint(self.experiment)


# ----------------------------------------------------------------------------- experiment


def experiment_identity(config: Any, seed: int) -> dict:
    """
    Give the experiment a checkpoint belongs to, as JSON-ready data.

    That is the config (a dataclass or dict) without the keys that may change on resume
    (RESUMABLE_CHANGES), plus the run's seed as `run_seed` (it may differ from the config's
    `seed`).
    """
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    data = json.loads(json.dumps(data, sort_keys=True))  # plain lists, dicts and numbers
    for key in RESUMABLE_CHANGES:
        data.pop(key, None)
    data["run_seed"] = int(seed)
    spec = getattr(config, "robot_spec", None)
    if spec is not None:   # a robot described in YAML can change under the same name
        data["robot_description"] = repr(spec)
    return data


def experiment_fingerprint(identity: dict) -> str:
    """SHA-256 (hex) of the identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict):
        items = {}
        for key in value:
            items.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return items or {prefix: {}}
    if isinstance(value, list):
        items = {}
        for i, item in enumerate(value):
            items.update(_flatten(item, f"{prefix}[{i}]"))
        return items or {prefix: []}
    return {prefix: value}


def identity_differences(stored: dict, current: dict) -> list[str]:
    """Dotted keys (e.g. `T`, `conditions[1].target[0]`, `run_seed`) whose values differ."""
    a, b = _flatten(stored), _flatten(current)
    return sorted(key for key in set(a) | set(b)
                  if a.get(key, "<absent>") != b.get(key, "<absent>"))


# ----------------------------------------------------------------------------- files


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: os.PathLike | str, data: bytes) -> None:
    """
    Write `data` to `path` so that a crash leaves either the old file or the new one.

    Write `data` to `path` so that a crash leaves either the old file or the new one:
    temporary file in the same directory, fsync, rename, fsync of the directory.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """
    Delete the temporary files that killed writers left behind.

    Delete temporary files that write_atomically (or a policy export) left behind when
    killed mid-write; one whose writer (the pid in its name) still runs is being written
    (e.g. by dynamics_fitter into the run's directory) and is left alone.
    """
    removed = []
    patterns = (".*.tmp", ".*.tmp.pt", ".*.tmp.json")
    for tmp in [path for pattern in patterns for path in Path(directory).glob(pattern)]:
        if _writer_runs(tmp.name):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _writer_runs(name: str) -> bool:
    """Whether the process whose pid a temporary file's name holds is alive."""
    match = re.search(r"\.(\d+)\.tmp(\.pt|\.json)?$", name)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def checkpoint_path(directory: os.PathLike | str, iteration: int) -> Path:
    return Path(directory) / f"checkpoint_{iteration:04d}.pkl"


def checkpoint_paths(directory: os.PathLike | str) -> list[Path]:
    """List the checkpoints in `directory`, by iteration."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


# ----------------------------------------------------------------------------- RNG


def capture_rng_states() -> dict:
    """
    Return the process-wide RNG states.

    These are numpy's legacy global generator and, when torch is loaded, torch's CPU
    generator. The training code draws from neither (every random choice has its own seeded
    generator); they are kept so that code which does stays reproducible across a resume.
    """
    states = {"numpy_global": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch_cpu"] = torch.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    if "numpy_global" in states:
        np.random.set_state(states["numpy_global"])
    if "torch_cpu" in states:
        import torch

        torch.set_rng_state(states["torch_cpu"])


# ----------------------------------------------------------------------------- write / read


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Encode a checkpoint file's bytes (see the module docstring for the layout)."""
    payload = pickle.dumps({name: getattr(checkpoint, name) for name in (
        "iteration", "algorithm", "metrics", "rollouts_total", "elapsed_s", "seed", "experiment",
        "rng_states", "extra")}, protocol=pickle.HIGHEST_PROTOCOL)
    header = json.dumps({
        "format": CHECKPOINT_FORMAT, "package": "mbpl_ros", "version": mbpl_ros.__version__,
        "iteration": int(checkpoint.iteration), "algorithm": type(checkpoint.algorithm).__name__,
        "experiment_fingerprint": checkpoint.fingerprint, "experiment": checkpoint.experiment,
        "created_unix_s": time.time(),
        "payload_encoding": "pickle", "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }, sort_keys=True).encode()
    return CHECKPOINT_MAGIC + _PREFIX.pack(len(header), zlib.crc32(header)) + header + payload


def write_checkpoint(directory: os.PathLike | str, checkpoint: Checkpoint) -> Path:
    """Write checkpoint_<iteration>.pkl into `directory` atomically; returns its path."""
    path = checkpoint_path(directory, checkpoint.iteration)
    write_atomically(path, encode_checkpoint(checkpoint))
    checkpoint.path = path
    return path


def read_checkpoint_header(path: os.PathLike | str) -> tuple[dict, bytes]:
    """Return the checked header and the payload bytes (length and checksum checked)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(path, f"cannot be read ({error.strerror or error})") from None
    fixed = len(CHECKPOINT_MAGIC) + _PREFIX.size
    if len(data) < len(CHECKPOINT_MAGIC) and CHECKPOINT_MAGIC.startswith(data):
        raise CheckpointError(path, f"truncated: {len(data)} bytes, not even the file signature")
    if not data.startswith(CHECKPOINT_MAGIC):
        if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            raise CheckpointError(path, f"format version 0 not supported (this mbpl_ros reads "
                                        f"{CHECKPOINT_FORMAT}): a bare pickle from before "
                                        "checkpoints had a header")
        raise CheckpointError(path, "not an mbpl_ros checkpoint (the file does not start with "
                                    f"{CHECKPOINT_MAGIC!r})")
    if len(data) < fixed:
        raise CheckpointError(path,
                              f"truncated: {len(data)} bytes, the header's length is missing")
    header_length, header_crc = _PREFIX.unpack_from(data, len(CHECKPOINT_MAGIC))
    header_bytes = data[fixed:fixed + header_length]
    if len(header_bytes) < header_length:
        raise CheckpointError(path, f"truncated: {len(data)} bytes, inside the header "
                                    f"({len(header_bytes)} of {header_length} bytes)")
    if zlib.crc32(header_bytes) != header_crc:
        raise CheckpointError(path, "checksum mismatch in the header (the file is corrupt)")
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise CheckpointError(path, "the header is not valid JSON (the file is corrupt)") from None
    version = header.get("format")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"format version {version} not supported (this mbpl_ros reads "
                                    f"{CHECKPOINT_FORMAT}); it was written by mbpl_ros "
                                    f"{header.get('version', '?')}")
    payload = data[fixed + header_length:]
    expected = header["payload_bytes"]
    if len(payload) < expected:
        raise CheckpointError(path,
                              f"truncated: the payload has {len(payload)} of {expected} bytes")
    if len(payload) > expected:
        raise CheckpointError(path, f"{len(payload) - expected} bytes after the payload's end "
                                    "(the file is corrupt)")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(path, "checksum mismatch: the payload's SHA-256 differs from the "
                                    "header's (the file is corrupt)")
    return header, payload


def read_checkpoint(path: os.PathLike | str, experiment: Optional[dict] = None) -> Checkpoint:
    """
    Read and check a checkpoint.

    With `experiment` (experiment_identity of the run that wants to continue it), a
    checkpoint of another experiment raises CheckpointError naming the keys that differ.
    """
    path = Path(path)
    header, payload = read_checkpoint_header(path)
    if (experiment is not None
            and header["experiment_fingerprint"] != experiment_fingerprint(experiment)):
        differences = identity_differences(header.get("experiment", {}), experiment)
        shown = ", ".join(differences[:10])
        if len(differences) > 10:
            shown += f" and {len(differences) - 10} more"
        raise CheckpointError(path, f"made for another experiment: config differs in keys {shown}")
    fields = _unpickle(path, header, payload)
    if fields.get("iteration") != header["iteration"]:
        raise CheckpointError(path, f"the payload is iteration {fields.get('iteration')}, the "
                                    f"header says {header['iteration']}")
    return Checkpoint(**fields, path=path)


def _unpickle(path: Path, header: dict, payload: bytes) -> dict:
    try:
        fields = pickle.loads(payload)
    except Exception as error:  # a class that moved or changed between versions
        raise CheckpointError(path, f"the payload cannot be loaded by mbpl_ros "
                                    f"{mbpl_ros.__version__} "
                                    f"(written by {header.get('version', '?')}): "
                                    f"{type(error).__name__}: {error}") from None
    if not isinstance(fields, dict) or "algorithm" not in fields:
        raise CheckpointError(path, "the payload is not a checkpoint's")
    return fields


def latest_checkpoint(directory: os.PathLike | str,
                      experiment: Optional[dict] = None) -> Optional[Checkpoint]:
    """
    Read the checkpoint of the highest iteration in `directory`, or None if there is none.

    It is checked as read_checkpoint does. Writes are atomic, so the newest file is a
    complete iteration; if it is nevertheless damaged the error says so rather than silently
    going back further.
    """
    paths = checkpoint_paths(directory)
    return read_checkpoint(paths[-1], experiment) if paths else None


# ----------------------------------------------------------------------------- metrics


def write_metrics(path: os.PathLike | str, rows: list[dict]) -> None:
    """Replace the metrics file with `rows`, one JSON object per line, atomically."""
    write_atomically(Path(path), "".join(json.dumps(row) + "\n" for row in rows).encode())


def append_metrics_row(path: os.PathLike | str, row: dict) -> None:
    """
    Append one row durably (flush + fsync).

    A crash mid-append can leave a partial last line; resuming rewrites the file from the
    checkpoint, which drops it.
    """
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: os.PathLike | str) -> list[dict]:
    """Read the complete rows of a metrics file; a half-written last line is left out."""
    rows = []
    text = Path(path).read_text() if Path(path).exists() else ""
    lines = text.split("\n")
    # The part after the last "\n" is unfinished.
    for number, line in enumerate(lines[:-1], start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise ValueError(f"{path}: line {number} is not JSON") from None
    return rows
