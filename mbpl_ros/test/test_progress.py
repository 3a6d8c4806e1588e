"""ProgressTracker: counts and estimates against a clock the test drives, and the loop's use."""
import io

import pytest

from mbpl_ros.progress import ProgressTracker, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_time_left_is_the_remaining_trials_and_iterations_at_their_measured_pace():
    clock, reports, lines = Clock(), [], []
    tracker = ProgressTracker(3, reports.append, lines.append, interval_s=10.0, clock=clock)
    tracker.start_iteration(0, 2)
    for _ in range(2):
        clock.now += 1.0
        tracker.trial_done()
    tracker.iteration_done({"iteration": 0, "rollouts": 0, "env_steps": 0,
                            "final_distance_m": [0.3, 0.2], "mean_cost": 5.0})
    tracker.start_iteration(1, 6)                  # 4 samples + 2 evaluations
    clock.now += 5.0                               # time in no trial (e.g. starting up)
    tracker.phase("sampling")
    clock.now += 2.0
    tracker.trial_done()                           # 2 s: the mean trial is now 4 s / 3
    progress = reports[-1]
    assert (progress.iteration, progress.phase, progress.trials_done) == (1, "sampling", 1)
    # 5 trials left at 4/3 s, then 2 iterations of 6 trials at 4/3 s (none completed yet)
    assert tracker.iteration_eta_s() == pytest.approx(5 * 4 / 3)
    assert progress.eta_s == pytest.approx(5 * 4 / 3 + 2 * 6 * 4 / 3)
    tracker.phase("updating")
    clock.now += 30.0                              # the update: no trial's time
    tracker.phase("evaluating")
    for _ in range(5):
        clock.now += 1.0
        tracker.trial_done()
    tracker.iteration_done({"iteration": 1, "rollouts": 4, "env_steps": 40,
                            "final_distance_m": [0.1, 0.05], "mean_cost": 2.0})
    tracker.start_iteration(2, 6)
    # 6 trials at 9/8 s, then one iteration at the measured 42 s (t = 2 .. 44)
    assert tracker.eta_s() == pytest.approx(6 * 9 / 8 + 42.0)
    assert reports[-1].final_distance_m == [0.1, 0.05] and reports[-1].rollouts == 4
    assert lines and all(line.startswith("iteration ") for line in lines)
    assert len(lines) < len(reports)              # lines are rate-limited, reports are not


def test_phases_are_checked_and_durations_read_well():
    tracker = ProgressTracker(1)
    with pytest.raises(ValueError, match="allowed"):
        tracker.phase("thinking")
    assert [duration(s) for s in (None, 12, 200, 7200)] == ["?", "12 s", "3.3 min", "2.0 h"]


def test_the_training_loop_reports_every_trial_and_rewrites_the_learning_curve(tmp_path):
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import SimSource
    from mbpl_ros.training import TrainingLoop

    import dataclasses
    from pathlib import Path

    config = load_experiment(Path(__file__).resolve().parents[1] / "config" / "reacher_2link.yaml")
    config = dataclasses.replace(config, T=10, rollouts_per_condition=2,
                                 conditions=config.conditions[:2])
    reports, curves = [], []
    source = SimSource(config)
    try:
        loop = TrainingLoop(config, tmp_path, 0, source, record=False, log=io.StringIO(),
                            on_progress=lambda p: reports.append((p.iteration, p.phase, p.trials_done)),
                            on_iteration=lambda row: curves.append(
                                (tmp_path / "learning_curve.png").stat().st_mtime_ns))
        loop.run(2)
    finally:
        source.close()
    assert len(curves) == 3                        # a curve after iteration 0, 1 and 2
    done = [r for r in reports if r[1] != "done"]
    # per iteration >= 1: 4 samples + 2 evaluations, each reported when it ends
    assert max(t for i, phase, t in done if i == 1) == 6
    assert [phase for i, phase, _ in reports if i == 1][:1] == ["sampling"]
    assert {"fitting", "updating", "evaluating"} <= {phase for i, phase, _ in reports if i == 1}
    assert reports[-1][1] == "done"
