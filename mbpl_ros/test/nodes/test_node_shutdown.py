"""A node process stopped by SIGINT or SIGTERM (Ctrl-C, ros2 launch ending) shuts down while
its context is still valid: lqr_controller leaves the fallback (zero effort) as its last
command, which a forward-command controller would hold, and exits cleanly."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from std_msgs.msg import Float64MultiArray

from loop_helpers import REPO, Recorder, create_probe, small_experiment, spinning, wait_until
from mbpl_ros.nodes import wire


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_lqr_controller_sends_the_fallback_and_exits_cleanly(tmp_path, signum):
    # A domain of its own: the killed node's endpoints must not linger in the discovery of
    # the tests that follow in this process.
    domain = (int(os.environ["ROS_DOMAIN_ID"]) + 100) % 230 + 1
    ros_context = Context()
    rclpy.init(context=ros_context, domain_id=domain)
    try:
        _stop_and_check(ros_context, tmp_path, signum, domain)
    finally:
        rclpy.try_shutdown(context=ros_context)


def _stop_and_check(ros_context, tmp_path, signum, domain):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=6, N=1)
    probe = create_probe(ros_context)
    commands = Recorder(lambda msg: np.array(msg.data))
    subscription = probe.create_subscription(
        Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, commands, 10
    )
    env = {
        **os.environ,
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    log = tmp_path / "lqr_controller.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mbpl_ros.nodes.lqr_controller",
                "--ros-args",
                "-p",
                "mode:=realtime",
                "-p",
                "reset_mode:=pd",
                "-p",
                f"experiment_config:={experiment}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with spinning(ros_context, [probe]):
            wait_until(
                lambda: subscription.get_publisher_count() > 0,
                timeout=40,
                what="lqr_controller's command publisher",
            )
            time.sleep(1.0)  # and its side of the match
            assert not commands.items  # no trial: nothing commanded yet
            process.send_signal(signum)
            assert process.wait(timeout=20) == 0, log.read_text()
            wait_until(lambda: commands.items, timeout=10, what="the fallback command")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    np.testing.assert_array_equal(commands.items[-1], np.zeros(2))
    text = log.read_text()
    assert "shutting down: sent the fallback (zero)" in text and "Traceback" not in text
