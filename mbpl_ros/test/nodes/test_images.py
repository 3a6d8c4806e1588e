"""The law of images in the loop (nodes.images), without DDS: pairing, settling, staleness."""
from types import SimpleNamespace

import numpy as np
import pytest

from mbpl_ros.nodes import images

MS = 1_000_000


def _image(value):
    return np.full((4, 5, 3), value, dtype=np.uint8)


def test_a_step_gets_the_image_nearest_its_stamp_within_the_tolerance():
    buffer = images.ImageBuffer(tolerance_ns=20 * MS, size=10)
    for stamp in (0, 33, 66, 100):
        buffer.add(stamp * MS, _image(stamp))
    assert buffer.nearest(50 * MS)[0] == 66 * MS          # 16 ms after beats 17 ms before
    assert buffer.nearest(49 * MS)[0] == 33 * MS
    assert buffer.nearest(51 * MS)[0] == 66 * MS
    assert buffer.nearest(120 * MS)[0] == 100 * MS        # 20 ms: still within
    assert buffer.nearest(121 * MS) is None               # 21 ms from the nearest
    assert buffer.nearest(-25 * MS) is None
    buffer.add(40 * MS, _image(1))
    buffer.add(60 * MS, _image(2))
    assert buffer.nearest(50 * MS)[0] == 40 * MS          # a tie goes to the earlier image


def test_the_buffer_keeps_the_newest_images_and_a_later_copy_replaces_one():
    buffer = images.ImageBuffer(tolerance_ns=0, size=3)
    for stamp in (5, 1, 3, 4):                            # out of order: the oldest goes
        buffer.add(stamp, _image(stamp))
    assert len(buffer) == 3 and buffer.nearest(1) is None and buffer.latest_stamp_ns == 5
    buffer.add(4, _image(200))
    assert buffer.nearest(4)[1][0, 0, 0] == 200 and len(buffer) == 3


def test_a_step_is_settled_by_an_exact_stamp_or_a_later_image_beyond_the_tolerance():
    buffer = images.ImageBuffer(tolerance_ns=10, size=10)
    assert not buffer.settled(100)
    buffer.add(95, _image(0))
    assert not buffer.settled(100)                        # one at 101..110 could still come
    buffer.add(110, _image(0))
    assert not buffer.settled(100)
    buffer.add(111, _image(0))
    assert buffer.settled(100)
    buffer.add(200, _image(0))
    assert buffer.settled(200)                            # exact: nothing can be nearer


def test_align_gives_each_step_its_image_or_names_the_steps_without():
    buffer = images.ImageBuffer(tolerance_ns=10, size=100)
    for stamp in (0, 50, 100, 165, 200):
        buffer.add(stamp, _image(stamp // 10))
    alignment = images.align(buffer, [0, 50, 100, 150, 200])
    assert alignment.images is None and alignment.missing == (3,) and alignment.unsettled == ()
    buffer.add(150, _image(15))
    alignment = images.align(buffer, [2, 52, 100, 148, 200])
    assert alignment.missing == () and alignment.images.shape == (5, 4, 5, 3)
    np.testing.assert_array_equal(alignment.stamps_ns, [0, 50, 100, 150, 200])
    np.testing.assert_array_equal(alignment.images[:, 0, 0, 0], [0, 5, 10, 15, 20])
    assert images.align(buffer, [205]).unsettled == (0,)   # 210 could still come


def test_a_step_that_waits_too_long_for_its_image_stops_the_policy():
    wait = images.ImageWait(timeout_s=0.2)
    assert wait.fault(100.0, None, None) is None          # nothing waits
    wait.wait(10.0)
    wait.wait(10.15)                                      # the same wait goes on
    assert wait.fault(10.2, None, 5) is None
    fault = wait.fault(10.25, None, 5)
    assert "waited 0.250 s (> image_timeout_s = 0.2 s)" in fault
    assert "no camera image has arrived" in fault
    fault = wait.fault(10.25, 2 * 10 ** 9, 3 * 10 ** 9)
    assert "the latest camera image is stamped -1.000 s from the joint state" in fault
    wait.stepped()
    assert wait.fault(50.0, None, None) is None
    with pytest.raises(ValueError, match="timeout_s > 0"):
        images.ImageWait(0.0)


def test_the_default_tolerance_is_the_cameras_or_half_a_period():
    camera = SimpleNamespace(image_tolerance_s=0.01)
    assert images.default_tolerance_s(SimpleNamespace(camera=camera, control_dt=0.05)) == 0.01
    assert images.default_tolerance_s(SimpleNamespace(camera=None, control_dt=0.05)) == 0.025
