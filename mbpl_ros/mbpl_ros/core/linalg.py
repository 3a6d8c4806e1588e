"""
Small numerical helpers for stacks of symmetric matrices, shared by the whole core.

Every function works on the last two axes, so one call serves a single matrix (d, d), one
per time step (T, d, d) or a batch of those (B, T, d, d).
"""
from __future__ import annotations

import numpy as np

__all__ = ["cholesky_per_step", "inverse_from_cholesky", "robust_cholesky", "symmetrise"]


def symmetrise(matrices: np.ndarray) -> np.ndarray:
    """Return (A + Aᵀ) / 2 over the last two axes."""
    return 0.5 * (matrices + np.swapaxes(matrices, -1, -2))


def cholesky_per_step(A: np.ndarray, name: str) -> np.ndarray:
    """
    Return the lower Cholesky factors of A (T, d, d).

    ValueError names the first step at which A is not positive definite (``name`` says
    which matrix it is), with its smallest eigenvalue.
    """
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        L = None
    if L is None or not np.isfinite(L).all():
        for t in range(A.shape[0]):
            try:
                if np.isfinite(np.linalg.cholesky(A[t])).all():
                    continue
            except np.linalg.LinAlgError:
                pass
            eig = np.linalg.eigvalsh(A[t]).min() if np.isfinite(A[t]).all() else np.nan
            raise ValueError(f"{name} must be symmetric positive definite; at time step {t} "
                             f"its smallest eigenvalue is {eig:.3g}")
    return L


def inverse_from_cholesky(chol: np.ndarray) -> np.ndarray:
    """
    Return A⁻¹ = L⁻ᵀ L⁻¹ (..., d, d) from the lower Cholesky factors L (..., d, d) of A.

    Symmetric positive definite by construction, symmetrised against rounding.
    """
    chol_inv = np.linalg.inv(chol)
    return symmetrise(np.swapaxes(chol_inv, -1, -2) @ chol_inv)


def robust_cholesky(matrices: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """
    Return the lower Cholesky factors (..., d, d) of symmetric matrices (..., d, d).

    Where rounding has left a matrix indefinite, its eigenvalues are raised to a floor
    (`floor`, at least 1e-12 of the largest eigenvalue) before factorising, so a
    factor always comes back; the fast path is one batched LAPACK call.
    """
    matrices = symmetrise(np.asarray(matrices, dtype=float))
    try:
        return np.linalg.cholesky(matrices)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(matrices)
        scale = np.max(np.abs(eigenvalues), axis=-1, keepdims=True)
        lowest = np.maximum(np.maximum(1e-12 * scale, floor), np.finfo(float).tiny)
        eigenvalues = np.maximum(eigenvalues, lowest)
        repaired = (eigenvectors * eigenvalues[..., None, :]) @ np.swapaxes(eigenvectors, -1, -2)
        return np.linalg.cholesky(symmetrise(repaired))
