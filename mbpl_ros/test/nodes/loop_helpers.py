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
    """A short reacher experiment (few conditions, steps and rollouts) written to `path`;
    `base` names the experiment in config/ it shortens."""
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
    """Each node (or object with a `.node`) spun by its own SingleThreadedExecutor in a
    thread; destroyed afterwards."""
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
