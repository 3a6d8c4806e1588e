"""
A pinhole camera in a PyBullet world: RGB images and the intrinsics CameraInfo needs.

The camera is an experiment's `camera:` section (experiment.CameraConfig). Images come from
PyBullet's CPU renderer (ER_TINY_RENDERER: no display, deterministic), (H, W, 3) uint8 RGB,
row 0 at the top. The intrinsics follow ROS's convention (sensor_msgs/CameraInfo): the
optical frame has x right, y down, z along the viewing direction, and pixel (0, 0) is the
centre of the top-left pixel, so the principal point of a centred projection is
((W - 1) / 2, (H - 1) / 2). The renderer's vertical field of view and square pixels give
f_x = f_y = H / (2 tan(fov / 2)).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pybullet

__all__ = ["Camera", "LIGHTING"]

#: The renderer's light, given at every render: PyBullet keeps the last lighting a client
#: was asked for (e.g. by sim.view's frames), so an image policy would otherwise see other
#: light after a replay's frame than in training. These are TinyRenderer's defaults for a
#: z-up world, so a camera's first image is the same either way.
LIGHTING = {"lightDirection": [-50.0, 30.0, 100.0], "lightColor": [1.0, 1.0, 1.0],
            "lightDistance": 2.0, "lightAmbientCoeff": 0.6, "lightDiffuseCoeff": 0.35,
            "lightSpecularCoeff": 0.05, "shadow": 0}


class Camera:
    """
    Render the world of PyBullet client `client_id` as `config` (a CameraConfig) sees it.

    render() -> (H, W, 3) uint8; intrinsics() -> CameraInfo's fields; project(points) ->
    pixel coordinates of world points (to check the images, or to draw on them).
    """

    def __init__(self, client_id: int, config) -> None:
        self.client_id = int(client_id)
        self.config = config
        self.width, self.height = int(config.width), int(config.height)
        eye = np.asarray(config.eye, float)
        look_at = np.asarray(config.look_at, float)
        up = np.asarray(config.up, float)
        self._view = pybullet.computeViewMatrix(eye.tolist(), look_at.tolist(), up.tolist(),
                                                physicsClientId=self.client_id)
        self._projection = pybullet.computeProjectionMatrixFOV(
            float(config.fov_deg), self.width / self.height, float(config.near),
            float(config.far), physicsClientId=self.client_id)
        # World-to-optical-frame rotation (rows: the optical x, y, z axes in the world).
        z = (look_at - eye) / np.linalg.norm(look_at - eye)
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        self.rotation = np.stack([x, np.cross(z, x), z])       # (3, 3)
        self.position = eye                                     # (3,)
        focal = self.height / (2.0 * math.tan(math.radians(config.fov_deg) / 2.0))
        self.render_seconds = 0.0   # wall time spent in render(), for benchmarks
        self.K = np.array([[focal, 0.0, (self.width - 1) / 2.0],
                           [0.0, focal, (self.height - 1) / 2.0],
                           [0.0, 0.0, 1.0]])

    def render(self) -> np.ndarray:
        """Return the image of the world now, (H, W, 3) uint8 RGB."""
        start = time.perf_counter()
        _, _, rgba, _, _ = pybullet.getCameraImage(
            self.width, self.height, viewMatrix=self._view, projectionMatrix=self._projection,
            renderer=pybullet.ER_TINY_RENDERER, flags=pybullet.ER_NO_SEGMENTATION_MASK,
            physicsClientId=self.client_id, **LIGHTING)
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)
        image = np.ascontiguousarray(rgba[:, :, :3])
        self.render_seconds += time.perf_counter() - start
        return image

    def intrinsics(self) -> dict:
        """
        Return sensor_msgs/CameraInfo's calibration fields.

        width, height, K (9,) row-major, P (12,) = [K | 0], D () (no distortion) and
        distortion_model "plumb_bob".
        """
        P = np.hstack([self.K, np.zeros((3, 1))])
        return {"width": self.width, "height": self.height,
                "K": self.K.reshape(-1).tolist(), "P": P.reshape(-1).tolist(), "D": [],
                "distortion_model": "plumb_bob"}

    def project(self, points) -> np.ndarray:
        """Return the pixel coordinates (n, 2) [column, row] of world points (n, 3)."""
        points = np.atleast_2d(np.asarray(points, float))
        optical = (points - self.position) @ self.rotation.T   # (n, 3), z = depth
        pixels = optical @ self.K.T
        return pixels[:, :2] / pixels[:, 2:3]
