"""The robot-description prior: its control step against the simulator, and its wiring."""
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from mbpl_ros.core.model_prior import ModelPrior, PooledPrior
from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import TrainingRun
from mbpl_ros.robot_model import StepLinearization
from mbpl_ros.sim.arm import Arm
from mbpl_ros.training import TrainingLoop

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["reacher_2link.yaml", "kuka_reach.yaml"])
def test_the_linearised_control_step_predicts_the_simulator_and_is_its_derivative(config):
    """
    Check the model's control step against the simulator's.

    Within the limits both integrate semi-implicit Euler over the same substeps; G is the
    step's derivative (central differences).
    """
    cfg = load_experiment(ROOT / "config" / config)
    target = np.asarray(cfg.conditions[0].target)
    linearize = pickle.loads(pickle.dumps(StepLinearization(cfg.robot_spec, target,
                                                            cfg.physics_dt, cfg.substeps)))
    J = linearize.model.n_joints
    rng = np.random.default_rng(2)
    with Arm(cfg.robot_spec, physics_dt=cfg.physics_dt, substeps=cfg.substeps) as arm:
        q = np.asarray(cfg.conditions[0].initial_positions) + 0.05 * rng.normal(size=J)
        qd = 0.1 * rng.normal(size=J)      # a push of ~1 rad/s² inside the speed caps
        u = arm.gravity_torque(q) + arm.mass_matrix(q) @ rng.normal(size=J)
        x, _ = linearize.observe(q, qd)
        G, c = linearize(x[None], u[None])
        arm.reset(q, qd)
        arm.step(u)
        x_next, _ = linearize.observe(*arm.joint_state()[:2])
    np.testing.assert_allclose(G[0] @ np.concatenate([x, u]) + c[0], x_next, atol=1e-9)
    dX = x.size
    assert not G[0][:, 2 * J:dX].any()        # the end-effector entries are functions of q, q̇

    def step(z):
        q_next, qd_next, _ = linearize.step(z[:J], z[J:2 * J], z[2 * J:])
        return linearize.observe(q_next, qd_next)[0]

    z, h = np.concatenate([q, qd, u]), 1e-6
    central = np.stack([(step(z + h * e) - step(z - h * e)) / (2 * h) for e in np.eye(3 * J)],
                       axis=1)
    np.testing.assert_allclose(np.concatenate([G[0][:, :2 * J], G[0][:, dX:]], axis=1), central,
                               atol=1e-6 * np.abs(central).max())


def _reacher(tmp_path, **dynamics):
    data = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    data["dynamics"].update(dynamics)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_experiment(path)


def _algorithm(config, tmp_path):
    """Return the LqrFlm that a run of `config` starts from."""
    return TrainingLoop(config, tmp_path / "loop", 0, source=None,
                        log=io.StringIO()).build_algorithm()


def test_the_option_pools_the_description_with_each_conditions_prior(tmp_path):
    off = _reacher(tmp_path)
    assert not off.dynamics.description_prior.enabled        # off by default
    assert all(not isinstance(s.prior, PooledPrior) for s in _algorithm(off, tmp_path).conditions)

    on = _reacher(tmp_path, description_prior={"enabled": True, "strength": 2.0})
    local = _algorithm(on, tmp_path)
    for state, condition in zip(local.conditions, on.conditions):
        assert isinstance(state.prior, PooledPrior) and state.prior.model.strength == 2.0
        np.testing.assert_array_equal(state.prior.model.linearize.target, condition.target)
    alone = _reacher(tmp_path, prior={"enabled": False}, description_prior={"enabled": True})
    local = _algorithm(alone, tmp_path)
    assert all(isinstance(s.prior, ModelPrior) for s in local.conditions)
    # One iteration trains and checkpoints with it (the prior pickles).
    metrics = TrainingRun(on, tmp_path / "run", 0, log=io.StringIO()).run(1)
    assert len(metrics) == 2 and np.isfinite(metrics[-1]["final_distance_m"]).all()


def test_a_bad_strength_names_the_key(tmp_path):
    from mbpl_ros.config import ConfigError

    with pytest.raises(ConfigError, match=r"dynamics\.description_prior\.strength:? must be > "
                                          r"0\.0, got 0\.0"):
        _reacher(tmp_path, description_prior={"enabled": True, "strength": 0.0})
