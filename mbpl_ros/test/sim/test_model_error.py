"""Model error: the simulated arm's dynamics change, the learner's robot description does not."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from mbpl_ros.config import ConfigError
from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import evaluate_controllers
from mbpl_ros.robot_model import RobotModel
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.model_error import ModelError

CONFIG = Path(__file__).resolve().parents[2] / "config" / "reacher_2link.yaml"
GRAVITY = np.array([0.0, 0.0, -9.81])


@pytest.mark.parametrize("robot", ["reacher_2link", "kuka_iiwa"])
def test_scaled_masses_and_a_payload_give_the_rigid_body_dynamics_they_imply(robot):
    """
    Check M and G of the heavier, loaded arm against the rigid-body formulas.

    M and G scale with the masses; a point mass m at the end-effector point adds m JᵀJ to M
    and -m Jᵀg to G (J the point's linear Jacobian), up to the payload's 1e-6 kg·m² inertia.
    """
    s, m = 1.3, 0.4
    rng = np.random.default_rng(0)
    with Arm(robot) as plain, Arm(robot, model_error=ModelError(mass_scale=s)) as heavier, \
            Arm(robot, model_error=ModelError(mass_scale=s, payload_kg=m)) as loaded:
        lower, upper = plain.position_limits.T
        for q in rng.uniform(lower + 0.3, upper - 0.3, size=(3, plain.n_joints)):
            M, G = plain.mass_matrix(q), plain.gravity_torque(q)
            np.testing.assert_allclose(heavier.mass_matrix(q), s * M, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(heavier.gravity_torque(q), s * G, rtol=1e-9, atol=1e-9)
            J = plain.jacobian(q)
            np.testing.assert_allclose(loaded.mass_matrix(q), s * M + m * J.T @ J, atol=1e-5)
            np.testing.assert_allclose(loaded.gravity_torque(q), s * G - m * J.T @ GRAVITY,
                                       atol=1e-8)
            # The end-effector point itself is where the description puts it.
            np.testing.assert_allclose(loaded.forward_kinematics(q), plain.forward_kinematics(q),
                                       atol=1e-9)


def test_added_damping_and_coulomb_friction_act_on_the_simulated_joints():
    q0 = np.array([0.3, 0.5])
    push = np.array([0.04, 0.04])                      # N·m, under a friction of 0.05
    with Arm("reacher_2link") as plain, \
            Arm("reacher_2link", model_error=ModelError(joint_friction=0.05)) as rough, \
            Arm("reacher_2link", model_error=ModelError(joint_damping=0.2)) as damped:
        np.testing.assert_allclose(damped.joint_damping, plain.joint_damping + 0.2)
        moved = {}
        for name, arm in (("plain", plain), ("rough", rough), ("damped", damped)):
            arm.reset(q0)
            for _ in range(10):
                arm.step(push)
            moved[name] = np.abs(arm.joint_state()[0] - q0).max()
        assert moved["plain"] > 0.1
        # Held by the friction (PyBullet's motor lets it creep by ~1e-3 of the free motion).
        assert moved["rough"] < 1e-2 * moved["plain"]
        assert 0.01 * moved["plain"] < moved["damped"] < 0.8 * moved["plain"]
        rough.reset(q0)
        for _ in range(10):
            rough.step(3 * push)                       # above the friction: it moves
        assert np.abs(rough.joint_state()[0] - q0).max() > 0.05


def _config(tmp_path, **model_error):
    data = yaml.safe_load(CONFIG.read_text())
    if model_error:
        data["model_error"] = model_error
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_experiment(path)


def test_an_experiments_model_error_changes_its_simulator_not_its_robot_description(tmp_path):
    exact = _config(tmp_path)
    wrong = _config(tmp_path, mass_scale=1.3, payload_kg=0.2, joint_damping=0.05,
                    joint_friction=0.01)
    assert exact.model_error == ModelError() and not exact.model_error.active
    assert wrong.model_error == ModelError(1.3, 0.2, 0.05, 0.01) and wrong.model_error.active
    assert wrong.robot_spec == exact.robot_spec
    q = np.asarray(exact.conditions[1].initial_positions)
    with exact.make_arm() as arm:
        model = RobotModel(wrong.robot)        # what the learner builds its controllers from
        np.testing.assert_allclose(model.mass_matrix(q), arm.mass_matrix(q), atol=1e-9)
        np.testing.assert_allclose(model.gravity_torque(q), arm.gravity_torque(q), atol=1e-9)
        initial = exact.initial_controllers(RobotModel(exact.robot))
        for a, b in zip(initial, wrong.initial_controllers(model)):
            np.testing.assert_array_equal(a.K, b.K)
            np.testing.assert_array_equal(a.k, b.k)
    with wrong.make_arm() as arm:
        assert arm.model_error == wrong.model_error
        assert not np.allclose(arm.mass_matrix(q), model.mass_matrix(q), rtol=0.1)
    # The same open-loop push (the planar reacher has no gravity to move it) lands elsewhere
    # on the heavier, rougher arm.
    pushing = [dataclasses.replace(c, K=np.zeros_like(c.K), k=np.full_like(c.k, 0.05))
               for c in initial]
    exact_distances, _ = evaluate_controllers(exact, pushing, exact.build_cost())
    wrong_distances, _ = evaluate_controllers(wrong, pushing, wrong.build_cost())
    assert np.abs(np.subtract(exact_distances, wrong_distances)).max() > 0.02


@pytest.mark.parametrize("model_error, message", [
    ({"mass_scale": 0.0}, r"model_error\.mass_scale:? must be > 0\.0, got 0\.0"),
    ({"payload_kg": -0.1}, r"model_error\.payload_kg:? must be >= 0\.0, got -0\.1"),
    ({"joint_friction": "high"}, r"model_error\.joint_friction:? must be a number"),
    ({"masses": 1.3}, r"model_error: unknown key 'masses'; allowed keys: joint_damping, "
                      r"joint_friction, mass_scale, payload_kg"),
])
def test_bad_model_error_names_the_key_and_what_is_allowed(tmp_path, model_error, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **model_error)


def test_the_arm_refuses_a_model_error_of_another_type():
    with pytest.raises(ValueError, match="model_error must be a sim.model_error.ModelError"):
        Arm("reacher_2link", model_error={"mass_scale": 1.3})
