"""The `mbpl` command: learning without ROS."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mbpl_ros.config import ConfigError
from mbpl_ros.experiment import configuration_reference


def _train(args) -> int:
    from threadpoolctl import threadpool_limits

    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import TrainingRun

    config = load_experiment(args.config)
    iterations = args.iterations if args.iterations is not None else config.iterations
    seed = args.seed if args.seed is not None else config.seed
    # The matrices are small (dX + dU of a few tens): threads cost more than they give.
    with threadpool_limits(limits=1):
        metrics = TrainingRun(config, Path(args.output), seed).run(iterations)
    last = metrics[-1]
    reached = sum(d < config.success_distance_m for d in last["final_distance_m"])
    print(f"done: {reached}/{len(last['final_distance_m'])} conditions within "
          f"{100 * config.success_distance_m:.1f} cm after {last['iteration']} iterations, "
          f"{last['rollouts']} rollouts; results in {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mbpl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn local controllers offline on the PyBullet arm")
    train.add_argument("--config", required=True, help="experiment YAML, e.g. config/reacher_2link.yaml")
    train.add_argument("--iterations", type=int, help="override the config's iterations")
    train.add_argument("--output", default="runs/train", help="directory for metrics, checkpoints, plot")
    train.add_argument("--seed", type=int, help="override the config's seed")
    train.set_defaults(run=_train)
    reference = commands.add_parser("config-reference", help="print every experiment key as Markdown")
    reference.set_defaults(run=lambda args: print(configuration_reference()) or 0)
    args = parser.parse_args(argv)
    if getattr(args, "iterations", None) is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"mbpl: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
