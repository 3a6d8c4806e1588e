"""
Peg-in-hole through the ROS node graph against `mbpl train`: the same numbers, seed by seed.

For each training seed: `mbpl sim`'s graph (config/sim_reacher_2link.yaml, lockstep, one
process: sim_robot with the task's block, lqr_controller, sample_collector, dynamics_fitter,
gps_trainer over DDS) runs the experiment (default config/peg_insertion.yaml), then `mbpl
train` runs it offline with the same seed.

Run: .venv/bin/python bench/peg_graph.py [--config FILE] [--seeds 0 1 2] [--output DIR]
Prints per seed: the largest relative difference over every metrics value (but wall_s)
between the two runs, the first iteration with every hole inserted and the holes inserted
after the last iteration (both runs), both wall-clock times; then medians.
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
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from mdgps_graph import graph_and_offline, largest_relative_difference  # noqa: E402
from mbpl_ros.experiment import load_experiment  # noqa: E402

CONFIG = PACKAGE / "config" / "peg_insertion.yaml"
SIM_CONFIG = PACKAGE / "config" / "sim_reacher_2link.yaml"


def insertion(rows, success_m: float) -> tuple:
    """Return the first iteration with every hole inserted (None: never), and the holes in last."""
    inserted = [sum(d < success_m for d in row["final_distance_m"]) for row in rows]
    every = [row["iteration"] for row, n in zip(rows, inserted)
             if n == len(row["final_distance_m"])]
    return (every[0] if every else None), inserted[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", default=str(CONFIG), help="experiment YAML with fixtures")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--output", help="directory for the runs (default: a temporary one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    path = Path(args.config).resolve()
    config = load_experiment(path)
    output = Path(args.output or tempfile.mkdtemp(prefix="mbpl_peg_graph_"))
    results = []
    for seed in args.seeds:
        graph_rows, graph_s, offline_rows, offline_s = graph_and_offline(config, path, output,
                                                                         seed)
        difference = largest_relative_difference(graph_rows, offline_rows)
        (first_g, end_g), (first_t, end_t) = (insertion(rows, config.success_distance_m)
                                              for rows in (graph_rows, offline_rows))
        holes = len(config.conditions)
        results.append((difference, graph_s, offline_s))
        print(f"seed {seed}: metrics differ by at most {difference:.1e} (relative); every hole "
              f"inserted first at iteration {first_g} (graph) / {first_t} (mbpl train), "
              f"{end_g}/{holes} and {end_t}/{holes} inserted at the end; "
              f"{graph_s:.0f} s through the graph, {offline_s:.0f} s offline", flush=True)
    table = np.array(results)
    print(f"median over seeds {args.seeds}: difference {np.median(table[:, 0]):.1e}; "
          f"{np.median(table[:, 1]):.0f} s through the graph vs {np.median(table[:, 2]):.0f} s "
          "offline")
    print(f"runs in {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
