"""
`mbpl sim --robots K`: K simulated robots learning one policy, each in a process of its own.

Robot k runs in namespace /robot_k: sim_robot, sample_collector and lqr_controller
(graph.SIM_NODES + graph.ROBOT_NODES) in one process, `python -m mbpl_ros.multi_robot
--config FILE --namespace robot_k`, so the robots really run in parallel (no shared GIL).
This process runs the trainer's nodes (graph.TRAINER_NODES: gps_trainer with `robots` set,
and the one dynamics_fitter) through sim_runner.run_graph, and ends the robot processes
when it ends.

A robot's node gets the parameters of its section in the file ("lqr_controller", also
"/**/lqr_controller"), overlaid by a section of its namespace ("/robot_1/lqr_controller"),
so one file describes every robot and a robot may differ; lqr_controller's sim_node is its
robot's own sim_robot.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO

#: How long a robot process gets to end after SIGTERM before it is killed (s).
STOP_GRACE_S = 5.0


def robot_parameters(params_file, node_name: str, namespace: str,
                     overrides: Optional[dict] = None) -> dict:
    """Return the parameters of robot `namespace`'s node `node_name` (see the module docstring)."""
    from mbpl_ros.nodes import graph

    values = {**graph.parameter_overrides(params_file, node_name),
              **graph.parameter_overrides(params_file, node_name, f"/{namespace}"),
              **(overrides or {})}
    if node_name == "lqr_controller" and values.get("sim_node", "/sim_robot") == "/sim_robot":
        values["sim_node"] = f"/{namespace}/sim_robot"
    return values


def run_robot(params_file, namespace: str, overrides: Optional[Dict[str, dict]] = None,
              stop: Optional[threading.Event] = None) -> int:
    """
    Run robot `namespace`'s nodes in this process until `stop` is set, SIGTERM or SIGINT.

    With `overrides`: node name -> {parameter: value}; each node spun in its own thread.
    Returns 0, or 1 when a node cannot start (the reason on stderr).
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from threadpoolctl import threadpool_limits

    from mbpl_ros.config import ConfigError
    from mbpl_ros.nodes import graph
    from mbpl_ros.nodes.common import NodeParameterError
    from mbpl_ros.nodes.sim_robot import SimRobotParameterError
    from mbpl_ros.sim_runner import shut_down

    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    overrides = overrides or {}
    context = Context()
    rclpy.init(context=context, args=[])
    nodes, executors, threads = [], [], []
    try:
        with threadpool_limits(limits=1):
            for name in [spec.name for spec in graph.SIM_NODES] + list(graph.ROBOT_NODES):
                spec = graph.node_spec(name)
                parameters = robot_parameters(params_file, name, namespace,
                                              overrides.get(name))
                try:
                    node = graph.load_node_class(spec)(
                        context=context, namespace=f"/{namespace}",
                        parameter_overrides=graph.as_rclpy_parameters(parameters))
                except (NodeParameterError, SimRobotParameterError, ConfigError) as error:
                    print(f"/{namespace}/{name} cannot start: {error}", file=sys.stderr)
                    return 1
                nodes.append(node)
                executor = SingleThreadedExecutor(context=context)
                executor.add_node(node)
                thread = threading.Thread(target=executor.spin, daemon=True)
                thread.start()
                executors.append(executor), threads.append(thread)
            while not stop.wait(0.2):
                pass
        return 0
    finally:
        shut_down(executors, threads, nodes, context)


def robot_command(params_file, namespace: str,
                  overrides: Optional[Dict[str, dict]] = None) -> List[str]:
    """Return the command line of robot `namespace`'s process."""
    command = [sys.executable, "-m", "mbpl_ros.multi_robot", "--config", str(params_file),
               "--namespace", namespace]
    return command + (["--overrides", json.dumps(overrides)] if overrides else [])


def start_robots(params_file, namespaces: List[str],
                 overrides: Optional[Dict[str, dict]] = None,
                 log_dir: Optional[Path] = None) -> Dict[str, subprocess.Popen]:
    """
    Start one process per robot.

    overrides: node name -> {parameter: value}, for every robot; output to
    log_dir/<namespace>.log, else inherited.
    """
    processes = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    for namespace in namespaces:
        out = None
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(log_dir) / f"{namespace.replace('/', '_')}.log", "w")
        processes[namespace] = subprocess.Popen(
            robot_command(params_file, namespace, overrides), env=env, stdout=out,
            stderr=subprocess.STDOUT if out is not None else None)
        if out is not None:
            out.close()
    return processes


def stop_robots(processes: Dict[str, subprocess.Popen]) -> None:
    """SIGTERM each robot process (by its pid), then SIGKILL one that outlives STOP_GRACE_S."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_robots(params_file, count: int, overrides: Optional[Dict[str, dict]] = None,
               log: Optional[TextIO] = None, timeout_s: Optional[float] = None,
               log_dir: Optional[Path] = None) -> List[dict]:
    """
    Run `count` robot processes and, here, the trainer's nodes (see the module docstring).

    Returns the trainer's metrics rows (sim_runner.GraphError as run_graph).
    """
    from mbpl_ros.nodes import graph
    from mbpl_ros.sim_runner import GraphError, run_graph

    if not 1 <= count <= 64:
        raise GraphError(f"--robots is {count}; allowed: an integer in [1, 64]")
    overrides = dict(overrides or {})
    robot_overrides = {name: overrides.pop(name) for name in list(overrides)
                       if name not in graph.TRAINER_NODES}   # e.g. --experiment's, --gui
    namespaces = graph.robot_namespaces(count)
    trainer = dict(overrides.get("gps_trainer", {}))
    trainer["robots"] = namespaces
    if "controller_node" in trainer:
        del trainer["controller_node"]
    overrides["gps_trainer"] = trainer
    processes = start_robots(params_file, namespaces, robot_overrides, log_dir)
    try:
        return run_graph(params_file, overrides, log=log, timeout_s=timeout_s,
                         only=list(graph.TRAINER_NODES))
    finally:
        stop_robots(processes)


def main(argv: Optional[List[str]] = None) -> int:
    """One robot's process: `python -m mbpl_ros.multi_robot --config FILE --namespace NS`."""
    parser = argparse.ArgumentParser(prog="python -m mbpl_ros.multi_robot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="ros__parameters YAML of the graph")
    parser.add_argument("--namespace", required=True, help="the robot's namespace, e.g. robot_0")
    parser.add_argument("--overrides", default="{}",
                        help="JSON: node name -> {parameter: value}, over the file's")
    args = parser.parse_args(argv)
    from mbpl_ros.dds import use_loopback_only
    use_loopback_only()
    return run_robot(Path(args.config), args.namespace.strip("/"), json.loads(args.overrides))


if __name__ == "__main__":
    sys.exit(main())
