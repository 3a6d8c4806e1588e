"""
LQR-FLM on the 2-link reacher over several seeds: worst final distance per iteration.

Usage: python bench/reacher_seeds.py [N_SEEDS]   (default 10)
"""
import io
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from threadpoolctl import threadpool_limits

from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import TrainingRun

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder


def main() -> None:
    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    config = load_experiment(PACKAGE / "config" / "reacher_2link.yaml")
    worst = []
    start = time.perf_counter()
    with threadpool_limits(limits=1), TemporaryDirectory() as out:
        for seed in seeds:
            run = TrainingRun(config, Path(out), seed, log=io.StringIO())
            metrics = run.run(config.iterations)
            worst.append([100 * max(row["final_distance_m"]) for row in metrics])
    worst = np.array(worst)
    print(f"reacher_2link, {len(config.conditions)} conditions x "
          f"{config.rollouts_per_condition} rollouts, worst condition's final distance (cm) "
          f"per iteration; {time.perf_counter() - start:.1f} s")
    print("seed | " + " ".join(f"{i:6d}" for i in range(worst.shape[1])))
    for seed, row in zip(seeds, worst):
        print(f"{seed:4d} | " + " ".join(f"{d:6.2f}" for d in row))
    print("seeds with every condition < 2 cm at iteration 6: "
          f"{(worst[:, 6] < 2).sum()}/{len(worst)}; "
          f"< 0.5 cm at iteration 10: {(worst[:, 10] < 0.5).sum()}/{len(worst)}")


if __name__ == "__main__":
    main()
