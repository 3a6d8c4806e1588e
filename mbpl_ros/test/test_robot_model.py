"""RobotModel (Pinocchio) against the simulator (PyBullet) and against finite differences."""
import subprocess
import sys

import numpy as np
import pytest

from mbpl_ros.experiment import load_experiment
from mbpl_ros.robot_model import RobotModel
from mbpl_ros.sim.arm import Arm

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _robots():
    # The Panda has locked finger joints and an end-effector offset: the reduced model.
    return ["reacher_2link", "kuka_iiwa",
            load_experiment(ROOT / "config" / "panda_reach.yaml").robot_spec]


@pytest.mark.parametrize("robot", _robots(), ids=lambda r: r if isinstance(r, str) else r.name)
def test_kinematics_and_dynamics_equal_the_simulators(robot):
    model = RobotModel(robot)
    rng = np.random.default_rng(0)
    with Arm(robot) as arm:
        for name in ("joint_damping", "position_limits", "velocity_limits", "effort_limits"):
            np.testing.assert_array_equal(getattr(model, name), getattr(arm, name), err_msg=name)
        lower, upper = arm.position_limits.T
        for _ in range(5):
            q = rng.uniform(lower, upper)
            qd, qdd = rng.normal(size=model.n_joints), rng.normal(size=model.n_joints)
            np.testing.assert_allclose(model.forward_kinematics(q), arm.forward_kinematics(q),
                                       atol=1e-12)
            np.testing.assert_allclose(model.jacobian(q), arm.jacobian(q), atol=1e-12)
            np.testing.assert_allclose(model.mass_matrix(q), arm.mass_matrix(q), atol=1e-12)
            np.testing.assert_allclose(model.gravity_torque(q), arm.gravity_torque(q), atol=1e-11)
            np.testing.assert_allclose(model.inverse_dynamics(q, qd, qdd),
                                       arm.inverse_dynamics(q, qd, qdd), atol=1e-11)


@pytest.mark.parametrize("robot", ["reacher_2link", "kuka_iiwa"])
def test_forward_dynamics_inverts_inverse_dynamics_and_its_derivatives_are_exact(robot):
    model = RobotModel(robot)
    rng = np.random.default_rng(1)
    J = model.n_joints
    q, qd, tau = rng.uniform(-1, 1, J), rng.normal(size=J), rng.normal(size=J)
    qdd = model.forward_dynamics(q, qd, tau)
    # M qdd + c + G = tau - D qd
    np.testing.assert_allclose(model.inverse_dynamics(q, qd, qdd), tau - model.joint_damping * qd,
                               atol=1e-10)
    d_q, d_qd, d_tau = model.forward_dynamics_derivatives(q, qd, tau)
    h, eye = 1e-6, np.eye(J)

    def central(f):
        return np.stack([(f(h * eye[i]) - f(-h * eye[i])) / (2 * h) for i in range(J)], axis=1)

    scale = 1 + np.abs(qdd).max()
    np.testing.assert_allclose(d_q, central(lambda d: model.forward_dynamics(q + d, qd, tau)),
                               atol=1e-6 * scale)
    np.testing.assert_allclose(d_qd, central(lambda d: model.forward_dynamics(q, qd + d, tau)),
                               atol=1e-6 * scale)
    np.testing.assert_allclose(d_tau, np.linalg.inv(model.mass_matrix(q)), atol=1e-10)


def test_bad_descriptions_name_the_joint_or_link():
    from dataclasses import replace

    from mbpl_ros.robots import robot_spec

    spec = robot_spec("reacher_2link")
    with pytest.raises(ValueError, match="wrist"):
        RobotModel(replace(spec, joint_names=("shoulder", "wrist")))
    with pytest.raises(ValueError, match="ee_link 'hand'"):
        RobotModel(replace(spec, ee_link="hand"))


def test_the_model_imports_no_simulator():
    code = "import sys, mbpl_ros.robot_model; print('pybullet' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("node", ["lqr_controller", "sample_collector", "dynamics_fitter",
                                  "gps_trainer"])
def test_no_node_that_runs_on_hardware_imports_the_simulator(node):
    code = f"import sys, mbpl_ros.nodes.{node}; print('pybullet' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_states_from_joint_states_equal_the_simulators_points():
    # The peg has two points: the multi-point path against PyBullet's kinematics.
    from mbpl_ros.robot_model import JointStateToState

    spec = load_experiment(ROOT / "config" / "peg_insertion.yaml").robot_spec
    assert spec.n_points > 1
    to_state = JointStateToState(spec)
    rng = np.random.default_rng(2)
    with Arm(spec) as arm:
        lower, upper = arm.position_limits.T
        for _ in range(3):
            q, qd = rng.uniform(lower, upper), rng.normal(size=spec.n_joints)
            points, velocities = arm.points_kinematics(q, qd)
            target = rng.normal(size=3)
            expected = to_state.layout.build(q, qd, points, velocities, spec.point_targets(target))
            np.testing.assert_allclose(to_state(q, qd, target), expected, atol=1e-12)


def test_the_robot_descriptions_import_neither_the_model_nor_the_simulator():
    code = ("import sys, mbpl_ros.robots\n"
            "print(sorted(m for m in sys.modules if m.startswith(('mbpl_ros.sim', "
            "'mbpl_ros.robot_model', 'pybullet', 'pinocchio')) and m != 'pybullet_data'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
