"""Checkpoints: what they hold, atomic writes, and a clear CheckpointError for every way a
file can be unusable (truncated, corrupt, old format, another experiment)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from mbpl_ros.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_MAGIC, CheckpointError, checkpoint_paths,
                                 encode_checkpoint, experiment_fingerprint, experiment_identity,
                                 identity_differences, latest_checkpoint, read_checkpoint, read_metrics,
                                 write_atomically)
from mbpl_ros.config import from_dict
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.offline import TrainingRun

ROOT = Path(__file__).resolve().parents[1]


def small_config(**changes) -> ExperimentConfig:
    """The reacher with T=20 and two conditions × two rollouts: an iteration in ~0.1 s."""
    data = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    data.update(T=20, rollouts_per_condition=2, iterations=2, seed=3, conditions=data["conditions"][:2])
    data.update(changes)
    return from_dict(ExperimentConfig, data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from threadpoolctl import threadpool_limits

    output = tmp_path_factory.mktemp("run")
    with threadpool_limits(limits=1):
        TrainingRun(small_config(), output, seed=3, log=io.StringIO()).run(2)
    return output


def damaged(tmp_path: Path, data: bytes, name: str = "checkpoint_0002.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ contents


def test_checkpoint_holds_everything_to_continue(run_dir):
    checkpoint = read_checkpoint(run_dir / "checkpoint_0002.pkl")
    assert checkpoint.iteration == 2 and checkpoint.algorithm.iteration == 2
    assert checkpoint.rollouts_total == 2 * 2 * 2
    assert checkpoint.seed == 3
    assert checkpoint.experiment == experiment_identity(small_config(), 3)
    # The metrics so far are exactly the rows of metrics.jsonl.
    assert checkpoint.metrics == read_metrics(run_dir / "metrics.jsonl")
    assert [row["iteration"] for row in checkpoint.metrics] == [0, 1, 2]
    assert checkpoint.elapsed_s >= checkpoint.metrics[-1]["wall_s"] > 0
    # The dynamics priors travel with the algorithm: the GMM holds both iterations' data.
    prior = checkpoint.algorithm.conditions[0].prior
    assert prior is not None and prior.gmm is not None
    assert checkpoint.rng_states["numpy_global"][0] == "MT19937"
    assert [p.name for p in checkpoint_paths(run_dir)] == ["checkpoint_0001.pkl", "checkpoint_0002.pkl"]
    assert latest_checkpoint(run_dir).iteration == 2


def test_header_names_format_version_and_checksum(run_dir):
    data = (run_dir / "checkpoint_0001.pkl").read_bytes()
    assert data.startswith(CHECKPOINT_MAGIC)
    length, _ = struct.unpack_from(">II", data, len(CHECKPOINT_MAGIC))
    header = json.loads(data[16:16 + length])
    assert header["format"] == CHECKPOINT_FORMAT == 1
    assert header["package"] == "mbpl_ros" and header["version"]
    assert header["iteration"] == 1 and header["algorithm"] == "LqrFlm"
    assert header["payload_bytes"] == len(data) - 16 - length
    assert header["experiment_fingerprint"] == experiment_fingerprint(experiment_identity(small_config(), 3))


# ------------------------------------------------------------------------------ damage


def test_truncated_checkpoint_is_named_truncated_at_every_cut(run_dir, tmp_path):
    data = (run_dir / "checkpoint_0002.pkl").read_bytes()
    length, _ = struct.unpack_from(">II", data, 8)
    cuts = [0, 3, 8, 12, 16, 16 + length // 2, 16 + length, 16 + length + 1, len(data) // 2, len(data) - 1]
    for cut in cuts:
        path = damaged(tmp_path, data[:cut])
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(path)
        assert str(path) in str(error.value) and "truncated" in str(error.value), (cut, str(error.value))


@pytest.mark.parametrize("where, message", [
    ("payload", "checksum mismatch: the payload's SHA-256 differs"),
    ("header", "checksum mismatch in the header"),
])
def test_flipped_byte_is_a_checksum_mismatch(run_dir, tmp_path, where, message):
    data = bytearray((run_dir / "checkpoint_0002.pkl").read_bytes())
    length, _ = struct.unpack_from(">II", data, 8)
    position = len(data) - 100 if where == "payload" else 16 + length // 2
    data[position] ^= 0x01
    path = damaged(tmp_path, bytes(data))
    with pytest.raises(CheckpointError, match=message) as error:
        read_checkpoint(path)
    assert error.value.path == path


def test_old_and_future_formats_are_not_supported(run_dir, tmp_path):
    # Format 0: the bare pickle written before checkpoints had a header.
    old = read_checkpoint(run_dir / "checkpoint_0001.pkl")
    path = damaged(tmp_path, pickle.dumps({"format": 1, "iteration": 1, "algorithm": old.algorithm}))
    with pytest.raises(CheckpointError, match=r"format version 0 not supported \(this mbpl_ros reads 1\)"):
        read_checkpoint(path)
    # A header that announces a later format.
    data = (run_dir / "checkpoint_0001.pkl").read_bytes()
    length, _ = struct.unpack_from(">II", data, 8)
    header = json.loads(data[16:16 + length])
    header["format"] = 2
    header_bytes = json.dumps(header).encode()
    future = CHECKPOINT_MAGIC + struct.pack(">II", len(header_bytes), zlib.crc32(header_bytes)) + header_bytes \
        + data[16 + length:]
    with pytest.raises(CheckpointError, match=r"format version 2 not supported \(this mbpl_ros reads 1\)"):
        read_checkpoint(damaged(tmp_path, future))


def test_a_file_of_something_else_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not an mbpl_ros checkpoint"):
        read_checkpoint(damaged(tmp_path, b"iteration,cost\n1,2.0\n"))
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(tmp_path / "missing.pkl")


def test_checkpoint_of_another_experiment_names_the_differing_keys(run_dir):
    path = run_dir / "checkpoint_0002.pkl"
    other = small_config(T=25, conditions=[{"initial_positions": [0.0, 0.0], "target": [0.2005, 0.3411, 0.0]},
                                           {"initial_positions": [1.5, 0.3], "target": [0.2005, 0.3411, 0.0]}])
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path, experiment_identity(other, 3))
    assert str(error.value) == (f"{path}: made for another experiment: config differs in keys T, "
                                "conditions[1].initial_positions[1]")
    with pytest.raises(CheckpointError, match="config differs in keys run_seed"):
        read_checkpoint(path, experiment_identity(small_config(), 4))
    # The iteration count may change on resume (train for longer).
    assert read_checkpoint(path, experiment_identity(small_config(iterations=9), 3)).iteration == 2


def test_identity_differences_walks_nested_keys():
    a = {"T": 50, "cost": {"action": {"weight": 0.01}}, "conditions": [{"target": [0, 1]}]}
    b = {"T": 50, "cost": {"action": {"weight": 0.02}}, "conditions": [{"target": [0, 1]}, {"target": [1, 1]}],
         "extra": True}
    assert identity_differences(a, b) == ["conditions[1].target[0]", "conditions[1].target[1]",
                                          "cost.action.weight", "extra"]
    assert identity_differences(a, a) == []
    assert experiment_fingerprint(a) == experiment_fingerprint(json.loads(json.dumps(a)))
    assert experiment_fingerprint(a) != experiment_fingerprint(b)


# ------------------------------------------------------------------------------ atomic writes


def test_write_atomically_replaces_whole_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_0001.pkl"
    write_atomically(path, b"old complete file")
    assert path.read_bytes() == b"old complete file"

    # A crash between writing the temporary file and renaming it: the old file stays.
    def crash(*args):
        raise KeyboardInterrupt("killed before the rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b"new file that never lands")
    monkeypatch.undo()
    assert path.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0001.pkl"]
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"


def test_a_checkpoint_read_and_written_again_reads_the_same(run_dir):
    checkpoint = read_checkpoint(run_dir / "checkpoint_0001.pkl")
    again = read_checkpoint(damaged(run_dir.parent, encode_checkpoint(checkpoint), "checkpoint_9999.pkl"))
    assert again.iteration == 1 and again.metrics == checkpoint.metrics
    np.testing.assert_array_equal(again.algorithm.controllers[1].K, checkpoint.algorithm.controllers[1].K)


def test_read_metrics_drops_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\n{"iteration": 1}\n{"itera')
    assert read_metrics(path) == [{"iteration": 0}, {"iteration": 1}]
    path.write_text('{"iteration": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(path)


def test_identity_is_plain_data_without_the_iteration_count():
    config = small_config()
    identity = experiment_identity(config, 7)
    assert identity["run_seed"] == 7 and "iterations" not in identity
    assert identity == json.loads(json.dumps(identity))
    assert identity == experiment_identity(dataclasses.replace(config, iterations=40), 7)
