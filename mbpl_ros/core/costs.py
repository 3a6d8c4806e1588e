"""Costs l(x, u) with analytic derivatives."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CostExpansion:
    """Cost and its derivatives at given points, for N rollouts of T steps:
    l (N, T), lx (N, T, dX), lu (N, T, dU), lxx (N, T, dX, dX),
    luu (N, T, dU, dU), lux (N, T, dU, dX)."""

    l: np.ndarray
    lx: np.ndarray
    lu: np.ndarray
    lxx: np.ndarray
    luu: np.ndarray
    lux: np.ndarray


@dataclass
class QuadraticCost:
    """A time-varying quadratic cost in absolute coordinates, for z_t = [x_t; u_t]:
    l_t(z) = ½ zᵀ C_t z + c_tᵀ z + c0_t, with C (T, dX+dU, dX+dU), c (T, dX+dU), c0 (T,)."""

    C: np.ndarray
    c: np.ndarray
    c0: np.ndarray
