"""gps_trainer: orchestrates LQR-FLM on the robot, iteration by iteration.

Publishes    gps/controllers (record lg_controller, transient local): every condition's
             current controller, with a version (= the number of updates behind it)
             gps/trial_requests (record trial_request): one trial at a time, each with a new id
Subscribes   gps/rollouts (record rollout): the result of the awaited trial (other ids ignored)
             gps/dynamics (record lg_dynamics): the complete fit of each condition's batch
             gps/estop_latched (std_msgs/Bool, transient local): lqr_controller's e-stop latch

Iteration i (1..iterations): for each condition m and rollout n, a sample trial of controller
version i-1 with the exploration noise rollout_noise(seed, i, m, n) (the offline trainer's
convention); then LqrFlm.update_with_dynamics with the dynamics dynamics_fitter fitted to
exactly those rollouts (checked by trial id); then the new controllers are published and
measured without noise (one evaluation trial per condition), as `mbpl train` does. Each
iteration ends by writing checkpoint_<i>.pkl (mbpl_ros.checkpoint: the offline trainer's
format, atomic and checksummed; the LqrFlm state, metrics, rollout count, elapsed time and,
in `extra`, the trial-id counter) — the commit point — and then appending its metrics.jsonl
row (the offline trainer's keys); the run ends with learning_curve.png and the node reports
`finished`.

Resume (`resume: true`): the run continues from the newest checkpoint in output_dir, read
and checked first (a damaged checkpoint, or one of another experiment, stops the run before
any trial, naming the file and the problem). metrics.jsonl is rewritten from the checkpoint,
the controllers of its iteration k are published again (version k), and iteration k+1 is
sampled from its first rollout with the same noise: completed iterations are neither
repeated nor lost; the rollouts of a half-done one are redone. Without a checkpoint it
starts from the beginning. Without `resume`, an output_dir that holds checkpoints is refused
(the run stops before any trial), so a run is never overwritten by mistake. The GMM dynamics
prior lives in dynamics_fitter: resumed with the same dynamics_fitter running, the run
continues exactly as it would have; with a restarted one, the prior starts afresh from
iteration k+1's batch.

A trial that gets no valid rollout within trial_timeout_s, or whose rollout was dropped
(gap, stale, non-finite, aborted), is requested again with a new id, up to max_attempts
times; then the trainer stops with an error (exit code 1).

While lqr_controller's e-stop is latched the trainer pauses (it does not fail): it sends no
request, and a trial aborted by the e-stop (status ESTOP) is not counted as an attempt; after
the reset (~/reset_estop on lqr_controller) it requests that trial again, with a new id and
the same noise, so no rollout is lost or repeated. `paused` says whether it is waiting.

Runtime parameters (validated; an unsafe value is rejected with the reason): trial_timeout_s,
max_attempts, dynamics_timeout_s (from the next trial or wait), noise_scale (from the next
iteration's samples) and kl_step (from the next update).
"""
from __future__ import annotations

import dataclasses
import math
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Bool, Float64MultiArray

from mbpl_ros.checkpoint import (Checkpoint, CheckpointError, append_metrics_row, checkpoint_paths,
                                 experiment_identity, latest_checkpoint, remove_stale_temporaries,
                                 write_checkpoint, write_metrics)
from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.lqr_flm import LqrFlm
from mbpl_ros.core.rollouts import Rollouts
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import NodeParameterError, declare, declare_experiment, run_node
from mbpl_ros.nodes.common import check_known_parameters
from mbpl_ros.offline import plot_learning_curve, recording_run_info
from mbpl_ros.recording import RecordedRollout, RolloutRecorder
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.rollout import final_distance, rollout_noise


#: Trial ids a resumed run skips after its checkpoint's counter: the interrupted run may have
#: used some after writing it (the half-done iteration's trials and their retries).
RESUME_TRIAL_ID_GAP = 1 << 20
#: Pause before retrying a trial, times the attempt number (lets a restarting node come up).
RETRY_DELAY_S = 0.2
#: After a trial aborted by the e-stop, how long to wait for the latch state (it may trail
#: the rollout) before the trial is requested again.
ESTOP_SETTLE_S = 1.0
#: Runtime-settable parameters and their checks: (predicate, what is allowed).
RUNTIME_CHECKS = {
    "trial_timeout_s": (lambda v: math.isfinite(v) and 0.1 <= v <= 3600.0, "a double in [0.1, 3600.0]"),
    "dynamics_timeout_s": (lambda v: math.isfinite(v) and 0.1 <= v <= 3600.0, "a double in [0.1, 3600.0]"),
    "max_attempts": (lambda v: 1 <= v <= 100, "an integer in [1, 100]"),
    "kl_step": (lambda v: math.isfinite(v) and 0.0 < v <= 1e6, "a double in (0, 1e6]"),
    "noise_scale": (lambda v: math.isfinite(v) and 0.0 <= v <= 100.0, "a double in [0.0, 100.0] (0: no noise)"),
}


def contiguous(controller: LinearGaussianController) -> LinearGaussianController:
    """The controller with C-contiguous arrays, as lqr_controller receives it: K_t x rounds
    differently for a strided K_t (from_covar keeps np.broadcast_to's odd strides), and the
    trainer's controllers must act exactly like the ones on the robot."""
    return LinearGaussianController(**{name: np.ascontiguousarray(getattr(controller, name))
                                       for name in ("K", "k", "covar", "chol", "inv_covar")})


class TrainingStopped(RuntimeError):
    """The run cannot go on (a trial failed too often, a model never came, or stop())."""


class GpsTrainerNode(Node):
    def __init__(self, node_name: str = "gps_trainer", log: Optional[TextIO] = None, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self._read_parameters()
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        self.log = log                    # progress lines go here too (e.g. sys.stderr), if given
        self.metrics: List[dict] = []
        self.finished = threading.Event()
        self.exit_code = 0
        self.error: Optional[str] = None
        self.ignored_results = 0          # rollouts whose trial id was not the awaited one
        self.estop_latched = False        # lqr_controller's e-stop latch, as last heard
        self.paused = False               # waiting for the e-stop to be reset
        self.estop_aborts = 0             # trials aborted by the e-stop (requested again, not counted)
        self._stop = threading.Event()
        self._arrived = threading.Condition()
        self._results: Dict[int, wire.RolloutMessage] = {}
        self._awaited: Optional[int] = None
        # (condition, controller version) -> latest complete fit
        self._dynamics: Dict[tuple, wire.DynamicsMessage] = {}
        self._next_trial_id = secrets.randbits(30) << 20          # distinct from another run's ids
        group = MutuallyExclusiveCallbackGroup()
        self._request_pub = self.create_publisher(Float64MultiArray, wire.TRIAL_REQUESTS_TOPIC, wire.EVENTS_QOS)
        self._controller_pub = self.create_publisher(Float64MultiArray, wire.CONTROLLERS_TOPIC,
                                                     wire.CONTROLLERS_QOS)
        self._rollout_sub = self.create_subscription(Float64MultiArray, wire.ROLLOUTS_TOPIC, self._on_rollout,
                                                     wire.EVENTS_QOS, callback_group=group)
        self._dynamics_sub = self.create_subscription(Float64MultiArray, wire.DYNAMICS_TOPIC, self._on_dynamics,
                                                      wire.EVENTS_QOS, callback_group=group)
        self.create_subscription(Bool, wire.ESTOP_LATCHED_TOPIC, self._on_estop_latched, wire.LATCHED_STATE_QOS,
                                 callback_group=group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._run, name="gps_trainer", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters
    def _read_parameters(self) -> None:
        self.config, self.experiment_path = declare_experiment(self)
        if self.config.algorithm != "lqr_flm":
            raise NodeParameterError(f"parameter 'experiment_config' = {str(self.experiment_path)!r} asks for "
                                     f"algorithm {self.config.algorithm!r}; allowed: an lqr_flm experiment "
                                     "(the ROS graph runs LQR-FLM; use `mbpl train` for mdgps)")
        iterations = declare(self, "iterations", 0, "Learning iterations; 0: the experiment's.",
                             allowed="an integer in [0, 100000]", low=0, high=100_000)
        self.iterations = iterations or self.config.iterations
        seed = declare(self, "seed", -1, "Seed of the exploration noise; -1: the experiment's.",
                       allowed="an integer in [-1, 2**31 - 1]", low=-1, high=2 ** 31 - 1)
        self.seed = self.config.seed if seed < 0 else seed
        output = declare(self, "output_dir", f"runs/gps_{self.experiment_path.stem}",
                         "Where metrics.jsonl, checkpoints and learning_curve.png go (relative to "
                         "the current directory); default: runs/gps_<the experiment file's name>.",
                         allowed="a writable directory path")
        if not output:
            raise NodeParameterError("parameter 'output_dir' is empty; allowed: a writable directory path")
        self.output = Path(output).expanduser().resolve()
        self.trial_timeout_s = declare(self, "trial_timeout_s", 60.0, "Longest wait for a trial's rollout (s). "
                                       "Settable at runtime.", allowed="a double in [0.1, 3600.0]", low=0.1,
                                       high=3600.0, read_only=False)
        self.max_attempts = declare(self, "max_attempts", 3, "Tries per trial before the trainer stops (trials "
                                    "aborted by the e-stop do not count). Settable at runtime.",
                                    allowed="an integer in [1, 100]", low=1, high=100, read_only=False)
        self.dynamics_timeout_s = declare(self, "dynamics_timeout_s", 60.0, "Longest wait for the fitted "
                                          "dynamics of a batch (s). Settable at runtime.",
                                          allowed="a double in [0.1, 3600.0]", low=0.1, high=3600.0,
                                          read_only=False)
        self.kl_step = declare(self, "kl_step", float(self.config.trajectory_optimization.kl_step),
                               "KL bound per time step of the controller update; default: the experiment's. "
                               "Settable at runtime (from the next update).", allowed="a double in (0, 1e6]",
                               low=1e-12, high=1e6, read_only=False)
        self.noise_scale = declare(self, "noise_scale", 1.0, "Scale of the exploration noise of sample trials "
                                   "(1: the offline trainer's). Settable at runtime (from the next iteration).",
                                   allowed="a double in [0.0, 100.0]", low=0.0, high=100.0, read_only=False)
        self.discovery_timeout_s = declare(self, "discovery_timeout_s", 60.0, "Longest wait for lqr_controller, "
                                           "sample_collector and dynamics_fitter to appear (s).",
                                           allowed="a double in [0.1, 3600.0]", low=0.1, high=3600.0)
        self.resume = declare(self, "resume", False, "Continue the run in output_dir from its newest checkpoint "
                              "(completed iterations are kept, a half-done one is redone; none: start at "
                              "iteration 0). false: start at iteration 0, refused if output_dir holds checkpoints.",
                              allowed="true or false")
        self.experiment = experiment_identity(self.config, self.seed)

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Runtime changes, all or none: each checked (an unsafe value is rejected with the
        reason); the run reads them between trials (and kl_step before each update)."""
        for parameter in parameters:
            check = RUNTIME_CHECKS.get(parameter.name)
            if check is None:
                continue
            valid, allowed = check
            value = parameter.value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
                reason = f"parameter '{parameter.name}' is {value!r}; allowed: {allowed}"
                self.get_logger().warning(f"rejected a parameter change: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            if parameter.name in RUNTIME_CHECKS:
                setattr(self, parameter.name, parameter.value)
                self.get_logger().info(f"parameter {parameter.name} = {parameter.value!r} (from the next trial, "
                                       "iteration or update)")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs
    def _on_estop_latched(self, msg: Bool) -> None:
        with self._arrived:
            self.estop_latched = bool(msg.data)
            self._arrived.notify_all()

    def _on_rollout(self, msg: Float64MultiArray) -> None:
        try:
            rollout = wire.decode_rollout(msg, dX=self.config.layout.dX, dU=self.config.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a rollout: {error}")
            return
        with self._arrived:
            if rollout.trial_id != self._awaited:
                self.ignored_results += 1
                self.get_logger().debug(f"ignored the rollout of trial {rollout.trial_id}: awaiting {self._awaited}")
                return
            self._results[rollout.trial_id] = rollout
            self._arrived.notify_all()

    def _on_dynamics(self, msg: Float64MultiArray) -> None:
        try:
            message = wire.decode_dynamics(msg, dX=self.config.layout.dX, dU=self.config.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored dynamics: {error}")
            return
        if message.complete:
            with self._arrived:
                self._dynamics[(message.condition, message.controller_version)] = message
                self._arrived.notify_all()

    # ------------------------------------------------------------------ the run
    def stop(self) -> None:
        """Ask the run to end (it stops at its next wait)."""
        self._stop.set()
        with self._arrived:
            self._arrived.notify_all()

    def _wait(self, predicate, timeout: float) -> bool:
        """Wait for predicate() under the condition; TrainingStopped if stop() was called."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not predicate():
                if self._stop.is_set():
                    raise TrainingStopped("stopped")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(min(left, 0.1))
        return True

    def _say(self, line: str) -> None:
        if self.log is not None:
            print(line, file=self.log, flush=True)
        else:
            self.get_logger().info(line)

    def _run(self) -> None:
        try:
            self._train()
        except TrainingStopped as error:
            if not self._stop.is_set():
                self.error = str(error)
                self.get_logger().fatal(f"training stopped: {error}")
                if self.log is not None:
                    print(f"gps_trainer: training stopped: {error}", file=self.log, flush=True)
            self.exit_code = 1
        except Exception as error:  # the run must end with a message, not a silent thread
            self.exit_code = 1
            if self._stop.is_set() or not self.context.ok():
                self.error = "stopped: the node or its context was shut down"
                return
            self.error = f"{type(error).__name__}: {error}"
            self.get_logger().fatal(f"training failed: {self.error}")
        finally:
            self.finished.set()

    def _wait_for_graph(self) -> None:
        def connected():
            return (self._request_pub.get_subscription_count() > 0 and self._controller_pub.get_subscription_count() > 0
                    and self._rollout_sub.get_publisher_count() > 0 and self._dynamics_sub.get_publisher_count() > 0)
        deadline = time.monotonic() + self.discovery_timeout_s
        while not connected():
            if self._stop.is_set():
                raise TrainingStopped("stopped")
            if time.monotonic() > deadline:
                raise TrainingStopped(f"lqr_controller, sample_collector and dynamics_fitter did not all appear "
                                      f"within discovery_timeout_s={self.discovery_timeout_s:g} s "
                                      f"(subscribers of {wire.TRIAL_REQUESTS_TOPIC}: "
                                      f"{self._request_pub.get_subscription_count()}, publishers of "
                                      f"{wire.ROLLOUTS_TOPIC}: {self._rollout_sub.get_publisher_count()}, of "
                                      f"{wire.DYNAMICS_TOPIC}: {self._dynamics_sub.get_publisher_count()})")
            time.sleep(0.05)

    def _checkpoint_to_resume(self) -> Optional[Checkpoint]:
        """With resume: output_dir's newest checkpoint, checked (None: there is none). Without:
        None, after making sure output_dir holds no run to overwrite. TrainingStopped naming
        the file and the problem otherwise; checked before anything moves."""
        if not self.resume:
            existing = checkpoint_paths(self.output)
            if existing:
                raise TrainingStopped(f"output_dir {str(self.output)!r} already holds a run ({existing[-1].name}): "
                                      "set parameter resume: true to continue it, or choose an output_dir "
                                      "without checkpoints")
            return None
        try:
            checkpoint = latest_checkpoint(self.output, self.experiment)
        except CheckpointError as error:
            raise TrainingStopped(f"resume: the run in output_dir cannot be continued: {error}") from None
        if checkpoint is not None and "next_trial_id" not in checkpoint.extra:
            raise TrainingStopped(f"resume: {checkpoint.path} was not written by gps_trainer (it has no trial-id "
                                  "counter); continue it with `mbpl train --resume`")
        return checkpoint

    def _train(self) -> None:
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        checkpoint = self._checkpoint_to_resume()
        remove_stale_temporaries(self.output)   # of a write a crash interrupted
        metrics_path = self.output / "metrics.jsonl"
        cost = config.build_cost()
        if checkpoint is None:
            start = time.perf_counter()
            write_metrics(metrics_path, [])
            with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as model:
                initial = [contiguous(c) for c in config.initial_controllers(model)]
                algorithm = LqrFlm(cost, initial, config.lqr_flm_settings())
            first, rollouts_total = 1, 0
        else:
            algorithm, rollouts_total = checkpoint.algorithm, checkpoint.rollouts_total
            start = time.perf_counter() - checkpoint.elapsed_s   # wall_s continues
            self.metrics = list(checkpoint.metrics)
            write_metrics(metrics_path, self.metrics)           # rows after the checkpoint are dropped
            first = checkpoint.iteration + 1
            # Trial ids go on from the run's, past any the interrupted run used after its checkpoint.
            self._next_trial_id = int(checkpoint.extra["next_trial_id"]) + RESUME_TRIAL_ID_GAP
            self._say(f"resuming from {checkpoint.path.name}: iteration {checkpoint.iteration} complete, "
                      f"{rollouts_total} rollouts; continuing at iteration {first}")
        # Every accepted sample rollout goes to output_dir/rollouts.mcap as it arrives (the
        # offline trainer's format, so `mbpl train --refit-from` reads it); a resumed run keeps
        # the rollouts of the iterations its checkpoint covers.
        recording, run_info = self.output / "rollouts.mcap", recording_run_info(config, self.seed)
        self._recorder = (RolloutRecorder.create(recording, run_info) if checkpoint is None else
                          RolloutRecorder.resume(recording, run_info, checkpoint.iteration)[0])
        try:
            self._train_iterations(algorithm, cost, checkpoint, first, rollouts_total, start, metrics_path)
        finally:
            self._recorder.close()

    def _train_iterations(self, algorithm, cost, checkpoint, first, rollouts_total, start, metrics_path) -> None:
        config = self.config
        self._wait_for_graph()
        self._publish_controllers(algorithm, version=first - 1)
        if checkpoint is None:
            append_metrics_row(metrics_path, self._evaluate(cost, version=0, iteration=0, rollouts=0, start=start))
        for i in range(first, self.iterations + 1):
            batch, ids = self._collect(i, version=i - 1)
            rollouts_total += batch.N
            dynamics = self._await_dynamics(version=i - 1, ids=ids)
            algorithm.settings = dataclasses.replace(algorithm.settings, kl_step=float(self.kl_step))
            reports = algorithm.update_with_dynamics(batch, dynamics)
            self._publish_controllers(algorithm, version=i)
            row = self._evaluate(cost, version=i, iteration=i, rollouts=rollouts_total, start=start,
                                 sample_cost=float(np.mean([r.sample_cost for r in reports])),
                                 kl_step=float(np.mean([r.kl_step for r in reports])),
                                 kl=float(np.mean([r.kl for r in reports])))
            # The checkpoint is the iteration's commit point; its metrics row follows it.
            write_checkpoint(self.output, Checkpoint(
                iteration=i, algorithm=algorithm, metrics=list(self.metrics), rollouts_total=rollouts_total,
                elapsed_s=time.perf_counter() - start, seed=self.seed, experiment=self.experiment,
                extra={"next_trial_id": self._next_trial_id}))
            append_metrics_row(metrics_path, row)
        plot_learning_curve(self.metrics, self.output / "learning_curve.png", config.success_distance_m)
        self._say(f"done: {self.iterations} iterations; results in {self.output}")

    def _publish_controllers(self, algorithm: LqrFlm, version: int) -> None:
        for m, controller in enumerate(algorithm.controllers):
            self._controller_pub.publish(wire.encode_controller(wire.ControllerMessage(m, version, controller)))

    def _collect(self, iteration: int, version: int):
        """The iteration's sample rollouts (M·N, in offline order) and their trial ids per condition."""
        config, layout = self.config, self.config.layout
        X, U, condition, ids = [], [], [], {}
        noise_scale = float(self.noise_scale)  # one scale for the whole batch
        for m in range(len(config.conditions)):
            ids[m] = []
            for n in range(config.rollouts_per_condition):
                noise = noise_scale * rollout_noise(self.seed, iteration, m, n, config.T, layout.dU,
                                                    config.exploration.smoothing, config.exploration.renormalize)
                rollout = self._trial(m, iteration, n, version, "sample", noise)
                self._recorder.write_rollout(RecordedRollout(
                    iteration=iteration, condition=m, index=n, controller_version=version,
                    joint_names=config.robot_spec.joint_names, positions=rollout.X[:, layout.position],
                    velocities=rollout.X[:, layout.velocity], efforts=rollout.U, commands=rollout.U,
                    target=np.asarray(config.conditions[m].target),
                    initial_positions=np.asarray(config.conditions[m].initial_positions)))
                X.append(rollout.X), U.append(rollout.U), condition.append(m)
                ids[m].append(rollout.trial_id)
        return Rollouts(np.stack(X), np.stack(U), np.array(condition)), ids

    def _wait_while_estopped(self) -> None:
        """Pause, without a time limit, while lqr_controller's e-stop is latched."""
        with self._arrived:
            if not self.estop_latched:
                return
            self.paused = True
        self._say("paused: the e-stop is latched; call lqr_controller's ~/reset_estop to resume")
        try:
            with self._arrived:
                while self.estop_latched:
                    if self._stop.is_set():
                        raise TrainingStopped("stopped")
                    self._arrived.wait(0.1)
        finally:
            self.paused = False
        self._say("resumed: the e-stop was reset")

    def _trial(self, m: int, iteration: int, index: int, version: int, purpose: str,
               noise: np.ndarray) -> wire.RolloutMessage:
        """Run one trial to a valid rollout, retrying with a new id; TrainingStopped after
        max_attempts failures. Trials the e-stop aborted are requested again after its
        reset and not counted."""
        spec = self.config.conditions[m]
        failures = []
        attempt = 0
        while True:
            self._wait_while_estopped()
            trial_id = self._next_trial_id
            self._next_trial_id += 1
            with self._arrived:
                self._awaited = trial_id
            self._request_pub.publish(wire.encode_trial_request(wire.TrialRequest(
                trial_id=trial_id, condition=m, iteration=iteration, index=index, controller_version=version,
                executor="controller", purpose=purpose,
                initial_positions=np.asarray(spec.initial_positions, float),
                target=np.asarray(spec.target, float), noise=noise)))
            arrived = self._wait(lambda: trial_id in self._results, self.trial_timeout_s)
            with self._arrived:
                self._awaited = None
                rollout = self._results.pop(trial_id, None)
            if arrived and rollout.status == wire.TrialStatus.OK:
                return rollout
            if (arrived and rollout.status == wire.TrialStatus.ESTOP) or (not arrived and self.estop_latched):
                self.estop_aborts += 1
                self.get_logger().warning(f"trial {trial_id} (iteration {iteration}, condition {m}, {purpose} "
                                          f"{index}) stopped by the e-stop: requested again after its reset")
                self._wait(lambda: self.estop_latched, ESTOP_SETTLE_S)  # the latch may trail the rollout
                continue
            attempt += 1
            failures.append(f"no rollout within trial_timeout_s={self.trial_timeout_s:g} s" if not arrived
                            else f"rollout dropped: {rollout.status.name}")
            max_attempts = int(self.max_attempts)
            self.get_logger().warning(f"trial {trial_id} (iteration {iteration}, condition {m}, {purpose} "
                                      f"{index}), attempt {attempt}/{max_attempts}: {failures[-1]}")
            if attempt >= max_attempts:
                raise TrainingStopped(f"iteration {iteration}, condition {m}, {purpose} {index}: no valid rollout "
                                      f"in {attempt} attempts ({'; '.join(failures)})")
            if self._stop.wait(RETRY_DELAY_S * attempt):
                raise TrainingStopped("stopped")

    def _await_dynamics(self, version: int, ids: Dict[int, List[int]]) -> list:
        """dynamics_fitter's complete fit of every condition's batch (trial ids as sampled)."""
        def matches(m):
            message = self._dynamics.get((m, version))
            return message is not None and list(message.trial_ids) == ids[m]
        M = len(self.config.conditions)
        if not self._wait(lambda: all(matches(m) for m in range(M)), self.dynamics_timeout_s):
            missing = [m for m in range(M) if not matches(m)]
            raise TrainingStopped(f"dynamics_fitter sent no complete fit of controller version {version} on the "
                                  f"rollouts sampled for conditions {missing} within "
                                  f"dynamics_timeout_s={self.dynamics_timeout_s:g} s")
        with self._arrived:
            fits = [self._dynamics[(m, version)].dynamics for m in range(M)]
            for key in [key for key in self._dynamics if key[1] <= version]:  # no longer awaited
                del self._dynamics[key]
            return fits

    def _evaluate(self, cost, *, version: int, iteration: int, rollouts: int, start: float,
                  sample_cost=None, kl_step=None, kl=None) -> dict:
        """Noise-free evaluation trials of the current controllers (version `version`); their
        metrics row (keys of the offline trainer's), added to self.metrics and returned."""
        config, layout = self.config, self.config.layout
        zero = np.zeros((config.T, layout.dU))
        distances, costs = [], []
        for m in range(len(config.conditions)):
            rollout = self._trial(m, iteration, 0, version, "evaluation", zero)
            distances.append(final_distance(rollout.X, layout))
            costs.append(float(cost.evaluate(rollout.X[None], rollout.U[None]).l.sum()))
        mean_cost = float(np.mean(costs))
        row = {"iteration": iteration, "rollouts": rollouts, "env_steps": rollouts * config.T,
               "mean_cost": mean_cost, "sample_cost": sample_cost, "final_distance_m": distances,
               "kl_step": kl_step, "kl": kl, "wall_s": time.perf_counter() - start}
        self.metrics.append(row)
        reached = sum(d < config.success_distance_m for d in distances)
        self._say(f"iteration {iteration:3d} | rollouts {rollouts:4d} | cost {mean_cost:10.3f} | "
                  f"final distance (cm) {' '.join(f'{100 * d:6.2f}' for d in distances)} | "
                  f"reached {reached}/{len(distances)} | {row['wall_s']:6.1f} s")
        return row

    def destroy_node(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self.stop()
            worker.join(timeout=10.0)
        super().destroy_node()


def main(args=None) -> int:
    return run_node(GpsTrainerNode, "gps_trainer", args, until=lambda node: node.finished.is_set())


if __name__ == "__main__":
    sys.exit(main())
