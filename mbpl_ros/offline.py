"""Offline training and evaluation on the PyBullet arm, no ROS: `mbpl train`, `mbpl eval`.

Each iteration draws N noisy rollouts per condition from the current local controllers
(or, for MDGPS with policy.sample_on_policy, from the policy), runs one LQR-FLM or MDGPS
update, then measures the new controllers (and the MDGPS policy) without noise.
Rollout n of condition m at iteration i explores with rollout_noise(seed, i, m, n), its
own generator, so no random stream has to be carried from one iteration to the next.

Nothing is lost when the process dies (see docs/safety.md): every rollout is appended
to rollouts.mcap as it completes (when recording), and every iteration ends with a
checkpoint (mbpl_ros.checkpoint: atomic, checksummed) and then its metrics.jsonl row.
`run(..., resume=True)` continues from the newest checkpoint: metrics.jsonl and the
recording are cut back to what the checkpoint covers and the interrupted iteration is
drawn again with the same noise, so a resumed run ends exactly where an uninterrupted
one does. An MDGPS run ends by exporting the policy (TorchScript policy.pt and its
description policy.json).

`refit` replays the iterations of a recording (rollouts.mcap) through the same update
without drawing new rollouts. `mbpl eval` runs an exported policy from held-out initial
conditions (see held_out_conditions) and reports the success rate.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

import numpy as np

# CHECKPOINT_FORMAT, CheckpointError and write_atomically are re-exported for existing callers.
from mbpl_ros.checkpoint import (CHECKPOINT_FORMAT, Checkpoint, CheckpointError, append_metrics_row,  # noqa: F401
                                 capture_rng_states, checkpoint_paths, experiment_fingerprint, experiment_identity,
                                 identity_differences, latest_checkpoint, remove_stale_temporaries,
                                 restore_rng_states, write_atomically, write_checkpoint, write_metrics)
from mbpl_ros.core.lqr_flm import LqrFlm
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.rollout import JointStateToState, final_distance, rollout_noise, run_rollout

#: Held-out initial conditions are at least this far (rad, Euclidean in joint space)
#: from every training condition's initial joint angles.
HELD_OUT_MIN_SEPARATION_RAD = 0.05
#: Held-out targets (when the training conditions differ only in their targets, e.g. the
#: position of a hole) are at least this far (m) from every training target.
HELD_OUT_MIN_SEPARATION_M = 0.005
METRICS_FILE = "metrics.jsonl"
RECORDING_FILE = "rollouts.mcap"

# A mean policy: state x (dX,) -> action (dU,).
MeanPolicy = Callable[[np.ndarray], np.ndarray]
# on_rollout(condition m, index n, X (T, dX), U applied (T, dU), commands (T, dU))
RolloutCallback = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], None]


class PolicySampler:
    """The MDGPS policy as a rollout sampler, the interface of LinearGaussianController:
    act(t, x (dX,), noise (dU,)) = μ_θ(x) + L noise, L Lᵀ = covariance (dU, dU)."""

    def __init__(self, policy, covariance: np.ndarray) -> None:
        self.policy = policy
        self.chol = np.linalg.cholesky(covariance)

    def act(self, t: int, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.policy.action_mean(x) + self.chol @ noise


def collect_rollouts(arm: Arm, config: ExperimentConfig, controllers: Sequence, seed: int, iteration: int,
                     on_rollout: Optional[RolloutCallback] = None) -> Rollouts:
    """N noisy rollouts per condition from `controllers` (M,) (anything with
    act(t, x, noise), e.g. LinearGaussianController or PolicySampler), rollout n of
    condition m exploring with rollout_noise(seed, iteration, m, n):
    X (M·N, T, dX), U (M·N, T, dU) (the applied, clamped effort), in condition-major order.
    on_rollout, if given, sees each rollout as soon as it is done, with the commanded
    (unclamped) actions too."""
    layout, T, N = config.layout, config.T, config.rollouts_per_condition
    X, U, condition = [], [], []
    for m, (spec, controller) in enumerate(zip(config.conditions, controllers)):
        for n in range(N):
            noise = rollout_noise(seed, iteration, m, n, T, layout.dU, config.exploration.smoothing,
                                  config.exploration.renormalize)
            commands = np.empty((T, layout.dU))

            def act(t, x, controller=controller, noise=noise, commands=commands):
                u = controller.act(t, x, noise[t])
                commands[t] = u
                return u

            x, u = run_rollout(arm, layout, act, spec.initial_positions, spec.target, T)
            if on_rollout is not None:
                on_rollout(m, n, x, u, commands)
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


# --------------------------------------------------------------------------- recordings


def recording_run_info(config: ExperimentConfig, seed: int) -> dict:
    """The `mbpl_run` description of a recording made by a run of `config` with `seed`."""
    identity = experiment_identity(config, seed)
    return {"robot": config.robot, "joint_names": list(config.robot_spec.joint_names),
            "T": config.T, "control_dt": config.control_dt, "dt_ns": int(round(config.control_dt * 1e9)),
            "seed": int(seed), "algorithm": config.algorithm, "experiment": identity,
            "experiment_fingerprint": experiment_fingerprint(identity)}


def recorded_iterations(recording, config: ExperimentConfig,
                        log: Optional[TextIO] = None) -> list[tuple[int, Rollouts]]:
    """The sample rollouts of a recording (mbpl_ros.recording.Recording) as one batch per
    iteration, [(iteration, Rollouts (M·N, T, dX))], each in condition-major order as
    collect_rollouts draws them. States are rebuilt from the joint states with
    JointStateToState (as the sim and the sample_collector build them); U is the
    applied effort. A last iteration with fewer rollouts than
    config.rollouts_per_condition per condition (a run stopped during it) is left out;
    an earlier one is a ValueError, as is a recording of another robot or T."""
    layout, M, N = config.layout, len(config.conditions), config.rollouts_per_condition
    joint_names = list(config.robot_spec.joint_names)
    recorded_joints = recording.run_info.get("joint_names")
    if recorded_joints is not None and list(recorded_joints) != joint_names:
        raise ValueError(f"the recording's joints {recorded_joints} are not {config.robot}'s {joint_names}")
    samples = [r for r in recording.rollouts if r.purpose == "sample"]
    by_iteration: dict[int, list] = {}
    for rollout in samples:
        if rollout.T != config.T:
            raise ValueError(f"recorded rollout (iteration {rollout.iteration}, condition {rollout.condition}) "
                             f"has T={rollout.T}; the experiment has T={config.T}")
        if not 0 <= rollout.condition < M:
            raise ValueError(f"recorded rollout of condition {rollout.condition}; the experiment has "
                             f"conditions 0 .. {M - 1}")
        by_iteration.setdefault(rollout.iteration, []).append(rollout)
    batches = []
    with JointStateToState(config.robot, layout) as to_state:
        iterations = sorted(by_iteration)
        for iteration in iterations:
            rollouts = sorted(by_iteration[iteration], key=lambda r: (r.condition, r.index))
            counts = np.bincount([r.condition for r in rollouts], minlength=M)
            if np.any(counts != N):
                if iteration == iterations[-1]:
                    print(f"refit: iteration {iteration} of the recording is incomplete (rollouts per "
                          f"condition {counts.tolist()}, expected {N}); left out", file=log or sys.stderr, flush=True)
                    break
                raise ValueError(f"iteration {iteration} of the recording has rollouts per condition "
                                 f"{counts.tolist()}, expected {N} each")
            X = np.stack([np.stack([to_state(q, qd, r.target) for q, qd in zip(r.positions, r.velocities)])
                          for r in rollouts])
            U = np.stack([r.efforts for r in rollouts])
            batches.append((iteration, Rollouts(X, U, np.array([r.condition for r in rollouts]))))
    return batches


# --------------------------------------------------------------------------- training


@dataclass
class TrainingRun:
    """One offline run of config.algorithm (lqr_flm or mdgps) writing into `output`:
    metrics.jsonl, checkpoint_<i>.pkl, learning_curve.png, rollouts.mcap (when `record`)
    and, for MDGPS, policy.pt and policy.json."""

    config: ExperimentConfig
    output: Path
    seed: int
    metrics: list[dict] = field(default_factory=list)
    log: Optional[TextIO] = None      # progress lines; None: sys.stderr at construction
    record: bool = False

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.log is None:
            self.log = sys.stderr

    @property
    def is_mdgps(self) -> bool:
        return self.config.algorithm == "mdgps"

    @property
    def experiment(self) -> dict:
        return experiment_identity(self.config, self.seed)

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

    def run(self, iterations: int, *, resume: bool = False) -> list[dict]:
        """Train for `iterations` iterations. With resume, continue from the newest
        checkpoint in `output` (CheckpointError if it is damaged or of another
        experiment; a fresh start if there is none)."""
        return self._train(iterations, resume=resume, batches=None)

    def refit(self, recording_path: str | Path) -> list[dict]:
        """Re-run the updates on the rollouts of a recording instead of drawing new ones:
        iteration i's update gets the recording's iteration-i rollouts (recorded_iterations).
        The new controllers are measured in simulation as in `run`. Replaying a run's own
        recording with the same experiment reproduces its controllers and metrics."""
        from mbpl_ros.recording import read_recording

        recording = read_recording(recording_path)
        if recording.problem:
            print(f"refit: {recording_path}: {recording.problem}", file=self.log, flush=True)
        stored = recording.run_info.get("experiment")
        if stored is not None and experiment_fingerprint(stored) != experiment_fingerprint(self.experiment):
            keys = identity_differences(stored, self.experiment)
            print(f"refit: the recording was made with a different experiment (keys {', '.join(keys[:10])}); "
                  "its rollouts are used as they are", file=self.log, flush=True)
        batches = recorded_iterations(recording, self.config, self.log)
        if not batches:
            raise ValueError(f"{recording_path}: no complete iteration of sample rollouts to refit from")
        return self._train(len(batches), resume=False, batches=[batch for _, batch in batches])

    def _train(self, iterations: int, *, resume: bool, batches: Optional[list]) -> list[dict]:
        from mbpl_ros.recording import RolloutRecorder

        config, output = self.config, self.output
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output)
        checkpoint = latest_checkpoint(output, self.experiment) if resume else None
        recorder = None
        with config.make_arm() as arm:
            cost = config.build_cost()
            try:
                if checkpoint is None:
                    start = time.perf_counter()
                    algorithm, rollouts_total, first = self._build_algorithm(arm, cost), 0, 1
                    self.metrics = []
                    for stale in checkpoint_paths(output):  # of an earlier run here: never resume those
                        stale.unlink()
                    write_metrics(output / METRICS_FILE, [])
                    if self.record and batches is None:
                        recorder = RolloutRecorder.create(output / RECORDING_FILE,
                                                          recording_run_info(config, self.seed))
                    row = self._evaluate(arm, algorithm, cost, iteration=0, rollouts=0, start=start)
                    self._commit(row, checkpoint=None)
                else:
                    algorithm, rollouts_total = checkpoint.algorithm, checkpoint.rollouts_total
                    first = checkpoint.iteration + 1
                    start = time.perf_counter() - checkpoint.elapsed_s
                    restore_rng_states(checkpoint.rng_states)
                    self.metrics = list(checkpoint.metrics)
                    write_metrics(output / METRICS_FILE, self.metrics)  # drops rows after the checkpoint
                    note = ""
                    if self.record:
                        recorder, kept = RolloutRecorder.resume(output / RECORDING_FILE,
                                                                recording_run_info(config, self.seed),
                                                                through_iteration=checkpoint.iteration)
                        note = f"; {kept} recorded rollouts kept"
                    print(f"resuming from {checkpoint.path.name}: iteration {checkpoint.iteration} complete, "
                          f"{rollouts_total} rollouts{note}", file=self.log, flush=True)
                for i in range(first, iterations + 1):
                    if batches is None:
                        on_rollout = None if recorder is None else self._recorder_callback(recorder, i)
                        batch = collect_rollouts(arm, config, self._samplers(algorithm, i), self.seed, i,
                                                 on_rollout)
                    else:
                        batch = batches[i - 1]
                    rollouts_total += batch.N
                    report = algorithm.update(batch)
                    conditions = report.conditions if self.is_mdgps else report
                    extra = {"policy_loss": report.policy_loss,
                             "policy_kl": report.policy_kl} if self.is_mdgps else {}
                    row = self._evaluate(arm, algorithm, cost, iteration=i, rollouts=rollouts_total, start=start,
                                         sample_cost=float(np.mean([r.sample_cost for r in conditions])),
                                         kl_step=float(np.mean([r.kl_step for r in conditions])),
                                         kl=float(np.mean([r.kl for r in conditions])), **extra)
                    self._commit(row, checkpoint=Checkpoint(
                        iteration=i, algorithm=algorithm, metrics=self.metrics + [row],
                        rollouts_total=rollouts_total, elapsed_s=time.perf_counter() - start, seed=self.seed,
                        experiment=self.experiment, rng_states=capture_rng_states()))
            finally:
                if recorder is not None:
                    recorder.close()
        plot_learning_curve(self.metrics, output / "learning_curve.png", config.success_distance_m)
        if self.is_mdgps:
            self._export(algorithm.policy, len(self.metrics) - 1)
        return self.metrics

    def _recorder_callback(self, recorder, iteration: int) -> RolloutCallback:
        from mbpl_ros.recording import RecordedRollout

        config, layout = self.config, self.config.layout
        joint_names = tuple(config.robot_spec.joint_names)

        def record(m: int, n: int, X: np.ndarray, U: np.ndarray, commands: np.ndarray) -> None:
            spec = config.conditions[m]
            recorder.write_rollout(RecordedRollout(
                iteration=iteration, condition=m, index=n, controller_version=iteration - 1,
                joint_names=joint_names, positions=X[:, layout.position], velocities=X[:, layout.velocity],
                efforts=U, commands=commands, target=spec.target, initial_positions=spec.initial_positions))
        return record

    def _commit(self, row: dict, checkpoint: Optional[Checkpoint]) -> None:
        """The end of an iteration: the checkpoint (the commit point), then the metrics row."""
        if checkpoint is not None:
            write_checkpoint(self.output, checkpoint)
        self.metrics.append(row)
        append_metrics_row(self.output / METRICS_FILE, row)
        self._print_row(row)

    def _export(self, policy, iterations: int) -> Path:
        """policy.pt (TorchScript) and policy.json in the output directory."""
        from mbpl_ros.core.policy import export_torchscript

        config = self.config
        return export_torchscript(
            policy, self.output / "policy.pt", joint_names=config.robot_spec.joint_names,
            extra_metadata={
                "robot": config.robot, "algorithm": "mdgps", "iterations": iterations,
                "seed": self.seed, "T": config.T, "control_dt": config.control_dt,
                "state_layout": {"n_joints": config.layout.n_joints,
                                 "n_points": config.layout.n_points},
                "training_conditions": [{"initial_positions": list(c.initial_positions),
                                         "target": list(c.target)} for c in config.conditions]})

    def _evaluate(self, arm, algorithm, cost, *, iteration, rollouts, start, sample_cost=None,
                  kl_step=None, kl=None, policy_loss=None, policy_kl=None) -> dict:
        """The metrics row of an iteration: noise-free runs of the controllers (and policy)."""
        config = self.config
        distances, mean_cost = evaluate_controllers(arm, config, algorithm.controllers, cost)
        row = {"iteration": iteration, "rollouts": rollouts, "env_steps": rollouts * config.T,
               "mean_cost": mean_cost, "sample_cost": sample_cost, "final_distance_m": distances,
               "kl_step": kl_step, "kl": kl}
        if self.is_mdgps:
            # Before the first S-step there is no policy worth measuring.
            policy_distances = policy_cost = None
            if iteration > 0:
                starts = np.array([c.initial_positions for c in config.conditions], float)
                targets = np.array([c.target for c in config.conditions], float)
                policy_distances, policy_costs = evaluate_policy(
                    arm, config, algorithm.policy.action_mean, starts, targets, cost)
                policy_cost = float(np.mean(policy_costs))
            row.update({"policy_final_distance_m": policy_distances, "policy_mean_cost": policy_cost,
                        "policy_loss": policy_loss, "policy_kl": policy_kl})
        row["wall_s"] = time.perf_counter() - start
        return row

    def _print_row(self, row: dict) -> None:
        distances, success = row["final_distance_m"], self.config.success_distance_m
        reached = sum(d < success for d in distances)
        line = (f"iteration {row['iteration']:3d} | rollouts {row['rollouts']:4d} | cost {row['mean_cost']:10.3f} | "
                f"final distance (cm) {' '.join(f'{100 * d:6.2f}' for d in distances)} | "
                f"reached {reached}/{len(distances)}")
        if row.get("policy_final_distance_m") is not None:
            line += (f" | policy (cm) {' '.join(f'{100 * d:6.2f}' for d in row['policy_final_distance_m'])}"
                     f" | policy loss {row['policy_loss']:8.4f}")
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
    angles are nearest (Euclidean in joint space). When every training condition starts
    from the same joint angles and only the targets differ, held-out targets are drawn
    instead (held_out_targets).
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not min_separation >= 0:
        raise ValueError(f"min_separation must be >= 0 rad, got {min_separation!r}")
    starts = np.array([c.initial_positions for c in config.conditions], float)   # (M, J)
    targets = np.array([c.target for c in config.conditions], float)              # (M, 3)
    low, high = starts.min(axis=0), starts.max(axis=0)
    if np.all(high == low) and np.any(targets.max(axis=0) > targets.min(axis=0)):
        return held_out_targets(config, count, seed)
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


def held_out_targets(config: ExperimentConfig, count: int, seed: int,
                     min_separation: float = HELD_OUT_MIN_SEPARATION_M
                     ) -> tuple[np.ndarray, np.ndarray]:
    """For training conditions that share their start and differ in their targets (the
    hole moves, the arm starts where it always does): that start (count, J) and `count`
    targets (count, 3) drawn uniformly from the box the training targets span (per axis,
    smallest to largest; an axis on which they agree keeps its value), each at least
    `min_separation` m from every training target."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    starts = np.array([c.initial_positions for c in config.conditions], float)   # (M, J)
    targets = np.array([c.target for c in config.conditions], float)              # (M, 3)
    low, high = targets.min(axis=0), targets.max(axis=0)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for _ in range(1000 * count):  # rejection sampling
        target = rng.uniform(low, high)
        if np.linalg.norm(targets - target, axis=1).min() >= min_separation:
            chosen.append(target)
            if len(chosen) == count:
                break
    else:
        raise ValueError(f"could not draw {count} held-out targets at least {min_separation} m "
                         "from every training target; the training targets fill their box")
    return np.repeat(starts[:1], count, axis=0), np.stack(chosen)


def evaluate_exported_policy(config: ExperimentConfig, policy_path: str | Path, count: int, seed: int,
                             success_distance_m: float | None = None) -> dict[str, Any]:
    """Run the exported policy at `policy_path` noise-free from `count` held-out initial
    conditions (held_out_conditions(config, count, seed): held-out starts, or held-out
    targets where only the targets vary) for config.T steps.

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
    with config.make_arm() as arm:
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
