"""
The settings of the MDGPS policy, its S-step and its linearisation.

Torch-free, so that loading an experiment file (which documents and checks these) does not
import the training code; core.policy.network, core.policy.training and core.mdgps use them.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from mbpl_ros.core.settings import setting, settings_dataclass

__all__ = ["ACTION_BASES", "ACTIVATION_NAMES", "ImagePolicySettings", "MdgpsSettings",
           "PolicyPriorSettings",
           "PolicySettings"]

#: The activations core.policy.network.ACTIVATIONS provides, by name.
ACTIVATION_NAMES = ("relu", "tanh", "elu", "softplus", "silu")
#: What PolicySettings.action_base may name.
ACTION_BASES = ("none", "gravity", "initial_controller")


@settings_dataclass
class ImagePolicySettings:
    """
    The convolutional part of an image policy (Levine et al., JMLR 2016, smaller).

    Convolutions (each followed by a ReLU, no padding) map the camera image to C feature
    maps; a spatial soft-argmax turns each map into one feature point, its expected image
    coordinates (x, y) in [-1, 1]; the 2C numbers, with the normalised observation, feed
    the MLP of hidden_sizes. The image size is the camera's.
    """

    conv_channels: tuple[int, ...] = setting("output channels of each convolution; the last "
                                             "is the number of feature points", (16, 16, 16),
                                             ge=1)
    kernel_sizes: tuple[int, ...] = setting("square kernel size of each convolution (one per "
                                            "entry of conv_channels)", (5, 3, 3), ge=1)
    strides: tuple[int, ...] = setting("stride of each convolution (one per entry of "
                                       "conv_channels)", (2, 2, 1), ge=1)

    def __post_init__(self):
        if not self.conv_channels:
            raise ValueError("conv_channels: at least one convolution is needed")
        for key in ("kernel_sizes", "strides"):
            if len(getattr(self, key)) != len(self.conv_channels):
                raise ValueError(f"{key} must have one entry per convolution "
                                 f"({len(self.conv_channels)}, as conv_channels), got "
                                 f"{list(getattr(self, key))}")

    def feature_map_size(self, height: int, width: int) -> tuple[int, int]:
        """Return (h, w) of the last feature maps of an image (height, width); ValueError: < 1."""
        h, w = height, width
        for kernel, stride in zip(self.kernel_sizes, self.strides):
            h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        if h < 1 or w < 1:
            raise ValueError(f"the convolutions (kernel_sizes {list(self.kernel_sizes)}, strides "
                             f"{list(self.strides)}) leave no pixel of a {height}x{width} image")
        return h, w


@settings_dataclass
class PolicySettings:
    """
    Network and S-step hyper-parameters (defaults follow GPS's policy_opt where sensible).

    One call of core.policy.training.train_policy is one S-step. CUDA is used only when configured,
    and core.policy.network.resolve_device raises if it is configured but not available.
    """

    hidden_sizes: tuple[int, ...] = setting(
        "widths of the hidden layers of the policy network; [] = linear policy", (64, 64),
        ge=1)
    activation: str = setting("activation after each hidden layer", "relu",
                              choices=ACTIVATION_NAMES)
    initial_variance: float = setting("action variance of the untrained policy (N·m)² "
                                      "(GPS init_var)", 0.1, gt=0.0)
    min_state_std: float = setting(
        "floor on the input normaliser's per-dimension standard deviation, so that state "
        "dimensions that never moved do not blow up the input", 1e-3, gt=0.0)
    learning_rate: float = setting("Adam step size", 1e-3, gt=0.0)
    weight_decay: float = setting("Adam L2 weight decay", 0.0, ge=0.0)
    batch_size: int = setting("states per minibatch (capped at the states available)", 64,
                              ge=1)
    iterations: int = setting("Adam minibatch steps per S-step (the most, with early "
                              "stopping)", 1000, ge=1)
    validation_fraction: float = setting(
        "share of the rollouts held out for early stopping (whole rollouts: states along "
        "one are correlated); 0: no early stopping, train on all for iterations steps", 0.0,
        ge=0.0, lt=1.0)
    validation_interval: int = setting("minibatch steps between two held-out evaluations",
                                       50, ge=1)
    patience: int = setting("held-out evaluations without improvement before the S-step "
                            "stops (restoring the best weights)", 5, ge=1)
    entropy_regularization: float = setting(
        "GPS ent_reg: the policy's variance becomes 1 / (E[diag Λ] + 2 · this); widens the "
        "policy's exploration", 0.0, ge=0.0)
    refit_normalization: bool = setting(
        "refit the policy's input normaliser at every S-step (the network's function kept), "
        "not only at the first: for tasks whose later states leave the first iteration's "
        "range", False)
    normalize_actions: bool = setting(
        "scale the policy's outputs by the mean and std. dev. of the first S-step's target "
        "actions: for actions of tens of N·m (an arm's gravity torques)", False)
    action_base: str = setting(
        "what the network's output is added to, so that it learns only the residual: none; "
        "gravity (the robot's gravity torque G(q) from its model, computed inside the "
        "exported policy); or initial_controller (the initial controllers' affine action "
        "K̄x + k̄, averaged over conditions and time steps)",
        "none", choices=ACTION_BASES, allowed="'none', 'gravity' or 'initial_controller'")
    loss_includes_log_det: bool = setting(
        "report the S-step loss with its θ-independent −E[log det Λ] term, i.e. as the "
        "policy's Gaussian NLL up to constants (gradients unchanged)", False)
    seed: int = setting("seeds the weight initialisation and the minibatch order", 0, ge=0)
    device: str = setting("where the S-step trains: cpu, cuda or cuda:<index> (an error if "
                          "CUDA is absent)", "cpu", pattern=r"cpu|cuda(:[0-9]+)?",
                          allowed="cpu, cuda or cuda:<index>")
    image: Optional[ImagePolicySettings] = setting(
        "an image policy: it sees the joint state and the camera image, never the target "
        "(needs a camera section; see 'policy.image' below); null: the state policy", None)


@settings_dataclass
class PolicyPriorSettings:
    """
    GMM prior over [x, μ_θ(x)] points for the policy linearisation (GPS's PolicyPriorGMM).

    Each condition's prior holds only the current iteration's rollouts (its buffer is as
    long as that condition's batch), so it describes the current policy; the mixture is
    warm-started from the previous iteration's fit.
    """

    enabled: bool = setting("use a GMM prior over [x, policy action] when linearising the "
                            "policy", True)
    max_clusters: int = setting("largest number of GMM clusters", 20, ge=1)
    min_points_per_cluster: int = setting("clusters = min(max_clusters, points // this)", 20,
                                          ge=1)
    strength: float = setting("scales the prior's pseudo-counts", 1.0, gt=0.0)


@settings_dataclass
class MdgpsSettings:
    """
    MDGPS: the policy, its linearisation and its action covariance Σ_π.

    covariance: Σ_π minimises the S-step's E[KL(π ‖ p_m)] over Gaussians of its kind.
    ``"full"``: Σ_π = E[Σ_m,t⁻¹]⁻¹ (dU, dU), the expectation over all training states;
    ``"diagonal"``: Σ_π = diag(1 / E[diag Σ_m,t⁻¹]), GPS's choice, the Policy's own
    action_variance. They agree for uncorrelated controller noise. With correlated noise
    (torques M(q) a from joint-acceleration noise a, strongly correlated on an arm) the
    diagonal one is far narrower than every controller, the C-step then shrinks the
    controllers to it, and exploration collapses; hence "full" by default.
    """

    policy: PolicySettings = dataclasses.field(default_factory=PolicySettings,
                                               metadata={"doc": "network and S-step"})
    policy_prior: PolicyPriorSettings = dataclasses.field(
        default_factory=PolicyPriorSettings, metadata={"doc": "the linearisation's GMM prior"})
    linearization_regularization: float = setting(
        "ridge of the per-step regression that linearises the policy", 1e-6, gt=0.0)
    covariance: str = setting(
        "the policy's action covariance: full (E[Σ⁻¹]⁻¹, keeps correlated exploration) or "
        "diagonal (GPS's)", "full", choices=("full", "diagonal"), allowed="'full' or 'diagonal'")
    s_step_max_cost_ratio: Optional[float] = setting(
        "the S-step leaves out a rollout whose cost exceeds this multiple of the batch's "
        "median rollout cost (one the exploration noise flung: fitting the network to its "
        "controller at such states pulls it off every condition); null: every rollout "
        "(GPS's)", None, gt=0.0)
    anchor_max_kl: Optional[float] = setting(
        "the C-step anchors a condition to the policy only while the policy's linearisation is "
        "within this KL (per time step) of the controller that drew the rollouts, else to "
        "that controller (an LQR-FLM step); null: always to the policy (GPS's MDGPS)", None,
        gt=0.0)
