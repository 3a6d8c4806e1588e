"""mbpl_ros_interfaces: built and installed by `make setup`, importable, and usable over DDS."""
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT.parent   # the repository: docs/ and the interface package
PACKAGE = REPO / "mbpl_ros_interfaces"


def _interface_files():
    return sorted(PACKAGE.glob("msg/*.msg")) + sorted(PACKAGE.glob("action/*.action"))


def test_every_interface_file_is_generated_and_built():
    cmake = (PACKAGE / "CMakeLists.txt").read_text()
    for path in _interface_files():
        assert f'"{path.relative_to(PACKAGE)}"' in cmake, f"{path.name} is not in CMakeLists.txt"


def test_the_package_is_an_interface_package_that_mbpl_ros_depends_on():
    interfaces = ET.parse(PACKAGE / "package.xml").getroot()
    assert interfaces.findtext("name") == "mbpl_ros_interfaces"
    assert interfaces.find("export/build_type").text == "ament_cmake"
    assert interfaces.findtext("member_of_group") == "rosidl_interface_packages"
    mbpl_ros = ET.parse(ROOT / "package.xml").getroot()
    assert "mbpl_ros_interfaces" in {e.text for e in mbpl_ros.findall("depend")}


def test_every_interface_imports_with_its_fields():
    from mbpl_ros_interfaces.action import RunTrial
    from mbpl_ros_interfaces.msg import (LinearGaussianController, LinearGaussianDynamics, Rollout,
                                         TrainingProgress, TrialStatus)

    for message in (LinearGaussianController, LinearGaussianDynamics, Rollout, TrainingProgress,
                    TrialStatus, RunTrial.Goal, RunTrial.Result, RunTrial.Feedback):
        assert message.get_fields_and_field_types(), message
    assert RunTrial.Goal().target.__class__.__name__ == "Point"
    assert Rollout().joint_states == []


def test_trial_status_constants_match_the_statuses_the_nodes_use():
    from mbpl_ros_interfaces.msg import TrialStatus

    from mbpl_ros.nodes import wire

    for status in wire.TrialStatus:
        assert getattr(TrialStatus, status.name) == status.value, status


def test_a_controller_message_crosses_dds_bit_exactly(ros_context):
    """Publish a LinearGaussianController on loopback and compare what arrives."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from mbpl_ros_interfaces.msg import LinearGaussianController

    T, dU, dX = 5, 2, 6
    rng = np.random.default_rng(0)
    sent = LinearGaussianController(condition=3, version=7, horizon=T, state_dim=dX, action_dim=dU)
    sent.gains = rng.normal(size=T * dU * dX).tolist()
    sent.offsets = rng.normal(size=T * dU).tolist()
    node = rclpy.create_node("interfaces_probe", context=ros_context)
    received = []
    try:
        node.create_subscription(LinearGaussianController, "probe", received.append, 10)
        publisher = node.create_publisher(LinearGaussianController, "probe", 10)
        executor = SingleThreadedExecutor(context=ros_context)
        executor.add_node(node)
        deadline = time.monotonic() + 10.0
        while not received and time.monotonic() < deadline:
            if publisher.get_subscription_count() > 0:
                publisher.publish(sent)
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
    finally:
        node.destroy_node()
    assert received, "no message within 10 s"
    got = received[0]
    assert (got.condition, got.version, got.horizon, got.state_dim, got.action_dim) == (3, 7, T, dX, dU)
    np.testing.assert_array_equal(np.asarray(got.gains), np.asarray(sent.gains))
    np.testing.assert_array_equal(np.asarray(got.offsets), np.asarray(sent.offsets))


@pytest.mark.timeout(120)
def test_a_fresh_interpreter_imports_the_action_type_support():
    """The typesupport libraries load in a new process too (they live in the venv's lib/)."""
    code = ("from rclpy.type_support import check_for_type_support\n"
            "from mbpl_ros_interfaces.action import RunTrial\n"
            "check_for_type_support(RunTrial)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def test_docs_list_every_interface_as_it_is():
    docs = (REPO / "docs" / "interfaces.md").read_text()
    for path in _interface_files():
        heading = f"### `mbpl_ros_interfaces/{path.parent.name}/{path.stem}`"
        assert heading in docs, f"docs/interfaces.md has no section {heading}"
        listing = docs.split(heading, 1)[1].split("```", 2)[1].strip("\n")
        assert listing == path.read_text().rstrip("\n"), f"docs/interfaces.md differs from {path.name}"
