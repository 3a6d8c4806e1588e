"""
Franka Panda reach benchmark: config/panda_reach.yaml, 10 LQR-FLM iterations per seed.

The default seeds are 0-4.

Prints, per seed, the final end-effector distance of each condition's noise-free
controller after every iteration, whether the goal is met (every condition < 3 cm by
iteration 10), and the wall time; then, over the seeds, the median of the worst
condition's distance per iteration and the first iteration from which that median stays
below the config's success distance (1 cm). Exit status 0 when every seed meets the goal.

    .venv/bin/python bench/panda_reach.py [SEED ...]
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))

from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun  # noqa: E402

CONFIG = PACKAGE / "config" / "panda_reach.yaml"
ITERATIONS = 10
GOAL = (10, 0.03)      # (iteration, every condition's final distance below, m)


def run_seed(config, seed: int) -> tuple[np.ndarray, float]:
    """Train one seed: (iterations + 1, M) noise-free final distances (m), wall seconds."""
    start = time.perf_counter()
    # Small matrices: one BLAS thread is faster than several (as in `mbpl train`).
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as output:
        metrics = TrainingRun(config, Path(output), seed, log=io.StringIO()).run(ITERATIONS)
    return np.array([row["final_distance_m"] for row in metrics]), time.perf_counter() - start


def main(argv: list[str]) -> int:
    if not all(arg.isdigit() for arg in argv):
        print(__doc__, file=sys.stderr)
        return 2
    seeds = [int(arg) for arg in argv] or list(range(5))
    config = load_experiment(CONFIG)
    M = len(config.conditions)
    print(f"Panda reach ({CONFIG.relative_to(ROOT)}), {M} conditions, "
          f"{config.rollouts_per_condition} rollouts each per iteration, T={config.T}, "
          f"seeds {seeds}")
    met_all, worst_final, worst_rows = True, [], []
    for seed in seeds:
        distances, wall = run_seed(config, seed)
        print(f"\nseed {seed}\niteration | {'final distance (cm) per condition':<{8 * M - 1}s} "
              "| max (cm)")
        for iteration, d in enumerate(distances):
            print(f"{iteration:9d} | " + " ".join(f"{100 * x:7.2f}" for x in d)
                  + f" | {100 * d.max():7.2f}")
        iteration, bound = GOAL
        worst = distances[iteration].max()
        met_all &= bool(worst < bound)
        worst_final.append(worst)
        worst_rows.append(distances.max(axis=1))
        print(f"goal: every condition < {100 * bound:.0f} cm at iteration {iteration}: "
              f"{'MET' if worst < bound else 'NOT MET'} (worst {100 * worst:.2f} cm); "
              f"wall time {wall:.1f} s ({wall / ITERATIONS:.2f} s per iteration)")
    median = 100 * np.median(worst_rows, axis=0)
    print(f"\nmedian over seeds {', '.join(map(str, seeds))} of the worst condition's final "
          "distance (cm) per iteration: " + " ".join(f"{d:.2f}" for d in median))
    above = np.flatnonzero(median >= 100 * config.success_distance_m)
    first = int(above[-1]) + 1 if above.size else 0
    print(f"median stays < {100 * config.success_distance_m:g} cm from iteration: "
          + (str(first) if first < len(median) else "- (not reached)")
          + f" ({config.rollouts_per_condition * M * config.T} env steps per iteration)")
    print(f"all seeds: worst final distance {100 * max(worst_final):.2f} cm; goal "
          f"{'MET' if met_all else 'NOT MET'}")
    return 0 if met_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
