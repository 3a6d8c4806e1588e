"""The `mbpl` command: learning without ROS."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from mbpl_ros.config import ConfigError, check_output_directory
from mbpl_ros.experiment import configuration_reference


def _limit_threads():
    """
    Limit BLAS (within the returned context) and torch to one thread each.

    One thread each for BLAS (within the returned context) and torch: the matrices and
    the policy network are small, and threads cost more than they give.
    """
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    return threadpool_limits(limits=1)


def _check_device(config) -> None:
    """Exit with code 2 when the configured CUDA device is not there (a configuration error)."""
    if config.algorithm != "mdgps" or config.policy.device == "cpu":
        return
    from mbpl_ros.core.policy.network import resolve_device

    try:
        resolve_device(config.policy.device)
    except RuntimeError as error:
        raise ConfigError(f"policy.device: {error}") from None


def _train(args) -> int:
    from mbpl_ros.checkpoint import CheckpointError
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import TrainingRun
    from mbpl_ros.interrupt import interruptible, print_stopped, resume_command
    from mbpl_ros.recording import RecordingError
    from mbpl_ros.runs import default_output, read_run_description, write_run_description
    from mbpl_ros.training import OutputInUse, UnusableBatch, claim_output

    config = load_experiment(args.config)
    if args.algorithm is not None:
        config = dataclasses.replace(config, algorithm=args.algorithm)
    _check_device(config)
    # Checked before anything is written.
    output = check_output_directory(
        args.output if args.output is not None else default_output(args.config), "--output")
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
    run = TrainingRun(config, output, seed, record=not args.no_record, gui=args.gui,
                      allow_incomplete_recording=args.allow_incomplete_recording)
    resume = resume_command(["mbpl", "train"], [
        ("--config", args.config), ("--output", output), ("--algorithm", args.algorithm or False),
        ("--iterations", args.iterations or False),
        ("--seed", False if args.seed is None else args.seed),
        ("--no-record", None if args.no_record else False), ("--resume", None)])
    try:
        with interruptible():
            if not args.resume or read_run_description(output) is None:
                write_run_description(output, args.config, ["mbpl", *args.argv])
            with _limit_threads():
                if args.refit_from is not None:
                    metrics = run.refit(args.refit_from)
                else:
                    metrics = run.run(iterations, resume=args.resume)
    except KeyboardInterrupt:
        if args.refit_from is not None:
            print(f"mbpl train: stopped; the refit in {output} is incomplete: run it again with "
                  "--overwrite", file=sys.stderr)
            return 130
        return print_stopped("mbpl train", output, resume)
    except CheckpointError as error:
        print(f"mbpl: cannot resume: {error}", file=sys.stderr)
        return 2
    except UnusableBatch as error:
        print(f"mbpl train: stopped: {error}", file=sys.stderr)
        return 1
    except (RecordingError, ValueError) as error:
        if args.refit_from is None and not isinstance(error, RecordingError):
            raise
        print(f"mbpl: {error}", file=sys.stderr)
        return 2
    last = metrics[-1]
    reached = sum(d < config.success_distance_m for d in last["final_distance_m"])
    verb = "refit" if args.refit_from is not None else "done"
    summary = (f"{verb} ({config.algorithm}): {reached}/{len(last['final_distance_m'])} "
               "conditions within "
               f"{100 * config.success_distance_m:.1f} cm after {last['iteration']} iterations, "
               f"{last['rollouts']} rollouts")
    if config.algorithm == "mdgps" and last.get("policy_final_distance_m") is not None:
        policy_reached = sum(d < config.success_distance_m
                             for d in last["policy_final_distance_m"])
        summary += ("; the policy reaches "
                    f"{policy_reached}/{len(last['policy_final_distance_m'])}, "
                    f"exported to {output / 'policy.pt'}")
    print(f"{summary}; results in {output}")
    return 0


def _eval(args) -> int:
    import torch  # noqa: F401  (see _limit_threads)

    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import evaluate_exported_policy
    from mbpl_ros.runs import RunError, describe_file

    if args.run_dir is not None:
        return _eval_controllers(args)
    if args.config is None:
        print("mbpl eval: --policy needs --config (the experiment YAML the policy was trained "
              "with)", file=sys.stderr)
        return 2
    kind = describe_file(args.policy)
    if not kind.startswith("a TorchScript module"):
        run = Path(args.policy).parent if Path(args.policy).is_file() else Path(args.policy)
        hint = (f"; for the controllers of a run use: mbpl eval --run {run}"
                if "checkpoint" in kind or "run directory" in kind else "")
        print(f"mbpl eval: --policy {args.policy} is {kind}; expected an exported policy "
              f"(policy.pt, written by `mbpl train` at the end of an mdgps run){hint}",
              file=sys.stderr)
        return 2
    config = load_experiment(args.config)
    try:
        with _limit_threads():
            result = evaluate_exported_policy(config, args.policy, args.conditions, args.seed,
                                              args.success_distance_m)
    except (ValueError, RunError) as error:
        print(f"mbpl: {error}", file=sys.stderr)
        return 2
    for i, row in enumerate(result["held_out"]):
        angles = " ".join(f"{q:+.3f}" for q in row["initial_positions"])
        print(f"held-out {i:3d} | start (rad) {angles} | final distance "
              f"{100 * row['final_distance_m']:7.2f} cm"
              f" | {'reached' if row['success'] else 'missed'}")
    output = Path(args.output) if args.output is not None else Path(args.policy).parent
    output.mkdir(parents=True, exist_ok=True)
    path = output / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"success rate {100 * result['success_rate']:.0f}% "
          f"({result['successes']}/{result['conditions']} "
          f"within {100 * result['success_distance_m']:.1f} cm); distance median "
          f"{100 * result['median_distance_m']:.2f} cm, max {100 * result['max_distance_m']:.2f} "
          "cm; "
          f"written to {path}")
    return 0


def _eval_controllers(args) -> int:
    """`mbpl eval --run RUN`: noise-free runs of a checkpoint's controllers, one per condition."""
    from mbpl_ros.checkpoint import CheckpointError
    from mbpl_ros.offline import evaluate_controllers
    from mbpl_ros.runs import RunError, run_checkpoint, run_config

    run = Path(args.run_dir)
    try:
        config = run_config(run, args.config)
        checkpoint, config = run_checkpoint(run, config, args.iteration)
    except (RunError, CheckpointError) as error:
        print(f"mbpl eval: {error}", file=sys.stderr)
        return 2
    threshold = args.success_distance_m
    if threshold is None:
        threshold = config.success_distance_m
    with _limit_threads():
        distances, mean_cost = evaluate_controllers(config, checkpoint.algorithm.controllers,
                                                    config.build_cost())
    rows = [{"condition": m, "initial_positions": list(c.initial_positions),
             "target": list(c.target), "final_distance_m": d, "success": d < threshold}
            for m, (c, d) in enumerate(zip(config.conditions, distances))]
    for row in rows:
        verdict = "reached" if row["success"] else "missed"
        print(f"condition {row['condition']:3d} | final distance "
              f"{100 * row['final_distance_m']:7.2f} cm | {verdict}")
    result = {"run": str(run), "checkpoint": checkpoint.path.name,
              "iteration": checkpoint.iteration, "algorithm": config.algorithm,
              "robot": config.robot, "T": config.T, "success_distance_m": threshold,
              "mean_cost": mean_cost, "successes": int(sum(r["success"] for r in rows)),
              "conditions": rows}
    output = Path(args.output) if args.output is not None else run
    output.mkdir(parents=True, exist_ok=True)
    path = output / "eval_controllers.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"controllers of iteration {checkpoint.iteration}: {result['successes']}/{len(rows)} "
          f"conditions within {100 * threshold:.1f} cm, mean cost {mean_cost:.3f}; "
          f"written to {path}")
    return 0


def _replay(args) -> int:
    from mbpl_ros.checkpoint import CheckpointError
    from mbpl_ros.replay import replay
    from mbpl_ros.runs import RunError

    if args.output is None and not args.gui:
        print("mbpl replay: give --output FILE.gif|mp4, --gui, or both", file=sys.stderr)
        return 2
    if args.policy:
        import torch  # noqa: F401  (see _limit_threads)
    try:
        with _limit_threads():
            replay(Path(args.run_dir), None if args.output is None else Path(args.output),
                   config_path=args.config, iteration=args.iteration, condition=args.condition,
                   policy=args.policy, held_out=args.held_out, sequence=args.sequence,
                   gui=args.gui, width=args.width, height=args.height)
    except (RunError, CheckpointError) as error:
        print(f"mbpl replay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbpl replay: stopped; nothing was written", file=sys.stderr)
        return 130
    return 0


def _params_reference(args) -> int:
    from mbpl_ros.nodes.reference import parameter_reference

    print(parameter_reference(args.config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mbpl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="learn local controllers (and an MDGPS policy) "
                                              "offline "
                                              "on the PyBullet arm")
    train.add_argument("--config", required=True, help="experiment YAML, e.g. "
                                                       "config/reacher_2link.yaml")
    train.add_argument("--algorithm", choices=("lqr_flm", "mdgps"), help="override the config's "
                                                                         "algorithm")
    train.add_argument("--iterations", type=int, help="override the config's iterations")
    train.add_argument("--output", help="directory for metrics, checkpoints, plot (and policy.pt "
                                        "for mdgps); default: runs/<the experiment file's name>")
    train.add_argument("--seed", type=int, help="override the config's seed (an integer >= 0)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output from its last complete iteration (its "
                            "newest checkpoint); the result is the same as that of an "
                            "uninterrupted run")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in an --output that already holds a run (its checkpoints "
                            "are deleted)")
    train.add_argument("--no-record", action="store_true",
                       help="do not record the rollouts to OUTPUT/rollouts.mcap")
    train.add_argument("--allow-incomplete-recording", action="store_true",
                       help="with --resume: continue even if OUTPUT/rollouts.mcap lacks "
                            "rollouts of the completed iterations (the recording is then "
                            "marked incomplete)")
    train.add_argument("--refit-from", metavar="BAG",
                       help="no new rollouts: replay the iterations recorded in BAG (an mbpl "
                            "rollouts.mcap) through the updates, writing controllers "
                            "(checkpoints) and metrics to --output")
    train.add_argument("--gui", action="store_true",
                       help="show the arm in the PyBullet window (framed on it, targets drawn)")
    train.set_defaults(run=_train)
    evaluate = commands.add_parser(
        "eval", help="run an exported policy from held-out initial conditions drawn inside the "
                     "box of the training conditions' initial joint angles, or (--run) a run's "
                     "controllers from their own conditions")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="exported policy, e.g. runs/mdgps/policy.pt")
    source.add_argument("--run", dest="run_dir", metavar="RUN",
                        help="a run directory: evaluate the controllers of its newest checkpoint "
                             "(or --iteration's), one noise-free rollout per condition")
    evaluate.add_argument("--config", help="the experiment YAML of the policy or run (with --run: "
                                           "default the one RUN/run.json names)")
    evaluate.add_argument("--iteration", type=int,
                          help="with --run: the checkpoint's iteration (default: the newest)")
    evaluate.add_argument("--conditions", type=int, default=20,
                          help="number of held-out initial conditions (or held-out targets, "
                               "where only the targets vary)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out conditions")
    evaluate.add_argument("--success-distance-m", type=float,
                          help="success threshold (m); default: the config's success_distance_m")
    evaluate.add_argument("--output", help="directory for eval.json or eval_controllers.json "
                                           "(default: the policy's directory, or RUN)")
    evaluate.set_defaults(run=_eval)
    replay = commands.add_parser(
        "replay", help="render noise-free rollouts of a run's controllers (or its policy) to a "
                       "GIF or mp4, or show them in the PyBullet window")
    replay.add_argument("run_dir", metavar="RUN",
                        help="a run directory (the --output of mbpl train or mbpl sim)")
    replay.add_argument("--output", help="FILE.gif or FILE.mp4 (mp4 needs ffmpeg)")
    replay.add_argument("--iteration", type=int,
                        help="the controllers of this checkpoint (default: the newest)")
    replay.add_argument("--condition", type=int,
                        help="only this condition (default: all, side by side)")
    replay.add_argument("--policy", action="store_true",
                        help="the exported policy (RUN/policy.pt of an mdgps run) instead of the "
                             "controllers")
    replay.add_argument("--held-out", type=int, metavar="K",
                        help="with --policy: from K held-out starts (drawn as mbpl eval does, "
                             "seed 0)")
    replay.add_argument("--config",
                        help="the run's experiment YAML (default: the one RUN/run.json names)")
    replay.add_argument("--sequence", action="store_true",
                        help="episodes one after another, not side by side")
    replay.add_argument("--width", type=int, default=320, help="width of an episode's frame")
    replay.add_argument("--height", type=int, default=240, help="height of an episode's frame")
    replay.add_argument("--gui", action="store_true",
                        help="also show it in the PyBullet window, in real time")
    replay.set_defaults(run=_replay)
    from mbpl_ros import sim_runner
    sim_runner.add_subparser(commands)   # mbpl sim: the ROS node graph in one process
    nodes = commands.add_parser("params-reference",
                                help="print every node parameter (value under a params file) as "
                                     "Markdown")
    nodes.add_argument("--config", default="config/sim_reacher_2link.yaml", help="ros__parameters "
                                                                                 "YAML")
    nodes.set_defaults(run=_params_reference)
    reference = commands.add_parser("config-reference", help="print every experiment key as "
                                                             "Markdown")
    reference.set_defaults(run=lambda args: print(configuration_reference()) or 0)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "iterations", None) is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    for flag, low in (("seed", 0), ("iteration", 0), ("condition", 0), ("held_out", 1),
                      ("width", 16), ("height", 16)):
        value = getattr(args, flag, None)
        if value is not None and value < low:
            what = " (as the experiment's seed)" if flag == "seed" else ""
            parser.error(f"--{flag.replace('_', '-')} must be >= {low}{what}, got {value}")
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if getattr(args, "gui", False) and not has_display:
        parser.error("--gui opens the PyBullet window, which needs a display (DISPLAY is not "
                     "set); mbpl replay --output FILE.gif renders without one")
    if args.command == "train":
        if args.resume and args.overwrite:
            parser.error("--resume and --overwrite exclude each other")
        if args.refit_from is not None and args.resume:
            parser.error("--refit-from replays a recording from the start; it cannot --resume")
        if args.refit_from is not None and args.iterations is not None:
            parser.error("--refit-from replays every complete iteration of the recording; drop "
                         "--iterations")
    if args.command == "eval":
        if args.conditions < 1:
            parser.error(f"--conditions must be >= 1, got {args.conditions}")
        if args.success_distance_m is not None and not args.success_distance_m > 0:
            parser.error(f"--success-distance-m must be > 0, got {args.success_distance_m}")
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"mbpl: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
