"""Trajectory optimisation under a KL bound: forward pass and KL against Monte Carlo, the
backward pass against an explicitly built augmented LQR problem and its limits in η, the
dual search on η, ill-conditioned inputs, and GPS's step-size rule."""
import numpy as np
import pytest

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import QuadraticCost
from mbpl_ros.core.dynamics import LinearGaussianDynamics
from mbpl_ros.core.lqr import lqr_backward
from mbpl_ros.core.traj_opt import (KlStepSettings, TrajectoryOptimizationError, TrajOptSettings,
                                    adjust_step, backward_pass, backward_pass_with_eta, expected_cost,
                                    forward_pass, kl_divergence, optimize_trajectory)


def random_spd(rng, d, scale=1.0):
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.2 * np.eye(d))


def random_problem(rng, T=10, dX=4, dU=2, dt=0.1):
    """Well-posed random dynamics (near-identity, damped), PD quadratic cost, random anchor."""
    Fx = np.eye(dX) * (1 - 0.05) + dt * rng.normal(size=(T - 1, dX, dX)) / np.sqrt(dX)
    Fu = dt * rng.normal(size=(T - 1, dX, dU))
    dynamics = LinearGaussianDynamics(
        F=np.concatenate([Fx, Fu], axis=2), f=0.05 * rng.normal(size=(T - 1, dX)),
        covar=np.stack([random_spd(rng, dX, 1e-3) for _ in range(T - 1)]),
        x0_mean=rng.normal(size=dX), x0_covar=random_spd(rng, dX, 0.01))
    n = dX + dU
    C = np.stack([random_spd(rng, n, 0.1) for _ in range(T)])
    C[:, :dX, :dX] += np.eye(dX)
    cost = QuadraticCost(C=C, c=rng.normal(size=(T, n)), c0=rng.normal(size=T))
    anchor = random_controller(rng, T, dX, dU)
    return dynamics, cost, anchor


def random_controller(rng, T, dX, dU, scale=1.0):
    return LinearGaussianController.from_covar(
        0.3 * rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)),
        np.stack([random_spd(rng, dU, 0.3 * scale) for _ in range(T)]))


def sample_trajectories(rng, dynamics, controller, N):
    """N rollouts under the linear-Gaussian dynamics: X (N, T, dX), U (N, T, dU)."""
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    X, U = np.zeros((N, T, dX)), np.zeros((N, T, dU))
    X[:, 0] = dynamics.x0_mean + rng.standard_normal((N, dX)) @ np.linalg.cholesky(dynamics.x0_covar).T
    for t in range(T):
        U[:, t] = (X[:, t] @ controller.K[t].T + controller.k[t]
                   + rng.standard_normal((N, dU)) @ controller.chol[t].T)
        if t < T - 1:
            Z = np.concatenate([X[:, t], U[:, t]], axis=1)
            X[:, t + 1] = (Z @ dynamics.F[t].T + dynamics.f[t]
                           + rng.standard_normal((N, dX)) @ np.linalg.cholesky(dynamics.covar[t]).T)
    return X, U


def log_policy(controller, X, U):
    """log p(u_t | x_t) (N, T)."""
    residual = U - controller.mean_actions(X)
    maha = np.einsum("nti,tij,ntj->nt", residual, controller.inv_covar, residual)
    logdet = 2 * np.log(np.diagonal(controller.chol, axis1=1, axis2=2)).sum(axis=1)
    return -0.5 * (maha + logdet + controller.dU * np.log(2 * np.pi))


# ---------------------------------------------------------------- forward pass, cost, KL

def test_forward_pass_matches_monte_carlo():
    rng = np.random.default_rng(0)
    dynamics, cost, controller = random_problem(rng)
    marginals = forward_pass(controller, dynamics)
    N = 40000
    X, U = sample_trajectories(rng, dynamics, controller, N)
    Z = np.concatenate([X, U], axis=2)
    # Mean: 5 standard errors; covariance entry (i, j): 5·sqrt((Σii Σjj + Σij²)/N).
    S = marginals.covar
    mean_se = np.sqrt(np.diagonal(S, axis1=1, axis2=2) / N)
    assert np.all(np.abs(Z.mean(axis=0) - marginals.mean) < 5 * mean_se)
    d = np.diagonal(S, axis1=1, axis2=2)
    cov_se = np.sqrt((d[:, :, None] * d[:, None, :] + S ** 2) / N)
    empirical = np.einsum("nti,ntj->tij", Z - Z.mean(0), Z - Z.mean(0)) / (N - 1)
    assert np.all(np.abs(empirical - S) < 5 * cov_se)
    # Expected cost against the sampled costs (5 standard errors of the mean).
    sampled = (0.5 * np.einsum("nti,tij,ntj->nt", Z, cost.C, Z) + np.einsum("ti,nti->nt", cost.c, Z)
               + cost.c0).sum(axis=1)
    assert abs(sampled.mean() - expected_cost(marginals, cost).sum()) < 5 * sampled.std() / np.sqrt(N)


def test_forward_covariance_exactly_symmetric_over_long_horizon():
    rng = np.random.default_rng(1)
    dynamics, _, controller = random_problem(rng, T=200, dX=6, dU=3)
    S = forward_pass(controller, dynamics).covar
    assert np.array_equal(S, S.transpose(0, 2, 1))
    assert np.linalg.eigvalsh(S).min() > 0


def test_kl_zero_for_identical_and_positive_otherwise():
    rng = np.random.default_rng(2)
    dynamics, _, a = random_problem(rng)
    np.testing.assert_allclose(kl_divergence(a, a, forward_pass(a, dynamics)), 0.0, atol=1e-12)
    for _ in range(5):
        b = random_controller(rng, a.T, a.dX, a.dU)
        kl = kl_divergence(b, a, forward_pass(b, dynamics))
        assert kl.shape == (a.T,) and np.all(kl > 0)


def test_kl_matches_monte_carlo():
    """KL(p_new(τ) ‖ p_old(τ)) = E_new[Σ_t log p_new(u_t|x_t) − log p_old(u_t|x_t)] (the dynamics
    cancel); the sampled estimate must agree within 5 standard errors."""
    rng = np.random.default_rng(3)
    dynamics, _, old = random_problem(rng)
    new = random_controller(rng, old.T, old.dX, old.dU, scale=0.5)
    analytic = kl_divergence(new, old, forward_pass(new, dynamics))
    N = 40000
    X, U = sample_trajectories(rng, dynamics, new, N)
    log_ratio = log_policy(new, X, U) - log_policy(old, X, U)          # (N, T)
    per_step_se = log_ratio.std(axis=0) / np.sqrt(N)
    assert np.all(np.abs(log_ratio.mean(axis=0) - analytic) < 5 * per_step_se)
    total = log_ratio.sum(axis=1)
    assert abs(total.mean() - analytic.sum()) < 5 * total.std() / np.sqrt(N)


# ---------------------------------------------------------------- backward pass

def augmented_problem(cost, anchor, eta):
    """The cost C/η − log p̄(u|x) built entry by entry in [x; u] coordinates."""
    dX = anchor.dX
    P, K, k = anchor.inv_covar, anchor.K, anchor.k
    C = cost.C / eta
    c = cost.c / eta
    C[:, :dX, :dX] += np.einsum("tux,tuv,tvy->txy", K, P, K)
    C[:, :dX, dX:] -= np.einsum("tux,tuv->txv", K, P)
    C[:, dX:, :dX] -= np.einsum("tuv,tvx->tux", P, K)
    C[:, dX:, dX:] += P
    c[:, :dX] += np.einsum("tux,tuv,tv->tx", K, P, k)
    c[:, dX:] -= np.einsum("tuv,tv->tu", P, k)
    return C, c


@pytest.mark.parametrize("eta", [0.01, 1.0, 100.0])
def test_backward_pass_is_lqr_on_the_augmented_cost(eta):
    rng = np.random.default_rng(4)
    dynamics, cost, anchor = random_problem(rng)
    controller = backward_pass(dynamics, cost, anchor, eta)
    C, c = augmented_problem(cost, anchor, eta)
    reference = lqr_backward(dynamics.F, dynamics.f, C, c)
    np.testing.assert_allclose(controller.K, reference.K, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(controller.k, reference.k, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(controller.covar, np.linalg.inv(reference.Quu), rtol=1e-8)
    np.testing.assert_allclose(controller.inv_covar, reference.Quu, rtol=1e-8)
    # At the last step there is no future: Σ = (C_uu/η + P̄)⁻¹ in closed form.
    dX = anchor.dX
    Quu = cost.C[-1, dX:, dX:] / eta + anchor.inv_covar[-1]
    np.testing.assert_allclose(controller.covar[-1], np.linalg.inv(Quu), rtol=1e-10)


def test_large_eta_gives_the_anchor_and_small_eta_the_lqr_solution():
    rng = np.random.default_rng(5)
    dynamics, cost, anchor = random_problem(rng)
    near_anchor = backward_pass(dynamics, cost, anchor, 1e9)
    np.testing.assert_allclose(near_anchor.K, anchor.K, atol=1e-6)
    np.testing.assert_allclose(near_anchor.k, anchor.k, atol=1e-6)
    np.testing.assert_allclose(near_anchor.covar, anchor.covar, rtol=1e-6)
    assert kl_divergence(near_anchor, anchor, forward_pass(near_anchor, dynamics)).sum() < 1e-10
    lqr = lqr_backward(dynamics.F, dynamics.f, cost.C, cost.c)
    eta = 1e-8
    greedy = backward_pass(dynamics, cost, anchor, eta)
    np.testing.assert_allclose(greedy.K, lqr.K, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(greedy.k, lqr.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(greedy.covar / eta, np.linalg.inv(lqr.Quu), rtol=1e-4)


def test_indefinite_cost_raises_eta_instead_of_failing():
    rng = np.random.default_rng(6)
    dynamics, cost, anchor = random_problem(rng)
    dX = dynamics.dX
    cost.C[:, dX:, dX:] -= 5.0 * np.eye(dynamics.dU)       # concave in u: small η has no minimum
    controller, eta = backward_pass_with_eta(dynamics, cost, anchor, 1e-3)
    assert eta > 1e-3
    assert np.linalg.eigvalsh(controller.covar).min() > 0
    Quu_last = cost.C[-1, dX:, dX:] / eta + anchor.inv_covar[-1]
    assert np.linalg.eigvalsh(Quu_last).min() > 0
    with pytest.raises(TrajectoryOptimizationError, match=r"time step \d+ .*max_eta"):
        backward_pass(dynamics, cost, anchor, 1e-3, TrajOptSettings(min_eta=1e-6, max_eta=1e-2))
    # The dual search treats those η as too small and still meets the bound.
    _, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step=2.0, eta_init=1e-4)
    assert info["status"] == "kl_met" and abs(info["kl"] - 2.0) <= 0.2


def test_nan_dynamics_raise_a_clear_error():
    rng = np.random.default_rng(7)
    dynamics, cost, anchor = random_problem(rng)
    dynamics.F[3, 0, 0] = np.nan
    with pytest.raises(TrajectoryOptimizationError, match="max_eta"):
        optimize_trajectory(dynamics, cost, anchor, kl_step=1.0)


# ---------------------------------------------------------------- dual search

@pytest.mark.parametrize("seed", range(6))
def test_eta_search_meets_the_bound(seed):
    rng = np.random.default_rng(100 + seed)
    T, dX, dU = [(10, 4, 2), (30, 6, 3), (60, 8, 2)][seed % 3]
    dynamics, cost, anchor = random_problem(rng, T=T, dX=dX, dU=dU)
    for kl_step, eta_init in [(0.5, 1.0), (5.0, 1e3), (50.0, 1e-3)]:
        controller, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step, eta_init=eta_init)
        marginals = forward_pass(controller, dynamics)
        kl = kl_divergence(controller, anchor, marginals).sum()
        if info["status"] == "min_eta":          # the bound is slack even for the greedy solution
            assert kl < kl_step and eta == TrajOptSettings().min_eta
        else:
            assert info["status"] == "kl_met"
            assert abs(kl - kl_step) <= 0.1 * kl_step
        np.testing.assert_allclose(info["kl"], kl, rtol=1e-8)
        np.testing.assert_allclose(info["expected_cost"], expected_cost(marginals, cost).sum(), rtol=1e-8)
        np.testing.assert_allclose(controller.inv_covar @ controller.covar,
                                   np.broadcast_to(np.eye(dU), (T, dU, dU)), atol=1e-8)
        assert info["iterations"] <= TrajOptSettings().max_batches


def test_search_improves_cost_and_bigger_steps_improve_more():
    rng = np.random.default_rng(8)
    dynamics, cost, anchor = random_problem(rng, T=30, dX=6, dU=3)
    anchor_cost = expected_cost(forward_pass(anchor, dynamics), cost).sum()
    costs = [optimize_trajectory(dynamics, cost, anchor, eps)[2]["expected_cost"] for eps in (0.5, 5.0, 50.0)]
    assert anchor_cost > costs[0] > costs[1] > costs[2]


def test_slack_bound_stops_at_min_eta():
    rng = np.random.default_rng(9)
    dynamics, cost, anchor = random_problem(rng)
    _, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step=1e9)
    assert info["status"] == "min_eta" and eta == TrajOptSettings().min_eta and info["kl"] < 1e9


@pytest.mark.parametrize("case", ["singular_Quu", "badly_scaled_cost"])
def test_ill_conditioned_problems_give_finite_pd_covariances(case):
    rng = np.random.default_rng(10)
    T, dX, dU = 20, 4, 3
    dynamics, cost, anchor = random_problem(rng, T=T, dX=dX, dU=dU)
    if case == "singular_Quu":
        # The last action moves nothing and costs nothing; the anchor barely constrains it.
        dynamics.F[:, :, -1] = 0.0
        cost.C[:, -1, :] = cost.C[:, :, -1] = 0.0
        cost.c[:, -1] = 0.0
        covar = anchor.covar.copy()
        covar[:, -1, -1] += 1e10
        anchor = LinearGaussianController.from_covar(anchor.K, anchor.k, covar)
    else:
        scale = 10.0 ** rng.uniform(-6, 6, size=dX + dU)
        cost = QuadraticCost(C=cost.C * np.outer(scale, scale), c=cost.c * scale, c0=cost.c0)
    for kl_step in (0.1, 10.0):
        controller, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step)
        assert np.isfinite(eta) and info["converged"]
        for array in (controller.K, controller.k, controller.covar, controller.chol, controller.inv_covar):
            assert np.isfinite(array).all()
        assert np.linalg.eigvalsh(controller.covar).min() > 0
        assert abs(info["kl"] - kl_step) <= 0.1 * kl_step or info["status"] == "min_eta"


def test_inconsistent_shapes_are_rejected():
    rng = np.random.default_rng(11)
    dynamics, cost, anchor = random_problem(rng)
    short = LinearGaussianController.from_covar(anchor.K[:-1], anchor.k[:-1], anchor.covar[:-1])
    with pytest.raises(ValueError, match="anchor.K must have shape"):
        optimize_trajectory(dynamics, cost, short, 1.0)
    with pytest.raises(ValueError, match="kl_step"):
        optimize_trajectory(dynamics, cost, anchor, -1.0)


# ---------------------------------------------------------------- step size

def test_adjust_step_follows_gps_rule():
    rule = KlStepSettings(min_step_mult=0.1, max_step_mult=10.0, min_mult_change=0.1,
                          max_mult_change=5.0)
    # Half the predicted improvement realised: predicted / (2 (predicted − actual)) = 1.
    assert adjust_step(2.0, 100.0, 90.0, 95.0, rule) == pytest.approx(2.0)
    # A quarter realised: 10 / (2 · 7.5) = 2/3.
    assert adjust_step(2.0, 100.0, 90.0, 97.5, rule) == pytest.approx(2.0 * 10 / 15)
    # All realised (or better): the change is clipped to max_change.
    assert adjust_step(1.0, 100.0, 90.0, 90.0, rule) == pytest.approx(5.0)
    assert adjust_step(1.0, 100.0, 90.0, 80.0, rule) == pytest.approx(5.0)
    # Things got worse: the change is clipped to min_change, the multiplier to min_mult.
    assert adjust_step(1.0, 100.0, 90.0, 150.0, rule) == pytest.approx(0.1)
    assert adjust_step(0.5, 100.0, 90.0, 150.0, rule) == pytest.approx(0.1)
    assert adjust_step(4.0, 100.0, 90.0, 90.0, rule) == pytest.approx(10.0)
    narrow = KlStepSettings(min_step_mult=0.5, max_step_mult=2.0, min_mult_change=0.8,
                            max_mult_change=1.25)
    assert adjust_step(1.0, 100.0, 90.0, 90.0, narrow) == pytest.approx(1.25)
    assert adjust_step(1.0, 100.0, 90.0, 150.0, narrow) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        KlStepSettings(min_step_mult=2.0, max_step_mult=1.0)
    with pytest.raises(ValueError):
        adjust_step(1.0, np.nan, 1.0, 1.0)
