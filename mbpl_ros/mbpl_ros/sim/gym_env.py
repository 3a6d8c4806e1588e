"""
A gymnasium environment over the ROS-free simulator: the task of an experiment file.

`ReachEnv(config)` poses exactly the problem that `mbpl train` solves for the same
ExperimentConfig, so model-free learners (e.g. stable-baselines3 SAC/PPO) can be compared
with LQR-FLM and MDGPS step for step:

- robot, physics_dt, substeps: the same PyBullet Arm (one control step = `substeps`
  physics steps of `physics_dt`);
- an episode starts at rest at one training condition's initial_positions, with its target;
  `reset` picks the condition round-robin (default) or uniformly at random from the
  environment's seeded generator (`condition_order="random"`), or the one named by
  `reset(options={"condition": m})`;
- observation: the core state x (dX,) of mbpl_ros.sim.rollout.observe, float64,
  x = [q (J), qd (J), p_ee - p_target (3P), v_ee (3P)] for P end-effector points;
- action: joint efforts. With `normalize_actions=True` (the default, what SB3 expects)
  the action space is Box(-1, 1, (J,)) and the effort is action * effort_limits (N·m);
  with False it is Box(-effort_limits, effort_limits) in N·m. Either way the arm clamps
  to its effort limits, and the cost is charged on the effort actually applied;
- reward at step t (t = 0 … T-1): -l_t(x_t, u_t), the experiment's cost (config.cost via
  core.costs.build_cost) at the state x_t observed *before* the action and the applied
  effort u_t, with the time ramp evaluated at t. The episode return is therefore minus
  the total cost that offline.evaluate_controllers reports for the same rollout;
- after T steps the episode is truncated (never terminated: the task has no terminal
  state).

info: "condition" (index), "t" (steps taken), "distance_m" (end-effector point to target now)
and, at truncation, "final_distance_m": the distance at x_{T-1}, the last state at which
an action was taken, i.e. exactly mbpl_ros.sim.rollout.final_distance of the episode's
X (T, dX), the success measure of the offline runs.

The simulation is deterministic: same seed (or condition) and same actions give a
bit-identical episode.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium
import numpy as np
from gymnasium import spaces

from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.sim.rollout import observe

CONDITION_ORDERS = ("round_robin", "random")


class ReachEnv(gymnasium.Env):
    """One experiment's reaching task as a gymnasium Env (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, config: ExperimentConfig, condition_order: str = "round_robin",
                 normalize_actions: bool = True):
        if not isinstance(config, ExperimentConfig):
            raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        if condition_order not in CONDITION_ORDERS:
            raise ValueError(f"condition_order {condition_order!r} is unknown; allowed: "
                             f"{', '.join(CONDITION_ORDERS)}")
        self.config = config
        self.layout = config.layout
        self.T = config.T
        self.condition_order = condition_order
        self.normalize_actions = bool(normalize_actions)
        self.cost = config.build_cost()
        self.initial_positions = np.array([c.initial_positions for c in config.conditions],
                                          float)  # (M, J)
        self.targets = np.array([c.target for c in config.conditions],
                                float)                        # (M, 3)
        self.arm = config.make_arm()
        self.effort_limits = self.arm.effort_limits.copy()  # (J,)

        dU = self.layout.dU
        if self.normalize_actions:
            self.action_space = spaces.Box(-1.0, 1.0, shape=(dU,), dtype=np.float32)
        else:
            self.action_space = spaces.Box(-self.effort_limits, self.effort_limits,
                                           dtype=np.float64)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.layout.dX,),
                                            dtype=np.float64)

        self._next_round_robin = 0
        self._condition = 0
        self._t = 0
        self._x: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """
        Start an episode at rest at a training condition.

        A seed reseeds the generator of the random order and restarts the round-robin at
        condition 0, so the same seed gives the same episode. options={"condition": m}
        picks condition m (0 <= m < M) without advancing the round-robin.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._next_round_robin = 0
        self._condition = self._pick_condition(options)
        self.arm.reset(self.initial_positions[self._condition],
                       target=self.targets[self._condition])
        self._t = 0
        self._x = self._observe()
        return self._x.copy(), self._info()

    def step(self, action):
        if self._x is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.T:
            raise RuntimeError(f"the episode was truncated after T = {self.T} steps; call reset()")
        effort = self.effort_from_action(action)
        applied = self.arm.step(effort)
        reward = -self.step_cost(self._x, applied, self._t)
        x_before = self._x
        self._t += 1
        self._x = self._observe()
        truncated = self._t >= self.T
        info = self._info()
        if truncated:
            info["final_distance_m"] = float(
                np.linalg.norm(x_before[self.layout.first_point_offset]))
        return self._x.copy(), float(reward), False, truncated, info

    def close(self) -> None:
        self.arm.close()

    # ------------------------------------------------------------------ helpers
    def effort_from_action(self, action) -> np.ndarray:
        """Effort (J,) in N·m for an action of this env's action space (not yet clamped)."""
        action = np.asarray(action, dtype=float)
        if action.shape != (self.layout.dU,):
            raise ValueError(f"action must have shape ({self.layout.dU},), one per joint; got "
                             f"{action.shape}")
        return action * self.effort_limits if self.normalize_actions else action

    def action_from_effort(self, effort) -> np.ndarray:
        """Return the action (J,) of this env's action space that commands effort (J,) N·m."""
        effort = np.asarray(effort, dtype=float)
        return effort / self.effort_limits if self.normalize_actions else effort

    def step_cost(self, x: np.ndarray, u: np.ndarray, t: int) -> float:
        """
        l_t(x (dX,), u (dU,)): the experiment's cost of one step at time index t.

        Every core cost term is a sum over t of a term of (x_t, u_t) scaled by a time
        ramp, so l_t is read off an evaluation over the whole horizon of the constant
        trajectory x_s = x, u_s = u (s = 0 … T-1): entry t is exactly the cost of step t.
        """
        if not 0 <= t < self.T:
            raise ValueError(f"time index t must be in [0, {self.T}); got {t}")
        X = np.broadcast_to(np.asarray(x, float), (1, self.T, self.layout.dX))
        U = np.broadcast_to(np.asarray(u, float), (1, self.T, self.layout.dU))
        return float(self.cost.evaluate(X, U).l[0, t])

    @property
    def condition(self) -> int:
        """Index of the current episode's condition."""
        return self._condition

    def _pick_condition(self, options: Optional[dict]) -> int:
        M = len(self.initial_positions)
        if options and "condition" in options:
            m = options["condition"]
            if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m < M:
                raise ValueError(f"options['condition'] must be an integer in [0, {M}); got {m!r}")
            return int(m)
        if self.condition_order == "random":
            return int(self.np_random.integers(M))
        m = self._next_round_robin
        self._next_round_robin = (m + 1) % M
        return m

    def _observe(self) -> np.ndarray:
        return observe(self.arm, self.layout, self.targets[self._condition])

    def _info(self) -> dict[str, Any]:
        return {"condition": self._condition, "t": self._t,
                "distance_m": float(np.linalg.norm(self._x[self.layout.first_point_offset]))}
