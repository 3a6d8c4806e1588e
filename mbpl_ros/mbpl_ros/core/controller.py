"""
Time-varying linear-Gaussian controllers u_t ~ N(K_t x_t + k_t, Σ_t).

Also: temporally smoothed exploration noise, and the two initial controllers (PD around
a pose, LQR on a guessed double integrator). Both initial controllers are specified in
joint accelerations and mapped to torques through the mass matrix M(q0) and gravity
torque g(q0) at the start pose, u = M a + g, so that the same gains and noise levels
mean the same motion on arms of very different mass.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

from mbpl_ros.core.linalg import cholesky_per_step, inverse_from_cholesky, symmetrise
from mbpl_ros.core.lqr import lqr_backward


@dataclass
class LinearGaussianController:
    """
    K (T, dU, dX), k (T, dU), covar (T, dU, dU) symmetric positive definite.

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

    @classmethod
    def from_covar(cls, K: np.ndarray, k: np.ndarray,
                   covar: np.ndarray) -> "LinearGaussianController":
        """
        Build a controller from K (T, dU, dX), k (T, dU) and covar.

        covar is (T, dU, dU), or (dU, dU) for the same at every step. It is symmetrised; ValueError
        if it is not positive definite at some step.
        """
        K = np.array(K, dtype=float)
        k = np.array(k, dtype=float)
        if K.ndim != 3:
            raise ValueError(f"K must have shape (T, dU, dX), got {K.shape}")
        T, dU, dX = K.shape
        if k.shape != (T, dU):
            raise ValueError(f"k must have shape (T={T}, dU={dU}), got {k.shape}")
        covar = np.asarray(covar, dtype=float)
        if covar.shape == (dU, dU):
            covar = np.broadcast_to(covar, (T, dU, dU))
        if covar.shape != (T, dU, dU):
            raise ValueError(f"covar must have shape (T={T}, dU={dU}, dU) or (dU, dU), got "
                             f"{covar.shape}")
        if not (np.isfinite(K).all() and np.isfinite(k).all() and np.isfinite(covar).all()):
            raise ValueError("K, k and covar must be finite")
        covar = symmetrise(covar)
        chol = cholesky_per_step(covar, "covar")
        inv_covar = inverse_from_cholesky(chol)
        return cls(K=K, k=k, covar=covar, chol=chol, inv_covar=inv_covar)

    def act(self, t: int, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """
        Return u_t (dU,) = K_t x + k_t + chol_t noise.

        x is the state (dX,), noise standard normal (dU,); zeros give the mean action.
        """
        return self.K[t] @ x + self.k[t] + self.chol[t] @ noise

    def mean_actions(self, X: np.ndarray) -> np.ndarray:
        """Mean actions K_t x_t + k_t (N, T, dU) at the states X (N, T, dX)."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 3 or X.shape[1:] != (self.T, self.dX):
            raise ValueError(f"X must have shape (N, T={self.T}, dX={self.dX}), got {X.shape}")
        return np.einsum("tux,ntx->ntu", self.K, X) + self.k


class PolicySampler:
    """
    A policy as a rollout sampler, the interface of LinearGaussianController.

    act(t, x (dX,), noise (dU,)) = μ(x) + L noise with L Lᵀ = covariance (dU, dU): μ is a
    policy's action_mean, or the policy itself when it is callable (an ExportedPolicy),
    the noise standard normal (zeros give the mean action). lqr_controller and the
    offline trials sample the exported policy with it, with its exported covariance.
    """

    def __init__(self, policy, covariance: np.ndarray) -> None:
        self.policy = policy
        self.mean = getattr(policy, "action_mean", policy)  # a Policy, or an exported one
        self.chol = np.linalg.cholesky(np.asarray(covariance, dtype=float))

    def act(self, t: int, x: np.ndarray, noise: np.ndarray, image=None) -> np.ndarray:
        """
        Return the action u (dU,) at step t and state x (dX,) for the noise (dU,).

        image: the camera image (H, W, 3) uint8 an image policy acts on, else None.
        """
        mean = self.mean(x) if image is None else self.mean(x, image)
        return np.asarray(mean, dtype=float) + self.chol @ noise


# ---------------------------------------------------------------- exploration noise

@lru_cache(maxsize=16)
def _smoothing_matrix(T: int, smoothing_sigma: float, renormalize: bool) -> np.ndarray:
    """
    Return S (T, T) with smoothed = S @ white.

    S is a Gaussian filter over time (reflecting at the ends), rows scaled to unit norm when
    renormalising, so every step's noise is exactly unit variance — also at the ends, where the
    filter sees fewer samples.
    """
    S = gaussian_filter1d(np.eye(T), smoothing_sigma, axis=0, mode="reflect")
    if renormalize:
        S /= np.linalg.norm(S, axis=1, keepdims=True)
    S.setflags(write=False)
    return S


def smoothed_noise(rng: np.random.Generator, T: int, dU: int, smoothing_sigma: float = 2.0,
                   renormalize: bool = True) -> np.ndarray:
    """
    Draw standard-normal noise (T, dU) filtered over time with a Gaussian.

    The Gaussian has a standard deviation of `smoothing_sigma` time steps (0 = white noise),
    independently per action dimension. With `renormalize`, each step's marginal is N(0, 1) again,
    so `act(t, x, noise[t])` keeps the controller's covariance Σ_t while the exploration is
    temporally correlated (smoother on a real robot).
    """
    if T < 1 or dU < 1:
        raise ValueError(f"T and dU must be >= 1, got T={T}, dU={dU}")
    if not smoothing_sigma >= 0:
        raise ValueError(f"smoothing_sigma must be >= 0 (time steps), got {smoothing_sigma}")
    white = rng.standard_normal((T, dU))
    if smoothing_sigma == 0:
        return white
    return _smoothing_matrix(int(T), float(smoothing_sigma), bool(renormalize)) @ white


def rollout_noise(seed: int, iteration: int, condition: int, index: int, T: int, dU: int,
                  smoothing: float, renormalize: bool, attempt: int = 0) -> np.ndarray:
    """
    Draw the exploration noise (T, dU) of rollout `index` of `condition` at `iteration`.

    It is smoothed_noise from np.random.default_rng([seed, iteration, condition, index]), or with
    [..., attempt] for a batch drawn again (attempt > 0) because the first could not be used.

    One generator per rollout, so the noise of a rollout does not depend on how many
    were drawn before it (a retried or re-ordered trial on the robot gets the same noise)
    and the offline trainer and the ROS gps_trainer draw identical noise.
    """
    for name, value in (("seed", seed), ("iteration", iteration), ("condition", condition),
                        ("index", index), ("attempt", attempt)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    key = [int(seed), int(iteration), int(condition),
           int(index)] + ([int(attempt)] if attempt else [])
    rng = np.random.default_rng(key)
    return smoothed_noise(rng, T, dU, smoothing_sigma=smoothing, renormalize=renormalize)

# ---------------------------------------------------------------- initial controllers


def _joint_model(dX: int, position_idx, velocity_idx, mass_matrix, gravity_torque):
    """Return the validated index arrays (dU,), M (dU, dU) and g (dU,)."""
    position_idx = np.asarray(position_idx, dtype=int).ravel()
    velocity_idx = np.asarray(velocity_idx, dtype=int).ravel()
    dU = position_idx.size
    if dU == 0 or velocity_idx.size != dU:
        raise ValueError(f"position_idx and velocity_idx must both list the dU >= 1 joints, "
                         f"got {position_idx.size} and {velocity_idx.size} indices")
    both = np.concatenate([position_idx, velocity_idx])
    if both.min() < 0 or both.max() >= dX or np.unique(both).size != both.size:
        raise ValueError(f"position_idx and velocity_idx must be distinct indices in [0, dX={dX})")
    M = np.asarray(mass_matrix, dtype=float)
    g = np.asarray(gravity_torque, dtype=float)
    if M.shape != (dU, dU):
        raise ValueError(f"mass_matrix must have shape (dU={dU}, dU), got {M.shape}")
    if g.shape != (dU,):
        raise ValueError(f"gravity_torque must have shape (dU={dU},), got {g.shape}")
    M = symmetrise(M)
    try:
        np.linalg.cholesky(M)
    except np.linalg.LinAlgError:
        raise ValueError("mass_matrix must be symmetric positive definite") from None
    return position_idx, velocity_idx, M, g


def _torque_covariance(M: np.ndarray, accel_noise_std) -> np.ndarray:
    """Covariance M diag(σ²) Mᵀ (dU, dU) of torques from joint-acceleration noise σ."""
    sigma = np.broadcast_to(np.asarray(accel_noise_std, dtype=float), (M.shape[0],))
    if not (sigma > 0).all() or not np.isfinite(sigma).all():
        raise ValueError("accel_noise_std must be positive and finite (rad/s² per joint), got "
                         f"{sigma}")
    return (M * sigma ** 2) @ M.T


def pd_controller(T: int, x0: np.ndarray, position_idx: Sequence[int], velocity_idx: Sequence[int],
                  mass_matrix: np.ndarray, gravity_torque: np.ndarray, natural_frequency: float,
                  damping_ratio: float = 1.0, accel_noise_std: float | np.ndarray = 1.0,
                  target_position: np.ndarray | None = None) -> LinearGaussianController:
    """
    Build a PD controller holding the start pose q0 = x0[position_idx] (or `target_position`).

        u = M (ω² (q* − q) − 2ζω q̇) + g,    Σ = M diag(σ²) Mᵀ, the same at every step,

    with ω = natural_frequency (rad/s), ζ = damping_ratio, σ = accel_noise_std
    (scalar or (dU,), rad/s²), M (dU, dU) the mass matrix and g (dU,) the gravity torque
    at the start pose. Returns a controller with T steps on states of size dX = len(x0).
    """
    x0 = np.asarray(x0, dtype=float).ravel()
    q_idx, qd_idx, M, g = _joint_model(x0.size, position_idx, velocity_idx, mass_matrix,
                                       gravity_torque)
    if not (natural_frequency > 0 and damping_ratio >= 0):
        raise ValueError(f"natural_frequency must be > 0 and damping_ratio >= 0, "
                         f"got {natural_frequency} and {damping_ratio}")
    target = x0[q_idx] if target_position is None else np.asarray(target_position, dtype=float)
    if target.shape != q_idx.shape:
        raise ValueError(f"target_position must have shape ({q_idx.size},), got {target.shape}")
    dU, dX = q_idx.size, x0.size
    accel_gain = np.zeros((dU, dX))                  # a = accel_gain x + accel_offset
    accel_gain[:, q_idx] = -natural_frequency ** 2 * np.eye(dU)
    accel_gain[:, qd_idx] = -2.0 * damping_ratio * natural_frequency * np.eye(dU)
    accel_offset = natural_frequency ** 2 * target
    K = np.broadcast_to(M @ accel_gain, (T, dU, dX))
    k = np.broadcast_to(M @ accel_offset + g, (T, dU))
    return LinearGaussianController.from_covar(K, k, _torque_covariance(M, accel_noise_std))


def double_integrator_lqr_controller(T: int, dt: float, position_idx: Sequence[int],
                                     velocity_idx: Sequence[int], dX: int, mass_matrix: np.ndarray,
                                     gravity_torque: np.ndarray, target_position: np.ndarray,
                                     state_cost_weight: float = 1.0,
                                     action_cost_weight: float = 1e-3,
                                     accel_noise_std: float | np.ndarray = 1.0
                                     ) -> LinearGaussianController:
    """
    Build a finite-horizon LQR controller on a guessed model of the arm.

    The model is decoupled double integrators in joint acceleration a = M⁻¹ (u − g),
    discretised with step dt,

        q_{t+1} = q_t + dt q̇_t + ½ dt² a_t,    q̇_{t+1} = q̇_t + dt a_t,

    minimising Σ_t ½ w_x (‖q_t − q*‖² + ‖q̇_t‖²) + ½ w_u ‖a_t‖² (w_x = state_cost_weight,
    w_u = action_cost_weight, q* = target_position (dU,)). The gains are lifted to the full
    state (dX,) with zeros on the other entries and to torques by u = M a + g;
    Σ = M diag(σ²) Mᵀ with σ = accel_noise_std (rad/s²).
    """
    q_idx, qd_idx, M, g = _joint_model(dX, position_idx, velocity_idx, mass_matrix, gravity_torque)
    if not (dt > 0 and state_cost_weight > 0 and action_cost_weight > 0):
        raise ValueError(f"dt, state_cost_weight and action_cost_weight must be > 0, "
                         f"got {dt}, {state_cost_weight}, {action_cost_weight}")
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    dU = q_idx.size
    target = np.asarray(target_position, dtype=float)
    if target.shape != (dU,):
        raise ValueError(f"target_position must have shape (dU={dU},), got {target.shape}")
    eye = np.eye(dU)
    # Per joint model on s = [q; q̇] (2dU,), action a (dU,).
    A = np.block([[eye, dt * eye], [np.zeros((dU, dU)), eye]])
    B = np.vstack([0.5 * dt ** 2 * eye, dt * eye])
    F = np.broadcast_to(np.hstack([A, B]), (T - 1, 2 * dU, 3 * dU))
    C = np.diag(np.r_[np.full(2 * dU, state_cost_weight), np.full(dU, action_cost_weight)])
    c = np.r_[-state_cost_weight * target, np.zeros(2 * dU)]
    solution = lqr_backward(F, np.zeros((T - 1, 2 * dU)), np.broadcast_to(C, (T, 3 * dU, 3 * dU)),
                            np.broadcast_to(c, (T, 3 * dU)))
    K = np.zeros((T, dU, dX))
    K[:, :, q_idx] = M @ solution.K[:, :, :dU]
    K[:, :, qd_idx] = M @ solution.K[:, :, dU:]
    k = solution.k @ M.T + g
    return LinearGaussianController.from_covar(K, k, _torque_covariance(M, accel_noise_std))
