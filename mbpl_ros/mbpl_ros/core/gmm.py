"""
Gaussian mixture models and the normal-inverse-Wishart prior they induce.

The dynamics fit (and the policy linearisation) regress x' on [x, u] per time step
from only N rollouts. A Gaussian mixture fitted to many recent [x, u, x'] points,
from all time steps and iterations, supplies a normal-inverse-Wishart prior for each
of those regressions (Levine*, Finn* et al. 2016, "End-to-end training of deep
visuomotor policies", appendix A.3).

Shapes: n points of dimension d; K clusters; for the dynamics prior d = dX + dU + dX.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from mbpl_ros.core.linalg import robust_cholesky, symmetrise
from mbpl_ros.core.settings import setting, settings_dataclass

_LOG_2PI = np.log(2.0 * np.pi)


@settings_dataclass
class PriorSettings:
    """The GMM prior of the dynamics fit (see GMMPrior): the experiment file's dynamics.prior."""

    enabled: bool = setting("use the GMM prior over [x, u, x'] for the dynamics fit", True)
    max_clusters: int = setting("largest number of GMM clusters", 20, ge=1)
    min_points_per_cluster: int = setting("clusters = min(max_clusters, points // this)", 40,
                                          ge=1)
    max_rollouts: int = setting("rollouts kept in the prior's buffer (oldest dropped first)",
                                20, ge=1)
    strength: float = setting("scales the prior's pseudo-counts", 1.0, gt=0.0)


@dataclass
class NormalInverseWishart:
    """
    Normal-inverse-Wishart prior over a Gaussian's mean and covariance.

    mean (..., d) is the prior mean, scatter (..., d, d) the prior scatter matrix Φ,
    m the strength of the mean and n0 that of the scatter, both counted in data points
    (floats, or arrays broadcasting against the leading dimensions ...). Leading
    dimensions batch independent priors, e.g. one per time step (T-1, d).

    Given n points with mean x̄ and scatter S = Σ (x - x̄)(x - x̄)ᵀ, the covariance
    estimate used throughout is

        Σ = (Φ + S + n m / (n + m) (x̄ - mean)(x̄ - mean)ᵀ) / (n + n0),

    i.e. n0 pseudo-points with covariance Φ / n0 pooled with the data (the GPS
    convention, in which n0 counts points rather than Wishart degrees of freedom).
    """

    mean: np.ndarray
    scatter: np.ndarray
    m: float | np.ndarray
    n0: float | np.ndarray

    def posterior_covariance(self, count, mean, scatter) -> np.ndarray:
        """Return the covariance (..., d, d) of `count` points with `mean` and `scatter`."""
        count = np.asarray(count, dtype=float)
        m = np.asarray(self.m, dtype=float)
        n0 = np.asarray(self.n0, dtype=float)
        offset = mean - self.mean
        shrink = (count * m / (count + m))[..., None, None]
        pooled = self.scatter + scatter + shrink * offset[..., :, None] * offset[..., None, :]
        return pooled / (count + n0)[..., None, None]


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(values, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(values - peak), axis=axis))


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """|x_n - c_k|² (n, K) for points (n, d) and centres (K, d)."""
    squared = (np.sum(points ** 2, axis=1)[:, None] - 2.0 * points @ centres.T
               + np.sum(centres ** 2, axis=1)[None, :])
    return np.maximum(squared, 0.0)  # the expansion can round below zero


def _as_points(points, name: str = "points") -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (n, d) array; got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return points


class GaussianMixture:
    """
    Full-covariance Gaussian mixture fitted by EM, warm-started across fits.

    After `fit`: weights (K,), means (K, d), covars (K, d, d) symmetric positive
    definite. Each covariance is the weighted scatter of its cluster plus a ridge,
    Σ_k = (S_k + ρ I) / N_k, the maximiser under a weak prior exp(-ρ/2 tr Σ_k⁻¹);
    so EM never decreases the objective it records, the data log-likelihood
    minus ρ/2 Σ_k tr Σ_k⁻¹ (the data log-likelihood itself when ρ = 0).
    """

    def __init__(self, regularization: float = 1e-6, seed: int | None = 0):
        if not regularization > 0.0:
            raise ValueError("regularization must be > 0 (it keeps covariances PD); got "
                             f"{regularization}")
        self.regularization = float(regularization)
        self._rng = np.random.default_rng(seed)
        self.weights: np.ndarray | None = None
        self.means: np.ndarray | None = None
        self.covars: np.ndarray | None = None
        self.log_likelihood_history: list[float] = []
        self.n_iterations = 0
        self._chol: np.ndarray | None = None

    @property
    def n_clusters(self) -> int:
        return 0 if self.weights is None else self.weights.shape[0]

    @property
    def dim(self) -> int:
        return 0 if self.means is None else self.means.shape[1]

    # ------------------------------------------------------------------ fitting
    def fit(self, points, n_clusters: int, max_iterations: int = 100,
            tolerance: float = 1e-4) -> "GaussianMixture":
        """
        Run EM on points (n, d) with n_clusters clusters.

        Starts from the previous fit when it had the same dimension and cluster
        count; with more clusters than before, keeps the previous ones and seeds
        the rest (k-means++); otherwise seeds all. Runs at most max_iterations
        EM iterations, stopping early once an iteration improves the objective by
        less than tolerance nats per point. log_likelihood_history[i] is the
        objective of the parameters after i M-steps (entry 0: the starting ones);
        when EM stops on the cap, the final parameters are not scored, which saves
        an E-step. n_iterations counts the M-steps.
        """
        points = _as_points(points)
        n, d = points.shape
        if not 1 <= int(n_clusters) <= n:
            raise ValueError(f"n_clusters must be between 1 and the number of points ({n}); got "
                             f"{n_clusters}")
        if max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0; got {max_iterations}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0; got {tolerance}")
        n_clusters = int(n_clusters)

        # Work about the data mean: the second-moment M-step then loses no digits
        # to a large common offset.
        centre = points.mean(axis=0)
        centred = points - centre
        if self.dim == d and self.n_clusters == n_clusters:
            weights, means, covars = self.weights, self.means - centre, self.covars
        elif self.dim == d and self.n_clusters < n_clusters:
            kept = (self.weights, self.means - centre, self.covars)
            weights, means, covars = self._initialise(centred, n_clusters, kept)
        else:
            weights, means, covars = self._initialise(centred, n_clusters)

        history: list[float] = []
        chol = robust_cholesky(covars)
        m_steps = 0
        for _ in range(max_iterations):
            log_joint, chol_inv = self._log_joint(centred, weights, means, chol)
            log_norm = _logsumexp(log_joint, axis=1)
            penalty = 0.5 * self.regularization * np.sum(chol_inv ** 2)  # ρ/2 Σ_k tr Σ_k⁻¹
            objective = float(np.sum(log_norm) - penalty)
            converged = bool(history) and objective - history[-1] < tolerance * n
            history.append(objective)
            if converged:
                break
            responsibilities = np.exp(log_joint - log_norm[:, None])
            weights, means, covars = self._maximise(centred, responsibilities)
            chol = robust_cholesky(covars)
            m_steps += 1

        self.weights, self.means, self.covars = weights, means + centre, covars
        self._chol = chol
        self.log_likelihood_history = history
        self.n_iterations = m_steps
        return self

    def _initialise(self, centred: np.ndarray, n_clusters: int, kept=None):
        """
        Return the starting parameters of EM.

        Starting parameters: k-means++ seeds, nearest-seed assignment, covariances shrunk to
        the data's.

        kept = (weights, means, covars) of clusters to carry over (fewer than
        n_clusters, means about the data mean): only the missing clusters are seeded,
        away from the kept ones, and the kept weights shrink to make room.
        """
        n, d = centred.shape
        spread = centred.std(axis=0)
        scale = np.where(spread > 0.0, spread, 1.0)
        whitened = centred / scale  # seed in per-coordinate standardised units
        centres = np.empty((0, d)) if kept is None else kept[1] / scale
        n_kept = centres.shape[0]
        if n_kept == 0:
            seeds = [int(self._rng.integers(n))]
            distance = np.sum((whitened - whitened[seeds[0]]) ** 2, axis=1)
        else:
            seeds = []
            distance = np.min(_squared_distances(whitened, centres), axis=1)
        # Greedy k-means++: of a few candidates drawn ∝ squared distance, keep the one
        # that most reduces the total squared distance (far more robust than one draw).
        n_candidates = 2 + int(np.log(n_clusters))
        while n_kept + len(seeds) < n_clusters:
            total = distance.sum()
            if total <= 0.0:
                candidates = self._rng.integers(n, size=n_candidates)
            else:
                candidates = self._rng.choice(n, size=n_candidates, p=distance / total)
            trial = np.minimum(distance[None, :], _squared_distances(whitened[candidates],
                                                                     whitened))
            best = int(np.argmin(trial.sum(axis=1)))
            seeds.append(int(candidates[best]))
            distance = trial[best]
        centres = np.concatenate([centres, whitened[seeds]])
        labels = np.argmin(_squared_distances(whitened, centres), axis=1)
        labels[seeds] = np.arange(n_kept, n_clusters)  # every new cluster owns at least its seed
        one_hot = np.zeros((n, n_clusters))
        one_hot[np.arange(n), labels] = 1.0
        counts = one_hot.sum(axis=0)
        weights = counts / n
        means = (one_hot.T @ centred) / np.maximum(counts, 1.0)[:, None]
        # A cluster of a few points would start as a needle; pool its scatter with
        # d pseudo-points of the whole data's covariance.
        data_covar = centred.T @ centred / n
        scatter = self._weighted_scatter(centred, one_hot, counts, means)
        pseudo = float(d)
        covars = ((scatter + pseudo * data_covar + self.regularization * np.eye(d))
                  / (counts + pseudo)[:, None, None])
        if n_kept:
            kept_weights, kept_means, kept_covars = kept
            weights[:n_kept] = kept_weights * (1.0 - weights[n_kept:].sum()) / kept_weights.sum()
            means[:n_kept], covars[:n_kept] = kept_means, kept_covars
        return weights, means, symmetrise(covars)

    @staticmethod
    def _weighted_scatter(centred, responsibilities, counts, means) -> np.ndarray:
        """S_k = Σ_n r_nk (x_n - μ_k)(x_n - μ_k)ᵀ (K, d, d), as one GEMM over all clusters."""
        n, d = centred.shape
        n_clusters = responsibilities.shape[1]
        weighted = (responsibilities[:, :, None] * centred[:, None, :]).reshape(n, n_clusters * d)
        second_moment = (centred.T @ weighted).reshape(d, n_clusters, d).transpose(1, 0, 2)
        return second_moment - counts[:, None, None] * means[:, :, None] * means[:, None, :]

    def _maximise(self, centred: np.ndarray, responsibilities: np.ndarray):
        n, d = centred.shape
        counts = responsibilities.sum(axis=0)
        # A cluster that lost every point keeps a finite mean; its weight is ~0 anyway.
        safe_counts = np.maximum(counts, 1e-300)
        weights = counts / n
        means = (responsibilities.T @ centred) / safe_counts[:, None]
        scatter = self._weighted_scatter(centred, responsibilities, counts, means)
        covars = (scatter + self.regularization * np.eye(d)) / safe_counts[:, None, None]
        return weights, means, symmetrise(covars)

    @staticmethod
    def _log_joint(points, weights, means, chol):
        """Log π_k + log N(x_n | μ_k, Σ_k) (n, K) and the inverse Cholesky factors (K, d, d)."""
        n, d = points.shape
        n_clusters = weights.shape[0]
        # L_k⁻¹, so that |L_k⁻¹ (x - μ_k)|² is the Mahalanobis distance (LAPACK trtri per cluster)
        chol_inv = np.stack([scipy.linalg.lapack.dtrtri(factor, lower=1)[0] for factor in chol])
        whitened = (points @ chol_inv.reshape(n_clusters * d, d).T).reshape(n, n_clusters, d)
        whitened -= np.einsum("kij,kj->ki", chol_inv, means)
        mahalanobis = np.einsum("nki,nki->nk", whitened, whitened)
        log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
        with np.errstate(divide="ignore"):
            log_weights = np.log(weights)
        return log_weights - 0.5 * (d * _LOG_2PI + log_det + mahalanobis), chol_inv

    # --------------------------------------------------------------- inference
    def _check_fitted(self, points) -> np.ndarray:
        if self.weights is None:
            raise ValueError("the mixture has not been fitted yet; call fit first")
        points = _as_points(points)
        if points.shape[1] != self.dim:
            raise ValueError(f"points have dimension {points.shape[1]}; the mixture was fitted in "
                             f"{self.dim}")
        return points

    def responsibilities(self, points) -> np.ndarray:
        """Posterior cluster probabilities p(k | x_n) (n, K) of points (n, d); rows sum to 1."""
        points = self._check_fitted(points)
        log_joint, _ = self._log_joint(points, self.weights, self.means, self._chol)
        return np.exp(log_joint - _logsumexp(log_joint, axis=1)[:, None])

    def score_samples(self, points) -> np.ndarray:
        """Log density log p(x_n) (n,) of points (n, d) under the mixture."""
        points = self._check_fitted(points)
        log_joint, _ = self._log_joint(points, self.weights, self.means, self._chol)
        return _logsumexp(log_joint, axis=1)


class GMMPrior:
    """
    Normal-inverse-Wishart priors from a mixture over a bounded buffer of rollouts.

    Holds the points of the most recent max_rollouts rollouts, each (T, d) (for the
    dynamics d = dX + dU + dX, the [x_t, u_t, x_{t+1}] tuples), refits a
    GaussianMixture on all of them at every update with
    K = clamp(n_points // min_points_per_cluster, 1, max_clusters), and turns
    the mixture into a prior for any small set of points: the mixture's moments
    weighted by the points' mean responsibilities, counted as `strength` points.

    EM budget: the first fit runs up to max_iterations iterations from k-means++
    seeds; every later fit is warm-started from the previous mixture (new clusters
    seeded when the count grows) and runs up to warm_iterations, so the mixture
    keeps converging across updates while each update stays cheap (one iteration
    on 2000 points in 47 dimensions with 20 clusters is ~12 ms on one core).
    Both stop early once an iteration gains less than tolerance nats per point.
    """

    def __init__(self, max_clusters: int = 20, min_points_per_cluster: int = 40,
                 max_rollouts: int = 20, strength: float = 1.0,
                 max_iterations: int = 10, warm_iterations: int = 1, tolerance: float = 1e-3,
                 regularization: float = 1e-6, seed: int | None = 0):
        # The limits are PriorSettings': checked there, once.
        PriorSettings(True, max_clusters, min_points_per_cluster, max_rollouts, strength)
        self.max_clusters = int(max_clusters)
        self.min_points_per_cluster = int(min_points_per_cluster)
        self.max_rollouts = int(max_rollouts)
        self.strength = float(strength)
        if int(max_iterations) < 1 or int(warm_iterations) < 1:
            raise ValueError(f"max_iterations and warm_iterations must be >= 1; "
                             f"got {max_iterations}, {warm_iterations}")
        self.max_iterations = int(max_iterations)
        self.warm_iterations = int(warm_iterations)
        self.tolerance = float(tolerance)
        self.gmm = GaussianMixture(regularization=regularization, seed=seed)
        self._rollouts: deque[np.ndarray] = deque(maxlen=self.max_rollouts)
        self.n_points = 0
        self.version = 0  # bumped at every refit, so callers can cache responsibilities

    @property
    def n_rollouts(self) -> int:
        return len(self._rollouts)

    @property
    def dim(self) -> int:
        return self._rollouts[0].shape[-1] if self._rollouts else 0

    def update(self, points) -> "GMMPrior":
        """Add N rollouts' points (N, T, d), drop the oldest beyond max_rollouts, refit."""
        points = np.array(points,
                          dtype=float)  # a copy: the buffer must not alias the caller's array
        if points.ndim != 3 or min(points.shape) < 1:
            raise ValueError("points must be a non-empty (N, T, d) array; got shape "
                             f"{points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("points must be finite; found NaN or inf")
        if self._rollouts and points.shape[-1] != self.dim:
            raise ValueError(f"points have dimension {points.shape[-1]}; the buffer holds "
                             f"dimension {self.dim}")
        self._rollouts.extend(points)
        buffer = np.concatenate(list(self._rollouts), axis=0)
        self.n_points = buffer.shape[0]
        n_clusters = min(self.max_clusters, max(1, self.n_points // self.min_points_per_cluster))
        # Any earlier fit in this dimension warm-starts EM (kept clusters, or grown by new seeds).
        warm = self.gmm.dim == self.dim and 0 < self.gmm.n_clusters <= n_clusters
        iterations = self.warm_iterations if warm else self.max_iterations
        self.gmm.fit(buffer, n_clusters, max_iterations=iterations, tolerance=self.tolerance)
        self.version += 1
        return self

    def responsibilities(self, points) -> np.ndarray:
        """p(k | x) (..., n, K) for points (..., n, d) under the current mixture."""
        points = np.asarray(points, dtype=float)
        if self.gmm.weights is None:
            raise ValueError("the prior holds no data; call update first")
        if points.ndim < 2:
            raise ValueError(f"points must be (..., n, d); got shape {points.shape}")
        flat = self.gmm.responsibilities(points.reshape(-1, points.shape[-1]))
        return flat.reshape(points.shape[:-1] + (self.gmm.n_clusters,))

    def evaluate(self, points) -> NormalInverseWishart:
        """Return the prior for points (..., n, d): a NormalInverseWishart batched over (...)."""
        return self.from_cluster_weights(self.responsibilities(points).mean(axis=-2))

    def from_cluster_weights(self, cluster_weights) -> NormalInverseWishart:
        """
        Return the prior for mixture weights (..., K).

        The prior for mixture weights (..., K), e.g. mean responsibilities of a set of points.

        Moment-matches the weighted mixture to one Gaussian (mean μ, covariance Σ),
        then sets m = strength, Φ = strength Σ and n0 = strength (n - d - 2) / n for a
        buffer of n points (floored at strength / n), as GPS does.
        """
        gmm = self.gmm
        cluster_weights = np.asarray(cluster_weights, dtype=float)
        mean = cluster_weights @ gmm.means
        offsets = gmm.means - mean[..., None, :]  # (..., K, d)
        within = np.tensordot(cluster_weights, gmm.covars, axes=([-1], [0]))
        between = np.swapaxes(cluster_weights[..., :, None] * offsets, -1, -2) @ offsets
        covar = symmetrise(within + between)
        dof_fraction = max(self.n_points - self.dim - 2, 1) / self.n_points
        return NormalInverseWishart(mean=mean, scatter=self.strength * covar,
                                    m=self.strength, n0=self.strength * dof_fraction)
