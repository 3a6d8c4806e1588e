"""
Timing of the KL-constrained trajectory optimisation at T=100, dX=20, dU=7.

Runs a chain of LQR-FLM-like updates on random well-posed problems (each update's anchor
is the previous controller, η starts from the previous η; the first update starts cold at
η = 1) and reports per-call milliseconds, single-threaded BLAS and default threading.

    python bench/traj_opt.py [--T 100 --dX 20 --dU 7 --chains 5 --steps 6]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mbpl_ros.core.traj_opt import expected_cost, forward_pass, optimize_trajectory

# bench/ is on sys.path when this runs as a script.
from compute import random_trajopt_problem as random_problem


def run(args) -> dict[str, list[float]]:
    times = {"cold search": [], "warm search": [], "forward+cost": []}
    evaluations = []
    for chain in range(args.chains):
        rng = np.random.default_rng(chain)
        dynamics, cost, anchor = random_problem(rng, args.T, args.dX, args.dU)
        eta = 1.0
        for step in range(args.steps):
            # step_mult varies between iterations.
            kl_step = args.kl_step * args.T * rng.uniform(0.3, 3.0)
            start = time.perf_counter()
            controller, eta, info = optimize_trajectory(dynamics, cost, anchor, kl_step,
                                                        eta_init=eta)
            elapsed_ms = 1e3 * (time.perf_counter() - start)
            times["cold search" if step == 0 else "warm search"].append(elapsed_ms)
            evaluations.append(info["evaluations"])
            start = time.perf_counter()
            expected_cost(forward_pass(controller, dynamics), cost)
            times["forward+cost"].append(1e3 * (time.perf_counter() - start))
            anchor = controller
            # The next iteration's model differs a little from this one's.
            dynamics.F = dynamics.F + 0.002 * rng.normal(size=dynamics.F.shape)
    times["evaluations/search"] = evaluations
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--dX", type=int, default=20)
    parser.add_argument("--dU", type=int, default=7)
    parser.add_argument("--kl-step", type=float, default=0.2, help="KL per time step")
    parser.add_argument("--chains", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    for threads in (1, None):
        with threadpool_limits(limits=threads):
            run(args)                                          # warm up caches and allocator
            result = run(args)
        print(f"BLAS threads: {threads or 'default'}  (T={args.T}, dX={args.dX}, dU={args.dU})")
        for name, values in result.items():
            v = np.asarray(values, dtype=float)
            print(f"  {name:20s} median {np.median(v):6.1f}  mean {v.mean():6.1f}  "
                  f"max {v.max():6.1f}")


if __name__ == "__main__":
    main()
