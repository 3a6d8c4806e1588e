"""
Live progress of a training run: its phase, its trials, and how long until the end.

The training loop tells a ProgressTracker when an iteration starts, when its phase changes
and when a trial ends; the tracker hands a Progress to a callback (gps_trainer publishes it
as mbpl_ros_interfaces/TrainingProgress) every time, and writes a line with the estimated
time left at most every `interval_s` (a realtime iteration can take minutes).

The estimate: the current iteration's remaining trials at the mean trial time of this run so
far, plus the remaining iterations at the mean duration of the completed ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

#: The phases, in the order of mbpl_ros_interfaces/TrainingProgress's PHASE_* constants.
PHASES = ("starting", "sampling", "fitting", "updating", "evaluating", "paused", "done", "failed")


@dataclass
class Progress:
    """
    Where a run is, for the progress line.

    Where a run is: iteration of iterations, the phase, trials done of the iteration's,
    rollouts and env steps so far, the last evaluation, and the seconds left (None: not
    known yet).
    """

    iteration: int
    iterations: int
    phase: str
    trials_done: int
    trials_in_iteration: int
    rollouts: int
    env_steps: int
    final_distance_m: List[float] = field(default_factory=list)
    policy_final_distance_m: List[float] = field(default_factory=list)
    mean_cost: Optional[float] = None
    eta_s: Optional[float] = None


def duration(seconds: Optional[float]) -> str:
    """12 s, 3.4 min, 1.2 h; '?' when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressTracker:
    """Counts a run's trials and times its iterations (see the module text)."""

    def __init__(self, iterations: int, report: Optional[Callable[[Progress], None]] = None,
                 say: Optional[Callable[[str], None]] = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.report, self.say, self.interval_s, self.clock = report, say, interval_s, clock
        self.progress = Progress(0, iterations, "starting", 0, 0, 0, 0)
        self._trial_time = self._trials = 0.0
        self._iteration_times: List[float] = []
        self._iteration_start = self._last_trial = self._last_line = clock()

    def start_iteration(self, iteration: int, trials: int) -> None:
        """Begin iteration `iteration`; it will run `trials` trials (samples and evaluations)."""
        now = self.clock()
        p = self.progress
        p.iteration, p.trials_done, p.trials_in_iteration = iteration, 0, trials
        self._iteration_start = self._last_trial = now
        self.phase("sampling" if iteration > 0 else "evaluating")

    def add_trials(self, count: int) -> None:
        """Add `count` trials more to the iteration (a batch drawn again)."""
        self.progress.trials_in_iteration += count

    def phase(self, name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"phase {name!r}; allowed: {list(PHASES)}")
        self.progress.phase = name
        if name in ("sampling", "evaluating"):
            self._last_trial = self.clock()   # the update's time is no trial's
        # A stop or a pause is said at once; the end of the run has its own summary.
        self._emit(line=None if name not in ("paused", "failed", "done") else name != "done")

    def trial_done(self) -> None:
        now = self.clock()
        self._trial_time += now - self._last_trial
        self._trials += 1
        self._last_trial = now
        self.progress.trials_done += 1
        self._emit()

    def iteration_done(self, row: dict) -> None:
        """Mark the iteration's metrics row as committed."""
        now = self.clock()
        if row["iteration"] > 0:
            self._iteration_times.append(now - self._iteration_start)
        p = self.progress
        p.rollouts, p.env_steps = int(row["rollouts"]), int(row["env_steps"])
        p.final_distance_m = list(row["final_distance_m"])
        p.policy_final_distance_m = list(row.get("policy_final_distance_m") or [])
        p.mean_cost = row["mean_cost"]
        p.trials_done = p.trials_in_iteration
        if row["iteration"] >= p.iterations:
            self.phase("done")

    def iteration_eta_s(self) -> Optional[float]:
        """
        Estimate the seconds until the current iteration's trials are done.

        That is its remaining trials at the mean trial time, or None before anything was timed.
        """
        p = self.progress
        if self._trials == 0:
            return None
        return (p.trials_in_iteration - p.trials_done) * self._trial_time / self._trials

    def eta_s(self) -> Optional[float]:
        """Seconds until the run ends, or None before anything was timed."""
        p = self.progress
        left = self.iteration_eta_s()
        if left is None:
            return None
        if p.iteration < p.iterations:
            per_iteration = (sum(self._iteration_times) / len(self._iteration_times)
                             if self._iteration_times else
                             (p.trials_in_iteration or 1) * self._trial_time / self._trials)
            left += (p.iterations - p.iteration) * per_iteration
        return left if p.phase != "done" else 0.0

    def _emit(self, line: Optional[bool] = None) -> None:
        """
        Report; say a line when `line` is True, or when None and interval_s has passed.

        interval_s counts from the last line said.
        """
        p = self.progress
        p.eta_s = self.eta_s()
        if self.report is not None:
            self.report(p)
        now = self.clock()
        due = now - self._last_line >= self.interval_s if line is None else line
        if self.say is not None and due:
            self._last_line = now
            self.say(f"iteration {p.iteration}/{p.iterations} | {p.phase}: trial {p.trials_done}/"
                     f"{p.trials_in_iteration} | its trials end in "
                     f"{duration(self.iteration_eta_s())} | the run in {duration(p.eta_s)}")
