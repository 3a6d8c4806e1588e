"""Experiment files: validation with messages that name the key, and the generated reference."""
from pathlib import Path

import pytest
import yaml

from mbpl_ros.config import ConfigError, from_dict
from mbpl_ros.experiment import ExperimentConfig, configuration_reference, load_experiment

ROOT = Path(__file__).resolve().parents[1]
# Experiment files have a top-level `robot`; the others are ROS parameter files.
EXPERIMENTS = [p for p in sorted((ROOT / "config").glob("*.yaml"))
               if "robot" in yaml.safe_load(p.read_text())]


def reacher() -> dict:
    return yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_load_and_build(path):
    config = load_experiment(path)
    cost = config.build_cost()
    assert config.layout.dU == len(config.conditions[0].initial_positions)
    assert cost is not None and config.lqr_flm_settings().trajectory_optimization.kl_step > 0


@pytest.mark.parametrize("change, message", [
    ({"robto": "x"}, "unknown key 'robto'"),
    ({"robot": "ur5"}, "unknown robot 'ur5'; known robots: kuka_iiwa, reacher_2link"),
    ({"T": 1}, "T: must be >= 2, got 1"),
    ({"T": 2.5}, "T: must be an integer"),
    ({"physics_dt": -0.01}, "physics_dt: must be > 0.0"),
    ({"rollouts_per_condition": 0}, "rollouts_per_condition: must be >= 1"),
    ({"initial_controller": {"kind": "pid"}},
     "initial_controller.kind: must be one of 'pd', 'lqr'"),
    ({"initial_controller": {"natural_frequency": float("nan")}}, "natural_frequency: must be a "
                                                                  "finite"),
    ({"dynamics": {"prior": {"max_clusters": 0}}}, "dynamics.prior.max_clusters: must be >= 1"),
    ({"dynamics": {"priors": {}}}, "dynamics: unknown key 'priors'; allowed keys: "
                                   "description_prior, prior, regularization"),
    ({"trajectory_optimization": {"min_step_mult": 5.0, "max_step_mult": 1.0}},
     "min_step_mult must not exceed max_step_mult"),
    ({"conditions": []}, "at least one condition"),
    ({"conditions": [{"initial_positions": [0.0], "target": [0.2, 0.3, 0.0]}]},
     "conditions[0].initial_positions: reacher_2link has 2 joints, got 1 angles"),
    ({"conditions": [{"initial_positions": [0.0, 0.0], "target": [0.2, 0.3]}]},
     "target must have 3 entries"),
    ({"conditions": [{"initial_positions": [0.0, 0.0]}]}, "conditions[0].target: required key is "
                                                          "missing"),
])
def test_bad_values_name_the_key_and_what_is_allowed(change, message):
    data = reacher()
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as error:
        from_dict(ExperimentConfig, data)
    assert message in str(error.value)


def test_bad_cost_is_reported_under_cost():
    data = reacher()
    data["cost"] = {"distance": {"ramp": "cubic"}}
    with pytest.raises(ConfigError, match=r"cost\.distance\.ramp: must be one of 'constant', "
                                          r"'linear', 'quadratic', 'final_only'; got 'cubic'"):
        from_dict(ExperimentConfig, data).build_cost()


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_experiment(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_experiment(bad)


def test_configuration_reference_is_current():
    documented = (ROOT.parent / "docs" / "configuration.md").read_text()
    assert documented == configuration_reference() + "\n", \
        "regenerate with: mbpl config-reference > docs/configuration.md"
