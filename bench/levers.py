"""
Sample-efficiency levers: one reach config with some settings changed, over seeds.

Trains LQR-FLM from a config of mbpl_ros/config (default reacher_2link) with each --set
KEY=VALUE applied to the YAML first (KEY a dotted path, VALUE parsed as YAML), and
prints per seed the worst condition's noise-free final distance after each iteration
and the environment steps before the worst condition stays below the config's success
distance (bench/sample_efficiency.py's "stays" rule: every later evaluation below it, at
least --consecutive evaluations), then the median over the seeds.

    .venv/bin/python bench/levers.py [--config kuka_reach] [--seeds 0 1 2]
        [--iterations 10] [--set rollouts_per_condition=1 --set exploration.smoothing=1]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))
sys.path.insert(0, str(ROOT / "bench"))

from mbpl_ros.config import read_yaml  # noqa: E402
from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun  # noqa: E402
from sample_efficiency import Curve, steps_to_reach  # noqa: E402


def with_changes(data: dict, changes: list[str]) -> dict:
    """Return the parsed config `data` with each KEY=VALUE of `changes` set (dotted keys)."""
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise SystemExit(f"--set {change!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", default="reacher_2link",
                        help="a config of mbpl_ros/config, without .yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--set", dest="changes", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--consecutive", type=int, default=3)
    args = parser.parse_args()

    source = PACKAGE / "config" / f"{args.config}.yaml"
    data = with_changes(read_yaml(source), args.changes)
    if isinstance(data.get("robot"), str):   # a description file, relative to the config's folder
        data["robot"] = str(source.parent / data["robot"])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / source.name
        path.write_text(yaml.safe_dump(data))
        config = load_experiment(path)
    threshold = config.success_distance_m
    print(f"{args.config} {' '.join(args.changes) or '(as is)'}: "
          f"{config.rollouts_per_condition} rollouts x {len(config.conditions)} conditions x "
          f"T={config.T} per iteration; worst condition's final distance (cm) per iteration")
    stays, start = [], time.perf_counter()
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            metrics = TrainingRun(config, Path(out) / str(seed), seed,
                                  log=io.StringIO()).run(args.iterations)
            worst = [max(row["final_distance_m"]) for row in metrics]
            curve = Curve("lqr_flm", seed, [row["env_steps"] for row in metrics], worst, 0.0,
                          metrics[-1]["env_steps"])
            reached = steps_to_reach(curve, threshold, args.consecutive)
            stays.append(reached)
            print(f"seed {seed:2d}: " + " ".join(f"{100 * d:.2f}" for d in worst)
                  + f" | stays < {100 * threshold:g} cm: "
                  + ("-" if reached is None else f"{reached:,}"), flush=True)
    got = [s for s in stays if s is not None]
    median = np.median([s if s is not None else np.inf for s in stays])
    print(f"median steps, seeds {args.seeds}: {median:,.0f} ({len(got)}/{len(stays)} reached; "
          f"{time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
