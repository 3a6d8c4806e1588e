"""
Collective learning: one gps_trainer, K simulated robots in realtime, K = 1, 2, 4 in one run.

`mbpl sim --robots K` on config/sim_reacher_2link_realtime.yaml (sim_robot and lqr_controller
in realtime: each trial takes its wall-clock 2.5 s; reacher_2link: 4 conditions × 5 rollouts
= 20 sample trials and 4 evaluation trials per iteration), each robot's nodes in a process of
its own. Done when an iteration with 4 robots takes at most 0.35× the wall time of 1.

Run: .venv/bin/python bench/multi_robot.py [--robots 1 2 4] [--iterations 1] [--seed 0]
     [--output DIR]
Prints per K: the wall time of each iteration (s; the difference of consecutive metrics
rows' wall_s, so start-up and the iteration-0 evaluation are not in it), their median, the
ratio to K = 1's median, and the learning curve (iteration, wall_s, cost, mean final
distance); writes DIR/learning_curve_wall.png (cost against wall time, one line per K).
Takes about (1 + 1/2 + 1/4) × iterations × 65 s plus start-up: ~2 min for one iteration.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

from mbpl_ros.dds import use_loopback_only  # noqa: E402
from mbpl_ros.multi_robot import run_robots  # noqa: E402

SIM_CONFIG = PACKAGE / "config" / "sim_reacher_2link_realtime.yaml"
#: Done when K = 4 takes at most this fraction of K = 1's wall time per iteration.
TARGET_RATIO_4 = 0.35


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    use_loopback_only()
    output = Path(args.output or tempfile.mkdtemp(prefix="multi_robot_"))
    curves, medians = {}, {}
    for count in args.robots:
        run_output = output / f"robots_{count}"
        overrides = {"gps_trainer": {"output_dir": str(run_output), "iterations": args.iterations,
                                     "seed": args.seed, "overwrite": True}}
        rows = run_robots(SIM_CONFIG, count, overrides, log=None,
                          timeout_s=600 * args.iterations, log_dir=run_output / "robots")
        walls = np.diff([row["wall_s"] for row in rows])
        medians[count] = float(np.median(walls))
        curves[count] = [(row["iteration"], row["wall_s"], row["mean_cost"],
                          float(np.mean(row["final_distance_m"]))) for row in rows]
        print(f"K={count}: iteration wall times (s) {' '.join(f'{w:.1f}' for w in walls)}; "
              f"median {medians[count]:.1f} s", flush=True)
    print("\nK  median s/iteration  ratio to K=1")
    for count in args.robots:
        ratio = medians[count] / medians[args.robots[0]] if args.robots[0] == 1 else float("nan")
        print(f"{count:<2} {medians[count]:19.1f}  {ratio:12.3f}")
    print("\nlearning curve: K iteration wall_s cost mean_final_distance_cm")
    for count, curve in curves.items():
        for iteration, wall, cost, distance in curve:
            print(f"{count} {iteration:3d} {wall:8.1f} {cost:10.3f} {100 * distance:8.2f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for count, curve in curves.items():
        ax.plot([c[1] for c in curve], [c[2] for c in curve], marker="o", label=f"{count} robots")
    ax.set(xlabel="wall time (s)", ylabel="cost, noise-free", title="reacher_2link, realtime")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "learning_curve_wall.png", dpi=100)
    print(f"\nfigure: {output / 'learning_curve_wall.png'}")
    if 1 in medians and 4 in medians:
        ratio = medians[4] / medians[1]
        print(f"K=4 / K=1 = {ratio:.3f} (done when <= {TARGET_RATIO_4}): "
              f"{'met' if ratio <= TARGET_RATIO_4 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
