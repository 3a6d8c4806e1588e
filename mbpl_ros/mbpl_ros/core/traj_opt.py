"""
Trajectory optimisation under a KL bound (the LQR step of LQR-FLM and of MDGPS's C-step).

Given linear-Gaussian dynamics p(x'|x,u), a quadratic cost l_t(x,u) and an anchor
controller p̄(u|x) (the previous controller for LQR-FLM, the linearised global policy for
MDGPS), find

    p = argmin E_p[Σ_t l_t]   subject to   KL(p(τ) ‖ p̄(τ)) ≤ ε,

where p(τ), p̄(τ) are trajectory distributions under the same dynamics and initial-state
distribution. Its Lagrangian with multiplier η is solved in closed form by LQR on the cost
l_t/η − log p̄(u_t|x_t) (the "divide through by η" form of GPS, Levine & Abbeel 2014):
the solution is the linear-Gaussian controller with mean from the LQR gains and
covariance Σ_t = Q_uu,t⁻¹ of that η-scaled problem. η is then chosen by a dual search so
that the KL meets ε within a relative tolerance.

Speed: the backward and forward passes run for a batch of η candidates at once (stacked
(B, ·, ·) arrays, one batched numpy call per operation and time step), first on a
log-spaced grid around the previous η, then around the η that a monotone interpolation of
log KL against log η says meets ε.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.interpolate import PchipInterpolator

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import QuadraticCost
from mbpl_ros.core.dynamics import LinearGaussianDynamics
from mbpl_ros.core.lqr import homogeneous_cost, homogeneous_dynamics, riccati_recursion
from mbpl_ros.core.settings import setting, settings_dataclass


class TrajectoryOptimizationError(RuntimeError):
    """
    Signal no positive-definite Q_uu even at the largest allowed η.

    No positive-definite Q_uu even at the largest allowed η (TrajOptSettings.max_eta):
    the dynamics or the cost are broken (NaN, or absurdly ill-conditioned).
    """


@dataclass
class TrajectoryMarginals:
    """
    Hold the state-action marginals of a trajectory distribution.

    State-action marginals of a trajectory distribution, z_t = [x_t; u_t]:
    mean (T, dX+dU), covar (T, dX+dU, dX+dU) (exactly symmetric).
    """

    mean: np.ndarray
    covar: np.ndarray


@settings_dataclass
class TrajOptSettings:
    """
    Configure the dual search on η.

    Dual search on η (the defaults were tuned on random problems at T=100, dX=20, dU=7,
    see bench/traj_opt.py).

    Past max_eta an indefinite Q_uu raises TrajectoryOptimizationError (as η → ∞ the
    problem tends to reproducing the anchor, which is always well posed, so failing there
    means broken inputs). When every η tried is too small, the next batch is centred where
    KL ∝ η⁻², its large-η behaviour, says ε is met. Each batch costs about one backward and
    one forward pass of Python-level work plus the arithmetic of its members.
    """

    min_eta: float = setting("lower end of the search interval of η", 1e-8, gt=0.0)
    max_eta: float = setting("upper end of the search interval of η", 1e16, gt=0.0)
    kl_tolerance: float = setting("accept η once |KL − ε| ≤ kl_tolerance · ε", 0.1,
                                  gt=0.0, lt=1.0)
    grid_points: int = setting("η values of the first batch, log-spaced over "
                               "η_init · 10^[−grid_decades, +grid_decades]", 3, ge=1)
    grid_decades: float = setting("half-width (decades) of the first batch", 1.0, gt=0.0)
    extension_decades: float = setting(
        "decades per point the next batch steps down when every η tried is too large", 3.0,
        gt=0.0)
    refine_points: int = setting(
        "batch size of each refinement once ε is bracketed: the η where a monotone "
        "interpolation of log KL against log η meets ε, plus points over the bracket", 1, ge=1)
    max_batches: int = setting("the most batches (passes) the search may run", 20, ge=1)
    retry_factor: float = setting(
        "an indefinite Q_uu at η retries η · retry_factor^j, j = 1 … 8 (one batch), "
        "repeatedly up to max_eta", 10.0 ** 0.5, gt=1.0)

    def __post_init__(self):
        if not self.min_eta < self.max_eta:
            raise ValueError(f"need min_eta < max_eta, got {self.min_eta}, {self.max_eta}")


@settings_dataclass
class KlStepSettings:
    """
    Configure the KL step and its adaptation.

    The KL step and GPS's step-size rule (see adjust_step); the experiment file's
    trajectory_optimization section.

    A trajectory's KL budget is kl_step · step_mult · T; the multiplier's change per
    iteration is clipped to [min_mult_change, max_mult_change], the multiplier itself to
    [min_step_mult, max_step_mult].
    """

    kl_step: float = setting("KL bound ε per time step; a trajectory's budget is "
                             "kl_step · step_mult · T", 1.0, gt=0.0)
    first_kl_step: Optional[float] = setting(
        "KL bound ε per time step of the first iteration only (away from the initial "
        "controller); null: kl_step", None, gt=0.0)
    initial_eta: float = setting("initial Lagrange multiplier of the KL constraint", 1.0,
                                 gt=0.0)
    min_step_mult: float = setting("lower clip of the adaptive step multiplier", 0.01, gt=0.0)
    max_step_mult: float = setting("upper clip of the adaptive step multiplier", 10.0, gt=0.0)
    min_mult_change: float = setting("lower clip of one iteration's change of the multiplier",
                                     0.1, gt=0.0)
    max_mult_change: float = setting("upper clip of one iteration's change of the multiplier",
                                     5.0, gt=0.0)
    min_gap: float = setting("floor of the step rule's denominator (predicted − actual "
                             "improvement)", 1e-4, gt=0.0)

    def __post_init__(self):
        if self.min_step_mult > self.max_step_mult:
            raise ValueError("min_step_mult must not exceed max_step_mult, got "
                             f"{self.min_step_mult} > {self.max_step_mult}")
        if self.min_mult_change > self.max_mult_change:
            raise ValueError("min_mult_change must not exceed max_mult_change, got "
                             f"{self.min_mult_change} > {self.max_mult_change}")


# ---------------------------------------------------------------- validation

def _check_problem(dynamics: LinearGaussianDynamics, cost: QuadraticCost | None,
                   controllers: dict[str, LinearGaussianController]) -> tuple[int, int, int]:
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    n = dX + dU
    expected = {"dynamics.f": (dynamics.f, (T - 1, dX)),
                "dynamics.covar": (dynamics.covar, (T - 1, dX, dX)),
                "dynamics.x0_mean": (dynamics.x0_mean, (dX,)),
                "dynamics.x0_covar": (dynamics.x0_covar, (dX, dX))}
    if cost is not None:
        expected.update({"cost.C": (cost.C, (T, n, n)), "cost.c": (cost.c, (T, n)),
                         "cost.c0": (cost.c0, (T,))})
    for name, c in controllers.items():
        expected.update({f"{name}.K": (c.K, (T, dU, dX)), f"{name}.k": (c.k, (T, dU)),
                         f"{name}.covar": (c.covar, (T, dU, dU)), f"{name}.chol": (c.chol, (T, dU,
                                                                                            dU)),
                         f"{name}.inv_covar": (c.inv_covar, (T, dU, dU))})
    for name, (array, shape) in expected.items():
        if np.shape(array) != shape:
            raise ValueError(f"{name} must have shape {shape} (T={T}, dX={dX}, dU={dU} from the "
                             "dynamics), "
                             f"got {np.shape(array)}")
    return T, dX, dU


def _sym(A: np.ndarray) -> np.ndarray:
    return 0.5 * (A + np.swapaxes(A, -1, -2))


def _logdet_from_chol(L: np.ndarray) -> np.ndarray:
    """Log det(L Lᵀ) (...,) for lower-triangular L (..., d, d)."""
    return 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)


# ---------------------------------------------------------------- forward pass, cost, KL

def _state_marginals(K: np.ndarray, k: np.ndarray, covar_u: np.ndarray,
                     dynamics: LinearGaussianDynamics) -> tuple[np.ndarray, np.ndarray]:
    """
    Return the state marginals under a batch of controllers.

    State marginals under controllers K (B, T, dU, dX), k (B, T, dU), covar_u (B, T, dU, dU):
    mean (B, T, dX) and covariance (B, T, dX, dX).

    With the closed loop A_t = F_x + F_u K_t, x_{t+1} has mean A_t μ_t + F_u k_t + f_t and
    covariance A_t Σ_t A_tᵀ + F_u Σu_t F_uᵀ + Σdyn_t, symmetrised at every step: that keeps Σ
    exactly symmetric (unsymmetrised rounding error compounds over the horizon).
    """
    B, T, dU, dX = K.shape
    Fx, Fu = dynamics.F[:, :, :dX], dynamics.F[:, :, dX:]
    Fu_T = np.swapaxes(Fu, -1, -2)
    offset = (Fu @ k[:, :-1, :, None])[..., 0] + dynamics.f          # (B, T-1, dX)
    mean = np.empty((B, T, dX))
    covar = np.empty((B, T, dX, dX))
    mean[:, 0] = dynamics.x0_mean
    covar[:, 0] = _sym(dynamics.x0_covar)
    # One step at a time, closed loop included: precomputing (B, T, dX, dX) arrays would
    # cost more in page faults than the few extra calls per step.
    for t in range(T - 1):
        A = Fx[t] + Fu[t] @ K[:, t]
        S = A @ covar[:, t] @ np.swapaxes(A, -1, -2) + Fu[t] @ covar_u[:, t] @ Fu_T[t]
        S += dynamics.covar[t]
        covar[:, t + 1] = 0.5 * (S + np.swapaxes(S, -1, -2))
        mean[:, t + 1] = (A @ mean[:, t, :, None])[..., 0] + offset[:, t]
    return mean, covar


def _joint_marginals(K, k, covar_u, mean_x, covar_x) -> TrajectoryMarginals:
    """Append the actions to state marginals (leading axes (..., T) throughout)."""
    KS = K @ covar_x                                                # Cov(u, x) (..., T, dU, dX)
    covar_uu = _sym(KS @ np.swapaxes(K, -1, -2)) + _sym(covar_u)
    mean_u = (K @ mean_x[..., None])[..., 0] + k
    covar = np.block([[covar_x, np.swapaxes(KS, -1, -2)], [KS, covar_uu]])
    return TrajectoryMarginals(mean=np.concatenate([mean_x, mean_u], axis=-1), covar=covar)


def forward_pass(controller: LinearGaussianController,
                 dynamics: LinearGaussianDynamics) -> TrajectoryMarginals:
    """
    Return the state-action marginals of running `controller` under `dynamics`.

    State-action marginals (T, dX+dU) of running `controller` under `dynamics` from its
    initial-state distribution. The covariances are exactly symmetric.
    """
    _check_problem(dynamics, None, {"controller": controller})
    K, k, covar_u = controller.K[None], controller.k[None], controller.covar[None]
    mean_x, covar_x = _state_marginals(K, k, covar_u, dynamics)
    marginals = _joint_marginals(K[0], k[0], covar_u[0], mean_x[0], covar_x[0])
    return marginals


def expected_cost(marginals: TrajectoryMarginals, cost: QuadraticCost) -> np.ndarray:
    """
    Return E[l_t(z_t)] (T,) for z_t ~ N(μ_t, Σ_t).

    E[l_t(z_t)] = ½ tr(C_t Σ_t) + ½ μ_tᵀ C_t μ_t + c_tᵀ μ_t + c0_t.
    """
    mu, S = marginals.mean, marginals.covar
    if cost.C.shape != S.shape or cost.c.shape != mu.shape or np.shape(cost.c0) != mu.shape[:1]:
        raise ValueError(f"cost (C {cost.C.shape}, c {cost.c.shape}, c0 {np.shape(cost.c0)}) does "
                         "not match "
                         f"the marginals (mean {mu.shape}, covar {S.shape})")
    return (0.5 * np.einsum("tij,tji->t", cost.C, S) + 0.5 * np.einsum("ti,tij,tj->t", mu, cost.C,
                                                                       mu)
            + np.einsum("ti,ti->t", cost.c, mu) + cost.c0)


def _expected_conditional_kl(K1, k1, covar1, logdet1, K0, k0, prec0, logdet0, mean_x, covar_x):
    """
    E_{x ~ N(mean_x, covar_x)} KL(N(K1 x + k1, covar1) ‖ N(K0 x + k0, prec0⁻¹)), (..., T).

        ½ [tr(P0 Σ1) − dU + log det Σ0 − log det Σ1 + mᵀ P0 m + tr(P0 D Σx Dᵀ)]

    with D = K0 − K1 and m = D μx + k0 − k1, the mean difference at the mean state.
    """
    dU = K1.shape[-2]
    D = K0 - K1
    m = (D @ mean_x[..., None])[..., 0] + k0 - k1
    mean_term = np.einsum("...i,...ij,...j->...", m, prec0, m)
    spread_term = np.einsum("...ij,...ij->...", prec0 @ D, D @ covar_x)
    trace_term = np.einsum("...ij,...ij->...", prec0, covar1)
    kl = 0.5 * (trace_term - dU + logdet0 - logdet1 + mean_term + spread_term)
    return np.maximum(kl, 0.0)       # ≥ 0 exactly in exact arithmetic; clip rounding


def kl_divergence(new: LinearGaussianController, old: LinearGaussianController,
                  marginals_of_new: TrajectoryMarginals) -> np.ndarray:
    """
    Return KL(p_new(τ) ‖ p_old(τ)) per time step.

    KL(p_new(τ) ‖ p_old(τ)) per time step (T,), for trajectory distributions under the
    same dynamics and initial state (which cancel): E_{x_t ~ p_new} KL(new(·|x_t) ‖ old(·|x_t)).
    `marginals_of_new` is forward_pass(new, dynamics). Sum it for the trajectory KL.
    """
    T, dU, dX = new.K.shape
    if old.K.shape != new.K.shape or marginals_of_new.mean.shape != (T, dX + dU):
        raise ValueError(f"controllers (K {new.K.shape}, {old.K.shape}) and marginals "
                         f"(mean {marginals_of_new.mean.shape}) must share T, dX, dU")
    mean_x = marginals_of_new.mean[:, :dX]
    covar_x = marginals_of_new.covar[:, :dX, :dX]
    return _expected_conditional_kl(new.K, new.k, new.covar, _logdet_from_chol(new.chol),
                                    old.K, old.k, old.inv_covar, _logdet_from_chol(old.chol),
                                    mean_x, covar_x)


# ---------------------------------------------------------------- batched backward/forward in η

@dataclass
class _EtaBatch:
    """
    Hold controllers and their KL to the anchor for B values of η.

    Controllers and their KL to the anchor for B values of η. failed_step (B,) as in
    RiccatiResult; kl (B,) is +inf where the backward pass failed.
    """

    eta: np.ndarray
    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray
    Quu: np.ndarray
    failed_step: np.ndarray
    kl_per_step: np.ndarray
    kl: np.ndarray
    mean_x: np.ndarray
    covar_x: np.ndarray

    def controller(self, b: int) -> LinearGaussianController:
        covar = self.covar[b].copy()
        return LinearGaussianController(K=self.K[b].copy(), k=self.k[b].copy(), covar=covar,
                                        chol=np.linalg.cholesky(covar),
                                        inv_covar=self.Quu[b].copy())


class _KlProblem:
    """Everything about (dynamics, cost, anchor) that does not depend on η."""

    def __init__(self, dynamics: LinearGaussianDynamics, cost: QuadraticCost,
                 anchor: LinearGaussianController):
        T, dX, dU = _check_problem(dynamics, cost, {"anchor": anchor})
        self.dynamics, self.T, self.dX, self.dU = dynamics, T, dX, dU
        # Optimise in anchor-relative actions δ = u − K̄x − k̄: with y = [x; 1; u] = S ŷ,
        # ŷ = [x; 1; δ], the anchor's −log p̄ is ½ δᵀP̄δ alone. Written in u instead, its share
        # of V = Q_ss − Q_su Q_uu⁻¹ Q_us is K̄ᵀP̄K̄ − K̄ᵀP̄P̄⁻¹P̄K̄: exactly zero, but computed
        # as a difference of large numbers, which an ill-conditioned P̄ turns indefinite at
        # large η.
        s = dX + 1
        S = np.zeros((T, s + dU, s + dU))
        S[:, :s, :s] = np.eye(s)
        S[:, s:, :dX], S[:, s:, dX], S[:, s:, s:] = anchor.K, anchor.k, np.eye(dU)
        self.F_hom = homogeneous_dynamics(dynamics.F, dynamics.f) @ S[:-1]
        self.cost_hom = _sym(np.swapaxes(S, 1, 2) @ homogeneous_cost(_sym(cost.C), cost.c, None,
                                                                     dX) @ S)
        self.anchor_hom = np.zeros_like(self.cost_hom)
        self.anchor_hom[:, s:, s:] = _sym(anchor.inv_covar)
        self.anchor = anchor
        self.anchor_logdet = _logdet_from_chol(anchor.chol)

    def evaluate(self, eta: np.ndarray) -> _EtaBatch:
        """Backward pass, forward pass and KL to the anchor for each η in eta (B,)."""
        eta = np.asarray(eta, dtype=float)
        dX = self.dX
        riccati = riccati_recursion(self.F_hom, self.cost_hom, dX, cost_scale=1.0 / eta,
                                    cost_offset=self.anchor_hom, keep_value=False)
        failed = riccati.failed_step >= 0
        a = self.anchor   # gains of δ = u − K̄x − k̄, back to gains of u
        K, k, covar = riccati.gains[..., :dX] + a.K, riccati.gains[..., dX] + a.k, riccati.covar
        if failed.any():   # keep failed members finite so the forward pass stays quiet
            K, k, covar = K.copy(), k.copy(), covar.copy()
            K[failed], k[failed], covar[failed] = 0.0, 0.0, np.eye(self.dU)
        with np.errstate(over="ignore", invalid="ignore"):
            mean_x, covar_x = _state_marginals(K, k, covar, self.dynamics)
            kl_t = _expected_conditional_kl(K, k, covar, -_logdet_from_chol(riccati.chol_Quu),
                                            a.K, a.k, a.inv_covar, self.anchor_logdet, mean_x,
                                            covar_x)
        kl_t[failed] = np.inf
        kl = kl_t.sum(axis=1)
        kl[~np.isfinite(kl)] = np.inf
        return _EtaBatch(eta=eta, K=K, k=k, covar=covar, Quu=riccati.Quu,
                         failed_step=riccati.failed_step, kl_per_step=kl_t, kl=kl,
                         mean_x=mean_x, covar_x=covar_x)


def _backward_with_retry(problem: _KlProblem, eta: float, settings: TrajOptSettings
                         ) -> tuple[_EtaBatch, int]:
    """
    Return the batch with the smallest η' ≥ eta whose Q_uu is positive definite.

    The batch holding the smallest η' ≥ eta (on eta · retry_factor^j) with positive
    definite Q_uu at every step, and that member's index.
    """
    batch = problem.evaluate(np.array([eta]))
    if batch.failed_step[0] < 0:
        return batch, 0
    while True:
        if eta >= settings.max_eta:
            raise TrajectoryOptimizationError(
                f"Q_uu is not positive definite at time step {batch.failed_step[-1]} even for "
                f"η = {eta:.3g} (the bound TrajOptSettings.max_eta = {settings.max_eta:.3g}); "
                f"check the dynamics and cost for NaN or extreme conditioning")
        etas = np.minimum(eta * settings.retry_factor ** np.arange(1, 9), settings.max_eta)
        batch = problem.evaluate(etas)
        ok = np.flatnonzero(batch.failed_step < 0)
        if ok.size:
            return batch, int(ok[0])
        eta = float(etas[-1])


def backward_pass_with_eta(dynamics: LinearGaussianDynamics, cost: QuadraticCost,
                           anchor: LinearGaussianController, eta: float,
                           settings: TrajOptSettings | None = None
                           ) -> tuple[LinearGaussianController, float]:
    """
    Run backward_pass and return the η actually used as well.

    backward_pass, also returning the η actually used (larger than `eta` when Q_uu
    was not positive definite at `eta`).
    """
    settings = settings or TrajOptSettings()
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    batch, b = _backward_with_retry(_KlProblem(dynamics, cost, anchor), float(eta), settings)
    return batch.controller(b), float(batch.eta[b])


def backward_pass(dynamics: LinearGaussianDynamics, cost: QuadraticCost,
                  anchor: LinearGaussianController, eta: float,
                  settings: TrajOptSettings | None = None) -> LinearGaussianController:
    """
    Return the controller minimising the KL Lagrangian divided by η.

    The controller minimising E[Σ_t l_t/η − log p̄(u_t|x_t)] − H(p) (the KL Lagrangian
    divided by η): LQR on the cost C/η + anchor precision terms, Σ_t = Q_uu,t⁻¹.

    If Q_uu is not positive definite, η is increased geometrically (settings.retry_factor)
    until it is; TrajectoryOptimizationError only past settings.max_eta. Use
    backward_pass_with_eta to learn the η used.
    """
    return backward_pass_with_eta(dynamics, cost, anchor, eta, settings)[0]


# ---------------------------------------------------------------- dual search on η

def _interpolate_log_eta(eta: np.ndarray, kl: np.ndarray, target: float) -> float:
    """
    Return log η where log KL, interpolated monotonically, meets log target.

    Log η where a monotone (PCHIP) interpolation of log η against log KL meets log target.
    eta, kl: evaluated points with 0 < kl < inf, any order; needs points on both sides.
    """
    order = np.argsort(eta)
    log_eta, log_kl = np.log(eta[order]), np.log(kl[order])
    keep = [0]                                   # KL falls with η; drop points breaking that
    for i in range(1, len(log_eta)):
        if log_kl[i] < log_kl[keep[-1]]:
            keep.append(i)
    log_eta, log_kl = log_eta[keep][::-1], log_kl[keep][::-1]     # increasing in log KL
    if len(log_eta) < 2:
        return float(log_eta[0])
    return float(PchipInterpolator(log_kl, log_eta, extrapolate=True)(math.log(target)))


def _spread(center: float, half_width: float, points: int) -> np.ndarray:
    """Points values evenly spaced over center ± half_width (just center for one point)."""
    if points == 1:
        return np.array([center])
    return center + np.linspace(-half_width, half_width, points)


def _next_log_etas(eta: np.ndarray, kl: np.ndarray, kl_step: float, previous_bracket: float,
                   settings: TrajOptSettings) -> tuple[np.ndarray, float]:
    """
    Return the log η values of the next batch.

    Log η values for the next batch, given all η tried so far, their KL (+inf where
    Q_uu failed) and the log-width of the previous bracket; returns them with the current
    bracket's log-width (inf while ε is not bracketed).
    """
    ln10 = math.log(10.0)
    over = kl > kl_step                       # η too small (or failed): KL over budget
    if not over.any():                        # every η too large: step down
        steps = np.arange(1, settings.grid_points + 1)
        return math.log(eta.min()) - settings.extension_decades * ln10 * steps, np.inf
    if over.all():                            # every η too small: KL ∝ η⁻² for large η
        i = int(np.argmax(eta))
        jump = (0.5 * math.log(kl[i] / kl_step) if np.isfinite(kl[i])
                else settings.extension_decades * ln10)
        center = math.log(eta[i]) + max(jump, 0.1)
        log_etas = _spread(center, settings.grid_decades * ln10, settings.grid_points)
        return log_etas[log_etas > math.log(eta[i])], np.inf
    # The bracket ends at the smallest η within budget. KL need not be monotone in η (an η
    # can fail, counting as over budget, above one that succeeds), so its lower end is the
    # largest η over budget below that one, if any; else keep stepping down.
    eta_b = eta[~over].min()
    below = over & (eta < eta_b)
    if not below.any():
        steps = np.arange(1, settings.grid_points + 1)
        return math.log(eta_b) - settings.extension_decades * ln10 * steps, np.inf
    log_a, log_b = math.log(eta[below].max()), math.log(eta_b)
    width = log_b - log_a
    usable = np.isfinite(kl) & (kl > 1e-9 * kl_step)
    order = np.argsort(eta[usable])
    monotone = np.all(np.diff(kl[usable][order]) <= 0)
    if (monotone and np.isfinite(kl[below]).all() and usable[~over].any()
            and width < 0.9 * previous_bracket):
        log_star = _interpolate_log_eta(eta[usable], kl[usable], kl_step)
    else:   # a failed end, a vanishing KL or a stuck interpolation: bisect
        log_star = 0.5 * (log_a + log_b)
    margin = 0.02 * width
    log_etas = _spread(log_star, 0.25 * width, settings.refine_points)
    return np.clip(log_etas, log_a + margin, log_b - margin), width


def optimize_trajectory(dynamics: LinearGaussianDynamics, cost: QuadraticCost,
                        anchor: LinearGaussianController, kl_step: float, eta_init: float = 1.0,
                        settings: TrajOptSettings | None = None
                        ) -> tuple[LinearGaussianController, float, dict]:
    """
    Minimise the expected cost subject to the KL bound, by a dual search on η.

    Minimise the expected cost subject to KL(p(τ) ‖ anchor(τ)) ≤ kl_step (ε, the total over
    the T steps), by a dual search on η.

    Stops when |KL − ε| ≤ kl_tolerance · ε ("kl_met"); or at η = min_eta with KL < ε
    ("min_eta": the bound is slack, the unconstrained optimum is near enough the anchor); or at
    max_eta if even that η cannot bring the KL down to ε ("max_eta", not converged). η values
    whose Q_uu is not positive definite count as too small. Failing all that within
    max_batches ("max_batches", not converged) it returns the η with the largest KL within
    budget.

    Returns
    -------
        (controller, eta, info) with info holding "kl" (total), "kl_per_step" (T,),
        "kl_target" (ε), "expected_cost" (total under the fitted dynamics),
        "expected_cost_per_step" (T,), "iterations" (batches run), "evaluations" (η values
        tried), "converged" and "status".

    Raises
    ------
        TrajectoryOptimizationError if no η ≤ max_eta gives a positive-definite Q_uu.

    """
    settings = settings or TrajOptSettings()
    if not (kl_step > 0 and np.isfinite(kl_step)):
        raise ValueError(f"kl_step must be a positive finite KL budget, got {kl_step}")
    if not (eta_init > 0 and np.isfinite(eta_init)):
        raise ValueError(f"eta_init must be positive and finite, got {eta_init}")
    problem = _KlProblem(dynamics, cost, anchor)
    lo, hi = math.log(settings.min_eta), math.log(settings.max_eta)
    center = min(max(math.log(eta_init), lo), hi)
    log_etas = _spread(center, settings.grid_decades * math.log(10.0), settings.grid_points)
    bracket = np.inf

    batches: list[_EtaBatch] = []
    for iteration in range(1, settings.max_batches + 1):
        log_etas = np.unique(np.clip(log_etas, lo, hi))
        etas = np.exp(log_etas)
        etas[log_etas == lo], etas[log_etas == hi] = settings.min_eta, settings.max_eta   # exactly
        batches.append(problem.evaluate(etas))
        eta = np.concatenate([b.eta for b in batches])
        kl = np.concatenate([b.kl for b in batches])
        gap = np.abs(kl - kl_step)
        if gap.min() <= settings.kl_tolerance * kl_step:
            choice, status = int(np.argmin(gap)), "kl_met"
            break
        if (kl < kl_step).all() and eta.min() <= settings.min_eta:
            choice, status = int(np.argmin(eta)), "min_eta"
            break
        if (kl > kl_step).all() and eta.max() >= settings.max_eta:
            if not np.isfinite(kl).any():
                raise TrajectoryOptimizationError(
                    f"Q_uu is not positive definite at time step {batches[-1].failed_step.max()} "
                    f"even for η = {settings.max_eta:.3g} (the bound TrajOptSettings.max_eta); "
                    f"check the dynamics and cost for NaN or extreme conditioning")
            choice, status = int(np.argmin(kl)), "max_eta"
            break
        log_etas, bracket = _next_log_etas(eta, kl, kl_step, bracket, settings)
    else:
        within = np.where(kl <= kl_step, kl, -np.inf)
        choice = int(np.argmax(within)) if np.isfinite(within).any() else int(np.argmin(gap))
        status = "max_batches"

    offsets = np.cumsum([0] + [b.eta.size for b in batches])
    i = int(np.searchsorted(offsets, choice, side="right")) - 1
    batch, j = batches[i], choice - offsets[i]
    controller = batch.controller(j)
    marginals = _joint_marginals(batch.K[j], batch.k[j], batch.covar[j], batch.mean_x[j],
                                 batch.covar_x[j])
    cost_per_step = expected_cost(marginals, cost)
    info = {
        "kl": float(batch.kl[j]), "kl_per_step": batch.kl_per_step[j].copy(),
        "kl_target": float(kl_step),
        "expected_cost": float(cost_per_step.sum()), "expected_cost_per_step": cost_per_step,
        "iterations": iteration, "evaluations": int(eta.size),
        "converged": status in ("kl_met", "min_eta"), "status": status,
    }
    return controller, float(batch.eta[j]), info


# ---------------------------------------------------------------- step size

def adjust_step(kl_step_mult: float, previous_cost_estimate: float, predicted_new_cost: float,
                actual_new_cost: float, settings: KlStepSettings | None = None) -> float:
    """
    Return the new KL step multiplier by GPS's step-size rule.

    GPS's step-size rule. All three costs are Laplace (model-based) estimates of total cost.

    previous_cost_estimate: the previous controller under the previous model;
    predicted_new_cost: the current controller under the previous model (what the last
        update expected to achieve);
    actual_new_cost: the current controller under the newly fitted model.

    Modelling the improvement as I(KL) = a·KL + b·KL² through the predicted and actual
    improvements gives the KL that maximises it, a change of the multiplier by
    predicted / (2 (predicted − actual)), clipped to [min_mult_change, max_mult_change];
    the new multiplier is clipped to [min_step_mult, max_step_mult].
    """
    settings = settings or KlStepSettings()
    values = (kl_step_mult, previous_cost_estimate, predicted_new_cost, actual_new_cost)
    if not all(np.isfinite(v) for v in values) or not kl_step_mult > 0:
        raise ValueError(f"need a positive multiplier and finite costs, got {values}")
    predicted = previous_cost_estimate - predicted_new_cost
    actual = previous_cost_estimate - actual_new_cost
    change = predicted / (2.0 * max(settings.min_gap, predicted - actual))
    change = min(max(change, settings.min_mult_change), settings.max_mult_change)
    return float(min(max(change * kl_step_mult, settings.min_step_mult), settings.max_step_mult))
