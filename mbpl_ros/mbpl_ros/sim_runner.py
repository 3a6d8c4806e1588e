"""
`mbpl sim`: run the whole ROS node graph in one process, learning on the simulated arm.

`mbpl sim`: the whole ROS node graph — sim_robot and the four learning nodes — in one
process, learning on the simulated arm over real DDS, with the same outputs as `mbpl train`
(metrics.jsonl, checkpoints, learning_curve.png).

The node set and each node's parameters come from mbpl_ros.nodes.graph and the
ros__parameters file, exactly as the launch files start them. Each node is spun by its own
SingleThreadedExecutor in its own thread, so a busy node (the trainer's update, the
fitter's GMM) never delays the control loop of another.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, TextIO


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register `sim` on the `mbpl` command's subparsers."""
    parser = subparsers.add_parser(
        "sim", help="learn with the ROS node graph (sim_robot + learning nodes) in one process",
        description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    parser.set_defaults(run=run)  # mbpl_ros.cli dispatches on args.run
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="ros__parameters YAML of the graph, "
                             "e.g. config/sim_reacher_2link.yaml")
    parser.add_argument("--iterations", type=int, default=None,
                        help="learning iterations (default: gps_trainer's parameter, else the "
                             "experiment's)")
    parser.add_argument("--output", default=None,
                        help="output directory (default: gps_trainer's output_dir in --config, or "
                             "with --experiment runs/sim_<the experiment's name>)")
    parser.add_argument("--seed", type=int, default=None,
                        help="noise seed (default: the experiment's)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in the output directory from its newest checkpoint")
    start.add_argument("--overwrite", action="store_true",
                       help="start over in an output directory that holds a run (its "
                            "checkpoints are deleted)")
    parser.add_argument("--allow-incomplete-recording", action="store_true",
                        help="with --resume: continue even if rollouts.mcap lacks rollouts of the "
                             "completed iterations (the recording is then marked incomplete)")
    parser.add_argument("--experiment", default=None,
                        help="experiment YAML for every node, replacing the file's "
                             "experiment_config (e.g. config/panda_reach.yaml); the default "
                             "output is then "
                             "runs/sim_<its name>")
    parser.add_argument("--gui", action="store_true",
                        help="show the simulated arm in the PyBullet window (sim_robot's gui "
                             "parameter)")
    parser.add_argument("--robots", type=int, default=None, metavar="K",
                        help="K simulated robots (/robot_0 ...), each robot's nodes in a process "
                             "of its own; the trainer spreads each batch over them")


def run(args: argparse.Namespace) -> int:
    """
    `mbpl sim`: check the arguments, then run the graph.

    `mbpl sim`: check the arguments (nothing is written before), run the graph; a stop by
    SIGINT/SIGTERM ends the current trial (lqr_controller sends its fallback), keeps the
    complete iterations and prints the command that resumes the run (exit status 130).
    """
    from mbpl_ros.config import ConfigError, check_output_directory
    from mbpl_ros.dds import use_loopback_only
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.interrupt import interruptible, print_stopped, resume_command
    from mbpl_ros.nodes import graph
    from mbpl_ros.nodes.common import NodeParameterError, resolve_experiment_path
    from mbpl_ros.runs import default_output, read_run_description, write_run_description
    from mbpl_ros.training import OutputInUse, claim_output

    use_loopback_only()   # the simulation's graph: reachable from this machine only

    for flag, value, low, high in (("--iterations", args.iterations, 1, 100_000),
                                   ("--seed", args.seed, 0, 2 ** 31 - 1)):
        if value is not None and not low <= value <= high:
            print(f"mbpl sim: {flag} must be an integer in [{low}, {high}], got {value}",
                  file=sys.stderr)
            return 2
    try:
        trainer_file = graph.parameter_overrides(args.config, "gps_trainer")
        named = str(trainer_file.get("experiment_config", "reacher_2link.yaml"))
        experiment = (Path(args.experiment) if args.experiment is not None
                      else resolve_experiment_path(named))
        load_experiment(experiment)
    except (ValueError, ConfigError, NodeParameterError) as error:  # ConfigError: a ValueError too
        print(f"mbpl sim: {error}", file=sys.stderr)
        return 2
    # Named for the experiment unless given: --output, else the file's output_dir unless
    # --experiment replaced the experiment it was written for.
    if args.output is not None:
        output = Path(args.output)
    elif args.experiment is None and trainer_file.get("output_dir"):
        output = Path(str(trainer_file["output_dir"]))
    else:
        output = default_output(experiment, prefix="sim_")
    resuming = args.resume or trainer_file.get("resume") is True
    try:
        resolved = check_output_directory(output, "--output")
        claim_output(output, resume=resuming, overwrite=args.overwrite,
                     resume_hint="pass --resume", overwrite_hint="--overwrite")
    except (ConfigError, OutputInUse) as error:
        print(f"mbpl sim: {error}", file=sys.stderr)
        return 2
    trainer_overrides = {"output_dir": str(resolved)}
    if args.iterations is not None:
        trainer_overrides["iterations"] = args.iterations
    if args.seed is not None:
        trainer_overrides["seed"] = args.seed
    if args.resume:
        trainer_overrides["resume"] = True
    if args.allow_incomplete_recording:
        trainer_overrides["allow_incomplete_recording"] = True
    if args.overwrite:
        trainer_overrides["overwrite"] = True   # the trainer's rule clears the old run
    overrides = {"gps_trainer": trainer_overrides}
    if args.experiment is not None:
        for spec in graph.nodes(with_sim=True):
            overrides.setdefault(spec.name, {})["experiment_config"] = str(experiment.resolve())
    if getattr(args, "gui", False):
        overrides.setdefault("sim_robot", {})["gui"] = True
    resume = resume_command(["mbpl", "sim"], [
        ("--config", args.config), ("--output", output),
        ("--experiment", args.experiment or False), ("--iterations", args.iterations or False),
        ("--seed", False if args.seed is None else args.seed),
        ("--resume", None)])
    try:
        with interruptible():
            if not resuming or read_run_description(output) is None:
                command = ["mbpl", *getattr(args, "argv", ["sim"])]
                write_run_description(output, experiment, command)
            if args.robots is not None:
                from mbpl_ros.multi_robot import run_robots
                metrics = run_robots(args.config, args.robots, overrides, log=sys.stderr)
            else:
                metrics = run_graph(args.config, overrides, log=sys.stderr)
    except (KeyboardInterrupt, GraphInterrupted):
        return print_stopped("mbpl sim", output, resume)
    except GraphError as error:
        print(f"mbpl sim: {error}", file=sys.stderr)
        return 1
    last = metrics[-1]
    distances = " ".join(f"{100 * d:.2f}" for d in last["final_distance_m"])
    print(f"done: final distances (cm) {distances} after "
          f"{last['iteration']} iterations, {last['rollouts']} rollouts; results in {output}")
    return 0


#: dynamics_fitter's state_file in the trainer's output_dir, unless the params file names one.
FITTER_STATE_FILE = "dynamics_fitter.state"


class GraphError(RuntimeError):
    """The graph could not start, or the training stopped with an error."""


class GraphInterrupted(GraphError):
    """SIGINT/SIGTERM (KeyboardInterrupt) stopped the run; the nodes were shut down."""


def run_graph(params_file: str | Path, overrides: Optional[Dict[str, dict]] = None,
              log: Optional[TextIO] = None, timeout_s: Optional[float] = None,
              only: Optional[List[str]] = None) -> List[dict]:
    """
    Run the node graph in this process until gps_trainer finishes; return its metrics rows.

    Start every node of graph.nodes(with_sim=True) with its parameters from `params_file`
    (plus `overrides`: node name -> {parameter: value}), run until gps_trainer finishes, then
    destroy the nodes and shut the context down; the trainer's progress lines go to `log`
    (None: nowhere). Returns the trainer's metrics rows;
    GraphError on a bad parameter, a training error or `timeout_s` passing. only: start
    just these nodes (the rest run elsewhere, e.g. robots in their own processes).
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from threadpoolctl import threadpool_limits

    from mbpl_ros.config import ConfigError
    from mbpl_ros.nodes import graph
    from mbpl_ros.nodes.common import NodeParameterError
    from mbpl_ros.nodes.sim_robot import SimRobotParameterError

    params_file = Path(params_file)
    overrides = overrides or {}
    specs = [spec for spec in graph.nodes(with_sim=True) if only is None or spec.name in only]
    unknown = sorted(set(overrides) - {spec.name for spec in specs})
    if unknown:
        raise GraphError(f"overrides for unknown nodes {unknown}; "
                         f"nodes: {[spec.name for spec in specs]}")
    try:
        parameters = {spec.name: {**graph.parameter_overrides(params_file, spec.name),
                                  **overrides.get(spec.name, {})}
                      for spec in specs}
    except ValueError as error:
        raise GraphError(str(error)) from None
    _check_one_experiment(params_file, parameters)
    if "dynamics_fitter" in parameters and not parameters["dynamics_fitter"].get("state_file"):
        # The fitter's batches and priors live beside the run, so a killed graph resumes exactly.
        output = Path(parameters.get("gps_trainer", {}).get("output_dir", "gps_output"))
        output = output.expanduser().resolve()
        parameters["dynamics_fitter"]["state_file"] = str(output / FITTER_STATE_FILE)
        if parameters.get("gps_trainer", {}).get("overwrite"):
            (output / FITTER_STATE_FILE).unlink(missing_ok=True)   # starting over: not its batches

    context = Context()
    rclpy.init(context=context, args=[])
    nodes, executors, threads = [], [], []
    trainer = None
    try:
        with threadpool_limits(limits=1):  # small matrices: BLAS threads cost more than they give
            for spec in specs:
                node_class = graph.load_node_class(spec)
                kwargs = {"log": log} if spec.name == "gps_trainer" else {}
                try:
                    node = node_class(
                        context=context,
                        parameter_overrides=graph.as_rclpy_parameters(parameters[spec.name]),
                        **kwargs)
                except (NodeParameterError, SimRobotParameterError, ConfigError) as error:
                    raise GraphError(f"{spec.name} cannot start: {error}") from None
                nodes.append(node)
                if spec.name == "gps_trainer":
                    trainer = node
                executor = SingleThreadedExecutor(context=context)
                executor.add_node(node)
                thread = threading.Thread(target=executor.spin, name=f"spin {spec.name}",
                                          daemon=True)
                thread.start()
                executors.append(executor), threads.append(thread)
            if trainer is None:
                raise GraphError("the graph has no gps_trainer node")
            try:
                if not trainer.finished.wait(timeout_s):
                    raise GraphError(f"training did not finish within {timeout_s} s")
            except KeyboardInterrupt:
                trainer.stop()
                raise GraphInterrupted("interrupted") from None
            if trainer.exit_code != 0:
                raise GraphError(f"training stopped: {trainer.error}")
            return list(trainer.metrics)
    finally:
        if trainer is not None:
            trainer.stop()
        shut_down(executors, threads, nodes, context)


def shut_down(executors, threads, nodes, context) -> None:
    """
    Stop the executors and their spin threads, destroy the nodes, shut the context down.

    Stop the executors and their spin threads, destroy the nodes (last started first)
    and shut the context down.
    """
    import rclpy

    for executor in executors:
        executor.shutdown(timeout_sec=5.0)
    for thread in threads:
        thread.join(timeout=5.0)
    for node in reversed(nodes):
        node.destroy_node()
    rclpy.try_shutdown(context=context)


def _check_one_experiment(params_file: Path, parameters: Dict[str, dict]) -> None:
    """
    Raise GraphError unless every node runs the same experiment (and sim_robot its robot).

    A graph whose nodes disagree cannot learn. Names the file, the node, the key and what is
    allowed.
    """
    from mbpl_ros.config import ConfigError
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.nodes.common import NodeParameterError, resolve_experiment_path

    loaded = {}
    for name, values in parameters.items():
        if name == "sim_robot" and not values.get("experiment_config"):
            continue
        try:
            path = resolve_experiment_path(values.get("experiment_config", "reacher_2link.yaml"))
        except NodeParameterError:
            continue   # the node's own start-up says what is wrong with it
        try:
            loaded[name] = (path, load_experiment(path))
        except (ConfigError, ValueError, OSError) as error:
            raise GraphError(f"{params_file}: {name} parameter 'experiment_config' = "
                             f"{str(path)!r} cannot be loaded: {error}") from None
    if not loaded:
        return
    first, (first_path, experiment) = next(iter(loaded.items()))
    for name, (path, config) in loaded.items():
        if config != experiment:
            raise GraphError(f"{params_file}: {name} parameter 'experiment_config' is "
                             f"{str(path)!r} but {first}'s is {str(first_path)!r}; allowed: one "
                             "experiment for every node (--experiment sets it)")
    robot = parameters.get("sim_robot", {}).get("robot")
    if robot is not None and robot != experiment.robot:
        raise GraphError(f"{params_file}: sim_robot parameter 'robot' is {robot!r}; allowed: "
                         f"the experiment's robot {experiment.robot!r} ({first_path})")


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m mbpl_ros.sim_runner --config ...` (the same as `mbpl sim`)."""
    parser = argparse.ArgumentParser(prog="mbpl sim", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
