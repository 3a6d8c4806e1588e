"""
Mirror-descent guided policy search (MDGPS, Montgomery & Levine 2016).

LQR-FLM improves one time-varying linear-Gaussian controller p_m(u|x, t) per condition m;
MDGPS distils them into one state-feedback policy π_θ(u|x) that works from every
condition, and makes the controllers stay near what the policy can represent. Each
iteration, from rollouts of the current controllers p_m (or of the policy itself):

  1. S-step: fit π_θ to all controllers at once, minimising over the rollout states x

         Σ_m E_{x ~ p_m} (μ_θ(x) − μ_m(x))ᵀ Σ_m⁻¹ (μ_θ(x) − μ_m(x)),
         μ_m(x) = clip(K_t x + k_t, −u_max, u_max),

     u_max the robot's effort limits, what it would apply of the controller's command
     (core.policy.training.train_policy; the variance has a closed form);
  2. linearise π_θ around each condition's rollouts: π̄_m(u|x, t) = N(K̄_t x + k̄_t, S̄_t),
     a per-time-step Bayesian linear regression of μ_θ(x) on x with a GMM prior over
     [x, μ_θ(x)] fitted to this iteration's points (linearize_policy, below);
  3. C-step: fit each condition's dynamics and cost from its rollouts, then

         p_m ← argmin E_p[Σ_t l_t]  s.t.  KL(p(τ) ‖ π̄_m(τ)) ≤ ε_m,

     i.e. LqrFlm.update with the linearised policies as the KL anchors (instead of
     each controller's previous self, the LQR-FLM anchor). With
     ``MdgpsSettings.anchor_max_kl``, a condition whose controller the policy did not
     follow, KL(p_m(τ) ‖ π̄_m(τ)) > anchor_max_kl · T under that condition's new model, is
     anchored to its controller instead (an LQR-FLM step): its model knows only the states
     near that controller's rollouts, and a step to a far-off anchor extrapolates it (on
     contact, such steps flung the arm; docs/benchmarks.md, peg insertion).

This follows the order of GPS's AlgorithmMDGPS.iteration (update dynamics; policy on
the current controllers; linearise the policy; C-step), with the S-step of the current
controllers at their own rollout states, so the first S-step fits the initial
controllers and the first C-step already has a meaningful anchor.

The KL step size ε adapts with GPS's MDGPS rule (AlgorithmMDGPS._stepadjust, its
"laplace" rule), which judges the POLICY, not the controllers: with π̄⁻ the previous
linearisation, p the controller the last C-step made (which drew this batch), π̄ the new
linearisation, and (F⁻, l⁻), (F, l) the previous and the new dynamics/cost models,

    predicted improvement = J(π̄⁻; F⁻, l⁻) − J(p; F⁻, l⁻),
    actual improvement    = J(π̄⁻; F⁻, l⁻) − J(π̄; F, l),

J being the Laplace estimate of the expected total cost, each averaged over the M
conditions, and one multiplier for all conditions (traj_opt.adjust_step). The step
thus shrinks when the policy does not follow the controllers to their predicted cost.

Shapes: M conditions, N rollouts (all conditions stacked), T time steps, dX state
dimension, dU action dimension.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.dynamics import LinearGaussianDynamics, gaussian_regression
from mbpl_ros.core.gmm import GMMPrior
from mbpl_ros.core.linalg import inverse_from_cholesky, symmetrise
from mbpl_ros.core.lqr_flm import ConditionReport, ConditionState, LqrFlm, LqrFlmSettings
from mbpl_ros.core.policy.network import ImagePolicy, Policy
from mbpl_ros.core.policy.settings import MdgpsSettings, PolicyPriorSettings
from mbpl_ros.core.policy.training import controller_targets, train_policy
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.core.traj_opt import forward_pass, kl_divergence

__all__ = ["Mdgps", "MdgpsReport", "MdgpsSettings", "PolicyPriorSettings", "linearize_policy"]


@dataclass
class MdgpsReport:
    """
    What one MDGPS iteration did.

    policy_loss: S-step loss after training, mean over states of
        (μ_θ(x) − μ_m(x))ᵀ Σ_m⁻¹ (μ_θ(x) − μ_m(x)); an error as large as one draw of the
        controllers' own exploration noise scores dU, so loss ≪ dU is a close fit.
    policy_initial_loss: the same before this S-step (the warm-started policy).
    policy_training: everything core.policy.training.train_policy returned.
    policy_kl: (M,) KL(p_m(τ) ‖ π̄_m(τ)) of the controller that drew the rollouts from
        the policy's linearisation, under the dynamics fitted to those rollouts: how far
        the policy is from that controller, in the C-step's own units.
    conditions: (M,) LQR-FLM's report of the C-step per condition.
    seconds: wall time of the parts, {"s_step", "linearization", "c_step"} (the C-step
        with its dynamics fit).
    """

    policy_loss: float
    policy_initial_loss: float
    policy_training: dict[str, Any]
    policy_kl: list[float]
    conditions: list[ConditionReport]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class Mdgps:
    """
    MDGPS over M conditions: M local controllers (LqrFlm) and one global policy.

    The arguments:
        cost: the task cost, ``evaluate(X (N, T, dX), U (N, T, dU)) -> CostExpansion``.
        initial_controllers: (M,) controllers with the same T, dX, dU.
        settings: MDGPS settings (policy network, S-step, linearisation).
        lqr_flm_settings: the C-step's settings (dynamics fit, KL step, step adjustment).
        policy: optional policy to start from (e.g. restored); by default a fresh one
            from ``settings.policy``, given its action base (PolicySettings.action_base).
        observation_indices, image_shape: for an image policy (``settings.policy.image``):
            where its observation lies in x (dO,), and the camera's (H, W). The rollouts
            then carry images (N, T, H, W, 3); the S-step fits μ_θ(o, I) to the
            controllers, which keep the full state x, and the linearisation regresses the
            policy's actions at each sample's (o, I) on that sample's x.
        gravity_chain: the robot's chain for action_base 'gravity' (the keyword arguments
            of core.policy.network.SerialChainGravity.set_chain).
        action_limits: (dU,) the robot's effort limits, > 0: the S-step's targets are the
            controllers' means clamped to them (core.policy.training.controller_targets).

    Attributes: ``local`` (the LqrFlm), ``policy`` (the Policy), ``policy_covariance``
    ((dU, dU), Σ_π of the last S-step, see MdgpsSettings.covariance; the policy's
    diag(action_variance) before the first), ``anchors`` ((M,) linearised policies of the
    last C-step, None before the first update).

    """

    def __init__(self, cost, initial_controllers: Sequence[LinearGaussianController],
                 settings: MdgpsSettings | None = None,
                 lqr_flm_settings: LqrFlmSettings | None = None,
                 policy: Policy | ImagePolicy | None = None,
                 observation_indices: Sequence[int] | None = None,
                 image_shape: Sequence[int] | None = None,
                 gravity_chain: dict[str, Any] | None = None,
                 action_limits: Sequence[float] | None = None) -> None:
        self.settings = MdgpsSettings() if settings is None else settings
        if not isinstance(self.settings, MdgpsSettings):
            raise ValueError("settings must be an MdgpsSettings, got "
                             f"{type(self.settings).__name__}")
        controllers = list(initial_controllers)
        if not controllers:
            raise ValueError("initial_controllers must hold at least one controller (one per "
                             "condition)")
        shapes = {(c.T, c.dX, c.dU) for c in controllers}
        if len(shapes) != 1:
            raise ValueError(f"initial_controllers must share (T, dX, dU); got {sorted(shapes)}")
        (self.T, self.dX, self.dU), = shapes
        if policy is None and self.settings.policy.image is not None:
            if observation_indices is None or image_shape is None:
                raise ValueError("an image policy (settings.policy.image) needs "
                                 "observation_indices and image_shape")
            policy = ImagePolicy.from_settings(self.dX, self.dU, observation_indices,
                                               image_shape, self.settings.policy)
        elif policy is None:
            policy = Policy.from_settings(self.dX, self.dU, self.settings.policy)
            if self.settings.policy.action_base == "initial_controller":
                # The policy starts as the initial controllers act (their affine mean, K̄, k̄);
                # its network then learns only what the C-steps add to them.
                policy.set_action_base(np.mean([c.K for c in controllers], axis=(0, 1)),
                                       np.mean([c.k for c in controllers], axis=(0, 1)))
            elif self.settings.policy.action_base == "gravity":
                if gravity_chain is None:
                    raise ValueError("policy.action_base 'gravity' needs the robot's gravity "
                                     "chain (gravity_chain: SerialChainGravity.set_chain's "
                                     "arguments)")
                policy.set_gravity_base(**gravity_chain)
        elif (policy.dX, policy.dU) != (self.dX, self.dU):
            raise ValueError(f"policy maps dX={policy.dX} to dU={policy.dU}; the controllers "
                             f"need dX={self.dX}, dU={self.dU}")
        self.local = LqrFlm(cost, controllers, lqr_flm_settings)
        self.action_limits = (None if action_limits is None
                              else np.asarray(action_limits, dtype=np.float64))
        self.policy = policy
        self.policy_covariance = policy.action_covariance()
        self._policy_priors: list[Optional[GMMPrior]] = [None] * len(controllers)
        self.anchors: list[LinearGaussianController] | None = None
        self.seconds: dict[str, float] = {}   # the last update's MdgpsReport.seconds

    # ------------------------------------------------------------------ views

    @property
    def M(self) -> int:
        return len(self.local.conditions)

    @property
    def controllers(self) -> list[LinearGaussianController]:
        """Return the M local controllers, which draw the next rollouts."""
        return self.local.controllers

    @property
    def iteration(self) -> int:
        return self.local.iteration

    # ------------------------------------------------------------------ the steps

    def _split(self, rollouts: Rollouts) -> list[Rollouts]:
        """Rollouts per condition (M,), after checking shapes and condition ids."""
        if not isinstance(rollouts, Rollouts):
            raise ValueError(f"rollouts must be a Rollouts, got {type(rollouts).__name__}")
        if rollouts.X.shape[1:] != (self.T, self.dX) or rollouts.U.shape[2] != self.dU:
            raise ValueError(f"rollouts must have X (N, T={self.T}, dX={self.dX}) and "
                             f"U (N, T, dU={self.dU}); got X {rollouts.X.shape}, U "
                             f"{rollouts.U.shape}")
        unknown = sorted(set(rollouts.condition.tolist()) - set(range(self.M)))
        if unknown:
            raise ValueError(f"rollouts name conditions {unknown}; allowed are 0 .. {self.M - 1}")
        if self.policy.needs_image and rollouts.images is None:
            raise ValueError("the image policy needs rollouts with images (N, T, H, W, 3)")
        batches = [rollouts.for_condition(m) for m in range(self.M)]
        missing = [m for m, batch in enumerate(batches) if batch.N == 0]
        if missing:
            raise ValueError(f"no rollouts for conditions {missing}; every condition needs at "
                             "least one")
        return batches

    def s_step(self, rollouts: Rollouts) -> dict[str, Any]:
        """
        Train the policy on every condition's rollout states X_m (N_m, T, dX).

        The targets are those of the controller p_m: means K_t x + k_t (clamped to
        ``action_limits``) and precisions Σ_t⁻¹; then set ``policy_covariance``. With
        ``settings.s_step_max_cost_ratio``, a rollout whose cost exceeds that multiple of
        the batch's median rollout cost is left out: a rollout the exploration noise flung
        reaches states far from every other, and fitting the one network to its controller
        there pulls it off every condition. Returns train_policy's result, with
        ``left_out_rollouts`` (indices along the stacked conditions' N).
        """
        batches = self._split(rollouts)
        targets = [controller_targets(controller, batch.X, self.action_limits)
                   for controller, batch in zip(self.controllers, batches)]
        X = np.concatenate([batch.X for batch in batches])                  # (N, T, dX)
        target_mean = np.concatenate([mean for mean, _ in targets])         # (N, T, dU)
        target_precision = np.concatenate([prec for _, prec in targets])    # (N, T, dU, dU)
        images = (np.concatenate([batch.images for batch in batches])       # (N, T, H, W, 3)
                  if self.policy.needs_image else None)
        weights, left_out = None, []
        ratio = self.settings.s_step_max_cost_ratio
        if ratio is not None:
            costs = np.concatenate([self.local.cost.evaluate(batch.X, batch.U).l.sum(axis=1)
                                    for batch in batches])                  # (N,)
            kept = costs <= ratio * np.median(costs)
            left_out = np.flatnonzero(~kept).tolist()
            weights = np.repeat(kept[:, None].astype(np.float64), self.T, axis=1)  # (N, T)
        training = train_policy(self.policy, X, target_mean, target_precision,
                                self.settings.policy, weights=weights, images=images)
        training["left_out_rollouts"] = left_out
        if self.settings.covariance == "full":
            mean_precision = target_precision.mean(axis=(0, 1))             # E[Σ⁻¹] (dU, dU)
            self.policy_covariance = symmetrise(np.linalg.inv(mean_precision))
        else:
            self.policy_covariance = self.policy.action_covariance()
        return training

    def _policy_prior(self, m: int, n_rollouts: int) -> Optional[GMMPrior]:
        """
        Return condition m's prior, its buffer exactly one batch long.

        It is new if the batch size changed, so old points labelled by an older policy never enter
        the fit.
        """
        settings = self.settings.policy_prior
        if not settings.enabled:
            return None
        prior = self._policy_priors[m]
        if prior is None or prior.max_rollouts != n_rollouts:
            prior = GMMPrior(max_clusters=settings.max_clusters,
                             min_points_per_cluster=settings.min_points_per_cluster,
                             max_rollouts=n_rollouts, strength=settings.strength,
                             seed=self.settings.policy.seed)
            self._policy_priors[m] = prior
        return prior

    def linearize(self, rollouts: Rollouts) -> list[LinearGaussianController]:
        """
        Fit the policy linear-Gaussian around each condition's rollout states.

        The result is (M,) controllers with K (T, dU, dX), k (T, dU) and covar (T, dU, dU) = the
        fit's residual covariance + Σ_π (``policy_covariance``).
        """
        batches = self._split(rollouts)
        anchors = []
        for m, batch in enumerate(batches):
            fit = linearize_policy(self.policy, batch.X, prior=self._policy_prior(m, batch.N),
                                   regularization=self.settings.linearization_regularization,
                                   images=batch.images if self.policy.needs_image else None)
            # linearize_policy adds the Policy's diagonal variance; swap in Σ_π.
            residual = fit.covar - self.policy.action_covariance()[None]
            anchors.append(LinearGaussianController.from_covar(
                fit.K, fit.k, residual + self.policy_covariance[None]))
        return anchors

    def step_costs(self, conditions: Sequence[ConditionState],
                   anchors: Sequence[LinearGaussianController]) -> np.ndarray:
        """
        Return the MDGPS step costs (M, 3) of GPS for LqrFlm's step rule.

        They come from the conditions' states
        (their models fitted to this batch) and this batch's linearisations `anchors` (M,):
        per condition [J(π̄⁻; F⁻, l⁻), J(p; F⁻, l⁻), J(π̄; F, l)] (see the module
        docstring), averaged over the conditions so that all share one step multiplier.
        """
        if self.anchors is None:
            raise ValueError("the MDGPS step rule needs the previous iteration's linearisations; "
                             "it applies from the second update on")
        costs = np.array([[state.previous_model.estimate_cost(previous_anchor),
                           state.previous_model.estimate_cost(state.controller),
                           state.model.estimate_cost(anchor)]
                          for state, previous_anchor, anchor in zip(conditions, self.anchors,
                                                                    anchors)])
        return np.broadcast_to(costs.mean(axis=0), costs.shape).copy()

    def update(self, rollouts: Rollouts,
               dynamics: Optional[Sequence[LinearGaussianDynamics]] = None) -> MdgpsReport:
        """
        Run one MDGPS iteration (S-step, linearisation, C-step).

        It uses rollouts X (N, T, dX), U (N, T, dU) with condition ids (N,), drawn from the current
        controllers (or from the policy); every condition needs at least one rollout. dynamics
        (M,), if given, are each condition's dynamics fitted elsewhere to these rollouts (the ROS
        dynamics_fitter, see LqrFlm.update_with_dynamics); by default LqrFlm fits them.
        """
        self._split(rollouts)
        start = time.perf_counter()
        training = self.s_step(rollouts)
        trained = time.perf_counter()
        anchors = self.linearize(rollouts)
        linearized = time.perf_counter()
        policy_kl: list[float] = []

        def step_costs(conditions):
            return self.step_costs(conditions, anchors)

        def c_step_anchors(conditions):
            # Each condition's model is fitted around its controller's rollouts. Where the
            # policy did not follow that controller, an anchor at the policy would move the
            # controller far from the only states the model knows (and a contact model
            # extrapolated that far flings the arm): that condition takes an LQR-FLM step.
            limit = self.settings.anchor_max_kl
            chosen = []
            for state, anchor in zip(conditions, anchors):
                marginals = forward_pass(state.controller, state.model.dynamics)
                policy_kl.append(float(np.sum(kl_divergence(state.controller, anchor,
                                                            marginals))))
                near = limit is None or policy_kl[-1] <= limit * self.T
                chosen.append(anchor if near else state.controller)
            return chosen
        if dynamics is None:
            reports = self.local.update(rollouts, anchors=c_step_anchors, step_costs=step_costs)
        else:
            reports = self.local.update_with_dynamics(rollouts, dynamics, anchors=c_step_anchors,
                                                      step_costs=step_costs)
        self.anchors = anchors
        seconds = {"s_step": trained - start, "linearization": linearized - trained,
                   "c_step": time.perf_counter() - linearized}
        self.seconds = seconds
        return MdgpsReport(policy_loss=float(training["loss"]),
                           policy_initial_loss=float(training["initial_loss"]),
                           policy_training=training, policy_kl=policy_kl, conditions=reports,
                           seconds=seconds)


# --------------------------------------------------------------------------- linearisation


def linearize_policy(policy: Policy | ImagePolicy, X: np.ndarray,
                     prior: GMMPrior | None = None, regularization: float = 1e-6,
                     update_prior: bool = True,
                     images: np.ndarray | None = None) -> LinearGaussianController:
    """
    Fit a linear-Gaussian approximation of the policy around sample states X (N, T, dX).

    Per time step t, u ≈ K_t x + k_t is fitted by (Bayesian) linear regression of the
    policy means μ_θ(x_{n,t}) on the states x_{n,t} (``gaussian_regression`` of
    core/dynamics.py, batched over T, with the normal-inverse-Wishart prior
    ``prior.evaluate`` gives for each step's N points [x, u] when a GMM prior is used).
    The covariance is the fit's residual plus the policy's own diag(action_variance).
    This is GPS's pol_K / pol_k / pol_S, the KL anchor of the next C-step. The arguments:

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
        images: (N, T, H, W, 3) uint8, for an image policy: its actions are μ_θ(o, I) at
            each sample's own observation and image, regressed on that sample's full
            state x, so the linearisation K̄_t x + k̄_t is the policy as the C-step's
            state x predicts it (across the samples of a condition, per time step).

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

    if getattr(policy, "needs_image", False):
        if images is None:
            raise ValueError("an image policy is linearised at its samples' images: give images")
        actions = policy.action_mean(states, images)  # (N, T, dU)
    else:
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
    covar = symmetrise(covar + policy.action_covariance()[None])
    chol = np.linalg.cholesky(covar)
    return LinearGaussianController(K=K, k=k, covar=covar, chol=chol,
                                    inv_covar=inverse_from_cholesky(chol))
