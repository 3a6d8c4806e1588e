"""trajectory_optimization.first_kl_step: the first iteration's KL bound, then kl_step's."""
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mbpl_ros.config import ConfigError, from_dict
from mbpl_ros.core.traj_opt import KlStepSettings
from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import TrainingRun

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("first", [None, 3.0])
def test_the_first_iteration_uses_first_kl_step_and_later_ones_kl_step(tmp_path, first):
    config = load_experiment(ROOT / "config" / "reacher_2link.yaml")
    step = dataclasses.replace(config.trajectory_optimization, kl_step=1.0, first_kl_step=first)
    config = dataclasses.replace(config, T=12, rollouts_per_condition=2,
                                 conditions=config.conditions[:2], trajectory_optimization=step)
    with threadpool_limits(limits=1):
        metrics = TrainingRun(config, tmp_path, 0, log=io.StringIO()).run(2)
    first_budget = np.asarray(metrics[1]["kl_step"])         # (M,), total over the T steps
    np.testing.assert_allclose(first_budget, (1.0 if first is None else first) * config.T)
    # From the second iteration on: kl_step (1.0) times the adapted multiplier.
    second = np.asarray(metrics[2]["kl_step"]) / config.T
    assert np.all((step.min_step_mult <= second) & (second <= step.max_step_mult))


def test_a_bad_first_kl_step_names_the_key():
    with pytest.raises(ConfigError, match=r"first_kl_step:? must be > 0\.0, got 0\.0"):
        from_dict(KlStepSettings, {"first_kl_step": 0.0})
