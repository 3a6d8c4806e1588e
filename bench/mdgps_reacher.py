"""
MDGPS on the 2-link reacher: four local controllers, one policy for unseen starts.

From four local controllers to one policy that reaches from starts it never saw.

The figure of issue 4: the seeded 2-link reacher, at most 12 MDGPS iterations with
4 training conditions x 5 rollouts each (config/reacher_2link_mdgps.yaml), then the
exported TorchScript policy, run noise-free from 20 held-out initial conditions drawn
uniformly inside the box of the training conditions' initial joint angles (never within
0.05 rad of one of them). Success: final fingertip distance below 3 cm. Target: at least
90% of the 20.

Run: .venv/bin/python bench/mdgps_reacher.py [--seeds 0 1 2] [--eval-seed 0]
     [--held-out 20] [--iterations 12] [--output DIR]
Prints, per training seed, the policy's distances from the training conditions after
each iteration, the held-out distances and success rate, and wall-clock times; writes
each run's files (metrics.jsonl, policy.pt, eval.json, ...) under --output.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))

from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun, evaluate_exported_policy  # noqa: E402

CONFIG = PACKAGE / "config" / "reacher_2link_mdgps.yaml"
SUCCESS_DISTANCE_M = 0.03
TARGET_SUCCESS_RATE = 0.9
MAX_ITERATIONS = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the held-out conditions")
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=MAX_ITERATIONS)
    parser.add_argument("--output", help="directory for the runs (default: a temporary one)")
    parser.add_argument("--verbose", action="store_true", help="print every training iteration")
    args = parser.parse_args()
    if not 1 <= args.iterations <= MAX_ITERATIONS:
        parser.error(f"--iterations must be in [1, {MAX_ITERATIONS}] (the issue's budget)")

    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)

    config = load_experiment(args.config)
    config = dataclasses.replace(config, algorithm="mdgps")
    print(f"{config.robot}: {len(config.conditions)} training conditions x "
          f"{config.rollouts_per_condition} rollouts, {args.iterations} MDGPS iterations, "
          f"T={config.T}; policy {list(config.policy.hidden_sizes)} {config.policy.activation}; "
          f"{args.held_out} held-out starts (seed {args.eval_seed}), success < "
          f"{100 * SUCCESS_DISTANCE_M:.0f} cm")
    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="mdgps_reacher_"))
    rates = []
    for seed in args.seeds:
        run_dir = output / f"seed_{seed}"
        log = sys.stderr if args.verbose else io.StringIO()
        start = time.perf_counter()
        with threadpool_limits(limits=1):
            metrics = TrainingRun(config, run_dir, seed, log=log).run(args.iterations)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            result = evaluate_exported_policy(config, run_dir / "policy.pt", args.held_out,
                                              args.eval_seed, SUCCESS_DISTANCE_M)
            eval_s = time.perf_counter() - start
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        rates.append(result["success_rate"])
        print(f"\nseed {seed}: training {train_s:.1f} s, {metrics[-1]['rollouts']} rollouts; "
              "policy from the training starts (cm) by iteration:")
        for row in metrics[1:]:
            controllers = " ".join(f"{100 * d:6.2f}" for d in row["final_distance_m"])
            print(f"  {row['iteration']:2d}: " + " ".join(
                f"{100 * d:6.2f}" for d in row["policy_final_distance_m"])
                + f"   (controllers: {controllers})")
        distances = np.array(result["distances_m"])
        print(f"  held-out (cm): {' '.join(f'{100 * d:.2f}' for d in distances)}")
        print(f"  held-out success {result['successes']}/{result['conditions']} "
              f"({100 * result['success_rate']:.0f}%), "
              f"median {100 * np.median(distances):.2f} cm, "
              f"max {100 * distances.max():.2f} cm; evaluation {eval_s:.1f} s")
    print(f"\nsuccess rate per seed: {', '.join(f'{100 * r:.0f}%' for r in rates)} "
          f"(target >= {100 * TARGET_SUCCESS_RATE:.0f}%)")
    print(f"runs in {output}", file=sys.stderr)   # not in the report: a path of this machine
    return 0 if all(r >= TARGET_SUCCESS_RATE for r in rates) else 1


if __name__ == "__main__":
    sys.exit(main())
