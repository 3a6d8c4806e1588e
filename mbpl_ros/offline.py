"""Offline training and evaluation on the PyBullet arm, no ROS: `mbpl train`, `mbpl eval`.

Each iteration draws N noisy rollouts per condition from the current local controllers
(or, for MDGPS with policy.sample_on_policy, from the policy), runs one LQR-FLM or MDGPS
update, then measures the new controllers (and the MDGPS policy) without noise.
Everything an iteration produced is written before the next begins: a line of
metrics.jsonl and a checkpoint, both written atomically. An MDGPS run ends by exporting
the policy (TorchScript policy.pt and its description policy.json).

`mbpl eval` runs an exported policy from held-out initial conditions (see
held_out_conditions) and reports the success rate.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

import numpy as np

from mbpl_ros.core.controller import smoothed_noise
from mbpl_ros.core.lqr_flm import LqrFlm
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.robots import ROBOTS
from mbpl_ros.sim.rollout import final_distance, run_rollout

CHECKPOINT_FORMAT = 1
#: Held-out initial conditions are at least this far (rad, Euclidean in joint space)
#: from every training condition's initial joint angles.
HELD_OUT_MIN_SEPARATION_RAD = 0.05

# A mean policy: state x (dX,) -> action (dU,).
MeanPolicy = Callable[[np.ndarray], np.ndarray]


class PolicySampler:
    """The MDGPS policy as a rollout sampler, the interface of LinearGaussianController:
    act(t, x (dX,), noise (dU,)) = μ_θ(x) + L noise, L Lᵀ = covariance (dU, dU)."""

    def __init__(self, policy, covariance: np.ndarray) -> None:
        self.policy = policy
        self.chol = np.linalg.cholesky(covariance)

    def act(self, t: int, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.policy.action_mean(x) + self.chol @ noise


def collect_rollouts(arm: Arm, config: ExperimentConfig, controllers: Sequence,
                     rng: np.random.Generator) -> Rollouts:
    """N noisy rollouts per condition from `controllers` (M,) (anything with
    act(t, x, noise), e.g. LinearGaussianController or PolicySampler):
    X (M·N, T, dX), U (M·N, T, dU)."""
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


def evaluate_policy(arm: Arm, config: ExperimentConfig, policy: MeanPolicy,
                    initial_positions: np.ndarray, targets: np.ndarray,
                    cost=None) -> tuple[list[float], Optional[list[float]]]:
    """Noise-free runs of one state-feedback policy from initial joint angles (K, J) with
    targets (K, 3), T = config.T steps each: final distances (K,) and, given a cost,
    total costs (K,)."""
    layout = config.layout
    distances, costs = [], []
    for q0, target in zip(np.asarray(initial_positions, float), np.asarray(targets, float)):
        x, u = run_rollout(arm, layout, lambda t, x: policy(x), q0, target, config.T)
        distances.append(final_distance(x, layout))
        if cost is not None:
            costs.append(float(cost.evaluate(x[None], u[None]).l.sum()))
    return distances, (costs if cost is not None else None)


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
    """One offline run of config.algorithm (lqr_flm or mdgps) writing into `output`:
    metrics.jsonl, checkpoint_<i>.pkl, learning_curve.png and, for MDGPS, policy.pt and
    policy.json."""

    config: ExperimentConfig
    output: Path
    seed: int
    metrics: list[dict] = field(default_factory=list)
    log: TextIO = sys.stderr

    @property
    def is_mdgps(self) -> bool:
        return self.config.algorithm == "mdgps"

    def _build_algorithm(self, arm: Arm, cost):
        config = self.config
        if not self.is_mdgps:
            return LqrFlm(cost, config.initial_controllers(arm), config.lqr_flm_settings())
        from mbpl_ros.core.mdgps import Mdgps  # imports torch: only for MDGPS runs

        return Mdgps(cost, config.initial_controllers(arm), config.mdgps_settings(self.seed),
                     config.lqr_flm_settings())

    def _samplers(self, algorithm, iteration: int) -> list:
        """What draws iteration `iteration`'s rollouts (M,): the controllers, or from the
        second iteration on the policy when sample_on_policy (it is untrained before)."""
        if self.is_mdgps and self.config.policy.sample_on_policy and iteration > 1:
            return [PolicySampler(algorithm.policy, algorithm.policy_covariance)] * len(self.config.conditions)
        return algorithm.controllers

    def run(self, iterations: int) -> list[dict]:
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "metrics.jsonl").write_text("")
        rng = np.random.default_rng(self.seed)
        config, start = self.config, time.perf_counter()
        with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
            cost = config.build_cost()
            algorithm = self._build_algorithm(arm, cost)
            rollouts_total = 0
            self._record(arm, algorithm, cost, iteration=0, rollouts=0, start=start)
            for i in range(1, iterations + 1):
                batch = collect_rollouts(arm, config, self._samplers(algorithm, i), rng)
                rollouts_total += batch.N
                report = algorithm.update(batch)
                conditions = report.conditions if self.is_mdgps else report
                extra = {"policy_loss": report.policy_loss,
                         "policy_kl": report.policy_kl} if self.is_mdgps else {}
                self._record(arm, algorithm, cost, iteration=i, rollouts=rollouts_total, start=start,
                             sample_cost=float(np.mean([r.sample_cost for r in conditions])),
                             kl_step=float(np.mean([r.kl_step for r in conditions])),
                             kl=float(np.mean([r.kl for r in conditions])), **extra)
                write_atomically(self.output / f"checkpoint_{i:04d}.pkl", pickle.dumps(
                    {"format": CHECKPOINT_FORMAT, "iteration": i, "algorithm": algorithm,
                     "rng": rng.bit_generator.state, "metrics": self.metrics}))
        plot_learning_curve(self.metrics, self.output / "learning_curve.png", config.success_distance_m)
        if self.is_mdgps:
            self._export(algorithm.policy, iterations)
        return self.metrics

    def _export(self, policy, iterations: int) -> Path:
        """policy.pt (TorchScript) and policy.json in the output directory."""
        from mbpl_ros.core.policy import export_torchscript

        config = self.config
        return export_torchscript(
            policy, self.output / "policy.pt", joint_names=ROBOTS[config.robot].joint_names,
            extra_metadata={
                "robot": config.robot, "algorithm": "mdgps", "iterations": iterations,
                "seed": self.seed, "T": config.T, "control_dt": config.control_dt,
                "state_layout": {"n_joints": config.layout.n_joints,
                                 "n_points": config.layout.n_points},
                "training_conditions": [{"initial_positions": list(c.initial_positions),
                                         "target": list(c.target)} for c in config.conditions]})

    def _record(self, arm, algorithm, cost, *, iteration, rollouts, start, sample_cost=None,
                kl_step=None, kl=None, policy_loss=None, policy_kl=None) -> None:
        config = self.config
        distances, mean_cost = evaluate_controllers(arm, config, algorithm.controllers, cost)
        row = {"iteration": iteration, "rollouts": rollouts, "env_steps": rollouts * config.T,
               "mean_cost": mean_cost, "sample_cost": sample_cost, "final_distance_m": distances,
               "kl_step": kl_step, "kl": kl}
        policy_distances = None
        if self.is_mdgps:
            # Before the first S-step there is no policy worth measuring.
            policy_cost = None
            if iteration > 0:
                starts = np.array([c.initial_positions for c in config.conditions], float)
                targets = np.array([c.target for c in config.conditions], float)
                policy_distances, policy_costs = evaluate_policy(
                    arm, config, algorithm.policy.action_mean, starts, targets, cost)
                policy_cost = float(np.mean(policy_costs))
            row.update({"policy_final_distance_m": policy_distances, "policy_mean_cost": policy_cost,
                        "policy_loss": policy_loss, "policy_kl": policy_kl})
        row["wall_s"] = time.perf_counter() - start
        self.metrics.append(row)
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        reached = sum(d < config.success_distance_m for d in distances)
        line = (f"iteration {iteration:3d} | rollouts {rollouts:4d} | cost {mean_cost:10.3f} | "
                f"final distance (cm) {' '.join(f'{100 * d:6.2f}' for d in distances)} | "
                f"reached {reached}/{len(distances)}")
        if policy_distances is not None:
            line += (f" | policy (cm) {' '.join(f'{100 * d:6.2f}' for d in policy_distances)}"
                     f" | policy loss {policy_loss:8.4f}")
        print(f"{line} | {row['wall_s']:6.1f} s", file=self.log, flush=True)


def plot_learning_curve(metrics: list[dict], path: Path, success_distance_m: float) -> None:
    """Cost and final distance (one line per condition) against iteration; for MDGPS the
    policy's cost and distances too (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [row["iteration"] for row in metrics]
    distances = np.array([row["final_distance_m"] for row in metrics])
    policy_rows = [row for row in metrics if row.get("policy_final_distance_m") is not None]
    fig, (ax_cost, ax_dist) = plt.subplots(1, 2, figsize=(10, 4))
    ax_cost.plot(iterations, [row["mean_cost"] for row in metrics], marker="o", label="controllers")
    for m in range(distances.shape[1]):
        ax_dist.semilogy(iterations, 100 * distances[:, m], marker="o", label=f"condition {m}")
    if policy_rows:
        policy_iterations = [row["iteration"] for row in policy_rows]
        ax_cost.plot(policy_iterations, [row["policy_mean_cost"] for row in policy_rows],
                     marker="s", linestyle="--", label="policy")
        ax_cost.legend(fontsize=8)
        policy_distances = np.array([row["policy_final_distance_m"] for row in policy_rows])
        colours = [line.get_color() for line in ax_dist.get_lines()]
        for m in range(policy_distances.shape[1]):
            ax_dist.semilogy(policy_iterations, 100 * policy_distances[:, m], marker="s",
                             linestyle="--", color=colours[m], label=f"policy, condition {m}")
    ax_cost.set(xlabel="iteration", ylabel="total cost, noise-free", title="cost")
    ax_dist.axhline(100 * success_distance_m, color="k", linestyle=":", label="success")
    ax_dist.set(xlabel="iteration", ylabel="final distance (cm)", title="end-effector to target")
    ax_dist.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- evaluation


def held_out_conditions(config: ExperimentConfig, count: int, seed: int,
                        min_separation: float = HELD_OUT_MIN_SEPARATION_RAD
                        ) -> tuple[np.ndarray, np.ndarray]:
    """`count` initial joint angles (count, J) drawn uniformly from the box spanned by the
    training conditions' initial joint angles (per joint, from the smallest to the
    largest), each at least `min_separation` rad (Euclidean) from every training start,
    and their targets (count, 3).

    The target is the training conditions' target when they share one; when they differ,
    each held-out start takes the target of the training condition whose initial joint
    angles are nearest (Euclidean in joint space).
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not min_separation >= 0:
        raise ValueError(f"min_separation must be >= 0 rad, got {min_separation!r}")
    starts = np.array([c.initial_positions for c in config.conditions], float)   # (M, J)
    targets = np.array([c.target for c in config.conditions], float)              # (M, 3)
    low, high = starts.min(axis=0), starts.max(axis=0)
    if np.all(high - low <= min_separation):
        raise ValueError("the training conditions' initial joint angles span no box wider than "
                         f"{min_separation} rad: there is no room for held-out conditions "
                         "(give at least two different initial_positions)")
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for _ in range(1000 * count):  # rejection sampling; the box has room by the check above
        q = rng.uniform(low, high)
        if np.linalg.norm(starts - q, axis=1).min() >= max(min_separation, 1e-12):
            chosen.append(q)
            if len(chosen) == count:
                break
    else:
        raise ValueError(f"could not draw {count} held-out conditions at least {min_separation} rad "
                         "from every training condition; the training starts fill their box")
    held_out = np.stack(chosen)
    nearest = np.argmin(np.linalg.norm(held_out[:, None] - starts[None], axis=2), axis=1)
    return held_out, targets[nearest]


def evaluate_exported_policy(config: ExperimentConfig, policy_path: str | Path, count: int, seed: int,
                             success_distance_m: float | None = None) -> dict[str, Any]:
    """Run the exported policy at `policy_path` noise-free from `count` held-out initial
    conditions (held_out_conditions(config, count, seed)) for config.T steps.

    Returns a JSON-ready dict: policy, robot, seed, T, success_distance_m, success_rate,
    successes, distances_m (count,), mean/median/max distance, and per-condition
    initial_positions, target, final_distance_m, success.
    """
    from mbpl_ros.core.policy import load_exported_policy

    policy = load_exported_policy(policy_path)
    layout = config.layout
    if (policy.dX, policy.dU) != (layout.dX, layout.dU):
        raise ValueError(f"{policy_path}: the policy maps dX={policy.dX} to dU={policy.dU}, but "
                         f"{config.robot} has dX={layout.dX}, dU={layout.dU}")
    threshold = config.success_distance_m if success_distance_m is None else float(success_distance_m)
    if not threshold > 0:
        raise ValueError(f"success_distance_m must be > 0, got {threshold!r}")
    starts, targets = held_out_conditions(config, count, seed)
    with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
        distances, _ = evaluate_policy(arm, config, policy, starts, targets)
    success = [d < threshold for d in distances]
    return {
        "policy": str(policy_path), "robot": config.robot, "seed": seed, "T": config.T,
        "success_distance_m": threshold, "success_rate": float(np.mean(success)),
        "successes": int(sum(success)), "conditions": len(distances),
        "distances_m": distances, "mean_distance_m": float(np.mean(distances)),
        "median_distance_m": float(np.median(distances)), "max_distance_m": float(np.max(distances)),
        "held_out": [{"initial_positions": q.tolist(), "target": g.tolist(), "final_distance_m": d,
                      "success": s} for q, g, d, s in zip(starts, targets, distances, success)],
    }
