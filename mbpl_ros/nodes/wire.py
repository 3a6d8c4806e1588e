"""Every message encoding of mbpl_ros, in one place, with its inverse.

Arrays travel as std_msgs/Float64MultiArray in C (row-major) order with one labelled
layout.dim per axis: dim[i].label names axis i, dim[i].size is its length and
dim[i].stride = prod(sizes[i:]), data_offset = 0. For example a (T, dU, dX) gain array is
encode_array(K, labels=("T", "dU", "dX")) and comes back with
decode_array(msg, expected_labels=("T", "dU", "dX")). Decoders check what they are given
and raise WireFormatError (a ValueError) saying what was wrong and what was expected.

Effort commands follow the ros2_control forward-command convention: one value per joint,
ordered like the `joints` parameter; our encoder labels the one axis "joints", and the
decoder also accepts the unlabelled flat layout that ros2_control clients send.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

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
