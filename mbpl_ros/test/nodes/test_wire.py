"""Round trips of every encoding through real CDR serialization, and the errors of the decoders."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from mbpl_ros.nodes import wire


def over_the_wire(msg):
    """The message as a subscriber gets it: serialized to CDR bytes and back."""
    return deserialize_message(serialize_message(msg), type(msg))


# ---------------------------------------------------------------- generic arrays
@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
                  elements=st.floats(allow_nan=False, width=64)))
def test_any_array_round_trips_bit_exactly_with_its_labels(array):
    labels = tuple(f"axis{i}" for i in range(array.ndim))
    msg = over_the_wire(wire.encode_array(array, labels))
    assert wire.array_labels(msg) == labels
    decoded = wire.decode_array(msg, expected_labels=labels, expected_shape=array.shape)
    assert decoded.dtype == np.float64 and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_layout_follows_the_ros_multiarray_convention():
    gains = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    msg = wire.encode_array(gains, labels=("T", "dU", "dX"))
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("T", 2, 24), ("dU", 3, 12), ("dX", 4, 4)]
    assert msg.layout.data_offset == 0
    # element [t, u, x] sits at data[dim[1].stride * t + dim[2].stride * u + x]
    t, u, x = 1, 2, 3
    assert msg.data[12 * t + 4 * u + x] == gains[t, u, x]


def test_non_finite_values_survive_the_generic_encoding():
    array = np.array([[np.nan, np.inf], [-np.inf, 1.0]])
    decoded = wire.decode_array(over_the_wire(wire.encode_array(array, ("a", "b"))), ("a", "b"))
    np.testing.assert_array_equal(decoded, array)


def test_decoded_array_does_not_alias_the_message():
    msg = wire.encode_array(np.zeros(3), ("x",))
    decoded = wire.decode_array(msg, ("x",))
    decoded[0] = 5.0
    assert msg.data[0] == 0.0


def test_shape_wildcards_and_shape_mismatch():
    msg = wire.encode_array(np.zeros((5, 2, 6)), ("T", "dU", "dX"))
    assert wire.decode_array(msg, expected_shape=(None, 2, 6)).shape == (5, 2, 6)
    with pytest.raises(wire.WireFormatError, match=r"shape \(5, 2, 6\).*expected \('any', 3, 6\)"):
        wire.decode_array(msg, expected_shape=(None, 3, 6))
    with pytest.raises(wire.WireFormatError, match="expected"):
        wire.decode_array(msg, expected_shape=(5, 2))


def test_label_mismatch_names_both_label_sets():
    msg = wire.encode_array(np.zeros((2, 3)), ("T", "dX"))
    with pytest.raises(wire.WireFormatError, match=r"labelled \('T', 'dX'\); expected \('T', 'dU'\)"):
        wire.decode_array(msg, expected_labels=("T", "dU"))


def test_inconsistent_layouts_are_rejected():
    msg = wire.encode_array(np.zeros((2, 3)), ("T", "dX"))
    msg.data = np.zeros(5)
    with pytest.raises(wire.WireFormatError, match="needs 6 values; data has 5"):
        wire.decode_array(msg)

    padded = wire.encode_array(np.zeros((2, 3)), ("T", "dX"))
    padded.layout.dim[0].stride = 8
    with pytest.raises(wire.WireFormatError, match="only contiguous row-major layouts"):
        wire.decode_array(padded)

    flat = Float64MultiArray(data=[1.0, 2.0])
    with pytest.raises(wire.WireFormatError, match="no layout.dim"):
        wire.decode_array(flat, expected_labels=("joints",))
    np.testing.assert_array_equal(wire.decode_array(flat, ("joints",), allow_unlabelled=True), [1.0, 2.0])


@pytest.mark.parametrize("array, labels, message", [
    (np.zeros((2, 3)), ("T",), "one label per axis"),
    (np.zeros((2, 3)), ("T", "T"), "distinct non-empty"),
    (np.zeros(3), ("",), "distinct non-empty"),
    (np.float64(1.0), (), "at least one axis"),
])
def test_encode_array_rejects_bad_labels(array, labels, message):
    with pytest.raises(ValueError, match=message):
        wire.encode_array(array, labels)


# ---------------------------------------------------------------- effort commands
def test_effort_command_round_trips_and_is_labelled_joints():
    effort = np.array([0.5, -1.25, 3.0])
    msg = over_the_wire(wire.encode_effort_command(effort))
    assert wire.array_labels(msg) == ("joints",)
    np.testing.assert_array_equal(wire.decode_effort_command(msg, 3), effort)


def test_effort_command_accepts_the_ros2_control_flat_layout():
    msg = over_the_wire(Float64MultiArray(data=[1.0, 2.0]))
    np.testing.assert_array_equal(wire.decode_effort_command(msg, 2), [1.0, 2.0])


@pytest.mark.parametrize("data, message", [
    ([1.0], "has 1 values; expected one per joint \\(2\\)"),
    ([1.0, 2.0, 3.0], "has 3 values; expected one per joint \\(2\\)"),
    ([np.nan, 0.0], "must be finite"),
    ([0.0, -np.inf], "must be finite"),
])
def test_bad_effort_commands_are_rejected(data, message):
    with pytest.raises(wire.WireFormatError, match=message):
        wire.decode_effort_command(Float64MultiArray(data=data), 2)


def test_effort_command_with_a_foreign_label_is_rejected():
    msg = Float64MultiArray(data=[1.0, 2.0])
    msg.layout.dim = [MultiArrayDimension(label="dU", size=2, stride=2)]
    with pytest.raises(wire.WireFormatError, match=r"labelled \('dU',\); expected \('joints',\)"):
        wire.decode_effort_command(msg, 2)


# ---------------------------------------------------------------- joint states, poses, time
def test_joint_state_round_trips_and_reorders_by_name():
    msg = over_the_wire(wire.encode_joint_state(
        ["shoulder", "elbow"], [0.1, 0.2], [1.0, 2.0], [-0.5, 0.5], stamp=3_000_000_007))
    assert list(msg.name) == ["shoulder", "elbow"]
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (3, 7)
    q, qd, effort = wire.decode_joint_state(msg, ["elbow", "shoulder"])
    np.testing.assert_array_equal(q, [0.2, 0.1])
    np.testing.assert_array_equal(qd, [2.0, 1.0])
    np.testing.assert_array_equal(effort, [0.5, -0.5])


def test_joint_state_errors():
    with pytest.raises(wire.WireFormatError, match=r"velocity must have shape \(2,\)"):
        wire.encode_joint_state(["a", "b"], [0, 0], [0], [0, 0], stamp=0)
    msg = wire.encode_joint_state(["a", "b"], [0, 0], [0, 0], [0, 0], stamp=0)
    with pytest.raises(wire.WireFormatError, match=r"lacks joints \['c'\]"):
        wire.decode_joint_state(msg, ["a", "c"])
    msg.effort = []
    assert wire.decode_joint_state(msg, ["a"])[2] is None
    msg.velocity = []
    with pytest.raises(wire.WireFormatError, match="needs a position and a velocity"):
        wire.decode_joint_state(msg, ["a"])


def test_pose_and_twist_round_trip():
    position, orientation = np.array([0.1, -0.2, 0.3]), np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)])
    pose = over_the_wire(wire.encode_pose(position, orientation, stamp=5, frame_id="world"))
    assert pose.header.frame_id == "world" and pose.header.stamp.nanosec == 5
    for got, expected in zip(wire.decode_pose(pose), (position, orientation)):
        np.testing.assert_array_equal(got, expected)
    linear, angular = np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 0.5])
    twist = over_the_wire(wire.encode_twist(linear, angular, stamp=wire.stamp_from_nanoseconds(9)))
    for got, expected in zip(wire.decode_twist(twist), (linear, angular)):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(wire.WireFormatError, match=r"orientation \(x, y, z, w\) must have shape \(4,\)"):
        wire.encode_pose(position, orientation[:3], stamp=0)


def test_stamps_and_clock():
    for nanoseconds in (0, 999_999_999, 1_000_000_000, 123_456_789_012):
        stamp = wire.stamp_from_nanoseconds(nanoseconds)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert wire.nanoseconds_from_stamp(over_the_wire(wire.encode_clock(nanoseconds)).clock) == nanoseconds
        assert wire.nanoseconds_from_stamp(stamp) == nanoseconds
    with pytest.raises(wire.WireFormatError, match="must not be negative"):
        wire.stamp_from_nanoseconds(-1)


# ---------------------------------------------------------------- typed messages of the loop
from mbpl_ros.core.controller import LinearGaussianController  # noqa: E402
from mbpl_ros.core.dynamics import LinearGaussianDynamics  # noqa: E402
from mbpl_ros_interfaces import msg as interfaces  # noqa: E402


def _controller(T=4, dU=2, dX=6, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(T, dU, dU))
    return LinearGaussianController.from_covar(rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)),
                                               A @ A.transpose(0, 2, 1) + np.eye(dU))


def test_controller_round_trips_with_bit_identical_actions():
    controller = _controller()
    msg = over_the_wire(wire.encode_controller(wire.ControllerMessage(3, 7, controller)))
    assert isinstance(msg, interfaces.LinearGaussianController)
    assert (msg.horizon, msg.state_dim, msg.action_dim) == (4, 6, 2)
    message = wire.decode_controller(msg, dX=6, dU=2)
    assert (message.condition, message.version) == (3, 7)
    for name in ("K", "k", "covar", "chol", "inv_covar"):
        np.testing.assert_array_equal(getattr(message.controller, name), getattr(controller, name))
    x, noise = np.linspace(-1, 1, 6), np.array([0.3, -0.7])
    np.testing.assert_array_equal(message.controller.act(2, x, noise), controller.act(2, x, noise))
    with pytest.raises(wire.WireFormatError, match="controller: action_dim is 2; expected 3"):
        wire.decode_controller(wire.encode_controller(wire.ControllerMessage(0, 0, controller)), dU=3)


def test_controller_whose_arrays_disagree_with_its_shape_fields_is_rejected():
    msg = wire.encode_controller(wire.ControllerMessage(0, 0, _controller()))
    msg.horizon = 5
    with pytest.raises(wire.WireFormatError, match=r"gains \(T, dU, dX\) has 48 values; its dimension "
                       r"fields say \(5, 2, 6\) = 60"):
        wire.decode_controller(msg)
    msg = wire.encode_controller(wire.ControllerMessage(0, 0, _controller()))
    msg.covariance_inverse = msg.covariance_inverse[:-1]
    with pytest.raises(wire.WireFormatError, match="covariance_inverse"):
        wire.decode_controller(msg)
    msg.horizon = 0
    with pytest.raises(wire.WireFormatError, match="horizon is 0; expected >= 1"):
        wire.decode_controller(msg)


def test_controller_with_non_finite_gains_is_rejected():
    controller = _controller()
    controller.K[0, 0, 0] = np.nan
    with pytest.raises(wire.WireFormatError, match="gains .* must be finite"):
        wire.decode_controller(wire.encode_controller(wire.ControllerMessage(0, 0, controller)))


def _request(**changes):
    values = dict(trial_id=2 ** 60 + 1, condition=1, iteration=3, index=4, controller_version=2,
                  executor="controller", purpose="sample", initial_positions=np.array([0.1, -0.2]),
                  target=np.array([0.2, 0.3, 0.0]), noise=np.arange(10.0).reshape(5, 2))
    values.update(changes)
    return wire.TrialRequest(**values)


def test_trial_request_round_trips_as_a_run_trial_goal_with_exact_large_ids():
    from mbpl_ros_interfaces.action import RunTrial

    request = _request()
    goal = over_the_wire(wire.encode_trial_request(request))
    assert isinstance(goal, RunTrial.Goal)
    assert (goal.executor, goal.purpose) == (RunTrial.Goal.EXECUTOR_CONTROLLER, RunTrial.Goal.PURPOSE_SAMPLE)
    decoded = wire.decode_trial_request(goal, n_joints=2, dU=2)
    for name in ("trial_id", "condition", "iteration", "index", "controller_version", "executor", "purpose"):
        assert getattr(decoded, name) == getattr(request, name)
    for name in ("initial_positions", "target", "noise"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(request, name))
    assert decoded.T == 5
    policy = wire.decode_trial_request(wire.encode_trial_request(_request(executor="policy", purpose="evaluation")))
    assert (policy.executor, policy.purpose) == ("policy", "evaluation")


def test_trial_request_errors():
    with pytest.raises(wire.WireFormatError, match=r"executor must be one of \['controller', 'policy'\]"):
        wire.encode_trial_request(_request(executor="magic"))
    with pytest.raises(wire.WireFormatError, match=r"initial_positions has 2 values; expected one per joint \(3\)"):
        wire.decode_trial_request(wire.encode_trial_request(_request()), n_joints=3)
    goal = wire.encode_trial_request(_request())
    goal.purpose = 5
    with pytest.raises(wire.WireFormatError, match="purpose is 5; allowed: 0=sample, 1=evaluation"):
        wire.decode_trial_request(goal)
    goal = wire.encode_trial_request(_request())
    goal.horizon = 6
    with pytest.raises(wire.WireFormatError, match=r"noise \(T, dU\) has 10 values; its dimension fields "
                       r"say \(6, 2\) = 12"):
        wire.decode_trial_request(goal)
    with pytest.raises(wire.WireFormatError, match="action_dim is 2; expected 3"):
        wire.decode_trial_request(wire.encode_trial_request(_request()), dU=3)


def test_trial_record_round_trips_wall_clock_stamps_exactly():
    stamps = np.array([1_795_612_499_898_480_787, 1_795_612_499_948_480_787], dtype=np.int64)  # > 2**53 ns
    record = wire.TrialRecord(trial_id=9, condition=0, iteration=1, index=2, controller_version=0,
                              purpose="sample", status=wire.TrialStatus.OK, target=np.array([1.0, 2.0, 3.0]),
                              state_stamps=wire.stamps_to_pairs(stamps), commands=np.array([[1.0, np.nan], [0.5, 0.25]]))
    msg = over_the_wire(wire.encode_trial_record(record))
    assert isinstance(msg, interfaces.TrialRecord) and len(msg.state_stamps) == 2
    decoded = wire.decode_trial_record(msg, dU=2)
    np.testing.assert_array_equal(decoded.state_stamps_ns, stamps)
    np.testing.assert_array_equal(decoded.commands, record.commands)  # NaN travels: the collector flags it
    assert decoded.status is wire.TrialStatus.OK and decoded.trial_id == 9
    msg = wire.encode_trial_record(record)
    msg.status.value = 17
    with pytest.raises(wire.WireFormatError, match="status 17 is not one of"):
        wire.decode_trial_record(msg)
    refused = wire.TrialRecord(**{**record.__dict__, "status": wire.TrialStatus.CANCELLED,
                                  "state_stamps": np.zeros((0, 2)), "commands": np.zeros((0, 2)),
                                  "reason": "cancelled by the client"})
    decoded = wire.decode_trial_record(over_the_wire(wire.encode_trial_record(refused)), dU=2)
    assert decoded.status is wire.TrialStatus.CANCELLED and decoded.reason == "cancelled by the client"
    assert decoded.commands.shape == (0, 2)


def test_rollout_round_trips_and_failed_rollouts_may_be_empty():
    rng = np.random.default_rng(1)
    rollout = wire.RolloutMessage(trial_id=5, condition=2, iteration=1, index=0, controller_version=1,
                                  purpose="evaluation", status=wire.TrialStatus.OK, X=rng.normal(size=(7, 10)),
                                  U=rng.normal(size=(7, 2)), target=np.array([0.1, 0.2, 0.3]),
                                  joint_states=tuple(wire.encode_joint_state(["a"], [t], [0.0], [0.0], t)
                                                     for t in range(7)),
                                  commands=rng.normal(size=(7, 2)))
    msg = over_the_wire(wire.encode_rollout(rollout))
    assert isinstance(msg, interfaces.Rollout)
    decoded = wire.decode_rollout(msg, dX=10, dU=2)
    for name in ("X", "U", "target", "commands"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(rollout, name))
    assert [s.position[0] for s in decoded.joint_states] == list(range(7))
    assert (decoded.purpose, decoded.status) == ("evaluation", wire.TrialStatus.OK)
    dropped = wire.RolloutMessage(**{**rollout.__dict__, "status": wire.TrialStatus.GAP,
                                     "X": np.zeros((0, 10)), "U": np.zeros((0, 2)), "joint_states": (),
                                     "commands": None})
    decoded = wire.decode_rollout(wire.encode_rollout(dropped), dX=10, dU=2)
    assert decoded.status is wire.TrialStatus.GAP and decoded.X.shape == (0, 10)
    with pytest.raises(wire.WireFormatError, match="rollout: action_dim is 2; expected 3"):
        wire.decode_rollout(wire.encode_rollout(rollout), dU=3)


def test_rollout_with_mismatched_lengths_is_rejected():
    rollout = wire.RolloutMessage(trial_id=5, condition=0, iteration=1, index=0, controller_version=1,
                                  purpose="sample", status=wire.TrialStatus.OK, X=np.zeros((7, 10)),
                                  U=np.zeros((7, 2)))
    msg = wire.encode_rollout(rollout)
    msg.actions = msg.actions[:-2]
    with pytest.raises(wire.WireFormatError, match=r"actions \(T, dU\) has 12 values; its dimension "
                       r"fields say \(7, 2\) = 14"):
        wire.decode_rollout(msg)
    msg = wire.encode_rollout(rollout)
    msg.commands = np.zeros(3)
    with pytest.raises(wire.WireFormatError, match="3 command values for T=7, dU=2"):
        wire.decode_rollout(msg)
    with pytest.raises(wire.WireFormatError, match="must have the same T"):
        wire.encode_rollout(wire.RolloutMessage(**{**rollout.__dict__, "U": np.zeros((6, 2))}))


def test_dynamics_round_trip():
    rng = np.random.default_rng(2)
    T, dX, dU = 5, 4, 2
    covar = rng.normal(size=(T - 1, dX, dX))
    dynamics = LinearGaussianDynamics(F=rng.normal(size=(T - 1, dX, dX + dU)), f=rng.normal(size=(T - 1, dX)),
                                      covar=covar @ covar.transpose(0, 2, 1), x0_mean=rng.normal(size=dX),
                                      x0_covar=np.eye(dX))
    message = wire.DynamicsMessage(condition=1, controller_version=3, trial_ids=(11, 12, 2 ** 60), complete=True,
                                   dynamics=dynamics)
    msg = over_the_wire(wire.encode_dynamics(message))
    assert isinstance(msg, interfaces.LinearGaussianDynamics) and msg.horizon == T
    decoded = wire.decode_dynamics(msg, dX=dX, dU=dU)
    assert (decoded.condition, decoded.controller_version, decoded.trial_ids, decoded.complete) == \
        (1, 3, (11, 12, 2 ** 60), True)
    for name in ("F", "f", "covar", "x0_mean", "x0_covar"):
        np.testing.assert_array_equal(getattr(decoded.dynamics, name), getattr(dynamics, name))
    assert decoded.dynamics.T == T and decoded.dynamics.dU == dU
    with pytest.raises(wire.WireFormatError, match="dynamics: action_dim is 2; expected 3"):
        wire.decode_dynamics(wire.encode_dynamics(message), dX=dX, dU=3)
    msg.initial_mean = msg.initial_mean[:-1]
    with pytest.raises(wire.WireFormatError, match="initial_mean"):
        wire.decode_dynamics(msg)


def test_trial_statuses_are_the_message_constants():
    for status in wire.TrialStatus:
        assert getattr(interfaces.TrialStatus, status.name) == status.value


def test_qos_of_the_learning_loop():
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    assert wire.CONTROLLERS_QOS.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert wire.CONTROLLERS_QOS.reliability == ReliabilityPolicy.RELIABLE
    assert wire.EVENTS_QOS.reliability == ReliabilityPolicy.RELIABLE


# ---------------------------------------------------------------- camera
def test_an_image_round_trips_through_cdr_and_bgr8_or_padded_rows_are_read_as_rgb():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    msg = wire.encode_image(pixels, 1_700_000_000_123_456_789)
    from sensor_msgs.msg import Image

    again = deserialize_message(serialize_message(msg), Image)
    assert (again.encoding, again.height, again.width, again.step) == ("rgb8", 6, 5, 15)
    assert wire.nanoseconds_from_stamp(again.header.stamp) == 1_700_000_000_123_456_789
    assert again.header.frame_id == wire.CAMERA_FRAME
    np.testing.assert_array_equal(wire.decode_image(again, 6, 5), pixels)
    bgr = wire.encode_image(pixels[:, :, ::-1].copy(), 0)
    bgr.encoding = "bgr8"
    np.testing.assert_array_equal(wire.decode_image(bgr), pixels)
    padded = wire.encode_image(pixels, 0)
    rows = np.zeros((6, 16), dtype=np.uint8)
    rows[:, :15] = pixels.reshape(6, 15)
    padded.step, padded.data = 16, rows.tobytes()
    np.testing.assert_array_equal(wire.decode_image(padded), pixels)


@pytest.mark.parametrize("change, message", [
    (dict(encoding="mono8"), r"image encoding is 'mono8'; allowed: one of \['rgb8', 'bgr8'\]"),
    (dict(height=7), r"image of 7x5 with step 15 needs step >= 15 and 7 rows"),
    (dict(step=14), r"needs step >= 15"),
])
def test_bad_images_are_rejected(change, message):
    msg = wire.encode_image(np.zeros((6, 5, 3), dtype=np.uint8), 0)
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(wire.WireFormatError, match=message):
        wire.decode_image(msg)
    with pytest.raises(wire.WireFormatError, match=r"image is 6x5 \(height x width\); expected "
                       r"8x5 \(the experiment's camera\)"):
        wire.decode_image(wire.encode_image(np.zeros((6, 5, 3), dtype=np.uint8), 0), 8, 5)
    with pytest.raises(wire.WireFormatError, match=r"an image is \(H, W, 3\) uint8 RGB"):
        wire.encode_image(np.zeros((6, 5, 3)), 0)


def test_camera_info_carries_the_intrinsics():
    info = wire.encode_camera_info({"width": 5, "height": 6, "K": np.arange(9.0),
                                    "P": np.arange(12.0), "D": [], "distortion_model": "plumb_bob"},
                                   42)
    assert (info.width, info.height, info.distortion_model) == (5, 6, "plumb_bob")
    np.testing.assert_array_equal(info.k, np.arange(9.0))
    np.testing.assert_array_equal(info.p, np.arange(12.0))
    np.testing.assert_array_equal(info.r, np.eye(3).ravel())
    assert list(info.d) == [] and wire.nanoseconds_from_stamp(info.header.stamp) == 42


def test_a_rollouts_images_round_trip_with_their_stamps_and_are_checked():
    T = 3
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(T, 4, 5, 3), dtype=np.uint8)
    rollout = wire.RolloutMessage(
        trial_id=9, condition=0, iteration=1, index=0, controller_version=0, purpose="sample",
        status=wire.TrialStatus.OK, X=rng.normal(size=(T, 4)), U=rng.normal(size=(T, 2)),
        images=images, image_stamps_ns=np.array([10, 60, 110]))
    msg = deserialize_message(serialize_message(wire.encode_rollout(rollout)), interfaces.Rollout)
    decoded = wire.decode_rollout(msg, dX=4, dU=2)
    np.testing.assert_array_equal(decoded.images, images)
    np.testing.assert_array_equal(decoded.image_stamps_ns, [10, 60, 110])
    assert wire.decode_rollout(wire.encode_rollout(
        wire.RolloutMessage(**{**rollout.__dict__, "images": None}))).images is None
    msg.images = msg.images[:2]
    with pytest.raises(wire.WireFormatError, match="2 images for T=3; expected none or T"):
        wire.decode_rollout(msg)
    with pytest.raises(wire.WireFormatError, match=r"images must be \(T=3, H, W, 3\)"):
        wire.encode_rollout(wire.RolloutMessage(**{**rollout.__dict__, "images": images[:2]}))
    assert wire.TrialStatus.MISSING_IMAGE == interfaces.TrialStatus.MISSING_IMAGE


def test_camera_qos_is_reliable_or_best_effort():
    from rclpy.qos import ReliabilityPolicy

    assert wire.image_qos("reliable").reliability == ReliabilityPolicy.RELIABLE
    assert wire.image_qos("best_effort").reliability == ReliabilityPolicy.BEST_EFFORT
    with pytest.raises(ValueError, match="allowed: one of"):
        wire.image_qos("fast")
