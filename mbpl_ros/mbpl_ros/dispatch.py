"""
Spreading a batch of trials over several robots: the law, without ROS.

gps_trainer hands the trials of one RolloutSource.run_trials call (a batch: conditions ×
rollouts, or the evaluation trials) to K robots. A Dispatcher holds the batch's bookkeeping:

    assign     a free robot (discovered, not e-stopped, not cooling down after a failure)
               gets the first trial that is neither done nor running, with a new trial id
    result     an OK rollout of the awaited id completes its trial (each trial completes
               once: a late or repeated rollout of an old id is ignored); a dropped rollout
               (gap, stale, ...) or a timeout counts one failed attempt and puts the trial
               back; the e-stop or the robot leaving the graph put it back uncounted
    done       every trial has its rollout; results are read in the trials' order

The noise of a trial is its own (drawn from (seed, iteration, condition, index)), so the
robot that runs it does not change the data: the batch is the one a single robot would
collect. A robot that failed waits RETRY_DELAY_S × its failures in a row before its next
trial (a stalled robot is not fed the whole batch); one that leaves the graph gets nothing
until it is back, and then rejoins at the next assignment.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Generic, List, Optional, Sequence, TypeVar

#: Pause before a robot that failed gets another trial, times its failures in a row (s).
RETRY_DELAY_S = 0.2
#: Longest such pause (s).
MAX_RETRY_DELAY_S = 5.0

R = TypeVar("R")


class TrialFailed(RuntimeError):
    """A trial failed max_attempts times; `index`: its place in the batch."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


@dataclass
class Running:
    """A trial being run: its index in the batch, its trial id, when it must end."""

    index: int
    trial_id: int
    deadline: float


@dataclass
class RobotState:
    """What the dispatcher knows of one robot."""

    name: str
    present: bool = True            # in the graph (its nodes discovered)
    estopped: bool = False          # its e-stop latch (or the global one) is set
    running: Optional[Running] = None
    failures_in_a_row: int = 0
    resting_until: float = 0.0      # no trial before this time (after a failure)
    completed: int = 0              # trials it completed (this dispatcher)

    def free(self, now: float) -> bool:
        """Can take a trial now."""
        return (self.present and not self.estopped and self.running is None
                and now >= self.resting_until)


@dataclass
class Dispatcher(Generic[R]):
    """
    The bookkeeping of one batch of `count` trials over `robots` (names).

    next_id: the first trial id to use (ids increase by one per request). max_attempts:
    failed attempts (drops, timeouts) per trial before TrialFailed.
    """

    count: int
    robots: Sequence[str]
    next_id: int
    max_attempts: int = 3
    state: Dict[str, RobotState] = field(init=False)
    results: Dict[int, R] = field(init=False, default_factory=dict)
    failures: Dict[int, List[str]] = field(init=False, default_factory=dict)
    estop_aborts: int = field(init=False, default=0)
    ignored: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if len(set(self.robots)) != len(self.robots) or not self.robots:
            raise ValueError(f"robots {list(self.robots)}: allowed: one or more distinct names")
        self.state = {name: RobotState(name) for name in self.robots}

    # ------------------------------------------------------------------ queries
    @property
    def done(self) -> bool:
        """Every trial has its rollout."""
        return len(self.results) == self.count

    def ordered_results(self) -> List[R]:
        """Return the results in the trials' order (all of them: call when done)."""
        return [self.results[i] for i in range(self.count)]

    def running_indices(self) -> set:
        return {s.running.index for s in self.state.values() if s.running is not None}

    def pending(self) -> List[int]:
        """Trials neither done nor running, in order."""
        running = self.running_indices()
        return [i for i in range(self.count) if i not in self.results and i not in running]

    def robot_of(self, trial_id: int) -> Optional[str]:
        """Return the robot running trial `trial_id` (None: no trial with that id is awaited)."""
        for name, s in self.state.items():
            if s.running is not None and s.running.trial_id == trial_id:
                return name
        return None

    # ------------------------------------------------------------------ events
    def assign(self, now: float, timeout_s: float) -> List[tuple]:
        """
        Hand the next pending trials to the free robots, in the robots' order.

        Returns [(robot, index, trial_id)] to request.
        """
        out = []
        pending = self.pending()
        for name in self.robots:
            if not pending:
                break
            s = self.state[name]
            if s.free(now):
                index = pending.pop(0)
                s.running = Running(index, self.next_id, now + timeout_s)
                out.append((name, index, self.next_id))
                self.next_id += 1
        return out

    def succeeded(self, trial_id: int, result: R, now: float) -> bool:
        """Take an OK rollout of `trial_id`: True if it completed a trial (False: not awaited)."""
        s = self._awaiting(trial_id)
        if s is None:
            return False
        self.results[s.running.index] = result
        s.running, s.failures_in_a_row = None, 0
        s.completed += 1
        return True

    def failed(self, trial_id: int, reason: str, now: float) -> bool:
        """
        Record a dropped rollout of `trial_id`.

        One failed attempt; TrialFailed after max_attempts.
        """
        s = self._awaiting(trial_id)
        if s is None:
            return False
        self._fail(s, reason, now)
        return True

    def estop_aborted(self, trial_id: int) -> bool:
        """`trial_id` was stopped by the e-stop: the trial goes back, uncounted."""
        s = self._awaiting(trial_id)
        if s is None:
            return False
        s.running = None
        s.estopped = True       # until its latch says otherwise
        self.estop_aborts += 1
        return True

    def expire(self, now: float) -> List[tuple]:
        """
        Expire the trials past their deadline.

        Returns [(robot, index, trial_id)], each a failed attempt (or, on an e-stopped
        robot, put back uncounted).
        """
        expired = []
        for s in self.state.values():
            if s.running is not None and now >= s.running.deadline:
                expired.append((s.name, s.running.index, s.running.trial_id))
                if s.estopped:
                    s.running = None
                    self.estop_aborts += 1
                else:
                    self._fail(s, "no rollout within trial_timeout_s", now)
        return expired

    def set_present(self, robot: str, present: bool) -> Optional[int]:
        """
        Note that the robot joined or left the graph.

        A trial it was running goes back uncounted (returns its index).
        """
        s = self.state[robot]
        s.present = present
        if not present and s.running is not None:
            index, s.running = s.running.index, None
            return index
        return None

    def set_estopped(self, robot: str, latched: bool) -> Optional[int]:
        """
        Set the robot's e-stop latch.

        Its running trial (if any) goes back uncounted when it latches (its rollout,
        aborted, comes back as ESTOP or never).
        """
        s = self.state[robot]
        s.estopped = latched
        if latched and s.running is not None:
            index, s.running = s.running.index, None
            self.estop_aborts += 1
            return index
        return None

    # ------------------------------------------------------------------ inside
    def _awaiting(self, trial_id: int) -> Optional[RobotState]:
        name = self.robot_of(trial_id)
        if name is None:
            self.ignored += 1
            return None
        return self.state[name]

    def _fail(self, s: RobotState, reason: str, now: float) -> None:
        index = s.running.index
        s.running = None
        s.failures_in_a_row += 1
        s.resting_until = now + min(MAX_RETRY_DELAY_S, RETRY_DELAY_S * s.failures_in_a_row)
        reasons = self.failures.setdefault(index, [])
        reasons.append(f"{s.name}: {reason}")
        if len(reasons) >= self.max_attempts:
            raise TrialFailed(f"no valid rollout in {len(reasons)} attempts "
                              f"({'; '.join(reasons)})", index)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*\Z")


def robot_names(values: Sequence[str], where: str = "parameter 'robots'") -> List[str]:
    """
    Return the robots' namespaces from a `robots` setting.

    [] or [""] -> [] (one robot, not namespaced); else each a ROS name ("robot_0",
    "/lab/arm_1"; leading "/" dropped), distinct. ValueError naming `where`, the value
    and what is allowed.
    """
    names = [str(value).strip("/") for value in values]
    if names in ([], [""]):
        return []
    allowed = ("allowed: [''] (one robot) or distinct names of letters, digits and '_' "
               "(not starting with a digit), '/'-separated")
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"{where} is {list(values)}: {name!r} is not a ROS name; {allowed}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where} is {list(values)}: a name repeats; {allowed}")
    return names
