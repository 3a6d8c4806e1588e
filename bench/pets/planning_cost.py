"""
The reward PETS plans with on the reach: minus the experiment's per-step cost, in torch.

ReachEnv's reward at step t is -l_t(x_t, u_t): the experiment's cost (core.costs, built by
ExperimentConfig.build_cost) at the observed state x_t *before* the action and the applied
effort u_t = action * effort_limits, with the time ramps evaluated at t. ReachEnv's
observation is the core state x itself, so the same cost can be charged on the states a
learned model predicts. core.costs evaluates full second-order expansions (N, T, dX, dX),
far too much for the planner's thousands of sequences per step; `PlanningCost` evaluates
only the value l, batched in torch, reading every parameter (indices, weights, targets,
l1, l2, alpha, form, ramps, term scales) from the built core cost, so the two cannot
drift apart without the test (test_pets_planning_cost.py) failing.

A plan from time t0 of H actions is charged l_{t0+s}(x_s, u_s) for s = 0 … H-1 with x_0 the
observed state and x_s the model's prediction after s actions; steps at t0+s >= T are past
the episode's truncation and cost nothing (the task has no terminal state).

Needs numpy, torch and mbpl_ros only (not mbrl), so `make test` checks it in the main venv.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from mbpl_ros.core.costs import (ActionCost, DistanceCost, StateTargetCost, WeightedSum,
                                 time_ramp)


class PlanningCost:
    """
    Value-only l_t(x, u) of a core WeightedSum cost, batched over sequences in torch.

    cost: the experiment's cost (config.build_cost()); T: its horizon; effort_limits (dU,):
    the action -> effort scale of a ReachEnv with normalize_actions=True (the planner's
    actions lie in [-1, 1], where the arm's clamp changes nothing).
    """

    def __init__(self, cost: WeightedSum, T: int, effort_limits: Sequence[float],
                 dtype: torch.dtype = torch.float64):
        if not isinstance(cost, WeightedSum):
            raise ValueError(f"cost must be a core.costs.WeightedSum (config.build_cost()); got "
                             f"{type(cost).__name__}")
        self.T = int(T)
        self.dtype = dtype
        self.effort_limits = torch.as_tensor(np.asarray(effort_limits, float), dtype=dtype)
        self.terms = []   # (kind, scale, parameters, ramp (T,) or None)
        for scale, term in cost.terms:
            if isinstance(term, ActionCost):
                self.terms.append(("action", scale, self._t(term.weights), None))
            elif isinstance(term, StateTargetCost):
                params = (torch.as_tensor(term.indices), self._t(term.target),
                          self._t(term.weights))
                self.terms.append(("state", scale, params, self._ramp(term)))
            elif isinstance(term, DistanceCost):
                params = (torch.as_tensor(term.indices), self._t(term.weights), term.l1,
                          term.l2, term.alpha, term.form)
                self.terms.append(("distance", scale, params, self._ramp(term)))
            else:
                raise ValueError(f"cost term {type(term).__name__} has no planning form; "
                                 "allowed: ActionCost, StateTargetCost, DistanceCost")

    def _t(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, float), dtype=self.dtype)

    def _ramp(self, term) -> torch.Tensor:
        return self._t(time_ramp(term.ramp, self.T, term.final_multiplier))

    def step_costs(self, X: torch.Tensor, A: torch.Tensor, t0: int) -> torch.Tensor:
        """
        l_{t0+s}(x_s, u_s) (B, H) for states X (B, H, dX) and normalised actions A (B, H, dU).

        Steps with t0 + s >= T cost 0. The effort charged is A * effort_limits.
        """
        if X.ndim != 3 or A.ndim != 3 or X.shape[:2] != A.shape[:2]:
            raise ValueError(f"X must be (B, H, dX) and A (B, H, dU) with the same (B, H); got "
                             f"{tuple(X.shape)} and {tuple(A.shape)}")
        if not 0 <= t0 < self.T:
            raise ValueError(f"t0 must be in [0, {self.T}); got {t0}")
        X, A = X.to(self.dtype), A.to(self.dtype)
        H = X.shape[1]
        inside = min(H, self.T - t0)            # steps before the truncation
        l = torch.zeros(X.shape[:2], dtype=self.dtype)  # noqa: E741 (l: the cost, GPS's name)
        Xi, U = X[:, :inside], A[:, :inside] * self.effort_limits
        for kind, scale, params, ramp in self.terms:
            if kind == "action":
                value = 0.5 * (U ** 2 * params).sum(-1)
            elif kind == "state":
                idx, target, weights = params
                diff = Xi[..., idx] - target
                value = ramp[t0:t0 + inside] * 0.5 * (weights * diff ** 2).sum(-1)
            else:
                idx, weights, l1, l2, alpha, form = params
                d_sq = ((weights * Xi[..., idx]) ** 2).sum(-1)
                p = alpha + d_sq
                phi = 0.5 * l2 * d_sq + l1 * (torch.sqrt(p) if form == "l1l2" else torch.log(p))
                value = ramp[t0:t0 + inside] * phi
            l[:, :inside] += scale * value
        return l

    def reward(self, X: torch.Tensor, A: torch.Tensor, t0: int) -> torch.Tensor:
        """Return minus the summed step costs of each sequence (B,): the planning reward."""
        return -self.step_costs(X, A, t0).sum(-1)

    def sequence_reward(self, x0: torch.Tensor, A: torch.Tensor,
                        predict: Callable[[torch.Tensor], torch.Tensor],
                        t0: int) -> torch.Tensor:
        """
        Roll action sequences A (B, H, dU) out from x0 (B, dX) and return their rewards (B,).

        predict(a (B, dU)) -> x' (B, dX) advances the (stateful) model by one step; it is
        called H - 1 times, since the state after the last action is charged by no step of
        ReachEnv's reward.
        """
        states = [torch.as_tensor(x0)]
        for s in range(A.shape[1] - 1):
            states.append(torch.as_tensor(predict(A[:, s])))
        return self.reward(torch.stack(states, 1), A, t0)
