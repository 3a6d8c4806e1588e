"""ModelPrior and pool_priors: against brute force, and the fit's behaviour at both ends."""
import numpy as np
import pytest

from mbpl_ros.core.dynamics import fit_dynamics
from mbpl_ros.core.gmm import NormalInverseWishart
from mbpl_ros.core.model_prior import ModelPrior, PooledPrior, pool_priors


def _niw_of(points):
    """Return the NIW whose pseudo-points are `points` (n, d): their mean, scatter, count."""
    mean = points.mean(axis=0)
    centred = points - mean
    return NormalInverseWishart(mean=mean, scatter=centred.T @ centred, m=len(points),
                                n0=len(points))


def test_pooling_two_priors_is_pooling_their_pseudo_points():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4)), rng.normal(loc=2.0, size=(5, 4))
    pooled, union = pool_priors(_niw_of(a), _niw_of(b)), _niw_of(np.vstack([a, b]))
    np.testing.assert_allclose(pooled.mean, union.mean, atol=1e-12)
    np.testing.assert_allclose(pooled.scatter, union.scatter, atol=1e-12)
    assert pooled.m == union.m and pooled.n0 == union.n0


def _linear_system(T=30, dX=3, dU=2, seed=0):
    rng = np.random.default_rng(seed)
    A = np.eye(dX) + 0.1 * rng.normal(size=(T - 1, dX, dX))
    B = rng.normal(size=(T - 1, dX, dU))
    c = rng.normal(size=(T - 1, dX))
    return A, B, c


def _rollouts(A, B, c, N, noise=1e-3, seed=1):
    rng = np.random.default_rng(seed)
    T, dX, dU = A.shape[0] + 1, A.shape[1], B.shape[2]
    X, U = np.zeros((N, T, dX)), rng.normal(size=(N, T, dU))
    X[:, 0] = rng.normal(size=(N, dX))
    for t in range(T - 1):
        X[:, t + 1] = X[:, t] @ A[t].T + U[:, t] @ B[t].T + c[t] + noise * rng.normal(size=(N, dX))
    return X, U


def _model(G, c):
    return lambda x_mean, u_mean: (G, c)


def test_one_rollout_under_a_true_model_gives_the_true_dynamics():
    """
    Identify the dynamics from one rollout with the model's help.

    One rollout cannot identify F_t (dX + dU unknowns per row, one point per step): the
    model's pseudo-points do, and agree with the data.
    """
    A, B, c = _linear_system()
    G = np.concatenate([A, B], axis=2)
    X, U = _rollouts(A, B, c, N=1)
    prior = ModelPrior(_model(G, c), dX=3, dU=2, strength=10.0)
    fitted = fit_dynamics(X, U, prior=prior)
    np.testing.assert_allclose(fitted.F, G, atol=1e-2)
    unaided = fit_dynamics(X, U)
    assert np.abs(unaided.F - G).max() > 0.1   # without the model, one rollout says little


def test_data_override_a_wrong_model_as_rollouts_accumulate():
    A, B, c = _linear_system()
    G_true = np.concatenate([A, B], axis=2)
    G_wrong = G_true + 0.5          # every entry off by 0.5
    errors = []
    for N in (2, 10, 100):
        X, U = _rollouts(A, B, c, N=N)
        prior = ModelPrior(_model(G_wrong, c), dX=3, dU=2, strength=5.0)
        fitted = fit_dynamics(X, U, prior=prior)
        errors.append(np.abs(fitted.F - G_true).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors


def test_the_prior_checks_the_linearisation_it_is_given():
    A, B, c = _linear_system()
    X, U = _rollouts(A, B, c, N=2)
    bad = ModelPrior(lambda x, u: (np.zeros((1, 3, 5)), np.zeros((1, 3))), dX=3, dU=2,
                     strength=1.0)
    with pytest.raises(ValueError, match="linearisation gave"):
        fit_dynamics(X, U, prior=bad)
    with pytest.raises(ValueError, match="strength"):
        ModelPrior(_model(A, c), dX=3, dU=2, strength=0.0)


def test_a_pooled_prior_without_gmm_data_is_the_model_prior():
    from mbpl_ros.core.gmm import GMMPrior

    A, B, c = _linear_system()
    G = np.concatenate([A, B], axis=2)
    X, U = _rollouts(A, B, c, N=2)
    model = ModelPrior(_model(G, c), dX=3, dU=2, strength=3.0)
    pooled = PooledPrior(GMMPrior(), model)
    alone = fit_dynamics(X, U, prior=model)
    together = fit_dynamics(X, U, prior=pooled)
    np.testing.assert_allclose(together.F, alone.F)
