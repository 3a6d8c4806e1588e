"""
Deployment of the policy: the TorchScript artefact and its loader.

:func:`export_torchscript` writes the policy mean (normalisation inside) and a JSON
description; :func:`load_exported_policy` reads them back with torch and json only (the
robot samples it with core.controller.PolicySampler). This module imports no training
code, no dynamics and no GMM: it is what a robot loads.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mbpl_ros import __version__ as _PACKAGE_VERSION

if TYPE_CHECKING:  # the network is needed to export, not to load
    from mbpl_ros.core.policy.network import Policy

__all__ = ["EXPORT_FORMAT_VERSION", "ExportedPolicy", "export_torchscript",
           "load_exported_policy"]

#: Bumped whenever the exported file layout or its JSON keys change incompatibly.
EXPORT_FORMAT_VERSION = 1
_EXPORT_FORMAT_NAME = "mbpl_ros.policy"


class _DeployedPolicy(nn.Module):
    """
    The policy mean as TorchScript compiles it.

    state (dX,) or (B, dX), any float dtype -> action (dU,) or (B, dU) in the input's dtype
    (float64 for integer input).
    """

    def __init__(self, network: nn.Sequential, state_mean: torch.Tensor,
                 state_std: torch.Tensor, action_variance: torch.Tensor,
                 action_offset: torch.Tensor, action_scale: torch.Tensor,
                 base_gain: torch.Tensor, base_bias: torch.Tensor, gravity: nn.Module,
                 gravity_base: bool) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("state_mean", state_mean)
        self.register_buffer("state_std", state_std)
        self.register_buffer("action_variance", action_variance)
        self.register_buffer("action_offset", action_offset)
        self.register_buffer("action_scale", action_scale)
        self.register_buffer("base_gain", base_gain)
        self.register_buffer("base_bias", base_bias)
        self.gravity = gravity            # G(q) of the robot (SerialChainGravity)
        self.gravity_base = gravity_base
        self.dU = int(base_bias.shape[0])
        self.dX = int(state_mean.shape[0])

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() < 1 or state.dim() > 2 or state.shape[-1] != self.dX:
            raise ValueError("policy input must have shape (dX,) or (B, dX) with dX="
                             + str(self.dX) + ", got " + str(list(state.shape)))
        single = state.dim() == 1
        x = state.to(self.state_mean.dtype)
        if single:
            x = x.unsqueeze(0)
        action = (x @ self.base_gain.t() + self.base_bias + self.action_offset
                  + self.action_scale * self.network((x - self.state_mean) / self.state_std))
        if self.gravity_base:
            action = action + self.gravity(x[:, :self.dU])
        if single:
            action = action.squeeze(0)
        if state.is_floating_point():
            return action.to(state.dtype)
        return action.to(torch.float64)


class _DeployedImagePolicy(nn.Module):
    """
    An image policy's mean as TorchScript compiles it.

    forward(obs (dO,) or (B, dO), any float dtype, image (H, W, 3) or (B, H, W, 3) uint8)
    -> action (dU,) or (B, dU) in obs's dtype; both normalisations inside (the same
    arithmetic as ImagePolicy.forward, on copies of its layers and buffers).
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.conv = policy.conv
        self.feature_points = policy.feature_points
        self.network = policy.network
        for name in ("state_mean", "state_std", "image_mean", "image_std", "action_variance",
                     "action_offset", "action_scale"):
            self.register_buffer(name, getattr(policy, name).detach().clone())
        self.dO = int(policy.dO)
        self.height, self.width = (int(v) for v in policy.image_shape)

    def forward(self, obs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if obs.dim() < 1 or obs.dim() > 2 or obs.shape[-1] != self.dO:
            raise ValueError("policy observation must have shape (dO,) or (B, dO) with dO="
                             + str(self.dO) + ", got " + str(list(obs.shape)))
        single = obs.dim() == 1
        o = obs.to(self.state_mean.dtype)
        pixels = image
        if single:
            o = o.unsqueeze(0)
            pixels = pixels.unsqueeze(0)
        if pixels.dim() != 4 or pixels.shape[0] != o.shape[0] or pixels.shape[1] != self.height \
                or pixels.shape[2] != self.width or pixels.shape[3] != 3:
            raise ValueError("policy image must have shape (H, W, 3) or (B, H, W, 3) with H="
                             + str(self.height) + ", W=" + str(self.width) + " and B as the "
                             "observation's, got " + str(list(image.shape)))
        x = pixels.to(self.image_mean.dtype).permute(0, 3, 1, 2) / 255.0
        x = (x - self.image_mean[:, None, None]) / self.image_std[:, None, None]
        inputs = torch.cat([(o - self.state_mean) / self.state_std,
                            self.feature_points(self.conv(x))], 1)
        action = self.action_offset + self.action_scale * self.network(inputs)
        if single:
            action = action.squeeze(0)
        if obs.is_floating_point():
            return action.to(obs.dtype)
        return action.to(torch.float64)


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def export_torchscript(policy: Policy, path: str | Path,
                       joint_names: Sequence[str] | None = None,
                       extra_metadata: Mapping[str, Any] | None = None,
                       action_covariance: np.ndarray | None = None) -> Path:
    """
    Write the policy mean as a TorchScript module at ``path``, and its JSON description.

    The module has the normalisation inside; the JSON lies next to it (same name,
    ``.json``) and is also embedded in the module as the extra file ``metadata.json``.

    The module maps state (dX,) or (B, dX), float32 or float64, to the action mean
    (dU,) or (B, dU) in the same dtype; it runs with plain ``torch.jit.load`` and needs
    no mbpl_ros code. An image policy's module maps (obs (B, dO), image (B, H, W, 3)
    uint8) instead (see _DeployedImagePolicy); its JSON adds ``image`` ({height, width,
    channels}), ``dO`` and ``observation_indices`` (where obs lies in the state x).
    JSON keys: format, format_version, mbpl_ros_version, torch_version, dX, dU,
    joint_names, hidden_sizes, activation, action_variance, extra, and action_covariance
    when given. ``joint_names`` (one per action dimension, the command order) is optional.
    ``action_covariance`` (dU, dU) is the covariance to
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
    if getattr(policy, "needs_image", False):
        height, width = policy.image_shape
        metadata.update({"image": {"height": int(height), "width": int(width), "channels": 3},
                         "dO": policy.dO,
                         "observation_indices": list(policy.observation_indices),
                         "conv": policy.config["image"]})
    try:
        metadata_text = json.dumps(metadata, indent=2, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"extra_metadata must be JSON-serialisable: {error}") from None

    if getattr(policy, "needs_image", False):
        deployed = _DeployedImagePolicy(copy.deepcopy(policy).cpu().eval()).eval()
    else:
        deployed = _DeployedPolicy(copy.deepcopy(policy.network).cpu().eval(),
                                   policy.state_mean.detach().cpu().clone(),
                                   policy.state_std.detach().cpu().clone(),
                                   policy.action_variance.detach().cpu().clone(),
                                   policy.action_offset.detach().cpu().clone(),
                                   policy.action_scale.detach().cpu().clone(),
                                   policy.base_gain.detach().cpu().clone(),
                                   policy.base_bias.detach().cpu().clone(),
                                   copy.deepcopy(policy.gravity).cpu().eval(),
                                   bool(policy.gravity_base)).eval()
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
    """
    A loaded exported policy, called as ``policy(state)`` or ``policy(state, image)``.

    With a numpy array or tensor state (dX,) or (B, dX) it returns the action mean (dU,) or
    (B, dU): numpy float64 for numpy or list input, a tensor in the input's dtype for tensor
    input. An image policy (``needs_image``) also takes the camera image (H, W, 3) or
    (B, H, W, 3) uint8, and as state either the full state x (dX) — it reads only the
    observation x[observation_indices], the robot's joint state — or that observation
    (dO); it raises ValueError without an image.

    Attributes: ``module`` (the TorchScript module), ``metadata`` (the JSON dict),
    ``dX``, ``dU``, ``joint_names``, ``action_variance`` (np (dU,)), ``action_covariance``
    (np (dU, dU): the exported one, else diag(action_variance)), ``image_shape`` ((H, W)
    or None), ``observation_indices`` ((dO,) or None).
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
        image = metadata.get("image")
        self.image_shape = None if image is None else (int(image["height"]), int(image["width"]))
        self.observation_indices = (None if image is None
                                    else [int(i) for i in metadata["observation_indices"]])

    @property
    def needs_image(self) -> bool:
        """Whether the policy acts on a camera image (and the joint state) as well."""
        return self.image_shape is not None

    def __call__(self, state: Any, image: Any = None) -> Any:
        if not self.needs_image:
            if image is not None:
                raise ValueError("this policy takes no image (it was exported without one)")
            with torch.inference_mode():
                if isinstance(state, torch.Tensor):
                    return self.module(state)
                array = np.asarray(state, dtype=np.float64)
                return self.module(torch.from_numpy(array)).numpy()
        if image is None:
            raise ValueError(f"this policy needs a camera image ({self.image_shape[0]}x"
                             f"{self.image_shape[1]} RGB) with the state")
        tensor_in = isinstance(state, torch.Tensor)
        obs = state if tensor_in else torch.from_numpy(np.asarray(state, dtype=np.float64))
        if obs.shape[-1] == self.dX and self.dX != len(self.observation_indices):
            obs = obs[..., self.observation_indices]
        pixels = image if isinstance(image, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(image, dtype=np.uint8))
        with torch.inference_mode():
            action = self.module(obs, pixels)
        return action if tensor_in else action.numpy()


def load_exported_policy(path: str | Path) -> ExportedPolicy:
    """
    Load what :func:`export_torchscript` wrote (torch + json only).

    Uses the JSON beside the module when present, else the copy embedded in it.
    """
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
