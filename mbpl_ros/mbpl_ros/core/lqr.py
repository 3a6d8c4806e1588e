"""
Finite-horizon, time-varying LQR as a pure function.

Problem, for z_t = [x_t; u_t] (dX + dU,) and t = 0 … T-1:

    minimise  Σ_t ½ z_tᵀ C_t z_t + c_tᵀ z_t + c0_t
    subject to x_{t+1} = F_t z_t + f_t            (t = 0 … T-2)

The last step T-1 has no successor: its Q-function is its stage cost alone, whose
action part still gives K_{T-1}, k_{T-1}.

The recursion runs in homogeneous coordinates y_t = [x_t; 1; u_t] so that each step is
a handful of matrix products, and it is batched over any leading axes of C and c
(e.g. a batch of KL multipliers η in trajectory optimisation), the dynamics being shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbpl_ros.core.linalg import inverse_from_cholesky, symmetrise


class IndefiniteQError(np.linalg.LinAlgError):
    """Q_uu (the Q-function's Hessian in u) was not positive definite at some time step."""


@dataclass
class LqrSolution:
    """
    The optimal time-varying linear controller and its cost-to-go.

    The optimal controller u_t = K_t x_t + k_t and the cost-to-go from step t,
    V_t(x) = ½ xᵀ V_t x + v_tᵀ x + value_constant_t.

    Leading batch axes (...) are those of the C, c passed in:
    K (..., T, dU, dX), k (..., T, dU), V (..., T, dX, dX), v (..., T, dX),
    value_constant (..., T), Quu (..., T, dU, dU) positive definite,
    chol_Quu (..., T, dU, dU) its lower Cholesky factor.
    """

    K: np.ndarray
    k: np.ndarray
    V: np.ndarray
    v: np.ndarray
    Quu: np.ndarray
    value_constant: np.ndarray
    chol_Quu: np.ndarray


@dataclass
class RiccatiResult:
    """
    Raw output of `riccati_recursion` for a flat batch of B problems, s = dX + 1.

    gains (B, T, dU, s): [K_t, k_t].
    Quu (B, T, dU, dU): the Q-function's Hessian in u (symmetrised),
    chol_Quu (B, T, dU, dU): its lower Cholesky factor (identity where it does not exist),
    covar (B, T, dU, dU): Q_uu⁻¹ (symmetrised).
    V_hom (B, T, s, s) or None: cost-to-go in homogeneous coordinates [x; 1]
        (V in the top-left, v in the last column, 2·constant in the corner).
    failed_step (B,): the latest time step where Q_uu was not positive definite (or not
        finite), -1 if none. A failed problem's numbers at that step and before are meaningless.
    """

    gains: np.ndarray
    Quu: np.ndarray
    chol_Quu: np.ndarray
    covar: np.ndarray
    V_hom: np.ndarray | None
    failed_step: np.ndarray


def homogeneous_dynamics(F: np.ndarray, f: np.ndarray) -> np.ndarray:
    """
    Write the dynamics in homogeneous coordinates.

    F (T-1, dX, dX+dU), f (T-1, dX) -> F_hom (T-1, dX+1, dX+1+dU) with
    [x_{t+1}; 1] = F_hom_t [x_t; 1; u_t].
    """
    T1, dX, n = F.shape
    F_hom = np.zeros((T1, dX + 1, n + 1))
    F_hom[:, :dX, :dX] = F[:, :, :dX]
    F_hom[:, :dX, dX] = f
    F_hom[:, :dX, dX + 1:] = F[:, :, dX:]
    F_hom[:, dX, dX] = 1.0
    return F_hom


def homogeneous_cost(C: np.ndarray, c: np.ndarray, c0: np.ndarray | None, dX: int) -> np.ndarray:
    """
    Write the stage costs in homogeneous coordinates.

    C (..., T, n, n), c (..., T, n), c0 (..., T) or None, in z = [x; u] ->
    C_hom (..., T, n+1, n+1) in y = [x; 1; u], with ½ yᵀ C_hom y = ½ zᵀ C z + cᵀ z + c0.
    """
    n = C.shape[-1]
    order = np.r_[0:dX, n, dX:n]          # where each y entry sits in [z; 1]
    C_hom = np.zeros(C.shape[:-2] + (n + 1, n + 1))
    C_hom[..., :n, :n] = C
    C_hom[..., :n, n] = c
    C_hom[..., n, :n] = c
    if c0 is not None:
        C_hom[..., n, n] = 2.0 * c0
    return C_hom[..., order[:, None], order[None, :]]


def _solve_where_possible(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """
    Solve A x = b member by member, with zeros where A is singular.

    A⁻¹ b for A (B, d, d), b (B, d, m); zeros for singular members (flagged later, when
    their Cholesky factor fails). The batched call fails as a whole: this is the slow path.
    """
    x = np.zeros(b.shape)
    for i in range(A.shape[0]):
        try:
            x[i] = np.linalg.solve(A[i], b[i])
        except np.linalg.LinAlgError:
            pass
    return x


def _cholesky_or_failed_step(Quu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    Factor Q_uu per time step and find each problem's latest failing step.

    Lower Cholesky factors of Quu (B, T, d, d) and the latest failing step per problem
    (B,) (-1 if none), a failure being an indefinite or non-finite Q_uu.
    """
    B, T = Quu.shape[:2]
    failed_step = np.full(B, -1)
    try:
        L = np.linalg.cholesky(Quu)
    except np.linalg.LinAlgError:
        L = np.empty_like(Quu)
        for b in range(B):
            try:
                L[b] = np.linalg.cholesky(Quu[b])
            except np.linalg.LinAlgError:
                for t in range(T - 1, -1, -1):       # find the latest failure, then give up
                    try:
                        L[b, t] = np.linalg.cholesky(Quu[b, t])
                    except np.linalg.LinAlgError:
                        failed_step[b] = t
                        L[b, :t + 1] = np.eye(Quu.shape[-1])
                        break
    nonfinite = ~np.isfinite(L).all(axis=(2, 3))
    for b in np.flatnonzero(nonfinite.any(axis=1)):
        failed_step[b] = max(failed_step[b], np.flatnonzero(nonfinite[b])[-1])
    return L, failed_step


def riccati_recursion(F_hom: np.ndarray, C_hom: np.ndarray, dX: int,
                      cost_scale: np.ndarray | None = None, cost_offset: np.ndarray | None = None,
                      keep_value: bool = True) -> RiccatiResult:
    """
    Backward Riccati recursion for a batch of B problems sharing their dynamics.

    F_hom (T-1, dX+1, n1) with n1 = dX + 1 + dU (see `homogeneous_dynamics`). The stage
    costs (see `homogeneous_cost`) are either C_hom (B, T, n1, n1), or, with cost_scale (B,)
    given, the weighted sums cost_scale_b · C_hom_t + cost_offset_t of C_hom (T, n1, n1) and
    cost_offset (T, n1, n1) — formed one step at a time, which is how a batch of KL
    multipliers η is run without materialising B copies of the cost.

    Never raises for an indefinite Q_uu: it reports the latest such step in `failed_step`
    so that callers can retry with a better-posed cost.
    """
    if cost_scale is None:
        B, T, n1, _ = C_hom.shape
    else:
        cost_scale = np.asarray(cost_scale, dtype=float)
        B, (T, n1, _) = cost_scale.shape[0], C_hom.shape
        if cost_offset is None or cost_offset.shape != C_hom.shape:
            raise ValueError("cost_offset must be given with cost_scale, shaped like C_hom "
                             "(T, n1, n1)")
        scale = cost_scale[:, None, None]
    s = dX + 1
    dU = n1 - s
    if F_hom.shape != (T - 1, s, n1):
        raise ValueError(f"F_hom must have shape (T-1={T - 1}, {s}, {n1}), got {F_hom.shape}")
    F_hom_T = np.ascontiguousarray(F_hom.transpose(0, 2, 1))
    V_hom = np.empty((B, T, s, s)) if keep_value else None
    Quu_all = np.empty((B, T, dU, dU))
    gains = np.empty((B, T, dU, s))
    V = None
    with np.errstate(all="ignore"):              # failed members may overflow; they are flagged
        for t in range(T - 1, -1, -1):
            Q = C_hom[:, t] if cost_scale is None else scale * C_hom[t] + cost_offset[t]
            if V is not None:
                Q = Q + F_hom_T[t] @ (V @ F_hom[t])
            Quu = Q[:, s:, s:]
            try:
                G = np.linalg.inv(Quu) @ Q[:, s:, :s]                 # Q_uu⁻¹ Q_us
            except np.linalg.LinAlgError:
                G = _solve_where_possible(Quu, Q[:, s:, :s])
            # V = Q_ss − Q_su Q_uu⁻¹ Q_us, symmetrised so that rounding cannot build up.
            V = Q[:, :s, :s] - Q[:, :s, s:] @ G
            V = symmetrise(V)
            Quu_all[:, t] = Quu
            gains[:, t] = G
            if keep_value:
                V_hom[:, t] = V
    np.negative(gains, out=gains)
    Quu_all = symmetrise(Quu_all)
    chol, failed_step = _cholesky_or_failed_step(Quu_all)
    covar = inverse_from_cholesky(chol)  # Q_uu⁻¹, symmetric positive definite by construction
    return RiccatiResult(gains=gains, Quu=Quu_all, chol_Quu=chol, covar=covar, V_hom=V_hom,
                         failed_step=failed_step)


def lqr_backward(F: np.ndarray, f: np.ndarray, C: np.ndarray, c: np.ndarray,
                 c0: np.ndarray | None = None) -> LqrSolution:
    """
    Solve the deterministic time-varying LQR problem (see the module docstring).

    Args:
        F: (T-1, dX, dX+dU) dynamics matrices, f: (T-1, dX) offsets.
        C: (..., T, dX+dU, dX+dU) cost Hessians, c: (..., T, dX+dU) linear terms,
            c0: (..., T) constants or None (zero); leading axes are a batch.

    Returns
    -------
        LqrSolution with the batch axes of C leading.

    Raises
    ------
        ValueError for inconsistent shapes; IndefiniteQError if some Q_uu is not
        positive definite (the problem has no minimum in u).

    """
    F, f, C, c = (np.asarray(a, dtype=float) for a in (F, f, C, c))
    if F.ndim != 3 or F.shape[2] <= F.shape[1]:
        raise ValueError(f"F must have shape (T-1, dX, dX+dU) with dU >= 1, got {F.shape}")
    T1, dX, n = F.shape
    T = T1 + 1
    if f.shape != (T1, dX):
        raise ValueError(f"f must have shape (T-1={T1}, dX={dX}), got {f.shape}")
    if C.ndim < 3 or C.shape[-3:] != (T, n, n):
        raise ValueError(f"C must have shape (..., T={T}, {n}, {n}), got {C.shape}")
    batch = C.shape[:-3]
    if c.shape != batch + (T, n):
        raise ValueError(f"c must have shape {batch + (T, n)}, got {c.shape}")
    if c0 is not None:
        c0 = np.asarray(c0, dtype=float)
        if c0.shape != batch + (T,):
            raise ValueError(f"c0 must have shape {batch + (T,)}, got {c0.shape}")
    C_hom = homogeneous_cost(C, c, c0, dX).reshape((-1, T, n + 1, n + 1))
    result = riccati_recursion(homogeneous_dynamics(F, f), C_hom, dX)
    bad = np.flatnonzero(result.failed_step >= 0)
    if bad.size:
        raise IndefiniteQError(
            f"Q_uu is not positive definite at time step {result.failed_step[bad[0]]} "
            f"(batch member {bad[0]}): the cost has no minimum in u there")
    dU = n - dX
    V_hom = result.V_hom
    return LqrSolution(
        K=result.gains[..., :dX].reshape(batch + (T, dU, dX)),
        k=result.gains[..., dX].reshape(batch + (T, dU)),
        V=V_hom[..., :dX, :dX].reshape(batch + (T, dX, dX)),
        v=V_hom[..., :dX, dX].reshape(batch + (T, dX)),
        Quu=result.Quu.reshape(batch + (T, dU, dU)),
        value_constant=(0.5 * V_hom[..., dX, dX]).reshape(batch + (T,)),
        chol_Quu=result.chol_Quu.reshape(batch + (T, dU, dU)))
