"""A PyBullet arm under effort (torque) control.

Each Arm owns its own physics client, so several arms coexist in one process. The
simulation is deterministic: the same reset and effort sequence gives bit-identical
states in any fresh Arm of the same robot, dt and substeps.

Arrays are ordered like RobotSpec.joint_names; J is the number of joints.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from numbers import Integral
from typing import Optional, Tuple, Union

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from mbpl_ros.sim.robots import RobotSpec, robot_spec


@contextlib.contextmanager
def _stdout_silenced():
    """Send file descriptor 1 to /dev/null for the duration (C-level prints included)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class Arm:
    """One robot arm with a fixed base, driven by joint torques.

    Limits come from the URDF and are enforced: efforts are clamped to the effort
    limits, PyBullet's joint-limit constraints keep positions within the position limits,
    and joint speeds are capped at the velocity limits. The default velocity motors are
    disabled, so a zero effort lets the arm move freely under gravity and joint damping.
    """

    def __init__(self, robot: Union[str, RobotSpec], physics_dt: float = 1.0 / 240.0,
                 substeps: int = 12, gui: bool = False):
        self.spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        if not (isinstance(physics_dt, (int, float)) and math.isfinite(physics_dt) and physics_dt > 0):
            raise ValueError(f"physics_dt must be a positive finite number of seconds; got {physics_dt!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, Integral) or substeps < 1:
            raise ValueError(f"substeps must be an integer >= 1; got {substeps!r}")
        self.physics_dt = float(physics_dt)
        self.substeps = int(substeps)
        self.control_dt = self.physics_dt * self.substeps
        self.joint_names = self.spec.joint_names
        self.n_joints = len(self.joint_names)

        with _stdout_silenced():   # PyBullet's C code prints "argv[0]=" on every connect
            self._client: Optional[BulletClient] = BulletClient(
                connection_mode=pybullet.GUI if gui else pybullet.DIRECT)
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._applied_effort = np.zeros(self.n_joints)
        # Start at "home", or at the angles nearest zero when the spec names no home.
        self.reset("home" if "home" in self.spec.initial_conditions
                   else np.clip(np.zeros(self.n_joints), *self.position_limits.T))

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        client = self._client
        client.setTimeStep(self.physics_dt)
        client.setGravity(*self.spec.gravity_vector)
        try:
            self._body = client.loadURDF(
                self.spec.urdf_path, basePosition=self.spec.base_position, useFixedBase=True,
                # Keep the URDF's masses and inertias instead of ones derived from shapes.
                flags=pybullet.URDF_USE_INERTIA_FROM_FILE)
        except pybullet.error as error:
            raise ValueError(f"cannot load URDF {self.spec.urdf_path!r} of robot "
                             f"{self.spec.name!r}: {error}") from None

        joint_index, link_index, movable = {}, {}, []
        for index in range(client.getNumJoints(self._body)):
            info = client.getJointInfo(self._body, index)
            name, joint_type, link = info[1].decode(), info[2], info[12].decode()
            joint_index[name], link_index[link] = index, index
            if joint_type != pybullet.JOINT_FIXED:
                movable.append(name)
        if set(movable) != set(self.joint_names):
            raise ValueError(f"robot {self.spec.name!r}: joint_names {list(self.joint_names)} must "
                             f"be exactly the movable joints of the URDF {movable}")
        if self.spec.ee_link not in link_index:
            raise ValueError(f"robot {self.spec.name!r}: ee_link {self.spec.ee_link!r} is not a "
                             f"link of the URDF; links: {sorted(link_index)}")
        self._joint_indices = [joint_index[name] for name in self.joint_names]
        # PyBullet orders degrees of freedom by joint index; ours follow joint_names.
        self._dof_of_joint = np.argsort(np.argsort(self._joint_indices))
        self._n_dofs = len(movable)
        self._ee_link_index = link_index[self.spec.ee_link]

        infos = [client.getJointInfo(self._body, i) for i in self._joint_indices]
        self.position_limits = np.array([[info[8], info[9]] for info in infos], dtype=float)
        self.effort_limits = np.array([info[10] for info in infos], dtype=float)
        self.velocity_limits = np.array([info[11] for info in infos], dtype=float)
        self.joint_damping = np.array([self.spec.damping_overrides.get(name, info[6])
                                       for name, info in zip(self.joint_names, infos)])
        for what, bad in (("effort", ~(self.effort_limits > 0)),
                          ("velocity", ~(self.velocity_limits > 0)),
                          ("position", ~(self.position_limits[:, 0] < self.position_limits[:, 1]))):
            if bad.any():
                raise ValueError(f"robot {self.spec.name!r}: the URDF must give a positive {what} "
                                 f"limit for joints {list(np.array(self.joint_names)[bad])}")

        for index, damping, (lower, upper), speed in zip(
                self._joint_indices, self.joint_damping, self.position_limits, self.velocity_limits):
            # One property per call: PyBullet 3.2 drops jointDamping when it shares a call
            # with maxJointVelocity.
            client.changeDynamics(self._body, index, jointDamping=float(damping))
            client.changeDynamics(self._body, index, maxJointVelocity=float(speed))
            client.changeDynamics(self._body, index, jointLowerLimit=float(lower),
                                  jointUpperLimit=float(upper))
        for link in range(-1, client.getNumJoints(self._body)):
            # No hidden per-link velocity damping: joint damping is the only dissipation.
            client.changeDynamics(self._body, link, linearDamping=0.0, angularDamping=0.0)
        # Disable the default velocity motors, which would otherwise brake every joint.
        client.setJointMotorControlArray(
            self._body, self._joint_indices, pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0] * self.n_joints, forces=[0.0] * self.n_joints)

        # PyBullet reports a link's URDF frame only in single precision but its centre-of-mass
        # frame in double precision: positions are computed from the latter.
        self._ee_offset = np.array(self.spec.ee_offset)  # calculateJacobian takes this one
        inertial_position, inertial_orientation = client.getDynamicsInfo(
            self._body, self._ee_link_index)[3:5]
        self._ee_inertial_orientation = np.array(inertial_orientation, dtype=float)
        self._ee_offset_from_com = _rotation(self._ee_inertial_orientation).T @ (
            np.array(self.spec.ee_offset) - np.array(inertial_position))

    # ------------------------------------------------------------------ control
    def reset(self, q: Union[np.ndarray, str], qd: Optional[np.ndarray] = None) -> None:
        """Put the arm at joint angles q (J,) or a named initial condition, with speeds qd (J,).

        qd defaults to zero; the applied effort is reset to zero.
        """
        if isinstance(q, str):
            q = self.spec.initial_condition(q)
        q = self._joint_vector(q, "q")
        qd = np.zeros(self.n_joints) if qd is None else self._joint_vector(qd, "qd")
        lower, upper = self.position_limits.T
        outside = (q < lower) | (q > upper)
        if outside.any():
            raise ValueError(f"q {q.tolist()} is outside the position limits "
                             f"{self.position_limits.tolist()} at joints "
                             f"{list(np.array(self.joint_names)[outside])}")
        too_fast = np.abs(qd) > self.velocity_limits
        if too_fast.any():
            raise ValueError(f"|qd| {np.abs(qd).tolist()} exceeds the velocity limits "
                             f"{self.velocity_limits.tolist()} at joints "
                             f"{list(np.array(self.joint_names)[too_fast])}")
        self._set_joint_state(q, qd)
        self._applied_effort = np.zeros(self.n_joints)

    def step(self, effort: np.ndarray) -> np.ndarray:
        """Apply effort (J,) (N·m) for one control step of `substeps` physics steps.

        Returns the effort actually applied: the command clamped to the effort limits.
        """
        effort = self._joint_vector(effort, "effort")
        applied = np.clip(effort, -self.effort_limits, self.effort_limits)
        forces = applied.tolist()
        client = self._live_client()
        for _ in range(self.substeps):
            # Torque commands last one physics step, so they are set before each.
            client.setJointMotorControlArray(self._body, self._joint_indices,
                                             pybullet.TORQUE_CONTROL, forces=forces)
            client.stepSimulation()
        self._applied_effort = applied
        return applied.copy()

    def joint_state(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q (J,), qd (J,) and the effort (J,) applied during the last step (zero after reset)."""
        states = self._live_client().getJointStates(self._body, self._joint_indices)
        q = np.array([s[0] for s in states], dtype=float)
        qd = np.array([s[1] for s in states], dtype=float)
        return q, qd, self._applied_effort.copy()

    # ------------------------------------------------------------------ kinematics
    def ee_position(self) -> np.ndarray:
        """(3,) world position of the end-effector point now."""
        return self._ee_pose_now()[0]

    def ee_orientation(self) -> np.ndarray:
        """(4,) world orientation quaternion (x, y, z, w) of the end-effector link frame now."""
        return self._ee_pose_now()[1]

    def ee_velocity(self) -> np.ndarray:
        """(3,) world linear velocity of the end-effector point now."""
        q, qd, _ = self.joint_state()
        return self.jacobian(q) @ qd

    def ee_angular_velocity(self) -> np.ndarray:
        """(3,) world angular velocity of the end-effector link now."""
        q, qd, _ = self.joint_state()
        return self._jacobians(q)[1] @ qd

    def forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """(3,) world position of the end-effector point at joint angles q (J,).

        The simulation state is restored exactly afterwards.
        """
        q = self._joint_vector(q, "q")
        saved_q, saved_qd, _ = self.joint_state()
        try:
            self._set_joint_state(q, np.zeros(self.n_joints))
            return self._ee_pose_now()[0]
        finally:
            self._set_joint_state(saved_q, saved_qd)

    def jacobian(self, q: np.ndarray, qd: Optional[np.ndarray] = None) -> np.ndarray:
        """(3, J) linear Jacobian d p_ee / d q of the end-effector point at q (J,).

        qd (J,) is accepted for symmetry with velocity-dependent quantities; the
        Jacobian does not depend on it.
        """
        q = self._joint_vector(q, "q")
        if qd is not None:
            self._joint_vector(qd, "qd")
        return self._jacobians(q)[0]

    def mass_matrix(self, q: np.ndarray) -> np.ndarray:
        """(J, J) joint-space inertia matrix M(q)."""
        q = self._joint_vector(q, "q")
        full = np.array(self._live_client().calculateMassMatrix(self._body, self._dofs(q)))
        return full[np.ix_(self._dof_of_joint, self._dof_of_joint)]

    def inverse_dynamics(self, q: np.ndarray, qd: np.ndarray, qdd: np.ndarray) -> np.ndarray:
        """(J,) torque M(q) qdd + c(q, qd) + G(q) for accelerations qdd (J,); excludes damping."""
        q, qd, qdd = (self._joint_vector(v, name) for v, name in ((q, "q"), (qd, "qd"), (qdd, "qdd")))
        torque = self._live_client().calculateInverseDynamics(
            self._body, self._dofs(q), self._dofs(qd), self._dofs(qdd))
        return np.array(torque, dtype=float)[self._dof_of_joint]

    def gravity_torque(self, q: np.ndarray) -> np.ndarray:
        """(J,) torque G(q) that holds the arm still against gravity at q (J,)."""
        zeros = np.zeros(self.n_joints)
        return self.inverse_dynamics(q, zeros, zeros)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect the physics client; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()

    def __enter__(self) -> "Arm":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _live_client(self) -> BulletClient:
        if self._client is None:
            raise RuntimeError("this Arm is closed")
        return self._client

    def _joint_vector(self, value, what: str) -> np.ndarray:
        try:
            vector = np.array(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be {self.n_joints} numbers (one per joint "
                             f"{list(self.joint_names)}); got {value!r}") from None
        if vector.shape != (self.n_joints,):
            raise ValueError(f"{what} must have shape ({self.n_joints},), one value per joint "
                             f"{list(self.joint_names)}; got shape {vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"{what} must be finite; got {vector.tolist()}")
        return vector

    def _dofs(self, joint_values: np.ndarray) -> list:
        """Reorder a (J,) vector from joint_names order into PyBullet's DoF order."""
        dof_values = np.empty(self._n_dofs)
        dof_values[self._dof_of_joint] = joint_values
        return dof_values.tolist()

    def _set_joint_state(self, q: np.ndarray, qd: np.ndarray) -> None:
        client = self._live_client()
        for index, angle, speed in zip(self._joint_indices, q, qd):
            client.resetJointState(self._body, index, float(angle), float(speed))

    def _ee_pose_now(self) -> Tuple[np.ndarray, np.ndarray]:
        """The end-effector point (3,) and link-frame quaternion (x, y, z, w) (4,), in the world."""
        com_position, com_orientation = self._live_client().getLinkState(
            self._body, self._ee_link_index, computeForwardKinematics=True)[:2]
        com_orientation = np.array(com_orientation)
        point = np.array(com_position) + _rotation(com_orientation) @ self._ee_offset_from_com
        link_orientation = _quaternion_product(com_orientation,
                                               _quaternion_conjugate(self._ee_inertial_orientation))
        return point, link_orientation

    def _jacobians(self, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        zeros = [0.0] * self._n_dofs
        linear, angular = self._live_client().calculateJacobian(
            self._body, self._ee_link_index, self._ee_offset.tolist(),
            self._dofs(q), zeros, zeros)
        return (np.array(linear)[:, self._dof_of_joint], np.array(angular)[:, self._dof_of_joint])


def _rotation(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix of a unit quaternion (x, y, z, w), in double precision."""
    x, y, z, w = quaternion_xyzw
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a b of quaternions (x, y, z, w): rotation b, then a."""
    (ax, ay, az, aw), (bx, by, bz, bw) = a, b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def _quaternion_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])
