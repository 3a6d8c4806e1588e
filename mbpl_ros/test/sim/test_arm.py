"""The PyBullet arm against closed forms, finite differences and PyBullet's own link states."""
import dataclasses

import numpy as np
import pybullet
import pytest

from mbpl_ros.sim.arm import Arm
from mbpl_ros.robots import ROBOTS, RobotSpec, robot_spec

ROBOT_NAMES = ("reacher_2link", "kuka_iiwa")

# The reacher's URDF, as closed-form parameters: link lengths, masses, COM distances, inertias.
L1, L2 = 0.25, 0.2
M1, M2, M_TIP = 1.0, 0.6, 0.05
C1, C2 = 0.125, 0.1
I1, I2, I_TIP = 0.00530833, 0.00203375, 0.000008


@pytest.fixture(params=ROBOT_NAMES)
def arm(request):
    with Arm(request.param) as arm:
        yield arm


def random_q(arm, rng, margin=0.2):
    lower, upper = arm.position_limits.T
    return rng.uniform(lower + margin, upper - margin)


def pd_hold_effort(arm, q, qd, target, omega=6.0):
    """Gravity compensation plus a critically damped PD, scaled by M(q) to decouple the joints."""
    acceleration = omega ** 2 * (target - q) - 2 * omega * qd
    return arm.gravity_torque(q) + arm.mass_matrix(q) @ acceleration


# ---------------------------------------------------------------- specs
def test_robot_spec_knows_both_robots_and_lists_them_for_an_unknown_name():
    assert set(ROBOTS) == set(ROBOT_NAMES)
    assert robot_spec("kuka_iiwa").n_joints == 7
    with pytest.raises(ValueError, match="known robots.*kuka_iiwa.*reacher_2link"):
        robot_spec("ur5")


def test_arm_reads_limits_and_damping_from_the_urdf():
    with Arm("reacher_2link") as reacher:
        np.testing.assert_array_equal(reacher.effort_limits, [2.0, 1.0])
        np.testing.assert_array_equal(reacher.velocity_limits, [10.0, 10.0])
        np.testing.assert_allclose(reacher.position_limits,
                                   [[-np.pi, np.pi], [-(np.pi - 0.1), np.pi - 0.1]])
        np.testing.assert_array_equal(reacher.joint_damping, [0.1, 0.05])
        assert reacher.control_dt == pytest.approx(1 / 20)
    with Arm("kuka_iiwa") as kuka:
        np.testing.assert_array_equal(kuka.effort_limits, np.full(7, 300.0))
        np.testing.assert_array_equal(kuka.joint_damping,
                                      [0.5] * 6 + [0.05])  # override on joint 7


# ---------------------------------------------------------------- dynamics
def test_kuka_falls_under_gravity_with_zero_torque():
    with Arm("kuka_iiwa") as kuka:
        q_start = kuka.joint_state()[0]
        ee_start = kuka.ee_position()
        for _ in range(20):  # 1 s
            kuka.step(np.zeros(7))
        assert kuka.ee_position()[2] < ee_start[2] - 0.1
        assert np.abs(kuka.joint_state()[0] - q_start).max() > 0.3


def test_pd_hold_holds_the_arm_and_brings_it_back_from_a_perturbation(arm):
    target = arm.spec.initial_condition("home")
    arm.reset(target + 0.05)
    worst_late_error = 0.0
    for step in range(60):  # 3 s at 20 Hz
        q, qd, _ = arm.joint_state()
        arm.step(pd_hold_effort(arm, q, qd, target))
        if step >= 40:
            worst_late_error = max(worst_late_error, np.abs(q - target).max())
    assert worst_late_error < 0.05
    assert np.abs(arm.joint_state()[1]).max() < 0.02


def test_reacher_is_planar_and_gravity_never_loads_its_joints():
    with Arm("reacher_2link") as reacher:
        rng = np.random.default_rng(0)
        for _ in range(3):
            q = random_q(reacher, rng)
            np.testing.assert_allclose(reacher.gravity_torque(q), 0.0, atol=1e-12)
            assert reacher.forward_kinematics(q)[2] == pytest.approx(0.0, abs=1e-12)


def test_joint_damping_dissipates_the_power_of_its_torque():
    """
    Over one physics step the kinetic energy drops by the work of the damping torque -D qd.

    PyBullet applies damping explicitly (torque -D qd0) and integrates semi-implicitly, so the
    work over the step is -dt (qd0 + qd1)/2 . D qd0 (up to the small change of M(q)).
    """
    kuka_without_gravity = dataclasses.replace(robot_spec("kuka_iiwa"), gravity=False)
    for spec in (robot_spec("reacher_2link"), kuka_without_gravity):
        with Arm(spec, substeps=1) as arm:
            q0 = arm.spec.initial_condition("home")
            qd0 = np.linspace(0.05, 0.1, arm.n_joints)  # slow: centrifugal terms stay negligible
            arm.reset(q0, qd0)
            energy_before = 0.5 * qd0 @ arm.mass_matrix(q0) @ qd0
            arm.step(np.zeros(arm.n_joints))
            q1, qd1, _ = arm.joint_state()
            energy_after = 0.5 * qd1 @ arm.mass_matrix(q1) @ qd1
            damping_work = -arm.physics_dt * 0.5 * (qd0 + qd1) @ (arm.joint_damping * qd0)
            assert energy_after - energy_before == pytest.approx(damping_work, rel=0.01), spec.name


def test_kuka_joint7_damping_override_keeps_the_wrist_stable():
    """The URDF's 0.5 N·m·s/rad on joint 7 diverges at 240 Hz; the spec's override does not."""
    urdf_damping = dataclasses.replace(robot_spec("kuka_iiwa"), damping_overrides={})
    speeds = {}
    for label, spec in (("urdf", urdf_damping), ("override", robot_spec("kuka_iiwa"))):
        with Arm(spec) as kuka:
            kuka.reset("home", np.full(7, 0.5))
            for _ in range(20):
                kuka.step(np.zeros(7))
            speeds[label] = abs(kuka.joint_state()[1][6])
    assert speeds["urdf"] == pytest.approx(10.0)  # runs away to the velocity limit
    assert speeds["override"] < 0.5


def test_reacher_mass_matrix_matches_the_two_link_closed_form():
    with Arm("reacher_2link") as reacher:
        for elbow in (-2.0, 0.0, 0.7, 2.5):
            c = np.cos(elbow)
            m22 = I2 + I_TIP + M2 * C2 ** 2 + M_TIP * L2 ** 2
            m12 = m22 + (M2 * C2 + M_TIP * L2) * L1 * c
            m11 = I1 + M1 * C1 ** 2 + (M2 + M_TIP) * L1 ** 2 + 2 * m12 - m22
            expected = np.array([[m11, m12], [m12, m22]])
            np.testing.assert_allclose(reacher.mass_matrix([0.3, elbow]), expected, rtol=1e-6)


def test_mass_matrix_is_symmetric_positive_definite(arm):
    rng = np.random.default_rng(1)
    for _ in range(3):
        mass = arm.mass_matrix(random_q(arm, rng))
        np.testing.assert_allclose(mass, mass.T, atol=1e-12)
        assert np.linalg.eigvalsh(mass).min() > 0


def test_kuka_gravity_torque_is_the_gradient_of_potential_energy():
    """G(q) = dV/dq with V = -sum_i m_i g . p_com_i(q), from PyBullet's link centres of mass."""
    with Arm("kuka_iiwa") as kuka, Arm("kuka_iiwa") as probe:
        client, body = probe._client, probe._body
        masses = [client.getDynamicsInfo(body, link)[0] for link in range(7)]
        gravity = kuka.spec.gravity_vector

        def potential(q):
            probe.reset(q)
            states = client.getLinkStates(body, list(range(7)), computeForwardKinematics=True)
            return -sum(m * gravity @ np.array(s[0]) for m, s in zip(masses, states))

        q = kuka.spec.initial_condition("home")
        eps = 1e-6
        gradient = np.array([(potential(q + eps * e) - potential(q - eps * e)) / (2 * eps)
                             for e in np.eye(7)])
        np.testing.assert_allclose(kuka.gravity_torque(q), gradient, atol=1e-5)


# ---------------------------------------------------------------- kinematics
def test_reacher_forward_kinematics_matches_the_closed_form():
    with Arm("reacher_2link") as reacher:
        rng = np.random.default_rng(2)
        for _ in range(5):
            q = random_q(reacher, rng)
            expected = [L1 * np.cos(q[0]) + L2 * np.cos(q.sum()),
                        L1 * np.sin(q[0]) + L2 * np.sin(q.sum()), 0.0]
            np.testing.assert_allclose(reacher.forward_kinematics(q), expected, atol=1e-12)


def test_forward_kinematics_matches_pybullet_link_state(arm):
    rng = np.random.default_rng(3)
    client, body = arm._client, arm._body
    links = [client.getJointInfo(body, i)[12].decode() for i in range(client.getNumJoints(body))]
    ee_link = links.index(arm.spec.ee_link)
    for _ in range(3):
        q = random_q(arm, rng)
        arm.reset(q)
        frame_position, frame_orientation = client.getLinkState(body, ee_link,
                                                                computeForwardKinematics=True)[4:6]
        rotation = np.array(pybullet.getMatrixFromQuaternion(frame_orientation)).reshape(3, 3)
        expected = np.array(frame_position) + rotation @ np.array(arm.spec.ee_offset)
        # PyBullet's URDF-frame pose is single precision.
        np.testing.assert_allclose(arm.ee_position(), expected, atol=1e-6)
        np.testing.assert_allclose(arm.forward_kinematics(q), expected, atol=1e-6)
        orientation = arm.ee_orientation()
        assert min(np.abs(orientation - frame_orientation).max(),
                   np.abs(orientation + frame_orientation).max()) < 1e-6


def test_jacobian_matches_finite_differences_of_forward_kinematics(arm):
    rng = np.random.default_rng(4)
    eps = 1e-6
    for _ in range(3):
        q = random_q(arm, rng)
        fk = arm.forward_kinematics
        numeric = np.stack([(fk(q + eps * e) - fk(q - eps * e)) / (2 * eps)
                            for e in np.eye(arm.n_joints)], axis=1)
        jacobian = arm.jacobian(q)
        assert jacobian.shape == (3, arm.n_joints)
        np.testing.assert_allclose(jacobian, numeric, atol=1e-7)


def test_ee_velocity_matches_pybullet_link_velocity(arm):
    """v_ee = J qd equals PyBullet's link velocity v_com + w x (p_ee - p_com)."""
    arm.reset(arm.spec.initial_condition("left"), np.linspace(-0.5, 0.5, arm.n_joints))
    arm.step(np.zeros(arm.n_joints))
    link = arm._client.getLinkState(arm._body, arm._ee_link_index, computeLinkVelocity=True,
                                    computeForwardKinematics=True)
    com_position, com_velocity, angular_velocity = (np.array(link[i]) for i in (0, 6, 7))
    expected = com_velocity + np.cross(angular_velocity, arm.ee_position() - com_position)
    np.testing.assert_allclose(arm.ee_velocity(), expected, atol=1e-9)
    np.testing.assert_allclose(arm.ee_angular_velocity(), angular_velocity, atol=1e-9)


@pytest.mark.parametrize("robot", ROBOT_NAMES)
def test_ee_point_moves_by_the_jacobian_times_the_joint_motion(robot):
    with Arm(robot, substeps=1) as arm:
        arm.reset(arm.spec.initial_condition("home"), np.linspace(-0.5, 0.5, arm.n_joints))
        q0, _, _ = arm.joint_state()
        position_before = arm.ee_position()
        arm.step(arm.gravity_torque(q0))
        q1, _, _ = arm.joint_state()
        # second-order accurate: the Jacobian at the midpoint times the joint displacement
        predicted = arm.jacobian(0.5 * (q0 + q1)) @ (q1 - q0)
        np.testing.assert_allclose(arm.ee_position() - position_before, predicted, atol=1e-8)


def test_forward_kinematics_leaves_the_simulation_untouched(arm):
    arm.reset(arm.spec.initial_condition("home"), np.full(arm.n_joints, 0.3))
    arm.step(np.full(arm.n_joints, 0.5))
    before = arm.joint_state()
    arm.forward_kinematics(np.zeros(arm.n_joints))
    for got, expected in zip(arm.joint_state(), before):
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- limits
def test_effort_is_clamped_to_the_limits(arm):
    command = np.where(np.arange(arm.n_joints) % 2 == 0, 10.0, -10.0) * arm.effort_limits
    applied = arm.step(command)
    np.testing.assert_array_equal(applied, np.sign(command) * arm.effort_limits)
    np.testing.assert_array_equal(arm.joint_state()[2], applied)
    small = 0.1 * arm.effort_limits
    np.testing.assert_array_equal(arm.step(small), small)


def test_position_and_velocity_limits_hold_under_maximal_torque(arm):
    """Joints stop at their limits, overshooting at most one physics step at top speed."""
    overshoot = arm.velocity_limits * arm.physics_dt + 1e-6
    lower, upper = arm.position_limits.T
    for direction in (1.0, -1.0):
        arm.reset(arm.spec.initial_condition("home"))
        for _ in range(40):  # 2 s
            arm.step(direction * arm.effort_limits)
            q, qd, _ = arm.joint_state()
            assert np.all(q <= upper + overshoot) and np.all(q >= lower - overshoot)
            assert np.all(np.abs(qd) <= arm.velocity_limits * (1 + 1e-6))
        # the test did push joints into their limits (not all: joint torques react on each other)
        at_a_limit = (np.abs(q - upper) <= overshoot) | (np.abs(q - lower) <= overshoot)
        assert at_a_limit.sum() >= min(2, arm.n_joints)


def test_reacher_elbow_reaches_and_respects_its_velocity_limit():
    with Arm("reacher_2link", substeps=1) as reacher:
        reacher.reset([0.0, -3.0])
        top_speed = 0.0
        for _ in range(120):
            reacher.step([0.0, 1.0])
            top_speed = max(top_speed, abs(reacher.joint_state()[1][1]))
        assert top_speed == pytest.approx(reacher.velocity_limits[1], rel=1e-3)


# ---------------------------------------------------------------- determinism
def test_same_commands_give_bit_identical_states_in_fresh_arms(arm):
    rng = np.random.default_rng(5)
    efforts = rng.uniform(-1, 1, size=(30, arm.n_joints)) * arm.effort_limits * 0.3
    q0 = arm.spec.initial_condition("home")

    def run(queries_between_steps):
        with Arm(arm.spec) as fresh, Arm("reacher_2link") as neighbour:
            fresh.reset(q0)
            states = []
            for effort in efforts:
                fresh.step(effort)
                neighbour.step(np.ones(2))  # another client in the same process
                if queries_between_steps:
                    fresh.forward_kinematics(q0)
                    fresh.jacobian(q0)
                    fresh.mass_matrix(q0)
                    fresh.gravity_torque(q0)
                states.append(np.concatenate(fresh.joint_state()[:2]))
            return np.array(states)

    first, second, queried = run(False), run(False), run(True)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, queried)
    assert np.abs(first[-1] - first[0]).max() > 0.01  # it moved


def test_reset_to_a_named_initial_condition(arm):
    arm.step(arm.effort_limits * 0.5)
    arm.reset("left", np.full(arm.n_joints, 0.1))
    q, qd, effort = arm.joint_state()
    np.testing.assert_array_equal(q, arm.spec.initial_condition("left"))
    np.testing.assert_array_equal(qd, np.full(arm.n_joints, 0.1))
    np.testing.assert_array_equal(effort, 0.0)
    with pytest.raises(ValueError, match="unknown initial condition 'nowhere'.*home"):
        arm.reset("nowhere")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("effort, message", [
    ([1.0], r"effort must have shape \(2,\)"),
    ([[1.0, 2.0]], r"effort must have shape \(2,\)"),
    ([np.nan, 0.0], "effort must be finite"),
    ([0.0, np.inf], "effort must be finite"),
    (["a", 0.0], "effort must be 2 numbers"),
])
def test_step_rejects_bad_efforts_without_stepping(effort, message):
    with Arm("reacher_2link") as reacher:
        before = reacher.joint_state()
        with pytest.raises(ValueError, match=message):
            reacher.step(effort)
        np.testing.assert_array_equal(reacher.joint_state()[0], before[0])


def test_bad_construction_and_reset_arguments_raise_value_error():
    with pytest.raises(ValueError, match="physics_dt must be a positive"):
        Arm("reacher_2link", physics_dt=0.0)
    with pytest.raises(ValueError, match="substeps must be an integer >= 1"):
        Arm("reacher_2link", substeps=2.5)
    with pytest.raises(ValueError, match="unknown robot 'nope'"):
        Arm("nope")
    with pytest.raises(ValueError, match="ee_link 'hand' is not a link"):
        Arm(dataclasses.replace(robot_spec("reacher_2link"), ee_link="hand"))
    with pytest.raises(ValueError, match="must be exactly the movable joints"):
        Arm(RobotSpec(name="half", urdf_path=robot_spec("reacher_2link").urdf_path,
                      joint_names=("shoulder",), ee_link="fingertip"))
    with Arm("reacher_2link") as reacher:
        with pytest.raises(ValueError, match="outside the position limits.*elbow"):
            reacher.reset([0.0, 3.1])
        with pytest.raises(ValueError, match="exceeds the velocity limits.*shoulder"):
            reacher.reset([0.0, 0.0], [11.0, 0.0])
        with pytest.raises(ValueError, match=r"q must have shape \(2,\)"):
            reacher.jacobian([0.0, 0.0, 0.0])
    reacher.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        reacher.step([0.0, 0.0])
