"""
Test the costs.

Costs: analytic derivatives against central finite differences, ramps, sums,
the quadratic model, and the config builder.
"""
import numpy as np
import pytest

from mbpl_ros.core.costs import (
    RAMP_KINDS, ActionCost, CostExpansion, DistanceCost, StateTargetCost, WeightedSum,
    build_cost, quadratic_cost_model, time_ramp,
)
from mbpl_ros.core.rollouts import StateLayout

LAYOUT = StateLayout(n_joints=2, n_points=2)   # dX = 16, dU = 2, ee_offset = 4..9
N, T = 3, 5
FINAL_MULTIPLIERS = (1.0, 4.0)


def random_batch(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((N, T, LAYOUT.dX)),
            scale * rng.standard_normal((N, T, LAYOUT.dU)))


def finite_difference_expansion(cost, X, U, eps=1e-6):
    """
    Return the finite-difference expansion of a cost.

    Central differences of l (for lx, lu) and of the analytic lx, lu (for the
    Hessians), one coordinate at a time but for all (n, t) at once: l_t depends only
    on (x_t, u_t).
    """
    dX, dU = X.shape[-1], U.shape[-1]
    lx, lu = np.empty(X.shape), np.empty(U.shape)
    lxx = np.empty(X.shape + (dX,))
    lux = np.empty(U.shape + (dX,))
    luu = np.empty(U.shape + (dU,))
    lxu = np.empty(X.shape + (dU,))
    for i in range(dX):
        step = np.zeros(dX)
        step[i] = eps
        plus, minus = cost.evaluate(X + step, U), cost.evaluate(X - step, U)
        lx[..., i] = (plus.l - minus.l) / (2 * eps)
        lxx[..., i] = (plus.lx - minus.lx) / (2 * eps)
        lux[..., i] = (plus.lu - minus.lu) / (2 * eps)
    for j in range(dU):
        step = np.zeros(dU)
        step[j] = eps
        plus, minus = cost.evaluate(X, U + step), cost.evaluate(X, U - step)
        lu[..., j] = (plus.l - minus.l) / (2 * eps)
        luu[..., j] = (plus.lu - minus.lu) / (2 * eps)
        lxu[..., j] = (plus.lx - minus.lx) / (2 * eps)
    return lx, lu, lxx, luu, lux, lxu


def assert_derivatives_match(cost, X, U, check_hessians=True):
    e = cost.evaluate(X, U)
    assert e.l.shape == (N, T) and e.lxx.shape == (N, T, LAYOUT.dX, LAYOUT.dX)
    assert e.lux.shape == (N, T, LAYOUT.dU, LAYOUT.dX) and e.luu.shape == (N, T, LAYOUT.dU,
                                                                           LAYOUT.dU)
    lx, lu, lxx, luu, lux, lxu = finite_difference_expansion(cost, X, U)
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.lx, lx, **tol)
    np.testing.assert_allclose(e.lu, lu, **tol)
    if check_hessians:
        np.testing.assert_allclose(e.lxx, lxx, **tol)
        np.testing.assert_allclose(e.luu, luu, **tol)
        np.testing.assert_allclose(e.lux, lux, **tol)
        np.testing.assert_allclose(e.lux, np.swapaxes(lxu, -1, -2), **tol)
    return e


def assert_psd(H, tol=1e-10):
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    assert np.linalg.eigvalsh(H).min() >= -tol * max(1.0, np.abs(H).max())


# ---------------------------------------------------------------------------
# Ramps

def test_ramp_shapes():
    steps = np.arange(1, 5) / 4
    np.testing.assert_array_equal(time_ramp("constant", 4), [1, 1, 1, 1])
    np.testing.assert_allclose(time_ramp("linear", 4), steps)
    np.testing.assert_allclose(time_ramp("quadratic", 4), steps ** 2)
    np.testing.assert_array_equal(time_ramp("final_only", 4), [0, 0, 0, 1])
    np.testing.assert_array_equal(time_ramp("constant", 1), [1])


@pytest.mark.parametrize("kind", RAMP_KINDS)
def test_final_multiplier_scales_only_the_last_step(kind):
    plain, boosted = time_ramp(kind, 6), time_ramp(kind, 6, final_multiplier=7.5)
    np.testing.assert_array_equal(boosted[:-1], plain[:-1])
    assert boosted[-1] == pytest.approx(7.5 * plain[-1])
    assert plain[-1] == 1.0


def test_ramp_rejects_bad_input():
    with pytest.raises(ValueError, match="exponential.*constant, linear, quadratic, final_only"):
        time_ramp("exponential", 4)
    for bad_T in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="T must be"):
            time_ramp("linear", bad_T)
    with pytest.raises(ValueError, match="final_multiplier"):
        time_ramp("linear", 4, final_multiplier=np.nan)


# ---------------------------------------------------------------------------
# Action and state-target costs

def test_action_cost_value_and_derivatives():
    X, U = random_batch(0)
    w = np.array([0.3, 2.0])
    e = assert_derivatives_match(ActionCost(w), X, U)
    n, t = 1, 3
    assert e.l[n, t] == pytest.approx(0.5 * (0.3 * U[n, t, 0] ** 2 + 2.0 * U[n, t, 1] ** 2))
    assert not e.lx.any() and not e.lxx.any() and not e.lux.any()
    # a single number weighs every action dimension
    np.testing.assert_allclose(ActionCost(0.7).evaluate(X, U).l, 0.35 * np.sum(U ** 2, axis=-1))


@pytest.mark.parametrize("ramp", RAMP_KINDS)
@pytest.mark.parametrize("final_multiplier", FINAL_MULTIPLIERS)
def test_state_target_cost_derivatives(ramp, final_multiplier):
    X, U = random_batch(1)
    indices = [0, 3, 7]
    target, weights = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.2, 3.0])
    cost = StateTargetCost(indices, target, weights, ramp, final_multiplier)
    e = assert_derivatives_match(cost, X, U)
    ramp_t = time_ramp(ramp, T, final_multiplier)
    expected = 0.5 * ramp_t * np.sum(weights * (X[..., indices] - target) ** 2, axis=-1)
    np.testing.assert_allclose(e.l, expected)


# ---------------------------------------------------------------------------
# Distance costs

def distance_cost(form, ramp="constant", final_multiplier=1.0, hessian="exact", **overrides):
    settings = dict(l1=0.7, l2=2.0, alpha=0.05, weights=np.array([1.0, 0.5, 2.0, 1.0, 1.5, 0.8]))
    settings.update(overrides)
    return DistanceCost(LAYOUT.ee_offset, settings["l1"], settings["l2"], settings["alpha"], ramp,
                        final_multiplier, form, weights=settings["weights"], hessian=hessian)


@pytest.mark.parametrize("form", ["l1l2", "log"])
@pytest.mark.parametrize("ramp", RAMP_KINDS)
@pytest.mark.parametrize("final_multiplier", FINAL_MULTIPLIERS)
def test_distance_cost_exact_derivatives(form, ramp, final_multiplier):
    X, U = random_batch(2)
    assert_derivatives_match(distance_cost(form, ramp, final_multiplier), X, U)


@pytest.mark.parametrize("form", ["l1l2", "log"])
@pytest.mark.parametrize("alpha, scale", [(1e-5, 1.0), (1.0, 0.1), (0.05, 30.0)])
def test_distance_cost_derivatives_near_and_far(form, alpha, scale):
    X, U = random_batch(3, scale)
    assert_derivatives_match(distance_cost(form, "linear", 2.0, alpha=alpha), X, U)


@pytest.mark.parametrize("form", ["l1l2", "log"])
def test_distance_cost_values(form):
    X, U = random_batch(4)
    l1, l2, alpha, w = 0.7, 2.0, 0.05, np.array([1.0, 0.5, 2.0, 1.0, 1.5, 0.8])
    e = distance_cost(form, "quadratic", 3.0).evaluate(X, U)
    ramp = time_ramp("quadratic", T, 3.0)
    n, t = 2, 4
    d = w * X[n, t, LAYOUT.ee_offset]
    norm_sq = np.linalg.norm(d) ** 2
    penalty = np.sqrt(alpha + norm_sq) if form == "l1l2" else np.log(alpha + norm_sq)
    assert e.l[n, t] == pytest.approx(ramp[t] * (0.5 * l2 * norm_sq + l1 * penalty))
    # only the ee_offset block is touched
    outside = np.setdiff1d(np.arange(LAYOUT.dX), LAYOUT.ee_offset)
    assert not e.lx[..., outside].any() and not e.lxx[..., outside, :].any()
    assert not e.lu.any() and not e.luu.any() and not e.lux.any()


def test_final_only_distance_is_zero_before_the_last_step():
    X, U = random_batch(5)
    e = distance_cost("l1l2", "final_only", 10.0).evaluate(X, U)
    assert not e.l[:, :-1].any() and not e.lx[:, :-1].any() and not e.lxx[:, :-1].any()
    plain = distance_cost("l1l2").evaluate(X, U)
    np.testing.assert_allclose(e.l[:, -1], 10.0 * plain.l[:, -1])


def test_l1l2_hessian_is_exact_and_psd():
    X, U = random_batch(6, scale=5.0)
    exact = distance_cost("l1l2", l2=0.0, hessian="exact").evaluate(X, U)
    psd = distance_cost("l1l2", l2=0.0, hessian="psd").evaluate(X, U)
    np.testing.assert_array_equal(psd.lxx, exact.lxx)
    assert_psd(exact.lxx)


def test_log_psd_hessian_has_the_documented_form():
    """
    Check the PSD Hessian of the log form against the exact one.

    Psd Hessian = exact Hessian + ramp · 2 l1 (w⊙d)(w⊙d)ᵀ / p² ⊙ (w wᵀ) on the block;
    it is PSD where the exact one is not; the gradient is the same.
    """
    X, U = random_batch(7, scale=3.0)
    l1, alpha, w = 0.7, 0.05, np.array([1.0, 0.5, 2.0, 1.0, 1.5, 0.8])
    ramp = time_ramp("linear", T, 2.0)
    exact = distance_cost("log", "linear", 2.0, hessian="exact", l2=0.0).evaluate(X, U)
    psd = distance_cost("log", "linear", 2.0, hessian="psd", l2=0.0).evaluate(X, U)
    np.testing.assert_array_equal(psd.l, exact.l)
    np.testing.assert_array_equal(psd.lx, exact.lx)

    idx = LAYOUT.ee_offset
    d = w * X[..., idx]
    p = alpha + np.sum(d ** 2, axis=-1)
    correction = np.zeros_like(exact.lxx)
    correction[..., idx[:, None], idx] = (
        (ramp * 2 * l1 / p ** 2)[..., None, None] * np.einsum("nti,ntj->ntij", d, d) * np.outer(w,
                                                                                                w))
    np.testing.assert_allclose(psd.lxx, exact.lxx + correction, rtol=1e-12, atol=1e-14)

    assert_psd(psd.lxx)
    curvatures = np.linalg.eigvalsh(exact.lxx)
    assert curvatures.min() < -1e-3, "far from the target the exact log Hessian is indefinite"


def test_log_psd_hessian_stays_psd_with_l2_and_near_the_target():
    for scale in (1e-3, 0.1, 10.0):
        X, U = random_batch(8, scale)
        assert_psd(distance_cost("log", "quadratic", 5.0, hessian="psd").evaluate(X, U).lxx)


# ---------------------------------------------------------------------------
# Weighted sums

def all_fields(e):
    return [e.l, e.lx, e.lu, e.lxx, e.luu, e.lux]


def test_weighted_sum_is_linear():
    X, U = random_batch(9)
    action, state = ActionCost([0.1, 0.4]), StateTargetCost([1, 2], [0.3, 0.1], [2.0, 1.0],
                                                            "linear")
    distance = distance_cost("log", "final_only", 3.0, hessian="psd")
    total = WeightedSum([(0.5, action), (2.0, state), (-1.5, distance)]).evaluate(X, U)
    parts = [c.evaluate(X, U) for c in (action, state, distance)]
    for got, *terms in zip(all_fields(total), *map(all_fields, parts)):
        np.testing.assert_allclose(got, 0.5 * terms[0] + 2.0 * terms[1] - 1.5 * terms[2])
    # nesting sums and the empty sum
    nested = WeightedSum([(2.0, WeightedSum([(0.5, action)])), (1.0,
                                                                WeightedSum([]))]).evaluate(X, U)
    for got, expected in zip(all_fields(nested), all_fields(parts[0])):
        np.testing.assert_allclose(got, expected)


def test_weighted_sum_derivatives_match_finite_differences():
    X, U = random_batch(10)
    cost = WeightedSum([(1.0, ActionCost([0.1, 0.4])), (3.0, distance_cost("l1l2", "quadratic"))])
    assert_derivatives_match(cost, X, U)


def test_weighted_sum_rejects_bad_terms():
    with pytest.raises(ValueError, match="term 0.*not a cost"):
        WeightedSum([(1.0, "action")])
    with pytest.raises(ValueError, match="weight of term 1"):
        WeightedSum([(1.0, ActionCost(1.0)), (np.inf, ActionCost(1.0))])
    with pytest.raises(ValueError, match="pair"):
        WeightedSum([ActionCost(1.0)])


# ---------------------------------------------------------------------------
# Quadratic cost model

def model_value_gradient(model, Z):
    """l, ∇l of the absolute quadratic model at Z (N, T, dZ)."""
    CZ = np.einsum("tij,ntj->nti", model.C, Z)
    return 0.5 * np.einsum("nti,nti->nt", Z, CZ) + np.einsum("ti,nti->nt", model.c,
                                                             Z) + model.c0, \
        CZ + model.c


def test_quadratic_model_reproduces_each_samples_expansion():
    X, U = random_batch(11, scale=2.0)
    cost = WeightedSum([(1.0, ActionCost([0.1, 0.4])), (1.0, distance_cost("log", "linear", 3.0,
                                                                           "psd"))])
    e = cost.evaluate(X, U)
    e.lux = np.random.default_rng(2).standard_normal(e.lux.shape)  # exercise the cross term
    dX = LAYOUT.dX
    for n in range(N):
        one = slice(n, n + 1)
        local = CostExpansion(*(field[one] for field in all_fields(e)))
        model = quadratic_cost_model(X[one], U[one], local)
        assert np.array_equal(model.C, np.swapaxes(model.C, -1, -2))
        value, gradient = model_value_gradient(model, np.concatenate([X[one], U[one]], axis=-1))
        np.testing.assert_allclose(value, local.l, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gradient[..., :dX], local.lx, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gradient[..., dX:], local.lu, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(model.C[:, :dX, :dX], local.lxx[0], atol=1e-12)
        np.testing.assert_allclose(model.C[:, dX:, dX:], local.luu[0], atol=1e-12)
        np.testing.assert_allclose(model.C[:, dX:, :dX], local.lux[0], atol=1e-12)


def test_quadratic_model_averages_the_rollouts():
    X, U = random_batch(12)
    e = distance_cost("l1l2", "quadratic", 2.0).evaluate(X, U)
    e.lux = np.random.default_rng(0).standard_normal(e.lux.shape)  # a non-zero cross term
    mean = quadratic_cost_model(X, U, e)
    singles = [quadratic_cost_model(X[n:n + 1], U[n:n + 1],
                                    CostExpansion(*(f[n:n + 1] for f in all_fields(e))))
               for n in range(N)]
    np.testing.assert_allclose(mean.C, np.mean([s.C for s in singles], axis=0), atol=1e-12)
    np.testing.assert_allclose(mean.c, np.mean([s.c for s in singles], axis=0), atol=1e-12)
    np.testing.assert_allclose(mean.c0, np.mean([s.c0 for s in singles], axis=0), atol=1e-12)
    assert np.array_equal(mean.C, np.swapaxes(mean.C, -1, -2))


def test_quadratic_model_of_a_quadratic_cost_is_the_cost_itself():
    X, U = random_batch(13)
    cost = WeightedSum([(1.0, ActionCost([0.1, 0.4])),
                        (1.0, StateTargetCost([0, 5, 9], [0.2, -0.4, 1.0], [1.0, 3.0, 0.5],
                                              "linear", 2.0))])
    model = quadratic_cost_model(X, U, cost.evaluate(X, U))
    X_new, U_new = random_batch(14, scale=3.0)
    value, gradient = model_value_gradient(model, np.concatenate([X_new, U_new], axis=-1))
    e = cost.evaluate(X_new, U_new)
    np.testing.assert_allclose(value, e.l, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gradient, np.concatenate([e.lx, e.lu], axis=-1), rtol=1e-10,
                               atol=1e-10)


def test_quadratic_model_symmetrises_and_checks_shapes():
    X, U = random_batch(15)
    rng = np.random.default_rng(1)
    e = CostExpansion(*(rng.standard_normal(f.shape)
                        for f in all_fields(ActionCost(1.0).evaluate(X, U))))
    e.lxx = rng.standard_normal(e.lxx.shape)  # deliberately asymmetric
    model = quadratic_cost_model(X, U, e)
    assert np.array_equal(model.C, np.swapaxes(model.C, -1, -2))
    np.testing.assert_allclose(model.C[:, :LAYOUT.dX, :LAYOUT.dX],
                               0.5 * (e.lxx + np.swapaxes(e.lxx, -1, -2)).mean(axis=0), atol=1e-12)
    # the model keeps each sample's value and gradient: only the symmetric part of lxx counts
    one = CostExpansion(*(f[:1] for f in all_fields(e)))
    value, gradient = model_value_gradient(quadratic_cost_model(X[:1], U[:1], one),
                                           np.concatenate([X[:1], U[:1]], axis=-1))
    np.testing.assert_allclose(value, one.l, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gradient, np.concatenate([one.lx, one.lu], axis=-1), rtol=1e-9,
                               atol=1e-9)
    e.lux = e.lux[:, :-1]
    with pytest.raises(ValueError, match="expansion.lux"):
        quadratic_cost_model(X, U, e)


# ---------------------------------------------------------------------------
# Construction from a config dictionary, and argument checks

SPEC = {
    "action": {"weight": 1e-3},
    "distance": [{"l1": 0.1, "l2": 10.0, "alpha": 1e-5},
                 {"l1": 1.0, "l2": 10.0, "alpha": 1e-5, "ramp": "final_only",
                  "final_multiplier": 10.0,
                  "form": "log", "scale": 0.5}],
    "state": {"block": "velocity", "weights": [0.1, 0.2], "ramp": "quadratic"},
}


def test_build_cost_matches_the_hand_built_sum():
    X, U = random_batch(16)
    built = build_cost(SPEC, LAYOUT, T).evaluate(X, U)
    ee = LAYOUT.ee_offset
    by_hand = WeightedSum([
        (1.0, ActionCost([1e-3, 1e-3])),
        (1.0, DistanceCost(ee, 0.1, 10.0, 1e-5)),
        (0.5, DistanceCost(ee, 1.0, 10.0, 1e-5, "final_only", 10.0, "log")),
        (1.0, StateTargetCost(LAYOUT.velocity, 0.0, [0.1, 0.2], "quadratic")),
    ]).evaluate(X, U)
    for got, expected in zip(all_fields(built), all_fields(by_hand)):
        np.testing.assert_allclose(got, expected)


def test_built_cost_checks_the_horizon():
    X, U = random_batch(17)
    with pytest.raises(ValueError, match="T = 7"):
        build_cost({"distance": {"l2": 1.0}}, LAYOUT, 7).evaluate(X, U)


@pytest.mark.parametrize("spec, message", [
    ({"torque": {"weight": 1.0}}, r"unknown key 'torque'; allowed keys: action, distance, state"),
    ({}, "empty"),
    ({"distance": {"l1": 1.0, "beta": 2.0}}, r"distance: unknown key 'beta'; allowed keys: alpha, "
                                             r".*l1, l2"),
    ({"distance": [{"l1": 1.0}, {"ramp": "cubic"}]},
     r"distance\[1\]\.ramp: must be one of 'constant', 'linear', 'quadratic', 'final_only'; got "
     r"'cubic'"),
    ({"distance": {"form": "l3"}}, r"distance\.form: must be one of 'l1l2', 'log'; got 'l3'"),
    ({"distance": {"hessian": "gauss"}}, r"distance\.hessian: must be one of 'psd', 'exact'; got "
                                         r"'gauss'"),
    ({"distance": {"l1": -1.0}}, r"distance\.l1: must be >= 0.0, got -1.0"),
    ({"distance": {"l2": "big"}}, r"distance\.l2: must be a number, got 'big'"),
    ({"distance": {"alpha": 0.0}}, r"distance\.alpha: must be > 0.0, got 0.0"),
    ({"distance": {"weights": [1.0, 2.0]}}, r"distance\.weights has 2 entries; allowed: one "
                                            r"number or 6"),
    ({"distance": {"final_multiplier": np.inf}}, r"distance\.final_multiplier: must be a finite "
                                                 r"number, got inf"),
    ({"action": {}}, r"action\.weight: required key is missing"),
    ({"action": {"weight": [1.0, 2.0, 3.0]}}, r"action\.weight has 3 entries; allowed: one number "
                                              r"or 2"),
    ({"action": {"weight": -1.0}}, r"action\.weight: must be >= 0.0, got -1.0"),
    ({"action": {"weight": 1.0, "scale": True}}, r"action\.scale: must be a number, got True"),
    ({"action": 1.0}, r"action: must be null or a mapping or a list of mappings, got 1.0"),
    ({"state": {"weights": 1.0}},
     r"state: needs exactly one of block \(position, .*\) or indices"),
    ({"state": {"block": "position", "indices": [0]}}, r"exactly one of"),
    ({"state": {"block": "torque"}}, r"state\.block: must be one of 'position', 'velocity', "
                                     r"'ee_offset', 'ee_velocity'; got 'torque'"),
    ({"state": {"indices": [0, 99]}}, r"state\.indices \[99\] are out of range for dX = 16"),
    ({"state": {"indices": [0, 0]}},
     r"state: indices must be distinct and non-empty; got \[0, 0\]"),
    ({"state": {"indices": [0, 1], "target": [1.0, 2.0, 3.0]}}, r"state\.target has 3 entries"),
])
def test_build_cost_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_cost(spec, LAYOUT, T)


def test_constructors_and_evaluate_reject_bad_arguments():
    with pytest.raises(ValueError, match="allowed kinds: constant"):
        StateTargetCost([0], 0.0, 1.0, ramp="step")
    with pytest.raises(ValueError, match="allowed forms: l1l2, log"):
        DistanceCost([0, 1], form="huber")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        DistanceCost([0, 1], alpha=0.0)
    with pytest.raises(ValueError, match="integer state indices"):
        DistanceCost([0.5, 1.0])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ActionCost([1.0, -2.0])
    X, U = random_batch(18)
    with pytest.raises(ValueError, match="out of range for dX = 16"):
        DistanceCost([3, 16]).evaluate(X, U)
    with pytest.raises(ValueError, match="ActionCost weights has 3 entries"):
        ActionCost([1.0, 1.0, 1.0]).evaluate(X, U)
    with pytest.raises(ValueError, match=r"disagree on \(N, T\)"):
        ActionCost(1.0).evaluate(X, U[:, :-1])
    with pytest.raises(ValueError, match=r"\(N, T, dX\)"):
        ActionCost(1.0).evaluate(X[0], U[0])
