"""
Test that a parameter a node does not have stops it at start-up.

A parameter a node does not have stops it at start-up, named with the closest known
name: rclpy would ignore it, so a misspelt safety setting would silently not be in force.
"""

import os
import subprocess
import sys

import pytest

from loop_helpers import REPO, parameters
from mbpl_ros.nodes import graph
from mbpl_ros.nodes.common import NodeParameterError

# (node, misspelt parameter, value, the parameter it should have been)
TYPOS = [
    ("sim_robot", "gui_", True, "gui"),
    ("sample_collector", "period_tolerence", 0.5, "period_tolerance"),
    ("dynamics_fitter", "experiment_configs", "reacher_2link.yaml", "experiment_config"),
    ("lqr_controller", "effort_limit", [1.0, 0.5], "effort_limits"),
    ("gps_trainer", "max_attempt", 3, "max_attempts"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("node, typo, value, meant", TYPOS)
def test_every_node_refuses_an_unknown_parameter_naming_the_closest(
    ros_context, tmp_path, node, typo, value, meant
):
    node_class = graph.load_node_class(graph.node_spec(node))
    given = {typo: value}
    if node == "gps_trainer":
        given["output_dir"] = str(tmp_path / "run")
    with pytest.raises(
        NodeParameterError,
        match=rf"unknown parameter '{typo}' \(did you mean "
        rf"'{meant}'\?\) given to /{node}; allowed: its parameters",
    ):
        node_class(context=ros_context, parameter_overrides=parameters(**given))
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.timeout(120)
@pytest.mark.parametrize("node", ["lqr_controller", "sim_robot"])
def test_a_params_file_typo_stops_the_node_process(tmp_path, node):
    """The console entry point with --params-file, as ros2 run / ros2 launch start it."""
    params = tmp_path / "params.yaml"
    typo = "effort_limit: [1.0, 0.5]" if node == "lqr_controller" else "control_rate: 50.0"
    meant = "effort_limits" if node == "lqr_controller" else "control_rate_hz"
    params.write_text(
        f"/**:\n  ros__parameters:\n    experiment_config: reacher_2link.yaml\n"
        f"{node}:\n  ros__parameters:\n    mode: lockstep\n    {typo}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            f"mbpl_ros.nodes.{node}",
            "--ros-args",
            "--params-file",
            str(params),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"did you mean '{meant}'?" in result.stderr
    assert typo.split(":")[0] in result.stderr and "Traceback" not in result.stderr
