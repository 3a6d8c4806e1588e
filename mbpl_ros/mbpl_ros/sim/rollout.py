"""
Run a controller on a simulated arm and record the rollout in the core's state layout.

The state x = [q, qd, p_ee − target, v_ee] is built from the joint angles and speeds
alone, with the robot model's forward kinematics and Jacobian
(`robot_model.JointStateToState`), so the offline trainer and the ROS sample_collector —
which sees only /joint_states — compute bit-identical states from the same q, qd.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.robots import RobotSpec
from mbpl_ros.sim.arm import Arm

#: A feedback law: act(t, x (dX,)) -> u (dU,).
Act = Callable[[int, np.ndarray], np.ndarray]
#: A feedback law that sees the camera: act(t, x (dX,), image (H, W, 3) uint8) -> u (dU,).
ImageAct = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


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
    """
    Return the state x (dX,) of the arm now, its end-effector point relative to `target`.

    Computed from the arm's joint angles and speeds by JointStateToState, exactly as the
    ROS sample_collector computes it from /joint_states.
    """
    q, qd, _ = arm.joint_state()
    return _kinematics_for(arm.spec, layout)(q, qd, target)


def run_rollout(arm: Arm, layout: StateLayout, act: Act, initial_positions: np.ndarray,
                target: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Run `act` for T steps from `initial_positions` (J,) at rest.

    The arm's fixtures are placed for `target` (3,) first.

    Returns X (T, dX) and U (T, dU), U being the effort actually applied (after the
    arm's clamping), since that is what the fitted dynamics must explain.
    """
    arm.reset(np.asarray(initial_positions, float), target=target)
    X = np.empty((T, layout.dX))
    U = np.empty((T, layout.dU))
    for t in range(T):
        X[t] = observe(arm, layout, target)
        U[t] = arm.step(act(t, X[t]))
    return X, U


def run_image_rollout(arm: Arm, layout: StateLayout, act: ImageAct, initial_positions: np.ndarray,
                      target: np.ndarray, T: int,
                      camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Run `act` for T steps as run_rollout does, with a camera image at every step.

    Image t is rendered by `camera` (sim.camera.Camera in the arm's world) right after the
    state of step t is read, before its action: what the policy sees at step t. Returns X
    (T, dX), U (T, dU) and images (T, H, W, 3) uint8.
    """
    arm.reset(np.asarray(initial_positions, float), target=target)
    X = np.empty((T, layout.dX))
    U = np.empty((T, layout.dU))
    images = np.empty((T, camera.height, camera.width, 3), dtype=np.uint8)
    for t in range(T):
        X[t] = observe(arm, layout, target)
        images[t] = camera.render()
        U[t] = arm.step(act(t, X[t], images[t]))
    return X, U, images
