"""
Every message conversion of mbpl_ros, in one place, with its inverse; topic names and QoS.

The learning loop's messages are the typed ones of mbpl_ros_interfaces (docs/interfaces.md):
controllers, trial records, rollouts, dynamics and progress on topics, trials as the
RunTrial action. The nodes work with the dataclasses below; each has an encoder to its
message and a decoder that checks the message (arrays against their dimension fields and
the receiver's dX, dU, enumerations against their constants) and raises WireFormatError
(a ValueError) saying what was wrong and what was expected.

Effort commands follow the ros2_control forward-command convention: a
std_msgs/Float64MultiArray with one value per joint, ordered like the `joints` parameter;
our encoder labels the one axis "joints", and the decoder also accepts the unlabelled flat
layout that ros2_control clients send.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped, TwistStamped
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros_interfaces.action import RunTrial

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.dynamics import LinearGaussianDynamics

# Default topic names (relative, so a namespace or remapping moves them).
JOINT_STATES_TOPIC = "joint_states"
EFFORT_COMMANDS_TOPIC = "effort_controller/commands"
EE_POSE_TOPIC = "ee_pose"
EE_TWIST_TOPIC = "ee_twist"
#: The camera (sim_robot's, or a ROS 2 camera driver's): parameters image_topic and
#: camera_info_topic.
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
CAMERA_FRAME = "camera"

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
    distinct = len(set(labels)) == len(labels)
    if not all(isinstance(label, str) and label for label in labels) or not distinct:
        raise WireFormatError(f"labels must be distinct non-empty strings; got {labels}")
    strides = np.cumprod(values.shape[::-1])[::-1]  # prod(shape[i:])
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=int(size), stride=int(stride))
                      for label, size, stride in zip(labels, values.shape, strides)]
    msg.layout.data_offset = 0
    msg.data = np.ascontiguousarray(values).ravel()
    return msg


def array_labels(msg: Float64MultiArray) -> Tuple[str, ...]:
    """Return the axis labels of an encoded array (empty for an unlabelled flat vector)."""
    return tuple(dim.label for dim in msg.layout.dim)


def decode_array(msg: Float64MultiArray, expected_labels: Optional[Sequence[str]] = None,
                 expected_shape: Optional[Sequence[Optional[int]]] = None,
                 allow_unlabelled: bool = False) -> np.ndarray:
    """
    Return the array in `msg`, checked against the labels and shape the caller expects.

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
            wanted = tuple(expected_labels) if expected_labels is not None else "(any)"
            raise WireFormatError(f"the array has no layout.dim; expected labelled axes {wanted}")
        if expected_labels is not None and len(tuple(expected_labels)) != 1:
            raise WireFormatError(f"an unlabelled flat array has one axis; expected axes "
                                  f"{tuple(expected_labels)}")
        if msg.layout.data_offset != 0:
            raise WireFormatError(f"layout.data_offset must be 0; got {msg.layout.data_offset}")
        array, labels = data, None
    else:
        labels = tuple(dim.label for dim in dims)
        if expected_labels is not None and labels != tuple(expected_labels):
            raise WireFormatError(f"array axes are labelled {labels}; expected "
                                  f"{tuple(expected_labels)}")
        shape = tuple(int(dim.size) for dim in dims)
        contiguous_strides = tuple(int(s) for s in np.cumprod(shape[::-1])[::-1])
        strides = tuple(int(dim.stride) for dim in dims)
        if strides != contiguous_strides or msg.layout.data_offset != 0:
            raise WireFormatError(f"only contiguous row-major layouts are supported: sizes "
                                  f"{shape} need strides {contiguous_strides} and data_offset 0; "
                                  f"got strides {strides} and data_offset "
                                  f"{msg.layout.data_offset}")
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
        raise WireFormatError(f"an effort command is one value per joint, shape (J,); got "
                              f"{effort.shape}")
    return encode_array(effort, labels=(JOINTS_LABEL,))


def decode_effort_command(msg: Float64MultiArray, n_joints: int) -> np.ndarray:
    """Return the (J,) efforts of a command (WireFormatError: bad length or label, non-finite)."""
    effort = decode_array(msg, expected_labels=(JOINTS_LABEL,), allow_unlabelled=True)
    if effort.shape != (n_joints,):
        raise WireFormatError(f"effort command has {effort.size} values; expected one per joint "
                              f"({n_joints})")
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
def encode_joint_state(names: Sequence[str], position, velocity, effort,
                       stamp: Stamp) -> JointState:
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
    """
    Q (J,), qd (J,) and effort (J,) (None if the message has none), ordered like joint_names.

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
        raise WireFormatError(f"joint state needs a position and a velocity per joint "
                              f"({len(names)}); got {position.size} and {velocity.size}")
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
    linear = _vector(linear, 3, "linear velocity")
    angular = _vector(angular, 3, "angular velocity")
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


# ---------------------------------------------------------------- camera
#: Encodings an image may arrive in (sensor_msgs/image_encodings); bgr8 is turned into RGB.
IMAGE_ENCODINGS = ("rgb8", "bgr8")


def encode_image(image, stamp: Stamp, frame_id: str = CAMERA_FRAME) -> Image:
    """sensor_msgs/Image (rgb8) of an RGB image (H, W, 3) uint8."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise WireFormatError(f"an image is (H, W, 3) uint8 RGB; got {pixels.shape} "
                              f"{pixels.dtype}")
    height, width = pixels.shape[:2]
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width)
    msg.header.stamp = _stamp(stamp)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def decode_image(msg: Image, height: Optional[int] = None,
                 width: Optional[int] = None) -> np.ndarray:
    """
    Return the RGB pixels (H, W, 3) uint8 of a sensor_msgs/Image (a new array).

    rgb8 and bgr8 are accepted, rows may be padded (step >= 3·width); height and width, when
    given, must match. WireFormatError says what was wrong and what is allowed.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise WireFormatError(f"image encoding is {msg.encoding!r}; allowed: one of "
                              f"{list(IMAGE_ENCODINGS)}")
    rows, columns, step = int(msg.height), int(msg.width), int(msg.step)
    if (height is not None and rows != height) or (width is not None and columns != width):
        raise WireFormatError(f"image is {rows}x{columns} (height x width); expected "
                              f"{height}x{width} (the experiment's camera)")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if rows < 1 or columns < 1 or step < 3 * columns or data.size != rows * step:
        raise WireFormatError(f"image of {rows}x{columns} with step {step} needs step >= "
                              f"{3 * columns} and {rows} rows of step bytes; data has "
                              f"{data.size} bytes")
    pixels = data.reshape(rows, step)[:, :3 * columns].reshape(rows, columns, 3)
    return np.array(pixels[:, :, ::-1] if msg.encoding == "bgr8" else pixels)


def encode_camera_info(intrinsics: dict, stamp: Stamp, frame_id: str = CAMERA_FRAME
                       ) -> CameraInfo:
    """
    Return the sensor_msgs/CameraInfo of a camera's intrinsics.

    intrinsics: width, height, K (9,) and P (12,) row-major, D, distortion_model (as
    sim.camera.Camera.intrinsics() gives them).
    """
    msg = CameraInfo(width=int(intrinsics["width"]), height=int(intrinsics["height"]),
                     distortion_model=str(intrinsics["distortion_model"]))
    msg.header.stamp = _stamp(stamp)
    msg.header.frame_id = frame_id
    msg.k = _vector(intrinsics["K"], 9, "camera K (9,)")
    msg.p = _vector(intrinsics["P"], 12, "camera P (12,)")
    msg.d = [float(v) for v in np.ravel(intrinsics["D"])]
    msg.r = np.eye(3).ravel()
    return msg


# ================================================================ typed messages of the loop
# mbpl_ros_interfaces (docs/interfaces.md): the dataclasses below are what the nodes work
# with; each has an encoder to its message and a decoder that checks the message's arrays
# against its dimension fields (and the receiver's dX, dU) before anything acts on it.

def _array(values, shape: Sequence[int], what: str, finite: bool = True) -> np.ndarray:
    """Return a flat message array as a new float64 array of `shape` (or WireFormatError)."""
    array = np.array(values, dtype=np.float64)
    size = int(np.prod(shape, dtype=np.int64))
    if array.size != size:
        raise WireFormatError(f"{what} has {array.size} values; its dimension fields say "
                              f"{tuple(int(s) for s in shape)} = {size}")
    if finite and not np.all(np.isfinite(array)):
        raise WireFormatError(f"{what} must be finite")
    return array.reshape(shape)


def _flat(values) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64)).ravel()


def _check_dims(what: str, **dims: Tuple[int, Optional[int], int]) -> None:
    """Each dim (value, expected or None, minimum): WireFormatError naming them."""
    for name, (value, expected, minimum) in dims.items():
        if value < minimum or (expected is not None and value != expected):
            allowed = f"{expected}" if expected is not None else f">= {minimum}"
            raise WireFormatError(f"{what}: {name} is {value}; expected {allowed}")


def _point(values) -> Point:
    x, y, z = (float(v) for v in _vector(values, 3, "target"))
    return Point(x=x, y=y, z=z)


def _from_point(point: Point) -> np.ndarray:
    return np.array([point.x, point.y, point.z], dtype=np.float64)


# ---------------------------------------------------------------- controllers
@dataclass(frozen=True)
class ControllerMessage:
    """Version `version` of condition `condition`'s linear-Gaussian controller."""

    condition: int
    version: int
    controller: LinearGaussianController


def encode_controller(message: ControllerMessage) -> interfaces.LinearGaussianController:
    """Encode as mbpl_ros_interfaces/LinearGaussianController (chol and inverse included)."""
    c = message.controller
    T, dU, dX = c.K.shape
    return interfaces.LinearGaussianController(
        condition=int(message.condition), version=int(message.version), horizon=T,
        state_dim=dX, action_dim=dU, gains=_flat(c.K), offsets=_flat(c.k),
        covariance=_flat(c.covar), covariance_cholesky=_flat(c.chol),
        covariance_inverse=_flat(c.inv_covar))


def decode_controller(msg: interfaces.LinearGaussianController, dX: Optional[int] = None,
                      dU: Optional[int] = None) -> ControllerMessage:
    """Decode a controller; shapes that disagree with its fields (or dX, dU) are refused."""
    T, dX_msg, dU_msg = int(msg.horizon), int(msg.state_dim), int(msg.action_dim)
    _check_dims("controller", horizon=(T, None, 1), state_dim=(dX_msg, dX, 1),
                action_dim=(dU_msg, dU, 1))
    what = f"controller {msg.condition} v{msg.version}:"
    uu = (T, dU_msg, dU_msg)
    return ControllerMessage(int(msg.condition), int(msg.version), LinearGaussianController(
        K=_array(msg.gains, (T, dU_msg, dX_msg), f"{what} gains (T, dU, dX)"),
        k=_array(msg.offsets, (T, dU_msg), f"{what} offsets (T, dU)"),
        covar=_array(msg.covariance, uu, f"{what} covariance (T, dU, dU)"),
        chol=_array(msg.covariance_cholesky, uu, f"{what} covariance_cholesky (T, dU, dU)"),
        inv_covar=_array(msg.covariance_inverse, uu, f"{what} covariance_inverse (T, dU, dU)")))


# ---------------------------------------------------------------- trials
# The trial protocol (docs/interfaces.md): gps_trainer sends a RunTrial goal with a fresh
# trial_id to lqr_controller, which resets the arm, runs the trial, answers with the
# result and publishes a TrialRecord of what it did; sample_collector turns the record and
# /joint_states into a Rollout with the same trial_id. Anything whose trial_id is not the
# awaited one is ignored.

#: What executes a trial: the condition's linear-Gaussian controller, or the exported policy
#: (index = the message constant EXECUTOR_*).
EXECUTORS = ("controller", "policy")
#: Why a trial is run: exploration samples for learning, or a noise-free evaluation
#: (index = the message constant PURPOSE_*).
PURPOSES = ("sample", "evaluation")


class TrialStatus(IntEnum):
    """Outcome of a trial: mbpl_ros_interfaces/TrialStatus (the meanings are listed there)."""

    OK = interfaces.TrialStatus.OK
    GAP = interfaces.TrialStatus.GAP
    STALE = interfaces.TrialStatus.STALE
    NON_FINITE = interfaces.TrialStatus.NON_FINITE
    MISSING_STATE = interfaces.TrialStatus.MISSING_STATE
    ABORTED = interfaces.TrialStatus.ABORTED
    WATCHDOG = interfaces.TrialStatus.WATCHDOG
    ESTOP = interfaces.TrialStatus.ESTOP
    UNSAFE_COMMAND = interfaces.TrialStatus.UNSAFE_COMMAND
    IMPLAUSIBLE_STATE = interfaces.TrialStatus.IMPLAUSIBLE_STATE
    CANCELLED = interfaces.TrialStatus.CANCELLED
    MISSING_IMAGE = interfaces.TrialStatus.MISSING_IMAGE


def _status(value: int, what: str) -> TrialStatus:
    if value not in TrialStatus._value2member_map_:
        raise WireFormatError(f"{what}: status {value} is not one of "
                              f"{[f'{s.value}={s.name}' for s in TrialStatus]}")
    return TrialStatus(value)


def _choice(value: int, options: Sequence[str], what: str) -> str:
    if not 0 <= value < len(options):
        raise WireFormatError(f"{what} is {value}; allowed: "
                              f"{', '.join(f'{i}={o}' for i, o in enumerate(options))}")
    return options[value]


def _option_index(value: str, options: Sequence[str], what: str) -> int:
    if value not in options:
        raise WireFormatError(f"{what} must be one of {list(options)}; got {value!r}")
    return options.index(value)


@dataclass(frozen=True)
class TrialRequest:
    """
    Run one trial of condition `condition` (a RunTrial goal).

    Start from `initial_positions` (J,) towards `target` (3,), with `executor` (controller
    version `controller_version`, or the policy), adding chol_t · noise[t] (noise (T, dU),
    zeros for evaluation) at step t.
    """

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
        """Return the horizon."""
        return self.noise.shape[0]


def encode_trial_request(request: TrialRequest):
    """Encode as a RunTrial goal."""
    noise = np.asarray(request.noise, dtype=np.float64)
    if noise.ndim != 2:
        raise WireFormatError(f"trial noise must have shape (T, dU); got {noise.shape}")
    return RunTrial.Goal(
        trial_id=int(request.trial_id), condition=int(request.condition),
        iteration=int(request.iteration), index=int(request.index),
        controller_version=int(request.controller_version),
        executor=_option_index(request.executor, EXECUTORS, "executor"),
        purpose=_option_index(request.purpose, PURPOSES, "purpose"),
        initial_positions=_flat(request.initial_positions), target=_point(request.target),
        horizon=noise.shape[0], action_dim=noise.shape[1], noise=_flat(noise))


def decode_trial_request(goal, n_joints: Optional[int] = None,
                         dU: Optional[int] = None) -> TrialRequest:
    """Decode a RunTrial goal; wrong shapes or an unknown executor/purpose are refused."""
    T, dU_goal = int(goal.horizon), int(goal.action_dim)
    _check_dims("trial goal", horizon=(T, None, 1), action_dim=(dU_goal, dU, 1))
    q0 = np.array(goal.initial_positions, dtype=np.float64)
    if n_joints is not None and q0.shape != (n_joints,):
        raise WireFormatError(f"trial goal: initial_positions has {q0.size} values; expected "
                              f"one per joint ({n_joints})")
    target = _from_point(goal.target)
    if not (np.all(np.isfinite(q0)) and np.all(np.isfinite(target))):
        raise WireFormatError("trial goal: initial_positions and target must be finite")
    return TrialRequest(
        trial_id=int(goal.trial_id), condition=int(goal.condition),
        iteration=int(goal.iteration), index=int(goal.index),
        controller_version=int(goal.controller_version),
        executor=_choice(int(goal.executor), EXECUTORS, "trial goal: executor"),
        purpose=_choice(int(goal.purpose), PURPOSES, "trial goal: purpose"),
        initial_positions=q0, target=target,
        noise=_array(goal.noise, (T, dU_goal), "trial goal: noise (T, dU)"))


@dataclass(frozen=True)
class TrialRecord:
    """
    What lqr_controller did in a trial.

    At step t it used the joint state stamped state_stamps[t] and sent commands[t]
    (T, dU). status != OK: it could not run the trial (then T may be 0), `reason` says why.
    """

    trial_id: int
    condition: int
    iteration: int
    index: int
    controller_version: int
    purpose: str
    status: TrialStatus
    target: np.ndarray
    state_stamps: np.ndarray   # (T, 2): [sec, nanosec] of each joint state used
    commands: np.ndarray       # (T, dU)
    reason: str = ""

    @property
    def state_stamps_ns(self) -> np.ndarray:
        """(T,) int64 nanoseconds."""
        return self.state_stamps[:, 0].astype(np.int64) * _NANOSECONDS_PER_SECOND + \
            self.state_stamps[:, 1].astype(np.int64)


def stamps_to_pairs(stamps_ns: Sequence[int]) -> np.ndarray:
    """(T, 2) [sec, nanosec] from integer nanoseconds (T,)."""
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    return np.stack(np.divmod(stamps, _NANOSECONDS_PER_SECOND), axis=1).astype(np.float64)


def _trial_header(obj) -> dict:
    return dict(trial_id=int(obj.trial_id), condition=int(obj.condition),
                iteration=int(obj.iteration), index=int(obj.index),
                controller_version=int(obj.controller_version),
                purpose=_option_index(obj.purpose, PURPOSES, "purpose"),
                status=interfaces.TrialStatus(value=int(TrialStatus(obj.status))))


def _decode_trial_header(msg, what: str) -> dict:
    return dict(trial_id=int(msg.trial_id), condition=int(msg.condition),
                iteration=int(msg.iteration), index=int(msg.index),
                controller_version=int(msg.controller_version),
                purpose=_choice(int(msg.purpose), PURPOSES, f"{what}: purpose"),
                status=_status(int(msg.status.value), what))


def encode_trial_record(record: TrialRecord) -> interfaces.TrialRecord:
    """Encode as mbpl_ros_interfaces/TrialRecord."""
    commands = np.asarray(record.commands, dtype=np.float64)
    stamps = np.asarray(record.state_stamps, dtype=np.float64).reshape(-1, 2)
    return interfaces.TrialRecord(
        **_trial_header(record), reason=str(record.reason), target=_point(record.target),
        action_dim=commands.shape[1] if commands.ndim == 2 else 0,
        state_stamps=[Time(sec=int(s), nanosec=int(n)) for s, n in stamps],
        commands=_flat(commands))


def decode_trial_record(msg: interfaces.TrialRecord, dU: Optional[int] = None) -> TrialRecord:
    """Decode a TrialRecord (commands may hold NaN: the collector flags those rollouts)."""
    header = _decode_trial_header(msg, "trial record")
    T, dU_msg = len(msg.state_stamps), int(msg.action_dim)
    if T:
        _check_dims("trial record", action_dim=(dU_msg, dU, 1))
    stamps = np.array([[s.sec, s.nanosec] for s in msg.state_stamps],
                      dtype=np.float64).reshape(T, 2)
    if np.any(stamps[:, 0] < 0) or np.any(stamps[:, 1] >= _NANOSECONDS_PER_SECOND):
        raise WireFormatError("trial record: state_stamps must have sec >= 0 and "
                              "0 <= nanosec < 1e9")
    commands = _array(msg.commands, (T, dU_msg if T else (dU or dU_msg)),
                      "trial record: commands (T, dU)", finite=False)
    return TrialRecord(**header, target=_from_point(msg.target), state_stamps=stamps,
                       commands=commands, reason=str(msg.reason))


@dataclass(frozen=True)
class RolloutMessage:
    """
    A finished trial as the core sees it.

    X (T, dX), U (T, dU) (empty, T = 0, when status != OK). The collector also sends the
    joint states it built X from (sensor_msgs/JointState, T of them), the commands
    (T, dU) and the target (3,); they are optional for a rollout sent again. With a camera:
    images (T, H, W, 3) uint8 RGB, image t the one step t used, stamped image_stamps_ns (T,)
    (None: the joint states' stamps); None without a camera.
    """

    trial_id: int
    condition: int
    iteration: int
    index: int
    controller_version: int
    purpose: str
    status: TrialStatus
    X: np.ndarray
    U: np.ndarray
    target: Optional[np.ndarray] = None
    joint_states: Tuple[JointState, ...] = ()
    commands: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None
    image_stamps_ns: Optional[np.ndarray] = None


def _encode_images(rollout: RolloutMessage, T: int) -> list:
    """Return the Image messages of a rollout's images (none without a camera)."""
    if rollout.images is None:
        return []
    images = np.asarray(rollout.images)
    if images.ndim != 4 or images.shape[0] != T:
        raise WireFormatError(f"rollout: images must be (T={T}, H, W, 3); got {images.shape}")
    if rollout.image_stamps_ns is not None:
        stamps = [int(s) for s in np.asarray(rollout.image_stamps_ns).reshape(-1)]
    elif len(rollout.joint_states) == T:
        stamps = [nanoseconds_from_stamp(state.header.stamp) for state in rollout.joint_states]
    else:
        stamps = [0] * T
    if len(stamps) != T:
        raise WireFormatError(f"rollout: {len(stamps)} image stamps for T={T} images")
    return [encode_image(image, stamp) for image, stamp in zip(images, stamps)]


def _decode_images(msg: interfaces.Rollout, T: int, what: str):
    """Return images (T, H, W, 3) uint8 and their stamps (T,) of a Rollout, or (None, None)."""
    if not msg.images:
        return None, None
    if len(msg.images) != T:
        raise WireFormatError(f"{what} {len(msg.images)} images for T={T}; expected none or T")
    first = msg.images[0]
    images = np.stack([decode_image(image, int(first.height), int(first.width))
                       for image in msg.images])
    stamps = np.array([nanoseconds_from_stamp(image.header.stamp) for image in msg.images],
                      dtype=np.int64)
    return images, stamps


def encode_rollout(rollout: RolloutMessage) -> interfaces.Rollout:
    """Encode as mbpl_ros_interfaces/Rollout."""
    X, U = np.asarray(rollout.X, dtype=np.float64), np.asarray(rollout.U, dtype=np.float64)
    if X.ndim != 2 or U.ndim != 2 or X.shape[0] != U.shape[0]:
        raise WireFormatError(f"rollout: X (T, dX) and U (T, dU) must have the same T; got "
                              f"{X.shape} and {U.shape}")
    target = rollout.target if rollout.target is not None else np.zeros(3)
    return interfaces.Rollout(
        **_trial_header(rollout), target=_point(target),
        joint_states=list(rollout.joint_states),
        commands=_flat(rollout.commands if rollout.commands is not None else np.zeros(0)),
        images=_encode_images(rollout, X.shape[0]), horizon=X.shape[0], state_dim=X.shape[1],
        action_dim=U.shape[1],
        states=_flat(X), actions=_flat(U))


def decode_rollout(msg: interfaces.Rollout, dX: Optional[int] = None,
                   dU: Optional[int] = None) -> RolloutMessage:
    """Decode a Rollout; lengths that disagree with its fields (or dX, dU) are refused."""
    header = _decode_trial_header(msg, "rollout")
    ok = header["status"] == TrialStatus.OK
    T, dX_msg, dU_msg = int(msg.horizon), int(msg.state_dim), int(msg.action_dim)
    if ok or T:
        _check_dims("rollout", state_dim=(dX_msg, dX, 1), action_dim=(dU_msg, dU, 1))
    what = f"rollout of trial {header['trial_id']}:"
    X = _array(msg.states, (T, dX_msg), f"{what} states (T, dX)", finite=ok)
    U = _array(msg.actions, (T, dU_msg), f"{what} actions (T, dU)", finite=ok)
    commands = np.array(msg.commands, dtype=np.float64)
    if commands.size not in (0, T * dU_msg) or len(msg.joint_states) not in (0, T):
        raise WireFormatError(f"{what} {len(msg.joint_states)} joint states and "
                              f"{commands.size} command values for T={T}, dU={dU_msg}; expected "
                              f"none or T and T*dU")
    images, image_stamps = _decode_images(msg, T, what)
    return RolloutMessage(**header, X=X, U=U, target=_from_point(msg.target),
                          joint_states=tuple(msg.joint_states),
                          commands=commands.reshape(T, dU_msg) if commands.size else None,
                          images=images, image_stamps_ns=image_stamps)


# ---------------------------------------------------------------- dynamics
@dataclass(frozen=True)
class DynamicsMessage:
    """
    Condition `condition`'s dynamics fitted to the rollouts `trial_ids`.

    Of controller version `controller_version`; `complete` once all of that version's
    sample rollouts are in (the fit LQR-FLM uses, with the prior refitted on them).
    """

    condition: int
    controller_version: int
    trial_ids: Tuple[int, ...]   # the rollouts fitted, in the order of their index
    complete: bool
    dynamics: LinearGaussianDynamics


def encode_dynamics(message: DynamicsMessage) -> interfaces.LinearGaussianDynamics:
    """Encode as mbpl_ros_interfaces/LinearGaussianDynamics."""
    d = message.dynamics
    steps, dX, dXU = d.F.shape
    return interfaces.LinearGaussianDynamics(
        condition=int(message.condition), controller_version=int(message.controller_version),
        trial_ids=[int(i) for i in message.trial_ids], complete=bool(message.complete),
        horizon=steps + 1, state_dim=dX, action_dim=dXU - dX, transition=_flat(d.F),
        offsets=_flat(d.f), covariance=_flat(d.covar), initial_mean=_flat(d.x0_mean),
        initial_covariance=_flat(d.x0_covar))


def decode_dynamics(msg: interfaces.LinearGaussianDynamics, dX: Optional[int] = None,
                    dU: Optional[int] = None) -> DynamicsMessage:
    """Decode fitted dynamics; shapes that disagree with the fields are refused."""
    T, dX_msg, dU_msg = int(msg.horizon), int(msg.state_dim), int(msg.action_dim)
    _check_dims("dynamics", horizon=(T, None, 2), state_dim=(dX_msg, dX, 1),
                action_dim=(dU_msg, dU, 1))
    if len(msg.trial_ids) < 1:
        raise WireFormatError("dynamics: trial_ids must name one or more rollouts")
    steps = T - 1
    return DynamicsMessage(
        condition=int(msg.condition), controller_version=int(msg.controller_version),
        trial_ids=tuple(int(i) for i in msg.trial_ids), complete=bool(msg.complete),
        dynamics=LinearGaussianDynamics(
            F=_array(msg.transition, (steps, dX_msg, dX_msg + dU_msg),
                     "dynamics: transition (T-1, dX, dX+dU)"),
            f=_array(msg.offsets, (steps, dX_msg), "dynamics: offsets (T-1, dX)"),
            covar=_array(msg.covariance, (steps, dX_msg, dX_msg),
                         "dynamics: covariance (T-1, dX, dX)"),
            x0_mean=_array(msg.initial_mean, (dX_msg,), "dynamics: initial_mean (dX,)"),
            x0_covar=_array(msg.initial_covariance, (dX_msg, dX_msg),
                            "dynamics: initial_covariance (dX, dX)")))


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
    """
    Return a visualization_msgs/MarkerArray of the targets and paths, for RViz or Foxglove.

    A sphere at each condition's target (targets (M, 3), namespace "targets") and, for each
    condition with one, the end-effector path of its latest trial (paths: condition ->
    (T, 3), namespace "paths").
    """
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


# ---------------------------------------------------------------- topics and QoS of the loop
#: The RunTrial action server of lqr_controller (one per robot namespace).
RUN_TRIAL_ACTION = "gps/run_trial"
#: The goals gps_trainer sends (service introspection of the action's send_goal service:
#: RunTrial_SendGoal_Event, with the goal when the event is REQUEST_SENT).
TRIAL_GOAL_EVENTS_TOPIC = RUN_TRIAL_ACTION + "/_action/send_goal/_service_event"
TRIAL_RECORDS_TOPIC = "gps/trial_records"
ROLLOUTS_TOPIC = "gps/rollouts"
DYNAMICS_TOPIC = "gps/dynamics"
CONTROLLERS_TOPIC = "gps/controllers"
#: gps_trainer's progress (mbpl_ros_interfaces/TrainingProgress) and the targets and
#: end-effector paths of its trials (visualization_msgs/MarkerArray), both LATCHED_STATE_QOS.
PROGRESS_TOPIC = "gps/progress"
MARKERS_TOPIC = "gps/markers"

#: Records, rollouts, dynamics: reliable, every message delivered in order.
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
                               durability=DurabilityPolicy.TRANSIENT_LOCAL,
                               history=HistoryPolicy.KEEP_LAST)
#: Controllers: transient local, so a (re)started lqr_controller gets the latest ones.
#: The depth keeps more than one version per condition for up to 64 conditions.
CONTROLLERS_QOS = QoSProfile(depth=128, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST)
#: Reliabilities a camera subscriber may use (parameter image_reliability): a reliable one
#: matches only reliable publishers (sim_robot's; most camera drivers' default); best_effort
#: matches any, e.g. a driver publishing with the sensor-data profile.
IMAGE_RELIABILITIES = ("reliable", "best_effort")


def image_qos(reliability: str = "reliable") -> QoSProfile:
    """Return the QoS of a camera topic: volatile, the last few images, `reliability`."""
    if reliability not in IMAGE_RELIABILITIES:
        raise ValueError(f"image reliability {reliability!r}; allowed: one of "
                         f"{list(IMAGE_RELIABILITIES)}")
    policy = (ReliabilityPolicy.RELIABLE if reliability == "reliable"
              else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(depth=10, reliability=policy, durability=DurabilityPolicy.VOLATILE,
                      history=HistoryPolicy.KEEP_LAST)
