"""
MDGPS through the ROS node graph against `mbpl train`: the same policy, the same success.

For each training seed: `mbpl sim`'s graph (config/sim_reacher_2link.yaml, lockstep, one
process: sim_robot, lqr_controller, sample_collector, dynamics_fitter, gps_trainer over DDS)
runs config/reacher_2link_mdgps.yaml (or --config's MDGPS experiment, e.g. the visuomotor
config/reacher_2link_vision.yaml: sim_robot's camera topic, an image policy), then
`mbpl train` runs it offline with the same seed; both exported policies go through
`mbpl eval`'s held-out test (20 held-out starts or targets, eval seed 0, success below
3 cm).

Run: .venv/bin/python bench/mdgps_graph.py [--config YAML] [--seeds 0 1 2] [--output DIR]
Prints per seed: the largest relative difference over every metrics value (but wall_s)
between the two runs, both held-out success rates and both wall-clock times; then medians.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun, evaluate_exported_policy  # noqa: E402

CONFIG = PACKAGE / "config" / "reacher_2link_mdgps.yaml"
SIM_CONFIG = PACKAGE / "config" / "sim_reacher_2link.yaml"


def largest_relative_difference(rows, reference) -> float:
    """Max |a - b| / max(|b|, 1e-12) over every metrics value but wall_s."""
    worst = 0.0
    for row, expected in zip(rows, reference):
        for key, value in expected.items():
            if key == "wall_s" or value is None:
                continue
            a, b = np.asarray(row[key], float), np.asarray(value, float)
            worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))))
    return worst


def graph_and_offline(config, config_path: Path, output: Path, seed: int) -> tuple:
    """
    Run the experiment through `mbpl sim`'s graph, then offline, with one training seed.

    Returns (graph_rows, graph_s, offline_rows, offline_s): both runs' metrics rows and
    wall-clock times; the runs are written under output/graph_<seed> and train_<seed>.
    """
    from threadpoolctl import threadpool_limits

    from mbpl_ros import sim_runner
    from mbpl_ros.nodes import graph

    overrides = {spec.name: {"experiment_config": str(config_path)}
                 for spec in graph.nodes(with_sim=True)}
    overrides["gps_trainer"].update(output_dir=str(output / f"graph_{seed}"), seed=seed)
    start = time.perf_counter()
    graph_rows = sim_runner.run_graph(SIM_CONFIG, overrides)
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        run = TrainingRun(config, output / f"train_{seed}", seed, log=io.StringIO())
        offline_rows = run.run(config.iterations)
    return graph_rows, graph_s, offline_rows, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="an MDGPS experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--output", help="directory for the runs (default: a temporary one)")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    config = load_experiment(args.config)
    if config.algorithm != "mdgps":
        parser.error(f"{args.config}: algorithm {config.algorithm!r}; allowed: mdgps")
    output = Path(args.output or tempfile.mkdtemp(prefix="mbpl_mdgps_graph_"))
    results = []
    for seed in args.seeds:
        graph_rows, graph_s, offline_rows, offline_s = graph_and_offline(config, args.config,
                                                                         output, seed)
        success = {}
        for name in ("graph", "train"):
            with threadpool_limits(limits=1):
                result = evaluate_exported_policy(config, output / f"{name}_{seed}" / "policy.pt",
                                                  20, 0)
            (output / f"{name}_{seed}" / "eval.json").write_text(
                json.dumps(result, indent=2) + "\n")
            success[name] = result["success_rate"]
        difference = largest_relative_difference(graph_rows, offline_rows)
        results.append((seed, difference, success["graph"], success["train"], graph_s, offline_s))
        print(f"seed {seed}: metrics differ by at most {difference:.1e} (relative); held-out "
              f"success graph {100 * success['graph']:.0f}%, "
              f"mbpl train {100 * success['train']:.0f}%; "
              f"{graph_s:.0f} s through the graph, {offline_s:.0f} s offline", flush=True)
    table = np.array([row[1:] for row in results])
    print(f"median over seeds {args.seeds}: difference {np.median(table[:, 0]):.1e}, held-out "
          f"success graph {100 * np.median(table[:, 1]):.0f}%, "
          f"mbpl train {100 * np.median(table[:, 2]):.0f}%; {np.median(table[:, 3]):.0f} s vs "
          f"{np.median(table[:, 4]):.0f} s")
    print(f"runs in {output}", file=sys.stderr)   # not in the report: a path of this machine
    return 0


if __name__ == "__main__":
    sys.exit(main())
