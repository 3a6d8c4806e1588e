"""
Data sanity: what may reach the learning.

Pure numpy, no ROS; the nodes call these checks on what they receive and what they make
(docs/safety.md, "Bad data").

1. The physical envelope of a joint state (J joints; URDF position limits [lower, upper]
   and velocity limits v > 0). A state is impossible when

       q_j < lower_j - POSITION_MARGIN_RAD  or  q_j > upper_j + POSITION_MARGIN_RAD,
       |qd_j| > VELOCITY_FACTOR · v_j,
       or, between two states dt > 0 apart,
           |q_j' - q_j| > VELOCITY_FACTOR · v_j · dt + STEP_SLACK_RAD,

   or when any value is not finite. The margin and the factor leave room for overshoot past
   a soft limit, encoder noise and a velocity estimate's spikes; beyond them the reading is
   a glitch (an encoder or driver fault), never the arm.
2. The stamp of a joint state, against the receiving node's clock (`now`) and the latest
   state it accepted: stamped more than FUTURE_STAMP_TOLERANCE_S ahead of `now`, or older
   than the latest accepted state, is rejected. An accepted state can thus hold back the
   states after it by at most the tolerance. If nothing was accepted for STAMP_RESYNC_S,
   an older stamp is accepted again (the source restarted, its clock went back).
3. Fitted dynamics and controllers: every number finite and of magnitude at most
   ABSURD_MAGNITUDE (no arm's model or gains come near), covariances with a positive
   diagonal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Positions beyond a URDF position limit by more than this (rad) are impossible.
POSITION_MARGIN_RAD = 0.25
#: Speeds above this multiple of the URDF velocity limit are impossible (also per step).
VELOCITY_FACTOR = 2.0
#: Allowed joint motion (rad) between two states on top of VELOCITY_FACTOR · v · dt.
STEP_SLACK_RAD = 0.01
#: Joint states stamped further ahead of the receiving clock than this (s) are rejected.
FUTURE_STAMP_TOLERANCE_S = 0.02
#: After this long (s) without an accepted state, an older stamp is accepted again.
STAMP_RESYNC_S = 1.0
#: Entries of a fit or a controller beyond this magnitude are absurd.
ABSURD_MAGNITUDE = 1e8


@dataclass(frozen=True)
class StateEnvelope:
    """
    Joint limits of a robot, beyond which no real joint state lies.

    Position (J, 2) rows [lower, upper] (rad, ±inf: none) and velocity (J,) limits (rad/s,
    > 0, inf: none) of the robot, in its joint order.
    """

    position: np.ndarray
    velocity: np.ndarray

    def __post_init__(self):
        position = np.array(self.position, dtype=float)
        velocity = np.array(self.velocity, dtype=float)
        if position.ndim != 2 or position.shape[1] != 2 or velocity.shape != (position.shape[0],):
            raise ValueError(f"the envelope needs position (J, 2) and velocity (J,) limits; got "
                             f"{position.shape} and {velocity.shape}")
        if not np.all(position[:, 0] < position[:, 1]) or not np.all(velocity > 0):
            raise ValueError(f"position limits must have lower < upper and velocity limits "
                             f"be > 0; got {position.tolist()} and {velocity.tolist()}")
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "velocity", velocity)

    @property
    def J(self) -> int:
        return self.velocity.size


def state_fault(q, qd, envelope: StateEnvelope) -> Optional[str]:
    """
    Say why the joint state q, qd (J,) is impossible (law 1), or return None.

    Why the joint state q, qd (J,) is impossible (law 1: not finite, position or speed
    outside the envelope), or None.
    """
    q, qd = np.asarray(q, dtype=float), np.asarray(qd, dtype=float)
    if q.shape != (envelope.J,) or qd.shape != (envelope.J,):
        return f"position {q.shape} and velocity {qd.shape} are not ({envelope.J},)"
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
        return f"not finite: position {q.tolist()}, velocity {qd.tolist()}"
    lower = envelope.position[:, 0] - POSITION_MARGIN_RAD
    upper = envelope.position[:, 1] + POSITION_MARGIN_RAD
    outside = np.flatnonzero((q < lower) | (q > upper))
    if outside.size:
        j = int(outside[0])
        return (f"joint {j} at {q[j]:.6g} rad, beyond its limits [{envelope.position[j, 0]:.4g}, "
                f"{envelope.position[j, 1]:.4g}] by more than {POSITION_MARGIN_RAD} rad")
    too_fast = np.flatnonzero(np.abs(qd) > VELOCITY_FACTOR * envelope.velocity)
    if too_fast.size:
        j = int(too_fast[0])
        return (f"joint {j} at {qd[j]:.6g} rad/s, above {VELOCITY_FACTOR:g} x its velocity limit "
                f"{envelope.velocity[j]:.4g} rad/s")
    return None


def step_fault(q_before, q_after, dt_s: float, envelope: StateEnvelope) -> Optional[str]:
    """Why no arm moves from q_before to q_after (J,) in dt_s > 0 seconds (law 1), or None."""
    step = np.abs(np.asarray(q_after, dtype=float) - np.asarray(q_before, dtype=float))
    reach = VELOCITY_FACTOR * envelope.velocity * float(dt_s) + STEP_SLACK_RAD
    with np.errstate(invalid="ignore"):
        beyond = np.flatnonzero(~(step <= reach))
    if beyond.size:
        j = int(beyond[0])
        return (f"joint {j} moved {step[j]:.6g} rad in {dt_s:.4g} s; at most {reach[j]:.4g} "
                f"rad is possible ({VELOCITY_FACTOR:g} x its velocity limit "
                f"{envelope.velocity[j]:.4g} rad/s)")
    return None


def trajectory_fault(q, qd, stamps_s, envelope: StateEnvelope) -> Optional[str]:
    """
    Find the first impossible state or step of a trajectory, or return None.

    The trajectory is q, qd (T, J) at times stamps_s (T,) (increasing); the fault is named by
    its step.
    """
    q, qd = np.asarray(q, dtype=float), np.asarray(qd, dtype=float)
    stamps_s = np.asarray(stamps_s, dtype=float)
    for t in range(q.shape[0]):
        fault = state_fault(q[t], qd[t], envelope)
        if fault is None and t > 0:
            fault = step_fault(q[t - 1], q[t], stamps_s[t] - stamps_s[t - 1], envelope)
        if fault is not None:
            return f"step {t}: {fault}"
    return None


def stamp_fault(stamp_ns: int, now_ns: int, latest_ns: Optional[int],
                since_latest_s: float) -> Optional[str]:
    """
    Say why a joint state is rejected for its stamp (law 2), or return None to accept it.

    Why a joint state stamped stamp_ns is rejected (law 2) by a node whose clock reads
    now_ns and whose latest accepted state (None: none yet) was stamped latest_ns and
    arrived since_latest_s ago; None to accept it.
    """
    ahead_s = (int(stamp_ns) - int(now_ns)) * 1e-9
    if ahead_s > FUTURE_STAMP_TOLERANCE_S:
        return (f"stamped {ahead_s:.3f} s ahead of this node's clock (tolerance "
                f"{FUTURE_STAMP_TOLERANCE_S} s; are the clocks synchronised?)")
    if latest_ns is not None and stamp_ns < latest_ns and since_latest_s <= STAMP_RESYNC_S:
        behind_s = (latest_ns - stamp_ns) * 1e-9
        return f"stamped {behind_s:.3f} s before the latest accepted joint state"
    return None


def _array_fault(name: str, value, limit: float = ABSURD_MAGNITUDE) -> Optional[str]:
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)):
        return f"{name} is not finite ({int(np.sum(~np.isfinite(array)))} of {array.size} entries)"
    largest = float(np.max(np.abs(array))) if array.size else 0.0
    if largest > limit:
        return f"{name} has an entry of magnitude {largest:.3g} (> {limit:g})"
    return None


def _covariance_fault(name: str, covar) -> Optional[str]:
    fault = _array_fault(name, covar)
    if fault is None and not np.all(np.diagonal(np.asarray(covar, float), axis1=-2, axis2=-1) > 0):
        fault = f"{name} has a diagonal entry <= 0"
    return fault


def dynamics_fault(dynamics) -> Optional[str]:
    """
    Say why fitted dynamics are not to be used (law 3), or return None.

    Why fitted dynamics (core.dynamics.LinearGaussianDynamics: F (T-1, dX, dX+dU), f, covar,
    x0_mean, x0_covar) are not to be used (law 3), or None.
    """
    for name in ("F", "f", "x0_mean"):
        fault = _array_fault(f"the dynamics' {name}", getattr(dynamics, name))
        if fault is not None:
            return fault
    for name in ("covar", "x0_covar"):
        fault = _covariance_fault(f"the dynamics' {name}", getattr(dynamics, name))
        if fault is not None:
            return fault
    return None


def controller_fault(controller) -> Optional[str]:
    """
    Say why a controller update is not to be used (law 3), or return None.

    Why a controller update (core.controller.LinearGaussianController: K (T, dU, dX), k,
    covar (T, dU, dU)) is not to be used (law 3), or None.
    """
    for name in ("K", "k"):
        fault = _array_fault(f"the controller's {name}", getattr(controller, name))
        if fault is not None:
            return fault
    return _covariance_fault("the controller's covar", controller.covar)


def controllers_fault(controllers) -> Optional[str]:
    """
    Find the first condition whose controller is not to be used, or return None.

    The controllers are a sequence, one per condition; the condition is named with the
    reason.
    """
    for m, controller in enumerate(controllers):
        fault = controller_fault(controller)
        if fault is not None:
            return f"condition {m}: {fault}"
    return None


__all__ = ["POSITION_MARGIN_RAD", "VELOCITY_FACTOR", "STEP_SLACK_RAD", "FUTURE_STAMP_TOLERANCE_S",
           "STAMP_RESYNC_S", "ABSURD_MAGNITUDE", "StateEnvelope", "state_fault", "step_fault",
           "trajectory_fault", "stamp_fault", "dynamics_fault", "controller_fault",
           "controllers_fault"]
