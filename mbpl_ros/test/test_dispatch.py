"""The law of spreading a batch over robots (mbpl_ros.dispatch), without DDS."""
import pytest

from mbpl_ros.dispatch import Dispatcher, TrialFailed


def run_to_end(dispatcher, behaviour, timeout_s=1.0, limit=200):
    """Drive `dispatcher`: behaviour(robot, index, trial_id, now) -> "ok", "drop", "estop" or
    "stall"; time advances one unit per round. Returns the (robot, index) of each request."""
    now, requests, stalled = 0.0, [], []
    for _ in range(limit):
        if dispatcher.done:
            return requests
        for robot, index, trial_id in dispatcher.assign(now, timeout_s):
            requests.append((robot, index))
            outcome = behaviour(robot, index, trial_id, now)
            if outcome == "ok":
                dispatcher.succeeded(trial_id, (index, robot), now)
            elif outcome == "drop":
                dispatcher.failed(trial_id, "GAP", now)
            elif outcome == "estop":
                dispatcher.estop_aborted(trial_id)
        now += 1.0
        dispatcher.expire(now)
    raise AssertionError("the batch did not finish")


def test_one_robot_runs_the_trials_in_order():
    d = Dispatcher(5, ["a"], next_id=100)
    requests = run_to_end(d, lambda *_: "ok")
    assert requests == [("a", i) for i in range(5)]
    assert [index for index, _ in d.ordered_results()] == list(range(5))
    assert d.next_id == 105


def test_two_robots_share_the_batch_and_results_keep_the_trials_order():
    d = Dispatcher(6, ["a", "b"], next_id=0)
    requests = run_to_end(d, lambda *_: "ok")
    assert sorted(index for _, index in requests) == list(range(6))
    assert {robot for robot, _ in requests} == {"a", "b"}
    assert [index for index, _ in d.ordered_results()] == list(range(6))


def test_a_stalled_robot_loses_its_trial_to_the_other_and_nothing_is_counted_twice():
    d = Dispatcher(4, ["a", "b"], next_id=0, max_attempts=3)
    requests = run_to_end(d, lambda robot, *_: "stall" if robot == "b" else "ok")
    assert [index for index, _ in d.ordered_results()] == list(range(4))
    assert all(robot == "a" for _, robot in d.ordered_results())
    assert len(d.results) == 4
    # b rests after each failure (it is not fed the batch), and no trial failed thrice
    assert sum(1 for robot, _ in requests if robot == "b") <= 2


def test_a_late_rollout_of_a_given_up_trial_is_ignored():
    d = Dispatcher(1, ["a", "b"], next_id=7)
    [(robot, index, trial_id)] = d.assign(0.0, 1.0)
    d.expire(2.0)                                  # given up: back in the queue
    [(_, again, new_id)] = d.assign(10.0, 1.0)
    assert again == index and new_id != trial_id
    assert not d.succeeded(trial_id, "late", 10.5)  # the old id completes nothing
    assert d.succeeded(new_id, "fresh", 10.6)
    assert d.ordered_results() == ["fresh"] and d.ignored == 1


def test_the_estop_puts_the_trial_back_uncounted_and_only_that_robot_waits():
    d = Dispatcher(3, ["a", "b"], next_id=0, max_attempts=1)
    assigned = d.assign(0.0, 1.0)
    assert [(r, i) for r, i, _ in assigned] == [("a", 0), ("b", 1)]
    assert d.set_estopped("b", True) == 1           # b's latch: its trial goes back
    assert d.succeeded(assigned[0][2], "r0", 0.1)
    assert [(r, i) for r, i, _ in d.assign(0.2, 1.0)] == [("a", 1)]   # b gets nothing
    d.succeeded(d.state["a"].running.trial_id, "r1", 0.3)
    d.set_estopped("b", False)                      # reset: b rejoins at the next trial
    d.state["a"].resting_until = 1.0                # a busy elsewhere: b takes the trial
    assert [(r, i) for r, i, _ in d.assign(0.4, 1.0)] == [("b", 2)]
    assert d.failures == {} and d.estop_aborts == 1


def test_a_robot_that_leaves_loses_its_trial_and_rejoins_when_back():
    d = Dispatcher(3, ["a", "b"], next_id=0)
    (_, _, id_a), (_, _, id_b) = d.assign(0.0, 5.0)
    assert d.set_present("b", False) == 1
    assert d.succeeded(id_a, "r0", 0.1)
    [(robot, index, id_1)] = d.assign(0.2, 5.0)
    assert (robot, index) == ("a", 1)
    assert not d.succeeded(id_b, "from the dead robot", 0.3)
    d.set_present("b", True)
    [(robot, index, _)] = d.assign(0.4, 5.0)
    assert (robot, index) == ("b", 2)


def test_a_trial_that_fails_max_attempts_times_stops_the_batch_naming_it():
    d = Dispatcher(2, ["a", "b"], next_id=0, max_attempts=2)
    with pytest.raises(TrialFailed, match="2 attempts") as error:
        run_to_end(d, lambda robot, index, *_: "drop" if index == 1 else "ok")
    assert error.value.index == 1


def test_estop_aborts_do_not_count_as_attempts():
    d = Dispatcher(1, ["a"], next_id=0, max_attempts=1)
    [(_, _, first)] = d.assign(0.0, 1.0)
    d.estop_aborted(first)
    assert d.assign(0.1, 1.0) == []                 # latched: nothing assigned
    d.set_estopped("a", False)
    [(_, _, second)] = d.assign(0.2, 1.0)
    assert d.succeeded(second, "r", 0.3) and d.done


def test_robot_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        Dispatcher(1, ["a", "a"], next_id=0)


def test_robot_names():
    from mbpl_ros.dispatch import robot_names

    assert robot_names([""]) == [] and robot_names([]) == []
    assert robot_names(["/robot_0", "lab/arm_1"]) == ["robot_0", "lab/arm_1"]
    with pytest.raises(ValueError, match="'robots'.*repeats"):
        robot_names(["a", "/a"])
    with pytest.raises(ValueError, match="'0a' is not a ROS name"):
        robot_names(["0a"])
