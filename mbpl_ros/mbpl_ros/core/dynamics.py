"""Time-varying linear-Gaussian dynamics x_{t+1} ~ N(F_t [x_t; u_t] + f_t, Σ_t)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .gmm import GMMPrior, NormalInverseWishart, PriorSettings
from .linalg import robust_cholesky, symmetrise
from .model_prior import DescriptionPriorSettings
from .rollouts import rollout_arrays
from .settings import check_value, setting, settings_dataclass


@settings_dataclass
class DynamicsSettings:
    """The dynamics fit: the experiment file's dynamics section."""

    regularization: float = setting("ridge added to the [x, u] covariance of the regression "
                                    "(keeps it positive definite)", 1e-6, gt=0.0)
    prior: PriorSettings = dataclasses.field(default_factory=PriorSettings,
                                             metadata={"doc": "GMM prior"})
    description_prior: DescriptionPriorSettings = dataclasses.field(
        default_factory=DescriptionPriorSettings,
        metadata={"doc": "prior from the robot description (off by default)"})


@dataclass
class LinearGaussianDynamics:
    """
    Hold time-varying linear-Gaussian dynamics and the initial-state distribution.

    F (T-1, dX, dX+dU), f (T-1, dX), covar (T-1, dX, dX) for the T-1 transitions,
    and the initial-state distribution x0_mean (dX,), x0_covar (dX, dX).
    """

    F: np.ndarray
    f: np.ndarray
    covar: np.ndarray
    x0_mean: np.ndarray
    x0_covar: np.ndarray

    def __post_init__(self) -> None:
        # One memory layout (C order): strides change matmul rounding, and a model fitted
        # here must compute exactly as the same model decoded from a ROS message.
        for name in ("F", "f", "covar", "x0_mean", "x0_covar"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name), dtype=float))

    @property
    def T(self) -> int:
        return self.F.shape[0] + 1

    @property
    def dX(self) -> int:
        return self.F.shape[1]

    @property
    def dU(self) -> int:
        return self.F.shape[2] - self.F.shape[1]


# ---------------------------------------------------------------------------
# Fitting: Bayesian linear regression, per time step, on [x_t, u_t, x_{t+1}].
# ---------------------------------------------------------------------------

# Relative part of the ridge: rounding in a covariance of scale s is ~1e-16 s per entry, so
# a 1e-12 s ridge keeps Cholesky factors and Schur complements PD at any data scale.
_RELATIVE_RIDGE = 1e-12


def _ridge(covars: np.ndarray, regularization: float) -> np.ndarray:
    """Regularization plus 1e-12 of the mean variance, per matrix (...)."""
    mean_variance = np.trace(covars, axis1=-2, axis2=-1) / covars.shape[-1]
    return regularization + _RELATIVE_RIDGE * np.abs(mean_variance)


def _check_regularization(regularization: float) -> float:
    (field,) = [f for f in dataclasses.fields(DynamicsSettings) if f.name == "regularization"]
    return check_value("", "regularization", regularization, float, dict(field.metadata))


def conditional_gaussian(count, mean, scatter, n_inputs: int,
                         prior: NormalInverseWishart | None = None,
                         regularization: float = 1e-6):
    """
    Condition a joint Gaussian over [inputs; outputs] on its inputs, from sufficient statistics.

    count (...) points with mean (..., D) and scatter (..., D, D) = Σ (z - z̄)(z - z̄)ᵀ,
    the first n_inputs = dI coordinates being the inputs. The joint covariance is the
    empirical one (count in the denominator) or, with a prior, the pooled estimate of
    NormalInverseWishart.posterior_covariance; the mean is the data mean either way, so
    the fit passes through the data it was fitted on. `regularization` (plus 1e-12 of
    the mean variance, against rounding at large scales) is added to the whole diagonal:
    on the inputs it is the ridge that keeps W well posed when inputs do not vary, on
    the outputs a floor that keeps the covariance PD when nothing varies.

    Returns W (..., dO, dI), b (..., dO), covar (..., dO, dO) of y | x ~ N(W x + b, covar).
    W and covar come from one Cholesky factor L of the joint covariance: with
    L = [[L_ii, 0], [L_oi, L_oo]], W = L_oi L_ii⁻¹ and covar = L_oo L_ooᵀ, so covar is a
    Gram matrix (symmetric PSD by construction, ≥ regularization·I in exact arithmetic).
    """
    regularization = _check_regularization(regularization)
    mean = np.asarray(mean, dtype=float)
    count = np.asarray(count, dtype=float)
    dim = mean.shape[-1]
    if prior is None:
        joint_covar = np.asarray(scatter, dtype=float) / count[..., None, None]
    else:
        joint_covar = prior.posterior_covariance(count, mean, scatter)
    joint_covar = symmetrise(joint_covar)
    ridge = _ridge(joint_covar, regularization)
    joint_covar = joint_covar + ridge[..., None, None] * np.eye(dim)
    chol = robust_cholesky(joint_covar, floor=ridge[..., None])
    chol_in = chol[..., :n_inputs, :n_inputs]
    chol_out_in = chol[..., n_inputs:, :n_inputs]
    chol_out = chol[..., n_inputs:, n_inputs:]
    # W L_ii = L_oi  <=>  L_iiᵀ Wᵀ = L_oiᵀ
    gain = np.swapaxes(np.linalg.solve(np.swapaxes(chol_in, -1, -2), np.swapaxes(chol_out_in, -1,
                                                                                 -2)), -1, -2)
    offset = mean[..., n_inputs:] - np.einsum("...oi,...i->...o", gain, mean[..., :n_inputs])
    covar = symmetrise(chol_out @ np.swapaxes(chol_out, -1, -2))
    return gain, offset, covar


def gaussian_regression(inputs, outputs, prior: NormalInverseWishart | None = None,
                        regularization: float = 1e-6):
    """
    Fit outputs | inputs ~ N(W x + b, covar) from samples, optionally under a NIW prior.

    inputs (..., n, dI) and outputs (..., n, dO): n samples per regression; leading
    dimensions (e.g. T) batch independent regressions. prior: a NormalInverseWishart
    over the joint [inputs, outputs] (mean (..., dI+dO)), e.g. GMMPrior.evaluate of the
    joint points. Returns W (..., dO, dI), b (..., dO), covar (..., dO, dO) symmetric
    positive definite; see conditional_gaussian for the estimator. Any n >= 1 works,
    including n < dI and constant inputs.
    """
    inputs = np.asarray(inputs, dtype=float)
    outputs = np.asarray(outputs, dtype=float)
    if inputs.ndim < 2 or outputs.ndim < 2:
        raise ValueError(f"inputs and outputs must be (..., n, dI) and (..., n, dO); "
                         f"got {inputs.shape} and {outputs.shape}")
    if inputs.shape[:-1] != outputs.shape[:-1] or inputs.shape[-2] < 1:
        raise ValueError(f"inputs {inputs.shape} and outputs {outputs.shape} must share (..., n) "
                         "with n >= 1")
    if not (np.all(np.isfinite(inputs)) and np.all(np.isfinite(outputs))):
        raise ValueError("inputs and outputs must be finite; found NaN or inf")
    joint = np.concatenate([inputs, outputs], axis=-1)
    if prior is not None and np.shape(prior.mean)[-1] != joint.shape[-1]:
        raise ValueError(f"prior has dimension {np.shape(prior.mean)[-1]}; inputs+outputs have "
                         f"{joint.shape[-1]}")
    count, mean, scatter = _moments(joint)
    return conditional_gaussian(count, mean, scatter, inputs.shape[-1], prior, regularization)


def _moments(points: np.ndarray):
    """Count, mean (..., D) and scatter (..., D, D) of points (..., n, D)."""
    count = np.full(points.shape[:-2], float(points.shape[-2]))
    mean = points.mean(axis=-2)
    centred = points - mean[..., None, :]
    scatter = symmetrise(np.swapaxes(centred, -1, -2) @ centred)
    return count, mean, scatter


def transition_points(X, U) -> np.ndarray:
    """
    Return the transition tuples of rollouts.

    The [x_t, u_t, x_{t+1}] tuples (N, T-1, dX+dU+dX) of rollouts X (N, T, dX), U (N, T, dU).

    These are the points a dynamics GMMPrior is updated with and evaluated on.
    """
    X, U = _check_rollouts(X, U)
    return np.concatenate([X[:, :-1], U[:, :-1], X[:, 1:]], axis=-1)


def _check_rollouts(X, U):
    X, U = rollout_arrays(X, U)
    if X.shape[0] < 1 or X.shape[1] < 2 or X.shape[2] < 1 or U.shape[2] < 1:
        raise ValueError("need N >= 1 rollouts of T >= 2 steps with dX, dU >= 1; got X "
                         f"{X.shape}, U {U.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(U))):
        raise ValueError("X and U must be finite; found NaN or inf")
    return X, U


def _prior_for(prior: GMMPrior, points: np.ndarray) -> NormalInverseWishart:
    if prior.dim != points.shape[-1]:
        raise ValueError(f"prior was fitted on points of dimension {prior.dim}; "
                         f"[x, u, x'] here has dimension {points.shape[-1]}")
    return prior.evaluate(points)


def _initial_state(count, mean, scatter, regularization) -> tuple[np.ndarray, np.ndarray]:
    covar = symmetrise(scatter / count)
    return mean, covar + _ridge(covar, regularization) * np.eye(mean.shape[-1])


def fit_dynamics(X, U, prior: GMMPrior | None = None,
                 regularization: float = 1e-6) -> LinearGaussianDynamics:
    """
    Fit x_{t+1} ~ N(F_t [x_t; u_t] + f_t, Σ_t) to rollouts X (N, T, dX), U (N, T, dU).

    One Bayesian linear regression per transition t = 0..T-2, all batched over T. With a
    GMMPrior over [x, u, x'] (see transition_points), step t is regularised by the prior
    the mixture gives for that step's N points. The initial state's mean and covariance
    are those of X[:, 0], plus `regularization`·I (and the same 1e-12 relative ridge as
    the regressions) so that x0_covar is PD even for N = 1.
    """
    regularization = _check_regularization(regularization)
    X, U = _check_rollouts(X, U)
    dX, dU = X.shape[2], U.shape[2]
    per_step = np.swapaxes(transition_points(X, U), 0, 1)  # (T-1, N, D)
    niw = None if prior is None else _prior_for(prior, per_step)
    count, mean, scatter = _moments(per_step)
    F, f, covar = conditional_gaussian(count, mean, scatter, dX + dU, niw, regularization)
    x0_mean, x0_covar = _initial_state(*_moments(X[:, 0]), regularization)
    return LinearGaussianDynamics(F=F, f=f, covar=covar, x0_mean=x0_mean, x0_covar=x0_covar)


class OnlineDynamics:
    """
    Per-time-step sufficient statistics of [x_t, u_t, x_{t+1}], updated one rollout at a time.

    `add` folds a rollout X (T, dX), U (T, dU) into the counts, means and scatters in
    O(T D²) (Welford's update, D = dX + dU + dX); `fit` then returns what fit_dynamics
    would on every rollout added so far, without revisiting them. With a GMMPrior, the
    rollouts' points are kept too, because the prior depends on the responsibilities of
    all of them; those are cached while the prior is not refitted.
    """

    def __init__(self, regularization: float = 1e-6):
        self.regularization = _check_regularization(regularization)
        self.count = 0
        self.mean: np.ndarray | None = None        # (T-1, D)
        self.scatter: np.ndarray | None = None     # (T-1, D, D)
        self.x0_mean: np.ndarray | None = None     # (dX,)
        self.x0_scatter: np.ndarray | None = None  # (dX, dX)
        self._points: list[np.ndarray] = []        # each (T-1, D), for the prior
        self._shape: tuple[int, int, int] | None = None
        self._cached_prior: tuple[int, int] | None = None   # (id, version) of the prior cached for
        # (T-1, K) over the first _cached_count rollouts
        self._responsibility_sum: np.ndarray | None = None
        self._cached_count = 0

    @staticmethod
    def _welford(count, mean, scatter, point):
        delta = point - mean
        mean = mean + delta / count
        scatter = scatter + delta[..., :, None] * (point - mean)[..., None, :]
        return mean, scatter

    def add(self, X, U) -> "OnlineDynamics":
        """Fold in one rollout X (T, dX), U (T, dU)."""
        X = np.asarray(X, dtype=float)
        U = np.asarray(U, dtype=float)
        if X.ndim != 2 or U.ndim != 2:
            raise ValueError(f"add takes one rollout: X (T, dX) and U (T, dU); got {X.shape} and "
                             f"{U.shape}")
        X, U = _check_rollouts(X[None], U[None])
        shape = (X.shape[1], X.shape[2], U.shape[2])
        if self._shape is None:
            T, dX, dU = shape
            dim = 2 * dX + dU
            self._shape = shape
            self.mean = np.zeros((T - 1, dim))
            self.scatter = np.zeros((T - 1, dim, dim))
            self.x0_mean = np.zeros(dX)
            self.x0_scatter = np.zeros((dX, dX))
        elif shape != self._shape:
            raise ValueError(f"rollout has (T, dX, dU) = {shape}; earlier ones had {self._shape}")
        points = transition_points(X, U)[0]
        self.count += 1
        self.mean, self.scatter = self._welford(self.count, self.mean, self.scatter, points)
        self.x0_mean, self.x0_scatter = self._welford(self.count, self.x0_mean, self.x0_scatter,
                                                      X[0, 0])
        self._points.append(points)
        return self

    def _prior_niw(self, prior: GMMPrior) -> NormalInverseWishart:
        key = (id(prior), prior.version)
        if self._cached_prior != key:
            self._cached_prior, self._cached_count, self._responsibility_sum = key, 0, None
        if self._cached_count < self.count:
            if prior.dim != self.mean.shape[-1]:
                raise ValueError(f"prior was fitted on points of dimension {prior.dim}; "
                                 f"[x, u, x'] here has dimension {self.mean.shape[-1]}")
            new_points = np.stack(self._points[self._cached_count:], axis=1)  # (T-1, n_new, D)
            new_sum = prior.responsibilities(new_points).sum(axis=1)
            if self._responsibility_sum is not None:
                new_sum = new_sum + self._responsibility_sum
            self._responsibility_sum = new_sum
            self._cached_count = self.count
        return prior.from_cluster_weights(self._responsibility_sum / self.count)

    def fit(self, prior: GMMPrior | None = None) -> LinearGaussianDynamics:
        """Dynamics fitted to every rollout added so far (as fit_dynamics would)."""
        if self.count == 0:
            raise ValueError("no rollouts added yet; call add first")
        dX, dU = self._shape[1], self._shape[2]
        niw = None if prior is None else self._prior_niw(prior)
        counts = np.full(self.mean.shape[0], float(self.count))
        F, f, covar = conditional_gaussian(counts, self.mean, symmetrise(self.scatter), dX + dU,
                                           niw, self.regularization)
        x0_mean, x0_covar = _initial_state(self.count, self.x0_mean, symmetrise(self.x0_scatter),
                                           self.regularization)
        return LinearGaussianDynamics(F=F, f=f, covar=covar, x0_mean=x0_mean, x0_covar=x0_covar)
