"""MDGPS (core/mdgps.py) on a small linear system with a known optimum.

The system is a planar point mass, x = [position (2), velocity (2)], u = force (2),
x' = A x + B u, with cost Σ_t ½ 10‖p_t‖² + ½ 0.01‖u_t‖². Its finite-horizon optimum
is computed here by an independent Riccati recursion, and its rollouts by plain
matrix products.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import ActionCost, StateTargetCost, WeightedSum
from mbpl_ros.core.lqr_flm import LqrFlm, LqrFlmSettings
from mbpl_ros.core.mdgps import Mdgps, MdgpsSettings, PolicyPriorSettings
from mbpl_ros.core.mdgps import linearize_policy
from mbpl_ros.core.policy.network import Policy
from mbpl_ros.core.policy.settings import PolicySettings
from mbpl_ros.core.policy.training import controller_targets, train_policy
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.core.traj_opt import KlStepSettings, adjust_step, forward_pass, kl_divergence

torch.set_num_threads(1)

DT, T, dX, dU = 0.1, 30, 4, 2
A = np.block([[np.eye(2), DT * np.eye(2)], [np.zeros((2, 2)), np.eye(2)]])
B = np.vstack([0.5 * DT ** 2 * np.eye(2), DT * np.eye(2)])
Q = np.diag([10.0, 10.0, 0.0, 0.0])
R = 0.01 * np.eye(dU)
COST = WeightedSum([(1.0, StateTargetCost([0, 1], 0.0, 10.0)), (1.0, ActionCost(0.01))])
STARTS = np.array([[1.0, 0.5, 0.0, 0.0], [-0.8, 1.0, 0.0, 0.0]])  # (M, dX)
N_PER_CONDITION = 5


def rollout(act, x0, noise):
    """X (T, dX), U (T, dU) of u_t = act(t, x_t, noise_t) on the true system."""
    X, U, x = np.empty((T, dX)), np.empty((T, dU)), np.array(x0, float)
    for t in range(T):
        X[t], U[t] = x, act(t, x, noise[t])
        x = A @ x + B @ U[t]
    return X, U


def true_cost(X, U) -> float:
    return float(0.5 * np.einsum("ti,ij,tj->", X, Q, X) + 0.5 * np.einsum("ti,ij,tj->", U, R, U))


def optimal_costs() -> np.ndarray:
    """Finite-horizon optimum ½ x0ᵀ P_0 x0 (M,) by the Riccati recursion (no action at
    the last step counts, as u_{T-1} affects no cost within the horizon)."""
    P = Q.copy()
    for _ in range(T - 1):
        K = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A + B @ K)
    return 0.5 * np.einsum("mi,ij,mj->m", STARTS, P, STARTS)


def sample(controllers, rng) -> Rollouts:
    X, U, condition = [], [], []
    for m, controller in enumerate(controllers):
        for _ in range(N_PER_CONDITION):
            x, u = rollout(controller.act, STARTS[m], rng.standard_normal((T, dU)))
            X.append(x), U.append(u), condition.append(m)
    return Rollouts(np.stack(X), np.stack(U), np.array(condition))


def zero_controllers(covar=None):
    covar = np.eye(dU) if covar is None else covar
    return [LinearGaussianController.from_covar(np.zeros((T, dU, dX)), np.zeros((T, dU)), covar)
            for _ in STARTS]


def linear_mdgps(seed=0, **settings) -> Mdgps:
    """MDGPS with a linear policy (hidden_sizes=()): the class holds the LQR optimum.
    The KL step may shrink but not grow (GPS's MDGPS setting, max_step_mult = 1)."""
    policy = PolicySettings(hidden_sizes=(), iterations=300, batch_size=64, learning_rate=1e-2,
                            seed=seed)
    return Mdgps(COST, zero_controllers(), MdgpsSettings(policy=policy, **settings),
                 LqrFlmSettings(trajectory_optimization=KlStepSettings(kl_step=1.0,
                                                                       max_step_mult=1.0)))


def policy_costs(algorithm) -> np.ndarray:
    zero = np.zeros((T, dU))
    return np.array([true_cost(*rollout(lambda t, x, n: algorithm.policy.action_mean(x), x0, zero))
                     for x0 in STARTS])


def controller_costs(algorithm) -> np.ndarray:
    zero = np.zeros((T, dU))
    return np.array([true_cost(*rollout(c.act, x0, zero))
                     for c, x0 in zip(algorithm.controllers, STARTS)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mdgps_reaches_the_lqr_optimum_and_the_policy_tracks_the_controllers(seed):
    rng = np.random.default_rng(seed)
    algorithm = linear_mdgps(seed)
    optimum = optimal_costs()
    first_costs = None
    for _ in range(10):
        report = algorithm.update(sample(algorithm.controllers, rng))
        if first_costs is None:
            first_costs = policy_costs(algorithm)
    final_costs = policy_costs(algorithm)
    # The first policy imitates the zero-force start (~10x the optimum); after ten
    # iterations it is within 10% of the optimum.
    assert np.all(first_costs > 5 * optimum)
    assert np.all(final_costs < 1.1 * optimum), (final_costs, optimum)
    # The policy tracks the controllers: a small S-step loss (an error the size of the
    # controllers' own noise would score dU = 2), nearly their cost, a small KL.
    assert report.policy_loss < 0.3
    np.testing.assert_allclose(final_costs, controller_costs(algorithm), rtol=0.1)
    assert all(kl < 20.0 for kl in report.policy_kl)


def test_anchors_are_the_linearised_policy_and_bound_the_c_step():
    rng = np.random.default_rng(3)
    algorithm = linear_mdgps(3)
    for _ in range(2):
        sampling = algorithm.controllers
        batch = sample(sampling, rng)
        report = algorithm.update(batch)

    # A linear policy μ(x) = W (x − mean)/std + b linearises exactly to K = W/std,
    # k = b − W mean/std at every step, with covariance Σ_π (the fit's residual is zero).
    policy = algorithm.policy
    W = policy.network[0].weight.detach().double().numpy()
    b = policy.network[0].bias.detach().double().numpy()
    mean = policy.state_mean.double().numpy()
    std = policy.state_std.double().numpy()
    K_policy, k_policy = W / std, b - (W / std) @ mean
    # Σ_π = E[Σ⁻¹]⁻¹ over all training states: each condition's rollouts weigh N_m·T.
    mean_precision = np.mean([c.inv_covar.mean(axis=0) for c in sampling], axis=0)
    for m, anchor in enumerate(algorithm.anchors):
        # The first steps' states barely vary (every rollout starts at the same x0), so
        # the regression's ridge shrinks K there; predictions at the states are exact.
        X = batch.for_condition(m).X
        np.testing.assert_allclose(anchor.mean_actions(X), policy.action_mean(X), atol=1e-3)
        np.testing.assert_allclose(anchor.K[5:], np.broadcast_to(K_policy, (T - 5, dU, dX)),
                                   rtol=5e-3, atol=1e-3)
        np.testing.assert_allclose(anchor.k[5:], np.broadcast_to(k_policy, (T - 5, dU)),
                                   rtol=5e-3, atol=1e-3)
        np.testing.assert_allclose(anchor.covar, np.broadcast_to(np.linalg.inv(mean_precision),
                                                                 (T, dU, dU)), rtol=1e-3, atol=1e-5)
        # The C-step's KL is measured against this anchor (not the previous controller).
        state = algorithm.local.conditions[m]
        new = state.controller
        marginals = forward_pass(new, state.model.dynamics)
        kl_to_anchor = kl_divergence(new, anchor, marginals).sum()
        assert kl_to_anchor == pytest.approx(report.conditions[m].kl, rel=1e-6)
        assert kl_to_anchor <= 1.1 * report.conditions[m].kl_step
        kl_to_previous = kl_divergence(new, sampling[m], marginals).sum()
        assert abs(kl_to_previous - kl_to_anchor) > 1e-3 * kl_to_anchor


@pytest.mark.parametrize("limit, anchored_to_policy", [(1e-9, False), (1e9, True)])
def test_a_condition_the_policy_does_not_follow_takes_an_lqr_flm_step(limit, anchored_to_policy):
    """anchor_max_kl: where the policy's linearisation is further than the limit from the
    controller that drew the rollouts, the C-step is LQR-FLM's own (anchored to that
    controller), the same controller an LqrFlm computes from the same rollouts."""
    batch = sample(zero_controllers(), np.random.default_rng(4))
    # One Adam step: the policy stays near its random start, far from the controllers.
    untrained = PolicySettings(hidden_sizes=(), iterations=1, seed=4)
    local = LqrFlmSettings(trajectory_optimization=KlStepSettings(kl_step=1.0))

    def algorithm(anchor_max_kl):
        return Mdgps(COST, zero_controllers(), MdgpsSettings(policy=untrained,
                                                             anchor_max_kl=anchor_max_kl), local)
    mdgps = algorithm(limit)
    report = mdgps.update(batch)
    reference = algorithm(None) if anchored_to_policy else LqrFlm(COST, zero_controllers(), local)
    reference.update(batch)
    assert min(report.policy_kl) > 1.0    # nats over the trajectory
    assert all((kl <= limit * T) == anchored_to_policy for kl in report.policy_kl)
    for new, expected in zip(mdgps.controllers, reference.controllers):
        np.testing.assert_allclose(new.K, expected.K, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new.k, expected.k, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new.covar, expected.covar, rtol=1e-9, atol=1e-12)


def test_s_step_targets_are_the_current_controllers():
    """Iteration 1's S-step fits the initial controllers: a linear teacher u = K x + k
    with state-independent noise is learnt exactly by a linear policy."""
    rng = np.random.default_rng(4)
    K = rng.normal(size=(dU, dX))
    k = rng.normal(size=dU)
    teacher = [LinearGaussianController.from_covar(np.broadcast_to(K, (T, dU, dX)),
                                                   np.broadcast_to(k, (T, dU)), 0.01 * np.eye(dU))
               for _ in STARTS]
    settings = MdgpsSettings(policy=PolicySettings(hidden_sizes=(), iterations=1500,
                                                   learning_rate=1e-2, seed=0))
    algorithm = Mdgps(COST, teacher, settings, LqrFlmSettings())
    # States spread widely, so the regression is well posed.
    X = rng.normal(size=(2 * N_PER_CONDITION, T, dX))
    batch = Rollouts(X, np.zeros((2 * N_PER_CONDITION, T, dU)), np.repeat([0, 1], N_PER_CONDITION))
    algorithm.s_step(batch)
    np.testing.assert_allclose(algorithm.policy.action_mean(X), X @ K.T + k, atol=5e-3)


def test_a_controller_commanding_far_beyond_the_limits_does_not_break_the_policy_elsewhere():
    """One condition's controller (a C-step's bad fit) commands 50x the effort limits: with
    action_limits the S-step fits the clamped command there, and the policy still follows
    the other condition's controller; without them the shared network is pulled off it."""
    rng = np.random.default_rng(5)
    K = rng.normal(size=(dU, dX))
    good = LinearGaussianController.from_covar(np.broadcast_to(K, (T, dU, dX)),
                                               np.zeros((T, dU)), 0.01 * np.eye(dU))
    wild = LinearGaussianController.from_covar(np.broadcast_to(-50.0 * K, (T, dU, dX)),
                                               np.full((T, dU), 50.0), 0.01 * np.eye(dU))
    X = rng.normal(scale=0.2, size=(2 * N_PER_CONDITION, T, dX))
    X[N_PER_CONDITION:] += 1.0                 # the wild condition's states, nearby
    batch = Rollouts(X, np.zeros((2 * N_PER_CONDITION, T, dU)),
                     np.repeat([0, 1], N_PER_CONDITION))
    limits = np.array([1.0, 1.0])
    errors = {}
    for name, action_limits in (("clamped", limits), ("free", None)):
        settings = MdgpsSettings(policy=PolicySettings(hidden_sizes=(32,), iterations=1000,
                                                       learning_rate=1e-2, seed=0))
        algorithm = Mdgps(COST, [good, wild], settings, LqrFlmSettings(),
                          action_limits=action_limits)
        algorithm.s_step(batch)
        good_states = X[:N_PER_CONDITION]
        errors[name] = np.max(np.abs(algorithm.policy.action_mean(good_states)
                                     - good_states @ K.T))
        if name == "clamped":
            wild_actions = algorithm.policy.action_mean(X[N_PER_CONDITION:])
            assert np.max(np.abs(wild_actions)) < 1.5 * limits.max()
    assert errors["clamped"] < 0.1 < errors["free"], errors


def test_s_step_leaves_out_rollouts_costing_far_more_than_the_batch_median():
    """s_step_max_cost_ratio: a rollout the noise flung (here 10 x further from the target
    than any other) costs far more than the batch's median, and the S-step fits the policy
    as if it had weight 0; a batch with no such rollout trains exactly as without the rule."""
    rng = np.random.default_rng(6)
    batch = sample(zero_controllers(), rng)
    flung = 7
    X = batch.X.copy()
    X[flung] *= 10.0
    costs = np.array([true_cost(x, u) for x, u in zip(X, batch.U)])
    assert np.sum(costs > 5.0 * np.median(costs)) == 1      # only the flung one
    flung_batch = Rollouts(X, batch.U, batch.condition)
    policy = PolicySettings(hidden_sizes=(16,), iterations=200, seed=0)

    def s_step(rollouts, ratio):
        algorithm = Mdgps(COST, zero_controllers(), MdgpsSettings(
            policy=policy, s_step_max_cost_ratio=ratio), LqrFlmSettings())
        return algorithm, algorithm.s_step(rollouts)
    with_rule, training = s_step(flung_batch, 5.0)
    assert training["left_out_rollouts"] == [flung]
    weights = np.ones(X.shape[:2])
    weights[flung] = 0.0
    reference = Policy.from_settings(dX, dU, policy)
    targets = [controller_targets(c, flung_batch.for_condition(m).X)
               for m, c in enumerate(zero_controllers())]
    train_policy(reference, X, np.concatenate([t[0] for t in targets]),
                 np.concatenate([t[1] for t in targets]), policy, weights=weights)
    np.testing.assert_allclose(with_rule.policy.action_mean(X), reference.action_mean(X),
                               rtol=1e-6, atol=1e-6)
    # Without a flung rollout the rule leaves the S-step as it was.
    kept, training = s_step(batch, 5.0)
    plain, _ = s_step(batch, None)
    assert training["left_out_rollouts"] == []
    np.testing.assert_array_equal(kept.policy.action_mean(X), plain.policy.action_mean(X))


def test_full_and_diagonal_policy_covariance():
    """Correlated controller noise Σ: the full Σ_π is E[Σ⁻¹]⁻¹ = Σ; the diagonal one is
    diag(1/diag(Σ⁻¹)), narrower than Σ's marginals."""
    covar = np.array([[0.05, 0.013], [0.013, 0.004]])
    rng = np.random.default_rng(5)
    batch = sample(zero_controllers(covar), rng)
    policy_settings = PolicySettings(hidden_sizes=(), iterations=10, seed=0)
    full = Mdgps(COST, zero_controllers(covar), MdgpsSettings(policy=policy_settings))
    full.s_step(batch)
    np.testing.assert_allclose(full.policy_covariance, covar, rtol=1e-9)
    diagonal = Mdgps(COST, zero_controllers(covar),
                     MdgpsSettings(policy=policy_settings, covariance="diagonal"))
    diagonal.s_step(batch)
    expected = np.diag(1.0 / np.diag(np.linalg.inv(covar)))
    np.testing.assert_allclose(diagonal.policy_covariance, expected, rtol=1e-5)
    assert np.all(np.diag(diagonal.policy_covariance) < 0.2 * np.diag(covar))


def test_linearisation_uses_a_prior_holding_only_the_current_batch():
    rng = np.random.default_rng(6)
    algorithm = linear_mdgps(0)
    batch = sample(algorithm.controllers, rng)
    algorithm.s_step(batch)
    algorithm.linearize(batch)
    algorithm.linearize(batch)
    priors = algorithm._policy_priors
    assert all(p.n_rollouts == N_PER_CONDITION == p.max_rollouts for p in priors)
    no_prior = linear_mdgps(0, policy_prior=PolicyPriorSettings(enabled=False))
    no_prior.policy = algorithm.policy
    no_prior.policy_covariance = algorithm.policy_covariance
    plain = no_prior.linearize(batch)
    reference = linearize_policy(algorithm.policy, batch.for_condition(0).X)
    np.testing.assert_allclose(plain[0].K, reference.K)


@pytest.mark.parametrize("make, message", [
    (lambda: Mdgps(COST, []), "at least one controller"),
    (lambda: Mdgps(COST, zero_controllers()[:1] + [LinearGaussianController.from_covar(
        np.zeros((T, dU, 3)), np.zeros((T, dU)), np.eye(dU))]), "must share"),
    (lambda: Mdgps(COST, zero_controllers(), policy=Policy(3, dU)), "need dX=4"),
    (lambda: MdgpsSettings(covariance="spherical"), "'full' or 'diagonal'"),
    (lambda: MdgpsSettings(linearization_regularization=0.0), "linearization_regularization"),
    (lambda: PolicyPriorSettings(max_clusters=0), "max_clusters"),
])
def test_bad_construction_is_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_rollouts_are_rejected():
    algorithm = linear_mdgps(0)
    batch = sample(algorithm.controllers, np.random.default_rng(7))
    only_first = Rollouts(batch.X[:N_PER_CONDITION], batch.U[:N_PER_CONDITION],
                          batch.condition[:N_PER_CONDITION])
    with pytest.raises(ValueError, match=r"no rollouts for conditions \[1\]"):
        algorithm.update(only_first)
    unknown = Rollouts(batch.X, batch.U, np.where(batch.condition == 1, 5, 0))
    with pytest.raises(ValueError, match=r"conditions \[5\]; allowed are 0 .. 1"):
        algorithm.update(unknown)
    with pytest.raises(ValueError, match="dX=4"):
        algorithm.update(Rollouts(batch.X[..., :3], batch.U, batch.condition))
    assert algorithm.iteration == 0 and algorithm.anchors is None



def test_step_size_follows_the_policy_linearisations_costs():
    """GPS's MDGPS rule: the multiplier changes by predicted / (2 (predicted − actual)) with
    the costs [previous linearisation under the previous model, current controller under the
    previous model, current linearisation under the current model], averaged over conditions."""
    rng = np.random.default_rng(4)
    algorithm = linear_mdgps(4)
    algorithm.update(sample(algorithm.controllers, rng))
    previous_anchors = algorithm.anchors
    multipliers = [state.step_mult for state in algorithm.local.conditions]
    seen = {}
    real_step_costs = algorithm.step_costs

    def recording_step_costs(conditions, anchors):   # the real method, its inputs kept
        seen["expected"] = np.mean([[state.previous_model.estimate_cost(previous_anchors[m]),
                                     state.previous_model.estimate_cost(state.controller),
                                     state.model.estimate_cost(anchors[m])]
                                    for m, state in enumerate(conditions)], axis=0)
        seen["costs"] = real_step_costs(conditions, anchors)
        return seen["costs"]

    algorithm.step_costs = recording_step_costs
    algorithm.update(sample(algorithm.controllers, rng))
    np.testing.assert_allclose(seen["costs"], np.broadcast_to(seen["expected"], seen["costs"].shape), rtol=1e-12)
    for m, state in enumerate(algorithm.local.conditions):
        rule = algorithm.local.settings.trajectory_optimization
        assert state.step_mult == adjust_step(multipliers[m], *seen["expected"], rule)


def test_action_base_initial_controller_makes_the_network_learn_the_residual(tmp_path):
    """With action_base = initial_controller the policy is K̄x + k̄ of the initial controllers
    plus its network: the base is their mean action exactly, the S-step fits only the residual
    (a teacher equal to the base is fitted by a network that outputs ~0), and the exported module
    adds the same base."""
    from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy

    rng = np.random.default_rng(5)
    K = 30.0 * rng.normal(size=(dU, dX))
    k = np.array([40.0, -25.0])
    teacher = [LinearGaussianController.from_covar(np.broadcast_to(K, (T, dU, dX)),
                                                   np.broadcast_to(k, (T, dU)), 0.01 * np.eye(dU))
               for _ in STARTS]
    X = rng.normal(size=(2 * N_PER_CONDITION, T, dX))
    batch = Rollouts(X, np.zeros((2 * N_PER_CONDITION, T, dU)), np.repeat([0, 1], N_PER_CONDITION))
    losses = {}
    for base in ("none", "initial_controller"):
        settings = MdgpsSettings(policy=PolicySettings(hidden_sizes=(16,), iterations=200,
                                                       action_base=base, seed=0))
        algorithm = Mdgps(COST, teacher, settings, LqrFlmSettings())
        losses[base] = algorithm.s_step(batch)["loss"]
    np.testing.assert_allclose(algorithm.policy.base_actions(X), X @ K.T + k, rtol=1e-5,
                               atol=1e-3)
    residual = algorithm.policy.action_mean(X) - algorithm.policy.base_actions(X)
    assert np.abs(residual).max() < 0.01 * np.abs(X @ K.T + k).max()
    assert losses["initial_controller"] < 1e-3 * losses["none"], losses
    export_torchscript(algorithm.policy, tmp_path / "policy.pt")
    exported = load_exported_policy(tmp_path / "policy.pt")
    np.testing.assert_allclose(exported(X[0]), algorithm.policy.action_mean(X[0]), rtol=1e-5,
                               atol=1e-3)
    # Without the setting there is no base.
    plain = Mdgps(COST, teacher, MdgpsSettings(), LqrFlmSettings())
    assert not plain.policy.base_gain.any() and not plain.policy.base_bias.any()
