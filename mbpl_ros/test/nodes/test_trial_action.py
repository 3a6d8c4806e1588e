"""
The RunTrial action of lqr_controller over real DDS: cancels and goals it must refuse.

A cancelled trial gets the fallback and no unsafe command; a goal that cannot run is
rejected with a reason, counted, never executed. A probe plays the robot
(test_safety_nodes.ProbeRobot: lockstep, one step per joint state it publishes, every
command checked) and is the action client.
"""
import numpy as np
import pytest

from loop_helpers import small_experiment, spinning, wait_until
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces.action import RunTrial
from test_safety_nodes import T, ProbeRobot, controller_node


@pytest.fixture
def experiment(tmp_path):
    return small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=2)


@pytest.mark.timeout(60)
def test_a_cancelled_trial_sends_the_fallback_and_nothing_unsafe(ros_context, experiment):
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    goals = robot.requests
    with spinning(ros_context, [controller, robot]):
        q0 = robot.start_at(controller, [0.5, 1.5])
        robot.controller(k=(0.3, 0.2))
        count = len(robot.commands.commands)
        robot.request(11, q0)
        assert robot.commands.wait_for_count(count + 1), "the trial's first command never came"
        robot.step(q0)
        robot.step(q0)
        assert goals.wait_for(lambda: 11 in goals.handles)
        assert goals.wait_for(lambda: (RunTrial.Feedback.PHASE_RUNNING, 0) in goals.feedback)
        cancel = goals.handles[11].cancel_goal_async()
        assert robot.commands.wait_for_count(count + 4), "no fallback after the cancel"
        assert goals.wait_for(lambda: 11 in goals.results), "no result for the cancelled goal"
        assert robot.records.wait_for(lambda items: items)
        wait_until(cancel.done, what="the cancel response")
        after = len(robot.commands.commands)
        for _ in range(3):          # the arm keeps publishing: the cancelled trial takes no step
            robot.state(q0)
        wait_until(lambda: controller._latest.stamp_ns == robot.stamp_ns, what="the last state")
    sent = np.array(robot.commands.commands[count:])
    # three steps, then the fallback
    np.testing.assert_allclose(sent, [[0.3, 0.2]] * 3 + [[0.0, 0.0]])
    assert len(robot.commands.commands) == after                         # and nothing after it
    assert robot.commands.violations == []
    assert len(cancel.result().goals_canceling) == 1
    result = goals.results[11]
    assert result.status.value == wire.TrialStatus.CANCELLED
    assert "cancelled by the client" in result.reason
    record = robot.records.items[0]
    assert (record.trial_id, record.status, record.commands.shape) == \
        (11, wire.TrialStatus.CANCELLED, (0, 2))
    assert controller._trial is None and controller.rejected_goals == 0


@pytest.mark.timeout(60)
def test_goals_that_cannot_run_are_rejected_counted_and_never_executed(ros_context, experiment):
    controller = controller_node(ros_context, experiment)
    robot = ProbeRobot(ros_context)
    goals = robot.requests

    def goal(trial_id, **changes):
        values = dict(trial_id=trial_id, condition=0, iteration=1, index=0, controller_version=5,
                      executor="controller", purpose="evaluation",
                      initial_positions=np.array([0.5, 1.5]), target=np.array([0.1, 0.1, 0.0]),
                      noise=np.zeros((T, 2)))
        values.update(changes)
        return wire.encode_trial_request(wire.TrialRequest(**values))

    with spinning(ros_context, [controller, robot]):
        robot.start_at(controller, [0.5, 1.5])
        for version in range(6):                        # lqr_controller keeps the newest four
            robot.controller(k=(0.3, 0.2), version=version)
        wait_until(lambda: (0, 5) in controller.controllers, what="the controllers")
        count = len(robot.commands.commands)
        short = goal(4)
        short.horizon = T - 1                           # noise of T rows for a horizon of T - 1
        for message in (goal(1, condition=3), goal(2, controller_version=0),
                        goal(3, executor="policy"), short, goal(5, noise=np.zeros((T + 1, 2)))):
            goals.publish(message)
        assert goals.wait_for(lambda: len(goals.rejected) == 5), goals.rejected
    assert sorted(goals.rejected) == [1, 2, 3, 4, 5] and goals.handles == {}
    assert controller.rejected_goals == 5
    assert len(robot.commands.commands) == count and robot.records.items == []   # not executed
    assert robot.commands.violations == []
