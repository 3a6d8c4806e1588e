"""
Hyper-parameters of the policy network and of its S-step, validated.

:class:`PolicySettings` is the one place they are defined; :mod:`.network` builds the
network they describe and :mod:`.training` runs the S-step with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from torch import nn

__all__ = ["ACTIVATIONS", "PolicySettings"]

#: Activation names accepted by :class:`PolicySettings` and :class:`Policy`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


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
