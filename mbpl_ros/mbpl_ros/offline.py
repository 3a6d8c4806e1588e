"""
Offline training and evaluation on the PyBullet arm, no ROS: `mbpl train`, `mbpl eval`.

Training is mbpl_ros.training's loop (the one gps_trainer runs too) over SimSource: the
trials run on a PyBullet arm in this process. Rollout n of condition m at iteration i
explores with rollout_noise(seed, i, m, n), its own generator, so no random stream has to
be carried from one iteration to the next.

Nothing is lost when the process dies (see docs/safety.md): every rollout is appended
to rollouts.mcap as it completes (when recording), and every iteration ends with a
checkpoint (mbpl_ros.checkpoint: atomic, checksummed) and then its metrics.jsonl row.
`run(..., resume=True)` continues from the newest checkpoint: metrics.jsonl and the
recording are cut back to what the checkpoint covers and the interrupted iteration is
drawn again with the same noise, so a resumed run ends exactly where an uninterrupted
one does. An MDGPS run exports its policy (TorchScript policy.pt and its description
policy.json) after every iteration.

`refit` replays the iterations of a recording (rollouts.mcap) through the same loop
(RecordedSource: the samples from the recording, the evaluations in simulation).
`mbpl eval` runs an exported policy from held-out initial conditions (see
held_out_conditions) and reports the success rate.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, TextIO

import numpy as np

# CHECKPOINT_FORMAT, CheckpointError and write_atomically are re-exported for existing callers.
from mbpl_ros.checkpoint import (CHECKPOINT_FORMAT, CheckpointError,  # noqa: F401
                                 experiment_fingerprint, experiment_identity, identity_differences,
                                 write_atomically)
from mbpl_ros.core.controller import PolicySampler
from mbpl_ros.core.rollouts import Rollouts, final_distance
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.sim.arm import Arm
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.sim.rollout import run_image_rollout, run_rollout
# Re-exported: they were defined here before the loop moved to mbpl_ros.training.
from mbpl_ros.training import (METRICS_FILE, RECORDING_FILE, Trial, TrainingLoop,  # noqa: F401
                               TrialHook, TrialResult, check_policy_matches, contiguous,
                               plot_learning_curve, recording_run_info)

#: Held-out initial conditions are at least this far (rad, Euclidean in joint space)
#: from every training condition's initial joint angles.
HELD_OUT_MIN_SEPARATION_RAD = 0.05
#: Held-out targets (when the training conditions differ only in their targets, e.g. the
#: position of a hole) are at least this far (m) from every training target.
HELD_OUT_MIN_SEPARATION_M = 0.005

# A state feedback: state x (dX,) -> mean action (dU,), e.g. an exported policy.
MeanAction = Callable[[np.ndarray], np.ndarray]


def evaluate_policy(arm: Arm, config: ExperimentConfig, policy: MeanAction,
                    initial_positions: np.ndarray, targets: np.ndarray,
                    cost=None) -> tuple[list[float], Optional[list[float]]]:
    """
    Run one state-feedback policy noise-free from each initial condition.

    Noise-free runs of one state-feedback policy from initial joint angles (K, J) with
    targets (K, 3), T = config.T steps each: final distances (K,) and, given a cost,
    total costs (K,). An image policy (needs_image) is called as policy(x, image) with
    the experiment's camera image (the target drawn where it is, for the arm's marker).
    """
    layout = config.layout
    distances, costs = [], []
    camera = config.make_camera(arm) if getattr(policy, "needs_image", False) else None
    for q0, target in zip(np.asarray(initial_positions, float), np.asarray(targets, float)):
        if camera is None:
            x, u = run_rollout(arm, layout, lambda t, x: policy(x), q0, target, config.T)
        else:   # an image policy: it sees the camera image and its observation of x only
            x, u, _ = run_image_rollout(arm, layout, lambda t, x, image: policy(x, image), q0,
                                        target, config.T, camera)
        distances.append(final_distance(x, layout))
        if cost is not None:
            costs.append(float(cost.evaluate(x[None], u[None]).l.sum()))
    return distances, (costs if cost is not None else None)


# --------------------------------------------------------------------------- sources


class SimSource:
    """
    The training loop's trials on a PyBullet arm in this process (`mbpl train`).

    A controller trial runs the published controllers (C-contiguous, as lqr_controller
    gets them); a policy trial the exported policy.pt, loaded as lqr_controller loads it,
    with noise through the Cholesky factor of its action covariance (PolicySampler), so
    both sources compute the same actions. Every command goes through lqr_controller's
    joint-limit guard (core.safety, its default margin and damping), as on the robot.
    Dynamics are left to the algorithm.
    """

    def __init__(self, config: ExperimentConfig, gui: bool = False) -> None:
        from mbpl_ros.core import safety

        self.config = config
        self.arm = config.make_arm(gui=gui)   # with the experiment's fixtures
        self.camera = config.make_camera(self.arm)   # None without a camera section
        if gui:   # the window's camera and target markers change no rollout (test_replay)
            from mbpl_ros.sim import view
            view.prepare(self.arm, [c.initial_positions for c in config.conditions],
                         [c.target for c in config.conditions], gui=True)
        self.limits = safety.SafetyLimits(effort=self.arm.effort_limits,
                                          position=self.arm.position_limits,
                                          margin=safety.DEFAULT_JOINT_LIMIT_MARGIN,
                                          damping=safety.DEFAULT_JOINT_LIMIT_DAMPING)
        self._zero = np.zeros(config.layout.dU)
        self.controllers: dict[int, list] = {}
        self.policies: dict[int, PolicySampler] = {}

    def start(self, state: Optional[dict]) -> None:
        """Nothing to restore: the arm is reset before every trial."""

    def publish(self, controllers, version: int, policy_path: Optional[Path]) -> None:
        """Keep `version`'s controllers and policy (and the previous version's, still sampled)."""
        self.controllers = {v: c for v, c in self.controllers.items() if v >= version - 1}
        self.controllers[version] = [contiguous(c) for c in controllers]
        if policy_path is not None:
            from mbpl_ros.core.policy.deploy import load_exported_policy

            policy = load_exported_policy(policy_path)
            self.policies = {v: p for v, p in self.policies.items() if v >= version - 1}
            self.policies[version] = PolicySampler(policy, policy.action_covariance)

    def run_trials(self, trials: Sequence[Trial], on_trial: TrialHook) -> List[TrialResult]:
        """Each trial in turn on the arm; U is the applied (guarded, clamped) effort."""
        from mbpl_ros.core.safety import safe_command

        config, layout = self.config, self.config.layout
        results = []
        for trial in trials:
            spec = config.conditions[trial.condition]
            executor = (self.controllers[trial.version][trial.condition]
                        if trial.executor == "controller" else self.policies[trial.version])
            commands = np.empty((config.T, layout.dU))
            # Only an image policy acts on the image; controllers see the full state.
            sees_image = trial.executor == "policy" and getattr(executor.policy, "needs_image",
                                                                False)

            def act(t, x, image=None, executor=executor, noise=trial.noise, commands=commands,
                    sees_image=sees_image):
                u = (executor.act(t, x, noise[t], image) if sees_image
                     else executor.act(t, x, noise[t]))
                commands[t] = u
                command = safe_command(u, x[layout.position], x[layout.velocity], self.limits,
                                       self._zero)
                if command.fault is not None:
                    raise RuntimeError(f"iteration {trial.iteration}, condition "
                                       f"{trial.condition}, {trial.purpose} {trial.index}, "
                                       f"step {t}: {command.fault}")
                return command.effort

            images = None
            if self.camera is None:
                X, U = run_rollout(self.arm, layout, act, spec.initial_positions, spec.target,
                                   config.T)
            else:
                X, U, images = run_image_rollout(self.arm, layout, act, spec.initial_positions,
                                                 spec.target, config.T, self.camera)
            result = TrialResult(trial, X, U, commands, images=images)
            on_trial(result)
            results.append(result)
        return results

    def fitted_dynamics(self, version: int, results) -> None:
        return None

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        self.arm.close()


class RecordedSource(SimSource):
    """
    A SimSource whose sample trials return the rollouts of a recording instead (refit).

    SimSource whose sample trials return the rollouts of a recording instead (refit):
    batches[i - 1] (Rollouts, condition-major) for iteration i.
    """

    def __init__(self, config: ExperimentConfig, batches: Sequence[Rollouts]) -> None:
        super().__init__(config)
        self.batches = list(batches)

    def run_trials(self, trials: Sequence[Trial], on_trial: TrialHook) -> List[TrialResult]:
        if not trials or trials[0].purpose != "sample":
            return super().run_trials(trials, on_trial)
        batch = self.batches[trials[0].iteration - 1]
        images = [None] * batch.N if batch.images is None else list(batch.images)
        results = [TrialResult(trial, X, U, U, images=image)
                   for trial, X, U, image in zip(trials, batch.X, batch.U, images)]
        for result in results:
            on_trial(result)
        return results


def evaluate_controllers(config: ExperimentConfig, controllers, cost) -> tuple[list[float], float]:
    """
    Run each condition's controller noise-free on the arm, as the training loop evaluates.

    Noise-free trials of each condition's controller (M,) on the arm, as the training
    loop's evaluation runs them (SimSource: the same guard and clamp): final distances (M,)
    and the mean total cost.
    """
    layout, M = config.layout, len(config.conditions)
    source = SimSource(config)
    try:
        source.publish(controllers, 0, None)
        zero = np.zeros((config.T, layout.dU))
        results = source.run_trials([Trial(0, m, 0, "evaluation", "controller", 0, zero)
                                     for m in range(M)], lambda result: None)
    finally:
        source.close()
    costs = [float(cost.evaluate(r.X[None], r.U[None]).l.sum()) for r in results]
    return [final_distance(r.X, layout) for r in results], float(np.mean(costs))


# --------------------------------------------------------------------------- recordings


def recorded_iterations(recording, config: ExperimentConfig,
                        log: Optional[TextIO] = None) -> list[tuple[int, Rollouts]]:
    """
    Read the sample rollouts of a recording as one batch per iteration.

    The recording is an mbpl_ros.recording.Recording; the batches are [(iteration, Rollouts
    (M·N, T, dX))], each in condition-major order as collect_rollouts draws them. States are
    rebuilt from the joint states with JointStateToState (as the sim and the
    sample_collector build them); U is the applied effort. A last iteration with fewer
    rollouts than config.rollouts_per_condition per condition (a run stopped during it) is
    left out; an earlier one is a ValueError, as is a recording of another robot or T.
    """
    layout, M, N = config.layout, len(config.conditions), config.rollouts_per_condition
    joint_names = list(config.robot_spec.joint_names)
    recorded_joints = recording.run_info.get("joint_names")
    if recorded_joints is not None and list(recorded_joints) != joint_names:
        raise ValueError(f"the recording's joints {recorded_joints} are not {config.robot}'s "
                         f"{joint_names}")
    samples = [r for r in recording.rollouts if r.purpose == "sample"]
    by_iteration: dict[int, list] = {}
    for rollout in samples:
        if rollout.T != config.T:
            raise ValueError(f"recorded rollout (iteration {rollout.iteration}, condition "
                             f"{rollout.condition}) has T={rollout.T}; the experiment has "
                             f"T={config.T}")
        if not 0 <= rollout.condition < M:
            raise ValueError(f"recorded rollout of condition {rollout.condition}; the experiment "
                             f"has conditions 0 .. {M - 1}")
        by_iteration.setdefault(rollout.iteration, []).append(rollout)
    batches = []
    with JointStateToState(config.robot, layout) as to_state:
        iterations = sorted(by_iteration)
        for iteration in iterations:
            rollouts = sorted(by_iteration[iteration], key=lambda r: (r.condition, r.index))
            counts = np.bincount([r.condition for r in rollouts], minlength=M)
            if np.any(counts != N):
                if iteration == iterations[-1]:
                    print(f"refit: iteration {iteration} of the recording is incomplete "
                          f"(rollouts per condition {counts.tolist()}, expected {N}); left out",
                          file=log or sys.stderr, flush=True)
                    break
                raise ValueError(f"iteration {iteration} of the recording has rollouts per "
                                 f"condition {counts.tolist()}, expected {N} each")
            X = np.stack([np.stack([to_state(q, qd, r.target)
                                    for q, qd in zip(r.positions, r.velocities)])
                          for r in rollouts])
            U = np.stack([r.efforts for r in rollouts])
            # The camera's images, when the run recorded them (all or none).
            images = (np.stack([r.images for r in rollouts])
                      if all(r.images is not None for r in rollouts) else None)
            batches.append((iteration, Rollouts(X, U, np.array([r.condition for r in rollouts]),
                                                images)))
    return batches


# --------------------------------------------------------------------------- training


@dataclass
class TrainingRun:
    """
    One offline run of config.algorithm (lqr_flm or mdgps) writing into `output`.

    One offline run of config.algorithm (lqr_flm or mdgps) writing into `output`:
    mbpl_ros.training.TrainingLoop over SimSource (see there for the files it writes).
    """

    config: ExperimentConfig
    output: Path
    seed: int
    metrics: list = None
    log: Optional[TextIO] = None      # progress lines; None: sys.stderr at construction
    record: bool = False
    allow_incomplete_recording: bool = False   # resume even if rollouts.mcap lacks some
    gui: bool = False                 # show the arm in the PyBullet window (sim.view)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.metrics = [] if self.metrics is None else self.metrics
        if self.log is None:
            self.log = sys.stderr

    @property
    def experiment(self) -> dict:
        return experiment_identity(self.config, self.seed)

    def run(self, iterations: int, *, resume: bool = False) -> list[dict]:
        """
        Train for `iterations` iterations.

        With resume, continue from the newest checkpoint in `output` (CheckpointError if it is
        damaged or of another experiment; a fresh start if there is none).
        """
        return self._train(SimSource(self.config, gui=self.gui), iterations, resume=resume,
                           record=self.record)

    def refit(self, recording_path: str | Path) -> list[dict]:
        """
        Re-run the updates on the rollouts of a recording instead of drawing new ones.

        Re-run the updates on the rollouts of a recording instead of drawing new ones:
        iteration i's update gets the recording's iteration-i rollouts (recorded_iterations).
        The new controllers are measured in simulation as in `run`. Replaying a run's own
        recording with the same experiment reproduces its controllers and metrics.
        """
        from mbpl_ros.recording import read_recording

        recording = read_recording(recording_path)
        if recording.problem:
            print(f"refit: {recording_path}: {recording.problem}", file=self.log, flush=True)
        stored = recording.run_info.get("experiment")
        if (stored is not None
                and experiment_fingerprint(stored) != experiment_fingerprint(self.experiment)):
            keys = identity_differences(stored, self.experiment)
            print(f"refit: the recording was made with a different experiment (keys "
                  f"{', '.join(keys[:10])}); its rollouts are used as they are",
                  file=self.log, flush=True)
        batches = recorded_iterations(recording, self.config, self.log)
        if not batches:
            raise ValueError(
                f"{recording_path}: no complete iteration of sample rollouts to refit from")
        source = RecordedSource(self.config, [batch for _, batch in batches])
        return self._train(source, len(batches), resume=False, record=False)

    def _train(self, source: SimSource, iterations: int, *, resume: bool,
               record: bool) -> list[dict]:
        loop = TrainingLoop(self.config, self.output, self.seed, source, record=record,
                            log=self.log,
                            allow_incomplete_recording=self.allow_incomplete_recording)
        try:
            checkpoint = loop.checkpoint_to_resume() if resume else None
            self.metrics = loop.run(iterations, checkpoint=checkpoint)
        finally:
            source.close()
        return self.metrics


# --------------------------------------------------------------------------- evaluation


def held_out_conditions(config: ExperimentConfig, count: int, seed: int,
                        min_separation: float = HELD_OUT_MIN_SEPARATION_RAD
                        ) -> tuple[np.ndarray, np.ndarray]:
    """
    Draw `count` held-out initial joint angles (count, J) and their targets (count, 3).

    `count` initial joint angles (count, J) drawn uniformly from the box spanned by the
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
        raise ValueError(f"could not draw {count} held-out conditions at least {min_separation} "
                         "rad from every training condition; the training starts fill their box")
    held_out = np.stack(chosen)
    nearest = np.argmin(np.linalg.norm(held_out[:, None] - starts[None], axis=2), axis=1)
    return held_out, targets[nearest]


def held_out_targets(config: ExperimentConfig, count: int, seed: int,
                     min_separation: float = HELD_OUT_MIN_SEPARATION_M
                     ) -> tuple[np.ndarray, np.ndarray]:
    """
    Draw held-out targets for training conditions that share their start.

    For training conditions that share their start and differ in their targets (the
    hole moves, the arm starts where it always does): that start (count, J) and `count`
    targets (count, 3) drawn uniformly from the box the training targets span (per axis,
    smallest to largest; an axis on which they agree keeps its value), each at least
    `min_separation` m from every training target.
    """
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


def evaluate_exported_policy(config: ExperimentConfig, policy_path: str | Path, count: int,
                             seed: int,
                             success_distance_m: float | None = None) -> dict[str, Any]:
    """
    Run the exported policy at `policy_path` noise-free from `count` held-out conditions.

    Run the exported policy at `policy_path` noise-free from `count` held-out initial
    conditions (held_out_conditions(config, count, seed): held-out starts, or held-out
    targets where only the targets vary) for config.T steps.

    Returns a JSON-ready dict: policy, robot, seed, T, success_distance_m, success_rate,
    successes, distances_m (count,), mean/median/max distance, and per-condition
    initial_positions, target, final_distance_m, success.
    """
    from mbpl_ros.core.policy.deploy import load_exported_policy

    policy = load_exported_policy(policy_path)
    check_policy_matches(policy, config, policy_path)
    threshold = (config.success_distance_m if success_distance_m is None
                 else float(success_distance_m))
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
        "median_distance_m": float(np.median(distances)),
        "max_distance_m": float(np.max(distances)),
        "held_out": [{"initial_positions": q.tolist(), "target": g.tolist(), "final_distance_m": d,
                      "success": s} for q, g, d, s in zip(starts, targets, distances, success)],
    }
