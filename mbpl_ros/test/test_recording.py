"""Rollout recordings (MCAP, ros2 profile): what a training run records, that standard
readers (mcap, mcap_ros2, rclpy's CDR) read it, that a file cut short still yields every
rollout completed before the cut, and `mbpl train --refit-from` on a recording."""
from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from threadpoolctl import threadpool_limits

from mbpl_ros import cli
from mbpl_ros.checkpoint import latest_checkpoint, read_checkpoint, read_metrics
from mbpl_ros.config import from_dict
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.offline import TrainingRun, recording_run_info
from mbpl_ros.recording import (ROLLOUT_INFO_TOPIC, ROLLOUT_TYPE, ROLLOUTS_TOPIC, RecordedRollout,
                                RecordingError, RolloutRecorder, read_recording)
from mbpl_ros.sim.arm import Arm
from mbpl_ros.robots import ROBOTS
from mbpl_ros.core.controller import rollout_noise
from mbpl_ros.sim.rollout import run_rollout

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS, M, N, T = 3, 2, 2, 20


def small_experiment() -> dict:
    data = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    data.update(T=T, rollouts_per_condition=N, iterations=ITERATIONS, seed=5, conditions=data["conditions"][:M])
    return data


@pytest.fixture(scope="module")
def config() -> ExperimentConfig:
    return from_dict(ExperimentConfig, small_experiment())


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory) -> Path:
    """A recorded three-iteration run."""
    output = tmp_path_factory.mktemp("trained")
    with threadpool_limits(limits=1):
        TrainingRun(config, output, seed=5, log=io.StringIO(), record=True).run(ITERATIONS)
    return output


def synthetic_rollout(k: int, iteration: int = 1, J: int = 2, steps: int = 7) -> RecordedRollout:
    rng = np.random.default_rng(k)
    return RecordedRollout(iteration=iteration, condition=k % 2, index=k // 2, controller_version=iteration - 1,
                           joint_names=[f"joint{j}" for j in range(J)], positions=rng.normal(size=(steps, J)),
                           velocities=rng.normal(size=(steps, J)), efforts=rng.normal(size=(steps, J)),
                           commands=rng.normal(size=(steps, J)), target=rng.normal(size=3),
                           initial_positions=rng.normal(size=J))


RUN_INFO = {"joint_names": ["joint0", "joint1"], "dt_ns": 50_000_000, "experiment_fingerprint": "abc"}


def assert_same_rollout(a: RecordedRollout, b: RecordedRollout) -> None:
    assert a.info() == b.info() and a.joint_names == b.joint_names
    for name in ("positions", "velocities", "efforts", "commands"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# ------------------------------------------------------------------------------ a recorded run


def test_recorded_rollouts_are_the_rollouts_the_controllers_drew(config, trained):
    recording = read_recording(trained / "rollouts.mcap")
    assert recording.problem is None and recording.closed
    assert [(r.iteration, r.condition, r.index) for r in recording.rollouts] == \
        [(i, m, n) for i in range(1, ITERATIONS + 1) for m in range(M) for n in range(N)]
    assert all(r.controller_version == r.iteration - 1 and r.purpose == "sample" for r in recording.rollouts)
    assert recording.run_info == dict(recording_run_info(config, 5), recording_format=2,
                                      mbpl_ros_version=recording.run_info["mbpl_ros_version"])
    # Re-draw iteration 2, condition 1, rollout 1 independently: the controller of checkpoint 1,
    # the rollout's own noise, a fresh simulator.
    rollout = recording.rollouts[(2 - 1) * M * N + 1 * N + 1]
    controller = read_checkpoint(trained / "checkpoint_0001.pkl").algorithm.controllers[1]
    layout = config.layout
    noise = rollout_noise(5, 2, 1, 1, T, layout.dU, config.exploration.smoothing, config.exploration.renormalize)
    with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
        X, U = run_rollout(arm, layout, lambda t, x: controller.act(t, x, noise[t]),
                           config.conditions[1].initial_positions, config.conditions[1].target, T)
        limits = arm.effort_limits
    np.testing.assert_array_equal(rollout.positions, X[:, layout.position])
    np.testing.assert_array_equal(rollout.velocities, X[:, layout.velocity])
    np.testing.assert_array_equal(rollout.efforts, U)
    commands = np.einsum("tux,tx->tu", controller.K, X) + controller.k + np.einsum("tuv,tv->tu", controller.chol, noise)
    np.testing.assert_allclose(rollout.commands, commands, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rollout.efforts, np.clip(rollout.commands, -limits, limits), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rollout.target, config.conditions[1].target)
    # Stamps: simulated time, rollouts back to back.
    assert [r.start_ns for r in recording.rollouts] == [k * T * 50_000_000 for k in range(ITERATIONS * M * N)]


def test_standard_readers_read_the_recording(trained):
    path = trained / "rollouts.mcap"
    with open(path, "rb") as f:
        reader = make_reader(f)
        header, summary = reader.get_header(), reader.get_summary()
    assert header.profile == "ros2"
    topics = {channel.topic: (channel.message_encoding, summary.schemas[channel.schema_id])
              for channel in summary.channels.values()}
    assert {topic: (encoding, schema.name, schema.encoding) for topic, (encoding, schema) in topics.items()} == {
        ROLLOUTS_TOPIC: ("cdr", ROLLOUT_TYPE, "ros2msg"),
        ROLLOUT_INFO_TOPIC: ("cdr", "std_msgs/msg/String", "ros2msg")}
    rollouts = ITERATIONS * M * N
    counts = {summary.channels[c].topic: n for c, n in summary.statistics.channel_message_counts.items()}
    assert counts == {ROLLOUTS_TOPIC: rollouts, ROLLOUT_INFO_TOPIC: rollouts}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the module warns on import
        from mcap_ros2.reader import read_ros2_messages
        messages = list(read_ros2_messages(str(path)))
    typed = [m.ros_msg for m in messages if m.channel.topic == ROLLOUTS_TOPIC]
    infos = [json.loads(m.ros_msg.data) for m in messages if m.channel.topic == ROLLOUT_INFO_TOPIC]
    ours = read_recording(path).rollouts
    assert infos == [r.info() for r in ours]
    states = [s for rollout in typed for s in rollout.joint_states]
    np.testing.assert_array_equal([s.position for s in states], np.concatenate([r.positions for r in ours]))
    assert states[T + 3].header.stamp.sec * 10**9 + states[T + 3].header.stamp.nanosec == (T + 3) * 50_000_000
    assert list(states[0].name) == list(ROBOTS["reacher_2link"].joint_names)

    # rosbag2 stores messages in ROS 2's own CDR: rclpy deserialises the raw bytes into the
    # interface package's own Rollout class.
    from rclpy.serialization import deserialize_message
    from mbpl_ros_interfaces.msg import Rollout, TrialStatus
    with open(path, "rb") as f:
        raw = [message.data for _, channel, message in make_reader(f).iter_messages(log_time_order=False)
               if channel.topic == ROLLOUTS_TOPIC]
    rollout = deserialize_message(raw[1], Rollout)
    assert (rollout.iteration, rollout.condition, rollout.index, rollout.horizon, rollout.action_dim) == \
        (ours[1].iteration, ours[1].condition, ours[1].index, T, 2)
    assert rollout.purpose == Rollout.PURPOSE_SAMPLE and rollout.status.value == TrialStatus.OK
    state = rollout.joint_states[3]
    assert list(state.name) == list(ours[1].joint_names)
    np.testing.assert_array_equal(state.position, ours[1].positions[3])
    np.testing.assert_array_equal(state.velocity, ours[1].velocities[3])
    np.testing.assert_array_equal(state.effort, ours[1].efforts[3])
    np.testing.assert_array_equal(np.reshape(rollout.commands, (T, 2)), ours[1].commands)
    np.testing.assert_array_equal([rollout.target.x, rollout.target.y, rollout.target.z], ours[1].target)


def rosbags_rollouts(path: Path) -> list:
    """Every Rollout of `path` as rosbags decodes it (its own MCAP reader and CDR decoder),
    with the types built from the definitions the file embeds."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    from rosbags.typesys.msg import get_types_from_msg

    typestore = get_typestore(Stores.EMPTY)
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        assert connections[ROLLOUTS_TOPIC].msgtype == ROLLOUT_TYPE
        for connection in reader.connections:   # each schema: its type, then "MSG: <dependency>" sections
            sections = connection.msgdef.data.split("=" * 80 + "\n")
            types = get_types_from_msg(sections[0], connection.msgtype)
            for section in sections[1:]:
                name, _, text = section.partition("\n")
                types.update(get_types_from_msg(text, name.removeprefix("MSG: ").replace("/", "/msg/", 1)))
            typestore.register(types)
        return [typestore.deserialize_cdr(data, ROLLOUT_TYPE)
                for _, _, data in reader.messages(connections=[connections[ROLLOUTS_TOPIC]])]


def test_an_independent_reader_decodes_the_typed_messages_from_their_embedded_definitions(trained):
    """rosbags (its own MCAP reader and CDR decoder, no ROS, no mcap_ros2) builds the types
    from the definitions the file embeds and decodes every Rollout."""
    decoded = rosbags_rollouts(trained / "rollouts.mcap")
    ours = read_recording(trained / "rollouts.mcap").rollouts
    assert len(decoded) == len(ours) == ITERATIONS * M * N
    for message, rollout in zip(decoded, ours):
        assert (message.iteration, message.condition, message.index, message.controller_version) == \
            (rollout.iteration, rollout.condition, rollout.index, rollout.controller_version)
        assert message.status.value == message.status.OK and message.horizon == T
        np.testing.assert_array_equal(np.stack([s.position for s in message.joint_states]), rollout.positions)
        np.testing.assert_array_equal(np.stack([s.effort for s in message.joint_states]), rollout.efforts)
        np.testing.assert_array_equal(message.commands.reshape(T, -1), rollout.commands)
        np.testing.assert_array_equal(message.actions.reshape(T, -1), rollout.efforts)
        stamps = [s.header.stamp.sec * 10**9 + s.header.stamp.nanosec for s in message.joint_states]
        assert stamps == [rollout.start_ns + t * rollout.dt_ns for t in range(T)]


# ------------------------------------------------------------------------------ crashes


def test_a_recording_cut_anywhere_yields_the_rollouts_completed_before_the_cut(trained, tmp_path):
    path = trained / "rollouts.mcap"
    data = path.read_bytes()
    complete = read_recording(path).rollouts
    with open(path, "rb") as f:  # one chunk per rollout: where each rollout's bytes end
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    ends = [c.chunk_start_offset + c.chunk_length for c in chunks]
    assert len(ends) == len(complete)
    cut_file = tmp_path / "cut.mcap"
    # From the first chunk on: before it the file holds only the header and the run's
    # description (a cut there is an error, below).
    cuts = sorted(set(np.random.default_rng(0).integers(chunks[0].chunk_start_offset, len(data), 25).tolist()
                      + [chunks[0].chunk_start_offset, ends[0] - 1, ends[0], ends[4] + 1, ends[-1], len(data) - 1]))
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        recording = read_recording(cut_file)
        expected = sum(end <= cut for end in ends)
        assert len(recording.rollouts) == expected, cut
        for a, b in zip(recording.rollouts, complete):
            assert_same_rollout(a, b)
        assert "truncated" in recording.problem and not recording.closed
    for cut in (0, 5):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(RecordingError, match="truncated before the MCAP signature"):
            read_recording(cut_file)
    cut_file.write_bytes(data[:chunks[0].chunk_start_offset - 10])
    with pytest.raises(RecordingError, match="no run description .* and no complete rollout; truncated"):
        read_recording(cut_file)
    cut_file.write_bytes(b"#!/bin/sh\necho not a bag\n")
    with pytest.raises(RecordingError, match="not an MCAP file"):
        read_recording(cut_file)


def test_a_crashed_recorder_loses_only_the_rollout_in_progress(tmp_path):
    path = tmp_path / "rollouts.mcap"
    recorder = RolloutRecorder.create(path, RUN_INFO)
    written = [recorder.write_rollout(synthetic_rollout(k)) for k in range(3)]
    # The process dies here, before close(): the file is what the disk holds now.
    crashed = tmp_path / "crashed.mcap"
    shutil.copyfile(path, crashed)
    recording = read_recording(crashed)
    assert len(recording.rollouts) == 3 and recording.problem is not None
    for a, b in zip(recording.rollouts, written):
        assert_same_rollout(a, b)
    assert recording.run_info["experiment_fingerprint"] == "abc"
    recorder.close()
    assert read_recording(path).closed


def test_resume_keeps_the_iterations_its_checkpoint_covers(tmp_path):
    path = tmp_path / "rollouts.mcap"
    with RolloutRecorder.create(path, RUN_INFO) as recorder:
        originals = [recorder.write_rollout(synthetic_rollout(k, iteration=1 + k // 2)) for k in range(5)]
    recorder, kept = RolloutRecorder.resume(path, RUN_INFO, through_iteration=2)
    assert kept == 4
    recorder.write_rollout(synthetic_rollout(9, iteration=3))
    recorder.close()
    recording = read_recording(path)
    assert recording.closed and [r.iteration for r in recording.rollouts] == [1, 1, 2, 2, 3]
    for a, b in zip(recording.rollouts, originals[:4]):
        assert_same_rollout(a, b)
    assert recording.rollouts[4].start_ns == 4 * 7 * 50_000_000   # the clock goes on after the kept ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.mcap"]
    with pytest.raises(RecordingError, match="recorded by another experiment"):
        RolloutRecorder.resume(path, dict(RUN_INFO, experiment_fingerprint="xyz"), through_iteration=2)
    assert len(read_recording(path).rollouts) == 5  # untouched


def test_recorded_rollout_shapes_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"RecordedRollout.efforts must be \(T, J=2\)"):
        RecordedRollout(iteration=1, condition=0, index=0, controller_version=0, joint_names=["a", "b"],
                        positions=np.zeros((5, 2)), velocities=np.zeros((5, 2)), efforts=np.zeros((5, 3)),
                        commands=np.zeros((5, 2)), target=np.zeros(3), initial_positions=np.zeros(2))
    with RolloutRecorder.create(tmp_path / "rollouts.mcap", RUN_INFO) as recorder:
        with pytest.raises(ValueError, match="rollout joints"):
            recorder.write_rollout(synthetic_rollout(0, J=3))


# ------------------------------------------------------------------------------ refit


def controllers_of(directory: Path) -> list:
    return latest_checkpoint(directory).algorithm.controllers


def test_refit_from_a_recording_reproduces_the_run(trained, tmp_path, capsys):
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump(small_experiment()))
    with threadpool_limits(limits=1):
        assert cli.main(["train", "--config", str(config_file), "--output", str(tmp_path / "refit"),
                         "--refit-from", str(trained / "rollouts.mcap")]) == 0
    assert "refit (lqr_flm)" in capsys.readouterr().out
    strip = lambda rows: [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "refit" / "metrics.jsonl")) == strip(read_metrics(trained / "metrics.jsonl"))
    for a, b in zip(controllers_of(tmp_path / "refit"), controllers_of(trained)):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.k, b.k)
        np.testing.assert_array_equal(a.covar, b.covar)
    assert not (tmp_path / "refit" / "rollouts.mcap").exists()

    # A recording cut during iteration 3: iterations 1 and 2 are refit, 3 is left out.
    data = (trained / "rollouts.mcap").read_bytes()
    with open(trained / "rollouts.mcap", "rb") as f:
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:chunks[2 * M * N + 1].chunk_start_offset + 10])
    with threadpool_limits(limits=1):
        assert cli.main(["train", "--config", str(config_file), "--output", str(tmp_path / "partial"),
                         "--refit-from", str(cut)]) == 0
    err = capsys.readouterr().err
    assert "truncated" in err and "iteration 3 of the recording is incomplete" in err
    assert strip(read_metrics(tmp_path / "partial" / "metrics.jsonl")) == \
        strip(read_metrics(trained / "metrics.jsonl"))[:3]


def test_refit_from_something_that_is_no_recording_is_a_clear_error(tmp_path, capsys):
    config_file = tmp_path / "small.yaml"
    config_file.write_text(yaml.safe_dump(small_experiment()))
    bag = tmp_path / "notes.mcap"
    bag.write_text("not a bag")
    assert cli.main(["train", "--config", str(config_file), "--output", str(tmp_path / "out"),
                     "--refit-from", str(bag)]) == 2
    assert f"mbpl: {bag}: not an MCAP file" in capsys.readouterr().err
    other = tmp_path / "other.mcap"
    with RolloutRecorder.create(other, RUN_INFO) as recorder:
        recorder.write_rollout(synthetic_rollout(0))
    assert cli.main(["train", "--config", str(config_file), "--output", str(tmp_path / "out2"),
                     "--refit-from", str(other)]) == 2
    assert "the recording's joints ['joint0', 'joint1'] are not reacher_2link's" in capsys.readouterr().err


def test_resume_names_the_rollouts_a_recording_lacks_and_marks_an_accepted_gap(tmp_path):
    path = tmp_path / "rollouts.mcap"
    # iterations 1-2 of M=2, N=1, of which (2, 1, 0) is lost
    with RolloutRecorder.create(path, RUN_INFO) as recorder:
        for k, (iteration, condition) in enumerate([(1, 0), (1, 1), (2, 0)]):
            rollout = synthetic_rollout(k, iteration=iteration)
            rollout.condition, rollout.index = condition, 0
            recorder.write_rollout(rollout)
    original = path.read_bytes()
    with pytest.raises(RecordingError, match=r"rollouts.mcap: the checkpoint covers iterations "
                       r"1-2 \(4 sample rollouts\) but the recording holds 3 of them; missing 1 "
                       r"\(iteration, condition, index\): \(2, 1, 0\)\. Restore the file"):
        RolloutRecorder.resume(path, RUN_INFO, through_iteration=2, samples=(2, 1))
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.mcap"]
    recorder, kept = RolloutRecorder.resume(path, RUN_INFO, through_iteration=2, samples=(2, 1),
                                            allow_incomplete=True)
    recorder.close()
    assert kept == 3 and read_recording(path).run_info["incomplete"] == [[2, 1, 0]]
    # A later resume keeps the mark, though nothing more is missing from what it covers now.
    recorder, _ = RolloutRecorder.resume(path, RUN_INFO, through_iteration=1, samples=(2, 1))
    recorder.close()
    assert read_recording(path).run_info["incomplete"] == [[2, 1, 0]]


def test_a_recording_in_another_format_is_refused_naming_both_formats(tmp_path, monkeypatch):
    from mbpl_ros import recording

    path = tmp_path / "old.mcap"
    with monkeypatch.context() as patch:   # what an older mbpl_ros wrote
        patch.setattr(recording, "RECORDING_FORMAT", 1)
        with RolloutRecorder.create(path, RUN_INFO) as recorder:
            recorder.write_rollout(synthetic_rollout(0))
    with pytest.raises(RecordingError, match=r"recording format 1 \(mbpl_ros .*\); this "
                                             r"version reads format 2 only"):
        read_recording(path)


def test_a_rollouts_camera_images_are_recorded_as_images_that_rosbags_decodes(tmp_path):
    """Images (T, H, W, 3) go into the Rollout as sensor_msgs/Image (rgb8, stamped like the
    joint states); our reader and rosbags (from the embedded definitions) get them back, and
    a resumed recording keeps them."""
    path = tmp_path / "rollouts.mcap"
    rng = np.random.default_rng(3)
    seen = synthetic_rollout(0)
    seen.images = rng.integers(0, 256, size=(seen.T, 6, 5, 3), dtype=np.uint8)
    blind = synthetic_rollout(1)
    with RolloutRecorder.create(path, RUN_INFO) as recorder:
        recorder.write_rollout(seen)
        recorder.write_rollout(blind)
    recording = read_recording(path)
    assert recording.problem is None
    np.testing.assert_array_equal(recording.rollouts[0].images, seen.images)
    assert recording.rollouts[1].images is None
    decoded = rosbags_rollouts(path)
    images = decoded[0].images
    assert len(images) == seen.T and len(decoded[1].images) == 0
    assert {(i.encoding, i.height, i.width, i.step) for i in images} == {("rgb8", 6, 5, 15)}
    np.testing.assert_array_equal(np.stack([i.data.reshape(6, 5, 3) for i in images]), seen.images)
    assert [i.header.stamp.sec * 10**9 + i.header.stamp.nanosec for i in images] == \
        [s.header.stamp.sec * 10**9 + s.header.stamp.nanosec for s in decoded[0].joint_states]
    recorder, kept = RolloutRecorder.resume(path, RUN_INFO, through_iteration=1)
    recorder.close()
    np.testing.assert_array_equal(read_recording(path).rollouts[0].images, seen.images)
    with pytest.raises(ValueError, match=r"RecordedRollout.images must be uint8 \(T=7, H, W, 3\)"):
        blind.images = np.zeros((3, 6, 5, 3), dtype=np.uint8)
        blind.__post_init__()
