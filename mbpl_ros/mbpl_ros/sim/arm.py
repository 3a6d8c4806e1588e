"""
A PyBullet arm under effort (torque) control.

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
import tempfile
from numbers import Integral
from typing import Optional, Sequence, Tuple, Union

from xml.etree import ElementTree

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from mbpl_ros.robots import RobotSpec, check_urdf_file, robot_spec
from mbpl_ros.sim.model_error import ModelError, apply_to_urdf
from mbpl_ros.sim.scene import Fixture, MarkerBody, SceneBodies, TargetMarker

#: Largest force (N) or torque (N·m) of the motor holding a locked joint: far above any
#: arm's effort, so the lock is rigid in practice (drift below 1e-6 rad).
LOCKED_JOINT_FORCE = 1.0e5

#: Contact solver settings (setPhysicsEngineParameter) of an Arm with fixtures: more solver
#: iterations than the default and a split impulse (penetration is corrected without adding
#: momentum), so that a tool pressed into a fixture stays out of it and does not bounce.
CONTACT_SETTINGS = {"numSolverIterations": 150, "useSplitImpulse": 1,
                    "splitImpulsePenetrationThreshold": -0.001, "contactERP": 0.2,
                    "enableConeFriction": 1}


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


def _urdf_to_load(path: str, directory: str, spec: RobotSpec,
                  model_error: Optional[ModelError]) -> str:
    """
    Return `path`, or a copy in `directory` that PyBullet loads as this simulated arm.

    The copy is made when its mesh files are named pybullet_data://<path> (PyBullet's
    bundled meshes, which PyBullet cannot resolve itself: every mesh path becomes
    absolute) or when `model_error` changes the masses or adds a payload
    (sim.model_error.apply_to_urdf).
    """
    with open(path) as file:
        text = file.read()
    edit_model = model_error is not None and model_error.changes_urdf
    if "pybullet_data://" not in text and not edit_model:
        return path
    import pybullet_data

    tree = ElementTree.ElementTree(ElementTree.fromstring(text))
    base = os.path.dirname(os.path.abspath(path))
    for mesh in tree.getroot().iter("mesh"):
        name = mesh.get("filename", "")
        if name.startswith("pybullet_data://"):
            relative = name[len("pybullet_data://"):]
            mesh.set("filename", os.path.join(pybullet_data.getDataPath(), relative))
        elif "://" not in name and not os.path.isabs(name):
            mesh.set("filename", os.path.join(base, name))
    if edit_model:
        apply_to_urdf(tree.getroot(), model_error, spec.ee_link, spec.ee_offset)
    copy = os.path.join(directory, os.path.basename(path))
    tree.write(copy)
    return copy


class Arm:
    """
    One robot arm with a fixed base, driven by joint torques.

    The controlled joints are RobotSpec.joint_names; every other movable joint of the URDF
    is locked at its RobotSpec.locked_joints angle by a stiff position motor (its links
    still count in the dynamics), e.g. a gripper's fingers.

    Limits come from the URDF (or the spec's overrides) and are enforced: efforts are clamped
    to the effort limits, PyBullet's joint-limit constraints keep positions within the
    position limits, and joint speeds are capped at the velocity limits. The default
    velocity motors are disabled, so a zero effort lets the arm move freely under gravity
    and joint damping.

    fixtures: static bodies of boxes (sim.scene.Fixture) in the same world, with the contact
    settings CONTACT_SETTINGS; reset(q, target=...) places those placed relative to a target.
    target_marker: a sim.scene.TargetMarker drawing the target (for a camera); reset(q,
    target=...) moves it there.

    model_error (sim.model_error.ModelError): this arm differs from its robot description
    (scaled masses, a payload, added joint damping and Coulomb friction); mass_matrix,
    inverse_dynamics and gravity_torque are then the simulated arm's, not the description's
    (mbpl_ros.robot_model.RobotModel keeps those).
    """

    def __init__(self, robot: Union[str, RobotSpec], physics_dt: float = 1.0 / 240.0,
                 substeps: int = 12, gui: bool = False, fixtures: Sequence[Fixture] = (),
                 target_marker: Optional[TargetMarker] = None,
                 model_error: Optional[ModelError] = None):
        self.spec = robot if isinstance(robot, RobotSpec) else robot_spec(robot)
        if not (isinstance(physics_dt, (int,
                                        float)) and math.isfinite(physics_dt) and physics_dt > 0):
            raise ValueError("physics_dt must be a positive finite number of seconds; got "
                             f"{physics_dt!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, Integral) or substeps < 1:
            raise ValueError(f"substeps must be an integer >= 1; got {substeps!r}")
        self.physics_dt = float(physics_dt)
        self.substeps = int(substeps)
        self.control_dt = self.physics_dt * self.substeps
        self.joint_names = self.spec.joint_names
        self.n_joints = len(self.joint_names)
        self.fixtures = tuple(fixtures)
        self.scene: Optional[SceneBodies] = None
        self.target_marker = target_marker
        self.marker: Optional[MarkerBody] = None
        if model_error is not None and not isinstance(model_error, ModelError):
            raise ValueError("model_error must be a sim.model_error.ModelError or None; got "
                             f"{type(model_error).__name__}")
        self.model_error = model_error if model_error is not None else ModelError()

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
        client, spec = self._client, self.spec
        client.setTimeStep(self.physics_dt)
        client.setGravity(*spec.gravity_vector)
        where = f"robot {spec.name!r} (URDF {spec.urdf_path})"
        check_urdf_file(spec.urdf_path, where)
        try:
            with _stdout_silenced(), tempfile.TemporaryDirectory() as directory:
                self._body = client.loadURDF(
                    _urdf_to_load(spec.urdf_path, directory, spec, self.model_error),
                    basePosition=spec.base_position, useFixedBase=True,
                    # Keep the URDF's masses and inertias instead of ones derived from shapes.
                    flags=pybullet.URDF_USE_INERTIA_FROM_FILE)
        except pybullet.error as error:
            raise ValueError(f"cannot load URDF {spec.urdf_path!r} of robot "
                             f"{spec.name!r}: {error}") from None

        joint_index, joint_type, link_index, parent_of, movable = {}, {}, {}, {}, []
        for index in range(client.getNumJoints(self._body)):
            info = client.getJointInfo(self._body, index)
            name, link = info[1].decode(), info[12].decode()
            joint_index[name], joint_type[name], link_index[link] = index, info[2], index
            parent_of[index] = info[16]
            if info[2] != pybullet.JOINT_FIXED:
                movable.append(name)
        controlled, locked = list(self.joint_names), list(spec.locked_joints)
        unknown = [name for name in controlled + locked if name not in joint_index]
        if unknown:
            raise ValueError(f"{where}: joints {unknown} are not in the URDF; its movable joints: "
                             f"{movable}")
        not_movable = [name for name in controlled + locked if name not in movable]
        if not_movable:
            raise ValueError(f"{where}: joints {not_movable} are fixed in the URDF; its movable "
                             f"joints: {movable}")
        not_one_dof = [name for name in controlled + locked
                       if joint_type[name] not in (pybullet.JOINT_REVOLUTE,
                                                   pybullet.JOINT_PRISMATIC)]
        if not_one_dof:
            raise ValueError(f"{where}: joints {not_one_dof} are not revolute or prismatic; only "
                             "one-degree-of-freedom joints are supported")
        if set(movable) != set(controlled) | set(locked):
            missing = [name for name in movable if name not in controlled and name not in locked]
            raise ValueError(f"{where}: joints {controlled} (controlled) and locked_joints "
                             f"{locked} "
                             f"must be exactly the movable joints of the URDF {movable}; "
                             f"lock or control {missing}")
        if spec.ee_link not in link_index:
            raise ValueError(f"robot {spec.name!r}: ee_link {spec.ee_link!r} is not a link of the "
                             "URDF "
                             f"{spec.urdf_path}; links: {sorted(link_index)}")
        self._joint_indices = [joint_index[name] for name in self.joint_names]
        self._ee_link_index = link_index[spec.ee_link]
        # A serial arm: every controlled joint moves the end-effector link.
        chain, index = set(), self._ee_link_index
        while index >= 0:
            chain.add(index)
            index = parent_of[index]
        off_chain = [name for name, index in zip(self.joint_names,
                                                 self._joint_indices) if index not in chain]
        if off_chain:
            raise ValueError(f"{where}: controlled joints {off_chain} do not move the "
                             "end-effector link "
                             f"{spec.ee_link!r}; control the joints between the base and it, lock "
                             "the others")

        # PyBullet orders degrees of freedom by joint index; ours follow joint_names.
        dof_of_index = {index: dof for dof,
                        index in enumerate(sorted(joint_index[n] for n in movable))}
        self._n_dofs = len(movable)
        self._dof_of_joint = np.array([dof_of_index[i] for i in self._joint_indices], dtype=int)
        self._locked_indices = [joint_index[name] for name in locked]
        self._locked_dofs = np.array([dof_of_index[i] for i in self._locked_indices], dtype=int)
        self._locked_positions = np.array([spec.locked_joints[name] for name in locked],
                                          dtype=float)

        infos = [client.getJointInfo(self._body, i) for i in self._joint_indices]
        names = self.joint_names
        self.position_limits = np.array(
            [spec.position_limit_overrides.get(name, (info[8], info[9]))
             for name, info in zip(names, infos)], dtype=float)
        self.effort_limits = np.array([spec.effort_limit_overrides.get(name, info[10])
                                       for name, info in zip(names, infos)], dtype=float)
        self.velocity_limits = np.array([spec.velocity_limit_overrides.get(name, info[11])
                                         for name, info in zip(names, infos)], dtype=float)
        self.joint_damping = np.array([spec.damping_overrides.get(name, info[6])
                                       for name, info in zip(self.joint_names, infos)])
        self.joint_damping = self.joint_damping + self.model_error.joint_damping
        #: Coulomb friction (N·m) of each controlled joint: model_error's, none in a URDF.
        self.joint_friction = np.full(self.n_joints, self.model_error.joint_friction)
        for what, key, bad in (
                ("effort", "effort", ~(self.effort_limits > 0)),
                ("velocity", "velocity", ~(self.velocity_limits > 0)),
                ("position", "position",
                 ~(self.position_limits[:, 0] < self.position_limits[:, 1]))):
            if bad.any():
                raise ValueError(f"{where}: the URDF must give a positive {what} limit for joints "
                                 f"{self._names(bad)}, or the robot description "
                                 f"one in limits.{key}")
        for name, index, angle in zip(locked, self._locked_indices, self._locked_positions):
            lower, upper = client.getJointInfo(self._body, index)[8:10]
            if lower < upper and not lower <= angle <= upper:
                raise ValueError(f"{where}: locked joint {name!r} at {angle} is outside its URDF "
                                 "limits "
                                 f"[{lower}, {upper}]")

        for index, damping, (lower, upper), speed in zip(
                self._joint_indices, self.joint_damping, self.position_limits,
                self.velocity_limits):
            # One property per call: PyBullet 3.2 drops jointDamping when it shares a call
            # with maxJointVelocity.
            client.changeDynamics(self._body, index, jointDamping=float(damping))
            # PyBullet keeps ONE speed cap per body (the last set): the fastest joint's here;
            # slower joints are capped after each physics step (step()).
            client.changeDynamics(self._body, index,
                                  maxJointVelocity=float(self.velocity_limits.max()))
            client.changeDynamics(self._body, index, jointLowerLimit=float(lower),
                                  jointUpperLimit=float(upper))
        for link in range(-1, client.getNumJoints(self._body)):
            # No hidden per-link velocity damping: joint damping is the only dissipation.
            client.changeDynamics(self._body, link, linearDamping=0.0, angularDamping=0.0)
        # The default velocity motors would brake every joint: disabled, or, with a Coulomb
        # friction, kept at that force (a motor towards zero speed that gives way above it).
        client.setJointMotorControlArray(
            self._body, self._joint_indices, pybullet.VELOCITY_CONTROL,
            targetVelocities=[0.0] * self.n_joints, forces=self.joint_friction.tolist())
        # Locked joints: a position motor, which PyBullet solves as a constraint each physics
        # step, holds them at their angle. Their links keep their mass and inertia (the arm
        # carries them), and the joints stay movable, so PyBullet's dynamics and Jacobians
        # keep the URDF's degrees of freedom; ours pick the controlled ones.
        for index, angle in zip(self._locked_indices, self._locked_positions):
            client.setJointMotorControl2(self._body, index, pybullet.POSITION_CONTROL,
                                         targetPosition=float(angle), targetVelocity=0.0,
                                         positionGain=1.0, velocityGain=1.0,
                                         force=LOCKED_JOINT_FORCE)

        # PyBullet reports a link's URDF frame only in single precision but its centre-of-mass
        # frame in double precision: positions are computed from the latter.
        self._ee_offset = np.array(self.spec.ee_offset)  # calculateJacobian takes this one
        inertial_position, inertial_orientation = client.getDynamicsInfo(
            self._body, self._ee_link_index)[3:5]
        self._ee_inertial_orientation = np.array(inertial_orientation, dtype=float)
        self._ee_offset_from_com = _rotation(self._ee_inertial_orientation).T @ (
            np.array(self.spec.ee_offset) - np.array(inertial_position))
        self._point_offsets = self.spec.point_offsets                        # (P, 3), link frame
        self._point_offsets_from_com = (self._point_offsets - np.array(inertial_position)) @ \
            _rotation(self._ee_inertial_orientation)                         # (P, 3), COM frame
        if self.fixtures:
            client.setPhysicsEngineParameter(**CONTACT_SETTINGS)
            self.scene = SceneBodies(client, self.fixtures)
        if self.target_marker is not None:
            self.marker = MarkerBody(client, self.target_marker)

    # ------------------------------------------------------------------ control
    def reset(self, q: Union[np.ndarray, str], qd: Optional[np.ndarray] = None,
              target: Optional[np.ndarray] = None) -> None:
        """
        Put the arm at joint angles q (J,) or a named initial condition, with speeds qd (J,).

        qd defaults to zero; the applied effort is reset to zero. With a condition's target
        (3,), the fixtures placed relative to the target are moved there first.
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
                             f"{self._names(outside)}")
        too_fast = np.abs(qd) > self.velocity_limits
        if too_fast.any():
            raise ValueError(f"|qd| {np.abs(qd).tolist()} exceeds the velocity limits "
                             f"{self.velocity_limits.tolist()} at joints "
                             f"{self._names(too_fast)}")
        if self.scene is not None:
            self.scene.place(None if target is None else np.asarray(target, dtype=float))
        if self.marker is not None:
            self.marker.place(target)
        self._set_joint_state(q, qd)
        self._applied_effort = np.zeros(self.n_joints)

    def step(self, effort: np.ndarray) -> np.ndarray:
        """
        Apply effort (J,) (N·m) for one control step of `substeps` physics steps.

        Returns the effort actually applied: the command clamped to the effort limits.
        """
        effort = self._joint_vector(effort, "effort")
        applied = np.clip(effort, -self.effort_limits, self.effort_limits)
        forces = applied.tolist()
        client = self._live_client()
        capped = self.velocity_limits < self.velocity_limits.max()
        for _ in range(self.substeps):
            # Torque commands last one physics step, so they are set before each.
            client.setJointMotorControlArray(self._body, self._joint_indices,
                                             pybullet.TORQUE_CONTROL, forces=forces)
            client.stepSimulation()
            if capped.any():
                self._cap_speeds(client, capped)
        self._applied_effort = applied
        return applied.copy()

    def joint_state(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Q (J,), qd (J,) and the effort (J,) applied during the last step (zero after reset)."""
        states = self._live_client().getJointStates(self._body, self._joint_indices)
        q = np.array([s[0] for s in states], dtype=float)
        qd = np.array([s[1] for s in states], dtype=float)
        return q, qd, self._applied_effort.copy()

    # ------------------------------------------------------------------ kinematics
    def ee_position(self) -> np.ndarray:
        """(3,) world position of the end-effector point now."""
        return self._ee_pose_now()[0]

    def ee_points(self) -> np.ndarray:
        """(P, 3) world positions of every end-effector point now (spec.point_offsets)."""
        com_position, com_orientation = self._live_client().getLinkState(
            self._body, self._ee_link_index, computeForwardKinematics=True)[:2]
        rotation = _rotation(np.array(com_orientation))
        return np.array(com_position) + self._point_offsets_from_com @ rotation.T

    def points_kinematics(self, q: np.ndarray, qd: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        Return the world positions (P, 3) and velocities (P, 3) of every end-effector point.

        At joint angles q (J,) and speeds qd (J,); the simulation state is restored
        afterwards.
        """
        q, qd = self._joint_vector(q, "q"), self._joint_vector(qd, "qd")
        client = self._live_client()
        movable = self._joint_indices + self._locked_indices
        saved = client.getJointStates(self._body, movable)
        try:
            self._set_joint_state(q, np.zeros(self.n_joints))
            points = self.ee_points()
        finally:
            for index, (angle, speed, *_) in zip(movable, saved):
                client.resetJointState(self._body, index, angle, speed)
        zeros = [0.0] * self._n_dofs
        dofs = self._dofs(q, self._locked_positions)
        velocities = np.stack([
            np.array(client.calculateJacobian(self._body, self._ee_link_index, offset.tolist(),
                                              dofs, zeros, zeros)[0])[:, self._dof_of_joint] @ qd
            for offset in self._point_offsets])
        return points, velocities

    def fixture_penetration(self) -> float:
        """
        Return the deepest penetration (m, >= 0) of the arm into any fixture now.

        It is minus the most negative contact distance PyBullet reports between them (0
        without contact).
        """
        if self.scene is None:
            return 0.0
        client = self._live_client()
        depth = 0.0
        for body in self.scene.bodies:
            for contact in client.getContactPoints(bodyA=self._body, bodyB=body):
                depth = max(depth, -float(contact[8]))
        return depth

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
        """
        (3,) world position of the end-effector point at joint angles q (J,).

        The simulation state is restored exactly afterwards.
        """
        q = self._joint_vector(q, "q")
        client = self._live_client()
        movable = self._joint_indices + self._locked_indices
        saved = client.getJointStates(self._body, movable)
        try:
            self._set_joint_state(q, np.zeros(self.n_joints))
            return self._ee_pose_now()[0]
        finally:
            for index, (angle, speed, *_) in zip(movable, saved):
                client.resetJointState(self._body, index, angle, speed)

    def jacobian(self, q: np.ndarray, qd: Optional[np.ndarray] = None) -> np.ndarray:
        """
        (3, J) linear Jacobian d p_ee / d q of the end-effector point at q (J,).

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
        dofs = self._dofs(q, self._locked_positions)
        full = np.array(self._live_client().calculateMassMatrix(self._body, dofs))
        return full[np.ix_(self._dof_of_joint, self._dof_of_joint)]

    def inverse_dynamics(self, q: np.ndarray, qd: np.ndarray, qdd: np.ndarray) -> np.ndarray:
        """(J,) torque M(q) qdd + c(q, qd) + G(q) for accelerations qdd (J,); excludes damping."""
        q, qd, qdd = (self._joint_vector(v, name)
                      for v, name in ((q, "q"), (qd, "qd"), (qdd, "qdd")))
        torque = self._live_client().calculateInverseDynamics(
            self._body, self._dofs(q, self._locked_positions), self._dofs(qd), self._dofs(qdd))
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

    @property
    def client(self) -> BulletClient:
        """Return the arm's PyBullet client, for viewing (sim.view); never step it directly."""
        return self._live_client()

    @property
    def body(self) -> int:
        """Return the PyBullet body id of the arm in `client`."""
        return self._body

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

    def _names(self, mask: np.ndarray) -> list:
        """Return the names of the joints flagged in `mask` (J,)."""
        return [name for name, flagged in zip(self.joint_names, mask) if flagged]

    def _cap_speeds(self, client: BulletClient, capped: np.ndarray) -> None:
        """Clip the speeds of the joints flagged in `capped` (J,) to their velocity limits."""
        indices = [index for index, cap in zip(self._joint_indices, capped) if cap]
        limits = self.velocity_limits[capped]
        for index, limit, (angle, speed, *_) in zip(indices, limits,
                                                    client.getJointStates(self._body, indices)):
            if abs(speed) > limit:
                client.resetJointState(self._body, index, angle, math.copysign(limit, speed))

    def _dofs(self, joint_values: np.ndarray, locked_values: Optional[np.ndarray] = None) -> list:
        """
        Return a (J,) vector in joint_names order as PyBullet's vector over the movable joints.

        That vector is in DoF order, the locked joints' entries `locked_values` (default
        zero).
        """
        dof_values = np.zeros(self._n_dofs)
        dof_values[self._dof_of_joint] = joint_values
        if locked_values is not None:
            dof_values[self._locked_dofs] = locked_values
        return dof_values.tolist()

    def _set_joint_state(self, q: np.ndarray, qd: np.ndarray) -> None:
        client = self._live_client()
        for index, angle, speed in zip(self._joint_indices, q, qd):
            client.resetJointState(self._body, index, float(angle), float(speed))
        for index, angle in zip(self._locked_indices, self._locked_positions):
            client.resetJointState(self._body, index, float(angle), 0.0)

    def _ee_pose_now(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return the end-effector point (3,) and link-frame quaternion (x, y, z, w) (4,)."""
        com_position, com_orientation = self._live_client().getLinkState(
            self._body, self._ee_link_index, computeForwardKinematics=True)[:2]
        com_orientation = np.array(com_orientation)
        point = np.array(com_position) + _rotation(com_orientation) @ self._ee_offset_from_com
        link_orientation = _quaternion_product(
            com_orientation, _quaternion_conjugate(self._ee_inertial_orientation))
        return point, link_orientation

    def _jacobians(self, q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        zeros = [0.0] * self._n_dofs
        linear, angular = self._live_client().calculateJacobian(
            self._body, self._ee_link_index, self._ee_offset.tolist(),
            self._dofs(q, self._locked_positions), zeros, zeros)
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
