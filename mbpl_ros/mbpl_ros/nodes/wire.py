"""Every message encoding of mbpl_ros, in one place, with its inverse.

Arrays travel as std_msgs/Float64MultiArray in C (row-major) order with one labelled
layout.dim per axis: dim[i].label names axis i, dim[i].size is its length and
dim[i].stride = prod(sizes[i:]), data_offset = 0. For example a (T, dU, dX) gain array is
encode_array(K, labels=("T", "dU", "dX")) and comes back with
decode_array(msg, expected_labels=("T", "dU", "dX")). Decoders check what they are given
and raise WireFormatError (a ValueError) saying what was wrong and what was expected.

Structured messages of the learning loop (controllers, trial requests and records,
rollouts, dynamics) are "records": several named, labelled arrays in one
Float64MultiArray (see encode_record; the layouts are listed in docs/interfaces.md).

Effort commands follow the ros2_control forward-command convention: one value per joint,
ordered like the `joints` parameter; our encoder labels the one axis "joints", and the
decoder also accepts the unlabelled flat layout that ros2_control clients send.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.dynamics import LinearGaussianDynamics

# Default topic names (relative, so a namespace or remapping moves them).
JOINT_STATES_TOPIC = "joint_states"
EFFORT_COMMANDS_TOPIC = "effort_controller/commands"
EE_POSE_TOPIC = "ee_pose"
EE_TWIST_TOPIC = "ee_twist"

JOINTS_LABEL = "joints"
_NANOSECONDS_PER_SECOND = 1_000_000_000

Stamp = Union[Time, int]  # a message stamp, or integer nanoseconds


class WireFormatError(ValueError):
    """A message does not have the layout, shape or values its decoder requires."""


# ---------------------------------------------------------------- generic arrays
def encode_array(array, labels: Sequence[str]) -> Float64MultiArray:
    """Float64MultiArray carrying `array` (any shape, ndim >= 1) with one label per axis."""
    values = np.asarray(array, dtype=np.float64)
    labels = tuple(labels)
    if values.ndim == 0:
        raise WireFormatError("encode_array needs at least one axis; wrap a scalar as shape (1,)")
    if len(labels) != values.ndim:
        raise WireFormatError(f"need one label per axis: array has shape {values.shape} "
                              f"but labels are {labels}")
    if not all(isinstance(label, str) and label for label in labels) or len(set(labels)) != len(labels):
        raise WireFormatError(f"labels must be distinct non-empty strings; got {labels}")
    strides = np.cumprod(values.shape[::-1])[::-1]  # prod(shape[i:])
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=int(size), stride=int(stride))
                      for label, size, stride in zip(labels, values.shape, strides)]
    msg.layout.data_offset = 0
    msg.data = np.ascontiguousarray(values).ravel()
    return msg


def array_labels(msg: Float64MultiArray) -> Tuple[str, ...]:
    """The axis labels of an encoded array (empty for an unlabelled flat vector)."""
    return tuple(dim.label for dim in msg.layout.dim)


def decode_array(msg: Float64MultiArray, expected_labels: Optional[Sequence[str]] = None,
                 expected_shape: Optional[Sequence[Optional[int]]] = None,
                 allow_unlabelled: bool = False) -> np.ndarray:
    """The array in `msg`, checked against the labels and shape the caller expects.

    expected_labels: the exact axis labels, or None to accept any.
    expected_shape: one entry per axis, an int or None for "any length"; None to accept any.
    allow_unlabelled: accept a message without layout (a flat vector, the ros2_control
        convention); it then counts as one axis carrying the single expected label.
    Returns a new float64 array, so the message can be reused.
    """
    data = np.array(msg.data, dtype=np.float64)
    dims = list(msg.layout.dim)
    if not dims:
        if not allow_unlabelled:
            raise WireFormatError(f"the array has no layout.dim; expected labelled axes "
                                  f"{tuple(expected_labels) if expected_labels is not None else '(any)'}")
        if expected_labels is not None and len(tuple(expected_labels)) != 1:
            raise WireFormatError(f"an unlabelled flat array has one axis; expected axes "
                                  f"{tuple(expected_labels)}")
        if msg.layout.data_offset != 0:
            raise WireFormatError(f"layout.data_offset must be 0; got {msg.layout.data_offset}")
        array, labels = data, None
    else:
        labels = tuple(dim.label for dim in dims)
        if expected_labels is not None and labels != tuple(expected_labels):
            raise WireFormatError(f"array axes are labelled {labels}; expected {tuple(expected_labels)}")
        shape = tuple(int(dim.size) for dim in dims)
        contiguous_strides = tuple(int(s) for s in np.cumprod(shape[::-1])[::-1])
        strides = tuple(int(dim.stride) for dim in dims)
        if strides != contiguous_strides or msg.layout.data_offset != 0:
            raise WireFormatError(f"only contiguous row-major layouts are supported: sizes {shape} need "
                                  f"strides {contiguous_strides} and data_offset 0; got strides "
                                  f"{strides} and data_offset {msg.layout.data_offset}")
        if data.size != int(np.prod(shape)):
            raise WireFormatError(f"layout {dict(zip(labels, shape))} needs {int(np.prod(shape))} "
                                  f"values; data has {data.size}")
        array = data.reshape(shape)
    if expected_shape is not None:
        expected_shape = tuple(expected_shape)
        matches = len(expected_shape) == array.ndim and all(
            want is None or want == got for want, got in zip(expected_shape, array.shape))
        if not matches:
            shown = tuple("any" if want is None else want for want in expected_shape)
            named = f" (axes {labels})" if labels else ""
            raise WireFormatError(f"array has shape {array.shape}{named}; expected {shown}")
    return array


# ---------------------------------------------------------------- effort commands
def encode_effort_command(effort) -> Float64MultiArray:
    """Effort command (J,) in N·m, ordered like the receiver's `joints` parameter."""
    effort = np.asarray(effort, dtype=np.float64)
    if effort.ndim != 1:
        raise WireFormatError(f"an effort command is one value per joint, shape (J,); got {effort.shape}")
    return encode_array(effort, labels=(JOINTS_LABEL,))


def decode_effort_command(msg: Float64MultiArray, n_joints: int) -> np.ndarray:
    """The (J,) efforts of a command; wrong length, wrong label or non-finite -> WireFormatError."""
    effort = decode_array(msg, expected_labels=(JOINTS_LABEL,), allow_unlabelled=True)
    if effort.shape != (n_joints,):
        raise WireFormatError(f"effort command has {effort.size} values; expected one per joint ({n_joints})")
    if not np.all(np.isfinite(effort)):
        raise WireFormatError(f"effort command must be finite; got {effort.tolist()}")
    return effort


# ---------------------------------------------------------------- time
def stamp_from_nanoseconds(nanoseconds: int) -> Time:
    nanoseconds = int(nanoseconds)
    if nanoseconds < 0:
        raise WireFormatError(f"a stamp must not be negative; got {nanoseconds} ns")
    seconds, remainder = divmod(nanoseconds, _NANOSECONDS_PER_SECOND)
    return Time(sec=seconds, nanosec=remainder)


def nanoseconds_from_stamp(stamp: Time) -> int:
    return int(stamp.sec) * _NANOSECONDS_PER_SECOND + int(stamp.nanosec)


def _stamp(stamp: Stamp) -> Time:
    return stamp if isinstance(stamp, Time) else stamp_from_nanoseconds(stamp)


def encode_clock(nanoseconds: int) -> Clock:
    """rosgraph_msgs/Clock for /clock at simulated time `nanoseconds`."""
    return Clock(clock=stamp_from_nanoseconds(nanoseconds))


# ---------------------------------------------------------------- joint states
def encode_joint_state(names: Sequence[str], position, velocity, effort, stamp: Stamp) -> JointState:
    """sensor_msgs/JointState from (J,) arrays in the order of `names`."""
    names = [str(name) for name in names]
    arrays = [np.asarray(values, dtype=np.float64) for values in (position, velocity, effort)]
    for what, values in zip(("position", "velocity", "effort"), arrays):
        if values.shape != (len(names),):
            raise WireFormatError(f"joint state {what} must have shape ({len(names)},) for joints "
                                  f"{names}; got {values.shape}")
    msg = JointState()
    msg.header.stamp = _stamp(stamp)
    msg.name = names
    msg.position, msg.velocity, msg.effort = arrays
    return msg


def decode_joint_state(msg: JointState, joint_names: Sequence[str]
                       ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """q (J,), qd (J,) and effort (J,) (None if the message has none), ordered like joint_names.

    The message may list more joints, in any order; each of joint_names must be present.
    """
    names = list(msg.name)
    missing = [name for name in joint_names if name not in names]
    if missing:
        raise WireFormatError(f"joint state lacks joints {missing}; it has {names}")
    order = [names.index(name) for name in joint_names]
    position, velocity, effort = (np.array(values, dtype=np.float64)
                                  for values in (msg.position, msg.velocity, msg.effort))
    if position.size != len(names) or velocity.size != len(names):
        raise WireFormatError(f"joint state needs a position and a velocity per joint ({len(names)}); "
                              f"got {position.size} and {velocity.size}")
    if effort.size not in (0, len(names)):
        raise WireFormatError(f"joint state effort must be empty or one per joint ({len(names)}); "
                              f"got {effort.size}")
    return position[order], velocity[order], (effort[order] if effort.size else None)


# ---------------------------------------------------------------- end-effector
def _vector(values, size: int, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (size,):
        raise WireFormatError(f"{what} must have shape ({size},); got {vector.shape}")
    return vector


def encode_pose(position, orientation_xyzw, stamp: Stamp, frame_id: str = "world") -> PoseStamped:
    """geometry_msgs/PoseStamped from a position (3,) and a quaternion (x, y, z, w) (4,)."""
    position = _vector(position, 3, "position")
    orientation = _vector(orientation_xyzw, 4, "orientation (x, y, z, w)")
    msg = PoseStamped()
    msg.header.stamp = _stamp(stamp)
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
    (msg.pose.orientation.x, msg.pose.orientation.y,
     msg.pose.orientation.z, msg.pose.orientation.w) = (float(v) for v in orientation)
    return msg


def decode_pose(msg: PoseStamped) -> Tuple[np.ndarray, np.ndarray]:
    """Position (3,) and quaternion (x, y, z, w) (4,) of a PoseStamped."""
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])


def encode_twist(linear, angular, stamp: Stamp, frame_id: str = "world") -> TwistStamped:
    """geometry_msgs/TwistStamped from linear (3,) and angular (3,) velocities."""
    linear, angular = _vector(linear, 3, "linear velocity"), _vector(angular, 3, "angular velocity")
    msg = TwistStamped()
    msg.header.stamp = _stamp(stamp)
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
    return msg


def decode_twist(msg: TwistStamped) -> Tuple[np.ndarray, np.ndarray]:
    """Linear (3,) and angular (3,) velocity of a TwistStamped."""
    v, w = msg.twist.linear, msg.twist.angular
    return np.array([v.x, v.y, v.z]), np.array([w.x, w.y, w.z])


# ================================================================ records
# A record carries several named arrays in one std_msgs/Float64MultiArray:
#   layout.dim[0]    label "mbpl_ros/<kind>", size = len(data), stride = RECORD_FORMAT_VERSION
#   layout.dim[1..]  one per field, in data order: label "<name>[<axis>=<size>,...]"
#                    ("<name>[]" for a scalar), size = number of values, stride = offset of
#                    the field's first value in data
#   layout.data_offset = 0; each field's values are in C (row-major) order.
# E.g. a controller is dims ["mbpl_ros/lg_controller", "condition[]", "version[]",
# "K[T=50,dU=2,dX=10]", ...]. Integers (ids, counts) travel as float64, exact below 2**53.
RECORD_FORMAT_VERSION = 1
RECORD_PREFIX = "mbpl_ros/"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_FIELD_LABEL = re.compile(rf"^({_NAME})\[((?:{_NAME}=\d+(?:,{_NAME}=\d+)*)?)\]$")
_MAX_EXACT_INTEGER = 2 ** 53


@dataclass(frozen=True)
class RecordField:
    """One named array of a record and the labels of its axes (() for a scalar)."""

    values: np.ndarray
    labels: Tuple[str, ...]


def encode_record(kind: str, fields: Mapping[str, Tuple[object, Sequence[str]]]) -> Float64MultiArray:
    """A record of `kind` from {name: (array, axis labels)}, in the given field order.
    A scalar field has labels ()."""
    if not re.fullmatch(_NAME, kind):
        raise WireFormatError(f"record kind must be an identifier; got {kind!r}")
    dims, chunks, offset = [], [], 0
    for name, (values, labels) in fields.items():
        if not re.fullmatch(_NAME, name):
            raise WireFormatError(f"record field names must be identifiers; got {name!r}")
        values = np.asarray(values, dtype=np.float64)
        labels = tuple(labels)
        if len(labels) != values.ndim or not all(re.fullmatch(_NAME, label) for label in labels) \
                or len(set(labels)) != len(labels):
            raise WireFormatError(f"field {name!r}: need one distinct identifier label per axis of "
                                  f"shape {values.shape}; got {labels}")
        axes = ",".join(f"{label}={size}" for label, size in zip(labels, values.shape))
        dims.append(MultiArrayDimension(label=f"{name}[{axes}]", size=int(values.size), stride=offset))
        chunks.append(values.ravel())
        offset += values.size
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=RECORD_PREFIX + kind, size=offset,
                                          stride=RECORD_FORMAT_VERSION)] + dims
    msg.layout.data_offset = 0
    msg.data = np.concatenate(chunks) if chunks else np.zeros(0)
    return msg


def record_kind(msg: Float64MultiArray) -> Optional[str]:
    """The kind of a record, or None if `msg` is not a record."""
    dims = msg.layout.dim
    if not dims or not dims[0].label.startswith(RECORD_PREFIX):
        return None
    return dims[0].label[len(RECORD_PREFIX):]


def decode_record(msg: Float64MultiArray, kind: str) -> Dict[str, RecordField]:
    """{name: RecordField} of a record of `kind`; anything else -> WireFormatError."""
    got = record_kind(msg)
    if got != kind:
        raise WireFormatError(f"expected a record of kind {kind!r} (layout.dim[0].label "
                              f"'{RECORD_PREFIX}{kind}'); got "
                              + (f"kind {got!r}" if got is not None else "no record"))
    header, dims = msg.layout.dim[0], msg.layout.dim[1:]
    if header.stride != RECORD_FORMAT_VERSION:
        raise WireFormatError(f"record format version {header.stride}; this decoder reads "
                              f"version {RECORD_FORMAT_VERSION}")
    data = np.array(msg.data, dtype=np.float64)
    if msg.layout.data_offset != 0 or header.size != data.size:
        raise WireFormatError(f"record {kind!r} announces {header.size} values at data_offset 0; "
                              f"got {data.size} values at data_offset {msg.layout.data_offset}")
    fields, offset = {}, 0
    for dim in dims:
        match = _FIELD_LABEL.match(dim.label)
        if match is None:
            raise WireFormatError(f"record {kind!r}: field label {dim.label!r} is not 'name[axis=size,...]'")
        name, axes = match.group(1), match.group(2)
        pairs = [axis.split("=") for axis in axes.split(",")] if axes else []
        labels = tuple(label for label, _ in pairs)
        shape = tuple(int(size) for _, size in pairs)
        if int(np.prod(shape, dtype=np.int64)) != dim.size or dim.stride != offset or name in fields:
            raise WireFormatError(f"record {kind!r}: field {dim.label!r} has size {dim.size} at offset "
                                  f"{dim.stride}; expected a new field of size "
                                  f"{int(np.prod(shape, dtype=np.int64))} at offset {offset}")
        fields[name] = RecordField(data[offset:offset + dim.size].reshape(shape), labels)
        offset += dim.size
    if offset != data.size:
        raise WireFormatError(f"record {kind!r}: fields cover {offset} values; data has {data.size}")
    return fields


def _field(fields: Mapping[str, RecordField], kind: str, name: str, labels: Sequence[str],
           shape: Optional[Sequence[Optional[int]]] = None, finite: bool = True) -> np.ndarray:
    """One field, checked for presence, axis labels, shape and (optionally) finiteness."""
    if name not in fields:
        raise WireFormatError(f"record {kind!r} lacks field {name!r}; it has {sorted(fields)}")
    field = fields[name]
    if field.labels != tuple(labels):
        raise WireFormatError(f"record {kind!r}: field {name!r} has axes {field.labels}; "
                              f"expected {tuple(labels)}")
    if shape is not None and not all(want is None or want == got for want, got in zip(shape, field.values.shape)):
        shown = tuple("any" if want is None else want for want in shape)
        raise WireFormatError(f"record {kind!r}: field {name!r} has shape {field.values.shape}; "
                              f"expected {shown}")
    if finite and not np.all(np.isfinite(field.values)):
        raise WireFormatError(f"record {kind!r}: field {name!r} must be finite")
    return field.values


def _integer(fields: Mapping[str, RecordField], kind: str, name: str, minimum: int = 0) -> int:
    value = float(_field(fields, kind, name, ()))
    if value != int(value) or not minimum <= value < _MAX_EXACT_INTEGER:
        raise WireFormatError(f"record {kind!r}: field {name!r} must be an integer in "
                              f"[{minimum}, 2**53); got {value!r}")
    return int(value)


def _scalar(value: int) -> Tuple[float, Tuple[str, ...]]:
    return float(value), ()


# ---------------------------------------------------------------- controllers
CONTROLLER_KIND = "lg_controller"


@dataclass(frozen=True)
class ControllerMessage:
    """Version `version` of condition `condition`'s linear-Gaussian controller."""

    condition: int
    version: int
    controller: LinearGaussianController


def encode_controller(message: ControllerMessage) -> Float64MultiArray:
    """Fields: condition[], version[], K[T,dU,dX], k[T,dU], covar[T,dU,dU], chol[T,dU,dU],
    inv_covar[T,dU,dU]. The Cholesky factor and inverse travel too, so the receiver acts
    with bit-identical numbers (no refactorisation)."""
    c = message.controller
    return encode_record(CONTROLLER_KIND, {
        "condition": _scalar(message.condition), "version": _scalar(message.version),
        "K": (c.K, ("T", "dU", "dX")), "k": (c.k, ("T", "dU")), "covar": (c.covar, ("T", "dU", "dU2")),
        "chol": (c.chol, ("T", "dU", "dU2")), "inv_covar": (c.inv_covar, ("T", "dU", "dU2"))})


def decode_controller(msg: Float64MultiArray, dX: Optional[int] = None,
                      dU: Optional[int] = None) -> ControllerMessage:
    fields = decode_record(msg, CONTROLLER_KIND)
    K = _field(fields, CONTROLLER_KIND, "K", ("T", "dU", "dX"), (None, dU, dX))
    T, dU, dX = K.shape
    arrays = {name: _field(fields, CONTROLLER_KIND, name, labels, shape) for name, labels, shape in (
        ("k", ("T", "dU"), (T, dU)), ("covar", ("T", "dU", "dU2"), (T, dU, dU)),
        ("chol", ("T", "dU", "dU2"), (T, dU, dU)), ("inv_covar", ("T", "dU", "dU2"), (T, dU, dU)))}
    if T < 1 or dU < 1:
        raise WireFormatError(f"controller needs T >= 1 and dU >= 1; got K of shape {K.shape}")
    return ControllerMessage(_integer(fields, CONTROLLER_KIND, "condition"),
                             _integer(fields, CONTROLLER_KIND, "version"),
                             LinearGaussianController(K=K, **arrays))


# ---------------------------------------------------------------- trials
# The trial protocol (docs/interfaces.md): gps_trainer publishes a TrialRequest with a
# fresh trial_id; lqr_controller resets the arm, runs the trial and publishes a TrialRecord
# of what it did; sample_collector turns the record and /joint_states into a Rollout with
# the same trial_id. Anything whose trial_id is not the awaited one is ignored.
TRIAL_REQUEST_KIND = "trial_request"
TRIAL_RECORD_KIND = "trial_record"
ROLLOUT_KIND = "rollout"

#: What executes a trial: the condition's linear-Gaussian controller, or the exported policy.
EXECUTORS = ("controller", "policy")
#: Why a trial is run: exploration samples for learning, or a noise-free evaluation.
PURPOSES = ("sample", "evaluation")


class TrialStatus(IntEnum):
    """Outcome of a trial, carried by TrialRecord and Rollout."""

    OK = 0
    GAP = 1              # missing joint states, or states further apart than the control period allows
    STALE = 2            # the same (or an older) joint state was used for two steps
    NON_FINITE = 3       # a joint state or command had NaN/inf
    MISSING_STATE = 4    # a joint state the controller used never reached the collector
    ABORTED = 5          # the controller could not run the trial (reset failed, unknown controller, ...)
    # Aborted by a safety rule of lqr_controller (docs/safety.md); the rollout is never used:
    WATCHDOG = 6         # joint states stopped for watchdog_periods control periods
    ESTOP = 7            # the emergency stop was (or is) latched; the trainer pauses, then retries
    UNSAFE_COMMAND = 8   # the controller or policy output (or the state it acted on) was not finite
    IMPLAUSIBLE_STATE = 9  # a joint state not finite or outside the envelope (core.sanity)


@dataclass(frozen=True)
class TrialRequest:
    """Run one trial: condition `condition` from `initial_positions` (J,) towards `target` (3,),
    with `executor` (controller version `controller_version`, or the policy), adding
    chol_t · noise[t] (noise (T, dU), zeros for evaluation) at step t."""

    trial_id: int
    condition: int
    iteration: int
    index: int
    controller_version: int
    executor: str
    purpose: str
    initial_positions: np.ndarray
    target: np.ndarray
    noise: np.ndarray

    @property
    def T(self) -> int:
        return self.noise.shape[0]


def _choice(fields, kind: str, name: str, options: Sequence[str]) -> str:
    value = _integer(fields, kind, name)
    if value >= len(options):
        raise WireFormatError(f"record {kind!r}: field {name!r} is {value}; allowed: 0..{len(options) - 1} "
                              f"({', '.join(f'{i}={o}' for i, o in enumerate(options))})")
    return options[value]


def _option_index(value: str, options: Sequence[str], what: str) -> int:
    if value not in options:
        raise WireFormatError(f"{what} must be one of {list(options)}; got {value!r}")
    return options.index(value)


def encode_trial_request(request: TrialRequest) -> Float64MultiArray:
    """Fields: trial_id[], condition[], iteration[], index[], controller_version[],
    executor[] (index into EXECUTORS), purpose[] (index into PURPOSES),
    initial_positions[joints=J], target[xyz=3], noise[T,dU]."""
    return encode_record(TRIAL_REQUEST_KIND, {
        "trial_id": _scalar(request.trial_id), "condition": _scalar(request.condition),
        "iteration": _scalar(request.iteration), "index": _scalar(request.index),
        "controller_version": _scalar(request.controller_version),
        "executor": _scalar(_option_index(request.executor, EXECUTORS, "executor")),
        "purpose": _scalar(_option_index(request.purpose, PURPOSES, "purpose")),
        "initial_positions": (request.initial_positions, (JOINTS_LABEL,)),
        "target": (request.target, ("xyz",)), "noise": (request.noise, ("T", "dU"))})


def decode_trial_request(msg: Float64MultiArray, n_joints: Optional[int] = None,
                         dU: Optional[int] = None) -> TrialRequest:
    k = TRIAL_REQUEST_KIND
    fields = decode_record(msg, k)
    noise = _field(fields, k, "noise", ("T", "dU"), (None, dU))
    if noise.shape[0] < 1:
        raise WireFormatError("trial request: noise must have T >= 1 rows")
    return TrialRequest(
        trial_id=_integer(fields, k, "trial_id"), condition=_integer(fields, k, "condition"),
        iteration=_integer(fields, k, "iteration"), index=_integer(fields, k, "index"),
        controller_version=_integer(fields, k, "controller_version"),
        executor=_choice(fields, k, "executor", EXECUTORS), purpose=_choice(fields, k, "purpose", PURPOSES),
        initial_positions=_field(fields, k, "initial_positions", (JOINTS_LABEL,), (n_joints,)),
        target=_field(fields, k, "target", ("xyz",), (3,)), noise=noise)


@dataclass(frozen=True)
class TrialRecord:
    """What lqr_controller did in a trial: at step t it used the joint state stamped
    state_stamps[t] and sent commands[t] (T, dU). status != OK: it could not run the
    trial (then T may be 0)."""

    trial_id: int
    condition: int
    iteration: int
    index: int
    controller_version: int
    purpose: str
    status: TrialStatus
    target: np.ndarray
    state_stamps: np.ndarray   # (T, 2): [sec, nanosec] of each joint state used (exact in float64)
    commands: np.ndarray       # (T, dU)

    @property
    def state_stamps_ns(self) -> np.ndarray:
        """(T,) int64 nanoseconds."""
        return self.state_stamps[:, 0].astype(np.int64) * _NANOSECONDS_PER_SECOND + \
            self.state_stamps[:, 1].astype(np.int64)


def stamps_to_pairs(stamps_ns: Sequence[int]) -> np.ndarray:
    """(T, 2) [sec, nanosec] from integer nanoseconds (T,)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    return np.stack(np.divmod(stamps, _NANOSECONDS_PER_SECOND), axis=1).astype(np.float64)


def _trial_header(obj) -> Dict[str, Tuple[float, tuple]]:
    return {"trial_id": _scalar(obj.trial_id), "condition": _scalar(obj.condition),
            "iteration": _scalar(obj.iteration), "index": _scalar(obj.index),
            "controller_version": _scalar(obj.controller_version),
            "purpose": _scalar(_option_index(obj.purpose, PURPOSES, "purpose")),
            "status": _scalar(int(TrialStatus(obj.status)))}


def _decode_trial_header(fields, kind: str) -> dict:
    status = _integer(fields, kind, "status")
    if status not in TrialStatus._value2member_map_:
        raise WireFormatError(f"record {kind!r}: status {status} is not one of "
                              f"{[f'{s.value}={s.name}' for s in TrialStatus]}")
    return dict(trial_id=_integer(fields, kind, "trial_id"), condition=_integer(fields, kind, "condition"),
                iteration=_integer(fields, kind, "iteration"), index=_integer(fields, kind, "index"),
                controller_version=_integer(fields, kind, "controller_version"),
                purpose=_choice(fields, kind, "purpose", PURPOSES), status=TrialStatus(status))


def encode_trial_record(record: TrialRecord) -> Float64MultiArray:
    """Fields: trial_id[], condition[], iteration[], index[], controller_version[], purpose[],
    status[] (TrialStatus), target[xyz=3], state_stamps[T,stamp=2], commands[T,dU]."""
    return encode_record(TRIAL_RECORD_KIND, {
        **_trial_header(record), "target": (record.target, ("xyz",)),
        "state_stamps": (record.state_stamps, ("T", "stamp")), "commands": (record.commands, ("T", "dU"))})


def decode_trial_record(msg: Float64MultiArray, dU: Optional[int] = None) -> TrialRecord:
    k = TRIAL_RECORD_KIND
    fields = decode_record(msg, k)
    header = _decode_trial_header(fields, k)
    stamps = _field(fields, k, "state_stamps", ("T", "stamp"), (None, 2))
    # Commands may hold NaN: the collector flags those rollouts, so they must arrive.
    commands = _field(fields, k, "commands", ("T", "dU"), (stamps.shape[0], dU), finite=False)
    if np.any(stamps < 0) or np.any(stamps[:, 1] >= _NANOSECONDS_PER_SECOND) or np.any(stamps != np.floor(stamps)):
        raise WireFormatError("trial record: state_stamps must be [sec, nanosec] integer pairs with "
                              "0 <= nanosec < 1e9")
    return TrialRecord(**header, target=_field(fields, k, "target", ("xyz",), (3,)),
                       state_stamps=stamps, commands=commands)


@dataclass(frozen=True)
class RolloutMessage:
    """A finished trial as the core sees it: X (T, dX), U (T, dU) (empty, T = 0, when
    status != OK)."""

    trial_id: int
    condition: int
    iteration: int
    index: int
    controller_version: int
    purpose: str
    status: TrialStatus
    X: np.ndarray
    U: np.ndarray


def encode_rollout(rollout: RolloutMessage) -> Float64MultiArray:
    """Fields: trial_id[], condition[], iteration[], index[], controller_version[], purpose[],
    status[] (TrialStatus), X[T,dX], U[T,dU]."""
    return encode_record(ROLLOUT_KIND, {**_trial_header(rollout), "X": (rollout.X, ("T", "dX")),
                                        "U": (rollout.U, ("T", "dU"))})


def decode_rollout(msg: Float64MultiArray, dX: Optional[int] = None, dU: Optional[int] = None) -> RolloutMessage:
    k = ROLLOUT_KIND
    fields = decode_record(msg, k)
    header = _decode_trial_header(fields, k)
    ok = header["status"] == TrialStatus.OK
    X = _field(fields, k, "X", ("T", "dX"), (None, dX), finite=ok)
    U = _field(fields, k, "U", ("T", "dU"), (X.shape[0], dU), finite=ok)
    return RolloutMessage(**header, X=X, U=U)


# ---------------------------------------------------------------- dynamics
DYNAMICS_KIND = "lg_dynamics"


@dataclass(frozen=True)
class DynamicsMessage:
    """Condition `condition`'s dynamics fitted to the rollouts `trial_ids` of controller version
    `controller_version`; `complete` once all of that version's sample rollouts are in (the
    fit LQR-FLM uses, with the prior refitted on them)."""

    condition: int
    controller_version: int
    trial_ids: Tuple[int, ...]   # the rollouts fitted, in the order of their index
    complete: bool
    dynamics: LinearGaussianDynamics


def _trial_ids(fields, kind: str) -> Tuple[int, ...]:
    ids = _field(fields, kind, "trial_ids", ("n",))
    if ids.size < 1 or np.any(ids != np.floor(ids)) or np.any(ids < 0) or np.any(ids >= _MAX_EXACT_INTEGER):
        raise WireFormatError(f"record {kind!r}: trial_ids must be one or more integers in [0, 2**53)")
    return tuple(int(i) for i in ids)


def encode_dynamics(message: DynamicsMessage) -> Float64MultiArray:
    """Fields: condition[], controller_version[], trial_ids[n], complete[] (0/1),
    F[t=T-1,dX,dXU], f[t,dX], covar[t,dX,dX2], x0_mean[dX], x0_covar[dX,dX2]."""
    d = message.dynamics
    return encode_record(DYNAMICS_KIND, {
        "condition": _scalar(message.condition), "controller_version": _scalar(message.controller_version),
        "trial_ids": (np.asarray(message.trial_ids, dtype=np.float64), ("n",)),
        "complete": _scalar(int(bool(message.complete))),
        "F": (d.F, ("t", "dX", "dXU")), "f": (d.f, ("t", "dX")), "covar": (d.covar, ("t", "dX", "dX2")),
        "x0_mean": (d.x0_mean, ("dX",)), "x0_covar": (d.x0_covar, ("dX", "dX2"))})


def decode_dynamics(msg: Float64MultiArray, dX: Optional[int] = None, dU: Optional[int] = None) -> DynamicsMessage:
    k = DYNAMICS_KIND
    fields = decode_record(msg, k)
    F = _field(fields, k, "F", ("t", "dX", "dXU"), (None, dX, None if dX is None or dU is None else dX + dU))
    steps, dX = F.shape[:2]
    if F.shape[2] <= dX:
        raise WireFormatError(f"dynamics: F must have shape (T-1, dX, dX+dU) with dU >= 1; got {F.shape}")
    complete = _integer(fields, k, "complete")
    if complete not in (0, 1):
        raise WireFormatError(f"dynamics: complete must be 0 or 1; got {complete}")
    return DynamicsMessage(
        condition=_integer(fields, k, "condition"), controller_version=_integer(fields, k, "controller_version"),
        trial_ids=_trial_ids(fields, k), complete=bool(complete),
        dynamics=LinearGaussianDynamics(
            F=F, f=_field(fields, k, "f", ("t", "dX"), (steps, dX)),
            covar=_field(fields, k, "covar", ("t", "dX", "dX2"), (steps, dX, dX)),
            x0_mean=_field(fields, k, "x0_mean", ("dX",), (dX,)),
            x0_covar=_field(fields, k, "x0_covar", ("dX", "dX2"), (dX, dX))))


# ---------------------------------------------------------------- progress and markers
def encode_progress(progress, algorithm: str, stamp: Stamp):
    """mbpl_ros_interfaces/TrainingProgress of a mbpl_ros.progress.Progress (eta_s -1: unknown)."""
    from mbpl_ros_interfaces.msg import TrainingProgress

    from mbpl_ros.progress import PHASES

    return TrainingProgress(
        stamp=_stamp(stamp), algorithm=algorithm, iteration=progress.iteration,
        iterations=progress.iterations, phase=PHASES.index(progress.phase),
        trials_done=progress.trials_done, trials_in_iteration=progress.trials_in_iteration,
        rollouts=progress.rollouts, env_steps=progress.env_steps,
        final_distance_m=[float(d) for d in progress.final_distance_m],
        policy_final_distance_m=[float(d) for d in progress.policy_final_distance_m],
        mean_cost=float("nan") if progress.mean_cost is None else float(progress.mean_cost),
        eta_s=-1.0 if progress.eta_s is None else float(progress.eta_s))


def encode_markers(targets, paths, stamp: Stamp, frame_id: str = "world"):
    """visualization_msgs/MarkerArray for RViz or Foxglove: a sphere at each condition's
    target (targets (M, 3), namespace "targets") and, for each condition with one, the
    end-effector path of its latest trial (paths: condition -> (T, 3), namespace "paths")."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    markers = []
    for m, target in enumerate(np.asarray(targets, dtype=float)):
        sphere = Marker(ns="targets", id=m, type=Marker.SPHERE, action=Marker.ADD)
        sphere.header.frame_id, sphere.header.stamp = frame_id, _stamp(stamp)
        sphere.pose.position = Point(x=target[0], y=target[1], z=target[2])
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02
        sphere.color.r, sphere.color.g, sphere.color.a = 1.0, 0.3, 0.9
        markers.append(sphere)
    for m, path in sorted(paths.items()):
        line = Marker(ns="paths", id=m, type=Marker.LINE_STRIP, action=Marker.ADD)
        line.header.frame_id, line.header.stamp = frame_id, _stamp(stamp)
        line.pose.orientation.w = 1.0
        line.scale.x = 0.004
        line.color.b, line.color.g, line.color.a = 1.0, 0.6, 0.9
        line.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in np.asarray(path)]
        markers.append(line)
    return MarkerArray(markers=markers)


# ---------------------------------------------------------------- topics and QoS of the learning loop
TRIAL_REQUESTS_TOPIC = "gps/trial_requests"
TRIAL_RECORDS_TOPIC = "gps/trial_records"
ROLLOUTS_TOPIC = "gps/rollouts"
DYNAMICS_TOPIC = "gps/dynamics"
CONTROLLERS_TOPIC = "gps/controllers"
#: gps_trainer's progress (mbpl_ros_interfaces/TrainingProgress) and the targets and
#: end-effector paths of its trials (visualization_msgs/MarkerArray), both LATCHED_STATE_QOS.
PROGRESS_TOPIC = "gps/progress"
MARKERS_TOPIC = "gps/markers"

#: Requests, records, rollouts, dynamics: reliable, every message delivered in order.
EVENTS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
#: Emergency stop: std_msgs/Bool, True = stop. lqr_controller latches on True; only its
#: ~/reset_estop service (std_srvs/Trigger) clears the latch, never a False.
ESTOP_TOPIC = "gps/estop"
#: The e-stop of every robot at once (absolute: robots in namespaces all hear it).
GLOBAL_ESTOP_TOPIC = "/gps/estop"
#: lqr_controller's latch state (std_msgs/Bool, True = latched), published at start-up and on
#: every change; transient local, so a (re)started gps_trainer knows it at once.
ESTOP_LATCHED_TOPIC = "gps/estop_latched"
#: The e-stop input: reliable and volatile, so any reliable publisher matches (a
#: best-effort one would not: its stop would never arrive).
ESTOP_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
#: A state whose latest value matters to late joiners (the e-stop latch).
LATCHED_STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
#: Controllers: transient local, so a (re)started lqr_controller gets the latest ones.
#: The depth keeps more than one version per condition for up to 64 conditions.
CONTROLLERS_QOS = QoSProfile(depth=128, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
