"""
gps_trainer: runs LQR-FLM or MDGPS on the robot, iteration by iteration.

Publishes    gps/controllers (mbpl_ros_interfaces/LinearGaussianController, transient local):
             every condition's current controller, with a version (= the number of updates
             behind it)
             gps/progress (mbpl_ros_interfaces/TrainingProgress, transient local): the phase,
             the trials done, the last evaluation and the time left, at every trial and phase
             gps/markers (visualization_msgs/MarkerArray, transient local): the targets and
             each condition's latest end-effector path, for RViz or Foxglove (frame world)
Subscribes   gps/rollouts (mbpl_ros_interfaces/Rollout): the result of the awaited trial
             (other ids ignored)
             gps/dynamics (mbpl_ros_interfaces/LinearGaussianDynamics): the complete fit of
             each condition's batch
             gps/estop_latched (std_msgs/Bool, transient local): lqr_controller's e-stop latch
Sends        gps/run_trial (mbpl_ros_interfaces/RunTrial action) goals: one trial at a time,
             each with a new trial id
Calls        <controller_node>/set_parameters (MDGPS): policy_path = output_dir/policy.pt
             before each policy trial, so lqr_controller's policy executor runs the newest policy

The loop is mbpl_ros.training.TrainingLoop, the very loop `mbpl train` runs; this node is
its RolloutSource (RosTrials): trials go to lqr_controller as RunTrial goals, their rollouts come
back from sample_collector, and the dynamics of each batch from dynamics_fitter (checked by
trial id). Sample trial n of condition m at iteration i explores with rollout_noise(seed, i,
m, n) (times noise_scale). For MDGPS the policy is trained on the robot's rollouts and
exported (policy.pt + policy.json, atomically) after every iteration; it is measured by
noise-free trials of lqr_controller's policy executor (policy_final_distance_m), and with
policy.sample_on_policy it draws the samples from the second iteration on. With a camera the
rollouts' images (sample_collector's, one per step) go to the loop with them: an image
policy's S-step trains on them, as offline, and the recording holds them. Each iteration
ends with checkpoint_<i>.pkl (mbpl_ros.checkpoint; `extra` holds the trial-id counter) — the
commit point — then its metrics.jsonl row; every accepted sample rollout is recorded to
rollouts.mcap as it arrives; the run ends with learning_curve.png and the node reports
`finished`.

Resume (`resume: true`): the run continues from the newest checkpoint in output_dir, read
and checked first (a damaged checkpoint, one of another experiment or one `mbpl train`
wrote stops the run before any trial, naming the file and the problem). metrics.jsonl and
the recording are cut back to the checkpoint, the controllers (and policy) of its iteration
k are published again, and iteration k+1 is sampled from its first rollout with the same
noise: completed iterations are neither repeated nor lost. Without a checkpoint it starts
from the beginning. Without `resume`, an output_dir that holds a run is refused (before any
trial) unless `overwrite: true` (training.claim_output, the rule of `mbpl train` too). The
GMM dynamics prior lives in dynamics_fitter: resumed with the same dynamics_fitter running,
the run continues exactly as it would have.

A trial whose goal is rejected (lqr_controller logs why), whose goal gets no answer within
GOAL_RESPONSE_TIMEOUT_S, that gets no valid rollout within trial_timeout_s (its goal is then
cancelled: the robot gets the fallback command), or whose rollout was dropped (gap, stale,
non-finite, aborted), is requested again with a new id, up to max_attempts times; then the
trainer stops with an error (exit code 1).

While lqr_controller's e-stop is latched the trainer pauses (it does not fail): it sends no
request, and a trial aborted by the e-stop (status ESTOP) is not counted as an attempt; after
the reset (~/reset_estop on lqr_controller) it requests that trial again, with a new id and
the same noise, so no rollout is lost or repeated. `paused` says whether it is waiting.

Runtime parameters (validated; an unsafe value is rejected with the reason): trial_timeout_s,
max_attempts, dynamics_timeout_s (from the next trial or wait), noise_scale (from the next
iteration's samples) and kl_step (from the next update).
"""
from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.service_introspection import ServiceIntrospectionState
from mbpl_ros_interfaces.action import RunTrial
from mbpl_ros_interfaces.msg import (LinearGaussianController, LinearGaussianDynamics, Rollout,
                                     TrainingProgress)
from std_msgs.msg import Bool
from visualization_msgs.msg import MarkerArray

from mbpl_ros.checkpoint import Checkpoint, CheckpointError
from mbpl_ros.config import ConfigError, check_output_directory
from mbpl_ros.dispatch import Dispatcher, TrialFailed, robot_names
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import (NodeParameterError, declare,
                                   declare_experiment, run_node)
from mbpl_ros.nodes.common import check_known_parameters
from mbpl_ros.nodes.parameters import GPS_TRAINER, check_changes
from mbpl_ros.recording import RecordingError
from mbpl_ros.training import (OutputInUse, TrainingLoop, Trial, TrialHook, TrialResult,
                               UnusableBatch, claim_output, contiguous, set_kl_step)

__all__ = ["GpsTrainerNode", "RosTrials", "SpreadTrials", "TrainingStopped", "contiguous",
           "main"]

#: Trial ids a resumed run skips after its checkpoint's counter: the interrupted run may have
#: used some after writing it (the half-done iteration's trials and their retries).
RESUME_TRIAL_ID_GAP = 1 << 20
#: Pause before retrying a trial, times the attempt number (lets a restarting node come up).
RETRY_DELAY_S = 0.2
#: After a trial aborted by the e-stop, how long to wait for the latch state (it may trail
#: the rollout) before the trial is requested again.
ESTOP_SETTLE_S = 1.0
#: A batch's fit not there this long after its last rollout (s, doubling each time): the batch
#: is published again, for a dynamics_fitter that was down while some of it came.
REPUBLISH_AFTER_S = 2.0
#: A RunTrial goal not accepted or rejected within this long (s) counts as a failed attempt.
GOAL_RESPONSE_TIMEOUT_S = 5.0
PARAMETERS = GPS_TRAINER


class TrainingStopped(RuntimeError):
    """The run cannot go on (a trial failed too often, a model never came, or stop())."""


class TrialGoals:
    """
    The RunTrial action client of one robot.

    send() sends a trial's goal; the answers arrive in the node's executor and wake its
    waits: `rejected` holds the trial ids lqr_controller rejected, `answered` those it
    accepted or rejected. cancel() cancels a goal given up on (its trial ends with the
    fallback command).
    """

    def __init__(self, node: "GpsTrainerNode", action_name: str, group) -> None:
        self.node = node
        self.client = ActionClient(node, RunTrial, action_name, callback_group=group)
        # Every goal sent also goes to <action>/_action/send_goal/_service_event, so a tool
        # (`ros2 action echo`, a recorder, a test) sees the trainer's requests.
        self.client.configure_introspection(node.get_clock(), wire.EVENTS_QOS,
                                            ServiceIntrospectionState.CONTENTS)
        self.rejected: set = set()
        self.answered: set = set()
        self.rejections = 0
        self._handles: Dict[int, object] = {}   # trial id -> goal handle, until its result
        node._trial_clients.append(self)

    def ready(self) -> bool:
        """Whether the action server is discovered."""
        return self.client.server_is_ready()

    def send(self, request: wire.TrialRequest) -> None:
        """Send the goal of `request` (its answer comes later)."""
        trial_id = request.trial_id
        future = self.client.send_goal_async(wire.encode_trial_request(request))
        future.add_done_callback(lambda done: self._on_answer(trial_id, done))

    def _on_answer(self, trial_id: int, done) -> None:
        handle = done.result()
        with self.node._arrived:
            self.answered.add(trial_id)
            if handle is None or not handle.accepted:
                self.rejected.add(trial_id)
                self.rejections += 1
            else:
                self._handles[trial_id] = handle
                handle.get_result_async().add_done_callback(
                    lambda _: self._handles.pop(trial_id, None))
            self.node._arrived.notify_all()

    def forget(self, trial_id: int) -> None:
        """Drop what is known of `trial_id`'s answer (its attempt is over)."""
        with self.node._arrived:
            self.rejected.discard(trial_id)
            self.answered.discard(trial_id)

    def destroy(self) -> None:
        """Destroy the client (before the node: its introspection uses the node's clock)."""
        self.client.destroy()

    def cancel(self, trial_id: int) -> None:
        """Cancel the goal of `trial_id` if it is still running."""
        with self.node._arrived:
            handle = self._handles.pop(trial_id, None)
        if handle is not None:
            handle.cancel_goal_async()


class GpsTrainerNode(Node):
    def __init__(self, node_name: str = "gps_trainer", log: Optional[TextIO] = None,
                 **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self._read_parameters()
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        self.log = log                    # progress lines go here too (e.g. sys.stderr), if given
        self._loop: Optional[TrainingLoop] = None
        self.finished = threading.Event()
        self.exit_code = 0
        self.error: Optional[str] = None
        self.ignored_results = 0          # rollouts whose trial id was not the awaited one
        self.estop_latched = False        # lqr_controller's e-stop latch, as last heard
        self.paused = False               # waiting for the e-stop to be reset
        # trials aborted by the e-stop (requested again, not counted)
        self.estop_aborts = 0
        self._stop = threading.Event()
        self._arrived = threading.Condition()
        self._results: Dict[int, wire.RolloutMessage] = {}
        self._awaited: Optional[int] = None
        # (condition, controller version) -> latest complete fit
        self._dynamics: Dict[tuple, wire.DynamicsMessage] = {}
        self._next_trial_id = secrets.randbits(30) << 20          # distinct from another run's ids
        group = MutuallyExclusiveCallbackGroup()
        self._trial_clients: List[TrialGoals] = []
        self._goals = TrialGoals(self, wire.RUN_TRIAL_ACTION, group)
        self._progress_pub = self.create_publisher(TrainingProgress, wire.PROGRESS_TOPIC,
                                                   wire.LATCHED_STATE_QOS)
        self._markers_pub = self.create_publisher(MarkerArray, wire.MARKERS_TOPIC,
                                                  wire.LATCHED_STATE_QOS)
        # condition -> end-effector path of its last trial
        self._paths: Dict[int, np.ndarray] = {}
        self._controller_pub = self.create_publisher(LinearGaussianController,
                                                     wire.CONTROLLERS_TOPIC,
                                                     wire.CONTROLLERS_QOS)
        # For a batch published again (REPUBLISH_AFTER_S).
        self._rollout_pub = self.create_publisher(Rollout, wire.ROLLOUTS_TOPIC,
                                                  wire.EVENTS_QOS)
        self._rollout_sub = self.create_subscription(Rollout, wire.ROLLOUTS_TOPIC,
                                                     self._on_rollout,
                                                     wire.EVENTS_QOS, callback_group=group)
        self._dynamics_sub = self.create_subscription(LinearGaussianDynamics, wire.DYNAMICS_TOPIC,
                                                      self._on_dynamics,
                                                      wire.EVENTS_QOS, callback_group=group)
        self.create_subscription(Bool, wire.ESTOP_LATCHED_TOPIC, self._on_estop_latched,
                                 wire.LATCHED_STATE_QOS, callback_group=group)
        self._policy_client = self.create_client(
            SetParameters, f"{self.controller_node}/set_parameters", callback_group=group)
        self._policy_set: Optional[tuple] = None  # (path, version) lqr_controller last confirmed
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Every client, publisher and subscription exists before the executor spins: rclpy's
        # ActionClient is added to the node before its lock exists, so one made while spinning
        # can kill the executor's thread.
        self._source = SpreadTrials(self) if self.robots else RosTrials(self)
        self._worker = threading.Thread(target=self._run, name="gps_trainer", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters
    def _read_parameters(self) -> None:
        self.config, self.experiment_path = declare_experiment(self)
        self._check_experiment()
        iterations = declare(self, PARAMETERS, "iterations")
        self.iterations = iterations or self.config.iterations
        seed = declare(self, PARAMETERS, "seed")
        self.seed = self.config.seed if seed < 0 else seed
        output = declare(self, PARAMETERS, "output_dir", f"runs/gps_{self.experiment_path.stem}")
        if not output:
            raise NodeParameterError("parameter 'output_dir' is empty; allowed: a writable "
                                     "directory path")
        try:
            self.output = check_output_directory(output, "parameter 'output_dir'")
        except ConfigError as error:
            raise NodeParameterError(str(error)) from None
        self.trial_timeout_s = declare(self, PARAMETERS, "trial_timeout_s")
        self.max_attempts = declare(self, PARAMETERS, "max_attempts")
        self.dynamics_timeout_s = declare(self, PARAMETERS, "dynamics_timeout_s")
        self.kl_step = declare(self, PARAMETERS, "kl_step",
                               float(self.config.trajectory_optimization.kl_step))
        self.noise_scale = declare(self, PARAMETERS, "noise_scale")
        self.discovery_timeout_s = declare(self, PARAMETERS, "discovery_timeout_s")
        self.resume = declare(self, PARAMETERS, "resume")
        self.overwrite = declare(self, PARAMETERS, "overwrite")
        if self.resume and self.overwrite:
            raise NodeParameterError("parameters 'resume' and 'overwrite' are both true; "
                                     "allowed: at most one")
        self.controller_node = declare(self, PARAMETERS, "controller_node")
        self.allow_incomplete_recording = declare(self, PARAMETERS, "allow_incomplete_recording")
        if not self.controller_node:
            raise NodeParameterError("parameter 'controller_node' is empty; allowed: a node name, "
                                     "e.g. /lqr_controller")
        robots = declare(self, PARAMETERS, "robots")
        try:
            self.robots = robot_names(robots)
        except ValueError as error:
            raise NodeParameterError(str(error)) from None

    def _check_experiment(self) -> None:
        """Refuse what the graph cannot run, naming the file, key and what is allowed."""
        config, path = self.config, str(self.experiment_path)
        if config.algorithm == "mdgps" and config.policy.device != "cpu":
            from mbpl_ros.core.policy.network import resolve_device

            try:
                resolve_device(config.policy.device)
            except RuntimeError as error:
                raise NodeParameterError(
                    f"parameter 'experiment_config' = {path!r}: key policy.device is "
                    f"{config.policy.device!r}: {error}; allowed: cpu or an available CUDA "
                    "device") from None

    @property
    def metrics(self) -> List[dict]:
        """Return the metrics rows so far (metrics.jsonl's)."""
        return list(self._loop.metrics) if self._loop is not None else []

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """
        Apply runtime changes, all or none, each checked.

        An unsafe value is rejected with the reason; the run reads the changes between trials
        (and kl_step before each update).
        """
        reason = check_changes(PARAMETERS, parameters)
        if reason is not None:
            self.get_logger().warning(f"rejected a parameter change: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        for parameter in parameters:
            if parameter.name in PARAMETERS and PARAMETERS[parameter.name].runtime:
                setattr(self, parameter.name, parameter.value)
                self.get_logger().info(f"parameter {parameter.name} = {parameter.value!r} "
                                       "(from the next trial, iteration or update)")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs
    def _on_estop_latched(self, msg: Bool) -> None:
        with self._arrived:
            self.estop_latched = bool(msg.data)
            self._arrived.notify_all()

    def _on_rollout(self, msg: Rollout) -> None:
        try:
            rollout = wire.decode_rollout(msg, dX=self.config.layout.dX, dU=self.config.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a rollout: {error}")
            return
        with self._arrived:
            if rollout.trial_id != self._awaited:
                self.ignored_results += 1
                self.get_logger().debug(f"ignored the rollout of trial {rollout.trial_id}: "
                                        f"awaiting {self._awaited}")
                return
            self._results[rollout.trial_id] = rollout
            self._arrived.notify_all()

    def _on_dynamics(self, msg: LinearGaussianDynamics) -> None:
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

    def _notify(self) -> None:
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
        except (TrainingStopped, UnusableBatch) as error:
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

    def _train(self) -> None:
        if self.config.algorithm == "mdgps":
            import torch

            torch.set_num_threads(1)   # a small network: threads cost more than they give
        source = self._source
        self._loop = TrainingLoop(
            self.config, self.output, self.seed, source, record=True, say=self._say,
            allow_incomplete_recording=self.allow_incomplete_recording,
            before_update=lambda algorithm: set_kl_step(algorithm, self.kl_step),
            on_progress=self._publish_progress, on_trial=self._publish_markers)
        checkpoint = self._checkpoint_to_resume()
        try:
            self._loop.run(self.iterations, checkpoint=checkpoint)
        except RecordingError as error:   # e.g. a resume whose recording lacks rollouts
            raise TrainingStopped(f"resume: {error}") from None
        self._say(f"done: {self.iterations} iterations; results in {self.output}")
        if isinstance(source, SpreadTrials):
            self._say("trials per robot: " + ", ".join(
                f"{name} {count}" for name, count in source.completed.items())
                + f"; trials lost by a robot and run again: {source.lost}")

    def _publish_progress(self, progress) -> None:
        self._progress_pub.publish(wire.encode_progress(
            progress, self.config.algorithm, self.get_clock().now().nanoseconds))

    def _publish_markers(self, result: TrialResult) -> None:
        """Publish the targets and the end-effector path of each condition's latest trial."""
        config, layout = self.config, self.config.layout
        target = np.asarray(config.conditions[result.trial.condition].target, dtype=float)
        self._paths[result.trial.condition] = result.X[:, layout.ee_offset[:3]] + target
        self._markers_pub.publish(wire.encode_markers(
            [c.target for c in config.conditions], self._paths,
            self.get_clock().now().nanoseconds))

    def _checkpoint_to_resume(self) -> Optional[Checkpoint]:
        """
        With resume: output_dir's newest checkpoint, checked (None: there is none).

        Without: None, after training.claim_output allowed the directory. TrainingStopped naming
        the file and the problem otherwise; checked before anything is written.
        """
        try:
            claim_output(self.output, resume=self.resume, overwrite=self.overwrite,
                         resume_hint="set parameter resume: true",
                         overwrite_hint="overwrite: true")
        except OutputInUse as error:
            raise TrainingStopped(f"output_dir {error}") from None
        if not self.resume:
            return None
        try:
            checkpoint = self._loop.checkpoint_to_resume()
        except CheckpointError as error:
            raise TrainingStopped(f"resume: the run in output_dir cannot be continued: "
                                  f"{error}") from None
        if checkpoint is not None and "next_trial_id" not in checkpoint.extra:
            raise TrainingStopped(f"resume: {checkpoint.path} was not written by gps_trainer (it "
                                  "has no trial-id counter); continue it with "
                                  "`mbpl train --resume`")
        return checkpoint

    def _wait_for_graph(self) -> None:
        def connected():
            return (self._goals.ready()
                    and self._controller_pub.get_subscription_count() > 0
                    and self._others_publishing(wire.ROLLOUTS_TOPIC) > 0
                    and self._dynamics_sub.get_publisher_count() > 0
                    and (self.config.algorithm != "mdgps"
                         or self._policy_client.service_is_ready()))
        deadline = time.monotonic() + self.discovery_timeout_s
        while not connected():
            if self._stop.is_set():
                raise TrainingStopped("stopped")
            if time.monotonic() > deadline:
                raise TrainingStopped("lqr_controller, sample_collector and dynamics_fitter did "
                                      "not all appear "
                                      f"within discovery_timeout_s={self.discovery_timeout_s:g} s "
                                      f"({wire.RUN_TRIAL_ACTION} server ready: "
                                      f"{self._goals.ready()}, publishers of "
                                      f"{wire.ROLLOUTS_TOPIC}: "
                                      f"{self._others_publishing(wire.ROLLOUTS_TOPIC)}, of "
                                      f"{wire.DYNAMICS_TOPIC}: "
                                      f"{self._dynamics_sub.get_publisher_count()}, "
                                      f"{self.controller_node}/set_parameters ready: "
                                      f"{self._policy_client.service_is_ready()})")
            time.sleep(0.05)

    def _others_publishing(self, topic: str) -> int:
        """Count the publishers of `topic` other than this node's own."""
        return sum(1 for info in self.get_publishers_info_by_topic(topic)
                   if (info.node_name, info.node_namespace)
                   != (self.get_name(), self.get_namespace()))

    def _publish_controllers(self, controllers, version: int) -> None:
        for m, controller in enumerate(controllers):
            self._controller_pub.publish(wire.encode_controller(
                wire.ControllerMessage(m, version, controller)))

    def _use_policy(self, path: Path, version: int) -> None:
        """
        Make lqr_controller's policy executor run the policy at `path` (of `version`).

        Its policy_path is set over its set_parameters service (it reloads a changed file).
        """
        if self._policy_set == (str(path), version):
            return
        parameter = Parameter("policy_path", Parameter.Type.STRING, str(path)).to_parameter_msg()
        future = self._policy_client.call_async(SetParameters.Request(parameters=[parameter]))
        future.add_done_callback(lambda _: self._notify())
        if not self._wait(future.done, self.trial_timeout_s):
            raise TrainingStopped(f"{self.controller_node}/set_parameters (policy_path) gave no "
                                  f"answer within trial_timeout_s={self.trial_timeout_s:g} s")
        result = future.result().results[0]
        if not result.successful:
            raise TrainingStopped(f"{self.controller_node} refused policy_path {str(path)!r}: "
                                  f"{result.reason}")
        self._policy_set = (str(path), version)

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

    def _trial(self, trial: Trial, noise: np.ndarray,
               policy: Optional[tuple]) -> wire.RolloutMessage:
        """
        Run one trial to a valid rollout, retrying with a new id.

        Raises TrainingStopped after max_attempts failures. Trials the e-stop aborted are
        requested again after its reset and not counted. policy: (path, version) for a policy
        trial.
        """
        m, iteration, index, purpose = trial.condition, trial.iteration, trial.index, trial.purpose
        spec = self.config.conditions[m]
        failures = []
        attempt = 0
        while True:
            self._wait_while_estopped()
            if policy is not None:
                self._use_policy(*policy)
            trial_id = self._next_trial_id
            self._next_trial_id += 1
            with self._arrived:
                self._awaited = trial_id
            goals = self._goals
            goals.send(wire.TrialRequest(
                trial_id=trial_id, condition=m, iteration=iteration, index=index,
                controller_version=trial.version, executor=trial.executor, purpose=purpose,
                initial_positions=np.asarray(spec.initial_positions, float),
                target=np.asarray(spec.target, float), noise=noise))
            answered = self._wait(lambda: trial_id in goals.answered or trial_id in self._results,
                                  min(GOAL_RESPONSE_TIMEOUT_S, self.trial_timeout_s))
            rejected = trial_id in goals.rejected
            arrived = not rejected and answered and self._wait(
                lambda: trial_id in self._results, self.trial_timeout_s)
            with self._arrived:
                self._awaited = None
                rollout = self._results.pop(trial_id, None)
            goals.forget(trial_id)
            if not arrived:
                goals.cancel(trial_id)   # the robot stops it (fallback command) if it runs
            if arrived and rollout.status == wire.TrialStatus.OK:
                return rollout
            if ((arrived and rollout.status == wire.TrialStatus.ESTOP)
                    or (not arrived and self.estop_latched)):
                self.estop_aborts += 1
                self.get_logger().warning(f"trial {trial_id} (iteration {iteration}, condition "
                                          f"{m}, {purpose} {index}) stopped by the e-stop: "
                                          "requested again after its reset")
                # the latch may trail the rollout
                self._wait(lambda: self.estop_latched, ESTOP_SETTLE_S)
                continue
            attempt += 1
            self._policy_set = None   # a restarted lqr_controller has lost it: set it again
            if rejected:
                failures.append("goal rejected by lqr_controller (its log says why)")
            elif not answered:
                failures.append(f"goal not answered within {GOAL_RESPONSE_TIMEOUT_S:g} s")
            else:
                failures.append(f"no rollout within trial_timeout_s={self.trial_timeout_s:g} s"
                                if not arrived else f"rollout dropped: {rollout.status.name}")
            max_attempts = int(self.max_attempts)
            self.get_logger().warning(f"trial {trial_id} (iteration {iteration}, condition {m}, "
                                      f"{purpose} {index}), attempt {attempt}/{max_attempts}: "
                                      f"{failures[-1]}")
            if attempt >= max_attempts:
                raise TrainingStopped(f"iteration {iteration}, condition {m}, {purpose} {index}: "
                                      f"no valid rollout in {attempt} attempts "
                                      f"({'; '.join(failures)})")
            if self._stop.wait(RETRY_DELAY_S * attempt):
                raise TrainingStopped("stopped")

    def _await_dynamics(self, version: int, batch: Dict[int, List[wire.RolloutMessage]]) -> list:
        """
        Return dynamics_fitter's complete fit of every condition's batch.

        The batch is its rollouts, by trial id, as sampled. An overdue fit has its batch
        published again (REPUBLISH_AFTER_S).
        """
        ids = {m: [rollout.trial_id for rollout in rollouts] for m, rollouts in batch.items()}

        def matches(m):
            message = self._dynamics.get((m, version))
            return message is not None and list(message.trial_ids) == ids[m]
        M = len(self.config.conditions)
        deadline = time.monotonic() + self.dynamics_timeout_s
        pause = REPUBLISH_AFTER_S
        while not self._wait(lambda: all(matches(m) for m in range(M)),
                             min(pause, deadline - time.monotonic())):
            missing = [m for m in range(M) if not matches(m)]
            if time.monotonic() >= deadline:   # e.g. the fitter refused an absurd fit
                raise UnusableBatch(
                    f"dynamics_fitter sent no complete fit of controller version {version} on the "
                    f"rollouts sampled for conditions {missing} within "
                    f"dynamics_timeout_s={self.dynamics_timeout_s:g} s")
            self.get_logger().warning(f"no fit of controller version {version} for conditions "
                                      f"{missing} yet: publishing their rollouts again")
            for m in missing:
                for rollout in batch[m]:
                    self._rollout_pub.publish(wire.encode_rollout(rollout))
            pause *= 2
        with self._arrived:
            fits = [self._dynamics[(m, version)].dynamics for m in range(M)]
            for key in [key for key in self._dynamics if key[1] <= version]:  # no longer awaited
                del self._dynamics[key]
            return fits

    def destroy_node(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self.stop()
            worker.join(timeout=10.0)
        for client in getattr(self, "_trial_clients", []):
            client.destroy()
        super().destroy_node()


class RosTrials:
    """
    The training loop's RolloutSource on the robot, through the node graph.

    Each trial is a request to lqr_controller (retried, paused by the e-stop:
    GpsTrainerNode._trial), its rollout from sample_collector; each batch's dynamics from
    dynamics_fitter. Trials run one at a time (one robot).
    """

    def __init__(self, node: GpsTrainerNode) -> None:
        self.node = node
        self.policy_path: Optional[Path] = None
        self.policy_version = -1
        self.samples: Dict[int, wire.RolloutMessage] = {}   # the batch being sampled, by trial id

    def start(self, state: Optional[dict]) -> None:
        """
        Wait for the rest of the graph.

        Trial ids go on from a resumed run's, past any it used after its checkpoint.
        """
        if state is not None:
            self.node._next_trial_id = int(state["next_trial_id"]) + RESUME_TRIAL_ID_GAP
        self.node._wait_for_graph()

    def publish(self, controllers, version: int, policy_path: Optional[Path]) -> None:
        """
        Publish the controllers on gps/controllers.

        The policy goes to lqr_controller before its next trial.
        """
        self.node._publish_controllers(controllers, version)
        if policy_path is not None:
            self.policy_path, self.policy_version = Path(policy_path), version

    def run_trials(self, trials: Sequence[Trial], on_trial: TrialHook) -> List[TrialResult]:
        """Run each trial in turn; sample noise times noise_scale (one scale for a whole call)."""
        noise_scale = float(self.node.noise_scale)
        results = []
        for trial in trials:
            policy = None
            if trial.executor == "policy":
                if self.policy_path is None or self.policy_version != trial.version:
                    raise TrainingStopped(f"no exported policy of version {trial.version} to run")
                policy = (self.policy_path, trial.version)
            noise = noise_scale * trial.noise if trial.purpose == "sample" else trial.noise
            rollout = self.node._trial(trial, noise, policy)
            if trial.purpose == "sample":
                self.samples[rollout.trial_id] = rollout
            result = TrialResult(trial, rollout.X, rollout.U, rollout.U, rollout.trial_id,
                                 images=rollout.images)
            on_trial(result)
            results.append(result)
        return results

    def fitted_dynamics(self, version: int, results: Sequence[TrialResult]) -> list:
        """
        Return dynamics_fitter's complete fits of exactly these rollouts, per condition.

        The rollouts are matched by trial id.
        """
        M = len(self.node.config.conditions)
        batch: Dict[int, List[wire.RolloutMessage]] = {m: [] for m in range(M)}
        for result in results:
            batch[result.trial.condition].append(self.samples[result.trial_id])
        self.samples = {}
        return self.node._await_dynamics(version, batch)

    def state(self) -> dict:
        return {"next_trial_id": self.node._next_trial_id}


class RobotLink:
    """
    The trainer's end of one robot in namespace `name`.

    Its trial goals and controllers out, its rollouts and e-stop latch in, its
    lqr_controller's set_parameters (MDGPS).
    """

    def __init__(self, node: GpsTrainerNode, name: str, on_rollout) -> None:
        self.node, self.name = node, name
        ns = f"/{name}/"
        group = MutuallyExclusiveCallbackGroup()
        self.goals = TrialGoals(node, ns + wire.RUN_TRIAL_ACTION, group)
        self.controller_pub = node.create_publisher(
            LinearGaussianController, ns + wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
        self.rollout_sub = node.create_subscription(
            Rollout, ns + wire.ROLLOUTS_TOPIC, lambda msg: on_rollout(self, msg),
            wire.EVENTS_QOS, callback_group=group)
        self.estop_latched = False
        node.create_subscription(Bool, ns + wire.ESTOP_LATCHED_TOPIC, self._on_latch,
                                 wire.LATCHED_STATE_QOS, callback_group=group)
        self.policy_client = node.create_client(
            SetParameters, f"{ns}lqr_controller/set_parameters", callback_group=group)
        self.policy_set: Optional[tuple] = None   # (path, version) its lqr_controller confirmed

    def _on_latch(self, msg: Bool) -> None:
        with self.node._arrived:
            self.estop_latched = bool(msg.data)
            self.node._arrived.notify_all()

    def present(self) -> bool:
        """
        Tell whether its lqr_controller and sample_collector are in the graph.

        For MDGPS, its policy service too.
        """
        return (self.goals.ready()
                and self.rollout_sub.get_publisher_count() > 0
                and (self.node.config.algorithm != "mdgps"
                     or self.policy_client.service_is_ready()))

    def use_policy(self, path: Path, version: int) -> None:
        """Set its lqr_controller's policy_path to `path` (of `version`), as _use_policy."""
        if self.policy_set == (str(path), version):
            return
        parameter = Parameter("policy_path", Parameter.Type.STRING, str(path)).to_parameter_msg()
        future = self.policy_client.call_async(SetParameters.Request(parameters=[parameter]))
        future.add_done_callback(lambda _: self.node._notify())
        if not self.node._wait(future.done, self.node.trial_timeout_s):
            raise TrainingStopped(f"/{self.name}/lqr_controller/set_parameters (policy_path) gave "
                                  "no answer within trial_timeout_s="
                                  f"{self.node.trial_timeout_s:g} s")
        result = future.result().results[0]
        if not result.successful:
            raise TrainingStopped(f"/{self.name}/lqr_controller refused policy_path "
                                  f"{str(path)!r}: {result.reason}")
        self.policy_set = (str(path), version)


class SpreadTrials(RosTrials):
    """
    The RolloutSource over several robots (parameter `robots`).

    Each robot is a namespace with its own lqr_controller, sample_collector and robot: the
    trials of each call are handed to free robots in parallel (mbpl_ros.dispatch.Dispatcher:
    assignment, retries, e-stop, robots leaving and rejoining), and the results come back in
    the trials' order, each passed to on_trial in that order, so the recording is the one a
    single robot makes.

    One dynamics_fitter serves the trainer (in its namespace): a condition's batch is spread
    over the robots, and its fit — and the GMM prior, which accumulates every batch — must be
    the offline one, so the fitter must see the whole batch. The trainer forwards each
    accepted sample rollout to its own gps/rollouts, where the fitter reads it; a rollout
    given up on (a late one from a stalled robot) is never forwarded.
    """

    def __init__(self, node: GpsTrainerNode) -> None:
        super().__init__(node)
        self._arrivals: List[tuple] = []   # (link, rollout) of awaited ids, in arrival order
        self._awaited: set = set()
        self.links = [RobotLink(node, name, self._on_rollout) for name in node.robots]
        self.completed = {name: 0 for name in node.robots}   # trials each robot completed
        self.lost = 0      # trials a robot lost (it left, stalled or was e-stopped): run again

    def _on_rollout(self, link: RobotLink, msg: Rollout) -> None:
        node = self.node
        try:
            rollout = wire.decode_rollout(msg, dX=node.config.layout.dX, dU=node.config.layout.dU)
        except wire.WireFormatError as error:
            node.get_logger().error(f"ignored a rollout from /{link.name}: {error}")
            return
        with node._arrived:
            if rollout.trial_id not in self._awaited:
                node.ignored_results += 1
                return
            self._arrivals.append((link, rollout))
            node._arrived.notify_all()

    def start(self, state: Optional[dict]) -> None:
        """
        Wait for the fitter and the robots, trial ids as RosTrials.

        All of the robots, up to discovery_timeout_s; then those present, with a warning;
        none: TrainingStopped.
        """
        node = self.node
        if state is not None:
            node._next_trial_id = int(state["next_trial_id"]) + RESUME_TRIAL_ID_GAP
        deadline = time.monotonic() + node.discovery_timeout_s
        while True:
            present = [link.name for link in self.links if link.present()]
            fitter = node._dynamics_sub.get_publisher_count() > 0
            if fitter and len(present) == len(self.links):
                return
            if node._stop.wait(0.05):
                raise TrainingStopped("stopped")
            if time.monotonic() > deadline:
                if fitter and present:
                    missing = sorted(set(node.robots) - set(present))
                    node.get_logger().warning(f"robots {missing} not found within "
                                              f"discovery_timeout_s: starting with {present}")
                    return
                raise TrainingStopped(
                    f"within discovery_timeout_s={node.discovery_timeout_s:g} s: robots found "
                    f"{present} of {node.robots} (each needs its lqr_controller and "
                    f"sample_collector), dynamics_fitter found: {fitter}")

    def publish(self, controllers, version: int, policy_path: Optional[Path]) -> None:
        """
        Publish the controllers on every robot's gps/controllers.

        They are transient local: a robot that joins later gets them too.
        """
        for link in self.links:
            for m, controller in enumerate(controllers):
                link.controller_pub.publish(wire.encode_controller(
                    wire.ControllerMessage(m, version, controller)))
        if policy_path is not None:
            self.policy_path, self.policy_version = Path(policy_path), version

    def run_trials(self, trials: Sequence[Trial], on_trial: TrialHook) -> List[TrialResult]:
        """Spread the trials over the free robots; results (and on_trial) in their order."""
        node = self.node
        noise_scale = float(node.noise_scale)
        if any(t.executor == "policy" and (self.policy_path is None
                                           or self.policy_version != t.version) for t in trials):
            raise TrainingStopped("no exported policy of the version a trial needs")
        links = {link.name: link for link in self.links}
        dispatcher = Dispatcher(len(trials), node.robots, node._next_trial_id,
                                int(node.max_attempts))
        emitted, results = 0, []
        paused = False
        try:
            while emitted < len(trials):
                now = time.monotonic()
                with node._arrived:
                    arrivals, self._arrivals = self._arrivals, []
                for link, rollout in arrivals:
                    self._take(dispatcher, link, rollout, trials, now)
                self._take_rejections(dispatcher, links, now)
                for name, link in links.items():
                    present = link.present()
                    if present != dispatcher.state[name].present:
                        node.get_logger().warning(
                            f"robot /{name} {'joined' if present else 'left'}")
                    lost = dispatcher.set_present(name, present)
                    if lost is None:
                        lost = dispatcher.set_estopped(name, link.estop_latched)
                    if lost is not None:
                        self.lost += 1
                        node.get_logger().warning(f"robot /{name} lost trial {lost} (left or "
                                                  "e-stopped): it goes to another robot")
                for name, index, trial_id in dispatcher.expire(now):
                    self.lost += 1
                    links[name].goals.cancel(trial_id)   # the robot stops it if it runs
                    node.get_logger().warning(f"robot /{name}: no rollout of trial {trial_id} "
                                              f"within trial_timeout_s: it goes to another robot")
                    links[name].policy_set = None   # a restarted lqr_controller lost it
                all_stopped = all(s.estopped for s in dispatcher.state.values())
                if all_stopped != paused:
                    paused = node.paused = all_stopped
                    node._say("paused: every robot's e-stop is latched" if paused
                              else "resumed: a robot's e-stop was reset")
                for name, index, trial_id in dispatcher.assign(now, float(node.trial_timeout_s)):
                    self._request(links[name], trials[index], trial_id, noise_scale)
                node._next_trial_id = dispatcher.next_id
                while emitted < len(trials) and emitted in dispatcher.results:
                    result = dispatcher.results[emitted]
                    on_trial(result)
                    results.append(result)
                    emitted += 1
                if emitted < len(trials):
                    node._wait(lambda: bool(self._arrivals), 0.05)
        except TrialFailed as error:
            t = trials[error.index]
            raise TrainingStopped(f"iteration {t.iteration}, condition {t.condition}, "
                                  f"{t.purpose} {t.index}: {error}") from None
        finally:
            node.paused = False
            node.estop_aborts += dispatcher.estop_aborts
            for name, robot in dispatcher.state.items():
                self.completed[name] += robot.completed
            with node._arrived:
                self._awaited.clear()
        return results

    def _request(self, link: RobotLink, trial: Trial, trial_id: int, noise_scale: float) -> None:
        if trial.executor == "policy":
            link.use_policy(self.policy_path, trial.version)
        spec = self.node.config.conditions[trial.condition]
        noise = noise_scale * trial.noise if trial.purpose == "sample" else trial.noise
        with self.node._arrived:
            self._awaited.add(trial_id)
        link.goals.send(wire.TrialRequest(
            trial_id=trial_id, condition=trial.condition, iteration=trial.iteration,
            index=trial.index, controller_version=trial.version, executor=trial.executor,
            purpose=trial.purpose, initial_positions=np.asarray(spec.initial_positions, float),
            target=np.asarray(spec.target, float), noise=noise))

    def _take_rejections(self, dispatcher: Dispatcher, links: Dict[str, RobotLink],
                         now: float) -> None:
        """Take the goals a robot rejected: each a failed attempt of its trial (tried again)."""
        for name, link in links.items():
            with self.node._arrived:
                rejected, link.goals.rejected = link.goals.rejected, set()
            for trial_id in rejected:
                link.goals.forget(trial_id)
                if dispatcher.robot_of(trial_id) == name:
                    with self.node._arrived:
                        self._awaited.discard(trial_id)
                    self.node.get_logger().warning(f"robot /{name}: goal of trial {trial_id} "
                                                   "rejected (its lqr_controller logs why)")
                    dispatcher.failed(trial_id, "goal rejected", now)

    def _take(self, dispatcher: Dispatcher, link: RobotLink, rollout, trials, now: float) -> None:
        """Take a rollout of an awaited id from `link`: complete, fail or put back its trial."""
        if dispatcher.robot_of(rollout.trial_id) != link.name:
            self.node.ignored_results += 1      # given up on meanwhile, or not this robot's
            return
        with self.node._arrived:
            self._awaited.discard(rollout.trial_id)
        link.goals.forget(rollout.trial_id)
        index = dispatcher.state[link.name].running.index
        trial = trials[index]
        if rollout.status == wire.TrialStatus.OK:
            dispatcher.succeeded(rollout.trial_id, TrialResult(
                trial, rollout.X, rollout.U, rollout.U, rollout.trial_id,
                images=rollout.images), now)
            if trial.purpose == "sample":
                self.samples[rollout.trial_id] = rollout
                self.node._rollout_pub.publish(wire.encode_rollout(rollout))   # to the fitter
        elif rollout.status == wire.TrialStatus.ESTOP:
            dispatcher.estop_aborted(rollout.trial_id)
            self.lost += 1
            dispatcher.state[link.name].resting_until = now + ESTOP_SETTLE_S   # latch trails
            self.node.get_logger().warning(f"robot /{link.name}: trial {rollout.trial_id} "
                                           "stopped by the e-stop: it goes to another robot")
        else:
            link.policy_set = None
            self.node.get_logger().warning(f"robot /{link.name}: trial {rollout.trial_id} "
                                           f"dropped ({rollout.status.name}): tried again")
            dispatcher.failed(rollout.trial_id, f"rollout dropped: {rollout.status.name}", now)


def main(args=None) -> int:
    return run_node(GpsTrainerNode, "gps_trainer", args, until=lambda node: node.finished.is_set())


if __name__ == "__main__":
    sys.exit(main())
