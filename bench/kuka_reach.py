"""
KUKA iiwa reach benchmark: config/kuka_reach.yaml trained for 12 LQR-FLM iterations per seed.

Prints, per seed, the worst condition's noise-free end-effector distance after every
iteration (and seed 0's distance per condition), then the median over the seeds, whether
the goals are met (every condition < 1 cm by iteration 4 and after iteration 12, judged on
the median over the seeds and counted per seed), and the wall time. Exit status 0 when
the median meets both.

    .venv/bin/python bench/kuka_reach.py [SEED ...]        (default: seeds 0-4)
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

CONFIG = PACKAGE / "config" / "kuka_reach.yaml"
ITERATIONS = 12
GOALS = ((4, 0.01), (12, 0.01))      # (iteration, every condition's final distance below, m)


def main(argv: list[str]) -> int:
    if not all(arg.isdigit() for arg in argv):
        print(__doc__, file=sys.stderr)
        return 2
    seeds = [int(arg) for arg in argv] or list(range(5))
    config = load_experiment(CONFIG)
    start = time.perf_counter()
    distances = []                                           # (seeds, iterations + 1, M)
    # Small matrices: one BLAS thread is faster than several (as in `mbpl train`).
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as output:
        for seed in seeds:
            metrics = TrainingRun(config, Path(output) / str(seed), seed,
                                  log=io.StringIO()).run(ITERATIONS)
            distances.append([row["final_distance_m"] for row in metrics])
    wall = time.perf_counter() - start
    distances = 100 * np.array(distances)
    worst = distances.max(axis=2)                            # (seeds, iterations + 1)
    M = distances.shape[2]
    steps = config.rollouts_per_condition * M * config.T
    print(f"KUKA reach ({CONFIG.relative_to(ROOT)}), {M} conditions, "
          f"{config.rollouts_per_condition} rollouts each per iteration ({steps} env steps), "
          f"T={config.T}, seeds {', '.join(map(str, seeds))}")
    print(f"seed {seeds[0]}, final distance (cm) per condition:")
    for iteration, d in enumerate(distances[0]):
        print(f"{iteration:9d} | " + " ".join(f"{x:7.2f}" for x in d) + f" | {d.max():7.2f}")
    print("worst condition's final distance (cm) per iteration:")
    print("     seed | " + " ".join(f"{i:6d}" for i in range(worst.shape[1])))
    for seed, row in zip(seeds, worst):
        print(f"{seed:9d} | " + " ".join(f"{d:6.2f}" for d in row))
    median = np.median(worst, axis=0)
    print("   median | " + " ".join(f"{d:6.2f}" for d in median))
    met_all = True
    for iteration, bound in GOALS:
        met = bool(median[iteration] < 100 * bound)
        met_all &= met
        print(f"goal: every condition < {100 * bound:.0f} cm at iteration {iteration:2d}: "
              f"{'MET' if met else 'NOT MET'} (median over seeds of the worst "
              f"{median[iteration]:.2f} cm; seeds meeting it: "
              f"{int((worst[:, iteration] < 100 * bound).sum())}/{len(seeds)})")
    print(f"wall time: {wall:.1f} s ({wall / ITERATIONS / len(seeds):.2f} s per iteration, "
          "sampling and evaluation included)")
    return 0 if met_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
