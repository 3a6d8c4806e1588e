"""
Time one whole LQR-FLM iteration (core.lqr_flm.LqrFlm.update) at T=100, dX=20, dU=7, N=5.

One iteration = GMM prior update + dynamics fit + cost expansion + step adjustment +
η search + forward passes, for one condition. Two cases:

  first: a fresh LqrFlm (empty prior, cold EM, no step adjustment yet);
  warm:  an LqrFlm that has already run 4 iterations, so its prior's buffer holds
         20 rollouts (max_rollouts) and EM is warm-started; the timed update adds 5 more.

The rollouts come from a synthetic 7-joint "arm": a damped, mildly nonlinear
double integrator per joint, with an end-effector point that is a fixed linear map of
the joint angles plus a small nonlinearity. The state follows StateLayout(7):
x = [q (7), q̇ (7), p_ee − p_target (3), v_ee (3)], dX = 20, and the cost is the KUKA
reach cost (config/kuka_reach.yaml) from core.costs.build_cost. Every rollout is drawn
from the algorithm's current controller, as in training.

Each timed call gets its own deep copy of the algorithm (copied outside the timer).
Prints median and p90 milliseconds with BLAS limited to 1 thread and with the default
thread count, side by side, then the median share of each stage.

    .venv/bin/python bench/lqr_flm_iteration.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mbpl_ros"))

from mbpl_ros.core.controller import LinearGaussianController, pd_controller  # noqa: E402
from mbpl_ros.core.costs import build_cost, quadratic_cost_model  # noqa: E402
from mbpl_ros.core.dynamics import fit_dynamics  # noqa: E402
from mbpl_ros.core.lqr_flm import LocalModel, LqrFlm, LqrFlmSettings  # noqa: E402
from mbpl_ros.core.rollouts import Rollouts, StateLayout  # noqa: E402
from mbpl_ros.core.traj_opt import adjust_step, optimize_trajectory  # noqa: E402

T, N, JOINTS = 100, 5, 7
LAYOUT = StateLayout(n_joints=JOINTS)          # dX = 20, dU = 7
DT = 0.05
WARM_ITERATIONS = 4                            # 4 × N = 20 rollouts in the prior's buffer
COST_SPEC = {"action": {"weight": 1e-4},
             "distance": {"l2": 10.0, "l1": 1.0, "alpha": 1e-5, "ramp": "linear",
                          "final_multiplier": 5.0}}


class SyntheticArm:
    """
    A damped double integrator per joint, with an end-effector point.

    Per joint q̈ = (u − g)/m − d q̇ + 0.5 sin(q), with an end-effector point
    p = J q + 0.02 sin(2 q) summed through a second map: smooth, stable over 5 s, and
    nonlinear enough that the GMM prior has structure to find.
    """

    def __init__(self, rng: np.random.Generator):
        self.inertia = rng.uniform(0.5, 2.0, JOINTS)           # (7,)
        self.gravity = rng.normal(scale=2.0, size=JOINTS)       # (7,) constant load
        self.damping = 0.5
        self.jacobian = rng.normal(scale=0.15, size=(3, JOINTS))
        self.curvature = rng.normal(scale=0.02, size=(3, JOINTS))
        self.q0 = rng.uniform(-0.5, 0.5, JOINTS)
        self.target = self._point(rng.uniform(-0.5, 0.5, JOINTS)[None])[0]

    def _point(self, q):
        return q @ self.jacobian.T + np.sin(2.0 * q) @ self.curvature.T

    def _state(self, q, qd):
        point_velocity = qd @ self.jacobian.T + (2.0 * np.cos(2.0 * q) * qd) @ self.curvature.T
        return np.concatenate([q, qd, self._point(q) - self.target, point_velocity], axis=1)

    def initial_controller(self) -> LinearGaussianController:
        x0 = np.zeros(LAYOUT.dX)
        x0[LAYOUT.position] = self.q0
        return pd_controller(T, x0, LAYOUT.position, LAYOUT.velocity, np.diag(self.inertia),
                             self.gravity, natural_frequency=6.0, accel_noise_std=2.0)

    def rollouts(self, controller: LinearGaussianController, rng: np.random.Generator) -> Rollouts:
        """N rollouts of `controller`: X (N, T, dX), U (N, T, dU), vectorised over N."""
        q = np.tile(self.q0, (N, 1))
        qd = np.zeros((N, JOINTS))
        X, U = np.empty((N, T, LAYOUT.dX)), np.empty((N, T, LAYOUT.dU))
        for t in range(T):
            X[:, t] = self._state(q, qd)
            noise = rng.standard_normal((N, LAYOUT.dU))
            U[:, t] = X[:, t] @ controller.K[t].T + controller.k[t] + noise @ controller.chol[t].T
            acceleration = ((U[:, t] - self.gravity) / self.inertia - self.damping * qd
                            + 0.5 * np.sin(q))
            qd = qd + DT * acceleration
            q = q + DT * qd
        return Rollouts(X, U, np.zeros(N, dtype=int))


def make_algorithms(seed: int = 0):
    """(fresh LqrFlm, its first batch), (LqrFlm after WARM_ITERATIONS updates, its next batch)."""
    rng = np.random.default_rng(seed)
    arm = SyntheticArm(rng)
    cost = build_cost(COST_SPEC, LAYOUT, T)
    algorithm = LqrFlm(cost, [arm.initial_controller()], LqrFlmSettings())
    first = (copy.deepcopy(algorithm), arm.rollouts(algorithm.controllers[0], rng))
    for _ in range(WARM_ITERATIONS):
        algorithm.update(arm.rollouts(algorithm.controllers[0], rng))
    warm = (algorithm, arm.rollouts(algorithm.controllers[0], rng))
    assert algorithm.conditions[0].prior.n_rollouts == WARM_ITERATIONS * N
    return {"first iteration": first, f"warm prior ({WARM_ITERATIONS * N} rollouts)": warm}


def time_update(algorithm: LqrFlm, batch: Rollouts, repeats: int) -> np.ndarray:
    """Milliseconds (repeats,) of algorithm.update(batch), each on a fresh copy."""
    times = []
    for _ in range(repeats):
        trial = copy.deepcopy(algorithm)
        start = time.perf_counter()
        trial.update(batch)
        times.append(1e3 * (time.perf_counter() - start))
    return np.asarray(times)


def time_stages(algorithm: LqrFlm, batch: Rollouts, repeats: int) -> dict[str, float]:
    """
    Time each stage of update(): median milliseconds per stage.

    The stages run through the same public functions in the same order (a breakdown; the
    totals above are the real calls).
    """
    stages = {"prior update + dynamics fit": [], "cost expansion": [], "step adjustment": [],
              "η search": [], "forward pass (predicted cost)": []}
    for _ in range(repeats):
        trial = copy.deepcopy(algorithm)
        state, X, U = trial.conditions[0], batch.X, batch.U
        marks = [time.perf_counter()]
        state.prior.update(np.concatenate([X[:, :-1], U[:, :-1], X[:, 1:]], axis=2))
        dynamics = fit_dynamics(X, U, prior=state.prior,
                                regularization=trial.settings.dynamics.regularization)
        marks.append(time.perf_counter())
        # update() evaluates the cost twice: the sample cost and the model.
        trial.cost.evaluate(X, U).l.sum(axis=1)
        cost_model = quadratic_cost_model(X, U, trial.cost.evaluate(X, U))
        marks.append(time.perf_counter())
        local = LocalModel(dynamics, cost_model)
        if state.previous_model is not None:
            state.step_mult = adjust_step(
                state.step_mult, state.previous_model.estimate_cost(state.previous_controller),
                state.previous_model.estimate_cost(state.controller),
                local.estimate_cost(state.controller),
                settings=trial.settings.trajectory_optimization)
        marks.append(time.perf_counter())
        controller, _, _ = optimize_trajectory(
            dynamics, cost_model, state.controller,
            kl_step=trial.settings.trajectory_optimization.kl_step * state.step_mult * T,
            eta_init=state.eta, settings=trial.settings.eta_search)
        marks.append(time.perf_counter())
        local.estimate_cost(controller)
        marks.append(time.perf_counter())
        for name, start, stop in zip(stages, marks[:-1], marks[1:]):
            stages[name].append(1e3 * (stop - start))
    return {name: float(np.median(values)) for name, values in stages.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--target-ms", type=float, default=50.0)
    args = parser.parse_args()
    blas = ", ".join(f"{lib['internal_api']}×{lib['num_threads']}"
                     for lib in threadpool_info()) or "none found"
    print(f"One LQR-FLM iteration, T={T} dX={LAYOUT.dX} dU={LAYOUT.dU} N={N}, one condition; "
          f"{args.repeats} repeats; BLAS pools: {blas}")

    cases = make_algorithms()
    totals, breakdowns = {}, {}
    for label, limit in (("1 thread", 1), ("default", None)):
        with threadpool_limits(limits=limit):
            for case, (algorithm, batch) in cases.items():
                time_update(algorithm, batch, 2)          # warm up caches and allocator
                totals[case, label] = time_update(algorithm, batch, args.repeats)
                breakdowns[case, label] = time_stages(algorithm, batch, max(5, args.repeats // 2))

    labels = ("1 thread", "default")
    header = (f"{'case':28s}" + "".join(f" | {'BLAS ' + label:^19s}" for label in labels)
              + f" | median < {args.target_ms:.0f} ms?")
    print(f"\n{header}\n{'':28s}" + f" | {'median':>8s} {'p90':>10s}" * len(labels) + " |")
    print("-" * (len(header) + 8))
    for case in cases:
        row, verdicts = f"{case:28s}", []
        for label in labels:
            t = totals[case, label]
            median, p90 = np.median(t), np.percentile(t, 90)
            verdicts.append(f"{'met' if median < args.target_ms else 'MISSED'} ({label})")
            row += f" | {median:6.1f} ms {p90:6.1f} ms"
        print(row + " | " + ", ".join(verdicts))

    print("\nMedian ms per stage (the same functions, called one by one):")
    columns = [(case, label) for case in cases for label in labels]
    print(f"{'stage':30s}" + "".join(f" | {case.split()[0] + ', ' + label:>17s}"
                                     for case, label in columns))
    for stage in next(iter(breakdowns.values())):
        print(f"{stage:30s}" + "".join(f" | {breakdowns[column][stage]:17.1f}"
                                       for column in columns))


if __name__ == "__main__":
    main()
