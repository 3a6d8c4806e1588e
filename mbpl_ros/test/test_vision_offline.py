"""A tiny image-policy MDGPS run offline: camera images in, TorchScript image policy out."""
import json
from pathlib import Path

import numpy as np
import pytest

from mbpl_ros.config import ConfigError, from_dict
from mbpl_ros.core.policy.deploy import load_exported_policy
from mbpl_ros.experiment import ExperimentConfig, load_experiment
from mbpl_ros.offline import TrainingRun, evaluate_exported_policy, held_out_conditions

ROOT = Path(__file__).resolve().parents[1]
VISION = ROOT / "config" / "reacher_2link_vision.yaml"


def tiny_data(**changes) -> dict:
    return {
        "robot": "reacher_2link", "algorithm": "mdgps", "T": 8, "rollouts_per_condition": 2,
        "iterations": 2, "success_distance_m": 0.03,
        "conditions": [{"initial_positions": [0.0, 1.5], "target": [0.05, 0.25, 0.0]},
                       {"initial_positions": [0.0, 1.5], "target": [0.15, 0.3, 0.0]}],
        "cost": {"action": {"weight": 0.01}, "distance": {"l2": 10.0, "l1": 1.0}},
        "camera": {"eye": [0.1, 0.15, 1.0], "look_at": [0.1, 0.15, 0.0], "up": [0.0, 1.0, 0.0],
                   "fov_deg": 30.0, "width": 16, "height": 12},
        "policy": {"hidden_sizes": [8], "iterations": 5, "batch_size": 8,
                   "image": {"conv_channels": [4, 4], "kernel_sizes": [3, 3],
                             "strides": [2, 1]}},
        **changes}


def tiny(**changes) -> ExperimentConfig:
    return from_dict(ExperimentConfig, tiny_data(**changes))


def test_a_tiny_image_policy_run_trains_exports_evaluates_and_replays(tmp_path):
    import yaml

    from mbpl_ros.replay import compose, episodes_of_run, play

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_data()))
    config = load_experiment(path)
    metrics = TrainingRun(config, tmp_path, seed=0, log=open(tmp_path / "log", "w")).run(2)
    assert [row["iteration"] for row in metrics] == [0, 1, 2]
    assert all(np.isfinite(row["policy_loss"]) for row in metrics[1:])
    meta = json.loads((tmp_path / "policy.json").read_text())
    assert meta["image"] == {"height": 12, "width": 16, "channels": 3}
    assert meta["observation_indices"] == [0, 1, 2, 3]
    policy = load_exported_policy(tmp_path / "policy.pt")
    assert policy.needs_image
    result = evaluate_exported_policy(config, tmp_path / "policy.pt", 3, seed=1)
    assert result["conditions"] == 3 and all(np.isfinite(result["distances_m"]))
    # Held-out targets inside the training targets' box, the start shared.
    starts, targets = held_out_conditions(config, 3, seed=1)
    assert np.all(starts == [0.0, 1.5])
    assert np.all((targets[:, :2] >= [0.05, 0.25]) & (targets[:, :2] <= [0.15, 0.3]))
    # mbpl replay --policy --held-out 2: the camera's image beside each episode's scene.
    config, episodes, _ = episodes_of_run(tmp_path, path, policy=True, held_out=2,
                                          held_out_seed=1)
    play(config, episodes, width=64, height=48)
    np.testing.assert_allclose([e.distances[-1] for e in episodes],
                               result["distances_m"][:2], atol=1e-9)
    assert len(episodes[0].camera_frames) == config.T
    assert episodes[0].camera_frames[0].shape == (12, 16, 3)
    frames = compose(config, episodes)
    # Each tile: the 64-wide scene, then the camera panel (16 px x scale 4, 8 px margin).
    assert frames[0].shape == (48, 2 * (64 + 16 * 4 + 8), 3)
    np.testing.assert_array_equal(frames[0][0:48:4, 64 + 4:64 + 4 + 64:4],
                                  episodes[0].camera_frames[0])


def test_the_policy_sees_the_target_only_in_the_image(tmp_path):
    """Same joint state, targets elsewhere: the actions differ only through the image."""
    config = tiny()
    TrainingRun(config, tmp_path, seed=0, log=open(tmp_path / "log", "w")).run(1)
    policy = load_exported_policy(tmp_path / "policy.pt")
    x = np.zeros(config.layout.dX)
    x[:2] = [0.0, 1.5]
    with config.make_arm() as arm:
        camera = config.make_camera(arm)
        arm.reset([0.0, 1.5], target=[0.05, 0.25, 0.0])
        first = camera.render()
        arm.reset([0.0, 1.5], target=[0.15, 0.3, 0.0])
        second = camera.render()
    changed = x.copy()
    changed[4:] = 5.0   # the target-relative part of x: the policy does not read it
    np.testing.assert_array_equal(policy(x, first), policy(changed, first))
    assert not np.array_equal(policy(x, first), policy(x, second))


def test_the_vision_config_is_valid_and_image_settings_need_a_camera():
    config = load_experiment(VISION)
    assert config.camera is not None and config.policy.image is not None
    assert len({tuple(c.target) for c in config.conditions}) == len(config.conditions)
    steps = config.iterations * len(config.conditions) * config.rollouts_per_condition * config.T
    assert steps <= 52_000
    with pytest.raises(ConfigError, match="policy.image: an image policy needs a camera"):
        tiny(camera=None)
    with pytest.raises(ConfigError, match=r"policy.action_base: 'gravity' is for a state "
                       r"policy; allowed with policy.image: 'none'"):
        tiny(policy={**tiny_data()["policy"], "action_base": "gravity"})
    with pytest.raises(ConfigError, match="leave no pixel"):
        tiny(policy={"image": {"conv_channels": [4], "kernel_sizes": [20], "strides": [1]}})
    with pytest.raises(ConfigError, match="camera.fov_deg"):
        tiny(camera={"eye": [0, 0, 1], "look_at": [0, 0, 0], "up": [0, 1, 0], "fov_deg": 0})
