"""
The robot as a rigid-body model, for the nodes on a real arm and for model-based priors.

`RobotModel` loads a `RobotSpec` (its URDF, controlled and locked joints, end-effector point,
base position and gravity) into Pinocchio and gives, in the spec's joint order (J,):
forward kinematics and the linear Jacobian of the end-effector point, the joint-space mass
matrix M(q), the gravity torque G(q), inverse dynamics, forward dynamics with the URDF's
(or the spec's) viscous joint damping, and the analytical derivatives of the forward
dynamics. It imports no simulator: PyBullet is the simulator only, and the tests check this
model against it.

Locked joints are fixed at their spec angle (Pinocchio's reduced model): their links still
count in the dynamics, as in the simulator.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import pinocchio

from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.robots import RobotSpec, check_urdf_file, robot_spec

_WORLD = pinocchio.ReferenceFrame.LOCAL_WORLD_ALIGNED


class RobotModel:
    """One fixed-base serial arm, in the joint order of its spec (J joints)."""

    def __init__(self, robot: Union[str, RobotSpec]):
        self.spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        spec = self.spec
        where = f"robot {spec.name!r} (URDF {spec.urdf_path})"
        check_urdf_file(spec.urdf_path, where)
        full = pinocchio.buildModelFromUrdf(spec.urdf_path)
        names = list(full.names)[1:]   # [0] is the universe
        unknown = [n for n in list(spec.joint_names) + list(spec.locked_joints) if n not in names]
        if unknown:
            raise ValueError(f"{where}: joints {unknown} are not movable joints of the URDF; "
                             f"its movable joints: {names}")
        controlled, locked = list(spec.joint_names), list(spec.locked_joints)
        if set(names) != set(controlled) | set(locked):
            missing = [name for name in names if name not in controlled and name not in locked]
            raise ValueError(f"{where}: joints {controlled} (controlled) and locked_joints "
                             f"{locked} must be exactly the movable joints of the URDF {names}; "
                             f"lock or control {missing}")
        q_locked = pinocchio.neutral(full)
        for name, angle in spec.locked_joints.items():
            index = full.idx_qs[full.getJointId(name)]
            lower, upper = full.lowerPositionLimit[index], full.upperPositionLimit[index]
            if lower < upper and not lower <= angle <= upper:
                raise ValueError(f"{where}: locked joint {name!r} at {angle} is outside its URDF "
                                 f"limits [{lower}, {upper}]")
            q_locked[index] = angle
        locked_ids = [full.getJointId(name) for name in spec.locked_joints]
        self.model = (pinocchio.buildReducedModel(full, locked_ids, q_locked) if locked_ids
                      else full)
        self.model.gravity.linear = np.asarray(spec.gravity_vector, dtype=float)
        self.data = self.model.createData()
        model = self.model
        if model.nq != len(spec.joint_names) or model.nv != model.nq:
            raise ValueError(f"{where}: joints {list(spec.joint_names)} and locked_joints "
                             f"{list(spec.locked_joints)} must be all the movable joints, each "
                             "revolute or prismatic")
        # Pinocchio orders joints along the tree; ours follow spec.joint_names.
        self._index = np.array([model.idx_qs[model.getJointId(name)] for name in spec.joint_names])
        if not model.existFrame(spec.ee_link):
            raise ValueError(f"{where}: ee_link {spec.ee_link!r} is not a link of the URDF")
        self._ee_frame = model.getFrameId(spec.ee_link)
        # A serial arm: every controlled joint moves the end-effector link.
        chain = set(model.supports[model.frames[self._ee_frame].parentJoint])
        off_chain = [name for name in spec.joint_names if model.getJointId(name) not in chain]
        if off_chain:
            raise ValueError(f"{where}: controlled joints {off_chain} do not move the "
                             f"end-effector link {spec.ee_link!r}; control the joints between "
                             "the base and it, lock the others")
        self._ee_offset = np.asarray(spec.ee_offset, dtype=float)
        self._base = np.asarray(spec.base_position, dtype=float)
        damping = np.asarray(model.damping, dtype=float)[self._index]
        self.joint_damping = np.array([spec.damping_overrides.get(name, d)
                                       for name, d in zip(spec.joint_names, damping)])
        self.n_joints = len(spec.joint_names)
        # Limits in spec order, the spec's overrides replacing the URDF's (as the simulator).
        names = spec.joint_names
        lower = self._from_model(model.lowerPositionLimit)
        upper = self._from_model(model.upperPositionLimit)
        self.position_limits = np.array([spec.position_limit_overrides.get(name, (lo, hi))
                                         for name, lo, hi in zip(names, lower,
                                                                 upper)], dtype=float)
        self.velocity_limits = np.array([spec.velocity_limit_overrides.get(name, v) for name, v
                                         in zip(names, self._from_model(model.velocityLimit))])
        self.effort_limits = np.array([spec.effort_limit_overrides.get(name, e) for name, e
                                       in zip(names, self._from_model(model.effortLimit))])
        for what, bad in (("effort", ~(self.effort_limits > 0)),
                          ("velocity", ~(self.velocity_limits > 0)),
                          ("position", ~(self.position_limits[:, 0] < self.position_limits[:,
                                                                                           1]))):
            if bad.any():
                raise ValueError(f"{where}: the URDF must give a positive {what} limit for joints "
                                 f"{[n for n, b in zip(names, bad) if b]}, or the robot "
                                 f"description one in limits.{what}")
        self._point_offsets = spec.point_offsets

    # ------------------------------------------------------------------ orderings
    def _to_model(self, vector: np.ndarray) -> np.ndarray:
        """(J,) in spec order -> Pinocchio's order."""
        out = np.empty(self.n_joints)
        out[self._index] = vector
        return out

    def _from_model(self, vector: np.ndarray) -> np.ndarray:
        return np.asarray(vector, dtype=float)[self._index]

    def _matrix_from_model(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(matrix, dtype=float)[np.ix_(self._index, self._index)]

    # ------------------------------------------------------------------ kinematics
    def forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """(3,) world position of the end-effector point at joint angles q (J,)."""
        pinocchio.framesForwardKinematics(self.model, self.data, self._to_model(q))
        placement = self.data.oMf[self._ee_frame]
        return self._base + placement.translation + placement.rotation @ self._ee_offset

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """(3, J) linear Jacobian d p_ee / d q of the end-effector point at q (J,)."""
        qm = self._to_model(q)
        J = pinocchio.computeFrameJacobian(self.model, self.data, qm, self._ee_frame, _WORLD)
        # The frame's origin moves with J[:3]; a point r away adds ω × r = -[r]× ω.
        r = self.data.oMf[self._ee_frame].rotation @ self._ee_offset
        linear = J[:3] - _skew(r) @ J[3:]
        return linear[:, self._index]

    def points_kinematics(self, q: np.ndarray, qd: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        Return the world positions (P, 3) and velocities (P, 3) of every end-effector point.

        The points are spec.point_offsets on ee_link, at joint angles q (J,) and speeds qd (J,).
        """
        J = pinocchio.computeFrameJacobian(self.model, self.data, self._to_model(q),
                                           self._ee_frame, _WORLD)
        placement = self.data.oMf[self._ee_frame]
        qd = np.asarray(qd, dtype=float)
        points, velocities = [], []
        for offset in self._point_offsets:
            r = placement.rotation @ offset
            points.append(self._base + placement.translation + r)
            velocities.append((J[:3] - _skew(r) @ J[3:])[:, self._index] @ qd)
        return np.array(points), np.array(velocities)

    def ee_state(self, q: np.ndarray, qd: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """End-effector point (3,) and its velocity (3,) at q, qd (J,)."""
        return self.forward_kinematics(q), self.jacobian(q) @ np.asarray(qd, dtype=float)

    # ------------------------------------------------------------------ dynamics
    def mass_matrix(self, q: np.ndarray) -> np.ndarray:
        """(J, J) joint-space inertia matrix M(q)."""
        M = pinocchio.crba(self.model, self.data, self._to_model(q))
        M = np.triu(M) + np.triu(M, 1).T   # crba fills the upper triangle
        return self._matrix_from_model(M)

    def inverse_dynamics(self, q: np.ndarray, qd: np.ndarray, qdd: np.ndarray) -> np.ndarray:
        """(J,) torque M(q) qdd + c(q, qd) + G(q); excludes damping."""
        tau = pinocchio.rnea(self.model, self.data, self._to_model(q), self._to_model(qd),
                             self._to_model(qdd))
        return self._from_model(tau)

    def gravity_torque(self, q: np.ndarray) -> np.ndarray:
        """(J,) torque G(q) that holds the arm still against gravity at q (J,)."""
        return self._from_model(pinocchio.computeGeneralizedGravity(
            self.model, self.data, self._to_model(q)))

    def forward_dynamics(self, q: np.ndarray, qd: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """(J,) joint accelerations under effort tau (J,), with viscous joint damping."""
        qd = np.asarray(qd, dtype=float)
        qdd = pinocchio.aba(self.model, self.data, self._to_model(q), self._to_model(qd),
                            self._to_model(np.asarray(tau, dtype=float) - self.joint_damping * qd))
        return self._from_model(qdd)

    def forward_dynamics_derivatives(self, q: np.ndarray, qd: np.ndarray, tau: np.ndarray
                                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """D qdd / d q, d qdd / d qd and d qdd / d tau (each (J, J)) of forward_dynamics."""
        qd = np.asarray(qd, dtype=float)
        applied = np.asarray(tau, dtype=float) - self.joint_damping * qd
        pinocchio.computeABADerivatives(self.model, self.data, self._to_model(q),
                                        self._to_model(qd), self._to_model(applied))
        d_q = self._matrix_from_model(self.data.ddq_dq)
        d_tau = self._matrix_from_model(self.data.Minv)
        # Damping enters through tau: d qdd / d qd gets -M⁻¹ D.
        d_qd = self._matrix_from_model(self.data.ddq_dv) - d_tau * self.joint_damping[None, :]
        return d_q, d_qd, d_tau


def _skew(v: np.ndarray) -> np.ndarray:
    """Return the cross-product matrix [v]× of v (3,): [v]× w = v × w."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def check_robot(spec: RobotSpec) -> None:
    """
    Load the URDF once and check the spec against it (joints, links, limits).

    Raises the ValueError a RobotModel (and the simulator) would raise, now; costs one URDF
    load, and no simulator.
    """
    RobotModel(spec)


class JointStateToState:
    """
    The state x (dX,) from q (J,), qd (J,) and a target (3,), on the robot model.

    One forward kinematics and one Jacobian per call and end-effector point: p_ee = FK(q),
    v_ee = J(q) qd. With the robot's extra_points (P > 1), every point's offset is from its
    own target, spec.point_targets(target). The nodes on hardware (from /joint_states) and
    the simulator's rollouts (sim.rollout.observe) build their states with it, so both
    compute bit-identical states from the same q, qd. Not thread-safe: give each thread its
    own.
    """

    def __init__(self, robot: Union[str, RobotSpec], layout: Optional[StateLayout] = None):
        spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        self.layout = layout or StateLayout(n_joints=spec.n_joints, n_points=spec.n_points)
        if self.layout.n_joints != spec.n_joints or self.layout.n_points != spec.n_points:
            raise ValueError(f"layout must have n_joints={spec.n_joints} (robot {spec.name!r}) "
                             f"and n_points={spec.n_points}; got {self.layout}")
        self.spec = spec
        self.model = RobotModel(spec)

    def __call__(self, q: np.ndarray, qd: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Return x (dX,) at joint angles q (J,), speeds qd (J,) and the target (3,)."""
        q = np.asarray(q, dtype=float)
        qd = np.asarray(qd, dtype=float)
        if self.spec.n_points > 1:
            points, velocities = self.model.points_kinematics(q, qd)
            return self.layout.build(q, qd, points, velocities, self.spec.point_targets(target))
        ee_position = self.model.forward_kinematics(q)
        ee_velocity = self.model.jacobian(q) @ qd
        return self.layout.build(q, qd, ee_position[None], ee_velocity[None],
                                 np.asarray(target, float)[None])

    def close(self) -> None:
        """Release nothing: the model holds no simulator (kept for `with` blocks)."""

    def __enter__(self) -> "JointStateToState":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class StepLinearization:
    """
    The description's control step, linearised, for core.model_prior.ModelPrior.

    x_{t+1} ≈ G_t [x_t; u_t] + c_t in the learner's state x = [q, q̇, p_ee − p_target,
    ṗ_ee] (core.rollouts.StateLayout with one end-effector point). A control step holds the
    effort u for `substeps` physics steps of `physics_dt`, each a semi-implicit Euler step
    q̇ += h q̈(q, q̇, u), q += h q̇ (as PyBullet integrates), q̈ from Pinocchio's forward
    dynamics and its analytical derivatives. The end-effector entries of x are functions
    of q and q̇, so G_t's columns for them are zero. Picklable (checkpoints hold it): the
    Pinocchio model is rebuilt from the spec.
    """

    def __init__(self, spec: RobotSpec, target, physics_dt: float, substeps: int):
        if spec.n_points != 1:
            raise ValueError(f"robot {spec.name!r}: the description prior handles one "
                             f"end-effector point; this robot has {spec.n_points}")
        self.spec, self.target = spec, np.asarray(target, dtype=float)
        self.physics_dt, self.substeps = float(physics_dt), int(substeps)
        self.model = RobotModel(spec)

    def __getstate__(self):
        return {"spec": self.spec, "target": self.target, "physics_dt": self.physics_dt,
                "substeps": self.substeps}

    def __setstate__(self, state):
        self.__init__(**state)

    def observe(self, q: np.ndarray, qd: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Return x (dX,) and d x / d [q; q̇] (dX, 2J) at q, q̇ (J,)."""
        model, J = self.model, self.model.n_joints
        p, jac = model.forward_kinematics(q), model.jacobian(q)
        eps, eye = 1e-6, np.eye(J)
        # d (J(q) q̇) / d q by central differences of the analytical Jacobian.
        d_velocity = np.stack([(model.jacobian(q + eps * e) - model.jacobian(q - eps * e)) @ qd
                               for e in eye], axis=1) / (2 * eps)
        x = np.concatenate([q, qd, p - self.target, jac @ qd])
        dx = np.zeros((2 * J + 6, 2 * J))
        dx[:J, :J] = eye
        dx[J:2 * J, J:] = eye
        dx[2 * J:2 * J + 3, :J] = jac
        dx[2 * J + 3:, :J], dx[2 * J + 3:, J:] = d_velocity, jac
        return x, dx

    def step(self, q: np.ndarray, qd: np.ndarray, u: np.ndarray):
        """Return q, q̇ after one control step, and d [q'; q̇'] / d [q; q̇; u] (2J, 3J)."""
        model, J, h = self.model, self.model.n_joints, self.physics_dt
        u = np.clip(u, -model.effort_limits, model.effort_limits)  # as the arm clamps it
        # Chain rule through the substeps: D = d [q; q̇] / d [q0; q̇0; u].
        D = np.zeros((2 * J, 3 * J))
        D[:, :2 * J] = np.eye(2 * J)
        for _ in range(self.substeps):
            a_q, a_qd, a_u = model.forward_dynamics_derivatives(q, qd, u)
            qdd = model.forward_dynamics(q, qd, u)
            d_qd = D[J:] + h * (a_q @ D[:J] + a_qd @ D[J:])
            d_qd[:, 2 * J:] += h * a_u
            qd = qd + h * qdd
            D = np.vstack([D[:J] + h * d_qd, d_qd])
            q = q + h * qd
        return q, qd, D

    def __call__(self, x_mean: np.ndarray, u_mean: np.ndarray):
        """Return G (T-1, dX, dX+dU), c (T-1, dX) at mean states (T-1, dX), actions (T-1, dU)."""
        J = self.model.n_joints
        dX = x_mean.shape[1]
        G = np.zeros((x_mean.shape[0], dX, dX + J))
        c = np.zeros((x_mean.shape[0], dX))
        for t, (x, u) in enumerate(zip(x_mean, u_mean)):
            q_next, qd_next, D = self.step(x[:J], x[J:2 * J], u)
            x_next, d_observe = self.observe(q_next, qd_next)
            chain = d_observe @ D                                     # (dX, 3J)
            G[t, :, :2 * J] = chain[:, :2 * J]
            G[t, :, dX:] = chain[:, 2 * J:]
            c[t] = x_next - G[t] @ np.concatenate([x, u])
        return G, c
