"""The `mbpl` command: learning without ROS."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mbpl_ros.config import ConfigError, check_output_directory
from mbpl_ros.experiment import configuration_reference


def _limit_threads():
    """One thread each for BLAS (within the returned context) and torch: the matrices and
    the policy network are small, and threads cost more than they give."""
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    return threadpool_limits(limits=1)


def _check_device(config) -> None:
    """A configured CUDA device that is not there is a configuration error (exit code 2)."""
    if config.algorithm != "mdgps" or config.policy.device == "cpu":
        return
    from mbpl_ros.core.policy import resolve_device

    try:
        resolve_device(config.policy.device)
    except RuntimeError as error:
        raise ConfigError(f"policy.device: {error}") from None


def _train(args) -> int:
    from mbpl_ros.checkpoint import CheckpointError
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import TrainingRun
    from mbpl_ros.recording import RecordingError
    from mbpl_ros.training import OutputInUse, claim_output

    config = load_experiment(args.config)
    if args.algorithm is not None:
        config = dataclasses.replace(config, algorithm=args.algorithm)
    _check_device(config)
    output = check_output_directory(args.output, "--output")   # before anything is written
    try:
        claim_output(output, resume=args.resume, overwrite=args.overwrite,
                     resume_hint="pass --resume", overwrite_hint="--overwrite")
    except OutputInUse as error:
        print(f"mbpl: {error}", file=sys.stderr)
        return 2
    if config.algorithm == "mdgps":
        import torch  # noqa: F401  (loaded now so that its threads are limited too)
    iterations = args.iterations if args.iterations is not None else config.iterations
    seed = args.seed if args.seed is not None else config.seed
    run = TrainingRun(config, output, seed, record=not args.no_record,
                      allow_incomplete_recording=args.allow_incomplete_recording)
    try:
        with _limit_threads():
            if args.refit_from is not None:
                metrics = run.refit(args.refit_from)
            else:
                metrics = run.run(iterations, resume=args.resume)
    except CheckpointError as error:
        print(f"mbpl: cannot resume: {error}", file=sys.stderr)
        return 2
    except (RecordingError, ValueError) as error:
        if args.refit_from is None and not isinstance(error, RecordingError):
            raise
        print(f"mbpl: {error}", file=sys.stderr)
        return 2
    last = metrics[-1]
    reached = sum(d < config.success_distance_m for d in last["final_distance_m"])
    verb = "refit" if args.refit_from is not None else "done"
    summary = (f"{verb} ({config.algorithm}): {reached}/{len(last['final_distance_m'])} conditions within "
               f"{100 * config.success_distance_m:.1f} cm after {last['iteration']} iterations, "
               f"{last['rollouts']} rollouts")
    if config.algorithm == "mdgps" and last.get("policy_final_distance_m") is not None:
        policy_reached = sum(d < config.success_distance_m for d in last["policy_final_distance_m"])
        summary += (f"; the policy reaches {policy_reached}/{len(last['policy_final_distance_m'])}, "
                    f"exported to {output / 'policy.pt'}")
    print(f"{summary}; results in {args.output}")
    return 0


def _eval(args) -> int:
    import torch  # noqa: F401  (see _limit_threads)

    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import evaluate_exported_policy

    config = load_experiment(args.config)
    try:
        with _limit_threads():
            result = evaluate_exported_policy(config, args.policy, args.conditions, args.seed,
                                              args.success_distance_m)
    except ValueError as error:
        print(f"mbpl: {error}", file=sys.stderr)
        return 2
    for i, row in enumerate(result["held_out"]):
        angles = " ".join(f"{q:+.3f}" for q in row["initial_positions"])
        print(f"held-out {i:3d} | start (rad) {angles} | final distance {100 * row['final_distance_m']:7.2f} cm"
              f" | {'reached' if row['success'] else 'missed'}")
    output = Path(args.output) if args.output is not None else Path(args.policy).parent
    output.mkdir(parents=True, exist_ok=True)
    path = output / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"success rate {100 * result['success_rate']:.0f}% ({result['successes']}/{result['conditions']} "
          f"within {100 * result['success_distance_m']:.1f} cm); distance median "
          f"{100 * result['median_distance_m']:.2f} cm, max {100 * result['max_distance_m']:.2f} cm; "
          f"written to {path}")
    return 0


def _params_reference(args) -> int:
    from mbpl_ros.nodes.reference import parameter_reference

    print(parameter_reference(args.config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mbpl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn local controllers (and an MDGPS policy) offline "
                                              "on the PyBullet arm")
    train.add_argument("--config", required=True, help="experiment YAML, e.g. config/reacher_2link.yaml")
    train.add_argument("--algorithm", choices=("lqr_flm", "mdgps"), help="override the config's algorithm")
    train.add_argument("--iterations", type=int, help="override the config's iterations")
    train.add_argument("--output", default="runs/train",
                       help="directory for metrics, checkpoints, plot (and policy.pt for mdgps)")
    train.add_argument("--seed", type=int, help="override the config's seed")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output from its last complete iteration (its newest "
                            "checkpoint); the result is the same as that of an uninterrupted run")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in an --output that already holds a run (its checkpoints are deleted)")
    train.add_argument("--no-record", action="store_true",
                       help="do not record the rollouts to OUTPUT/rollouts.mcap")
    train.add_argument("--allow-incomplete-recording", action="store_true",
                       help="with --resume: continue even if OUTPUT/rollouts.mcap lacks "
                            "rollouts of the completed iterations (the recording is then "
                            "marked incomplete)")
    train.add_argument("--refit-from", metavar="BAG",
                       help="no new rollouts: replay the iterations recorded in BAG (an mbpl rollouts.mcap) "
                            "through the updates, writing controllers (checkpoints) and metrics to --output")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser(
        "eval", help="run an exported policy from held-out initial conditions drawn inside the box "
                     "of the training conditions' initial joint angles")
    evaluate.add_argument("--policy", required=True, help="exported policy, e.g. runs/train/policy.pt")
    evaluate.add_argument("--config", required=True, help="the experiment YAML the policy was trained with")
    evaluate.add_argument("--conditions", type=int, default=20, help="number of held-out initial conditions")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out conditions")
    evaluate.add_argument("--success-distance-m", type=float,
                          help="success threshold (m); default: the config's success_distance_m")
    evaluate.add_argument("--output", help="directory for eval.json (default: the policy's directory)")
    evaluate.set_defaults(run=_eval)
    from mbpl_ros import sim_runner
    sim_runner.add_subparser(commands)   # mbpl sim: the ROS node graph in one process
    nodes = commands.add_parser("params-reference",
                                help="print every node parameter (value under a params file) as Markdown")
    nodes.add_argument("--config", default="config/sim_reacher_2link.yaml", help="ros__parameters YAML")
    nodes.set_defaults(run=_params_reference)
    reference = commands.add_parser("config-reference", help="print every experiment key as Markdown")
    reference.set_defaults(run=lambda args: print(configuration_reference()) or 0)
    args = parser.parse_args(argv)
    if getattr(args, "iterations", None) is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    if args.command == "train":
        if args.resume and args.overwrite:
            parser.error("--resume and --overwrite exclude each other")
        if args.refit_from is not None and args.resume:
            parser.error("--refit-from replays a recording from the start; it cannot --resume")
        if args.refit_from is not None and args.iterations is not None:
            parser.error("--refit-from replays every complete iteration of the recording; drop --iterations")
    if args.command == "eval":
        if args.conditions < 1:
            parser.error(f"--conditions must be >= 1, got {args.conditions}")
        if args.seed < 0:
            parser.error(f"--seed must be >= 0, got {args.seed}")
        if args.success_distance_m is not None and not args.success_distance_m > 0:
            parser.error(f"--success-distance-m must be > 0, got {args.success_distance_m}")
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"mbpl: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
