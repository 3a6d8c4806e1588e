"""The node graph honours an experiment's model_error and refuses what only `mbpl train` has."""
import numpy as np
import pytest

from loop_helpers import parameters, small_experiment
from mbpl_ros.nodes.common import NodeParameterError
from mbpl_ros.nodes.dynamics_fitter import DynamicsFitterNode
from mbpl_ros.nodes.sim_robot import SimRobotNode
from mbpl_ros.robot_model import RobotModel
from mbpl_ros.sim.model_error import ModelError


@pytest.mark.timeout(60)
def test_sim_robot_simulates_the_experiments_model_error(ros_context, tmp_path):
    wrong = ModelError(mass_scale=1.3, payload_kg=0.2)
    experiment = small_experiment(tmp_path / "experiment.yaml",
                                  model_error={"mass_scale": 1.3, "payload_kg": 0.2})
    node = SimRobotNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment), mode="lockstep"))
    try:
        assert node.arm.model_error == wrong
        q = np.array([0.3, 1.2])
        described = RobotModel(node.settings.robot).mass_matrix(q)
        assert not np.allclose(node.arm.mass_matrix(q), described, rtol=0.1)
    finally:
        node.destroy_node()


@pytest.mark.timeout(60)
def test_the_learning_nodes_refuse_the_description_prior_they_do_not_apply(ros_context,
                                                                           tmp_path):
    experiment = small_experiment(tmp_path / "experiment.yaml",
                                  dynamics={"description_prior": {"enabled": True}})
    with pytest.raises(NodeParameterError, match=r"dynamics\.description_prior is enabled, "
                       r"which only `mbpl train` supports so far; allowed on the node graph: "
                       r"dynamics\.description_prior\.enabled false"):
        DynamicsFitterNode(context=ros_context,
                           parameter_overrides=parameters(experiment_config=str(experiment)))
