"""Seeded fuzzing of the LQR and the KL-bounded trajectory optimisation on ill-posed inputs.

The reference implementation (cbfinn/gps) stops with "not positive definite" errors on
badly conditioned local models. Here 1000 random small problems, each with a random mix of
pathologies (near-singular or badly scaled dynamics, degenerate noise, cost Hessians
with tiny and huge eigenvalues, concave action costs, anchors with tiny or huge
covariances), go through core.lqr.lqr_backward (on the convex ones, where it must
succeed) and core.traj_opt.optimize_trajectory (on all of them). Allowed outcomes: a
finite solution whose covariances are symmetric positive definite, or, rarely, the
documented TrajectoryOptimizationError past TrajOptSettings.max_eta. Nothing else.
"""
from __future__ import annotations

import collections
import time
import warnings

import numpy as np
import pytest

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import QuadraticCost
from mbpl_ros.core.dynamics import LinearGaussianDynamics
from mbpl_ros.core.lqr import lqr_backward
from mbpl_ros.core.traj_opt import (TrajectoryOptimizationError, TrajOptSettings, backward_pass_with_eta,
                                    expected_cost, forward_pass, kl_divergence, optimize_trajectory)

N_CASES = 1000
SEED = 20240611
# TrajectoryOptimizationError is allowed, but on these inputs (all finite, every condition
# number below ~1e12) it should essentially never happen: at most this fraction of the cases.
MAX_ERROR_FRACTION = 0.005


# ---------------------------------------------------------------- random ill-posed problems

def log_uniform(rng, low_exponent, high_exponent, size=None):
    return 10.0 ** rng.uniform(low_exponent, high_exponent, size)


def random_rotation(rng, d):
    Q, R = np.linalg.qr(rng.normal(size=(d, d)))
    return Q * np.sign(np.diag(R))


def spd_with_spectrum(rng, eigenvalues):
    """A symmetric matrix Q diag(eigenvalues) Qᵀ with a random rotation Q."""
    Q = random_rotation(rng, len(eigenvalues))
    return (Q * eigenvalues) @ Q.T


def spread_spectrum(rng, d, low_exponent, high_exponent):
    """d eigenvalues spanning 10^low … 10^high: the extremes always present (for d >= 2)."""
    exponents = rng.uniform(low_exponent, high_exponent, d)
    exponents[:2] = (low_exponent, high_exponent)[:d]
    return 10.0 ** rng.permutation(exponents)


COVARIANCE_KINDS = ("ordinary", "tiny", "huge", "ill_conditioned", "singular")


def covariance_kind(rng, traits, name):
    kind = str(rng.choice(COVARIANCE_KINDS, p=[0.4, 0.15, 0.15, 0.2, 0.1]))
    traits.add(f"{name}:{kind}")
    return kind


def covariance(rng, d, kind):
    """A (d, d) covariance: ordinary, tiny, huge, badly conditioned or singular (PSD)."""
    if kind == "ordinary":
        return spd_with_spectrum(rng, log_uniform(rng, -3, 0, d))
    if kind == "tiny":
        return spd_with_spectrum(rng, log_uniform(rng, -10, -6, d))
    if kind == "huge":
        return spd_with_spectrum(rng, log_uniform(rng, 3, 6, d))
    if kind == "ill_conditioned":
        return spd_with_spectrum(rng, spread_spectrum(rng, d, -8, 2))
    rank = int(rng.integers(0, d))
    eigenvalues = np.zeros(d)
    eigenvalues[:rank] = log_uniform(rng, -3, 0, rank)
    return spd_with_spectrum(rng, eigenvalues)


def random_case(rng):
    """One (dynamics, cost, anchor, kl_step, eta_init, traits) problem; traits names the
    pathologies it has (for the failure report)."""
    T, dX, dU = int(rng.integers(5, 31)), int(rng.integers(2, 13)), int(rng.integers(1, 5))
    n = dX + dU
    traits: set[str] = set()

    # Dynamics: a near-identity discrete-time system, then pathologies.
    Fx = np.eye(dX) + 0.3 * rng.normal(size=(T - 1, dX, dX)) / np.sqrt(dX)
    Fu = 0.5 * rng.normal(size=(T - 1, dX, dU))
    f = 0.1 * rng.normal(size=(T - 1, dX))
    state_unit, action_unit = np.ones(dX), np.ones(dU)
    if rng.random() < 0.2:                    # some directions (nearly) annihilated
        traits.add("near_singular_Fx")
        left, singular_values, right = np.linalg.svd(Fx)
        k = int(rng.integers(1, dX + 1))
        singular_values[:, -k:] = log_uniform(rng, -12, -6, (T - 1, k))
        Fx = (left * singular_values[:, None, :]) @ right
    if rng.random() < 0.15:                   # nearly no control authority, or collinear inputs
        traits.add("degenerate_Fu")
        if rng.random() < 0.5:
            Fu = Fu * log_uniform(rng, -8, -4)
        else:
            Fu = Fu[:, :, :1] * (1.0 + 1e-8 * rng.normal(size=(T - 1, dX, dU)))
    if rng.random() < 0.15:                   # explosive for a few steps
        traits.add("unstable")
        Fx = Fx * rng.uniform(1.1, 1.4)
    if rng.random() < 0.2:                    # states in wildly different units
        traits.add("badly_scaled_state")
        state_unit = log_uniform(rng, -3, 3, dX)      # x_new = state_unit * x
        Fx = state_unit[:, None] * Fx / state_unit[None, :]
        Fu = state_unit[:, None] * Fu
        f = state_unit * f
    if rng.random() < 0.15:                   # actions in wildly different units
        traits.add("badly_scaled_action")
        action_unit = log_uniform(rng, -3, 3, dU)     # u_new = action_unit * u
        Fu = Fu / action_unit
    kind = covariance_kind(rng, traits, "dynamics_covar")
    dynamics_covar = np.stack([covariance(rng, dX, kind) for _ in range(T - 1)])
    dynamics = LinearGaussianDynamics(
        F=np.concatenate([Fx, Fu], axis=2), f=f, covar=dynamics_covar, x0_mean=rng.normal(size=dX),
        x0_covar=covariance(rng, dX, covariance_kind(rng, traits, "x0_covar")))

    # Cost: PSD with a spread spectrum, then possibly concave in u or rank-deficient.
    low, high = (-8, 4) if rng.random() < 0.5 else (-3, 2)
    if low == -8:
        traits.add("cost_spectrum_1e-8_to_1e4")
    C = np.stack([spd_with_spectrum(rng, spread_spectrum(rng, n, low, high)) for _ in range(T)])
    kind = rng.choice(["convex", "concave_action", "indefinite", "rank_deficient"], p=[0.55, 0.2, 0.1, 0.15])
    traits.add(f"cost:{kind}")
    if kind == "concave_action":              # −log p̄ must make up for it: only large η work
        C[:, dX:, dX:] -= log_uniform(rng, -2, 4) * np.eye(dU)
    elif kind == "indefinite":
        C = C - log_uniform(rng, -2, 2) * np.eye(n)
    elif kind == "rank_deficient":            # e.g. a cost on the state only: Cuu = 0
        C[:, :, dX:] = 0.0
        C[:, dX:, :] = 0.0
    c = log_uniform(rng, -3, 3) * rng.normal(size=(T, n))
    cost = QuadraticCost(C=C, c=c, c0=rng.normal(size=T))

    # Anchor: the previous controller (or a linearised policy), with a random covariance and
    # gains expressed in the same (possibly bad) units as the dynamics, so that its closed
    # loop is no more explosive than the unscaled one.
    kind = covariance_kind(rng, traits, "anchor_covar")
    anchor_covar = np.stack([covariance(rng, dU, kind) for _ in range(T)])
    if kind == "singular":                    # a controller's Σ must be PD: nearly singular then
        anchor_covar += 1e-8 * np.eye(dU)
    anchor = LinearGaussianController.from_covar(
        log_uniform(rng, -3, -0.5) * action_unit[:, None] * rng.normal(size=(T, dU, dX)) / state_unit,
        action_unit * rng.normal(size=(T, dU)), anchor_covar)
    kl_step = float(T * log_uniform(rng, -2, 2))
    eta_init = float(log_uniform(rng, -6, 6))
    return dynamics, cost, anchor, kl_step, eta_init, traits


def is_convex(cost: QuadraticCost, dX: int) -> bool:
    """Every C_t PSD and every action block C_uu,t safely PD: then Q_uu ⪰ C_uu at every
    step in exact arithmetic, and lqr_backward must solve the problem."""
    eig = np.linalg.eigvalsh(cost.C)
    eig_uu = np.linalg.eigvalsh(cost.C[:, dX:, dX:])
    scale = np.abs(eig).max(axis=1)
    return bool((eig.min(axis=1) >= -1e-12 * scale).all() and (eig_uu.min(axis=1) > 1e-6 * scale).all())


# ---------------------------------------------------------------- checks

def assert_symmetric_pd(A, name):
    """A (..., d, d) finite, symmetric to rounding and positive definite (a Cholesky factor exists)."""
    assert np.isfinite(A).all(), f"{name} is not finite"
    scale = np.abs(A).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(A - np.swapaxes(A, -1, -2)) <= 1e-12 * scale).all(), f"{name} is not symmetric"
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise AssertionError(f"{name} is not positive definite: smallest eigenvalue "
                             f"{np.linalg.eigvalsh(A).min():.3g}") from None
    assert np.isfinite(L).all() and (np.diagonal(L, axis1=-2, axis2=-1) > 0).all(), f"{name}: bad Cholesky"


def assert_symmetric_psd(A, name, rtol=1e-9):
    assert np.isfinite(A).all(), f"{name} is not finite"
    scale = np.abs(A).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(A - np.swapaxes(A, -1, -2)) <= 1e-12 * scale).all(), f"{name} is not symmetric"
    eig = np.linalg.eigvalsh(A)
    assert (eig >= -rtol * scale[..., 0]).all(), f"{name} is not PSD: smallest eigenvalue {eig.min():.3g}"


def check_lqr(dynamics, cost):
    """lqr_backward on a convex problem: no exception, finite gains and value function,
    symmetric V, Q_uu symmetric PD and reproduced by its Cholesky factor."""
    solution = lqr_backward(dynamics.F, dynamics.f, cost.C, cost.c, cost.c0)
    for name in ("K", "k", "V", "v", "value_constant", "Quu", "chol_Quu"):
        assert np.isfinite(getattr(solution, name)).all(), f"lqr_backward: {name} is not finite"
    assert_symmetric_psd(solution.V, "lqr_backward: V")
    assert_symmetric_pd(solution.Quu, "lqr_backward: Quu")
    L = solution.chol_Quu
    scale = np.abs(solution.Quu).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(L @ np.swapaxes(L, -1, -2) - solution.Quu) <= 1e-8 * scale).all(), \
        "lqr_backward: chol_Quu does not reproduce Quu"


def check_controller(controller, eta, info, kl_step, settings):
    """What optimize_trajectory returns: a finite controller with symmetric PD covariances
    (and the factor and inverse that go with them), η within bounds, a finite KL ≥ 0 that
    meets ε when the search says so, a finite expected cost."""
    for name in ("K", "k", "covar", "chol", "inv_covar"):
        assert np.isfinite(getattr(controller, name)).all(), f"controller.{name} is not finite"
    assert_symmetric_pd(controller.covar, "controller.covar")
    assert_symmetric_pd(controller.inv_covar, "controller.inv_covar")
    L = controller.chol
    scale = np.abs(controller.covar).max(axis=(-2, -1), keepdims=True)
    assert (np.abs(L @ np.swapaxes(L, -1, -2) - controller.covar) <= 1e-8 * scale).all(), \
        "controller.chol does not reproduce controller.covar"
    assert np.isfinite(eta) and settings.min_eta <= eta <= settings.max_eta, f"η = {eta}"
    assert info["status"] in ("kl_met", "min_eta", "max_eta", "max_batches"), info["status"]
    assert np.isfinite(info["kl"]) and info["kl"] >= 0.0, f"KL = {info['kl']}"
    assert np.isfinite(info["kl_per_step"]).all() and (info["kl_per_step"] >= 0).all(), "KL per step"
    assert np.isfinite(info["expected_cost"]) and np.isfinite(info["expected_cost_per_step"]).all(), \
        "expected cost is not finite"
    if info["status"] == "kl_met":
        assert abs(info["kl"] - kl_step) <= settings.kl_tolerance * kl_step, "status kl_met but KL off ε"


def check_downstream(controller, dynamics, cost, anchor):
    """What LQR-FLM does next with the controller: forward pass (finite mean, symmetric PSD
    covariance), expected cost and KL to the anchor (finite, KL ≥ 0)."""
    marginals = forward_pass(controller, dynamics)
    assert np.isfinite(marginals.mean).all(), "forward_pass: mean is not finite"
    assert_symmetric_psd(marginals.covar, "forward_pass: covar")
    assert np.isfinite(expected_cost(marginals, cost)).all(), "expected_cost is not finite"
    kl = kl_divergence(controller, anchor, marginals)
    assert np.isfinite(kl).all() and (kl >= 0).all(), "kl_divergence is not finite and >= 0"


# ---------------------------------------------------------------- the fuzz run

@pytest.fixture(scope="module")
def fuzz_results():
    """Run every case once and sort the outcomes; each failure is recorded with its case
    number, sizes and traits."""
    rng = np.random.default_rng(SEED)
    settings = TrajOptSettings()
    results = {"lqr_checked": 0, "returned": 0, "status": collections.Counter(),
               "traits": collections.Counter(), "seconds": 0.0}
    for key in ("lqr_failures", "exceptions", "traj_errors", "controller_failures",
                "downstream_failures", "warnings"):
        results[key] = []
    start = time.perf_counter()
    for case in range(N_CASES):
        dynamics, cost, anchor, kl_step, eta_init, traits = random_case(rng)
        results["traits"].update(traits)
        label = f"case {case} (T={dynamics.T}, dX={dynamics.dX}, dU={dynamics.dU}; {sorted(traits)})"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if is_convex(cost, dynamics.dX):
                results["lqr_checked"] += 1
                try:
                    check_lqr(dynamics, cost)
                except Exception as error:                # noqa: BLE001 -- any exception is a finding
                    results["lqr_failures"].append(f"{label}: {type(error).__name__}: {error}")
            try:
                controller, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step, eta_init, settings)
            except TrajectoryOptimizationError as error:
                results["traj_errors"].append(f"{label}: {error}")
                controller = None
            except Exception as error:                    # noqa: BLE001
                results["exceptions"].append(f"{label}: {type(error).__name__}: {error}")
                controller = None
            if controller is not None:
                results["returned"] += 1
                results["status"][info["status"]] += 1
                for key, check, args in (("controller_failures", check_controller,
                                          (controller, eta, info, kl_step, settings)),
                                         ("downstream_failures", check_downstream,
                                          (controller, dynamics, cost, anchor))):
                    try:
                        check(*args)
                    except Exception as error:            # noqa: BLE001
                        results[key].append(f"{label}: {type(error).__name__}: {error}")
        results["warnings"] += [f"{label}: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
                                for w in caught]
    results["seconds"] = time.perf_counter() - start
    return results


def _report(failures: list[str], out_of: int, what: str) -> str:
    return f"{len(failures)} of {out_of} cases {what}:\n" + "\n".join(failures[:10])


def test_fuzz_covers_every_pathology(fuzz_results):
    """The generator really produces each pathology many times (else the test proves little)."""
    traits = fuzz_results["traits"]
    for trait in ("near_singular_Fx", "degenerate_Fu", "unstable", "badly_scaled_state", "badly_scaled_action",
                  "cost_spectrum_1e-8_to_1e4", "cost:concave_action", "cost:indefinite", "cost:rank_deficient",
                  "anchor_covar:tiny", "anchor_covar:huge", "anchor_covar:ill_conditioned",
                  "anchor_covar:singular", "dynamics_covar:singular", "x0_covar:tiny", "x0_covar:huge"):
        assert traits[trait] >= 50, f"only {traits[trait]} cases with {trait}"
    assert fuzz_results["lqr_checked"] >= 300


def test_lqr_backward_solves_every_convex_case(fuzz_results):
    assert not fuzz_results["lqr_failures"], _report(
        fuzz_results["lqr_failures"], fuzz_results["lqr_checked"], "(convex) failed in lqr_backward")


def test_returned_controllers_are_finite_symmetric_pd(fuzz_results):
    assert fuzz_results["returned"] >= 0.9 * N_CASES
    assert not fuzz_results["controller_failures"], _report(
        fuzz_results["controller_failures"], fuzz_results["returned"], "returned a bad controller")


def test_no_numpy_warnings(fuzz_results):
    """Overflow or invalid-value warnings would mean non-finite intermediate results."""
    assert not fuzz_results["warnings"], _report(fuzz_results["warnings"], N_CASES, "warned")


def test_no_exception_but_the_documented_one(fuzz_results):
    assert not fuzz_results["exceptions"], _report(fuzz_results["exceptions"], N_CASES, "raised")


def test_trajectory_optimization_error_is_rare(fuzz_results):
    assert len(fuzz_results["traj_errors"]) <= MAX_ERROR_FRACTION * N_CASES, _report(
        fuzz_results["traj_errors"], N_CASES, "raised TrajectoryOptimizationError")


def _converged_fraction(fuzz_results) -> float:
    status = fuzz_results["status"]
    return (status["kl_met"] + status["min_eta"]) / fuzz_results["returned"]


def test_search_converges_on_most_cases(fuzz_results):
    """Past robustness, the η search should still meet the bound (or find it slack)."""
    assert _converged_fraction(fuzz_results) >= 0.85, dict(fuzz_results["status"])


def test_search_converges_on_almost_every_case(fuzz_results):
    assert _converged_fraction(fuzz_results) >= 0.97, dict(fuzz_results["status"])


def test_forward_pass_of_every_result_stays_psd(fuzz_results):
    """Forward pass, expected cost and KL of every returned controller. (Outside this
    envelope, with unstable closed loops and state covariances spanning more than ~1e16,
    forward_pass's Σ' = A Σ Aᵀ + … loses PSD: rounding leaves small negative eigenvalues
    that the unstable loop amplifies; a square-root propagation would not.)"""
    assert not fuzz_results["downstream_failures"], _report(
        fuzz_results["downstream_failures"], fuzz_results["returned"], "failed after the optimisation")


# ---------------------------------------------------------------- the mechanism, in isolation

ANCHOR_EIGENVALUE_MIN = 1e-8       # the anchor's covariance has eigenvalues 1e-8, 1, 100

@pytest.mark.parametrize("seed", range(5))
def test_large_eta_reproduces_an_ill_conditioned_anchor(seed):
    """As η → ∞ the KL-bounded optimum is the anchor itself, with a cost-to-go of
    (1/η)·(the anchor's expected cost) ≈ 0 — for any PD anchor covariance, here one with
    eigenvalues 1e-8, 1, 100 (the KUKA's mass-matrix-shaped initial covariances have a
    condition number of ~1e7)."""
    rng = np.random.default_rng(seed)
    T, dX, dU = 20, 6, 3
    F = np.concatenate([np.eye(dX) + 0.1 * rng.normal(size=(T - 1, dX, dX)),
                        0.5 * rng.normal(size=(T - 1, dX, dU))], axis=2)
    dynamics = LinearGaussianDynamics(F, np.zeros((T - 1, dX)), np.tile(0.01 * np.eye(dX), (T - 1, 1, 1)),
                                      np.ones(dX), 0.01 * np.eye(dX))
    cost = QuadraticCost(np.tile(np.eye(dX + dU), (T, 1, 1)), rng.normal(size=(T, dX + dU)), np.zeros(T))
    # Small gains: the anchor's closed loop stays stable, so its cost-to-go stays O(T) and
    # dividing by η makes it negligible.
    anchor = LinearGaussianController.from_covar(
        0.05 * rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)),
        spd_with_spectrum(rng, np.array([ANCHOR_EIGENVALUE_MIN, 1.0, 1e2])))
    eta = 1e12
    controller, eta_used = backward_pass_with_eta(dynamics, cost, anchor, eta)
    assert eta_used == eta, f"Q_uu was indefinite at η = {eta:g}; it needed η = {eta_used:g}"
    np.testing.assert_allclose(controller.K, anchor.K, atol=1e-6 * np.abs(anchor.K).max())
    np.testing.assert_allclose(controller.covar, anchor.covar, rtol=1e-6, atol=1e-6 * ANCHOR_EIGENVALUE_MIN)
