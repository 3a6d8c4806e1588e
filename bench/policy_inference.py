"""
Per-step CPU latency of the exported (TorchScript) MDGPS policy.

A controller node evaluates the policy once per control tick on a single state, so what
matters is the latency of one (dX,) -> (dU,) call, not throughput. This exports a
dX=20, dU=7, 64x64 policy, loads it back the way a deployment would, and times many
single-state calls: the raw TorchScript module on a float64 tensor, and the numpy
wrapper returned by load_exported_policy (what a ROS node would call). Target: median
below 0.2 ms.

Run: .venv/bin/python bench/policy_inference.py [--calls 20000] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mbpl_ros"))

from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy  # noqa: E402
from mbpl_ros.core.policy.network import Policy  # noqa: E402

TARGET_MS = 0.2


def time_calls(function, argument, calls: int, warmup: int) -> np.ndarray:
    """
    Time `calls` calls: wall-clock milliseconds of each, after `warmup` untimed ones.

    TorchScript's profiling executor optimises the graph during the first calls.
    """
    for _ in range(warmup):
        function(argument)
    durations = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        function(argument)
        durations[i] = clock() - start
    return durations * 1e-6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 is fastest for one small state)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dX, dU, hidden = 20, 7, (64, 64)
    rng = np.random.default_rng(0)
    policy = Policy(dX, dU, hidden, "relu", seed=0)
    policy.fit_normalization(rng.normal(size=(1000, dX)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policy.pt"
        export_torchscript(policy, path, joint_names=[f"joint_{i}" for i in range(dU)])
        exported = load_exported_policy(path)

    state = rng.normal(size=dX)
    state_tensor = torch.from_numpy(state)
    module = exported.module

    def module_call(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    cases = [
        ("TorchScript module, float64 tensor (dX,)", module_call, state_tensor),
        ("load_exported_policy wrapper, numpy (dX,)", exported, state),
    ]
    print(f"policy inference: dX={dX}, dU={dU}, hidden={hidden}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.calls} calls after {args.warmup} warm-up")
    worst_median = 0.0
    for label, function, argument in cases:
        ms = time_calls(function, argument, args.calls, args.warmup)
        median, p99 = np.percentile(ms, [50, 99])
        worst_median = max(worst_median, median)
        print(f"  {label:45s} median {median:.4f} ms   p99 {p99:.4f} ms   "
              f"max {ms.max():.4f} ms")
    verdict = "meets" if worst_median < TARGET_MS else "MISSES"
    print(f"  {verdict} the {TARGET_MS} ms median target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
