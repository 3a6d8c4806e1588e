"""
Per-iteration compute of the three core stages across problem sizes, and how it scales.

For every T in {50, 100, 200}, dX in {10, 20, 40} (dU = dX // 3) and N in {5, 20}
rollouts per condition, one condition's share of one iteration:

- dynamics fit: GMM prior update with the N new rollouts (warm-started EM; the prior's
  buffer already holds max_rollouts = 20 earlier rollouts) + core.dynamics.fit_dynamics
  with that prior;
- η search: core.traj_opt.optimize_trajectory on a random well-posed problem of that size
  (cold start at η = 1, KL budget 0.5 per step); independent of N by construction, so
  measured once per (T, dX). The number of η values the search tries varies from problem
  to problem, so the time per η value (one batched backward + forward pass each) is
  reported too: it is the quantity that scales cleanly;
- S-step: core.policy.training.train_policy of a fresh (64, 64) ReLU policy on the N·T states,
  a fixed budget of --policy-iterations Adam minibatch steps of 64 states (MDGPS's config
  uses 1000: scale the column linearly).

The rollouts come from a random stable linear system with a mild sin nonlinearity (so the
GMM has structure to fit) under a noisy linear controller. Milliseconds are medians of
--repeats runs, BLAS and torch limited to one thread. The scaling note fits
log(ms) = a + s_T log T + s_dX log dX + s_N log N by least squares over the grid.

    .venv/bin/python bench/compute.py [--repeats 5] [--policy-iterations 200] [--markdown]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mbpl_ros"))

from mbpl_ros.core.controller import LinearGaussianController  # noqa: E402
from mbpl_ros.core.costs import QuadraticCost  # noqa: E402
from mbpl_ros.core.dynamics import (  # noqa: E402
    fit_dynamics, LinearGaussianDynamics, transition_points)
from mbpl_ros.core.gmm import GMMPrior  # noqa: E402

T_VALUES = (50, 100, 200)
DX_VALUES = (10, 20, 40)
N_VALUES = (5, 20)
PRIOR_BUFFER_ROLLOUTS = 20   # the configs' dynamics.prior.max_rollouts


def synthetic_rollouts(rng: np.random.Generator, T: int, dX: int, dU: int, N: int,
                       system: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """X (N, T, dX), U (N, T, dU) of x' = A x + B u + 0.1 sin(x) + noise under u = G x + noise."""
    A, B = system
    gain = rng.normal(scale=0.05, size=(dU, dX))
    X = np.zeros((N, T, dX))
    U = np.zeros((N, T, dU))
    X[:, 0] = rng.normal(scale=0.1, size=(N, dX))
    for t in range(T):
        U[:, t] = X[:, t] @ gain.T + 0.3 * rng.normal(size=(N, dU)) + np.sin(0.1 * t)
        if t + 1 < T:
            X[:, t + 1] = (X[:, t] @ A.T + U[:, t] @ B.T + 0.1 * np.sin(X[:, t])
                           + 0.01 * rng.normal(size=(N, dX)))
    return X, U


def random_system(rng: np.random.Generator, dX: int, dU: int) -> tuple[np.ndarray, np.ndarray]:
    A = rng.normal(size=(dX, dX))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    return A, 0.3 * rng.normal(size=(dX, dU))


def random_trajopt_problem(rng: np.random.Generator, T: int, dX: int, dU: int, dt: float = 0.05):
    """Linear-Gaussian dynamics near the identity, a PD quadratic cost and an anchor controller."""
    Fx = np.eye(dX) + dt * rng.normal(size=(T - 1, dX, dX)) / np.sqrt(dX)
    Fu = dt * rng.normal(size=(T - 1, dX, dU))
    G = 0.01 * rng.normal(size=(T - 1, dX, dX))
    dynamics = LinearGaussianDynamics(np.concatenate([Fx, Fu], axis=2),
                                      0.01 * rng.normal(size=(T - 1, dX)),
                                      G @ G.transpose(0, 2, 1) + 1e-5 * np.eye(dX),
                                      rng.normal(size=dX), 0.01 * np.eye(dX))
    n = dX + dU
    H = rng.normal(size=(T, n, n)) / np.sqrt(n)
    C = 0.1 * H @ H.transpose(0, 2, 1) + np.diag(np.r_[np.ones(dX), 1e-2 * np.ones(dU)])
    cost = QuadraticCost(C, rng.normal(size=(T, n)), np.zeros(T))
    anchor = LinearGaussianController.from_covar(0.1 * rng.normal(size=(T, dU, dX)),
                                                 rng.normal(size=(T, dU)), 0.5 * np.eye(dU))
    return dynamics, cost, anchor


def time_dynamics_fit(rng, T, dX, dU, N, repeats) -> float:
    system = random_system(rng, dX, dU)
    prior = GMMPrior(max_rollouts=PRIOR_BUFFER_ROLLOUTS)
    for _ in range(-(-PRIOR_BUFFER_ROLLOUTS // N)):      # fill the buffer (outside the timer)
        prior.update(transition_points(*synthetic_rollouts(rng, T, dX, dU, N, system)))
    times = []
    for _ in range(repeats):
        X, U = synthetic_rollouts(rng, T, dX, dU, N, system)
        warm = copy.deepcopy(prior)
        start = time.perf_counter()
        warm.update(transition_points(X, U))
        fit_dynamics(X, U, prior=warm)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def time_eta_search(rng, T, dX, dU, repeats) -> tuple[float, float]:
    from mbpl_ros.core.traj_opt import optimize_trajectory

    times, evaluations = [], []
    for _ in range(repeats):
        dynamics, cost, anchor = random_trajopt_problem(rng, T, dX, dU)
        start = time.perf_counter()
        _, _, info = optimize_trajectory(dynamics, cost, anchor, kl_step=0.5 * T, eta_init=1.0)
        times.append(time.perf_counter() - start)
        evaluations.append(info["evaluations"])
    return 1e3 * float(np.median(times)), float(np.median(evaluations))


def time_s_step(rng, T, dX, dU, N, repeats, iterations) -> float:
    from mbpl_ros.core.policy.network import Policy
    from mbpl_ros.core.policy.settings import PolicySettings
    from mbpl_ros.core.policy.training import train_policy

    settings = PolicySettings(hidden_sizes=(64, 64), iterations=iterations, batch_size=64)
    X = rng.normal(size=(N, T, dX))
    target_mean = X @ rng.normal(scale=0.3, size=(dX, dU)) + np.sin(X[..., :dU])
    precision = np.broadcast_to(np.eye(dU), (N, T, dU, dU)).copy()
    times = []
    for _ in range(repeats):
        policy = Policy.from_settings(dX, dU, settings)
        start = time.perf_counter()
        train_policy(policy, X, target_mean, precision, settings)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def log_log_slopes(rows: list[dict], key: str) -> dict[str, float]:
    """Least-squares exponents of ms ≈ c · T^s_T · dX^s_dX · N^s_N over the grid."""
    design = np.array([[1.0, np.log(r["T"]), np.log(r["dX"]), np.log(r["N"])] for r in rows])
    coefficients, *_ = np.linalg.lstsq(design, np.log([r[key] for r in rows]), rcond=None)
    return {"T": coefficients[1], "dX": coefficients[2], "N": coefficients[3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policy-iterations", type=int, default=200)
    parser.add_argument("--quick", action="store_true",
                        help="T in {50, 100}, dX in {10, 20}, 1 repeat")
    parser.add_argument("--markdown", action="store_true", help="print only markdown on stdout")
    args = parser.parse_args()
    T_values, dX_values = ((50, 100), (10, 20)) if args.quick else (T_VALUES, DX_VALUES)
    repeats = 1 if args.quick else args.repeats

    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    log = sys.stderr if args.markdown else sys.stdout

    rows, start = [], time.perf_counter()
    with threadpool_limits(limits=1):
        warm_up = np.random.default_rng(0)          # first torch / LAPACK calls pay one-off costs
        time_s_step(warm_up, 10, 4, 2, 2, 1, 10)
        time_eta_search(warm_up, 10, 4, 2, 1)
        for T, dX in itertools.product(T_values, dX_values):
            dU = dX // 3
            rng = np.random.default_rng(1000 * T + dX)
            eta_ms, evaluations = time_eta_search(rng, T, dX, dU, repeats)
            for N in N_VALUES:
                row = {"T": T, "dX": dX, "dU": dU, "N": N,
                       "fit": time_dynamics_fit(rng, T, dX, dU, N, repeats), "eta": eta_ms,
                       "evaluations": evaluations, "per_eta": eta_ms / evaluations,
                       "s_step": time_s_step(rng, T, dX, dU, N, repeats, args.policy_iterations)}
                rows.append(row)
                print(f"T={T:3d} dX={dX:2d} dU={dU:2d} N={N:2d}: fit {row['fit']:8.1f} ms, "
                      f"η search {eta_ms:8.1f} ms ({evaluations:.0f} η values), "
                      f"S-step {row['s_step']:8.1f} ms",
                      file=log, flush=True)
    total = time.perf_counter() - start

    lines = [f"One condition, one iteration; median of {repeats} runs, 1 BLAS / torch thread; "
             f"S-step = {args.policy_iterations} Adam steps of 64 states, (64, 64) ReLU policy. "
             f"Total {total:.0f} s.", "",
             "| T | dX | dU | N | dynamics fit + GMM prior (ms) | η search (ms) | "
             "η values tried | ms per η value | S-step (ms) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['dX']} | {r['dU']} | {r['N']} | {r['fit']:.1f} | "
                     f"{r['eta']:.1f} | "
                     f"{r['evaluations']:.0f} | {r['per_eta']:.2f} | {r['s_step']:.1f} |")
    lines += ["", "Scaling: least-squares exponents s of ms ∝ T^s_T · dX^s_dX · N^s_N over the "
              "grid (dU = dX // 3 grows with dX):", "",
              "| stage | s_T | s_dX | s_N |", "| --- | ---: | ---: | ---: |"]
    for key, name in (("fit", "dynamics fit + GMM prior"), ("eta", "η search"),
                      ("per_eta", "η search, per η value"), ("s_step", "S-step")):
        s = log_log_slopes(rows, key)
        lines.append(f"| {name} | {s['T']:.2f} | {s['dX']:.2f} | {s['N']:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
