"""Time-varying linear-Gaussian controllers u_t ~ N(K_t x_t + k_t, Σ_t)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearGaussianController:
    """K (T, dU, dX), k (T, dU), covar (T, dU, dU) symmetric positive definite.

    chol (T, dU, dU) lower Cholesky factors of covar and inv_covar (T, dU, dU)
    are kept alongside because both the sampler and the KL term need them.
    """

    K: np.ndarray
    k: np.ndarray
    covar: np.ndarray
    chol: np.ndarray
    inv_covar: np.ndarray

    @property
    def T(self) -> int:
        return self.K.shape[0]

    @property
    def dU(self) -> int:
        return self.K.shape[1]

    @property
    def dX(self) -> int:
        return self.K.shape[2]
