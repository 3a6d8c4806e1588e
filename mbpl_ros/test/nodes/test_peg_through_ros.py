"""The peg-in-hole task through the node graph (`mbpl sim --experiment config/peg_insertion.yaml`,
lockstep): the block is in sim_robot's world, placed per condition, and the run is `mbpl train`'s
to 1e-9 (a short run: 2 conditions, T = 40, 2 rollouts, 2 iterations; a minute on one core)."""
import numpy as np
import pytest
import yaml

from loop_helpers import REPO, small_experiment
from mbpl_ros.recording import read_recording
from test_learning_loop import assert_same_metrics, graph_run, offline_run

PEG_ROBOT = REPO / "config" / "robot_kuka_iiwa_peg.yaml"
ITERATIONS = 2


def small_peg_experiment(path, base="peg_insertion.yaml", **changes):
    """The first 2 hole positions of `base`, 40 steps (2 s: the peg reaches the block in the
    second iteration), 2 rollouts per condition."""
    return small_experiment(path, conditions=2, T=40, N=2, base=base, robot=str(PEG_ROBOT),
                            **changes)


@pytest.mark.timeout(300)
def test_lqr_flm_on_the_peg_through_the_graph_reproduces_mbpl_train(tmp_path):
    """Metrics and recorded rollouts of the graph equal the offline run's (rtol 1e-9). The
    block matters to these numbers: the same offline run without it differs, so the graph's
    numbers come from a world with the block at each condition's hole."""
    experiment = small_peg_experiment(tmp_path / "experiment.yaml")
    reference = offline_run(experiment, tmp_path / "offline", ITERATIONS)
    rows = graph_run(experiment, tmp_path / "graph", ITERATIONS)
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert_same_metrics(rows, reference)
    graph_recording = read_recording(tmp_path / "graph" / "rollouts.mcap")
    offline_recording = read_recording(tmp_path / "offline" / "rollouts.mcap")
    assert len(graph_recording.rollouts) == ITERATIONS * 2 * 2
    for recorded, expected in zip(graph_recording.rollouts, offline_recording.rollouts):
        assert (recorded.iteration, recorded.condition, recorded.index) == \
            (expected.iteration, expected.condition, expected.index)
        np.testing.assert_allclose(recorded.positions, expected.positions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(recorded.efforts, expected.efforts, rtol=1e-9, atol=1e-12)

    config = yaml.safe_load(experiment.read_text())
    config["fixtures"] = []
    (tmp_path / "free.yaml").write_text(yaml.safe_dump(config))
    free = offline_run(tmp_path / "free.yaml", tmp_path / "free", ITERATIONS)
    for d_free, d_block in zip(free[2]["final_distance_m"], rows[2]["final_distance_m"]):
        assert abs(d_free - d_block) > 0.01, (free[2], rows[2])   # the block stopped the peg


@pytest.mark.timeout(300)
def test_mdgps_on_the_peg_through_the_graph_reproduces_mbpl_train(tmp_path):
    """config/peg_insertion_mdgps.yaml through the graph (a small network, few S-step
    iterations): the offline metrics to 1e-9, the policy's included."""
    policy = yaml.safe_load((REPO / "config" / "peg_insertion_mdgps.yaml").read_text())["policy"]
    policy.update(hidden_sizes=[16, 16], iterations=60)
    experiment = small_peg_experiment(tmp_path / "experiment.yaml",
                                      base="peg_insertion_mdgps.yaml", policy=policy)
    reference = offline_run(experiment, tmp_path / "offline", ITERATIONS)
    rows = graph_run(experiment, tmp_path / "graph", ITERATIONS)
    assert rows[ITERATIONS]["policy_final_distance_m"] is not None
    assert_same_metrics(rows, reference)
