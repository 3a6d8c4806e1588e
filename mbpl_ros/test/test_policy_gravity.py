"""The policy's gravity base: G(q) in torch (exported with the policy) against Pinocchio's."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import ActionCost
from mbpl_ros.core.lqr_flm import LqrFlmSettings
from mbpl_ros.core.mdgps import Mdgps, MdgpsSettings
from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy
from mbpl_ros.core.policy.network import Policy, SerialChainGravity
from mbpl_ros.core.policy.settings import PolicySettings
from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.experiment import load_experiment
from mbpl_ros.robot_model import RobotModel
from mbpl_ros.robots import robot_spec
from mbpl_ros.training import gravity_chain

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _robots():
    # The Panda has locked finger joints (the reduced model); the peg robot is the one
    # config/peg_insertion_mdgps.yaml trains with (the planar reacher has no gravity torque).
    return ["kuka_iiwa",
            load_experiment(ROOT / "config" / "panda_reach.yaml").robot_spec,
            load_experiment(ROOT / "config" / "peg_insertion_mdgps.yaml").robot_spec]


@pytest.mark.parametrize("robot", _robots(), ids=lambda r: r if isinstance(r, str) else r.name)
def test_the_chain_gravity_equals_the_robot_models(robot):
    model = RobotModel(robot)
    J = model.n_joints
    gravity = SerialChainGravity(J)
    gravity.set_chain(**gravity_chain(model))
    rng = np.random.default_rng(0)
    Q = rng.uniform(-2.5, 2.5, size=(8, J))
    reference = np.array([model.gravity_torque(q) for q in Q])
    torques = gravity(torch.as_tensor(Q, dtype=torch.float32)).double().numpy()
    assert np.abs(reference).max() > 1.0     # a torque worth checking
    np.testing.assert_allclose(torques, reference, atol=1e-4 * np.abs(reference).max())


def test_a_permuted_joint_order_is_mapped_to_the_chain():
    """Joints named out of the chain's order: q and G in the spec's order, as RobotModel's."""
    spec = robot_spec("kuka_iiwa")
    order = [3, 0, 6, 1, 5, 2, 4]
    permuted = RobotModel(dataclasses.replace(
        spec, joint_names=tuple(spec.joint_names[i] for i in order)))
    chain = gravity_chain(permuted)
    assert chain["chain_index"] != list(range(7))
    gravity = SerialChainGravity(7)
    gravity.set_chain(**chain)
    q = np.random.default_rng(1).uniform(-2, 2, size=7)
    expected = permuted.gravity_torque(q)
    got = gravity(torch.as_tensor(q[None], dtype=torch.float32)).double().numpy()[0]
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_the_gravity_base_is_exported_and_mdgps_sets_it(tmp_path):
    config = load_experiment(ROOT / "config" / "peg_insertion_mdgps.yaml")
    model = RobotModel(config.robot)
    layout = StateLayout(n_joints=7, n_points=2)
    T, dX, dU = 5, layout.dX, layout.dU
    controllers = [LinearGaussianController.from_covar(np.zeros((T, dU, dX)), np.zeros((T, dU)),
                                                       np.eye(dU))]
    settings = MdgpsSettings(policy=PolicySettings(hidden_sizes=(8,), action_base="gravity"))
    with pytest.raises(ValueError, match="needs the robot's gravity chain"):
        Mdgps(ActionCost(1.0), controllers, settings, LqrFlmSettings())
    algorithm = Mdgps(ActionCost(1.0), controllers, settings, LqrFlmSettings(),
                      gravity_chain=gravity_chain(model))
    policy = algorithm.policy
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, dX))
    G = np.array([model.gravity_torque(x[:7]) for x in X])
    np.testing.assert_allclose(policy.base_actions(X), G, atol=1e-4 * np.abs(G).max())
    network = policy.action_mean(X) - policy.base_actions(X)
    without = Policy(dX, dU, (8,), seed=settings.policy.seed)
    np.testing.assert_allclose(network, without.action_mean(X), atol=1e-5)
    export_torchscript(policy, tmp_path / "policy.pt")
    exported = load_exported_policy(tmp_path / "policy.pt")
    np.testing.assert_allclose(exported(X), policy.action_mean(X), atol=1e-4)
    np.testing.assert_allclose(exported(X[0]), policy.action_mean(X[0]), atol=1e-4)

