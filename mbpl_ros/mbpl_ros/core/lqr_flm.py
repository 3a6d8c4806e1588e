"""
LQR with fitted local models (LQR-FLM): one iteration per batch of rollouts.

For each condition m, with rollouts drawn from its current controller p_i(u|x):
  1. fold the rollouts into the GMM prior and fit p_i(x'|x, u) by Bayesian regression;
  2. expand the cost around the rollouts into a quadratic model;
  3. adapt the KL step from the improvement the last update predicted vs. what the new
     model says it achieved (GPS's rule; a caller may supply the three costs it compares,
     as MDGPS does with its policy linearisations: see StepCosts);
  4. p_{i+1} = argmin E[cost] s.t. KL(p_{i+1}(τ) ‖ anchor(τ)) ≤ ε, with the anchor being
     p_i (LQR-FLM) or the linearised global policy (MDGPS's C-step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.costs import QuadraticCost, quadratic_cost_model
from mbpl_ros.core.dynamics import (DynamicsSettings, LinearGaussianDynamics, fit_dynamics,
                                    transition_points)
from mbpl_ros.core.gmm import GMMPrior, PriorSettings
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.core.settings import settings_dataclass
from mbpl_ros.core.traj_opt import (KlStepSettings, TrajOptSettings, adjust_step, expected_cost,
                                    forward_pass, optimize_trajectory)


@settings_dataclass
class LqrFlmSettings:
    """
    LQR-FLM's settings.

    The experiment file's dynamics and trajectory_optimization sections and the η search
    (not in the experiment file).
    """

    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings,
                                       metadata={"doc": "dynamics fit"})
    trajectory_optimization: KlStepSettings = field(default_factory=KlStepSettings,
                                                    metadata={"doc": "KL-bounded LQR step"})
    eta_search: TrajOptSettings = field(default_factory=TrajOptSettings,
                                        metadata={"doc": "dual search on η"})


@dataclass
class LocalModel:
    """
    What one batch of rollouts taught about a condition.

    That is the fitted dynamics and the quadratic cost model around those rollouts.
    """

    dynamics: LinearGaussianDynamics
    cost: QuadraticCost

    def estimate_cost(self, controller: LinearGaussianController) -> float:
        """Return the expected total cost of `controller` under this model (Laplace)."""
        return float(np.sum(expected_cost(forward_pass(controller, self.dynamics), self.cost)))


@dataclass
class ConditionState:
    """Everything LQR-FLM carries from one iteration to the next for one condition."""

    controller: LinearGaussianController
    eta: float
    step_mult: float = 1.0
    prior: Optional[GMMPrior] = None
    model: Optional[LocalModel] = None             # fitted from the current controller's rollouts
    previous_controller: Optional[LinearGaussianController] = None
    previous_model: Optional[LocalModel] = None


@dataclass
class ConditionReport:
    sample_cost: float       # mean over rollouts of the summed cost
    predicted_cost: float    # expected cost of the new controller under the fitted model
    kl_step: float           # the KL budget used (total over the trajectory)
    kl: float                # the KL reached
    eta: float
    step_mult: float


Anchors = Union[Sequence[LinearGaussianController],
                Callable[[Sequence["ConditionState"]], Sequence[LinearGaussianController]]]
"""The C-step's KL anchors (M,), or a function of the condition states that returns them
once every model of this batch is fitted (MDGPS chooses per condition: see
core.mdgps)."""

StepCosts = Callable[[Sequence["ConditionState"]], np.ndarray]
"""Supplies the step rule's costs: called with the M condition states once every model
of this batch is fitted (``state.model``; ``state.previous_model`` is the last one), it
returns (M, 3) Laplace cost estimates per condition: [previous, predicted new, actual new]
(see traj_opt.adjust_step). LQR-FLM's own rule is controller_step_costs."""


def controller_step_costs(conditions: Sequence["ConditionState"]) -> np.ndarray:
    """
    Return LQR-FLM's step costs (M, 3).

    They are the previous controller under the previous model, the current controller
    under the previous model, the current controller under the new model.
    """
    return np.array([[state.previous_model.estimate_cost(state.previous_controller),
                      state.previous_model.estimate_cost(state.controller),
                      state.model.estimate_cost(state.controller)] for state in conditions])


def new_dynamics_prior(settings: PriorSettings) -> Optional[GMMPrior]:
    """Return a fresh GMM prior over [x, u, x'] (None when the prior is disabled)."""
    if not settings.enabled:
        return None
    return GMMPrior(max_clusters=settings.max_clusters,
                    min_points_per_cluster=settings.min_points_per_cluster,
                    max_rollouts=settings.max_rollouts, strength=settings.strength)


def fit_batch_dynamics(prior: Optional[GMMPrior], X: np.ndarray, U: np.ndarray,
                       regularization: float) -> LinearGaussianDynamics:
    """
    Fit one iteration's dynamics of a condition from its batch X (N, T, dX), U (N, T, dU).

    Fold the batch's [x_t, u_t, x_{t+1}] tuples into `prior` (refitting it), then fit by
    Bayesian regression under it. LQR-FLM and the ROS dynamics_fitter both call this.
    """
    if prior is not None:
        prior.update(transition_points(X, U))
    return fit_dynamics(X, U, prior=prior, regularization=regularization)


class LqrFlm:
    """LQR-FLM over M conditions, each with its own local controller and dynamics."""

    def __init__(self, cost, initial_controllers: Sequence[LinearGaussianController],
                 settings: LqrFlmSettings | None = None):
        self.cost = cost
        self.settings = settings or LqrFlmSettings()
        eta = self.settings.trajectory_optimization.initial_eta
        self.conditions = [ConditionState(controller=c, eta=eta,
                                          prior=new_dynamics_prior(self.settings.dynamics.prior))
                           for c in initial_controllers]
        self.iteration = 0

    @property
    def controllers(self) -> list[LinearGaussianController]:
        return [c.controller for c in self.conditions]

    def update(self, rollouts: Rollouts,
               anchors: Anchors | None = None,
               step_costs: StepCosts | None = None) -> list[ConditionReport]:
        """
        One LQR-FLM iteration from rollouts of the current controllers.

        anchors (M,) replaces the KL anchor of each condition (MDGPS passes the
        linearised policy); by default each condition stays near its own controller. It may
        also be a function of the condition states, called once this batch's models are
        fitted (``state.model``), that returns the (M,) anchors.
        step_costs replaces the costs the step rule compares (default
        controller_step_costs); it is called from the second iteration on.
        """
        return self._update(rollouts, anchors, dynamics=None, step_costs=step_costs)

    def update_with_dynamics(self, rollouts: Rollouts, dynamics: Sequence[LinearGaussianDynamics],
                             anchors: Anchors | None = None,
                             step_costs: StepCosts | None = None) -> list[ConditionReport]:
        """
        Run update() with each condition's dynamics (M,) fitted elsewhere.

        They come e.g. from the ROS dynamics_fitter, from the same rollouts with
        fit_batch_dynamics; this object's priors are then not used. The cost model is still
        expanded around `rollouts`.
        """
        if len(dynamics) != len(self.conditions):
            raise ValueError(f"need one dynamics model per condition ({len(self.conditions)}), "
                             f"got {len(dynamics)}")
        for m, model in enumerate(dynamics):
            T = rollouts.for_condition(m).T
            if model.T != T or model.dX != rollouts.X.shape[2] or model.dU != rollouts.U.shape[2]:
                raise ValueError(f"dynamics[{m}] has (T, dX, dU) = ({model.T}, {model.dX}, "
                                 f"{model.dU}); "
                                 f"the rollouts have ({T}, {rollouts.X.shape[2]}, "
                                 f"{rollouts.U.shape[2]})")
        return self._update(rollouts, anchors, dynamics=dynamics, step_costs=step_costs)

    def _update(self, rollouts: Rollouts, anchors, dynamics, step_costs) -> list[ConditionReport]:
        # Every condition's models first: a supplied step rule may compare conditions.
        batches, sample_costs = [], []
        for m, state in enumerate(self.conditions):
            batch = rollouts.for_condition(m)
            if batch.N == 0:
                raise ValueError(f"no rollouts for condition {m}; every condition needs at least "
                                 "one")
            expansion = self.cost.evaluate(batch.X, batch.U)
            regularization = self.settings.dynamics.regularization
            fitted = (fit_batch_dynamics(state.prior, batch.X, batch.U, regularization)
                      if dynamics is None else dynamics[m])
            state.model = LocalModel(fitted, quadratic_cost_model(batch.X, batch.U, expansion))
            batches.append(batch)
            sample_costs.append(float(np.mean(expansion.l.sum(axis=1))))
        if all(state.previous_model is not None for state in self.conditions):
            costs = np.asarray((step_costs or controller_step_costs)(self.conditions), dtype=float)
            if costs.shape != (len(self.conditions), 3):
                raise ValueError(f"step_costs must return (M={len(self.conditions)}, 3) costs, "
                                 f"got shape {costs.shape}")
            for state, (previous, predicted, actual) in zip(self.conditions, costs):
                state.step_mult = adjust_step(state.step_mult, previous_cost_estimate=previous,
                                              predicted_new_cost=predicted, actual_new_cost=actual,
                                              settings=self.settings.trajectory_optimization)
        if callable(anchors):
            anchors = anchors(self.conditions)
        reports = []
        for m, (state, batch) in enumerate(zip(self.conditions, batches)):
            step = self.settings.trajectory_optimization
            epsilon = (step.first_kl_step if self.iteration == 0 and step.first_kl_step
                       is not None else step.kl_step)
            kl_step = epsilon * state.step_mult * batch.T
            anchor = state.controller if anchors is None else anchors[m]
            new_controller, state.eta, info = optimize_trajectory(
                state.model.dynamics, state.model.cost, anchor, kl_step=kl_step,
                eta_init=state.eta, settings=self.settings.eta_search)
            state.previous_controller, state.previous_model = state.controller, state.model
            state.controller = new_controller
            reports.append(ConditionReport(
                sample_cost=sample_costs[m], predicted_cost=float(info["expected_cost"]),
                kl_step=float(kl_step), kl=float(info["kl"]), eta=float(state.eta),
                step_mult=float(state.step_mult)))
        self.iteration += 1
        return reports
