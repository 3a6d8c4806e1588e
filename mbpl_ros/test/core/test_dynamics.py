"""Linear-Gaussian dynamics fits against known systems and closed-form regressions."""
import numpy as np
import pytest

from mbpl_ros.core.dynamics import (LinearGaussianDynamics, OnlineDynamics, fit_dynamics,
                                    gaussian_regression, transition_points)
from mbpl_ros.core.gmm import GMMPrior, NormalInverseWishart

DX, DU = 6, 2


def random_system(rng, T=None):
    """Stable A (or A_t per step when T is given), B, c."""
    shape = (DX, DX) if T is None else (T - 1, DX, DX)
    A = rng.normal(size=shape)
    A *= 0.9 / np.max(np.abs(np.linalg.eigvals(A)), axis=-1)[..., None, None]
    B = rng.normal(size=(DX, DU))
    c = rng.normal(size=DX)
    return A, B, c


def simulate(rng, A, B, c, N, T, noise_chol=None):
    X = np.zeros((N, T, DX))
    U = rng.normal(size=(N, T, DU))
    X[:, 0] = rng.normal(size=(N, DX))
    for t in range(T - 1):
        A_t = A if A.ndim == 2 else A[t]
        X[:, t + 1] = X[:, t] @ A_t.T + U[:, t] @ B.T + c
        if noise_chol is not None:
            X[:, t + 1] += rng.normal(size=(N, DX)) @ noise_chol.T
    return X, U


def assert_valid(dynamics: LinearGaussianDynamics, T):
    assert dynamics.F.shape == (T - 1, DX, DX + DU) and dynamics.f.shape == (T - 1, DX)
    for covar in (dynamics.covar, dynamics.x0_covar[None]):
        assert np.all(np.isfinite(covar))
        np.testing.assert_array_equal(covar, np.swapaxes(covar, -1, -2))
        np.linalg.cholesky(covar)  # raises unless positive definite
    assert np.all(np.isfinite(dynamics.F)) and np.all(np.isfinite(dynamics.f))


def test_noise_free_linear_system_is_recovered_exactly():
    rng = np.random.default_rng(0)
    A, B, c = random_system(rng)
    X, U = simulate(rng, A, B, c, N=20, T=10)
    dynamics = fit_dynamics(X, U, regularization=1e-10)
    assert_valid(dynamics, 10)
    np.testing.assert_allclose(dynamics.F[:, :, :DX], np.broadcast_to(A, (9, DX, DX)), atol=1e-6)
    np.testing.assert_allclose(dynamics.F[:, :, DX:], np.broadcast_to(B, (9, DX, DU)), atol=1e-6)
    np.testing.assert_allclose(dynamics.f, np.broadcast_to(c, (9, DX)), atol=1e-6)
    assert np.max(np.linalg.eigvalsh(dynamics.covar)) < 1e-8
    # The default ridge (1e-6 on unit-scale inputs) biases the fit by ~1e-6 only.
    np.testing.assert_allclose(fit_dynamics(X, U).F[:, :, :DX], np.broadcast_to(A, (9, DX, DX)), atol=1e-4)


def test_time_varying_system_is_recovered_per_step():
    rng = np.random.default_rng(1)
    T = 8
    A, B, c = random_system(rng, T)
    X, U = simulate(rng, A, B, c, N=15, T=T)
    dynamics = fit_dynamics(X, U, regularization=1e-10)
    np.testing.assert_allclose(dynamics.F[:, :, :DX], A, atol=1e-6)
    np.testing.assert_allclose(dynamics.f, np.broadcast_to(c, (T - 1, DX)), atol=1e-6)


def test_noisy_system_within_tolerance_and_noise_covariance_recovered():
    rng = np.random.default_rng(2)
    A, B, c = random_system(rng)
    factor = rng.normal(size=(DX, DX))
    noise_covar = 0.01 * (factor @ factor.T / DX + np.eye(DX))
    X, U = simulate(rng, A, B, c, N=4000, T=3, noise_chol=np.linalg.cholesky(noise_covar))
    dynamics = fit_dynamics(X, U)
    # Standard errors are ~ noise / sqrt(N) ≈ 0.002; allow 5x that.
    for t in range(2):
        np.testing.assert_allclose(dynamics.F[t, :, :DX], A, atol=0.01)
        np.testing.assert_allclose(dynamics.F[t, :, DX:], B, atol=0.01)
        np.testing.assert_allclose(dynamics.f[t], c, atol=0.03)  # the intercept absorbs x's offset
        # Σ's sampling error is ~ sqrt(2 / N) ≈ 2 % relative.
        assert np.linalg.norm(dynamics.covar[t] - noise_covar) < 0.08 * np.linalg.norm(noise_covar)
    np.testing.assert_allclose(dynamics.x0_mean, X[:, 0].mean(axis=0))
    np.testing.assert_allclose(dynamics.x0_covar, np.cov(X[:, 0].T, bias=True) + 1e-6 * np.eye(DX), rtol=1e-9)


def test_gaussian_regression_matches_least_squares_with_intercept():
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(50, 4))
    outputs = inputs @ rng.normal(size=(4, 3)) + 0.5 + rng.normal(scale=0.3, size=(50, 3))
    W, b, covar = gaussian_regression(inputs, outputs, regularization=1e-12)
    design = np.c_[inputs, np.ones(50)]
    solution, *_ = np.linalg.lstsq(design, outputs, rcond=None)
    np.testing.assert_allclose(W, solution[:4].T, rtol=1e-8)
    np.testing.assert_allclose(b, solution[4], rtol=1e-8)
    residuals = outputs - design @ solution
    np.testing.assert_allclose(covar, residuals.T @ residuals / 50, rtol=1e-8)


def test_gaussian_regression_with_prior_matches_closed_form_conditioning():
    rng = np.random.default_rng(4)
    inputs, outputs = rng.normal(size=(3, 4)), rng.normal(size=(3, 2))   # n < dI: ill-posed alone
    factor = rng.normal(size=(6, 6))
    prior = NormalInverseWishart(mean=rng.normal(size=6), scatter=factor @ factor.T, m=1.0, n0=2.0)
    W, b, covar = gaussian_regression(inputs, outputs, prior, regularization=1e-6)
    joint = np.c_[inputs, outputs]
    mean = joint.mean(axis=0)
    scatter = (joint - mean).T @ (joint - mean)
    offset = mean - prior.mean
    sigma = (prior.scatter + scatter + 3 * 1.0 / 4.0 * np.outer(offset, offset)) / 5.0 + 1e-6 * np.eye(6)
    expected_W = np.linalg.solve(sigma[:4, :4], sigma[:4, 4:]).T
    np.testing.assert_allclose(W, expected_W, rtol=1e-9)
    np.testing.assert_allclose(b, mean[4:] - expected_W @ mean[:4], rtol=1e-9)
    np.testing.assert_allclose(covar, sigma[4:, 4:] - expected_W @ sigma[:4, 4:], rtol=1e-9)
    # Batched over a leading dimension: identical to one regression at a time.
    W2, b2, covar2 = gaussian_regression(np.stack([inputs, inputs]), np.stack([outputs, 2 * outputs]))
    np.testing.assert_allclose(W2[0], gaussian_regression(inputs, outputs)[0], rtol=1e-12)
    np.testing.assert_allclose(covar2[1], gaussian_regression(inputs, 2 * outputs)[2], rtol=1e-12)


def make_prior(rng, A, B, c, noise_chol):
    X, U = simulate(rng, A, B, c, N=20, T=10, noise_chol=noise_chol)
    prior = GMMPrior(max_clusters=4, min_points_per_cluster=40, max_rollouts=20)
    prior.update(transition_points(X, U))
    return prior


def test_prior_makes_few_sample_fit_pd_and_closer_to_truth():
    rng = np.random.default_rng(5)
    A, B, c = random_system(rng)
    noise_chol = 0.01 * np.eye(DX)
    prior = make_prior(rng, A, B, c, noise_chol)
    X, U = simulate(rng, A, B, c, N=2, T=10, noise_chol=noise_chol)     # N = 2 < dX + dU
    truth = np.concatenate([A, B], axis=1)
    with_prior, without = fit_dynamics(X, U, prior), fit_dynamics(X, U)
    assert_valid(with_prior, 10)
    assert_valid(without, 10)
    error_with = np.linalg.norm(with_prior.F - truth, axis=(1, 2))
    error_without = np.linalg.norm(without.F - truth, axis=(1, 2))
    assert np.all(error_with < 0.1 * error_without)
    assert np.max(error_with) < 0.1


@pytest.mark.parametrize("use_prior", [False, True])
def test_online_fit_equals_batch_fit(use_prior):
    rng = np.random.default_rng(6)
    A, B, c = random_system(rng)
    X, U = simulate(rng, A, B, c, N=12, T=10, noise_chol=0.1 * np.eye(DX))
    prior = make_prior(rng, A, B, c, 0.1 * np.eye(DX)) if use_prior else None
    # Intermediate fits must match too (and exercise the prior cache). Without a prior,
    # N < dX + dU leaves a ridge-conditioned (cond ~ 1e6) problem whose rounding is
    # amplified past 1e-10, so compare from N = dX + dU on.
    checkpoints = (0, 3, 9) if use_prior else (8, 9)
    online = OnlineDynamics()
    for n in range(X.shape[0]):
        online.add(X[n], U[n])
        if n in checkpoints:
            online_fit, batch_fit = online.fit(prior), fit_dynamics(X[:n + 1], U[:n + 1], prior)
            np.testing.assert_allclose(online_fit.F, batch_fit.F, rtol=1e-10, atol=1e-10 * np.abs(batch_fit.F).max())
    online_fit, batch_fit = online.fit(prior), fit_dynamics(X, U, prior)
    for name in ("F", "f", "covar", "x0_mean", "x0_covar"):
        online_value, batch_value = getattr(online_fit, name), getattr(batch_fit, name)
        np.testing.assert_allclose(online_value, batch_value, rtol=0, atol=1e-10 * np.abs(batch_value).max(),
                                   err_msg=name)


def degenerate_cases():
    rng = np.random.default_rng(7)
    A, B, c = random_system(rng)
    X, U = simulate(rng, A, B, c, N=3, T=6)
    constant_U = np.ones_like(U)
    X_constant_U, _ = simulate(rng, A, B, c, N=3, T=6)
    one_X, one_U = X[:1], U[:1]
    return {
        "one rollout": (one_X, one_U),
        "N < dX + dU": (X, U),
        "constant inputs": (X_constant_U, constant_U),
        "identical rollouts": (np.repeat(one_X, 5, axis=0), np.repeat(one_U, 5, axis=0)),
        "all zeros": (np.zeros((2, 6, DX)), np.zeros((2, 6, DU))),
        "huge scale": (1e6 * X, 1e6 * U),
    }


@pytest.mark.parametrize("case", list(degenerate_cases()))
@pytest.mark.parametrize("use_prior", [False, True])
def test_degenerate_data_gives_finite_pd_result(case, use_prior):
    X, U = degenerate_cases()[case]
    prior = None
    if use_prior:
        prior = GMMPrior(min_points_per_cluster=5)
        prior.update(transition_points(X, U))
    dynamics = fit_dynamics(X, U, prior)
    assert_valid(dynamics, X.shape[1])
    online = OnlineDynamics()
    for n in range(X.shape[0]):
        online.add(X[n], U[n])
    assert_valid(online.fit(prior), X.shape[1])


def test_bad_input_is_rejected_with_a_message():
    rng = np.random.default_rng(8)
    X, U = rng.normal(size=(2, 5, DX)), rng.normal(size=(2, 5, DU))
    with pytest.raises(ValueError, match="disagree"):
        fit_dynamics(X, U[:, :4])
    with pytest.raises(ValueError, match=r"\(N, T, dX\)"):
        fit_dynamics(X[0], U[0])
    with pytest.raises(ValueError, match="T >= 2"):
        fit_dynamics(X[:, :1], U[:, :1])
    with pytest.raises(ValueError, match="finite"):
        fit_dynamics(np.where(X > 1, np.nan, X), U)
    with pytest.raises(ValueError, match="regularization"):
        fit_dynamics(X, U, regularization=0.0)
    prior = GMMPrior(min_points_per_cluster=2)
    prior.update(rng.normal(size=(2, 4, 3)))
    with pytest.raises(ValueError, match="dimension"):
        fit_dynamics(X, U, prior)
    online = OnlineDynamics()
    with pytest.raises(ValueError, match="no rollouts"):
        online.fit()
    online.add(X[0], U[0])
    with pytest.raises(ValueError, match="earlier ones"):
        online.add(X[0, :4], U[0, :4])
    with pytest.raises(ValueError, match="one rollout"):
        online.add(X, U)


def test_transition_points_layout():
    rng = np.random.default_rng(9)
    X, U = rng.normal(size=(2, 4, DX)), rng.normal(size=(2, 4, DU))
    points = transition_points(X, U)
    assert points.shape == (2, 3, 2 * DX + DU)
    np.testing.assert_array_equal(points[1, 2], np.concatenate([X[1, 2], U[1, 2], X[1, 3]]))
