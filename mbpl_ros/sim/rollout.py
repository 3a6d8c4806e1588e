"""Run a controller on a simulated arm and record the rollout in the core's state layout."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.sim.arm import Arm

# act(t, x (dX,)) -> u (dU,)
Policy = Callable[[int, np.ndarray], np.ndarray]


def observe(arm: Arm, layout: StateLayout, target: np.ndarray) -> np.ndarray:
    """The state x (dX,) of the arm now, its end-effector point relative to `target` (3,)."""
    q, qd, _ = arm.joint_state()
    return layout.build(q, qd, arm.ee_position()[None], arm.ee_velocity()[None], np.asarray(target)[None])


def run_rollout(arm: Arm, layout: StateLayout, policy: Policy, initial_positions: np.ndarray,
                target: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Reset to `initial_positions` (J,) at rest and run `policy` for T steps.

    Returns X (T, dX) and U (T, dU), U being the effort actually applied (after the
    arm's clamping), since that is what the fitted dynamics must explain.
    """
    arm.reset(np.asarray(initial_positions, float))
    X = np.empty((T, layout.dX))
    U = np.empty((T, layout.dU))
    for t in range(T):
        X[t] = observe(arm, layout, target)
        U[t] = arm.step(policy(t, X[t]))
    return X, U


def final_distance(X: np.ndarray, layout: StateLayout) -> float:
    """End-effector distance to the target at the last step of X (T, dX), in metres."""
    return float(np.linalg.norm(X[-1, layout.ee_offset]))
