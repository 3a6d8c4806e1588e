"""Offline training on the PyBullet arm, no ROS: `mbpl train`.

Each iteration draws N noisy rollouts per condition from the current local controllers,
runs one LQR-FLM update, then measures the new controllers without noise. Everything an
iteration produced is written before the next begins: a line of metrics.jsonl and a
checkpoint, both written atomically.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

from mbpl_ros.core.controller import LinearGaussianController, smoothed_noise
from mbpl_ros.core.lqr_flm import LqrFlm
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.rollout import final_distance, run_rollout

CHECKPOINT_FORMAT = 1


def collect_rollouts(arm: Arm, config: ExperimentConfig, controllers: list[LinearGaussianController],
                     rng: np.random.Generator) -> Rollouts:
    """N noisy rollouts per condition from `controllers` (M,): X (M·N, T, dX), U (M·N, T, dU)."""
    layout, T, N = config.layout, config.T, config.rollouts_per_condition
    X, U, condition = [], [], []
    for m, (spec, controller) in enumerate(zip(config.conditions, controllers)):
        for _ in range(N):
            noise = smoothed_noise(rng, T, layout.dU, smoothing_sigma=config.exploration.smoothing,
                                   renormalize=config.exploration.renormalize)
            x, u = run_rollout(arm, layout, lambda t, x: controller.act(t, x, noise[t]),
                               spec.initial_positions, spec.target, T)
            X.append(x), U.append(u), condition.append(m)
    return Rollouts(np.stack(X), np.stack(U), np.array(condition))


def evaluate_controllers(arm: Arm, config: ExperimentConfig, controllers, cost) -> tuple[list[float], float]:
    """Noise-free runs of each condition's controller: final distances (M,) and mean total cost."""
    layout, zero = config.layout, np.zeros(config.layout.dU)
    distances, costs = [], []
    for spec, controller in zip(config.conditions, controllers):
        x, u = run_rollout(arm, layout, lambda t, x: controller.act(t, x, zero),
                           spec.initial_positions, spec.target, config.T)
        distances.append(final_distance(x, layout))
        costs.append(float(cost.evaluate(x[None], u[None]).l.sum()))
    return distances, float(np.mean(costs))


def write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class TrainingRun:
    config: ExperimentConfig
    output: Path
    seed: int
    metrics: list[dict] = field(default_factory=list)
    log: TextIO = sys.stderr

    def run(self, iterations: int) -> list[dict]:
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "metrics.jsonl").write_text("")
        rng = np.random.default_rng(self.seed)
        config, start = self.config, time.perf_counter()
        with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
            cost = config.build_cost()
            algorithm = LqrFlm(cost, config.initial_controllers(arm), config.lqr_flm_settings())
            rollouts_total = 0
            self._record(arm, algorithm, cost, iteration=0, rollouts=0, start=start)
            for i in range(1, iterations + 1):
                batch = collect_rollouts(arm, config, algorithm.controllers, rng)
                rollouts_total += batch.N
                reports = algorithm.update(batch)
                self._record(arm, algorithm, cost, iteration=i, rollouts=rollouts_total, start=start,
                             sample_cost=float(np.mean([r.sample_cost for r in reports])),
                             kl_step=float(np.mean([r.kl_step for r in reports])),
                             kl=float(np.mean([r.kl for r in reports])))
                write_atomically(self.output / f"checkpoint_{i:04d}.pkl", pickle.dumps(
                    {"format": CHECKPOINT_FORMAT, "iteration": i, "algorithm": algorithm,
                     "rng": rng.bit_generator.state, "metrics": self.metrics}))
        plot_learning_curve(self.metrics, self.output / "learning_curve.png", config.success_distance_m)
        return self.metrics

    def _record(self, arm, algorithm, cost, *, iteration, rollouts, start, sample_cost=None,
                kl_step=None, kl=None) -> None:
        distances, mean_cost = evaluate_controllers(arm, self.config, algorithm.controllers, cost)
        row = {"iteration": iteration, "rollouts": rollouts, "env_steps": rollouts * self.config.T,
               "mean_cost": mean_cost, "sample_cost": sample_cost, "final_distance_m": distances,
               "kl_step": kl_step, "kl": kl, "wall_s": time.perf_counter() - start}
        self.metrics.append(row)
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        reached = sum(d < self.config.success_distance_m for d in distances)
        print(f"iteration {iteration:3d} | rollouts {rollouts:4d} | cost {mean_cost:10.3f} | "
              f"final distance (cm) {' '.join(f'{100 * d:6.2f}' for d in distances)} | "
              f"reached {reached}/{len(distances)} | {row['wall_s']:6.1f} s", file=self.log, flush=True)


def plot_learning_curve(metrics: list[dict], path: Path, success_distance_m: float) -> None:
    """Cost and final distance (one line per condition) against iteration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [row["iteration"] for row in metrics]
    distances = np.array([row["final_distance_m"] for row in metrics])
    fig, (ax_cost, ax_dist) = plt.subplots(1, 2, figsize=(10, 4))
    ax_cost.plot(iterations, [row["mean_cost"] for row in metrics], marker="o")
    ax_cost.set(xlabel="iteration", ylabel="cost of the noise-free controllers", title="cost")
    for m in range(distances.shape[1]):
        ax_dist.semilogy(iterations, 100 * distances[:, m], marker="o", label=f"condition {m}")
    ax_dist.axhline(100 * success_distance_m, color="k", linestyle="--", label="success")
    ax_dist.set(xlabel="iteration", ylabel="final distance (cm)", title="end-effector to target")
    ax_dist.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
