"""The global neural-network policy of MDGPS and its supervised training (the S-step).

Mirror-descent guided policy search (Montgomery & Levine 2016) alternates

* the C-step: LQR improves each condition's time-varying linear-Gaussian controller
  p_i(u|x, t) = N(K_t x + k_t, Σ_t) under a KL bound to the policy's linearisation, and
* the S-step: a single state-feedback policy π_θ(u|x) = N(μ_θ(x), diag(σ²)) is fitted to
  all controllers by minimising, over the states x visited by the rollouts,

      E[ (μ_θ(x) − μ(x))ᵀ Λ (μ_θ(x) − μ(x)) ],   μ(x) = K_t x + k_t,  Λ = Σ_t⁻¹

  (the θ-dependent part of KL(π_θ ‖ p_i)); the variance has a closed form,
  σ² = 1 / E[diag Λ].

This module holds:

* :class:`PolicySettings` — the S-step and network hyper-parameters, validated;
* :class:`Policy` — MLP mean with input normalisation (buffers, saved with the weights)
  and the diagonal action variance;
* :func:`train_policy` — the S-step (Adam, minibatches, optional early stopping);
* :func:`linearize_policy` — per-time-step linear-Gaussian fit of the policy around the
  sample states, the KL anchor for the next C-step;
* :func:`export_torchscript` / :func:`load_exported_policy` — deployment artefact
  (TorchScript with the normalisation inside, plus a JSON description);
* :func:`save_policy` / :func:`load_policy` — training checkpoints.

Shapes: N rollouts, T time steps, dX state dimension, dU action dimension.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mbpl_ros import __version__ as _PACKAGE_VERSION
from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.dynamics import gaussian_regression
from mbpl_ros.core.gmm import GMMPrior

__all__ = [
    "ACTIVATIONS",
    "EXPORT_FORMAT_VERSION",
    "ExportedPolicy",
    "Policy",
    "PolicyNetwork",
    "PolicySettings",
    "controller_targets",
    "export_torchscript",
    "linearize_policy",
    "load_exported_policy",
    "load_policy",
    "resolve_device",
    "save_policy",
    "train_policy",
]

#: Activation names accepted by :class:`PolicySettings` and :class:`Policy`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}

#: Bumped whenever the exported file layout or its JSON keys change incompatibly.
EXPORT_FORMAT_VERSION = 1
_EXPORT_FORMAT_NAME = "mbpl_ros.policy"
_CHECKPOINT_FORMAT_NAME = "mbpl_ros.policy_checkpoint"
_DEVICE_NAMES = ("cpu", "cuda")


# --------------------------------------------------------------------------- settings


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"PolicySettings.{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float = math.inf,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        ok = False
    else:
        ok = math.isfinite(value)
        ok = ok and (value >= low if low_inclusive else value > low)
        ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(
            f"PolicySettings.{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def _check_device_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not (
            value == "cpu" or value == "cuda"
            or (value.startswith("cuda:") and value[5:].isdigit())):
        raise ValueError(
            f"{name} must be 'cpu', 'cuda' or 'cuda:<index>', got {value!r}")


def _check_hidden_sizes(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    sizes = tuple(value)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
    return tuple(int(s) for s in sizes)


def _check_activation(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {sorted(ACTIVATIONS)}, got {value!r}")


@dataclass
class PolicySettings:
    """Network and S-step hyper-parameters (defaults follow GPS's policy_opt where sensible).

    Network
        hidden_sizes: widths of the hidden layers; ``()`` gives a linear policy.
        activation: one of :data:`ACTIVATIONS`
            (``relu``, ``tanh``, ``elu``, ``softplus``, ``silu``).
        initial_variance: action variance of an untrained policy (GPS ``init_var``), > 0.
        min_state_std: floor on the normaliser's per-dimension standard deviation, > 0,
            so state dimensions that never moved do not blow up the input.

    Training (one call of :func:`train_policy` = one S-step)
        learning_rate: Adam step size, > 0.
        weight_decay: Adam L2 weight decay, >= 0.
        batch_size: minibatch size (capped at the number of training states), >= 1.
        iterations: minibatch steps per S-step (fixed budget; the maximum when early
            stopping), >= 1.
        validation_fraction: share of the rollouts held out for early stopping, in [0, 1);
            0 disables early stopping and trains on everything for ``iterations`` steps.
            Whole rollouts are held out because states along one rollout are correlated.
        validation_interval: minibatch steps between two held-out evaluations, >= 1.
        patience: held-out evaluations without improvement before stopping, >= 1. The
            weights of the best evaluation are restored.
        entropy_regularization: GPS ``ent_reg`` >= 0; the variance becomes
            1 / (E[diag Λ] + 2·entropy_regularization).
        refit_normalization: False (GPS behaviour) fits the input normaliser at the first
            S-step only. True refits it at every S-step and rescales the first layer so
            the network's function is unchanged by the refit (warm start stays valid).
        normalize_actions: True fits an output scaling at the first S-step, μ_θ(x) =
            offset + scale ⊙ net(x̂), offset and scale the per-dimension mean and standard
            deviation of the controllers' mean actions: for actions of tens of units (an
            arm's gravity torques), which a freshly initialised network reaches slowly.
        loss_includes_log_det: add the θ-independent −E[log det Λ] term to the reported
            losses (the objective then is the policy's Gaussian NLL up to constants);
            gradients are unaffected.
        seed: seeds the weight initialisation and the minibatch order.
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:<i>'``; CUDA is used only when configured,
            and :func:`resolve_device` raises if it is configured but not available.
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    initial_variance: float = 0.1
    min_state_std: float = 1e-3
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    iterations: int = 1000
    validation_fraction: float = 0.0
    validation_interval: int = 50
    patience: int = 5
    entropy_regularization: float = 0.0
    refit_normalization: bool = False
    normalize_actions: bool = False
    loss_includes_log_det: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.hidden_sizes = _check_hidden_sizes("PolicySettings.hidden_sizes", self.hidden_sizes)
        _check_activation("PolicySettings.activation", self.activation)
        _check_float("initial_variance", self.initial_variance, 0.0, low_inclusive=False)
        _check_float("min_state_std", self.min_state_std, 0.0, low_inclusive=False)
        _check_float("learning_rate", self.learning_rate, 0.0, low_inclusive=False)
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("iterations", self.iterations, 1)
        _check_float("validation_fraction", self.validation_fraction, 0.0, 1.0,
                     high_inclusive=False)
        _check_int("validation_interval", self.validation_interval, 1)
        _check_int("patience", self.patience, 1)
        _check_float("entropy_regularization", self.entropy_regularization, 0.0)
        for flag in ("refit_normalization", "normalize_actions", "loss_includes_log_det"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(
                    f"PolicySettings.{flag} must be True or False, got {getattr(self, flag)!r}")
        _check_int("seed", self.seed, 0)
        _check_device_name("PolicySettings.device", self.device)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` ('cpu', 'cuda', 'cuda:<i>').

    Raises ValueError for an unknown name and RuntimeError when CUDA is configured but
    this torch build or machine has none (never silently falls back to the CPU).
    """
    _check_device_name("device", name)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={name!r} is configured but CUDA is not available "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "set device to 'cpu' or install a CUDA build of torch on a GPU machine")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device={name!r} is configured but only {torch.cuda.device_count()} CUDA "
            "device(s) exist")
    return device


# --------------------------------------------------------------------------- the policy


def _mlp(dX: int, dU: int, hidden_sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = dX
    for width in hidden_sizes:
        layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
        width_in = width
    layers.append(nn.Linear(width_in, dU))
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """π_θ(u|x) = N(μ_θ(x), diag(action_variance)), μ_θ an MLP on normalised states.

    forward(state (B, dX)) -> action mean (B, dU), normalisation included.

    Buffers (saved in ``state_dict`` with the weights):
        state_mean (dX,), state_std (dX,): input normaliser, x̂ = (x − mean) / std;
        action_offset (dU,), action_scale (dU,): output scaling, μ_θ(x) = offset + scale ⊙
            net(x̂) (0 and 1 unless PolicySettings.normalize_actions);
        action_variance (dU,): diagonal of the action covariance;
        normalizer_fitted (): whether the normaliser was fitted from data;
        s_steps (): number of S-steps trained, which varies the minibatch order between
            S-steps deterministically.

    The network is float32; numpy helpers accept and return float64.
    """

    def __init__(self, dX: int, dU: int, hidden_sizes: Sequence[int] = (64, 64),
                 activation: str = "relu", *, initial_variance: float = 0.1,
                 seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        for name, value in (("dX", dX), ("dU", dU)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Policy {name} must be a positive integer, got {value!r}")
        hidden = _check_hidden_sizes("Policy hidden_sizes", hidden_sizes)
        _check_activation("Policy activation", activation)
        if not (initial_variance > 0 and math.isfinite(initial_variance)):
            raise ValueError(f"Policy initial_variance must be > 0, got {initial_variance!r}")
        self.dX, self.dU = int(dX), int(dU)
        self.hidden_sizes = hidden
        self.activation = activation
        # Seeded initialisation without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = _mlp(self.dX, self.dU, hidden, activation)
        self.register_buffer("state_mean", torch.zeros(self.dX))
        self.register_buffer("state_std", torch.ones(self.dX))
        self.register_buffer("action_variance", torch.full((self.dU,), float(initial_variance)))
        self.register_buffer("normalizer_fitted", torch.tensor(False))
        self.register_buffer("action_offset", torch.zeros(self.dU))
        self.register_buffer("action_scale", torch.ones(self.dU))
        self.register_buffer("action_scaling_fitted", torch.tensor(False))
        self.register_buffer("s_steps", torch.tensor(0, dtype=torch.int64))
        self.to(resolve_device(device))

    @classmethod
    def from_settings(cls, dX: int, dU: int, settings: PolicySettings) -> "Policy":
        """A fresh policy with the network shape, seed and device of ``settings``."""
        return cls(dX, dU, settings.hidden_sizes, settings.activation,
                   initial_variance=settings.initial_variance, seed=settings.seed,
                   device=settings.device)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain Python), enough to rebuild the architecture."""
        return {"dX": self.dX, "dU": self.dU, "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.action_offset + self.action_scale * self.network(
            (state - self.state_mean) / self.state_std)

    def fit_action_scaling(self, target_mean: np.ndarray, min_std: float = 1e-3) -> None:
        """Set the output scaling from mean actions (..., dU): offset = their mean,
        scale = their standard deviation (floored at min_std). Meant for the first S-step:
        it changes the policy's function."""
        actions = np.asarray(target_mean, dtype=np.float64).reshape(-1, self.dU)
        with torch.no_grad():
            self.action_offset.copy_(torch.as_tensor(actions.mean(axis=0), dtype=torch.float32))
            self.action_scale.copy_(torch.as_tensor(np.maximum(actions.std(axis=0), min_std),
                                                    dtype=torch.float32))
            self.action_scaling_fitted.fill_(True)

    # ---- normalisation

    def fit_normalization(self, X: np.ndarray, min_std: float = 1e-3,
                          preserve_function: bool = True) -> None:
        """Fit the input normaliser to states X (..., dX).

        With ``preserve_function`` and an already fitted normaliser, the first linear
        layer is rescaled so μ_θ is unchanged: W' = W·diag(std'/std),
        b' = b + W·(mean' − mean)/std. Warm-started weights therefore stay meaningful.
        """
        states = np.asarray(X, dtype=np.float64).reshape(-1, self.dX)
        new_mean = torch.as_tensor(states.mean(axis=0), dtype=torch.float32, device=self.device)
        new_std = torch.as_tensor(np.maximum(states.std(axis=0), min_std),
                                  dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if preserve_function and bool(self.normalizer_fitted):
                first = self.network[0]
                first.bias += first.weight @ ((new_mean - self.state_mean) / self.state_std)
                first.weight *= (new_std / self.state_std)[None, :]
            self.state_mean.copy_(new_mean)
            self.state_std.copy_(new_std)
            self.normalizer_fitted.fill_(True)

    # ---- numpy conveniences

    def action_mean(self, X: np.ndarray) -> np.ndarray:
        """μ_θ(x) for states X (..., dX) -> (..., dU), float64, without gradients."""
        states = np.asarray(X, dtype=np.float64)
        if states.shape[-1:] != (self.dX,):
            raise ValueError(f"states must have last dimension dX={self.dX}, got {states.shape}")
        with torch.no_grad():
            flat = torch.as_tensor(states.reshape(-1, self.dX), dtype=torch.float32,
                                   device=self.device)
            actions = self(flat).double().cpu().numpy()
        return actions.reshape(states.shape[:-1] + (self.dU,))

    def action_covariance(self) -> np.ndarray:
        """The policy's action covariance diag(action_variance), (dU, dU) float64."""
        return np.diag(self.action_variance.detach().double().cpu().numpy())


#: Alias: the brief and GPS call the same object a policy network.
PolicyNetwork = Policy


# --------------------------------------------------------------------------- S-step


def controller_targets(controller: LinearGaussianController,
                       X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S-step targets of one condition's controller at its rollout states X (N, T, dX):
    the means K_t x_t + k_t (N, T, dU) and the precisions Σ_t⁻¹ tiled to (N, T, dU, dU)."""
    states = np.asarray(X, dtype=np.float64)
    if states.ndim != 3 or states.shape[1:] != (controller.T, controller.dX):
        raise ValueError(f"X must have shape (N, T={controller.T}, dX={controller.dX}), "
                         f"got {states.shape}")
    mean = np.einsum("tux,ntx->ntu", controller.K, states) + controller.k[None]
    precision = np.broadcast_to(controller.inv_covar[None],
                                (states.shape[0],) + controller.inv_covar.shape).copy()
    return mean, precision


def _robust_weights(weights: np.ndarray) -> np.ndarray:
    """GPS's sample weights: rescaled to mean 1, capped at twice the median of the
    non-negligible weights, then divided by that median (so a typical weight is ≈ 1)."""
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
                 weights: np.ndarray | None = None) -> dict[str, Any]:
    """One S-step: fit μ_θ to the local controllers' means, warm-starting from the
    policy's current weights, and set its variance.

    Args:
        policy: trained in place (moved to ``settings.device``).
        X: (N, T, dX) states of all conditions' rollouts, stacked along N.
        target_mean: (N, T, dU) controller means K_t x + k_t at those states.
        target_precision: (N, T, dU, dU) controller precisions Σ_t⁻¹.
        settings: hyper-parameters; defaults to ``PolicySettings()``.
        weights: optional (N, T) per-state weights (GPS ``pol_wt``), robustly normalised.

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
    device = resolve_device(settings.device)
    policy.to(device)

    if settings.refit_normalization or not bool(policy.normalizer_fitted):
        policy.fit_normalization(X, settings.min_state_std, preserve_function=True)
    if settings.normalize_actions and not bool(policy.action_scaling_fitted):
        policy.fit_action_scaling(target_mean)

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

    def as_tensors(rollouts: np.ndarray) -> tuple[torch.Tensor, ...]:
        def flat(a: np.ndarray, tail: tuple[int, ...]) -> torch.Tensor:
            return torch.as_tensor(a[rollouts].reshape((-1,) + tail), dtype=torch.float32,
                                   device=device)
        return (flat(X, (dX,)), flat(target_mean, (dU,)), flat(target_precision, (dU, dU)),
                flat(sample_weights, ()))

    train = as_tensors(train_rollouts)
    held_out = as_tensors(held_out_rollouts) if n_held_out else None
    n_train = train[0].shape[0]
    batch_size = min(settings.batch_size, n_train)

    def full_loss(data: tuple[torch.Tensor, ...]) -> float:
        states, mean, precision, weight = data
        with torch.no_grad():
            return float(_weighted_quadratic(policy(states) - mean, precision, weight)) \
                + log_det_term

    optimizer = torch.optim.Adam(policy.network.parameters(), lr=settings.learning_rate,
                                 weight_decay=settings.weight_decay)
    initial_loss = full_loss(train)
    best_validation = full_loss(held_out) if held_out is not None else None
    best_state = copy.deepcopy(policy.network.state_dict()) if held_out is not None else None
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
        states, mean, precision, weight = (tensor[index] for tensor in train)
        loss = _weighted_quadratic(policy(states) - mean, precision, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if held_out is not None and steps % settings.validation_interval == 0:
            validation = full_loss(held_out)
            if validation < best_validation:
                best_validation = validation
                best_state = copy.deepcopy(policy.network.state_dict())
                evaluations_without_improvement = 0
            else:
                evaluations_without_improvement += 1
                if evaluations_without_improvement >= settings.patience:
                    stopped_early = True
                    break
    policy.eval()
    if best_state is not None:
        policy.network.load_state_dict(best_state)

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


# --------------------------------------------------------------------------- linearisation


def linearize_policy(policy: Policy, X: np.ndarray, prior: GMMPrior | None = None,
                     regularization: float = 1e-6,
                     update_prior: bool = True) -> LinearGaussianController:
    """Linear-Gaussian approximation of the policy around sample states X (N, T, dX).

    Per time step t, u ≈ K_t x + k_t is fitted by (Bayesian) linear regression of the
    policy means μ_θ(x_{n,t}) on the states x_{n,t} (``gaussian_regression`` of
    core/dynamics.py, batched over T, with the normal-inverse-Wishart prior
    ``prior.evaluate`` gives for each step's N points [x, u] when a GMM prior is used).
    The covariance is the fit's residual plus the policy's own diag(action_variance).
    This is GPS's pol_K / pol_k / pol_S, the KL anchor of the next C-step.

    Args:
        policy: the trained policy.
        X: (N, T, dX) sample states.
        prior: optional GMMPrior over [x, u] points (d = dX + dU). With ``update_prior``
            it is first updated with this policy's [x, μ_θ(x)] at X, then evaluated per
            time step. The prior keeps its last ``max_rollouts`` rollouts, whose u came
            from the policy of their own iteration (GPS re-evaluates the current policy
            on old states); give the policy prior max_rollouts = rollouts per iteration
            for a prior of the current policy only.
        regularization: > 0, passed to gaussian_regression (ridge on the joint
            covariance; keeps steps whose states barely vary, e.g. t = 0, well-posed).

    Returns a LinearGaussianController with K (T, dU, dX), k (T, dU), covar, chol,
    inv_covar (T, dU, dU).
    """
    states = np.asarray(X, dtype=np.float64)
    if states.ndim != 3 or states.shape[2] != policy.dX or states.shape[0] < 1:
        raise ValueError(f"X must have shape (N, T, dX={policy.dX}), got {states.shape}")
    if not np.all(np.isfinite(states)):
        raise ValueError("X contains NaN or infinite values")
    if not (regularization > 0 and math.isfinite(regularization)):
        raise ValueError(f"regularization must be a finite number > 0, got {regularization!r}")
    dU = policy.dU

    actions = policy.action_mean(states)  # (N, T, dU), one batched forward pass
    points = np.concatenate([states, actions], axis=2)  # [x, u] (N, T, dX + dU)
    step_prior = None
    if prior is not None:
        if update_prior:
            prior.update(points)
        step_prior = prior.evaluate(np.swapaxes(points, 0, 1))  # batched over T
    # One regression per time step, batched over T: (T, N, dX) -> (T, N, dU).
    K, k, covar = gaussian_regression(np.swapaxes(states, 0, 1), np.swapaxes(actions, 0, 1),
                                      step_prior, regularization)
    covar = covar + policy.action_covariance()[None]
    covar = 0.5 * (covar + np.swapaxes(covar, 1, 2))
    chol = np.linalg.cholesky(covar)
    identity = np.broadcast_to(np.eye(dU), covar.shape)
    inv_chol = np.linalg.solve(chol, identity)  # L⁻¹, so Σ⁻¹ = L⁻ᵀ L⁻¹
    inv_covar = np.swapaxes(inv_chol, 1, 2) @ inv_chol
    return LinearGaussianController(K=K, k=k, covar=covar, chol=chol, inv_covar=inv_covar)


# --------------------------------------------------------------------------- export


class _DeployedPolicy(nn.Module):
    """TorchScript-able mean policy: state (dX,) or (B, dX), any float dtype -> action
    (dU,) or (B, dU) in the input's dtype (float64 for integer input)."""

    def __init__(self, network: nn.Sequential, state_mean: torch.Tensor,
                 state_std: torch.Tensor, action_variance: torch.Tensor,
                 action_offset: torch.Tensor, action_scale: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("state_mean", state_mean)
        self.register_buffer("state_std", state_std)
        self.register_buffer("action_variance", action_variance)
        self.register_buffer("action_offset", action_offset)
        self.register_buffer("action_scale", action_scale)
        self.dX = int(state_mean.shape[0])

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() < 1 or state.dim() > 2 or state.shape[-1] != self.dX:
            raise ValueError("policy input must have shape (dX,) or (B, dX) with dX="
                             + str(self.dX) + ", got " + str(list(state.shape)))
        single = state.dim() == 1
        x = state.to(self.state_mean.dtype)
        if single:
            x = x.unsqueeze(0)
        action = self.action_offset + self.action_scale * self.network(
            (x - self.state_mean) / self.state_std)
        if single:
            action = action.squeeze(0)
        if state.is_floating_point():
            return action.to(state.dtype)
        return action.to(torch.float64)


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def export_torchscript(policy: Policy, path: str | Path,
                       joint_names: Sequence[str] | None = None,
                       extra_metadata: Mapping[str, Any] | None = None,
                       action_covariance: np.ndarray | None = None) -> Path:
    """Write the policy mean as a TorchScript module at ``path`` (normalisation inside)
    and a JSON description next to it (same name, ``.json``), also embedded in the
    module as the extra file ``metadata.json``.

    The module maps state (dX,) or (B, dX), float32 or float64, to the action mean
    (dU,) or (B, dU) in the same dtype; it runs with plain ``torch.jit.load`` and needs
    no mbpl_ros code. JSON keys: format, format_version, mbpl_ros_version,
    torch_version, dX, dU, joint_names, hidden_sizes, activation, action_variance,
    extra, and action_covariance when given. ``joint_names`` (one per action dimension,
    the command order) is optional. ``action_covariance`` (dU, dU) is the covariance to
    sample actions with (MDGPS's Σ_π); without it, diag(action_variance) is meant.
    Returns the path of the JSON file.
    """
    path = Path(path)
    if action_covariance is not None:
        action_covariance = np.asarray(action_covariance, dtype=np.float64)
        if action_covariance.shape != (policy.dU, policy.dU):
            raise ValueError(f"action_covariance must be (dU, dU) = ({policy.dU}, {policy.dU}), "
                             f"got {action_covariance.shape}")
    if joint_names is not None:
        joint_names = [str(name) for name in joint_names]
        if len(joint_names) != policy.dU:
            raise ValueError(f"joint_names must name the dU={policy.dU} action dimensions, "
                             f"got {len(joint_names)} names")
    metadata = {
        "format": _EXPORT_FORMAT_NAME,
        "format_version": EXPORT_FORMAT_VERSION,
        "mbpl_ros_version": _PACKAGE_VERSION,
        "torch_version": torch.__version__,
        "dX": policy.dX,
        "dU": policy.dU,
        "joint_names": joint_names,
        "hidden_sizes": list(policy.hidden_sizes),
        "activation": policy.activation,
        "normalizer_fitted": bool(policy.normalizer_fitted),
        "action_variance": policy.action_variance.detach().double().cpu().tolist(),
        "extra": dict(extra_metadata) if extra_metadata is not None else {},
    }
    if action_covariance is not None:
        metadata["action_covariance"] = action_covariance.tolist()
    try:
        metadata_text = json.dumps(metadata, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"extra_metadata must be JSON-serialisable: {error}") from None

    deployed = _DeployedPolicy(copy.deepcopy(policy.network).cpu().eval(),
                               policy.state_mean.detach().cpu().clone(),
                               policy.state_std.detach().cpu().clone(),
                               policy.action_variance.detach().cpu().clone(),
                               policy.action_offset.detach().cpu().clone(),
                               policy.action_scale.detach().cpu().clone()).eval()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    with warnings.catch_warnings():
        # torch >= 2.10 marks TorchScript deprecated; it remains the format that loads in
        # C++ (libtorch) and plain Python without our code, which is what deployment needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(deployed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path), _extra_files={"metadata.json": metadata_text})
    json_path = _metadata_path(path)
    json_path.write_text(metadata_text + "\n")
    return json_path


class ExportedPolicy:
    """A loaded exported policy: ``policy(state)`` with a numpy array or tensor state
    (dX,) or (B, dX) returns the action mean (dU,) or (B, dU) — numpy float64 for numpy
    or list input, a tensor in the input's dtype for tensor input.

    Attributes: ``module`` (the TorchScript module), ``metadata`` (the JSON dict),
    ``dX``, ``dU``, ``joint_names``, ``action_variance`` (np (dU,)), ``action_covariance``
    (np (dU, dU): the exported one, else diag(action_variance)).
    """

    def __init__(self, module: torch.jit.ScriptModule, metadata: dict[str, Any]) -> None:
        self.module = module
        self.metadata = metadata
        self.dX = int(metadata["dX"])
        self.dU = int(metadata["dU"])
        self.joint_names = metadata.get("joint_names")
        self.action_variance = np.asarray(metadata["action_variance"], dtype=np.float64)
        covariance = metadata.get("action_covariance")
        self.action_covariance = (np.diag(self.action_variance) if covariance is None
                                  else np.asarray(covariance, dtype=np.float64))

    def __call__(self, state: Any) -> Any:
        with torch.inference_mode():
            if isinstance(state, torch.Tensor):
                return self.module(state)
            array = np.asarray(state, dtype=np.float64)
            return self.module(torch.from_numpy(array)).numpy()


def load_exported_policy(path: str | Path) -> ExportedPolicy:
    """Load what :func:`export_torchscript` wrote (torch + json only).

    Uses the JSON beside the module when present, else the copy embedded in it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no exported policy at {path}")
    extra_files = {"metadata.json": ""}
    with warnings.catch_warnings():  # TorchScript deprecation, see export_torchscript
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    json_path = _metadata_path(path)
    text = json_path.read_text() if json_path.is_file() else extra_files["metadata.json"]
    if not text:
        raise ValueError(f"{path} has no policy metadata (neither {json_path.name} nor an "
                         "embedded metadata.json)")
    metadata = json.loads(text)
    if metadata.get("format") != _EXPORT_FORMAT_NAME or \
            metadata.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported policy format {metadata.get('format')!r} version "
            f"{metadata.get('format_version')!r}; this loader reads {_EXPORT_FORMAT_NAME!r} "
            f"version {EXPORT_FORMAT_VERSION}")
    module.eval()
    return ExportedPolicy(module, metadata)


# --------------------------------------------------------------------------- checkpoints


def save_policy(policy: Policy, path: str | Path) -> None:
    """Checkpoint: architecture config + ``state_dict`` (weights, normaliser, variance,
    S-step count) in one ``torch.save`` file, restorable by :func:`load_policy`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in policy.state_dict().items()}
    torch.save({"format": _CHECKPOINT_FORMAT_NAME, "format_version": EXPORT_FORMAT_VERSION,
                "config": policy.config, "state_dict": state}, str(path))


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """Rebuild a policy saved by :func:`save_policy` on ``device``."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != _CHECKPOINT_FORMAT_NAME:
        raise ValueError(f"{path} is not a policy checkpoint written by save_policy")
    config = checkpoint["config"]
    policy = Policy(config["dX"], config["dU"], config["hidden_sizes"], config["activation"])
    # Checkpoints from before the output scaling lack its buffers: identity scaling.
    policy.load_state_dict({**policy.state_dict(), **checkpoint["state_dict"]})
    return policy.to(resolve_device(device)).eval()
