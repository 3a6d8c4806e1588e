"""Run a controller on a simulated arm and record the rollout in the core's state layout.

The state x = [q, qd, p_ee − target, v_ee] is built from the joint angles and speeds
alone, with the robot's forward kinematics and Jacobian (`JointStateToState`), so the
offline trainer and the ROS sample_collector — which sees only /joint_states — compute
bit-identical states from the same q, qd.
"""
from __future__ import annotations

import threading
from typing import Callable, Union

import numpy as np

from mbpl_ros.core.controller import smoothed_noise
from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.robots import RobotSpec, robot_spec

# act(t, x (dX,)) -> u (dU,)
Policy = Callable[[int, np.ndarray], np.ndarray]


class JointStateToState:
    """x (dX,) from q (J,), qd (J,) and a target (3,): one forward kinematics and one
    Jacobian of the robot's URDF per call and end-effector point, p_ee = FK(q),
    v_ee = J(q) qd. With the robot's extra_points (P > 1), every point's offset is from
    its own target, spec.point_targets(target).

    Owns a PyBullet client in DIRECT mode used only as a kinematics library (the arm in
    it never steps), so it works for a real robot that publishes only joint states.
    Not thread-safe: give each thread its own.
    """

    def __init__(self, robot: Union[str, RobotSpec], layout: StateLayout | None = None):
        spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        self.layout = layout or StateLayout(n_joints=spec.n_joints, n_points=spec.n_points)
        if self.layout.n_joints != spec.n_joints or self.layout.n_points != spec.n_points:
            raise ValueError(f"layout must have n_joints={spec.n_joints} (robot {spec.name!r}) and "
                             f"n_points={spec.n_points}; got {self.layout}")
        self.spec = spec
        self._kinematics = Arm(spec)

    @property
    def model(self) -> Arm:
        """The robot model behind the kinematics, also usable for mass matrix, gravity
        torque and limits. Never step it."""
        return self._kinematics

    def __call__(self, q: np.ndarray, qd: np.ndarray, target: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        qd = np.asarray(qd, dtype=float)
        if self.spec.n_points > 1:
            points, velocities = self._kinematics.points_kinematics(q, qd)
            return self.layout.build(q, qd, points, velocities, self.spec.point_targets(target))
        ee_position = self._kinematics.forward_kinematics(q)
        ee_velocity = self._kinematics.jacobian(q) @ qd
        return self.layout.build(q, qd, ee_position[None], ee_velocity[None], np.asarray(target, float)[None])

    def close(self) -> None:
        self._kinematics.close()

    def __enter__(self) -> "JointStateToState":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# One kinematics model per robot and thread for `observe`, created on first use.
_kinematics_by_thread = threading.local()


def _kinematics_for(spec: RobotSpec, layout: StateLayout) -> JointStateToState:
    models = _kinematics_by_thread.__dict__.setdefault("models", {})
    key = (spec.name, spec.urdf_path, spec.ee_link, spec.ee_offset, spec.base_position, layout)
    model = models.get(key)
    if model is None:
        model = models[key] = JointStateToState(spec, layout)
    return model


def observe(arm: Arm, layout: StateLayout, target: np.ndarray) -> np.ndarray:
    """The state x (dX,) of the arm now, its end-effector point relative to `target` (3,).

    Computed from the arm's joint angles and speeds by JointStateToState, exactly as the
    ROS sample_collector computes it from /joint_states."""
    q, qd, _ = arm.joint_state()
    return _kinematics_for(arm.spec, layout)(q, qd, target)


def run_rollout(arm: Arm, layout: StateLayout, policy: Policy, initial_positions: np.ndarray,
                target: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Reset to `initial_positions` (J,) at rest, the arm's fixtures placed for `target`,
    and run `policy` for T steps.

    Returns X (T, dX) and U (T, dU), U being the effort actually applied (after the
    arm's clamping), since that is what the fitted dynamics must explain.
    """
    arm.reset(np.asarray(initial_positions, float), target=target)
    X = np.empty((T, layout.dX))
    U = np.empty((T, layout.dU))
    for t in range(T):
        X[t] = observe(arm, layout, target)
        U[t] = arm.step(policy(t, X[t]))
    return X, U


def final_distance(X: np.ndarray, layout: StateLayout) -> float:
    """End-effector distance to the target at the last step of X (T, dX), in metres: of the
    end-effector point (the first of the layout's points; e.g. a peg's tip)."""
    return float(np.linalg.norm(X[-1, layout.first_point_offset]))


def rollout_noise(seed: int, iteration: int, condition: int, index: int, T: int, dU: int,
                  smoothing: float, renormalize: bool, attempt: int = 0) -> np.ndarray:
    """The exploration noise (T, dU) of rollout `index` of `condition` at `iteration`:
    smoothed_noise from np.random.default_rng([seed, iteration, condition, index]), or with
    [..., attempt] for a batch drawn again (attempt > 0) because the first could not be used.

    One generator per rollout, so the noise of a rollout does not depend on how many
    were drawn before it (a retried or re-ordered trial on the robot gets the same noise)
    and the offline trainer and the ROS gps_trainer draw identical noise."""
    for name, value in (("seed", seed), ("iteration", iteration), ("condition", condition),
                        ("index", index), ("attempt", attempt)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    key = [int(seed), int(iteration), int(condition), int(index)] + ([int(attempt)] if attempt else [])
    rng = np.random.default_rng(key)
    return smoothed_noise(rng, T, dU, smoothing_sigma=smoothing, renormalize=renormalize)
