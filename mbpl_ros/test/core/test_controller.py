"""Linear-Gaussian controllers: construction, sampling statistics, smoothed noise and the
initial controllers (checked in joint-acceleration terms, and against scipy's LQR)."""
import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter1d

from mbpl_ros.core.controller import (LinearGaussianController, double_integrator_lqr_controller,
                                      pd_controller, smoothed_noise)


def random_spd(rng, d, scale=1.0):
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.5 * np.eye(d))


def arm(rng, J=3):
    """A made-up arm: mass matrix, gravity torque, state layout x = [q, qd, extra (4,)]."""
    M = random_spd(rng, J, scale=rng.uniform(0.1, 20.0))
    g = rng.normal(size=J) * 5
    dX = 2 * J + 4
    return M, g, np.arange(J), np.arange(J, 2 * J), dX


def test_from_covar_builds_consistent_factors():
    rng = np.random.default_rng(0)
    T, dU, dX = 5, 3, 4
    covar = np.stack([random_spd(rng, dU) for _ in range(T)])
    covar[:, 0, 1] += 1e-12                     # slightly asymmetric input is symmetrised
    c = LinearGaussianController.from_covar(rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)), covar)
    assert np.array_equal(c.covar, c.covar.transpose(0, 2, 1))
    np.testing.assert_allclose(c.chol @ c.chol.transpose(0, 2, 1), c.covar, rtol=1e-12)
    assert np.allclose(np.triu(c.chol, 1), 0)
    np.testing.assert_allclose(c.inv_covar @ c.covar, np.broadcast_to(np.eye(dU), (T, dU, dU)), atol=1e-10)
    assert (c.T, c.dU, c.dX) == (T, dU, dX)


def test_from_covar_rejects_non_pd_naming_the_step():
    covar = np.stack([np.eye(2), np.diag([1.0, -1e-3]), np.eye(2)])
    with pytest.raises(ValueError, match="time step 1"):
        LinearGaussianController.from_covar(np.zeros((3, 2, 3)), np.zeros((3, 2)), covar)
    with pytest.raises(ValueError, match="k must have shape"):
        LinearGaussianController.from_covar(np.zeros((3, 2, 3)), np.zeros((3, 3)), np.eye(2))


def test_act_and_mean_actions():
    rng = np.random.default_rng(1)
    T, dU, dX, N = 4, 2, 3, 6
    c = LinearGaussianController.from_covar(rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)),
                                            random_spd(rng, dU))
    X = rng.normal(size=(N, T, dX))
    means = c.mean_actions(X)
    noise = rng.normal(size=dU)
    for n in range(N):
        for t in range(T):
            np.testing.assert_allclose(c.act(t, X[n, t], np.zeros(dU)), means[n, t], rtol=1e-12)
            np.testing.assert_allclose(c.act(t, X[n, t], noise), means[n, t] + c.chol[t] @ noise, rtol=1e-12)
    with pytest.raises(ValueError, match="X must have shape"):
        c.mean_actions(X[:, :-1])


def test_sampled_actions_have_the_stated_covariance():
    """Whitened by the stated covariance, N samples must have identity covariance; each
    entry of a sample covariance has standard error <= sqrt(2/N), so allow 5 of those."""
    rng = np.random.default_rng(2)
    M, g, q_idx, qd_idx, dX = arm(rng)
    sigma = np.array([0.5, 1.0, 2.0])
    c = pd_controller(10, rng.normal(size=dX), q_idx, qd_idx, M, g, natural_frequency=3.0,
                      accel_noise_std=sigma)
    np.testing.assert_allclose(c.covar[0], M @ np.diag(sigma ** 2) @ M.T, rtol=1e-12)
    N, t = 40000, 3
    x = rng.normal(size=dX)
    U = np.array([c.act(t, x, z) for z in rng.standard_normal((N, c.dU))])
    white = np.linalg.solve(np.linalg.cholesky(c.covar[t]), (U - c.act(t, x, np.zeros(c.dU))).T)
    np.testing.assert_allclose(np.cov(white), np.eye(c.dU), atol=5 * np.sqrt(2 / N))


def test_pd_gains_give_the_stated_accelerations():
    rng = np.random.default_rng(3)
    for _ in range(3):                               # arms of very different mass
        M, g, q_idx, qd_idx, dX = arm(rng)
        x0 = rng.normal(size=dX)
        omega, zeta = 4.0, 0.7
        c = pd_controller(7, x0, q_idx, qd_idx, M, g, natural_frequency=omega, damping_ratio=zeta,
                          accel_noise_std=0.3)
        for x in rng.normal(size=(4, dX)):
            u = c.act(2, x, np.zeros(c.dU))
            accel = np.linalg.solve(M, u - g)
            expected = omega ** 2 * (x0[q_idx] - x[q_idx]) - 2 * zeta * omega * x[qd_idx]
            np.testing.assert_allclose(accel, expected, rtol=1e-10, atol=1e-10)
        target = rng.normal(size=len(q_idx))
        held = pd_controller(7, x0, q_idx, qd_idx, M, g, natural_frequency=omega, target_position=target)
        x = np.zeros(dX)
        x[q_idx] = target
        np.testing.assert_allclose(held.act(0, x, np.zeros(c.dU)), g, rtol=1e-10, atol=1e-10)


def test_double_integrator_lqr_matches_scipy_and_brings_the_arm_to_target():
    rng = np.random.default_rng(4)
    M, g, q_idx, qd_idx, dX = arm(rng)
    J, dt, T = len(q_idx), 0.05, 400
    target = rng.normal(size=J)
    wx, wu = 1.0, 0.01
    c = double_integrator_lqr_controller(T, dt, q_idx, qd_idx, dX, M, g, target_position=target,
                                         state_cost_weight=wx, action_cost_weight=wu, accel_noise_std=0.2)
    np.testing.assert_allclose(c.covar[0], 0.04 * M @ M.T, rtol=1e-12)
    # Far from the horizon's end, the acceleration gains are the infinite-horizon LQR's.
    I, Z = np.eye(J), np.zeros((J, J))
    A = np.block([[I, dt * I], [Z, I]])
    B = np.vstack([0.5 * dt ** 2 * I, dt * I])
    P = scipy.linalg.solve_discrete_are(A, B, wx * np.eye(2 * J), wu * I)
    K_accel = -np.linalg.solve(wu * I + B.T @ P @ B, B.T @ P @ A)
    K_accel_from_controller = np.linalg.solve(M, c.K[0][:, np.r_[q_idx, qd_idx]])
    np.testing.assert_allclose(K_accel_from_controller, K_accel, rtol=1e-7, atol=1e-9)
    assert np.allclose(c.K[:, :, 2 * J:], 0)
    # Run the guessed model (the real arm's dynamics in acceleration terms): it reaches target.
    x = np.zeros(dX)
    for t in range(T - 1):
        accel = np.linalg.solve(M, c.act(t, x, np.zeros(J)) - g)
        x[q_idx], x[qd_idx] = x[q_idx] + dt * x[qd_idx] + 0.5 * dt ** 2 * accel, x[qd_idx] + dt * accel
    np.testing.assert_allclose(x[q_idx], target, atol=1e-3)


def test_smoothed_noise_unit_variance_and_correlated():
    rng = np.random.default_rng(5)
    T, dU, N, sigma = 40, 2, 20000, 2.0
    samples = np.stack([smoothed_noise(rng, T, dU, smoothing_sigma=sigma) for _ in range(N)])
    # Each step's marginal is unit variance (5 standard errors of a sample variance, sqrt(2/N)).
    np.testing.assert_allclose(samples.var(axis=0), 1.0, atol=5 * np.sqrt(2 / N))
    # Neighbouring steps correlate like Gaussian-filtered white noise, exp(-lag²/(4σ²)) inside.
    lag1 = np.mean(samples[:, 10:30, :] * samples[:, 11:31, :])
    assert abs(lag1 - np.exp(-1 / (4 * sigma ** 2))) < 0.02
    # Independent across action dimensions.
    assert abs(np.mean(samples[:, :, 0] * samples[:, :, 1])) < 0.02
    white = smoothed_noise(rng, T, dU, smoothing_sigma=0)
    assert white.shape == (T, dU)
    raw = np.stack([smoothed_noise(rng, T, 1, smoothing_sigma=sigma, renormalize=False) for _ in range(5000)])
    kernel = gaussian_filter1d(np.eye(81)[40], sigma)
    np.testing.assert_allclose(raw[:, 20].var(), np.sum(kernel ** 2), rtol=0.1)


def test_initial_controller_input_errors():
    rng = np.random.default_rng(6)
    M, g, q_idx, qd_idx, dX = arm(rng)
    x0 = np.zeros(dX)
    with pytest.raises(ValueError, match="mass_matrix"):
        pd_controller(5, x0, q_idx, qd_idx, M[:2, :2], g, natural_frequency=1.0)
    with pytest.raises(ValueError, match="position_idx"):
        pd_controller(5, x0, q_idx, q_idx, M, g, natural_frequency=1.0)
    with pytest.raises(ValueError, match="accel_noise_std"):
        pd_controller(5, x0, q_idx, qd_idx, M, g, natural_frequency=1.0, accel_noise_std=0.0)
    with pytest.raises(ValueError, match="target_position"):
        double_integrator_lqr_controller(5, 0.1, q_idx, qd_idx, dX, M, g, target_position=np.zeros(2))
