"""
LQR-FLM on the 2-link reacher over several seeds: worst final distance per iteration.

Prints, per seed, the worst condition's noise-free final distance after every iteration
of config/reacher_2link.yaml and the environment steps before every condition stays
below the success distance (2 cm) for good (bench/sample_efficiency.py's "stays" rule:
every later evaluation below it, at least 3 of them), then the median over the seeds.
Exit status 0 when that median is at most GOAL_STEPS.

Usage: python bench/reacher_seeds.py [N_SEEDS | SEED ...]   (default 10: seeds 0-9)
"""
import io
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))
sys.path.insert(0, str(ROOT / "bench"))

from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun  # noqa: E402
from sample_efficiency import Curve, steps_to_reach  # noqa: E402

GOAL_STEPS = 1000       # issue 19: every condition stays below 2 cm within 1,000 env steps
CONSECUTIVE = 3


def main(argv: list) -> int:
    if not all(arg.isdigit() for arg in argv):
        print(__doc__, file=sys.stderr)
        return 2
    seeds = (list(range(int(argv[0]))) if len(argv) == 1
             else [int(a) for a in argv] or list(range(10)))
    config = load_experiment(PACKAGE / "config" / "reacher_2link.yaml")
    threshold = config.success_distance_m
    worst, stays = [], []
    start = time.perf_counter()
    with threadpool_limits(limits=1), TemporaryDirectory() as out:
        for seed in seeds:
            run = TrainingRun(config, Path(out) / str(seed), seed, log=io.StringIO())
            metrics = run.run(config.iterations)
            worst.append([max(row["final_distance_m"]) for row in metrics])
            curve = Curve("lqr_flm", seed, [row["env_steps"] for row in metrics], worst[-1],
                          0.0, metrics[-1]["env_steps"])
            stays.append(steps_to_reach(curve, threshold, CONSECUTIVE))
    worst = 100 * np.array(worst)
    steps_per_iteration = config.rollouts_per_condition * len(config.conditions) * config.T
    print(f"reacher_2link, {len(config.conditions)} conditions x "
          f"{config.rollouts_per_condition} rollouts ({steps_per_iteration} env steps per "
          f"iteration), worst condition's final distance (cm) per iteration; "
          f"{time.perf_counter() - start:.1f} s")
    print("seed | " + " ".join(f"{i:6d}" for i in range(worst.shape[1])) + " | stays < "
          f"{100 * threshold:g} cm (env steps)")
    for seed, row, reached in zip(seeds, worst, stays):
        print(f"{seed:4d} | " + " ".join(f"{d:6.2f}" for d in row)
              + f" | {'-' if reached is None else f'{reached:,}'}")
    filled = [np.inf if s is None else s for s in stays]
    median = float(np.median(filled))
    print(f"median env steps until every condition stays < {100 * threshold:g} cm, seeds "
          f"{', '.join(map(str, seeds))}: {median:,.0f} "
          f"({sum(s is not None for s in stays)}/{len(stays)} seeds reached; goal "
          f"<= {GOAL_STEPS:,}: {'MET' if median <= GOAL_STEPS else 'NOT MET'})")
    return 0 if median <= GOAL_STEPS else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
