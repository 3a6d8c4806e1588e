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
