"""
Command safety: what every effort command passes through before it reaches the robot.

Pure numpy, so the maths is testable without ROS; lqr_controller applies it to each
command it publishes. Arrays are per joint, dU = J (one effort per joint), in the robot's
joint order; leading axes (e.g. (T,) or (N, T)) broadcast.

The pipeline for a command u given the joint state (q, qd):

1. any non-finite value in u, q or qd (or a wrong shape) -> the fallback effort, and the
   caller aborts the trial (`safe_command` reports the fault);
2. the joint-limit guard (`joint_limit_guard`), per joint with position limits
   [lower, upper], margin m >= 0 and damping gain c >= 0:

       s_up = ramp(upper - q),  s_lo = ramp(q - lower),
       ramp(d) = clip(1 - d / m, 0, 1)      (m > 0; for m = 0: 1 if d <= 0 else 0)

   s is 0 outside the margin, rises linearly to 1 at the limit and stays 1 beyond it.
   Effort pushing towards a limit is scaled by (1 - s) of that limit, and a damping
   torque opposes velocity towards it:

       u' = u (1 - s_up)  if u > 0,   u (1 - s_lo)  if u <= 0
       u'' = u' - c (s_up max(qd, 0) + s_lo min(qd, 0))

   At or beyond a limit no effort pushes further into it, and motion towards it is
   braked; effort away from the limit is never reduced. m must be below half of each
   joint's range, so at most one limit of a joint is near;
3. clamp to the effort limits: |u_i| <= effort_i (`clamp_effort`).

Effort limits can only be lowered from the robot's (URDF) limits (`lowered_effort_limits`).
The fallback (`fallback_effort`) is zero effort, or a hold torque (e.g. gravity
compensation at the last valid pose) clamped to the limits, zero if that is not finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

FALLBACK_ACTIONS = ("zero", "hold")
#: lqr_controller's default guard (its joint_limit_margin, rad, and joint_limit_damping,
#: N·m·s/rad), which the training loop's simulated trials apply too.
DEFAULT_JOINT_LIMIT_MARGIN = 0.1
DEFAULT_JOINT_LIMIT_DAMPING = 1.0


@dataclass(frozen=True)
class SafetyLimits:
    """
    Safety limits of a robot: effort, joint positions, and the joint-limit guard's law.

    Effort (dU,) > 0 in N·m; position (dU, 2) rows [lower, upper] in rad (±inf: no limit);
    margin (rad) >= 0, below half of every finite joint range; damping (N·m·s/rad) >= 0.
    """

    effort: np.ndarray
    position: np.ndarray
    margin: float = 0.0
    damping: float = 0.0

    def __post_init__(self):
        effort = np.array(self.effort, dtype=float)
        position = np.array(self.position, dtype=float)
        if effort.ndim != 1 or effort.size == 0:
            raise ValueError(
                f"effort limits must have shape (dU,) with dU >= 1; got {effort.shape}")
        if not np.all(np.isfinite(effort) & (effort > 0)):
            raise ValueError(f"effort limits must be finite and > 0; got {effort.tolist()}")
        if position.shape != (effort.size, 2):
            raise ValueError(f"position limits must have shape (dU={effort.size}, 2); "
                             f"got {position.shape}")
        lower, upper = position[:, 0], position[:, 1]
        if not np.all(lower < upper):  # also rejects NaN
            raise ValueError(f"position limits must have lower < upper; got {position.tolist()}")
        margin, damping = float(self.margin), float(self.damping)
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"joint-limit margin must be finite and >= 0; got {margin}")
        half_range = np.min(upper - lower) / 2
        if margin >= half_range:
            raise ValueError(f"joint-limit margin {margin} rad must be below half the smallest "
                             f"joint range ({half_range:.6g} rad)")
        if not (np.isfinite(damping) and damping >= 0):
            raise ValueError(f"joint-limit damping must be finite and >= 0; got {damping}")
        effort.setflags(write=False), position.setflags(write=False)
        object.__setattr__(self, "effort", effort)
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "margin", margin)
        object.__setattr__(self, "damping", damping)

    @property
    def dU(self) -> int:
        return self.effort.size


@dataclass(frozen=True)
class SafeCommand:
    """Effort (dU,): finite, within the limits; fault: why the fallback was used, else None."""

    effort: np.ndarray
    fault: Optional[str] = None


def lowered_effort_limits(robot_limits: Sequence[float],
                          requested: Optional[Sequence[float]] = None) -> np.ndarray:
    """
    Return the effort limits (dU,) to enforce.

    These are `requested` (dU,), each in (0, robot limit], or the robot's own when None.
    Raising a limit above the robot's is a ValueError.
    """
    robot = np.array(robot_limits, dtype=float)
    if robot.ndim != 1 or not np.all(np.isfinite(robot) & (robot > 0)):
        raise ValueError(
            f"robot effort limits must be finite, > 0, shape (dU,); got {robot.tolist()}")
    if requested is None:
        return robot
    limits = np.array(requested, dtype=float)
    if limits.shape != robot.shape:
        raise ValueError(f"effort limits must be one per joint ({robot.size}); got {limits.size}")
    if not np.all(np.isfinite(limits) & (limits > 0)):
        raise ValueError(f"effort limits must be finite and > 0; got {limits.tolist()}")
    raised = np.flatnonzero(limits > robot)
    if raised.size:
        raise ValueError(f"effort limits may only lower the robot's {robot.tolist()}; "
                         f"{limits.tolist()} raises joints {raised.tolist()}")
    return limits


def clamp_effort(u: np.ndarray, effort_limits: np.ndarray) -> np.ndarray:
    """U (..., dU) clipped to [-effort_limits, effort_limits] (dU,)."""
    return np.clip(u, -effort_limits, effort_limits)


def limit_proximity(distance: np.ndarray, margin: float) -> np.ndarray:
    """
    Give how close joints are to a limit, from 0 (outside the margin) to 1 (at it).

    S (...,) in [0, 1] from the distance (rad) to a limit: 0 outside the margin, 1 at or
    beyond the limit, linear in between.
    """
    distance = np.asarray(distance, dtype=float)
    if margin > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.clip(1.0 - distance / margin, 0.0, 1.0)
    return (distance <= 0).astype(float)


def joint_limit_guard(u: np.ndarray, q: np.ndarray, qd: np.ndarray,
                      limits: SafetyLimits) -> np.ndarray:
    """Guard and clamp the effort (..., dU) for finite u, q, qd (..., dU) (law: module doc)."""
    lower, upper = limits.position[:, 0], limits.position[:, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        s_up = limit_proximity(upper - q, limits.margin)
        s_lo = limit_proximity(q - lower, limits.margin)
        pushing = np.where(u > 0, u * (1.0 - s_up), u * (1.0 - s_lo))
        # Only one limit of a joint is ever near (margin < half range), so one term is 0.
        braking = -limits.damping * (s_up * np.maximum(qd, 0.0) + s_lo * np.minimum(qd, 0.0))
        return clamp_effort(pushing + braking, limits.effort)


def fallback_effort(action: str, limits: SafetyLimits,
                    hold_torque: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Return the effort (dU,) sent when no safe command can be computed.

    It is zeros ("zero"), or `hold_torque` (dU,) clamped to the limits ("hold"; zeros when
    it is None or not finite).
    """
    if action not in FALLBACK_ACTIONS:
        raise ValueError(f"fallback action {action!r}; allowed: one of {list(FALLBACK_ACTIONS)}")
    zero = np.zeros(limits.dU)
    if action == "zero" or hold_torque is None:
        return zero
    hold = np.asarray(hold_torque, dtype=float)
    if hold.shape != (limits.dU,) or not np.all(np.isfinite(hold)):
        return zero
    return clamp_effort(hold, limits.effort)


def _fault(name: str, value, dU: int) -> Optional[str]:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return f"{name} is not numeric"
    if array.shape != (dU,):
        return f"{name} has shape {array.shape}; expected ({dU},)"
    if not np.all(np.isfinite(array)):
        return f"{name} is not finite: {array.tolist()}"
    return None


def safe_command(u, q, qd, limits: SafetyLimits, fallback: np.ndarray) -> SafeCommand:
    """
    Return the effort to publish for controller output u (dU,) at joint state q, qd (dU,).

    It is guarded and clamped, or `fallback` (dU,) with the fault named when any input is
    non-finite or misshapen. Never raises on the data; the result is always finite and
    within limits.effort.
    """
    fallback = np.asarray(fallback, dtype=float)
    if fallback.shape != (limits.dU,) or not np.all(np.isfinite(fallback)) \
            or np.any(np.abs(fallback) > limits.effort):
        raise ValueError(f"the fallback must be finite and within the effort limits "
                         f"{limits.effort.tolist()}; got {fallback.tolist()}")
    for name, value in (("the command", u), ("the joint position", q), ("the joint velocity", qd)):
        fault = _fault(name, value, limits.dU)
        if fault is not None:
            return SafeCommand(fallback.copy(), fault)
    effort = joint_limit_guard(np.asarray(u, float), np.asarray(q, float), np.asarray(qd, float),
                               limits)
    if not np.all(np.isfinite(effort)):  # cannot happen for finite inputs; never publish it anyway
        return SafeCommand(fallback.copy(),
                           f"the guarded command is not finite: {effort.tolist()}")
    return SafeCommand(effort)


__all__ = ["FALLBACK_ACTIONS", "SafetyLimits", "SafeCommand", "lowered_effort_limits",
           "clamp_effort", "limit_proximity", "joint_limit_guard", "fallback_effort",
           "safe_command"]
__all__ += ["DEFAULT_JOINT_LIMIT_MARGIN", "DEFAULT_JOINT_LIMIT_DAMPING"]
