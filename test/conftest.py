"""Test-wide set-up: DDS stays on loopback, in a domain of this test process's own."""
import os

import pytest

from mbpl_ros.dds import use_loopback_only

# Set before any rclpy.init: discovery on this host only, and a domain that parallel
# test processes do not share (the Makefile passes one; a bare pytest derives one). DDS is
# bound to loopback by the package's Fast DDS profile (mbpl_ros.dds), unless one is set;
# node processes the tests start inherit both.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 1))
use_loopback_only()


@pytest.fixture
def ros_context():
    """A fresh rclpy Context, initialised for one test and shut down after it."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)
