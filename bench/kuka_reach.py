"""
KUKA iiwa reach benchmark: config/kuka_reach.yaml trained for 12 LQR-FLM iterations.

Prints the final end-effector distance of each condition's noise-free controller after
every iteration, whether the goals are met (every condition < 3 cm by iteration 8 and
< 1 cm by iteration 12), and the wall time. Exit status 0 when both are met, 1 if not.

    .venv/bin/python bench/kuka_reach.py [SEED]        (SEED defaults to 0)
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
GOALS = ((8, 0.03), (12, 0.01))      # (iteration, every condition's final distance below, m)


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print(__doc__, file=sys.stderr)
        return 2
    seed = int(argv[0]) if argv else 0
    config = load_experiment(CONFIG)
    start = time.perf_counter()
    # Small matrices: one BLAS thread is faster than several (as in `mbpl train`).
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as output:
        metrics = TrainingRun(config, Path(output), seed, log=io.StringIO()).run(ITERATIONS)
    wall = time.perf_counter() - start

    distances = np.array([row["final_distance_m"] for row in metrics])      # (iterations + 1, M)
    M = distances.shape[1]
    print(f"KUKA reach ({CONFIG.relative_to(ROOT)}), seed {seed}, {M} conditions, "
          f"{config.rollouts_per_condition} rollouts each per iteration, T={config.T}")
    print(f"iteration | {'final distance (cm) per condition':<{8 * M - 1}s} | max (cm)")
    for row, d in zip(metrics, distances):
        print(f"{row['iteration']:9d} | " + " ".join(f"{100 * x:7.2f}" for x in d)
              + f" | {100 * d.max():7.2f}")
    met_all = True
    for iteration, bound in GOALS:
        worst = distances[iteration].max()
        met = bool(worst < bound)
        met_all &= met
        print(f"goal: every condition < {100 * bound:.0f} cm at iteration {iteration:2d}: "
              f"{'MET' if met else 'NOT MET'} (worst {100 * worst:.2f} cm)")
    print(f"wall time: {wall:.1f} s ({wall / ITERATIONS:.2f} s per iteration, sampling and "
          "evaluation included)")
    return 0 if met_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
