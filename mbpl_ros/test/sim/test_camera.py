"""The camera: images of the visible target, its intrinsics, and the camera settings."""
import numpy as np
import pytest

from mbpl_ros.config import ConfigError, from_dict
from mbpl_ros.core.rollouts import Rollouts, StateLayout, observation_indices, policy_observation
from mbpl_ros.experiment import CameraConfig, ExperimentConfig
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.camera import Camera
from mbpl_ros.sim.rollout import run_image_rollout

DOWN = dict(eye=[0.0, 0.0, 1.2], look_at=[0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0], fov_deg=40.0,
            width=80, height=64)


def _red(image):
    return (image[:, :, 0] > 180) & (image[:, :, 1] < 80) & (image[:, :, 2] < 80)


def test_the_target_appears_where_the_intrinsics_project_it():
    config = CameraConfig(**DOWN)
    with Arm("reacher_2link", target_marker=config.target_marker) as arm:
        camera = Camera(arm.client._client, config)
        for target in ([0.2, 0.34, 0.0], [-0.1, 0.2, 0.0], [0.3, -0.1, 0.0]):
            arm.reset([0.0, 0.0], target=target)
            image = camera.render()
            assert image.shape == (64, 80, 3) and image.dtype == np.uint8
            rows, columns = np.nonzero(_red(image))
            assert rows.size >= 3, "the target sphere is visible"
            # The sphere's top is seen, not its centre: within a pixel of the projection.
            np.testing.assert_allclose([columns.mean(), rows.mean()],
                                       camera.project([target])[0], atol=1.0)
        info = camera.intrinsics()
        K = np.reshape(info["K"], (3, 3))
        assert (info["width"], info["height"], info["distortion_model"]) == (80, 64, "plumb_bob")
        np.testing.assert_allclose(K[:, 2], [39.5, 31.5, 1.0])
        np.testing.assert_allclose(K[0, 0], 32.0 / np.tan(np.radians(20.0)))
        assert len(info["P"]) == 12 and info["D"] == []


def test_without_a_marker_the_target_is_not_drawn():
    config = CameraConfig(**DOWN)
    with Arm("reacher_2link") as arm:
        arm.reset([0.0, 0.0], target=[0.2, 0.34, 0.0])
        assert not _red(Camera(arm.client._client, config).render()).any()


def test_image_rollouts_see_the_state_of_each_step():
    config = CameraConfig(**DOWN)
    layout = StateLayout(2)
    with Arm("reacher_2link", target_marker=config.target_marker) as arm:
        camera = Camera(arm.client._client, config)
        seen = []

        def act(t, x, image):
            seen.append(image.copy())
            return np.array([0.3, -0.2])

        X, U, images = run_image_rollout(arm, layout, act, [0.0, 0.5], [0.2, 0.3, 0.0], 6,
                                         camera)
    assert images.shape == (6, 64, 80, 3)
    np.testing.assert_array_equal(images, np.stack(seen))
    assert not np.array_equal(images[0], images[-1]), "the arm moved in the images"
    rollouts = Rollouts(X[None], U[None], [0], images[None])
    assert rollouts.for_condition(0).images.shape == (1, 6, 64, 80, 3)
    with pytest.raises(ValueError, match="images must be uint8"):
        Rollouts(X[None], U[None], [0], images[None].astype(float))
    obs = policy_observation(X, layout)
    np.testing.assert_array_equal(obs, X[:, :4])
    np.testing.assert_array_equal(observation_indices(layout), [0, 1, 2, 3])


@pytest.mark.parametrize("change, message", [
    ({"up": [0.0, 0.0, 1.0]}, "up .* parallel"),
    ({"look_at": [0.0, 0.0, 1.2]}, "look_at .* must differ from eye"),
    ({"far": 0.01}, "far .* greater than near"),
    ({"fov_deg": 190.0}, "fov_deg"),
    ({"width": 4}, "width"),
    ({"eye": [0.0, 1.0]}, "eye must have 3 entries"),
    ({"target_color": [1.0, 0.0, 2.0, 1.0]}, "target_color"),
    ({"lens": 3}, "unknown key 'lens'"),
])
def test_bad_camera_values_are_named(change, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        from_dict(CameraConfig, {**DOWN, **change})


def test_the_experiment_has_no_camera_unless_given():
    base = {"robot": "reacher_2link", "cost": {"action": {"weight": 0.01}},
            "conditions": [{"initial_positions": [0.0, 0.0], "target": [0.2, 0.3, 0.0]}]}
    assert from_dict(ExperimentConfig, base).camera is None
    assert from_dict(ExperimentConfig, base).target_marker is None
    config = from_dict(ExperimentConfig, {**base, "camera": DOWN})
    assert config.camera.width == 80 and config.target_marker.radius == 0.02
    with config.make_arm() as arm:
        assert config.make_camera(arm).render().shape == (64, 80, 3)


def test_the_image_does_not_depend_on_lighting_asked_for_before():
    """PyBullet keeps a client's last lighting; the camera gives its own every time."""
    import pybullet

    config = CameraConfig(**DOWN)
    with Arm("reacher_2link", target_marker=config.target_marker) as arm:
        camera = Camera(arm.client._client, config)
        arm.reset([0.3, 1.0], target=[0.1, 0.3, 0.0])
        first = camera.render()
        arm.client.getCameraImage(32, 24, renderer=pybullet.ER_TINY_RENDERER,
                                  lightDirection=[0.4, -0.6, 1.0], lightColor=[1, 0, 0])
        np.testing.assert_array_equal(camera.render(), first)
