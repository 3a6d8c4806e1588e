"""
The S-step of MDGPS: fit the policy to the local controllers (supervised, Adam).

Over the states x visited by the rollouts it minimises

    E[ (μ_θ(x) − μ(x))ᵀ Λ (μ_θ(x) − μ(x)) ],   μ(x) = K_t x + k_t,  Λ = Σ_t⁻¹

(the θ-dependent part of KL(π_θ ‖ p_i)); the variance has a closed form, σ² = 1 / E[diag Λ].
Shapes: N rollouts, T time steps, dX state dimension, dU action dimension.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.policy.network import Policy, resolve_device
from mbpl_ros.core.policy.settings import PolicySettings
from mbpl_ros.core.safety import clamp_effort

__all__ = ["controller_targets", "train_policy"]


def controller_targets(controller: LinearGaussianController, X: np.ndarray,
                       action_limits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """
    Return the S-step targets of one condition's controller at its rollout states X.

    X (N, T, dX) gives the means K_t x_t + k_t (N, T, dU), clamped to ±action_limits (dU,)
    when given, and the precisions Σ_t⁻¹ tiled to (N, T, dU, dU).

    The clamp is what the robot applies of a command beyond its effort limits. It matters
    when a C-step's dynamics fit was wrong: that controller's gains then command many times
    the limits at its states, and fitting one shared network to such targets breaks it at
    every condition, after which each C-step is anchored to a broken policy.
    """
    states = np.asarray(X, dtype=np.float64)
    if states.ndim != 3 or states.shape[1:] != (controller.T, controller.dX):
        raise ValueError(f"X must have shape (N, T={controller.T}, dX={controller.dX}), "
                         f"got {states.shape}")
    mean = controller.mean_actions(states)
    if action_limits is not None:
        limits = np.asarray(action_limits, dtype=np.float64)
        if limits.shape != (controller.dU,) or not np.all(limits > 0):
            raise ValueError(f"action_limits must be (dU={controller.dU},) values > 0 (the "
                             f"effort limits), got {limits.tolist()}")
        mean = clamp_effort(mean, limits)   # the law the commands to the robot obey
    precision = np.broadcast_to(controller.inv_covar[None],
                                (states.shape[0],) + controller.inv_covar.shape).copy()
    return mean, precision


def _robust_weights(weights: np.ndarray) -> np.ndarray:
    """
    Return the sample weights as GPS uses them.

    Rescaled to mean 1, capped at twice the median of the non-negligible weights, then
    divided by that median (so a typical weight is ≈ 1).
    """
    w = weights * (weights.size / weights.sum())
    median = np.median(w[w > 1e-2])
    return np.minimum(w, 2.0 * median) / median


def _weighted_quadratic(diff: torch.Tensor, precision: torch.Tensor,
                        weight: torch.Tensor) -> torch.Tensor:
    """mean_b w_b · diff_bᵀ Λ_b diff_b for diff (B, dU), precision (B, dU, dU), weight (B,)."""
    return (weight * torch.einsum("bi,bij,bj->b", diff, precision, diff)).mean()


def _validate_training_data(policy: Policy, X: np.ndarray, target_mean: np.ndarray,
                            target_precision: np.ndarray,
                            weights: np.ndarray | None) -> tuple[np.ndarray, ...]:
    X = np.asarray(X, dtype=np.float64)
    target_mean = np.asarray(target_mean, dtype=np.float64)
    target_precision = np.asarray(target_precision, dtype=np.float64)
    if X.ndim != 3 or X.shape[2] != policy.dX or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must have shape (N, T, dX={policy.dX}) with N, T >= 1, "
                         f"got {X.shape}")
    N, T = X.shape[:2]
    if target_mean.shape != (N, T, policy.dU):
        raise ValueError(f"target_mean must have shape (N, T, dU)={(N, T, policy.dU)}, "
                         f"got {target_mean.shape}")
    if target_precision.shape != (N, T, policy.dU, policy.dU):
        raise ValueError("target_precision must have shape (N, T, dU, dU)="
                         f"{(N, T, policy.dU, policy.dU)}, got {target_precision.shape}")
    for name, array in (("X", X), ("target_mean", target_mean),
                        ("target_precision", target_precision)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(np.einsum("ntii->nti", target_precision) < 0):
        raise ValueError("target_precision must be positive semi-definite "
                         "(found a negative diagonal entry)")
    if weights is None:
        weights = np.ones((N, T))
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (N, T):
            raise ValueError(f"weights must have shape (N, T)={(N, T)}, got {weights.shape}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
    return X, target_mean, target_precision, weights


def train_policy(policy: Policy, X: np.ndarray, target_mean: np.ndarray,
                 target_precision: np.ndarray, settings: PolicySettings | None = None,
                 weights: np.ndarray | None = None,
                 images: np.ndarray | None = None) -> dict[str, Any]:
    """
    Run one S-step: fit μ_θ to the local controllers' means, and set the variance.

    The fit warm-starts from the policy's current weights. The arguments:

        policy: trained in place (moved to ``settings.device``).
        X: (N, T, dX) states of all conditions' rollouts, stacked along N.
        target_mean: (N, T, dU) controller means K_t x + k_t at those states.
        target_precision: (N, T, dU, dU) controller precisions Σ_t⁻¹.
        settings: hyper-parameters; defaults to ``PolicySettings()``.
        weights: optional (N, T) per-state weights (GPS ``pol_wt``), robustly normalised.
        images: (N, T, H, W, 3) uint8, the camera image of every state, for an image
            policy (core.policy.network.ImagePolicy: it sees its observation of x and the
            image); None for a state policy.

    Loss: mean over states of w·(μ_θ(x) − μ)ᵀ Λ (μ_θ(x) − μ), minimised with Adam on
    minibatches for ``settings.iterations`` steps, or less when early stopping on a
    held-out share of the rollouts. The normaliser is fitted at the first S-step only
    (unless ``settings.refit_normalization``); the Adam state is fresh at each S-step.
    Afterwards action_variance = 1 / (E[diag Λ] + 2·entropy_regularization).

    Returns dict with ``loss`` (final loss on the training states), ``initial_loss``,
    ``validation_loss`` (None without a held-out split), ``iterations`` (minibatch
    steps taken), ``epochs`` (passes over the training states), ``stopped_early`` and
    ``validation_rollouts`` (indices along N of the held-out rollouts).

    """
    settings = PolicySettings() if settings is None else settings
    if not isinstance(settings, PolicySettings):
        raise ValueError(f"settings must be a PolicySettings, got {type(settings).__name__}")
    X, target_mean, target_precision, weights = _validate_training_data(
        policy, X, target_mean, target_precision, weights)
    N, T, dX = X.shape
    dU = policy.dU
    needs_image = getattr(policy, "needs_image", False)
    if needs_image != (images is not None):
        raise ValueError("an image policy needs images (N, T, H, W, 3) and a state policy "
                         f"takes none; got {'none' if images is None else 'images'} for "
                         f"{type(policy).__name__}")
    if needs_image:
        images = np.asarray(images)
        expected = (N, T) + tuple(policy.image_shape) + (3,)
        if images.dtype != np.uint8 or images.shape != expected:
            raise ValueError(f"images must be uint8 {expected}, got {images.dtype} "
                             f"{images.shape}")
    device = resolve_device(settings.device)
    policy.to(device)

    if settings.refit_normalization or not bool(policy.normalizer_fitted):
        if needs_image:
            policy.fit_normalization(X, images, settings.min_state_std, preserve_function=True)
        else:
            policy.fit_normalization(X, settings.min_state_std, preserve_function=True)
    # The network fits the residual over a state policy's fixed action base (zero
    # without one), computed once here rather than at every minibatch.
    target_residual = (target_mean if needs_image
                       else target_mean - policy.base_actions(X))     # (N, T, dU)
    if settings.normalize_actions and not bool(policy.action_scaling_fitted):
        policy.fit_action_scaling(target_residual)

    # Deterministic per S-step: (seed, how many S-steps this policy has seen).
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + int(policy.s_steps))

    # Split whole rollouts into training and held-out sets.
    rollout_order = torch.randperm(N, generator=generator).numpy()
    n_held_out = 0
    if settings.validation_fraction > 0:
        if N < 2:
            raise ValueError("validation_fraction > 0 needs at least 2 rollouts (N >= 2), "
                             f"got N={N}")
        n_held_out = min(N - 1, max(1, int(round(settings.validation_fraction * N))))
    train_rollouts = np.sort(rollout_order[n_held_out:])
    held_out_rollouts = np.sort(rollout_order[:n_held_out])

    sample_weights = _robust_weights(weights)
    log_det_term = 0.0
    if settings.loss_includes_log_det:
        _, log_det = np.linalg.slogdet(target_precision)
        log_det_term = -float(np.mean(sample_weights * log_det))

    # An image policy's inputs: its observation of x, and the images (kept uint8).
    inputs = policy.observe(X) if needs_image else X

    def as_tensors(rollouts: np.ndarray) -> tuple[torch.Tensor, ...]:
        def flat(a: np.ndarray, tail: tuple[int, ...]) -> torch.Tensor:
            return torch.as_tensor(a[rollouts].reshape((-1,) + tail), dtype=torch.float32,
                                   device=device)
        tensors = (flat(inputs, (inputs.shape[2],)), flat(target_residual, (dU,)),
                   flat(target_precision, (dU, dU)), flat(sample_weights, ()))
        if needs_image:   # converted once, not at every minibatch
            tensors += (policy.pixels(torch.as_tensor(
                images[rollouts].reshape((-1,) + images.shape[2:]), device=device)),)
        return tensors

    def predict(data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return policy.forward_pixels(data[0], data[4]) if needs_image else policy.residual(data[0])

    train = as_tensors(train_rollouts)
    held_out = as_tensors(held_out_rollouts) if n_held_out else None
    n_train = train[0].shape[0]
    batch_size = min(settings.batch_size, n_train)

    def full_loss(data: tuple[torch.Tensor, ...], chunk: int = 1024) -> float:
        total = 0.0
        with torch.no_grad():
            for start in range(0, data[0].shape[0], chunk):
                part = tuple(tensor[start:start + chunk] for tensor in data)
                _, mean, precision, weight = part[:4]
                total += float(_weighted_quadratic(predict(part) - mean, precision, weight)) \
                    * mean.shape[0]
        return total / data[0].shape[0] + log_det_term

    trained = policy if needs_image else policy.network   # what Adam moves
    optimizer = torch.optim.Adam(trained.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay)
    initial_loss = full_loss(train)
    best_validation = full_loss(held_out) if held_out is not None else None
    best_state = copy.deepcopy(trained.state_dict()) if held_out is not None else None
    evaluations_without_improvement = 0
    stopped_early = False

    policy.train()
    permutation = torch.randperm(n_train, generator=generator)
    cursor = 0
    steps = 0
    while steps < settings.iterations:
        if cursor + batch_size > n_train:  # new epoch: reshuffle, drop the ragged tail
            permutation = torch.randperm(n_train, generator=generator)
            cursor = 0
        index = permutation[cursor:cursor + batch_size].to(device)
        cursor += batch_size
        batch = tuple(tensor[index] for tensor in train)
        _, mean, precision, weight = batch[:4]
        loss = _weighted_quadratic(predict(batch) - mean, precision, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if held_out is not None and steps % settings.validation_interval == 0:
            validation = full_loss(held_out)
            if validation < best_validation:
                best_validation = validation
                best_state = copy.deepcopy(trained.state_dict())
                evaluations_without_improvement = 0
            else:
                evaluations_without_improvement += 1
                if evaluations_without_improvement >= settings.patience:
                    stopped_early = True
                    break
    policy.eval()
    if best_state is not None:
        trained.load_state_dict(best_state)

    # Closed-form variance (GPS): the diagonal of the mean target precision.
    mean_precision_diag = np.einsum("ntii->i", target_precision) / (N * T)
    variance = 1.0 / (mean_precision_diag + 2.0 * settings.entropy_regularization)
    if not np.all(np.isfinite(variance)):
        raise ValueError("target_precision has an all-zero diagonal entry; the policy "
                         "variance 1/E[diag Λ] is undefined (use entropy_regularization > 0)")
    with torch.no_grad():
        policy.action_variance.copy_(torch.as_tensor(variance, dtype=torch.float32))
        policy.s_steps += 1

    return {
        "loss": full_loss(train),
        "initial_loss": initial_loss,
        "validation_loss": best_validation,
        "iterations": steps,
        "epochs": steps * batch_size / n_train,
        "stopped_early": stopped_early,
        "validation_rollouts": held_out_rollouts.tolist(),
    }
