"""Time-varying linear-Gaussian dynamics x_{t+1} ~ N(F_t [x_t; u_t] + f_t, Σ_t)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearGaussianDynamics:
    """F (T-1, dX, dX+dU), f (T-1, dX), covar (T-1, dX, dX) for the T-1 transitions,
    and the initial-state distribution x0_mean (dX,), x0_covar (dX, dX)."""

    F: np.ndarray
    f: np.ndarray
    covar: np.ndarray
    x0_mean: np.ndarray
    x0_covar: np.ndarray

    @property
    def T(self) -> int:
        return self.F.shape[0] + 1

    @property
    def dX(self) -> int:
        return self.F.shape[1]

    @property
    def dU(self) -> int:
        return self.F.shape[2] - self.F.shape[1]
