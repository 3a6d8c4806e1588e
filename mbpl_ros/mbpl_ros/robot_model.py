"""The robot as a rigid-body model, for the nodes on a real arm and for model-based priors.

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

from typing import Tuple, Union

import numpy as np
import pinocchio

from mbpl_ros.sim.robots import RobotSpec, robot_spec

_WORLD = pinocchio.ReferenceFrame.LOCAL_WORLD_ALIGNED


class RobotModel:
    """One fixed-base serial arm, in the joint order of its spec (J joints)."""

    def __init__(self, robot: Union[str, RobotSpec]):
        self.spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        spec = self.spec
        full = pinocchio.buildModelFromUrdf(spec.urdf_path)
        where = f"robot {spec.name!r} (URDF {spec.urdf_path})"
        names = list(full.names)[1:]   # [0] is the universe
        unknown = [n for n in list(spec.joint_names) + list(spec.locked_joints) if n not in names]
        if unknown:
            raise ValueError(f"{where}: joints {unknown} are not movable joints of the URDF; "
                             f"its movable joints: {names}")
        q_locked = pinocchio.neutral(full)
        for name, angle in spec.locked_joints.items():
            q_locked[full.idx_qs[full.getJointId(name)]] = angle
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
        self._ee_offset = np.asarray(spec.ee_offset, dtype=float)
        self._base = np.asarray(spec.base_position, dtype=float)
        damping = np.asarray(model.damping, dtype=float)[self._index]
        self.joint_damping = np.array([spec.damping_overrides.get(name, d)
                                       for name, d in zip(spec.joint_names, damping)])
        self.n_joints = len(spec.joint_names)
        # Limits in spec order, the spec's overrides replacing the URDF's (as the simulator).
        names = spec.joint_names
        lower, upper = self._from_model(model.lowerPositionLimit), self._from_model(model.upperPositionLimit)
        self.position_limits = np.array([spec.position_limit_overrides.get(name, (lo, hi))
                                         for name, lo, hi in zip(names, lower, upper)], dtype=float)
        self.velocity_limits = np.array([spec.velocity_limit_overrides.get(name, v) for name, v
                                         in zip(names, self._from_model(model.velocityLimit))])
        self.effort_limits = np.array([spec.effort_limit_overrides.get(name, e) for name, e
                                       in zip(names, self._from_model(model.effortLimit))])

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
        """d qdd / d q, d qdd / d qd and d qdd / d tau (each (J, J)) of forward_dynamics."""
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
    """[v]×, so that _skew(v) @ w = v × w."""
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
