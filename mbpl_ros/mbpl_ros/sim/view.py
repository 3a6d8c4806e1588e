"""
Looking at a simulated arm: a camera framed on it, target markers, off-screen frames.

One camera serves both ways of seeing a run: `render` draws a frame off-screen with
PyBullet's TinyRenderer (CPU only, no display), and `show_in_gui` points the PyBullet
window at the same place (`mbpl train/sim/replay --gui`). Markers are visual-only bodies
(no collision shape, no mass), so adding them changes no dynamics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pybullet

from mbpl_ros.sim.arm import Arm

#: RGBA of a target marker and of the end-effector marker.
TARGET_COLOUR = (0.9, 0.15, 0.1, 0.8)
EE_COLOUR = (0.1, 0.4, 0.95, 1.0)
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Camera:
    """
    A camera looking at `target` as PyBullet's debug visualiser does.

    A camera looking at `target` (3,) from `distance` m, turned by yaw and pitch (deg) as
    PyBullet's debug visualiser is (eye = target + distance · (sin yaw cos pitch,
    −cos yaw cos pitch, −sin pitch)); `fov` is the vertical field of view (deg).
    """

    target: tuple
    distance: float
    yaw: float
    pitch: float
    fov: float = 45.0

    @property
    def eye(self) -> np.ndarray:
        """(3,) world position of the camera."""
        yaw, pitch = math.radians(self.yaw), math.radians(self.pitch)
        direction = np.array(
            [math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch), -math.sin(pitch)]
        )
        return np.asarray(self.target, float) + self.distance * direction


def _link_points(arm: Arm, poses: np.ndarray) -> np.ndarray:
    """
    World positions of the arm's base, link origins and end-effector point at each pose.

    World positions (P, 3) of the base and every link origin of the arm at each of the
    joint poses (K, J), plus its end-effector point; the arm's state is restored.
    """
    client, body = arm.client, arm.body
    q_now, qd_now, _ = arm.joint_state()
    points = [np.asarray(arm.spec.base_position, float)]
    try:
        for q in poses:
            arm.reset(q)
            points += [
                np.array(client.getLinkState(body, link, computeForwardKinematics=True)[4])
                for link in range(client.getNumJoints(body))
            ]
            points.append(arm.ee_position())
    finally:
        arm.reset(q_now, np.clip(qd_now, -arm.velocity_limits, arm.velocity_limits))
    return np.array(points)


def frame_arm(
    arm: Arm,
    poses: Sequence[Sequence[float]],
    targets: Sequence[Sequence[float]],
    fov: float = 45.0,
) -> Camera:
    """
    Frame a camera that shows the arm at each joint pose (K, J) and every target (M, 3).

    A planar arm (its end effector moves in one plane) is seen square-on to that plane; any
    other arm from the side of its reach, 30° above the horizontal.
    """
    poses = np.atleast_2d(np.asarray(poses, float))
    targets = np.asarray(targets, float).reshape(-1, 3)
    points = np.vstack([_link_points(arm, poses), targets])
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2.0
    radius = max(float(np.linalg.norm(points - centre, axis=1).max()), 0.05) + 0.05
    # The plane of motion, from the end effector over random joint angles.
    rng = np.random.default_rng(0)
    limits = np.clip(arm.position_limits, -math.pi, math.pi)
    samples = np.array(
        [arm.forward_kinematics(rng.uniform(limits[:, 0], limits[:, 1])) for _ in range(24)]
    )
    _, singular, axes = np.linalg.svd(samples - samples.mean(axis=0))
    if singular[-1] < 1e-3 * singular[0]:
        eye_direction = axes[-1] * (1.0 if axes[-1][2] >= 0 else -1.0)
    else:
        reach = centre - np.asarray(arm.spec.base_position, float)
        heading = math.atan2(reach[1], reach[0]) if np.hypot(reach[0], reach[1]) > 1e-6 else 0.0
        side = heading - math.radians(70.0)  # mostly side-on, a little from the front
        eye_direction = np.array(
            [
                math.cos(side) * math.cos(math.radians(30.0)),
                math.sin(side) * math.cos(math.radians(30.0)),
                math.sin(math.radians(30.0)),
            ]
        )
    eye_direction = eye_direction / np.linalg.norm(eye_direction)
    pitch = -math.degrees(math.asin(np.clip(eye_direction[2], -1.0, 1.0)))
    pitch = float(np.clip(pitch, -89.5, 89.5))  # straight down, PyBullet's yaw is undefined
    # From straight above, yaw 0 keeps the world's x axis pointing right in the frame.
    horizontal = math.hypot(eye_direction[0], eye_direction[1])
    yaw = (
        math.degrees(math.atan2(eye_direction[0], -eye_direction[1])) if horizontal > 1e-3 else 0.0
    )
    distance = 1.1 * radius / math.tan(math.radians(fov) / 2.0)
    return Camera(tuple(float(c) for c in centre), float(distance), float(yaw), pitch, float(fov))


class Markers:
    """Visual-only spheres in the arm's world: one per target, and one on the end effector."""

    def __init__(self, arm: Arm, targets: Sequence[Sequence[float]], radius: float = 0.02):
        self.arm = arm
        client = arm.client
        target_shape = client.createVisualShape(
            pybullet.GEOM_SPHERE, radius=radius, rgbaColor=TARGET_COLOUR
        )
        self._ee_shape = client.createVisualShape(
            pybullet.GEOM_SPHERE, radius=radius * 0.6, rgbaColor=EE_COLOUR
        )
        self.targets = [
            client.createMultiBody(
                baseMass=0.0,
                baseVisualShapeIndex=target_shape,
                basePosition=[float(c) for c in target],
            )
            for target in np.asarray(targets, float).reshape(-1, 3)
        ]
        self.ee = client.createMultiBody(
            baseMass=0.0,
            baseVisualShapeIndex=self._ee_shape,
            basePosition=arm.ee_position().tolist(),
        )

    def move_target(self, index: int, position: Sequence[float]) -> None:
        """Put target marker `index` at `position` (3,)."""
        self.arm.client.resetBasePositionAndOrientation(
            self.targets[index], [float(c) for c in position], [0.0, 0.0, 0.0, 1.0]
        )

    def follow(self) -> None:
        """Put the end-effector marker on the end-effector point."""
        self.arm.client.resetBasePositionAndOrientation(
            self.ee, self.arm.ee_position().tolist(), [0.0, 0.0, 0.0, 1.0]
        )


def render(arm: Arm, camera: Camera, width: int = 320, height: int = 240) -> np.ndarray:
    """
    Render an RGB frame (height, width, 3) uint8 of the arm's world seen by `camera`.

    It is drawn by PyBullet's TinyRenderer (software, no display or GPU needed).
    """
    client = arm.client
    view = client.computeViewMatrixFromYawPitchRoll(
        list(camera.target), camera.distance, camera.yaw, camera.pitch, 0.0, 2
    )
    projection = client.computeProjectionMatrixFOV(camera.fov, width / height, 0.01, 100.0)
    _, _, rgba, _, _ = client.getCameraImage(
        width,
        height,
        view,
        projection,
        renderer=pybullet.ER_TINY_RENDERER,
        lightDirection=[0.4, -0.6, 1.0],
        shadow=0,
    )
    return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()


def show_in_gui(arm: Arm, camera: Camera) -> None:
    """Point the PyBullet window (an Arm made with gui=True) at `camera`, side panels off."""
    client = arm.client
    client.configureDebugVisualizer(pybullet.COV_ENABLE_GUI, 0)
    client.resetDebugVisualizerCamera(
        camera.distance, camera.yaw, camera.pitch, list(camera.target)
    )


def prepare(
    arm: Arm, poses, targets, marker_targets=None, gui: bool = False
) -> tuple[Camera, Markers]:
    """
    Frame the camera on the arm at `poses` (K, J) and `targets` (M, 3), with markers.

    The markers are on `marker_targets` (default: `targets`), and with `gui` the window is
    pointed there: what every view of a run (off-screen or in the window) starts with.
    """
    camera = frame_arm(arm, poses, targets)
    markers = Markers(arm, targets if marker_targets is None else marker_targets)
    if gui:
        show_in_gui(arm, camera)
    return camera, markers
