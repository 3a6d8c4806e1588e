"""LQR backward pass against independent references: scipy's discrete algebraic Riccati
equation, simulated cost-to-go, and brute-force least squares over open-loop actions."""
import numpy as np
import pytest
import scipy.linalg

from mbpl_ros.core.lqr import IndefiniteQError, lqr_backward


def random_system(rng, dX, dU):
    A = rng.normal(size=(dX, dX)) / np.sqrt(dX)
    B = rng.normal(size=(dX, dU))
    return A, B


def time_varying_problem(rng, T, dX, dU):
    """Random F, f and a positive-definite quadratic cost with linear and constant terms."""
    n = dX + dU
    F = rng.normal(size=(T - 1, dX, n)) / np.sqrt(n)
    f = rng.normal(size=(T - 1, dX))
    M = rng.normal(size=(T, n, n))
    C = M @ M.transpose(0, 2, 1) / n + 0.1 * np.eye(n)
    c = rng.normal(size=(T, n))
    c0 = rng.normal(size=T)
    return F, f, C, c, c0


def stage_costs(C, c, c0, X, U):
    Z = np.concatenate([X, U], axis=-1)
    return 0.5 * np.einsum("ti,tij,tj->t", Z, C, Z) + np.einsum("ti,ti->t", c, Z) + c0


def simulate(F, f, K, k, x0):
    T, dU, dX = K.shape
    X, U = np.zeros((T, dX)), np.zeros((T, dU))
    X[0] = x0
    for t in range(T):
        U[t] = K[t] @ X[t] + k[t]
        if t < T - 1:
            X[t + 1] = F[t] @ np.r_[X[t], U[t]] + f[t]
    return X, U


def test_long_horizon_gain_matches_discrete_are():
    rng = np.random.default_rng(0)
    dX, dU, T = 4, 2, 300
    A, B = random_system(rng, dX, dU)
    Q, R = np.diag(rng.uniform(0.5, 2.0, dX)), np.diag(rng.uniform(0.1, 1.0, dU))
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_inf = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    F = np.broadcast_to(np.hstack([A, B]), (T - 1, dX, dX + dU))
    C = np.broadcast_to(scipy.linalg.block_diag(Q, R), (T, dX + dU, dX + dU))
    solution = lqr_backward(F, np.zeros((T - 1, dX)), C, np.zeros((T, dX + dU)))
    # Far from the horizon's end the time-varying solution has converged to the stationary one.
    np.testing.assert_allclose(solution.K[0], K_inf, atol=1e-9)
    np.testing.assert_allclose(solution.V[0], P, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(solution.Quu[0], R + B.T @ P @ B, rtol=1e-9)


def test_simulated_cost_to_go_equals_value_function():
    rng = np.random.default_rng(1)
    T, dX, dU = 12, 3, 2
    F, f, C, c, c0 = time_varying_problem(rng, T, dX, dU)
    solution = lqr_backward(F, f, C, c, c0)
    for x0 in rng.normal(size=(3, dX)):
        X, U = simulate(F, f, solution.K, solution.k, x0)
        total = stage_costs(C, c, c0, X, U)
        for t in (0, 5, T - 1):
            predicted = 0.5 * X[t] @ solution.V[t] @ X[t] + solution.v[t] @ X[t] + solution.value_constant[t]
            np.testing.assert_allclose(total[t:].sum(), predicted, rtol=1e-9)


def test_matches_brute_force_open_loop_optimum():
    """The total cost is quadratic in the open-loop action sequence; its minimiser (normal
    equations) must equal the LQR controller's actions from the same x0."""
    rng = np.random.default_rng(2)
    T, dX, dU = 6, 3, 2
    F, f, C, c, c0 = time_varying_problem(rng, T, dX, dU)
    x0 = rng.normal(size=dX)

    def total_cost(u_flat):
        U = u_flat.reshape(T, dU)
        X = np.zeros((T, dX))
        X[0] = x0
        for t in range(T - 1):
            X[t + 1] = F[t] @ np.r_[X[t], U[t]] + f[t]
        return stage_costs(C, c, c0, X, U).sum()

    # Exact quadratic model of total_cost by finite differences (exact up to rounding for a quadratic).
    m, h = T * dU, 1.0
    base = total_cost(np.zeros(m))
    E = np.eye(m) * h
    g = np.array([(total_cost(E[i]) - total_cost(-E[i])) / (2 * h) for i in range(m)])
    H = np.array([[(total_cost(E[i] + E[j]) - total_cost(E[i] - E[j]) - total_cost(-E[i] + E[j])
                    + total_cost(-E[i] - E[j])) / (4 * h * h) for j in range(m)] for i in range(m)])
    u_star = np.linalg.solve(H, -g)
    best = base + g @ u_star + 0.5 * u_star @ H @ u_star

    solution = lqr_backward(F, f, C, c, c0)
    X, U = simulate(F, f, solution.K, solution.k, x0)
    np.testing.assert_allclose(U.ravel(), u_star, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(total_cost(U.ravel()), best, rtol=1e-9)
    np.testing.assert_allclose(0.5 * x0 @ solution.V[0] @ x0 + solution.v[0] @ x0 + solution.value_constant[0],
                               best, rtol=1e-9)


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(3)
    T, dX, dU = 8, 3, 2
    F, f, C, c, c0 = time_varying_problem(rng, T, dX, dU)
    scales = np.array([0.1, 1.0, 7.0])
    batch = lqr_backward(F, f, scales[:, None, None, None] * C, scales[:, None, None] * c)
    for b, scale in enumerate(scales):
        single = lqr_backward(F, f, scale * C, scale * c)
        np.testing.assert_allclose(batch.K[b], single.K, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batch.V[b], single.V, rtol=1e-12, atol=1e-12)


def test_value_function_symmetric_and_terminal_step_uses_stage_cost():
    rng = np.random.default_rng(4)
    T, dX, dU = 30, 4, 2
    F, f, C, c, c0 = time_varying_problem(rng, T, dX, dU)
    solution = lqr_backward(F, f, C, c)
    assert np.array_equal(solution.V, solution.V.transpose(0, 2, 1))
    Cuu, Cux, cu = C[-1, dX:, dX:], C[-1, dX:, :dX], c[-1, dX:]
    np.testing.assert_allclose(solution.K[-1], -np.linalg.solve(Cuu, Cux), rtol=1e-10)
    np.testing.assert_allclose(solution.k[-1], -np.linalg.solve(Cuu, cu), rtol=1e-10)


def test_indefinite_action_cost_raises_naming_the_step():
    rng = np.random.default_rng(5)
    T, dX, dU = 5, 2, 1
    F, f, C, c, c0 = time_varying_problem(rng, T, dX, dU)
    C = C.copy()
    C[3, dX:, dX:] = -50.0
    with pytest.raises(IndefiniteQError, match="time step 3"):
        lqr_backward(F, f, C, c)


@pytest.mark.parametrize("bad", ["F", "f", "C", "c"])
def test_shape_errors_name_the_argument(bad):
    rng = np.random.default_rng(6)
    args = dict(zip("F f C c".split(), time_varying_problem(rng, 5, 3, 2)[:4]))
    args[bad] = args[bad][0] if bad == "F" else args[bad][..., :-1]
    with pytest.raises(ValueError, match=f"^{bad} must have shape"):
        lqr_backward(**args)
