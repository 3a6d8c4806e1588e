"""Test-wide set-up: DDS stays on loopback, in a domain of this test process's own."""
import os

import pytest

# Set before any rclpy.init: discovery on this host only, and a domain that parallel
# test processes do not share (the Makefile passes one; a bare pytest derives one).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 1))


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
