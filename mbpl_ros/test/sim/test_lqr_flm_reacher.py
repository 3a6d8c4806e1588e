"""LQR-FLM learns the 2-link reach on the PyBullet arm (the issue's CI figure)."""
import io
from pathlib import Path

from threadpoolctl import threadpool_limits

from mbpl_ros.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[2]


def test_reacher_reaches_every_condition_within_2_cm_by_iteration_6_and_5_mm_by_10(tmp_path):
    from mbpl_ros.offline import TrainingRun

    config = load_experiment(ROOT / "config" / "reacher_2link.yaml")
    assert len(config.conditions) == 4 and config.rollouts_per_condition == 1
    with threadpool_limits(limits=1):
        metrics = TrainingRun(config, tmp_path, seed=config.seed, log=io.StringIO()).run(10)
    by_iteration = {row["iteration"]: row for row in metrics}
    assert by_iteration[6]["rollouts"] == 6 * 4 * 1   # 1,200 env steps
    assert max(by_iteration[0]["final_distance_m"]) > 0.15  # the task is not solved at the start
    assert max(by_iteration[6]["final_distance_m"]) < 0.02
    assert max(by_iteration[10]["final_distance_m"]) < 0.005
