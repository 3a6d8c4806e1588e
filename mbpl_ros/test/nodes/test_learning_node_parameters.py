"""
Test the parameters of the learning nodes.

Parameters of the learning nodes: declared with descriptors, validated, errors naming
the parameter and what is allowed; the experiment file found like `mbpl train` finds it;
sim_robot's initial_positions settable at runtime.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from loop_helpers import REPO, parameters, small_experiment
from mbpl_ros.nodes.common import (NodeParameterError, experiment_candidates,
                                   resolve_experiment_path)
from mbpl_ros.nodes.dynamics_fitter import DynamicsFitterNode
from mbpl_ros.nodes.gps_trainer import GpsTrainerNode
from mbpl_ros.nodes.lqr_controller import LqrControllerNode
from mbpl_ros.nodes.sample_collector import SampleCollectorNode
from mbpl_ros.nodes.sim_robot import SimRobotNode

ALL = [LqrControllerNode, SampleCollectorNode, DynamicsFitterNode, GpsTrainerNode]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node_class, overrides, message", [
    (LqrControllerNode, dict(mode="fast"), r"parameter 'mode' is 'fast'; allowed: one of "
                                           r"\['realtime', 'lockstep'\]"),
    (LqrControllerNode, dict(reset_mode="teleport"), r"parameter 'reset_mode' is 'teleport'; "
                                                     r"allowed: one of \['pd', 'sim_service'\]"),
    (LqrControllerNode, dict(control_rate_hz=0.0),
     r"parameter 'control_rate_hz' is invalid.*allowed: a double in \[0.1, 1000.0\]"),
    (LqrControllerNode, dict(control_rate_hz=20), r"parameter 'control_rate_hz' is "
                                                  r"invalid.*allowed: a double"),
    (LqrControllerNode, dict(joints=["shoulder", "wrist"]), r"parameter 'joints' is \['shoulder', "
                                                            r"'wrist'\]; allowed: each joint"),
    (LqrControllerNode, dict(sim_node="sim_robot"), r"parameter 'sim_node' is 'sim_robot'; "
                                                    r"allowed: a fully qualified"),
    (LqrControllerNode, dict(policy_path="/nonexistent/policy.pt"), r"parameter 'policy_path' is "
                                                                    r"'/nonexistent/policy.pt': "
                                                                    r"no exported policy"),
    (SampleCollectorNode, dict(period_tolerance=1.5), r"parameter 'period_tolerance' is "
                                                      r"invalid.*allowed: a double in \[0.0, "
                                                      r"0.99\]"),
    (SampleCollectorNode, dict(buffer_size=1), r"parameter 'buffer_size' is invalid.*allowed: an "
                                               r"integer in \[10, 1000000\]"),
    (GpsTrainerNode, dict(max_attempts=0), r"parameter 'max_attempts' is invalid.*allowed: an "
                                           r"integer in \[1, 100\]"),
    (GpsTrainerNode, dict(output_dir=""), r"parameter 'output_dir' is empty"),
    (GpsTrainerNode, dict(resume=True, overwrite=True),
     r"parameters 'resume' and 'overwrite' are both true; allowed: at most one"),
])
def test_bad_parameters_stop_start_up_naming_the_parameter(ros_context, node_class, overrides,
                                                           message):
    with pytest.raises(NodeParameterError, match=message):
        node_class(context=ros_context, parameter_overrides=parameters(**overrides))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node_class", ALL)
def test_every_node_rejects_a_missing_or_broken_experiment(ros_context, node_class, tmp_path):
    with pytest.raises(NodeParameterError, match=r"parameter 'experiment_config' is "
                                                 r"'no_such.yaml', which is not a file; tried"):
        node_class(context=ros_context,
                   parameter_overrides=parameters(experiment_config="no_such.yaml"))
    broken = small_experiment(tmp_path / "broken.yaml", T=1)
    with pytest.raises(NodeParameterError, match=r"parameter 'experiment_config' = "
                                                 r".*broken.yaml.* cannot be loaded: .*T: must be "
                                                 r">= 2"):
        node_class(context=ros_context,
                   parameter_overrides=parameters(experiment_config=str(broken)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node_class", ALL)
def test_parameters_carry_descriptors(ros_context, node_class, tmp_path):
    given = dict(output_dir=str(tmp_path)) if node_class is GpsTrainerNode else {}
    node = node_class(context=ros_context, parameter_overrides=parameters(**given))
    try:
        for name in node._parameters:
            if name in ("use_sim_time", "start_type_description_service"):  # rclpy's own
                continue
            descriptor = node.describe_parameter(name)
            assert descriptor.description and descriptor.additional_constraints, name
        if node_class is LqrControllerNode:
            rate = node.describe_parameter("control_rate_hz").floating_point_range[0]
            assert (rate.from_value, rate.to_value) == (0.1, 1000.0)
            # default: the experiment's control period
            assert node.control_rate_hz == pytest.approx(20.0)
    finally:
        node.destroy_node()


def test_experiment_config_is_found_absolute_relative_or_in_the_package(tmp_path, monkeypatch):
    experiment = small_experiment(tmp_path / "mine.yaml")
    assert resolve_experiment_path(str(experiment)) == experiment
    monkeypatch.chdir(tmp_path)
    assert resolve_experiment_path("mine.yaml") == experiment   # the current directory
    assert resolve_experiment_path("reacher_2link.yaml") == REPO / "config" / "reacher_2link.yaml"
    assert (resolve_experiment_path("config/reacher_2link.yaml")
            == REPO / "config" / "reacher_2link.yaml")
    assert experiment_candidates("x.yaml")[0] == tmp_path / "x.yaml"
    with pytest.raises(NodeParameterError, match="parameter 'experiment_config' is empty"):
        resolve_experiment_path("")


@pytest.mark.timeout(60)
def test_the_graph_config_file_starts_every_node_through_the_rcl_yaml_parser(ros_context,
                                                                             tmp_path):
    config = REPO / "config" / "sim_reacher_2link.yaml"
    args = ["--ros-args", "--params-file", str(config)]  # each node takes only its own sections
    sim = SimRobotNode(context=ros_context, cli_args=args)
    controller = LqrControllerNode(context=ros_context, cli_args=args)
    try:
        assert sim.settings.mode == "lockstep" and controller.mode == "lockstep"
        assert controller.reset_mode == "sim_service"
        assert controller.experiment_path == REPO / "config" / "reacher_2link.yaml"
    finally:
        controller.destroy_node()
        sim.destroy_node()


@pytest.mark.timeout(60)
def test_sim_robot_initial_positions_is_settable_at_runtime_and_validated(ros_context):
    sim = SimRobotNode(context=ros_context, parameter_overrides=parameters(mode="lockstep",
                                                                           joints=["elbow",
                                                                                   "shoulder"]))
    try:
        descriptor = sim.describe_parameter("initial_positions")
        assert not descriptor.read_only and descriptor.type == ParameterType.PARAMETER_DOUBLE_ARRAY
        assert sim.describe_parameter("mode").read_only
        # elbow, shoulder
        [result] = sim.set_parameters([Parameter("initial_positions", value=[0.4, -0.3])])
        assert result.successful
        from std_srvs.srv import Trigger
        sim._on_reset(Trigger.Request(), Trigger.Response())
        # arm order: shoulder, elbow
        np.testing.assert_array_equal(sim.arm.joint_state()[0], [-0.3, 0.4])
        for bad, reason in (([0.1], "2 finite angles"), ([0.0, np.nan], "2 finite angles"),
                            ([3.1, 0.0], "outside the position limits at joints \\['elbow'\\]")):
            [result] = sim.set_parameters([Parameter("initial_positions", value=bad)])
            assert not result.successful
            assert "parameter 'initial_positions'" in result.reason
            assert __import__("re").search(reason, result.reason), result.reason
        np.testing.assert_array_equal(sim.settings.initial_positions, [0.4, -0.3])  # unchanged
        [result] = sim.set_parameters([Parameter("mode", value="realtime")])
        assert not result.successful
    finally:
        sim.destroy_node()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["lqr_controller", "sample_collector", "dynamics_fitter",
                                    "gps_trainer"])
def test_main_exits_non_zero_with_the_message_on_a_bad_parameter(module):
    result = subprocess.run(
        [sys.executable, "-m", f"mbpl_ros.nodes.{module}", "--ros-args", "-p",
         "experiment_config:=no_such.yaml"],
        capture_output=True, text=True, timeout=50, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                 "")})
    assert result.returncode == 1
    assert ("cannot start: parameter 'experiment_config' is 'no_such.yaml', which is not a file"
            in result.stderr)
