"""Rollouts, the layout of the state vector and what an image policy observes of it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StateLayout:
    """
    Where each physical quantity lives in the state vector x (dX,).

    x = [q (J), qd (J), p_ee - p_target (3P), v_ee (3P)]
    for J controlled joints and P end-effector points.
    """

    n_joints: int
    n_points: int = 1

    @property
    def dX(self) -> int:
        return 2 * self.n_joints + 6 * self.n_points

    @property
    def dU(self) -> int:
        return self.n_joints

    @property
    def position(self) -> np.ndarray:
        return np.arange(0, self.n_joints)

    @property
    def velocity(self) -> np.ndarray:
        return np.arange(self.n_joints, 2 * self.n_joints)

    @property
    def ee_offset(self) -> np.ndarray:
        """Return the indices of the end-effector points minus their targets (3P,)."""
        start = 2 * self.n_joints
        return np.arange(start, start + 3 * self.n_points)

    @property
    def first_point_offset(self) -> np.ndarray:
        """Return the indices (3,) of the first end-effector point minus its target."""
        return self.ee_offset[:3]

    @property
    def ee_velocity(self) -> np.ndarray:
        start = 2 * self.n_joints + 3 * self.n_points
        return np.arange(start, start + 3 * self.n_points)

    def build(self, q, qd, ee_points, ee_velocities, targets) -> np.ndarray:
        """Assemble x from q (J,), qd (J,), ee_points/ee_velocities/targets (P, 3)."""
        offset = np.asarray(ee_points, float) - np.asarray(targets, float)
        return np.concatenate([
            np.asarray(q, float), np.asarray(qd, float),
            offset.ravel(), np.asarray(ee_velocities, float).ravel(),
        ])


def observation_indices(layout: StateLayout) -> np.ndarray:
    """
    Return the indices (dO,) of x that an image policy observes: q then qd (dO = 2J).

    The robot's own state only, never the target: the policy finds the target in its images.
    """
    return np.concatenate([layout.position, layout.velocity])


def policy_observation(X: np.ndarray, layout: StateLayout) -> np.ndarray:
    """Return the image policy's observation (..., dO) of states X (..., dX): [q, qd]."""
    X = np.asarray(X, dtype=float)
    if X.shape[-1:] != (layout.dX,):
        raise ValueError(f"states must have last dimension dX={layout.dX}, got {X.shape}")
    return X[..., observation_indices(layout)]


def check_images(images, N: int, T: int) -> np.ndarray | None:
    """Return images (N, T, H, W, 3) as uint8 (None stays None); ValueError naming the shape."""
    if images is None:
        return None
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[:2] != (N, T) \
            or images.shape[4] != 3:
        raise ValueError(f"images must be uint8 (N={N}, T={T}, H, W, 3), got {images.dtype} "
                         f"{images.shape}")
    return images


def final_distance(X: np.ndarray, layout: StateLayout) -> float:
    """
    Return the end-effector distance to the target at the last step of X (T, dX), in m.

    The distance is the end-effector point's (the first of the layout's points; e.g. a
    peg's tip).
    """
    return float(np.linalg.norm(X[-1, layout.first_point_offset]))


def rollout_arrays(X, U) -> tuple[np.ndarray, np.ndarray]:
    """X (N, T, dX) and U (N, T, dU) as float arrays; ValueError naming the shapes otherwise."""
    X = np.asarray(X, dtype=float)
    U = np.asarray(U, dtype=float)
    if X.ndim != 3 or U.ndim != 3:
        raise ValueError(f"X must be (N, T, dX) and U (N, T, dU); got {X.shape} and {U.shape}")
    if X.shape[:2] != U.shape[:2]:
        raise ValueError(f"X {X.shape} and U {U.shape} disagree on (N, T)")
    return X, U


@dataclass
class Rollouts:
    """
    N rollouts of T steps: X (N, T, dX), U (N, T, dU), condition (N,) ints.

    images: (N, T, H, W, 3) uint8 camera images, image t seen right after the state of
    step t (what an image policy acts on at step t); None without a camera.
    """

    X: np.ndarray
    U: np.ndarray
    condition: np.ndarray
    images: np.ndarray | None = None

    def __post_init__(self):
        self.X, self.U = rollout_arrays(self.X, self.U)
        self.images = check_images(self.images, *self.X.shape[:2])
        self.condition = np.asarray(self.condition, dtype=int).reshape(-1)
        if self.condition.shape != (self.X.shape[0],):
            raise ValueError(f"condition must have one id per rollout ({self.X.shape[0]}); got "
                             f"{self.condition.shape}")

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def T(self) -> int:
        return self.X.shape[1]

    def for_condition(self, m: int) -> "Rollouts":
        keep = self.condition == m
        return Rollouts(self.X[keep], self.U[keep], self.condition[keep],
                        None if self.images is None else self.images[keep])

    @staticmethod
    def concatenate(parts: list["Rollouts"]) -> "Rollouts":
        with_images = [p.images is not None for p in parts]
        if any(with_images) and not all(with_images):
            raise ValueError("cannot concatenate rollouts with images and rollouts without")
        images = np.concatenate([p.images for p in parts]) if parts and all(with_images) else None
        return Rollouts(np.concatenate([p.X for p in parts]), np.concatenate([p.U for p in parts]),
                        np.concatenate([p.condition for p in parts]), images)
