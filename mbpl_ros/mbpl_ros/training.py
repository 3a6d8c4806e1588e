"""
The training loop of `mbpl train` and of the ROS gps_trainer: one loop, two rollout sources.

A run of config.algorithm (lqr_flm or mdgps) writes into its output directory:
metrics.jsonl, checkpoint_<i>.pkl, learning_curve.png, rollouts.mcap (when recording) and,
for MDGPS, policy.pt + policy.json. Iteration 0 measures the initial controllers; iteration
i (1 .. iterations) then

    collect    N trials per condition of controller version i-1 (or, for MDGPS with
               policy.sample_on_policy, of the policy from iteration 2 on), rollout n of
               condition m exploring with rollout_noise(seed, i, m, n)
    dynamics   fitted here by the algorithm (GMM prior in the algorithm), or fitted
               elsewhere and handed over by the source (the ROS dynamics_fitter)
    update     LqrFlm or Mdgps (S-step, linearisation, C-step); a batch whose dynamics
               never come or whose update gives unusable controllers (core.sanity) is
               drawn again with fresh noise (UnusableBatch, at most BATCH_ATTEMPTS draws);
               the accepted batch's samples are recorded
    publish    the new controllers (version i) and, for MDGPS, policy.pt + policy.json
               exported atomically
    evaluate   one noise-free trial per condition of the controllers and, for MDGPS, of
               the exported policy: the metrics row
    commit     checkpoint_<i>.pkl (atomic, checksummed: mbpl_ros.checkpoint), then the
               metrics row, learning_curve.png (rewritten every iteration), the progress
               line

Between these, mbpl_ros.progress reports the phase, the trials done and the time left.

Where the trials run is a RolloutSource: the PyBullet arm in this process (SimSource, for
`mbpl train`), or the robot through the ROS node graph (gps_trainer's source). A source runs
a list of trials (a whole batch at once, so a source may spread them over several robots)
and reports each as it ends. Hooks: on_trial (every trial result) and on_iteration (every
committed metrics row), e.g. for progress and ETA output.

Resume continues from the newest checkpoint of the same experiment (CheckpointError
otherwise): metrics.jsonl and the recording are cut back to it, the RNG states and the
source's state (e.g. the trial-id counter) are restored, and the interrupted iteration is
drawn again with the same noise, so a resumed run ends exactly where an uninterrupted one
does. claim_output is the one rule for an output directory that already holds a run.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Protocol, Sequence, TextIO

import numpy as np

from mbpl_ros.checkpoint import (Checkpoint, append_metrics_row, capture_rng_states,
                                 checkpoint_paths, experiment_fingerprint, experiment_identity,
                                 fsync_directory, latest_checkpoint, remove_stale_temporaries,
                                 restore_rng_states, write_checkpoint, write_metrics)
from mbpl_ros.core.controller import LinearGaussianController, rollout_noise
from mbpl_ros.core.rollouts import Rollouts, final_distance
from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.progress import Progress, ProgressTracker
from mbpl_ros.runs import METRICS_FILE, RECORDING_FILE, existing_run

POLICY_FILE = "policy.pt"
#: Draws of an iteration's batch before the run stops, when a batch cannot be used.
BATCH_ATTEMPTS = 3


class UnusableBatch(RuntimeError):
    """
    An iteration's batch gave no usable dynamics or update; the loop draws it again.

    An iteration's batch gave no usable dynamics or update (a source raises it when the
    dynamics of a batch never come); the loop draws the batch again with fresh noise.
    """


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class Trial:
    """
    One trial for a source to run.

    One trial for a source to run: `executor` ("controller": condition m's controller of
    `version`; "policy": the policy after `version` updates) from condition m's start,
    exploring with `noise` (T, dU) (zeros: noise-free). purpose: "sample" or "evaluation".
    """

    iteration: int
    condition: int
    index: int
    purpose: str
    executor: str
    version: int
    noise: np.ndarray


@dataclass
class TrialResult:
    """
    A trial's rollout: states, applied efforts, commanded actions and the trial id.

    A trial's rollout: states X (T, dX), applied efforts U (T, dU), commanded actions
    commands (T, dU) (U where the source does not know them), the source's trial id, and
    with a camera the images (T, H, W, 3) uint8, image t seen right after state t.
    """

    trial: Trial
    X: np.ndarray
    U: np.ndarray
    commands: np.ndarray
    trial_id: Optional[int] = None
    images: Optional[np.ndarray] = None   # (T, H, W, 3) uint8 with a camera, else None


TrialHook = Callable[[TrialResult], None]
IterationHook = Callable[[dict], None]


class RolloutSource(Protocol):
    """Where a training run's trials happen."""

    def start(self, state: Optional[dict]) -> None:
        """Before the first trial: restore state() of a resumed run (None: a fresh run)."""

    def publish(self, controllers: Sequence[LinearGaussianController], version: int,
                policy_path: Optional[Path]) -> None:
        """
        Make controllers (M,) of `version` the ones that trials of that version run.

        Make controllers (M,) of `version` (and the exported policy at policy_path) the
        ones that trials of that version run.
        """

    def run_trials(self, trials: Sequence[Trial], on_trial: TrialHook) -> List[TrialResult]:
        """Run `trials`; results in the order of `trials`, each passed to on_trial as it ends."""

    def fitted_dynamics(self, version: int, results: Sequence[TrialResult]) -> Optional[list]:
        """
        Return each condition's dynamics (M,) fitted elsewhere, or None.

        Each condition's dynamics (M,) fitted elsewhere to the sample `results` of
        `version`, or None: the algorithm fits them.
        """

    def state(self) -> dict:
        """Return what the source needs to continue a run (kept in the checkpoint's extra)."""


# --------------------------------------------------------------------------- the output directory


class OutputInUse(RuntimeError):
    """The output directory holds a run, and neither resume nor overwrite was asked for."""


def claim_output(output: Path, *, resume: bool, overwrite: bool, resume_hint: str = "--resume",
                 overwrite_hint: str = "--overwrite") -> None:
    """
    Apply the rule for an output directory that holds a run.

    It is continued with resume, started over with overwrite, else OutputInUse names what
    was found and the two hints.
    """
    found = existing_run(output)
    if found is not None and not (resume or overwrite):
        raise OutputInUse(f"{output} already holds a run ({found}); {resume_hint} to continue it, "
                          f"{overwrite_hint} to start it over, or choose another output directory")


# --------------------------------------------------------------------------- pieces


def contiguous(controller: LinearGaussianController) -> LinearGaussianController:
    """
    Return the controller with C-contiguous arrays, as lqr_controller receives it.

    K_t x rounds differently for a strided K_t (from_covar keeps np.broadcast_to's odd
    strides), and every source must run controllers that act exactly like the ones on the
    robot.
    """
    return LinearGaussianController(**{name: np.ascontiguousarray(getattr(controller, name))
                                       for name in ("K", "k", "covar", "chol", "inv_covar")})


def gravity_chain(robot_model) -> dict:
    """
    Describe a RobotModel's gravity for the policy: SerialChainGravity.set_chain's arguments.

    Its joints must form one chain of revolute joints (each the child of the one before).
    The policy's action base 'gravity' then computes G(q) as robot_model.gravity_torque does.
    """
    model, spec = robot_model.model, robot_model.spec
    axes = {"JointModelRX": (1.0, 0.0, 0.0), "JointModelRY": (0.0, 1.0, 0.0),
            "JointModelRZ": (0.0, 0.0, 1.0)}
    chain = {"rotations": [], "translations": [], "axes": [], "masses": [], "centres": []}
    for i in range(1, model.njoints):
        kind = model.joints[i].shortname()
        revolute = kind in axes or kind == "JointModelRevoluteUnaligned"
        if model.parents[i] != i - 1 or not revolute:
            raise ValueError(f"robot {spec.name!r}: policy.action_base 'gravity' needs its joints "
                             f"to form one chain of revolute joints; joint {model.names[i]!r} is "
                             f"a {kind} with parent {model.names[model.parents[i]]!r}")
        axis = axes.get(kind)
        if axis is None:
            axis = np.asarray(model.joints[i].extract().axis, dtype=float)
        placement, inertia = model.jointPlacements[i], model.inertias[i]
        chain["rotations"].append(np.asarray(placement.rotation))
        chain["translations"].append(np.asarray(placement.translation))
        chain["axes"].append(np.asarray(axis, dtype=float))
        chain["masses"].append(float(inertia.mass))
        chain["centres"].append(np.asarray(inertia.lever))
    names = list(spec.joint_names)
    chain = {key: np.array(value) for key, value in chain.items()}
    chain["gravity"] = np.asarray(model.gravity.linear, dtype=float)
    chain["chain_index"] = [names.index(model.names[i]) for i in range(1, model.njoints)]
    return chain


def recording_run_info(config: ExperimentConfig, seed: int) -> dict:
    """Describe (`mbpl_run`) a recording made by a run of `config` with `seed`."""
    identity = experiment_identity(config, seed)
    return {"robot": config.robot, "joint_names": list(config.robot_spec.joint_names),
            "T": config.T, "control_dt": config.control_dt,
            "dt_ns": int(round(config.control_dt * 1e9)),
            "seed": int(seed), "algorithm": config.algorithm, "experiment": identity,
            "experiment_fingerprint": experiment_fingerprint(identity)}


def export_policy(policy, covariance: np.ndarray, config: ExperimentConfig, output: Path,
                  iteration: int, seed: int) -> Path:
    """
    Export the policy: policy.pt (TorchScript) and policy.json into `output`.

    policy.pt (TorchScript) and policy.json into `output`, each replaced atomically (written
    beside, then renamed: the module last, so a reader never pairs a new module with an old
    description). covariance (dU, dU): the policy's action covariance Σ_π, for sampling.
    """
    from mbpl_ros.core.policy.deploy import export_torchscript

    output = Path(output)
    staging = output / f".{POLICY_FILE}.{os.getpid()}.tmp.pt"
    export_torchscript(
        policy, staging, joint_names=config.robot_spec.joint_names, action_covariance=covariance,
        extra_metadata={
            "robot": config.robot, "algorithm": "mdgps", "iterations": int(iteration),
            "seed": int(seed), "T": config.T, "control_dt": config.control_dt,
            "state_layout": {"n_joints": config.layout.n_joints,
                             "n_points": config.layout.n_points},
            "training_conditions": [{"initial_positions": list(c.initial_positions),
                                     "target": list(c.target)} for c in config.conditions]})
    for written, final in ((staging.with_suffix(".json"), output / "policy.json"),
                           (staging, output / POLICY_FILE)):
        with open(written, "rb") as f:
            os.fsync(f.fileno())
        os.replace(written, final)
    fsync_directory(output)
    return output / POLICY_FILE


def check_policy_matches(policy, config: ExperimentConfig, path) -> None:
    """
    Raise a ValueError unless an exported policy fits config's robot.

    The error names `path`, the key and what is allowed when an exported policy (as
    core.policy.deploy.load_exported_policy returns it) does not fit config's robot: its dX, dU,
    joint_names (the command order) and state_layout must be the experiment's.
    """
    layout, joints = config.layout, list(config.robot_spec.joint_names)
    if (policy.dX, policy.dU) != (layout.dX, layout.dU):
        raise ValueError(f"{path}: keys dX, dU are {policy.dX}, {policy.dU}; allowed: "
                         f"{layout.dX}, {layout.dU} (the state and action sizes of "
                         f"{config.robot})")
    if policy.joint_names is not None and list(policy.joint_names) != joints:
        raise ValueError(f"{path}: key joint_names is {list(policy.joint_names)}; allowed: "
                         f"{joints} ({config.robot}'s joints, in its order)")
    image = policy.metadata.get("image")
    camera = config.camera
    if image is not None and (camera is None or (image["height"], image["width"])
                              != (camera.height, camera.width)):
        raise ValueError(f"{path}: key image is {image}; allowed: the experiment's camera "
                         + ("(it has none: add a camera section)" if camera is None else
                            f"{{'height': {camera.height}, 'width': {camera.width}}}"))
    stored = policy.metadata.get("extra", {}).get("state_layout")
    expected = {"n_joints": layout.n_joints, "n_points": layout.n_points}
    if stored is not None and stored != expected:
        raise ValueError(f"{path}: key extra.state_layout is {stored}; allowed: {expected} "
                         f"(the state layout of {config.robot})")


def plot_learning_curve(metrics: list[dict], path: Path, success_distance_m: float) -> None:
    """
    Plot cost and final distance (one line per condition) against iteration.

    Cost and final distance (one line per condition) against iteration; for MDGPS the
    policy's cost and distances too (dashed).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [row["iteration"] for row in metrics]
    distances = np.array([row["final_distance_m"] for row in metrics])
    policy_rows = [row for row in metrics if row.get("policy_final_distance_m") is not None]
    fig, (ax_cost, ax_dist) = plt.subplots(1, 2, figsize=(10, 4))
    ax_cost.plot(iterations, [row["mean_cost"] for row in metrics], marker="o",
                 label="controllers")
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


def progress_line(row: dict, success_distance_m: float) -> str:
    """Summarise a metrics row in one line."""
    distances = row["final_distance_m"]
    reached = sum(d < success_distance_m for d in distances)

    def cm(values):
        return " ".join(f"{100 * d:6.2f}" for d in values)
    line = (f"iteration {row['iteration']:3d} | rollouts {row['rollouts']:4d} | "
            f"cost {row['mean_cost']:10.3f} | final distance (cm) {cm(distances)} | "
            f"reached {reached}/{len(distances)}")
    if row.get("policy_final_distance_m") is not None:
        line += (f" | policy (cm) {cm(row['policy_final_distance_m'])}"
                 f" | policy loss {row['policy_loss']:8.4f}")
    return f"{line} | {row['wall_s']:6.1f} s"


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainingLoop:
    """
    One run of config.algorithm with `seed` over `source`, writing into `output`.

    record: append every sample rollout to rollouts.mcap as it arrives; a resume refuses a
    recording that lacks rollouts the checkpoint covers, unless allow_incomplete_recording
    (the recording then says what it lacks). say: where progress lines go (default: `log`,
    else sys.stderr). before_update(algorithm): called before each update (e.g. to apply a
    runtime kl_step). on_trial, on_iteration: see the module docstring. on_progress: every
    phase change and trial (mbpl_ros.progress.Progress, with the estimated time left), e.g.
    for a ROS topic; a line of it goes to `say` every progress_interval_s.
    """

    config: ExperimentConfig
    output: Path
    seed: int
    source: RolloutSource
    record: bool = True
    allow_incomplete_recording: bool = False
    log: Optional[TextIO] = None
    say: Optional[Callable[[str], None]] = None
    before_update: Optional[Callable[[object], None]] = None
    on_trial: Optional[TrialHook] = None
    on_iteration: Optional[IterationHook] = None
    on_progress: Optional[Callable[[Progress], None]] = None
    progress_interval_s: float = 5.0

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.metrics: list[dict] = []
        self.algorithm = None
        if self.say is None:
            log = self.log if self.log is not None else sys.stderr
            self.say = lambda line: print(line, file=log, flush=True)

    @property
    def is_mdgps(self) -> bool:
        return self.config.algorithm == "mdgps"

    @property
    def experiment(self) -> dict:
        return experiment_identity(self.config, self.seed)

    def checkpoint_to_resume(self) -> Optional[Checkpoint]:
        """
        Read the newest checkpoint in output, checked against this experiment.

        CheckpointError names the file and the keys that differ; None when there is none.
        """
        return latest_checkpoint(self.output, self.experiment)

    def build_algorithm(self):
        """Make a fresh LqrFlm or Mdgps from the initial controllers (made C-contiguous)."""
        from mbpl_ros.core.lqr_flm import LqrFlm
        from mbpl_ros.robot_model import RobotModel

        config = self.config
        robot = RobotModel(config.robot)
        initial = [contiguous(c) for c in config.initial_controllers(robot)]
        cost = config.build_cost()
        if not self.is_mdgps:
            algorithm = LqrFlm(cost, initial, config.lqr_flm_settings())
            local = algorithm
        else:
            from mbpl_ros.core.mdgps import Mdgps  # imports torch: only for MDGPS runs
            from mbpl_ros.core.rollouts import observation_indices

            image = ({} if config.policy.image is None else
                     {"observation_indices": observation_indices(config.layout),
                      "image_shape": (config.camera.height, config.camera.width)})
            settings = config.mdgps_settings(self.seed)
            chain = (gravity_chain(robot) if settings.policy.action_base == "gravity" else None)
            algorithm = Mdgps(cost, initial, settings, config.lqr_flm_settings(),
                              gravity_chain=chain, action_limits=robot.effort_limits, **image)
            local = algorithm.local
        if config.dynamics.description_prior.enabled:
            add_description_prior(local, config)
        return algorithm

    def run(self, iterations: int, *, checkpoint: Optional[Checkpoint] = None) -> list[dict]:
        """
        Train through iteration `iterations` and return the metrics rows.

        Train through iteration `iterations`: from `checkpoint` (see checkpoint_to_resume)
        or, without one, from the beginning (this directory's old checkpoints are deleted:
        claim_output decides beforehand whether that is allowed). Returns the metrics rows.
        """
        from mbpl_ros.recording import RolloutRecorder

        config, output = self.config, self.output
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output)   # of a write a crash interrupted
        cost = config.build_cost()
        recorder = None
        run_info = recording_run_info(config, self.seed)
        if checkpoint is None:
            start = time.perf_counter()
            self.algorithm, rollouts_total, first = self.build_algorithm(), 0, 1
            self.metrics = []
            for stale in checkpoint_paths(output):  # of an earlier run here: never resume those
                stale.unlink()
            write_metrics(output / METRICS_FILE, [])
            if self.record:
                recorder = RolloutRecorder.create(output / RECORDING_FILE, run_info)
        else:
            self.algorithm, rollouts_total = checkpoint.algorithm, checkpoint.rollouts_total
            first = checkpoint.iteration + 1
            start = time.perf_counter() - checkpoint.elapsed_s   # wall_s continues
            restore_rng_states(checkpoint.rng_states)
            self.metrics = list(checkpoint.metrics)
            write_metrics(output / METRICS_FILE, self.metrics)  # drops rows after the checkpoint
            note = ""
            if self.record:
                recorder, kept = RolloutRecorder.resume(
                    output / RECORDING_FILE, run_info, through_iteration=checkpoint.iteration,
                    samples=(len(config.conditions), config.rollouts_per_condition),
                    allow_incomplete=self.allow_incomplete_recording)
                note = f"; {kept} recorded rollouts kept"
            self.say(f"resuming from {checkpoint.path.name}: iteration {checkpoint.iteration} "
                     f"complete, {rollouts_total} rollouts{note}; continuing at iteration {first}")
        algorithm = self.algorithm
        self.progress = ProgressTracker(iterations, self.on_progress, self.say,
                                        self.progress_interval_s)
        try:
            self.source.start(None if checkpoint is None else checkpoint.extra)
            self.source.publish(algorithm.controllers, first - 1,
                                self._export(algorithm, first - 1))
            if checkpoint is None:
                self.progress.start_iteration(0, self._evaluation_trials(0))
                self._commit(self._evaluate(algorithm, cost, 0, 0, start), None)
            for i in range(first, iterations + 1):
                self.progress.start_iteration(
                    i, len(config.conditions) * config.rollouts_per_condition
                    + self._evaluation_trials(i))
                samples, batch, report = self._accepted_update(i, recorder)
                algorithm = self.algorithm
                rollouts_total += batch.N
                self.source.publish(algorithm.controllers, i, self._export(algorithm, i))
                conditions = report.conditions if self.is_mdgps else report
                extra = ({"policy_loss": report.policy_loss, "policy_kl": report.policy_kl}
                         if self.is_mdgps else {})
                row = self._evaluate(
                    algorithm, cost, i, rollouts_total, start,
                    sample_cost=float(np.mean([r.sample_cost for r in conditions])),
                    kl_step=float(np.mean([r.kl_step for r in conditions])),
                    kl=float(np.mean([r.kl for r in conditions])), **extra)
                self._commit(row, Checkpoint(
                    iteration=i, algorithm=algorithm, metrics=self.metrics + [row],
                    rollouts_total=rollouts_total, elapsed_s=time.perf_counter() - start,
                    seed=self.seed, experiment=self.experiment,
                    rng_states=capture_rng_states(), extra=self.source.state()))
        except BaseException:
            self.progress.phase("failed")
            raise
        finally:
            if recorder is not None:
                recorder.close()
        return self.metrics

    # ------------------------------------------------------------------ steps

    def _accepted_update(self, iteration: int, recorder):
        """
        Draw the iteration's samples and update on them: (samples, batch, report).

        A batch whose dynamics the source could not fit (UnusableBatch), whose update fails
        (TrajectoryOptimizationError) or gives controllers not to be used (core.sanity: non-finite
        or absurd numbers) is drawn again with fresh noise, from the algorithm as it was before, up
        to BATCH_ATTEMPTS times; then UnusableBatch. Only the accepted batch's rollouts are
        recorded.
        """
        from mbpl_ros.core import sanity
        from mbpl_ros.core.traj_opt import TrajectoryOptimizationError

        config = self.config
        problems = []
        for attempt in range(BATCH_ATTEMPTS):
            trials = self._sample_trials(iteration, attempt)
            if attempt > 0:
                self.progress.add_trials(len(trials))
                self.progress.phase("sampling")
            samples = self.source.run_trials(trials, self._on_trial)
            images = None
            if self.is_mdgps and config.policy.image is not None:
                missing = [r.trial.index for r in samples if r.images is None]
                if missing:
                    raise ValueError(f"iteration {iteration}: the image policy needs every "
                                     f"sample's images; {len(missing)} rollouts came without")
                images = np.stack([r.images for r in samples])
            batch = Rollouts(np.stack([r.X for r in samples]), np.stack([r.U for r in samples]),
                             np.array([r.trial.condition for r in samples]), images)
            before = copy.deepcopy(self.algorithm)
            try:
                self.progress.phase("fitting")
                dynamics = self.source.fitted_dynamics(samples[0].trial.version, samples)
                if self.before_update is not None:
                    self.before_update(self.algorithm)
                self.progress.phase("updating")
                report = self._update(self.algorithm, batch, dynamics)
                problem = sanity.controllers_fault(self.algorithm.controllers)
            except (UnusableBatch, TrajectoryOptimizationError) as error:
                problem = str(error)
            if problem is None:
                for result in samples:
                    self._record(recorder, result)
                return samples, batch, report
            problems.append(problem)
            self.algorithm = before
            self.say(f"iteration {iteration}: the batch cannot be used ({problem}); drawing it "
                     f"again with fresh noise (attempt {attempt + 2} of {BATCH_ATTEMPTS})"
                     if attempt + 1 < BATCH_ATTEMPTS else
                     f"iteration {iteration}: the batch cannot be used ({problem})")
        raise UnusableBatch(f"iteration {iteration}: no usable batch in {BATCH_ATTEMPTS} "
                            f"attempts ({'; '.join(problems)})")

    def _sample_trials(self, iteration: int, attempt: int = 0) -> list[Trial]:
        """
        Run the iteration's N sample trials per condition, condition-major.

        They are of controller version iteration-1, or of the policy (MDGPS with
        sample_on_policy, from the second iteration on: it is untrained before); `attempt` > 0
        draws the batch again with fresh noise.
        """
        config, layout = self.config, self.config.layout
        on_policy = self.is_mdgps and config.policy.sample_on_policy and iteration > 1
        executor = "policy" if on_policy else "controller"
        return [Trial(iteration, m, n, "sample", executor, iteration - 1,
                      rollout_noise(self.seed, iteration, m, n, config.T, layout.dU,
                                    config.exploration.smoothing, config.exploration.renormalize,
                                    attempt=attempt))
                for m in range(len(config.conditions))
                for n in range(config.rollouts_per_condition)]

    def _on_trial(self, result: TrialResult) -> None:
        self.progress.trial_done()
        if self.on_trial is not None:
            self.on_trial(result)

    def _evaluation_trials(self, iteration: int) -> int:
        """
        Run the noise-free trials of an iteration's evaluation.

        Noise-free trials of an iteration's evaluation: each condition's controller and,
        for MDGPS after the first update, the policy.
        """
        M = len(self.config.conditions)
        return 2 * M if self.is_mdgps and iteration > 0 else M

    def _record(self, recorder, result: TrialResult) -> None:
        """Append a sample rollout to the recording (when recording)."""
        from mbpl_ros.recording import RecordedRollout

        trial, config, layout = result.trial, self.config, self.config.layout
        if recorder is None or trial.purpose != "sample":
            return
        spec = config.conditions[trial.condition]
        recorder.write_rollout(RecordedRollout(
            iteration=trial.iteration, condition=trial.condition, index=trial.index,
            controller_version=trial.version, joint_names=tuple(config.robot_spec.joint_names),
            positions=result.X[:, layout.position], velocities=result.X[:, layout.velocity],
            efforts=result.U, commands=result.commands, target=np.asarray(spec.target, float),
            initial_positions=np.asarray(spec.initial_positions, float), images=result.images))

    def _update(self, algorithm, batch: Rollouts, dynamics: Optional[list]):
        if dynamics is None:
            return algorithm.update(batch)
        if self.is_mdgps:
            return algorithm.update(batch, dynamics=dynamics)
        return algorithm.update_with_dynamics(batch, dynamics)

    def _export(self, algorithm, iteration: int) -> Optional[Path]:
        """For MDGPS after at least one update: the policy exported (policy.pt)."""
        if not self.is_mdgps or iteration < 1:
            return None
        return export_policy(algorithm.policy, algorithm.policy_covariance, self.config,
                             self.output, iteration, self.seed)

    def _evaluate(self, algorithm, cost, iteration: int, rollouts: int, start: float,
                  sample_cost=None, kl_step=None, kl=None, policy_loss=None,
                  policy_kl=None) -> dict:
        """Make an iteration's metrics row: noise-free trials of the controllers (and policy)."""
        config, layout = self.config, self.config.layout
        zero = np.zeros((config.T, layout.dU))
        M = len(config.conditions)
        trials = [Trial(iteration, m, 0, "evaluation", "controller", iteration, zero)
                  for m in range(M)]
        # Before the first S-step there is no policy worth measuring.
        measure_policy = self.is_mdgps and iteration > 0
        if measure_policy:
            trials += [Trial(iteration, m, 0, "evaluation", "policy", iteration, zero)
                       for m in range(M)]
        self.progress.phase("evaluating")
        results = self.source.run_trials(trials, self._on_trial)
        distances = [final_distance(r.X, layout) for r in results]
        costs = [float(cost.evaluate(r.X[None], r.U[None]).l.sum()) for r in results]
        row = {"iteration": iteration, "rollouts": rollouts, "env_steps": rollouts * config.T,
               "mean_cost": float(np.mean(costs[:M])), "sample_cost": sample_cost,
               "final_distance_m": distances[:M], "kl_step": kl_step, "kl": kl}
        if self.is_mdgps:
            row.update({"policy_final_distance_m": distances[M:] if measure_policy else None,
                        "policy_mean_cost": float(np.mean(costs[M:])) if measure_policy else None,
                        "policy_loss": policy_loss, "policy_kl": policy_kl})
        row["wall_s"] = time.perf_counter() - start
        return row

    def _commit(self, row: dict, checkpoint: Optional[Checkpoint]) -> None:
        """
        End an iteration.

        That is the checkpoint (the commit point), the metrics row, the progress line, the
        iteration hook.
        """
        if checkpoint is not None:
            write_checkpoint(self.output, checkpoint)
        self.metrics.append(row)
        append_metrics_row(self.output / METRICS_FILE, row)
        # Rewritten every iteration, so a long run can be watched as it learns.
        plot_learning_curve(self.metrics, self.output / "learning_curve.png",
                            self.config.success_distance_m)
        self.say(progress_line(row, self.config.success_distance_m))
        self.progress.iteration_done(row)
        if self.on_iteration is not None:
            self.on_iteration(row)


def set_kl_step(algorithm, kl_step: float) -> None:
    """Use `kl_step` (ε per time step) from the next update of an LqrFlm or Mdgps."""
    local = getattr(algorithm, "local", algorithm)
    step = dataclasses.replace(local.settings.trajectory_optimization, kl_step=float(kl_step))
    local.settings = dataclasses.replace(local.settings, trajectory_optimization=step)


def add_description_prior(local, config) -> None:
    """
    Pool each condition's dynamics prior of LqrFlm `local` with the robot description's.

    The description's control step (robot_model.StepLinearization, towards the condition's
    target) becomes a core.model_prior.ModelPrior of dynamics.description_prior.strength
    rollouts, pooled with the condition's GMM prior (alone when that one is disabled).
    """
    from mbpl_ros.core.model_prior import ModelPrior, PooledPrior
    from mbpl_ros.robot_model import StepLinearization

    layout, settings = config.layout, config.dynamics.description_prior
    for state, condition in zip(local.conditions, config.conditions):
        model = ModelPrior(StepLinearization(config.robot_spec, condition.target,
                                             config.physics_dt, config.substeps),
                           layout.dX, layout.dU, settings.strength)
        state.prior = model if state.prior is None else PooledPrior(state.prior, model)
