"""GaussianMixture (EM) and GMMPrior against closed forms and scipy."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from mbpl_ros.core.gmm import GaussianMixture, GMMPrior, NormalInverseWishart
from mbpl_ros.core.linalg import robust_cholesky


def separated_clusters(rng, n_per_cluster=300, d=3):
    means = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]])[:, :d]
    covars = []
    for _ in means:
        factor = rng.normal(size=(d, d))
        covars.append(0.3 * factor @ factor.T + 0.2 * np.eye(d))
    covars = np.array(covars)
    points = np.concatenate([rng.multivariate_normal(m, c, size=n_per_cluster) for m, c in zip(means, covars)])
    return points, means, covars


def mixture_log_density(points, weights, means, covars):
    densities = sum(w * multivariate_normal(m, c).pdf(points) for w, m, c in zip(weights, means, covars))
    return np.log(densities)


@pytest.mark.parametrize("seed", range(5))
def test_em_never_decreases_its_objective(seed):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(size=(200, 4)) @ rng.normal(size=(4, 4)) + 3 * rng.normal(size=4)
                             for _ in range(3)])
    gmm = GaussianMixture(seed=seed).fit(points, n_clusters=5, max_iterations=40, tolerance=0.0)
    history = np.array(gmm.log_likelihood_history)
    assert len(history) >= 10
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert history[-1] > history[0]


def test_recorded_objective_is_scipy_log_likelihood_minus_ridge_penalty():
    rng = np.random.default_rng(0)
    points, _, _ = separated_clusters(rng, 100)
    gmm = GaussianMixture(regularization=1e-3, seed=0).fit(points, 3, max_iterations=5, tolerance=0.0)
    # Refit zero further M-steps from the result: entry 0 scores exactly the stored parameters.
    weights, means, covars = gmm.weights.copy(), gmm.means.copy(), gmm.covars.copy()
    gmm.fit(points, 3, max_iterations=1)
    expected = (np.sum(mixture_log_density(points, weights, means, covars))
                - 0.5 * 1e-3 * sum(np.trace(np.linalg.inv(c)) for c in covars))
    assert gmm.log_likelihood_history[0] == pytest.approx(expected, rel=1e-10)


def test_recovers_well_separated_clusters():
    rng = np.random.default_rng(1)
    points, true_means, true_covars = separated_clusters(rng)
    gmm = GaussianMixture(seed=3).fit(points, n_clusters=3, max_iterations=100, tolerance=1e-8)
    order = [int(np.argmin(np.linalg.norm(gmm.means - m, axis=1))) for m in true_means]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(gmm.weights[order], 1 / 3, atol=1e-3)
    np.testing.assert_allclose(gmm.means[order], true_means, atol=0.15)
    np.testing.assert_allclose(gmm.covars[order], true_covars, atol=0.25 * np.abs(true_covars).max())
    # Each point is (almost) certain of its own cluster.
    labels = np.repeat(np.arange(3), 300)
    assert np.mean(np.argmax(gmm.responsibilities(points), axis=1) == np.array(order)[labels]) > 0.999


def test_score_samples_and_responsibilities_match_scipy():
    rng = np.random.default_rng(2)
    points, _, _ = separated_clusters(rng, 50)
    gmm = GaussianMixture(seed=0).fit(points, 2, max_iterations=5)
    queries = rng.normal(scale=5.0, size=(20, 3))
    np.testing.assert_allclose(gmm.score_samples(queries),
                               mixture_log_density(queries, gmm.weights, gmm.means, gmm.covars), rtol=1e-10)
    joint = np.stack([w * multivariate_normal(m, c).pdf(queries)
                      for w, m, c in zip(gmm.weights, gmm.means, gmm.covars)], axis=1)
    np.testing.assert_allclose(gmm.responsibilities(queries), joint / joint.sum(axis=1, keepdims=True),
                               rtol=1e-8, atol=1e-12)


def test_warm_start_continues_from_previous_fit():
    rng = np.random.default_rng(4)
    points, _, _ = separated_clusters(rng, 100)
    gmm = GaussianMixture(seed=0).fit(points, 3, max_iterations=100, tolerance=1e-10)
    converged_means = gmm.means.copy()
    gmm.fit(points, 3, max_iterations=5, tolerance=1e-6)
    assert gmm.n_iterations <= 1
    np.testing.assert_allclose(gmm.means, converged_means, atol=1e-6)
    # Growing the cluster count keeps the old clusters as a start.
    gmm.fit(points, 4, max_iterations=0)
    assert gmm.n_clusters == 4
    np.testing.assert_allclose(gmm.weights.sum(), 1.0)
    assert all(np.min(np.linalg.norm(gmm.means - m, axis=1)) < 1e-9 for m in converged_means)


@pytest.mark.parametrize("points", [
    np.zeros((10, 4)),                                            # identical points
    np.c_[np.random.default_rng(0).normal(size=(50, 2)), np.ones((50, 2))],  # constant coordinates
    np.ones((1, 3)),                                              # a single point
])
def test_degenerate_data_gives_finite_pd_covariances(points):
    n_clusters = min(3, points.shape[0])
    gmm = GaussianMixture(seed=0).fit(points, n_clusters, max_iterations=10)
    assert np.all(np.isfinite(gmm.covars)) and np.all(np.isfinite(gmm.means))
    assert np.all(np.linalg.eigvalsh(gmm.covars) > 0)
    assert np.all(np.isfinite(gmm.responsibilities(points)))


def test_bad_input_is_rejected_with_a_message():
    gmm = GaussianMixture()
    with pytest.raises(ValueError, match="n_clusters"):
        gmm.fit(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="finite"):
        gmm.fit(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="fitted"):
        gmm.responsibilities(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="regularization"):
        GaussianMixture(regularization=0.0)


def test_robust_cholesky_repairs_indefinite_matrices():
    indefinite = np.array([[[1.0, 2.0], [2.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]]])
    chol = robust_cholesky(indefinite, floor=1e-6)
    assert np.all(np.isfinite(chol))
    np.testing.assert_allclose(chol[1] @ chol[1].T, indefinite[1])  # PD input factorised exactly
    assert np.all(np.linalg.eigvalsh(chol @ np.swapaxes(chol, 1, 2)) > 0)


def test_prior_buffer_cluster_count_and_moment_matching():
    rng = np.random.default_rng(5)
    prior = GMMPrior(max_clusters=4, min_points_per_cluster=25, max_rollouts=3, strength=2.0)
    prior.update(rng.normal(size=(2, 30, 3)))           # 60 points -> 2 clusters
    assert (prior.n_rollouts, prior.n_points, prior.gmm.n_clusters) == (2, 60, 2)
    prior.update(rng.normal(size=(2, 30, 3)) + 5.0)     # buffer keeps the newest 3 rollouts
    assert (prior.n_rollouts, prior.n_points, prior.gmm.n_clusters) == (3, 90, 3)
    with pytest.raises(ValueError, match="dimension"):
        prior.update(np.zeros((1, 30, 4)))

    queries = rng.normal(size=(7, 3)) + 5.0
    niw = prior.evaluate(queries)
    gmm = prior.gmm
    weights = gmm.responsibilities(queries).mean(axis=0)
    mean = weights @ gmm.means
    second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(weights, gmm.means, gmm.covars))
    np.testing.assert_allclose(niw.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(niw.scatter, 2.0 * (second - np.outer(mean, mean)), rtol=1e-9, atol=1e-12)
    assert niw.m == 2.0 and niw.n0 == pytest.approx(2.0 * (90 - 3 - 2) / 90)
    # Batched over leading dimensions: the same as one at a time.
    batch = np.stack([queries, queries[::-1] - 5.0])
    batched = prior.evaluate(batch)
    np.testing.assert_allclose(batched.mean[0], niw.mean, rtol=1e-12)
    np.testing.assert_allclose(batched.scatter[1], prior.evaluate(batch[1]).scatter, rtol=1e-12)


def test_posterior_covariance_closed_form():
    rng = np.random.default_rng(6)
    niw = NormalInverseWishart(mean=rng.normal(size=2), scatter=np.diag([2.0, 3.0]), m=1.5, n0=4.0)
    points = rng.normal(size=(5, 2))
    mean = points.mean(axis=0)
    scatter = (points - mean).T @ (points - mean)
    offset = mean - niw.mean
    expected = (niw.scatter + scatter + 5 * 1.5 / 6.5 * np.outer(offset, offset)) / 9.0
    np.testing.assert_allclose(niw.posterior_covariance(5, mean, scatter), expected, rtol=1e-12)
