"""
Time the dynamics share of one LQR-FLM iteration: GMM prior update + fit_dynamics.

Setting of the speed target: T=100, dX=20, dU=7, N=5 rollouts per iteration, measured
(a) on the first iteration (empty prior, cold-started EM) and (b) with a warm prior
whose buffer already holds >= 20 rollouts (~2000 points), refitted warm-started.
Prints milliseconds (median and max of repeats) with BLAS limited to one thread and
with the default thread count.

    PYTHONPATH=mbpl_ros .venv/bin/python bench/dynamics_fit.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from mbpl_ros.core.dynamics import OnlineDynamics, fit_dynamics, transition_points
from mbpl_ros.core.gmm import GMMPrior

T, DX, DU, N = 100, 20, 7, 5


def make_system(rng):
    """Make a mildly nonlinear, stable system, so that the GMM has structure to find."""
    A = rng.normal(size=(DX, DX))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    B = rng.normal(size=(DX, DU)) * 0.3
    return A, B


def rollouts(rng, system, iteration):
    A, B = system
    X = np.zeros((N, T, DX))
    U = np.zeros((N, T, DU))
    X[:, 0] = rng.normal(scale=0.1, size=(N, DX))
    gain = rng.normal(scale=0.05, size=(DU, DX))
    for t in range(T - 1):
        U[:, t] = (X[:, t] @ gain.T + np.sin(0.1 * t + iteration)
                   + rng.normal(scale=0.3, size=(N, DU)))
        X[:, t + 1] = (X[:, t] @ A.T + U[:, t] @ B.T + 0.1 * np.sin(X[:, t])
                       + rng.normal(scale=0.01, size=(N, DX)))
    U[:, -1] = U[:, -2]
    return X, U


def time_it(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(1e3 * (time.perf_counter() - start))
    return np.median(times), np.max(times)


def bench(repeats):
    rng = np.random.default_rng(0)
    system = make_system(rng)
    batches = [rollouts(rng, system, i) for i in range(6)]

    def first_iteration():
        prior = GMMPrior()
        X, U = batches[0]
        prior.update(transition_points(X, U))
        return fit_dynamics(X, U, prior), prior

    # A prior that has seen 4 iterations (20 rollouts); each timed call copies its state.
    warm = GMMPrior()
    for X, U in batches[:4]:
        warm.update(transition_points(X, U))

    def warm_iteration(prior_template=warm):
        prior = copy.deepcopy(prior_template)
        X, U = batches[4]
        start = time.perf_counter()
        prior.update(transition_points(X, U))
        dynamics = fit_dynamics(X, U, prior)
        return dynamics, prior, 1e3 * (time.perf_counter() - start)

    def fit_only():
        X, U = batches[4]
        return fit_dynamics(X, U)

    online = OnlineDynamics()
    X5, U5 = batches[5]

    def online_add_fit():
        online.add(X5[0], U5[0])
        return online.fit()

    results = {}
    results["first iteration: prior update + fit (cold EM)"] = time_it(first_iteration, repeats)
    warm_times = [warm_iteration()[2] for _ in range(repeats)]
    results["warm prior (20 rollouts in buffer): update + fit"] = (np.median(warm_times),
                                                                   np.max(warm_times))
    results["fit_dynamics without prior"] = time_it(fit_only, repeats)
    results["OnlineDynamics add(1 rollout) + fit"] = time_it(online_add_fit, repeats)
    _, prior = first_iteration()
    _, warm_prior, _ = warm_iteration()
    info = (f"first: K={prior.gmm.n_clusters}, {prior.n_points} points, "
            f"{prior.gmm.n_iterations} EM iterations; "
            f"warm: K={warm_prior.gmm.n_clusters}, {warm_prior.n_points} points, "
            f"{warm_prior.gmm.n_iterations} EM iterations")
    return results, info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    blas = [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info()]
    print(f"T={T} dX={DX} dU={DU} N={N}; BLAS pools: {blas}")
    for label, limit in (("1 BLAS thread", 1), ("default BLAS threads", None)):
        with threadpool_limits(limits=limit):
            results, info = bench(args.repeats)
        print(f"--- {label} ({info})")
        for name, (median, worst) in results.items():
            print(f"  {name:52s} median {median:7.2f} ms   max {worst:7.2f} ms")


if __name__ == "__main__":
    main()
