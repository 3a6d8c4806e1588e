"""Helpers of the learning-loop tests: nodes spun in threads, a probe node, small experiments."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

REPO = Path(__file__).resolve().parents[2]


def parameters(**values):
    return [Parameter(name, value=value) for name, value in values.items()]


def small_experiment(path: Path, conditions=1, T=10, N=2, base="reacher_2link.yaml",
                     **changes) -> Path:
    """
    A short reacher experiment (few conditions, steps and rollouts) written to `path`;
    `base` names the experiment in config/ it shortens.
    """
    config = yaml.safe_load((REPO / "config" / base).read_text())
    config.update(T=T, rollouts_per_condition=N, conditions=config["conditions"][:conditions], **changes)
    path.write_text(yaml.safe_dump(config))
    return path


def small_mdgps_experiment(path: Path, conditions=2, T=20, N=3, **changes) -> Path:
    """A short MDGPS reacher experiment: a small network and few Adam steps per S-step."""
    policy = yaml.safe_load((REPO / "config" / "reacher_2link_mdgps.yaml").read_text())["policy"]
    policy.update(hidden_sizes=[16, 16], iterations=60, **changes.pop("policy", {}))
    return small_experiment(path, conditions, T, N, base="reacher_2link_mdgps.yaml", policy=policy,
                            **changes)


@contextmanager
def spinning(context, nodes):
    """
    Each node (or object with a `.node`) spun by its own SingleThreadedExecutor in a
    thread; destroyed afterwards.
    """
    executors, threads = [], []
    try:
        for node in nodes:
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(getattr(node, "node", node))
            thread = threading.Thread(target=executor.spin, daemon=True)
            thread.start()
            executors.append(executor), threads.append(thread)
        yield nodes
    finally:
        for node in nodes:
            stop = getattr(node, "stop", None)
            if stop is not None:
                stop()
        for executor in executors:
            executor.shutdown(timeout_sec=5.0)
        for thread in threads:
            thread.join(timeout=5.0)
        for node in reversed(nodes):
            node.destroy_node()


class Recorder:
    """Thread-safe list of received messages with a wait."""

    def __init__(self, decode=lambda msg: msg):
        self.items = []
        self.decode = decode
        self._arrived = threading.Condition()

    def __call__(self, msg):
        with self._arrived:
            self.items.append(self.decode(msg))
            self._arrived.notify_all()

    def wait_for(self, predicate, timeout=10.0) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: predicate(self.items), timeout)


def wait_until(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise TimeoutError(f"{what} not met within {timeout} s")


def create_probe(context, name="probe"):
    return rclpy.create_node(name, context=context)


def rows_of(output: Path) -> list:
    """The metrics rows of the run in `output` (its metrics.jsonl)."""
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


class TrialGoalSender:
    """
    A probe's RunTrial client, used like the publisher of trial requests it replaces.

    publish(goal) sends a goal (from wire.encode_trial_request); get_subscription_count()
    is 1 once the action server is discovered. `handles` holds the accepted goals' handles
    by trial id, `rejected` the ids of rejected goals.
    """

    def __init__(self, node, name=None):
        from rclpy.action import ActionClient

        from mbpl_ros_interfaces.action import RunTrial
        from mbpl_ros.nodes import wire

        self.client = ActionClient(node, RunTrial, name or wire.RUN_TRIAL_ACTION)
        self.handles, self.rejected, self.results, self.feedback = {}, [], {}, []
        self._lock = threading.Condition()

    def get_subscription_count(self) -> int:
        return int(self.client.server_is_ready())

    def publish(self, goal) -> None:
        trial_id = goal.trial_id
        self.client.send_goal_async(goal, feedback_callback=self._on_feedback).add_done_callback(
            lambda done: self._on_answer(trial_id, done.result()))

    def _on_feedback(self, message) -> None:
        with self._lock:
            self.feedback.append((message.feedback.phase, message.feedback.step))
            self._lock.notify_all()

    def _on_answer(self, trial_id, handle) -> None:
        with self._lock:
            if handle.accepted:
                self.handles[trial_id] = handle
                handle.get_result_async().add_done_callback(
                    lambda done: self._on_result(trial_id, done.result()))
            else:
                self.rejected.append(trial_id)
            self._lock.notify_all()

    def _on_result(self, trial_id, response) -> None:
        with self._lock:
            self.results[trial_id] = response.result
            self._lock.notify_all()

    def wait_for(self, predicate, timeout=10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(predicate, timeout)


def observe_trial_goals(node, recorder, namespace="", **kwargs):
    """Subscribe `recorder` to the trial requests (TrialRequest) the trainer sends."""
    from mbpl_ros_interfaces.action import RunTrial
    from service_msgs.msg import ServiceEventInfo
    from mbpl_ros.nodes import wire

    def on_event(event):
        if event.info.event_type == ServiceEventInfo.REQUEST_SENT and event.request:
            recorder(event.request[0].goal)

    topic = (f"/{namespace}/" if namespace else "") + wire.TRIAL_GOAL_EVENTS_TOPIC
    return node.create_subscription(RunTrial.Impl.SendGoalService.Event, topic, on_event,
                                    wire.EVENTS_QOS, **kwargs)
