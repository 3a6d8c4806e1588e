"""
Every rollout on disk as it completes: an MCAP file in the ros2 profile (rosbag2's format).

One file per training run (`rollouts.mcap` in the run's output directory). Topics:

* `/gps/rollouts` (mbpl_ros_interfaces/msg/Rollout), one message per rollout: condition,
  iteration, index, controller_version, purpose, status OK, target; joint_states, T
  sensor_msgs/JointState stamped start + t·dt (position q_t, velocity qd_t, effort = the
  effort applied over step t, after clamping); commands (T, J), the commanded effort u_t
  before clamping; actions (T, J), the applied efforts; horizon T, action_dim J, state_dim 0
  (no states); with a camera, images: T sensor_msgs/Image (rgb8), image t the one step t
  saw, stamped like joint state t (none without a camera).
* `/mbpl/rollout_info` (std_msgs/msg/String), one message after it, JSON: iteration,
  condition, index, controller_version, purpose, T, start_ns, dt_ns, initial_positions,
  target.

Messages are CDR-encoded with `ros2msg` schemas that embed the full message definitions
(the Rollout's and every type it uses), so `ros2 bag info/play` (rosbag2's mcap plugin),
the `mcap` CLI, Foxglove, rosbags and mcap_ros2's reader all decode the file without the
interface package. The run's description
(robot, joints, control period, seed, experiment identity) is an MCAP metadata record
named `mbpl_run` with one key, `json`.

Stamps are simulated time since the start of the run (what /clock gives a ROS graph with
use_sim_time): rollout k occupies [k·T·dt, (k+1)·T·dt), step t of it is at start + t·dt.

Durability: a rollout is written as one chunk, then the file is flushed and fsynced, and
its `/mbpl/rollout_info` message comes last, so a rollout without its info message is
incomplete. A crash loses at most the rollout being written: the file then lacks its
summary and footer, and `read_recording` returns the complete rollouts before the cut
(`mcap recover` also repairs such a file). Resuming a run rewrites the file with the
rollouts of the iterations its checkpoint covers (atomically) and appends from there, so
a resumed run's recording holds the same rollouts as an uninterrupted run's. A recording
that lacks rollouts the checkpoint covers (deleted, cut short) stops the resume with the
file and the missing rollouts named, unless the user accepts an incomplete recording: then
its run description lists them under `incomplete`.

This module needs only `mcap` and `mcap-ros2-support`, no ROS installation (the Rollout
definition is read from the interface package's files: the installed share directory or the
source tree).
"""
from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional, Sequence

import numpy as np
from mcap.exceptions import EndOfFile
from mcap.records import Channel, Footer, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.well_known import MessageEncoding, SchemaEncoding
from mcap.writer import CompressionType, Writer as McapWriter
from mcap_ros2._dynamic import serialize_dynamic
from mcap_ros2.decoder import DecoderFactory

import mbpl_ros
from mbpl_ros.checkpoint import fsync_directory

RECORDING_FORMAT = 2
ROLLOUTS_TOPIC = "/gps/rollouts"
ROLLOUT_TYPE = "mbpl_ros_interfaces/msg/Rollout"
ROLLOUT_INFO_TOPIC = "/mbpl/rollout_info"
RUN_METADATA_NAME = "mbpl_run"

_TIME_MSG = "int32 sec\nuint32 nanosec\n"
_HEADER_MSG = "builtin_interfaces/Time stamp\nstring frame_id\n"
_SEPARATOR = "=" * 80 + "\n"
_JOINT_STATE_MSG = ("std_msgs/Header header\nstring[] name\nfloat64[] position\n"
                    "float64[] velocity\nfloat64[] effort\n")
_POINT_MSG = "float64 x\nfloat64 y\nfloat64 z\n"
_IMAGE_MSG = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
              "uint8 is_bigendian\nuint32 step\nuint8[] data\n")


def _interface_file(name: str) -> str:
    """Return the text of mbpl_ros_interfaces' msg/<name>.msg (installed, or the sources)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    places = [Path(prefix) / "share" for prefix in prefixes + [sys.prefix]]
    places.append(Path(__file__).resolve().parents[1])
    for place in places:
        path = place / "mbpl_ros_interfaces" / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    raise RecordingError(f"the definition of mbpl_ros_interfaces/msg/{name} was not found "
                         f"(looked in {', '.join(str(p) for p in places)}): build the interface "
                         "package (make setup)")


def _rollout_schema() -> str:
    """Return the ros2msg schema of Rollout: its definition, then each type it uses."""
    parts = [_interface_file("Rollout"),
             "MSG: mbpl_ros_interfaces/TrialStatus\n" + _interface_file("TrialStatus"),
             "MSG: geometry_msgs/Point\n" + _POINT_MSG,
             "MSG: sensor_msgs/JointState\n" + _JOINT_STATE_MSG,
             "MSG: sensor_msgs/Image\n" + _IMAGE_MSG,
             "MSG: std_msgs/Header\n" + _HEADER_MSG,
             "MSG: builtin_interfaces/Time\n" + _TIME_MSG]
    return _SEPARATOR.join(part if part.endswith("\n") else part + "\n" for part in parts)


def schemas() -> dict:
    """Return the schema text of every type a recording holds."""
    return {ROLLOUT_TYPE: _rollout_schema(), "std_msgs/msg/String": "string data\n"}


_TOPIC_TYPES = {ROLLOUTS_TOPIC: ROLLOUT_TYPE, ROLLOUT_INFO_TOPIC: "std_msgs/msg/String"}
_PURPOSES = ("sample", "evaluation")   # Rollout.PURPOSE_SAMPLE, PURPOSE_EVALUATION


class RecordingError(RuntimeError):
    """A recording cannot be read or written: the message names the file and the problem."""


@dataclass
class RecordedRollout:
    """
    One rollout as recorded.

    Arrays are (T, J) for J joints, in joint_names' order: positions q_t, velocities qd_t (the
    state at step t), efforts (applied over step t), commands (commanded at step t).
    start_ns/dt_ns: the stamps, start_ns + t·dt_ns (start_ns None until a recorder assigns it).
    images: (T, H, W, 3) uint8 RGB, image t the camera image step t saw; None without a camera.
    """

    iteration: int
    condition: int
    index: int
    controller_version: int
    joint_names: tuple
    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray
    commands: np.ndarray
    target: np.ndarray
    initial_positions: np.ndarray
    purpose: str = "sample"
    start_ns: Optional[int] = None
    dt_ns: Optional[int] = None
    extra: dict = field(default_factory=dict)
    images: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.joint_names = tuple(self.joint_names)
        J = len(self.joint_names)
        for name in ("positions", "velocities", "efforts", "commands"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.ndim != 2 or value.shape[1] != J:
                raise ValueError(f"RecordedRollout.{name} must be (T, J={J}), got {value.shape}")
            setattr(self, name, value)
        shapes = {getattr(self, name).shape[0]
                  for name in ("positions", "velocities", "efforts", "commands")}
        if len(shapes) != 1 or 0 in shapes:
            raise ValueError("RecordedRollout arrays must share T >= 1 steps, "
                             f"got {sorted(shapes)}")
        self.target = np.asarray(self.target, dtype=float)
        self.initial_positions = np.asarray(self.initial_positions, dtype=float)
        if self.images is not None:
            images = np.asarray(self.images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != self.T \
                    or images.shape[3] != 3:
                raise ValueError(f"RecordedRollout.images must be uint8 (T={self.T}, H, W, 3), "
                                 f"got {images.dtype} {images.shape}")
            self.images = images

    @property
    def T(self) -> int:
        return self.positions.shape[0]

    def info(self) -> dict:
        """Return the /mbpl/rollout_info JSON of this rollout."""
        return {"iteration": int(self.iteration), "condition": int(self.condition),
                "index": int(self.index), "controller_version": int(self.controller_version),
                "purpose": self.purpose, "T": self.T,
                "start_ns": int(self.start_ns), "dt_ns": int(self.dt_ns),
                "initial_positions": self.initial_positions.tolist(),
                "target": self.target.tolist(),
                **({"extra": self.extra} if self.extra else {})}


@dataclass
class Recording:
    """
    What read_recording found.

    The run's description, the complete rollouts in file order, and `problem` (None for a
    cleanly closed file; otherwise why reading stopped, e.g. the file was cut short by a
    crash).
    """

    run_info: dict
    rollouts: list
    problem: Optional[str] = None
    closed: bool = False


# ----------------------------------------------------------------------------- writing


def _stamp(ns: int) -> dict:
    return {"sec": int(ns // 1_000_000_000), "nanosec": int(ns % 1_000_000_000)}


class RolloutRecorder:
    """
    Writes rollouts to an MCAP file, each one durable once write_rollout returns.

    Use create() for a new run and resume() to continue the recording of a run resumed
    from a checkpoint. run_info is a JSON-ready dict describing the run (at least
    joint_names and dt_ns); it becomes the `mbpl_run` metadata record.
    """

    def __init__(self, path: os.PathLike | str, run_info: dict, *,
                 _write_to: Optional[Path] = None, _keep: Sequence[RecordedRollout] = ()):
        self.path = Path(path)
        self.run_info = dict(run_info, recording_format=RECORDING_FORMAT,
                             mbpl_ros_version=mbpl_ros.__version__)
        for key in ("joint_names", "dt_ns"):
            if key not in self.run_info:
                raise ValueError(f"run_info must hold {key!r}")
        self.dt_ns = int(self.run_info["dt_ns"])
        self.clock_ns = 0
        self.count = 0
        target = _write_to or self.path
        self._file: IO[bytes] = open(target, "wb")
        try:
            self._writer = McapWriter(self._file, compression=CompressionType.ZSTD,
                                      chunk_size=1 << 22)
            self._writer.start(profile="ros2", library=f"mbpl_ros {mbpl_ros.__version__}")
            texts = schemas()
            self._schemas = {name: self._writer.register_schema(name, SchemaEncoding.ROS2,
                                                                text.encode())
                             for name, text in texts.items()}
            self._channels = {topic: self._writer.register_channel(topic, MessageEncoding.CDR,
                                                                   self._schemas[kind])
                              for topic, kind in _TOPIC_TYPES.items()}
            self._encoders = {name: serialize_dynamic(name, text)[name]
                              for name, text in texts.items()}
            self._writer.add_metadata(RUN_METADATA_NAME,
                                      {"json": json.dumps(self.run_info, sort_keys=True)})
            self._sync()
            for rollout in _keep:
                self.write_rollout(rollout)
        except BaseException:
            self._file.close()
            raise
        if _write_to is not None:
            os.replace(_write_to, self.path)  # the file handle follows the renamed file
            fsync_directory(self.path.parent)

    @classmethod
    def create(cls, path: os.PathLike | str, run_info: dict) -> "RolloutRecorder":
        """Start a new recording at `path` (replacing any file there)."""
        return cls(path, run_info)

    @classmethod
    def resume(cls, path: os.PathLike | str, run_info: dict, through_iteration: int, *,
               samples: Optional[tuple[int, int]] = None,
               allow_incomplete: bool = False) -> tuple["RolloutRecorder", int]:
        """
        Continue the recording at `path` after resuming from the checkpoint of `through_iteration`.

        Keep its complete rollouts of iterations <= through_iteration (dropping those of the
        interrupted iteration, which will be drawn again), written to a new file that
        atomically replaces the old one. Returns the recorder and the number of rollouts
        kept. RecordingError if the file belongs to another experiment.

        samples = (M, N): every iteration 1..through_iteration must hold the sample rollouts
        (condition m < M, index n < N). A recording that lacks some (deleted, or cut short)
        is a RecordingError naming the file and what is missing, before anything changes;
        with allow_incomplete the run goes on and the new file's run description says it is
        incomplete (`incomplete`: the missing rollouts, as (iteration, condition, index)).
        """
        path = Path(path)
        kept: list[RecordedRollout] = []
        recording = None
        if path.exists():
            recording = read_recording(path)
            fingerprint = run_info.get("experiment_fingerprint")
            recorded = recording.run_info.get("experiment_fingerprint")
            if fingerprint is not None and recorded not in (None, fingerprint):
                raise RecordingError(f"{path}: recorded by another experiment (fingerprint "
                                     f"{recorded}, this run's is {fingerprint})")
            kept = [r for r in recording.rollouts if r.iteration <= through_iteration]
        run_info = dict(run_info)
        earlier = recording.run_info.get("incomplete") if recording is not None else None
        missing = missing_rollouts(kept, through_iteration, samples) if samples is not None else []
        if missing:
            state = "does not exist" if recording is None else f"holds {len(kept)} of them"
            if recording is not None and recording.problem:
                state += f" ({recording.problem})"
            if not allow_incomplete:
                raise RecordingError(
                    f"{path}: the checkpoint covers iterations 1-{through_iteration} "
                    f"({through_iteration * samples[0] * samples[1]} sample rollouts) but the "
                    f"recording {state}; missing {len(missing)} (iteration, condition, index): "
                    f"{_listed(missing)}. Restore the file, or continue with an incomplete "
                    "recording (mbpl train/sim --allow-incomplete-recording; gps_trainer "
                    "parameter allow_incomplete_recording: true)")
        if missing or earlier:
            run_info["incomplete"] = sorted({tuple(key) for key in (earlier or [])} | set(missing))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            recorder = cls(path, run_info, _write_to=tmp, _keep=kept)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return recorder, len(kept)

    def write_rollout(self, rollout: RecordedRollout) -> RecordedRollout:
        """
        Write one rollout and make it durable.

        Stamps are assigned from the recorder's clock unless the rollout has them (a copied
        rollout). Returns the rollout.
        """
        if self._file.closed:
            raise RecordingError(f"{self.path}: the recording is closed")
        if tuple(rollout.joint_names) != tuple(self.run_info["joint_names"]):
            raise ValueError(f"rollout joints {rollout.joint_names} differ from the recording's "
                             f"{tuple(self.run_info['joint_names'])}")
        if rollout.start_ns is None:
            rollout.start_ns, rollout.dt_ns = self.clock_ns, self.dt_ns
        stamps = rollout.start_ns + rollout.dt_ns * np.arange(rollout.T)
        names = list(rollout.joint_names)
        states = [{"header": {"stamp": _stamp(stamp), "frame_id": ""}, "name": names,
                   "position": rollout.positions[t].tolist(),
                   "velocity": rollout.velocities[t].tolist(),
                   "effort": rollout.efforts[t].tolist()}
                  for t, stamp in enumerate(stamps.tolist())]
        target = [float(v) for v in np.resize(rollout.target, 3)]
        images = [] if rollout.images is None else [
            {"header": {"stamp": _stamp(stamp), "frame_id": "camera"},
             "height": int(image.shape[0]), "width": int(image.shape[1]), "encoding": "rgb8",
             "is_bigendian": 0, "step": 3 * int(image.shape[1]),
             "data": np.ascontiguousarray(image).tobytes()}
            for image, stamp in zip(rollout.images, stamps.tolist())]
        message = {
            "trial_id": int(rollout.extra.get("trial_id", 0)), "condition": int(rollout.condition),
            "iteration": int(rollout.iteration), "index": int(rollout.index),
            "controller_version": int(rollout.controller_version),
            "purpose": _PURPOSES.index(rollout.purpose), "status": {"value": 0},
            "target": dict(zip("xyz", target)), "joint_states": states,
            "commands": rollout.commands.ravel().tolist(), "images": images,
            "horizon": rollout.T, "state_dim": 0,
            "action_dim": len(names), "states": [], "actions": rollout.efforts.ravel().tolist()}
        info_stamp = int(stamps[-1])
        self._writer.add_message(self._channels[ROLLOUTS_TOPIC], log_time=info_stamp,
                                 publish_time=info_stamp,
                                 data=self._encoders[ROLLOUT_TYPE](message),
                                 sequence=self.count)
        info = {"data": json.dumps(rollout.info())}
        self._writer.add_message(self._channels[ROLLOUT_INFO_TOPIC], log_time=info_stamp,
                                 publish_time=info_stamp,
                                 data=self._encoders["std_msgs/msg/String"](info),
                                 sequence=self.count)
        self._sync()
        self.clock_ns = max(self.clock_ns, rollout.start_ns + rollout.T * rollout.dt_ns)
        self.count += 1
        return rollout

    def _sync(self) -> None:
        self._writer.flush()   # ends the chunk in progress and writes it out
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Write the summary and footer (indexes for fast seeking) and close the file."""
        if not self._file.closed:
            try:
                self._writer.finish()
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()

    def __enter__(self) -> "RolloutRecorder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def missing_rollouts(rollouts: Sequence[RecordedRollout], through_iteration: int,
                     samples: tuple[int, int]) -> list[tuple[int, int, int]]:
    """
    Return the (iteration, condition, index) of the sample rollouts not in `rollouts`.

    Those of iterations 1..through_iteration, M conditions by N rollouts (samples = (M, N)).
    """
    M, N = samples
    present = {(r.iteration, r.condition, r.index) for r in rollouts if r.purpose == "sample"}
    return [(i, m, n) for i in range(1, through_iteration + 1) for m in range(M) for n in range(N)
            if (i, m, n) not in present]


def _listed(keys: Sequence[tuple], shown: int = 4) -> str:
    text = ", ".join(str(key) for key in keys[:shown])
    return text + (f" ... {keys[-1]}" if len(keys) > shown else "")


# ----------------------------------------------------------------------------- reading


def _as_array(values: Any) -> np.ndarray:
    return np.asarray(list(values), dtype=float)


def read_recording(path: os.PathLike | str) -> Recording:
    """
    Read the run description and complete rollouts of a recording, in file order.

    Reads records sequentially (no index needed), so a file cut short by a crash yields
    every rollout completed before the cut and `problem` says where it stopped.
    RecordingError for a file that cannot be opened, is not MCAP, or is not an mbpl_ros
    recording.
    """
    path = Path(path)
    try:
        stream = open(path, "rb")
    except OSError as error:
        raise RecordingError(f"{path}: cannot be read ({error.strerror or error})") from None
    with stream:
        magic = stream.read(8)
        stream.seek(0)
        if magic != b"\x89MCAP0\r\n":
            what = "truncated before the MCAP signature" if len(magic) < 8 else "not an MCAP file"
            raise RecordingError(f"{path}: {what}")
        run_info: dict = {}
        rollouts: list[RecordedRollout] = []
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        decoders = DecoderFactory()
        pending: list = []   # the Rollout message before its info
        problem, closed = None, False
        reader = StreamReader(stream, validate_crcs=True, record_size_limit=1 << 30)
        try:
            for record in reader.records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                elif isinstance(record, Metadata) and record.name == RUN_METADATA_NAME:
                    run_info = json.loads(record.metadata["json"])
                    written = run_info.get("recording_format")
                    if written != RECORDING_FORMAT:
                        raise RecordingError(
                            f"{path}: recording format {written} (mbpl_ros "
                            f"{run_info.get('mbpl_ros_version', '?')}); this version reads "
                            f"format {RECORDING_FORMAT} only: read it with the version that "
                            "wrote it")
                elif isinstance(record, Message):
                    channel = channels[record.channel_id]
                    if channel.topic not in _TOPIC_TYPES:
                        continue
                    decode = decoders.decoder_for(channel.message_encoding,
                                                  schemas[channel.schema_id])
                    message = decode(record.data)
                    if channel.topic == ROLLOUT_INFO_TOPIC:
                        rollouts.append(_assemble(path, json.loads(message.data), pending))
                        pending = []
                    else:
                        pending.append(message)
                elif isinstance(record, Footer):
                    closed = True
            if not closed:
                problem = ("the file ends without its footer (cut short?); "
                           f"{len(rollouts)} complete rollouts before the end were read")
        except RecordingError:
            raise
        except Exception as error:
            # mcap's EndOfFile, struct/zstd errors on a cut record, CRC errors
            closed = False
            size, offset = path.stat().st_size, stream.tell()
            if offset >= size or isinstance(error, (EndOfFile, struct.error)):
                problem = (f"truncated at byte {size}: "
                           "the data after the last complete rollout is lost")
            else:
                problem = f"corrupt from near byte {offset} ({type(error).__name__}: {error})"
            problem += f"; the {len(rollouts)} complete rollouts before it were read"
        if not run_info and not rollouts:
            raise RecordingError(f"{path}: no run description "
                                 f"(metadata {RUN_METADATA_NAME!r}) and no complete rollout"
                                 + (f"; {problem}" if problem else ""))
        return Recording(run_info=run_info, rollouts=rollouts, problem=problem, closed=closed)


def _assemble(path: Path, info: dict, pending: list) -> RecordedRollout:
    T, start, dt = info["T"], info["start_ns"], info["dt_ns"]
    where = (f"{path}: rollout (iteration {info['iteration']}, condition {info['condition']}, "
             f"index {info['index']})")
    if len(pending) != 1:
        raise RecordingError(f"{where} has {len(pending)} {ROLLOUTS_TOPIC} messages before its "
                             "info, not 1")
    message = pending[0]
    states = list(message.joint_states)
    stamps = [s.header.stamp.sec * 1_000_000_000 + s.header.stamp.nanosec for s in states]
    if stamps != [start + dt * t for t in range(T)] or message.horizon != T:
        raise RecordingError(f"{where} has {len(states)} joint states, not the {T} stamped "
                             "start_ns + t·dt_ns that its info announces")
    J = len(states[0].name)
    commands = _as_array(message.commands)
    if commands.size != T * J:
        raise RecordingError(f"{where} has {commands.size} command values, not T·J = {T * J}")
    images = _images(where, list(getattr(message, "images", None) or []), T)
    return RecordedRollout(
        iteration=info["iteration"], condition=info["condition"], index=info["index"],
        controller_version=info["controller_version"], purpose=info.get("purpose", "sample"),
        joint_names=tuple(states[0].name),
        positions=np.stack([_as_array(s.position) for s in states]),
        velocities=np.stack([_as_array(s.velocity) for s in states]),
        efforts=np.stack([_as_array(s.effort) for s in states]),
        commands=commands.reshape(T, J),
        target=np.asarray(info["target"], float),
        initial_positions=np.asarray(info["initial_positions"], float),
        start_ns=start, dt_ns=dt, extra=info.get("extra", {}), images=images)


def _images(where: str, images: list, T: int) -> Optional[np.ndarray]:
    """Return a recorded rollout's images (T, H, W, 3) uint8, or None (recorded without)."""
    if not images:
        return None
    if len(images) != T:
        raise RecordingError(f"{where} has {len(images)} images, not none or T = {T}")
    pixels = []
    for image in images:
        height, width = int(image.height), int(image.width)
        data = np.frombuffer(bytes(image.data), dtype=np.uint8)
        if image.encoding != "rgb8" or int(image.step) != 3 * width \
                or data.size != height * 3 * width:
            raise RecordingError(f"{where} has an image that is not {height}x{width} rgb8 "
                                 f"({image.encoding}, step {image.step}, {data.size} bytes)")
        pixels.append(data.reshape(height, width, 3))
    if len({p.shape for p in pixels}) != 1:
        raise RecordingError(f"{where} has images of different sizes")
    return np.stack(pixels)
