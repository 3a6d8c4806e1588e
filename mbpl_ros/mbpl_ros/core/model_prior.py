"""
A dynamics prior from a model of the robot, and the pooling of two priors.

The Bayesian fit of the time-varying dynamics (core.dynamics.fit_dynamics) regresses
x_{t+1} on [x_t; u_t] under a normal-inverse-Wishart prior over the joint [x, u, x'].
`ModelPrior` builds that prior from a model's linearisation along the batch's own mean
trajectory, x_{t+1} ≈ G_t [x_t; u_t] + c_t (G_t (dX, dX+dU), c_t (dX,)), counted as
`strength` pseudo-rollouts. With n rollouts, the posterior gain is then, per step,

    W_t = (S_oi + s G_t Λ_t) (S_ii + s Λ_t)⁻¹

(S the data's scatter at step t, s the strength, Λ_t = S / n plus a small floor): the data
override the model along the directions they explore, s counting like s rollouts, and the
model fills in the directions that few rollouts cannot tell apart (with n < dX + dU there
always are some). The prior's output covariance is the batch's residual covariance under
the model, so a wrong model widens it.

The linearisation is a callable: the robot's rigid-body model lives outside core
(mbpl_ros.robot_model.StepLinearization).
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from .gmm import NormalInverseWishart
from .linalg import symmetrise
from .settings import setting, settings_dataclass

#: (x̄ (T-1, dX), ū (T-1, dU)) -> G (T-1, dX, dX+dU), c (T-1, dX): the model's
#: x_{t+1} ≈ G_t [x_t; u_t] + c_t around each step's mean state and action.
Linearization = Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]

#: Floor of the pooled input and residual covariances: this fraction of each coordinate's
#: own variance (a direction the batch barely explores stays invertible without being
#: distorted), plus a tiny part of the mean variance for coordinates that do not vary.
_RELATIVE_FLOOR = 1e-3
_ABSOLUTE_FLOOR = 1e-12


@settings_dataclass
class DescriptionPriorSettings:
    """The robot-description prior of the dynamics fit: dynamics.description_prior."""

    enabled: bool = setting(
        "add a prior from the robot description: its rigid-body dynamics (Pinocchio) "
        "linearised along each batch's mean trajectory, pooled with the GMM prior "
        "(mbpl train only; one end-effector point)", False)
    strength: float = setting("weight of the description's linearisation, in rollouts: "
                              "the data override it where they disagree", 1.0, gt=0.0)


def pool_priors(a: NormalInverseWishart, b: NormalInverseWishart) -> NormalInverseWishart:
    """
    Return two NIW priors as one: both sets of pseudo-points together.

    Strengths add, means are strength-weighted, and the scatter gains the spread between
    the two means.
    """
    m_a, m_b = np.asarray(a.m, dtype=float), np.asarray(b.m, dtype=float)
    m = m_a + m_b
    mean = (m_a[..., None] * a.mean + m_b[..., None] * b.mean) / m[..., None]
    offset = a.mean - b.mean
    between = (m_a * m_b / m)[..., None, None] * offset[..., :, None] * offset[..., None, :]
    return NormalInverseWishart(mean=mean, scatter=symmetrise(a.scatter + b.scatter + between),
                                m=m, n0=np.asarray(a.n0, dtype=float)
                                + np.asarray(b.n0, dtype=float))


def _floor(variances: np.ndarray) -> np.ndarray:
    return _RELATIVE_FLOOR * variances + _ABSOLUTE_FLOOR * max(variances.mean(), 1e-12)


class ModelPrior:
    """
    NIW priors over [x_t, u_t, x_{t+1}] from a linearised model (see the module text).

    Stateless between batches: `update` does nothing; `evaluate(points (T-1, N, D))`
    linearises at the points' mean [x_t; u_t] and returns a NormalInverseWishart batched
    over the T-1 steps, D = dX + dU + dX.
    """

    def __init__(self, linearize: Linearization, dX: int, dU: int, strength: float):
        if not (np.isfinite(strength) and strength > 0):
            raise ValueError("strength must be a finite number > 0 (pseudo-rollouts); got "
                             f"{strength}")
        self.linearize = linearize
        self.dX, self.dU = int(dX), int(dU)
        self.strength = float(strength)

    @property
    def dim(self) -> int:
        return 2 * self.dX + self.dU

    def update(self, points) -> "ModelPrior":
        """Learn nothing: the model does not change with the data."""
        return self

    def evaluate(self, points) -> NormalInverseWishart:
        """Return the prior (batched over T-1) at the transition points (T-1, N, D)."""
        points = np.asarray(points, dtype=float)
        if points.ndim != 3 or points.shape[-1] != self.dim:
            raise ValueError(f"points must be (T-1, N, {self.dim}); got {points.shape}")
        dXU = self.dX + self.dU
        steps = points.shape[0]
        inputs, outputs = points[..., :dXU], points[..., dXU:]
        mean_in = inputs.mean(axis=1)                                          # (T-1, dXU)
        G, c = self.linearize(mean_in[:, :self.dX], mean_in[:, self.dX:])
        G, c = np.asarray(G, dtype=float), np.asarray(c, dtype=float)
        if G.shape != (steps, self.dX, dXU) or c.shape != (steps, self.dX):
            raise ValueError(f"the linearisation gave G {G.shape} and c {c.shape}; expected "
                             f"({steps}, {self.dX}, {dXU}) and ({steps}, {self.dX})")
        # Λ_t: the inputs' covariance at step t (biased), so that `strength` weighs like that
        # many rollouts at every step, plus a floor of each coordinate's spread over the
        # whole batch: directions that step t does not explore stay invertible, and there
        # the data say nothing and the gain is G_t's.
        N = points.shape[1]
        centred = inputs - mean_in[:, None, :]
        Lambda = np.swapaxes(centred, -1, -2) @ centred / N                   # (T-1, dXU, dXU)
        Lambda = symmetrise(Lambda) + np.diag(_floor(np.var(inputs.reshape(-1, dXU), axis=0)))
        residuals = outputs - (np.einsum("tij,tnj->tni", G, inputs) + c[:, None, :])
        noise = np.cov(residuals.reshape(-1, self.dX), rowvar=False, bias=True)
        noise = symmetrise(np.reshape(noise, (self.dX, self.dX)))
        noise = noise + np.diag(_floor(np.diag(noise)))
        G_Lambda = G @ Lambda                                                  # (T-1, dX, dXU)
        covariance = np.block([[Lambda, np.swapaxes(G_Lambda, -1, -2)],
                               [G_Lambda, G_Lambda @ np.swapaxes(G, -1, -2) + noise]])
        mean = np.concatenate([mean_in, np.einsum("tij,tj->ti", G, mean_in) + c], axis=-1)
        s = self.strength
        return NormalInverseWishart(mean=mean, scatter=s * symmetrise(covariance), m=s, n0=s)


class PooledPrior:
    """
    A GMMPrior and a ModelPrior together.

    The GMM learns from the batches, the model speaks from the first one; evaluate pools
    their pseudo-points (pool_priors).
    """

    def __init__(self, gmm, model: ModelPrior):
        self.gmm, self.model = gmm, model

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def n_rollouts(self) -> int:
        return self.gmm.n_rollouts

    @property
    def version(self) -> int:
        return self.gmm.version

    def update(self, points) -> "PooledPrior":
        """Fold the transition points (N, T-1, D) into the GMM."""
        self.gmm.update(points)
        return self

    def evaluate(self, points) -> NormalInverseWishart:
        """Return both priors pooled at the transition points (T-1, N, D)."""
        model = self.model.evaluate(np.asarray(points, dtype=float))
        if self.gmm.n_rollouts == 0:
            return model
        return pool_priors(self.gmm.evaluate(points), model)
