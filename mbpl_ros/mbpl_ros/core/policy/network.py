"""
The global policy of MDGPS: π_θ(u|x) = N(μ_θ(x), diag(σ²)), and its training checkpoints.

:class:`Policy` is an MLP mean with input normalisation (buffers, saved with the weights)
and the diagonal action variance; :func:`save_policy` / :func:`load_policy` write and read
a training checkpoint. Shapes: dX state dimension, dU action dimension.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mbpl_ros.core.policy.settings import ACTIVATION_NAMES, ImagePolicySettings, PolicySettings

__all__ = ["ImagePolicy", "Policy", "SerialChainGravity", "SpatialSoftArgmax",
           "load_policy", "resolve_device", "save_policy"]

#: The module of each activation name of PolicySettings.
ACTIVATIONS: dict[str, type[nn.Module]] = dict(zip(
    ACTIVATION_NAMES, (nn.ReLU, nn.Tanh, nn.ELU, nn.Softplus, nn.SiLU)))


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


_CHECKPOINT_FORMAT_NAME = "mbpl_ros.policy_checkpoint"
_CHECKPOINT_FORMAT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """
    Return the torch device for ``name`` ('cpu', 'cuda', 'cuda:<i>').

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


class SerialChainGravity(nn.Module):
    """
    The gravity torque G(q) of a fixed-base serial chain of J revolute joints, in torch.

    forward(q (B, J)) -> G (B, J), the torque that holds the chain still at q:

        G_j(q) = −Σ_{i ≥ j} m_i gᵀ (a_j × (c_i − o_j)),

    a_j, o_j the world axis and origin of joint j, c_i and m_i the centre of mass and mass
    of the body joint i moves (with every body fixed to it), g the gravity vector: the
    derivative of the potential energy −Σ m_i gᵀ c_i. Written in torch (not a call of a
    rigid-body library) so that it is part of the exported TorchScript policy and a robot
    needs nothing else to run it. Buffers: rotations (J, 3, 3) and translations (J, 3) of
    each joint's frame in its parent's at q = 0, axes (J, 3) in the joint's frame, masses
    (J,), centres (J, 3) of mass in the joint's frame, gravity (3,), and the index maps
    chain_index / output_index (J,) between q's order and the chain's. Zero masses (the
    default) give G = 0.
    """

    def __init__(self, J: int) -> None:
        super().__init__()
        self.J = int(J)
        self.register_buffer("rotations", torch.eye(3).repeat(self.J, 1, 1))
        self.register_buffer("translations", torch.zeros(self.J, 3))
        self.register_buffer("axes", torch.tensor([0.0, 0.0, 1.0]).repeat(self.J, 1))
        self.register_buffer("masses", torch.zeros(self.J))
        self.register_buffer("centres", torch.zeros(self.J, 3))
        self.register_buffer("gravity", torch.zeros(3))
        self.register_buffer("skews", torch.zeros(self.J, 3, 3))   # [a_j]×
        self.register_buffer("chain_index", torch.arange(self.J))
        self.register_buffer("output_index", torch.arange(self.J))

    def set_chain(self, rotations: np.ndarray, translations: np.ndarray, axes: np.ndarray,
                  masses: np.ndarray, centres: np.ndarray, gravity: np.ndarray,
                  chain_index: Sequence[int] | None = None) -> None:
        """
        Set the chain (shapes as in the class docstring); the axes are normalised.

        chain_index (J,): the column of q (and of G) of each joint along the chain, base
        first (default: q's order is the chain's).
        """
        J = self.J
        index = np.arange(J) if chain_index is None else np.asarray(chain_index)
        if sorted(index.tolist()) != list(range(J)):
            raise ValueError(f"chain_index must order 0 .. {J - 1}, got {index.tolist()}")
        with torch.no_grad():
            self.chain_index.copy_(torch.as_tensor(index, dtype=torch.int64))
            self.output_index.copy_(torch.as_tensor(np.argsort(index), dtype=torch.int64))
        arrays = {"rotations": (rotations, (J, 3, 3)), "translations": (translations, (J, 3)),
                  "axes": (axes, (J, 3)), "masses": (masses, (J,)),
                  "centres": (centres, (J, 3)), "gravity": (gravity, (3,))}
        for name, (value, shape) in arrays.items():
            value = np.asarray(value, dtype=np.float64)
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ValueError(f"the gravity chain's {name} must be finite with shape {shape}, "
                                 f"got {value.shape}")
            if name == "axes":
                norms = np.linalg.norm(value, axis=1, keepdims=True)
                if np.any(norms < 1e-9):
                    raise ValueError("the gravity chain's axes must be non-zero vectors")
                value = value / norms
            with torch.no_grad():
                getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        a = self.axes.double().numpy()
        skews = np.zeros((J, 3, 3))
        skews[:, 0, 1], skews[:, 0, 2], skews[:, 1, 2] = -a[:, 2], a[:, 1], -a[:, 0]
        with torch.no_grad():
            self.skews.copy_(torch.as_tensor(skews - np.swapaxes(skews, 1, 2),
                                             dtype=torch.float32))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        q = q[:, self.chain_index]
        B = q.shape[0]
        rotation = torch.eye(3, dtype=q.dtype, device=q.device).expand(B, 3, 3)
        origin = torch.zeros(B, 3, dtype=q.dtype, device=q.device)
        axes: list[torch.Tensor] = []
        origins: list[torch.Tensor] = []
        centres: list[torch.Tensor] = []
        for j in range(self.J):
            # The joint's frame at q_j = 0, then the rotation q_j about its axis (Rodrigues).
            origin = origin + rotation @ self.translations[j]
            rotation = rotation @ self.rotations[j]
            axes.append(rotation @ self.axes[j])
            origins.append(origin)
            skew = self.skews[j]
            angle = q[:, j].reshape(B, 1, 1)
            rotation = rotation @ (torch.eye(3, dtype=q.dtype, device=q.device)
                                   + torch.sin(angle) * skew
                                   + (1.0 - torch.cos(angle)) * (skew @ skew))
            centres.append(origin + rotation @ self.centres[j])
        # G_j = −a_j · Σ_{i≥j} (c_i − o_j) × w_i = −a_j · (Σ_{i≥j} c_i × w_i − o_j × Σ_{i≥j} w_i),
        # w_i = m_i g: both sums are suffix sums over the chain.
        weight = (self.masses[:, None] * self.gravity).expand(B, self.J, 3)       # (B, J, 3)
        moments = torch.linalg.cross(torch.stack(centres, dim=1), weight, dim=2)
        moments = torch.flip(torch.cumsum(torch.flip(moments, [1]), dim=1), [1])
        weights = torch.flip(torch.cumsum(torch.flip(weight, [1]), dim=1), [1])
        moments = moments - torch.linalg.cross(torch.stack(origins, dim=1), weights, dim=2)
        torques = -(torch.stack(axes, dim=1) * moments).sum(dim=2)                 # (B, J)
        return torques[:, self.output_index]


def _mlp(dX: int, dU: int, hidden_sizes: Sequence[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = dX
    for width in hidden_sizes:
        layers += [nn.Linear(width_in, width), ACTIVATIONS[activation]()]
        width_in = width
    layers.append(nn.Linear(width_in, dU))
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """
    π_θ(u|x) = N(μ_θ(x), diag(action_variance)), μ_θ an MLP on normalised states.

    forward(state (B, dX)) -> action mean (B, dU), normalisation included.

    Buffers (saved in ``state_dict`` with the weights):
        state_mean (dX,), state_std (dX,): input normaliser, x̂ = (x − mean) / std;
        base_gain (dU, dX), base_bias (dU,): a fixed affine action the network's output is
            added to (zeros unless PolicySettings.action_base), so that
            μ_θ(x) = base_gain x + base_bias + offset + scale ⊙ net(x̂);
        action_offset (dU,), action_scale (dU,): output scaling of the network's part (0 and
            1 unless PolicySettings.normalize_actions);
        action_variance (dU,): diagonal of the action covariance;
        normalizer_fitted (): whether the normaliser was fitted from data;
        s_steps (): number of S-steps trained, which varies the minibatch order between
            S-steps deterministically.

    The network is float32; numpy helpers accept and return float64.
    """

    needs_image = False

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
        self.register_buffer("base_gain", torch.zeros(self.dU, self.dX))
        self.register_buffer("base_bias", torch.zeros(self.dU))
        # G(q) of the robot, q the state's first dU entries (core.rollouts.StateLayout).
        self.gravity = SerialChainGravity(self.dU)
        self.register_buffer("gravity_base", torch.tensor(False))
        self.register_buffer("s_steps", torch.tensor(0, dtype=torch.int64))
        self.to(resolve_device(device))

    @classmethod
    def from_settings(cls, dX: int, dU: int, settings: PolicySettings) -> "Policy":
        """Build a fresh policy with the network shape, seed and device of ``settings``."""
        return cls(dX, dU, settings.hidden_sizes, settings.activation,
                   initial_variance=settings.initial_variance, seed=settings.seed,
                   device=settings.device)

    @property
    def config(self) -> dict[str, Any]:
        """Return the constructor arguments (plain Python) that rebuild the architecture."""
        return {"dX": self.dX, "dU": self.dU, "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        action = state @ self.base_gain.T + self.base_bias + self.residual(state)
        if bool(self.gravity_base):
            action = action + self.gravity(state[:, :self.dU])
        return action

    def residual(self, state: torch.Tensor) -> torch.Tensor:
        """Return the network's part of μ_θ (B, dU) at states (B, dX): μ_θ less the base."""
        return self.action_offset + self.action_scale * self.network(
            (state - self.state_mean) / self.state_std)

    def set_gravity_base(self, **chain) -> None:
        """Add the gravity torque G(q) of a chain (SerialChainGravity.set_chain's arguments)."""
        self.gravity.set_chain(**chain)
        with torch.no_grad():
            self.gravity_base.fill_(True)

    def set_action_base(self, gain: np.ndarray, bias: np.ndarray) -> None:
        """
        Set the fixed affine action base_gain x + base_bias, gain (dU, dX), bias (dU,).

        The network then learns the residual over it. Meant before the first S-step: it
        changes the policy's function.
        """
        gain = np.asarray(gain, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64)
        if gain.shape != (self.dU, self.dX) or bias.shape != (self.dU,):
            raise ValueError(f"the action base needs gain (dU, dX) = ({self.dU}, {self.dX}) and "
                             f"bias (dU,) = ({self.dU},); got {gain.shape} and {bias.shape}")
        if not (np.all(np.isfinite(gain)) and np.all(np.isfinite(bias))):
            raise ValueError("the action base's gain and bias must be finite")
        with torch.no_grad():
            self.base_gain.copy_(torch.as_tensor(gain, dtype=torch.float32))
            self.base_bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def base_actions(self, X: np.ndarray) -> np.ndarray:
        """
        Return the base actions (..., dU) at states X (..., dX).

        They are base_gain x + base_bias, plus G(q) with the gravity base.
        """
        states = np.asarray(X, dtype=np.float64)
        gain = self.base_gain.detach().double().cpu().numpy()
        bias = self.base_bias.detach().double().cpu().numpy()
        actions = states @ gain.T + bias
        if bool(self.gravity_base):
            with torch.no_grad():
                q = torch.as_tensor(states.reshape(-1, self.dX)[:, :self.dU],
                                    dtype=torch.float32, device=self.device)
                actions = actions + self.gravity(q).double().cpu().numpy().reshape(
                    actions.shape)
        return actions

    def fit_action_scaling(self, target_mean: np.ndarray, min_std: float = 1e-3) -> None:
        """
        Set the output scaling from mean actions (..., dU).

        offset = their mean, scale = their standard deviation (floored at min_std). Meant
        for the first S-step: it changes the policy's function.
        """
        actions = np.asarray(target_mean, dtype=np.float64).reshape(-1, self.dU)
        with torch.no_grad():
            self.action_offset.copy_(torch.as_tensor(actions.mean(axis=0), dtype=torch.float32))
            self.action_scale.copy_(torch.as_tensor(np.maximum(actions.std(axis=0), min_std),
                                                    dtype=torch.float32))
            self.action_scaling_fitted.fill_(True)

    # ---- normalisation

    def fit_normalization(self, X: np.ndarray, min_std: float = 1e-3,
                          preserve_function: bool = True) -> None:
        """
        Fit the input normaliser to states X (..., dX).

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
        """Return the action covariance diag(action_variance), (dU, dU) float64."""
        return np.diag(self.action_variance.detach().double().cpu().numpy())


class SpatialSoftArgmax(nn.Module):
    """
    Feature points: the expected image coordinates of each feature map's softmax.

    forward(features (B, C, h, w)) -> (B, 2C) = [x_1, y_1, ..., x_C, y_C], with x (columns)
    and y (rows) in [-1, 1] (pixel centres, -1 the first, 1 the last), the softmax over
    the h·w positions of each channel taken at a learned temperature (Levine et al. 2016):

        p_c(i, j) = exp(f_c(i, j) / τ) / Σ exp(f_c / τ),   x_c = Σ p_c x_j,  y_c = Σ p_c y_i.
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height),
                                torch.linspace(-1.0, 1.0, width), indexing="ij")
        self.register_buffer("grid_x", xs.reshape(-1))
        self.register_buffer("grid_y", ys.reshape(-1))
        self.log_temperature = nn.Parameter(torch.zeros(()))  # τ = exp(·), 1 at first

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, C = features.shape[0], features.shape[1]
        flat = features.reshape(B, C, -1) / torch.exp(self.log_temperature)
        p = torch.softmax(flat, dim=-1)                                   # (B, C, h·w)
        points = torch.stack([p @ self.grid_x, p @ self.grid_y], dim=-1)  # (B, C, 2)
        return points.reshape(B, 2 * C)


class ImagePolicy(nn.Module):
    """
    π_θ(u|o, I) = N(μ_θ(o, I), diag(action_variance)): a visuomotor policy.

    It observes o = x[observation_indices] (dO,), the robot's own joint state, and the
    camera image I (H, W, 3) uint8; never the target. μ_θ: convolutions (ReLU) → spatial
    soft-argmax (2C feature points) → MLP on [normalised o, feature points] (Levine et
    al., JMLR 2016). forward(obs (B, dO), image (B, H, W, 3) uint8 or float in 0..255)
    -> (B, dU), both normalisations inside: ô = (o − obs_mean) / obs_std and
    Î = (I / 255 − image_mean) / image_std per colour channel.

    dX, the full state's size, is kept so MDGPS checks the controllers against it; the
    numpy helpers take full states X (..., dX) and pick the observation.
    Buffers as Policy's (state_* are the observation's), plus image_mean, image_std (3,).
    """

    needs_image = True

    def __init__(self, dX: int, dU: int, observation_indices: Sequence[int],
                 image_shape: Sequence[int], image: ImagePolicySettings | None = None,
                 hidden_sizes: Sequence[int] = (64, 64), activation: str = "relu", *,
                 initial_variance: float = 0.1, seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        for name, value in (("dX", dX), ("dU", dU)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ImagePolicy {name} must be a positive integer, got {value!r}")
        indices = [int(i) for i in observation_indices]
        if not indices or min(indices) < 0 or max(indices) >= dX:
            raise ValueError(f"ImagePolicy observation_indices must index a state of dX={dX}, "
                             f"got {indices}")
        height, width = (int(v) for v in image_shape)
        self.image_settings = ImagePolicySettings() if image is None else image
        feature_h, feature_w = self.image_settings.feature_map_size(height, width)
        hidden = _check_hidden_sizes("ImagePolicy hidden_sizes", hidden_sizes)
        _check_activation("ImagePolicy activation", activation)
        if not (initial_variance > 0 and math.isfinite(initial_variance)):
            raise ValueError(f"ImagePolicy initial_variance must be > 0, got "
                             f"{initial_variance!r}")
        self.dX, self.dU, self.dO = int(dX), int(dU), len(indices)
        self.observation_indices = tuple(indices)
        self.image_shape = (height, width)
        self.hidden_sizes, self.activation = hidden, activation
        channels = self.image_settings.conv_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            width_in = 3
            for out, kernel, stride in zip(channels, self.image_settings.kernel_sizes,
                                           self.image_settings.strides):
                layers += [nn.Conv2d(width_in, out, kernel, stride=stride), nn.ReLU()]
                width_in = out
            self.conv = nn.Sequential(*layers)
            self.feature_points = SpatialSoftArgmax(feature_h, feature_w)
            self.network = _mlp(self.dO + 2 * channels[-1], self.dU, hidden, activation)
        self.register_buffer("state_mean", torch.zeros(self.dO))
        self.register_buffer("state_std", torch.ones(self.dO))
        self.register_buffer("image_mean", torch.full((3,), 0.5))
        self.register_buffer("image_std", torch.full((3,), 0.25))
        self.register_buffer("action_variance", torch.full((self.dU,), float(initial_variance)))
        self.register_buffer("normalizer_fitted", torch.tensor(False))
        self.register_buffer("action_offset", torch.zeros(self.dU))
        self.register_buffer("action_scale", torch.ones(self.dU))
        self.register_buffer("action_scaling_fitted", torch.tensor(False))
        self.register_buffer("s_steps", torch.tensor(0, dtype=torch.int64))
        self.to(resolve_device(device))

    @classmethod
    def from_settings(cls, dX: int, dU: int, observation_indices: Sequence[int],
                      image_shape: Sequence[int], settings: PolicySettings) -> "ImagePolicy":
        """Build a fresh image policy from ``settings`` (its ``image`` section must be set)."""
        if settings.image is None:
            raise ValueError("ImagePolicy needs PolicySettings.image (the convolutions)")
        return cls(dX, dU, observation_indices, image_shape, settings.image,
                   settings.hidden_sizes, settings.activation,
                   initial_variance=settings.initial_variance, seed=settings.seed,
                   device=settings.device)

    @property
    def config(self) -> dict[str, Any]:
        """Return the constructor arguments (plain Python) that rebuild the architecture."""
        return {"dX": self.dX, "dU": self.dU,
                "observation_indices": list(self.observation_indices),
                "image_shape": list(self.image_shape), "hidden_sizes": list(self.hidden_sizes),
                "activation": self.activation,
                "image": {"conv_channels": list(self.image_settings.conv_channels),
                          "kernel_sizes": list(self.image_settings.kernel_sizes),
                          "strides": list(self.image_settings.strides)}}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    @staticmethod
    def pixels(image: torch.Tensor) -> torch.Tensor:
        """Return images (B, H, W, 3) in 0..255 as float (B, 3, H, W) in 0..1."""
        return image.permute(0, 3, 1, 2).to(torch.float32).contiguous() / 255.0

    def forward_pixels(self, obs: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Return μ_θ for observations (B, dO) and images as `pixels` returns them."""
        normalised = (pixels - self.image_mean[:, None, None]) / self.image_std[:, None, None]
        inputs = torch.cat([(obs - self.state_mean) / self.state_std,
                            self.feature_points(self.conv(normalised))], 1)
        return self.action_offset + self.action_scale * self.network(inputs)

    def forward(self, obs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.forward_pixels(obs, self.pixels(image))

    def observe(self, X: np.ndarray) -> np.ndarray:
        """Return the observations (..., dO) of full states X (..., dX)."""
        states = np.asarray(X, dtype=np.float64)
        if states.shape[-1:] != (self.dX,):
            raise ValueError(f"states must have last dimension dX={self.dX}, got {states.shape}")
        return states[..., list(self.observation_indices)]

    def fit_normalization(self, X: np.ndarray, images: np.ndarray, min_std: float = 1e-3,
                          preserve_function: bool = True) -> None:
        """
        Fit the normalisers to full states X (..., dX) and images (..., H, W, 3).

        The observation's as Policy.fit_normalization (with ``preserve_function`` the
        first linear layer's observation columns are rescaled so μ_θ is unchanged); the
        image's per colour channel, only when not fitted before (the convolutions' weights
        would not survive a change).
        """
        obs = self.observe(X).reshape(-1, self.dO)
        new_mean = torch.as_tensor(obs.mean(axis=0), dtype=torch.float32, device=self.device)
        new_std = torch.as_tensor(np.maximum(obs.std(axis=0), min_std), dtype=torch.float32,
                                  device=self.device)
        with torch.no_grad():
            if preserve_function and bool(self.normalizer_fitted):
                first = self.network[0]
                columns = first.weight[:, :self.dO]
                first.bias += columns @ ((new_mean - self.state_mean) / self.state_std)
                first.weight[:, :self.dO] = columns * (new_std / self.state_std)[None, :]
            else:
                pixels = np.asarray(images).reshape(-1, 3)[::97] / 255.0   # a subsample
                self.image_mean.copy_(torch.as_tensor(pixels.mean(axis=0), dtype=torch.float32))
                self.image_std.copy_(torch.as_tensor(np.maximum(pixels.std(axis=0), 1e-2),
                                                     dtype=torch.float32))
            self.state_mean.copy_(new_mean)
            self.state_std.copy_(new_std)
            self.normalizer_fitted.fill_(True)

    fit_action_scaling = Policy.fit_action_scaling
    action_covariance = Policy.action_covariance

    def action_mean(self, X: np.ndarray, images: np.ndarray, chunk: int = 512) -> np.ndarray:
        """
        Return μ_θ for full states X (..., dX) and their images (..., H, W, 3) -> (..., dU).

        Float64, without gradients, in chunks of `chunk` images.
        """
        obs = self.observe(X)
        images = np.asarray(images)
        lead = obs.shape[:-1]
        if images.shape != lead + self.image_shape + (3,):
            raise ValueError(f"images must have shape {lead + self.image_shape + (3,)} for "
                             f"states {np.shape(X)}, got {images.shape}")
        flat_obs = obs.reshape(-1, self.dO)
        flat_images = images.reshape((-1,) + self.image_shape + (3,))
        out = []
        with torch.no_grad():
            for start in range(0, flat_obs.shape[0], chunk):
                o = torch.as_tensor(flat_obs[start:start + chunk], dtype=torch.float32,
                                    device=self.device)
                image = torch.as_tensor(flat_images[start:start + chunk], device=self.device)
                out.append(self(o, image).double().cpu().numpy())
        actions = np.concatenate(out) if out else np.zeros((0, self.dU))
        return actions.reshape(lead + (self.dU,))


def save_policy(policy: Policy, path: str | Path) -> None:
    """
    Write a training checkpoint of the policy, restorable by :func:`load_policy`.

    One ``torch.save`` file: the architecture config and the ``state_dict`` (weights,
    normaliser, variance, S-step count).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in policy.state_dict().items()}
    torch.save({"format": _CHECKPOINT_FORMAT_NAME, "format_version": _CHECKPOINT_FORMAT_VERSION,
                "config": policy.config, "state_dict": state}, str(path))


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """Rebuild a policy saved by :func:`save_policy` on ``device``."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != _CHECKPOINT_FORMAT_NAME:
        raise ValueError(f"{path} is not a policy checkpoint written by save_policy")
    config = checkpoint["config"]
    if "image_shape" in config:
        policy = ImagePolicy(config["dX"], config["dU"], config["observation_indices"],
                             config["image_shape"], ImagePolicySettings(
                                 **{k: tuple(v) for k, v in config["image"].items()}),
                             config["hidden_sizes"], config["activation"])
    else:
        policy = Policy(config["dX"], config["dU"], config["hidden_sizes"], config["activation"])
    # Checkpoints from before the output scaling or the action base lack their buffers:
    # identity scaling, no base.
    policy.load_state_dict({**policy.state_dict(), **checkpoint["state_dict"]})
    return policy.to(resolve_device(device)).eval()
