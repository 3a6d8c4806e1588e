"""lqr_controller: runs trials of a condition's time-varying linear-Gaussian controller
u_t = K_t x_t + k_t + chol_t ε_t (or of the exported TorchScript policy) on the robot.

Subscribes   joint_states (sensor_msgs/JointState)
             gps/controllers (record lg_controller, transient local): the latest controllers
             gps/trial_requests (record trial_request): which trial to run next
Publishes    effort_controller/commands (std_msgs/Float64MultiArray, one effort per joint in
             the order of `joints`: the ros2_control forward-command convention)
             gps/trial_records (record trial_record): what was done in each trial
Calls        <sim_node>/set_parameters, <sim_node>/reset (reset_mode sim_service only)

A trial: reset to the request's start pose — with a PD phase that drives the arm there
(`reset_mode: pd`, what a real robot needs) or by setting sim_robot's initial_positions and
calling its reset service (`reset_mode: sim_service`, exactly the offline trainer's
arm.reset(q0)) — then T steps. In `lockstep` mode a step is taken per joint state received
(sim_robot in lockstep steps once per command, so the loop is deterministic); in
`realtime` mode a timer at control_rate_hz acts on the latest joint state. The state x is
built from q, qd by forward kinematics (sim.rollout.JointStateToState), as everywhere.
A new request aborts a running trial (the trainer only re-requests after giving up on one).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import rclpy
from rcl_interfaces.srv import SetParameters
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import NodeParameterError, ParameterType, declare, declare_experiment, run_node
from mbpl_ros.sim.robots import robot_spec
from mbpl_ros.sim.rollout import JointStateToState

MODES = ("realtime", "lockstep")
RESET_MODES = ("pd", "sim_service")
#: A sim_service reset is complete at the first joint state this close to the start pose at rest.
RESET_MATCH_TOLERANCE = 1e-9


@dataclass
class _JointSample:
    q: np.ndarray
    qd: np.ndarray
    stamp_ns: int
    arrival: float  # time.monotonic() when it arrived


@dataclass
class _Trial:
    request: wire.TrialRequest
    act: object                     # act(t, x, noise) -> u (dU,)
    phase: str                      # "resetting" | "running"
    started: float                  # time.monotonic() of the request
    t: int = 0
    stamps: Optional[np.ndarray] = None    # (T,) int64
    commands: Optional[np.ndarray] = None  # (T, dU)
    reset_answered: Optional[float] = None  # time.monotonic() of the sim reset's response
    awaiting_services: bool = False         # sim_service reset waits for the services to appear


class _PolicyExecutor:
    """The exported policy as an executor: u = μ(x) + sqrt(action_variance) ε."""

    def __init__(self, policy):
        self.policy = policy
        self.scale = np.sqrt(np.asarray(policy.action_variance, dtype=float))

    def act(self, t: int, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy(x), dtype=float) + self.scale * noise


class LqrControllerNode(Node):
    def __init__(self, node_name: str = "lqr_controller", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self._read_parameters()
            self.state_of = JointStateToState(self.config.robot, self.layout)
            self._load_policy(self.policy_path)
        except BaseException:
            self.destroy_node()
            raise
        self.controllers: Dict[int, wire.ControllerMessage] = {}   # condition -> latest
        self.trials_done = 0
        self._latest: Optional[_JointSample] = None
        self._trial: Optional[_Trial] = None
        self._pending: Optional[wire.TrialRequest] = None  # waiting for its controller version
        self._lock = threading.RLock()
        # Reentrant: service responses must be handled while other callbacks run; the lock
        # above serialises everything that touches the trial.
        group = ReentrantCallbackGroup()
        self._command_pub = self.create_publisher(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, 10)
        self._record_pub = self.create_publisher(Float64MultiArray, wire.TRIAL_RECORDS_TOPIC, wire.EVENTS_QOS)
        self.create_subscription(JointState, wire.JOINT_STATES_TOPIC, self._on_joint_state, 10,
                                 callback_group=group)
        self.create_subscription(Float64MultiArray, wire.CONTROLLERS_TOPIC, self._on_controller,
                                 wire.CONTROLLERS_QOS, callback_group=group)
        self.create_subscription(Float64MultiArray, wire.TRIAL_REQUESTS_TOPIC, self._on_request,
                                 wire.EVENTS_QOS, callback_group=group)
        if self.reset_mode == "sim_service":
            self._set_parameters = self.create_client(SetParameters, f"{self.sim_node}/set_parameters",
                                                      callback_group=group)
            self._reset = self.create_client(Trigger, f"{self.sim_node}/reset", callback_group=group)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if self.mode == "realtime":
            self.create_timer(1.0 / self.control_rate_hz, self._on_tick, callback_group=group, clock=steady)
        self.create_timer(0.1, self._check_timeouts, callback_group=group, clock=steady)
        self.get_logger().info(f"{self.config.robot}: {self.mode} at {self.control_rate_hz:g} Hz, "
                               f"reset by {self.reset_mode}, joints {list(self.joints)}")

    # ------------------------------------------------------------------ parameters
    def _read_parameters(self) -> None:
        self.config, self.experiment_path = declare_experiment(self)
        self.layout = self.config.layout
        spec = robot_spec(self.config.robot)
        self.robot_joints = spec.joint_names
        self.mode = declare(self, "mode", "realtime", "Timing: a timer at control_rate_hz (realtime) or one "
                            "step per joint state received (lockstep, with sim_robot in lockstep).",
                            allowed=f"one of {list(MODES)}", choices=MODES)
        self.control_rate_hz = declare(self, "control_rate_hz", 1.0 / self.config.control_dt,
                                       "Control rate in realtime mode (Hz); default: the experiment's.",
                                       allowed="a double in [0.1, 1000.0]", low=0.1, high=1000.0)
        self.joints = tuple(declare(self, "joints", list(spec.joint_names),
                                    "Joint order of the effort commands (the robot's `joints`).",
                                    allowed=f"an ordering of {list(spec.joint_names)}",
                                    type_=ParameterType.PARAMETER_STRING_ARRAY))
        if sorted(self.joints) != sorted(spec.joint_names):
            raise NodeParameterError(f"parameter 'joints' is {list(self.joints)}; allowed: each joint of "
                                     f"{spec.name} exactly once, from {list(spec.joint_names)}")
        # command[i] = u[_wire_order[i]]
        self._wire_order = np.array([spec.joint_names.index(name) for name in self.joints])
        self.reset_mode = declare(self, "reset_mode", "pd", "How the arm gets to a trial's start pose: "
                                  "a PD phase (pd) or sim_robot's reset service (sim_service).",
                                  allowed=f"one of {list(RESET_MODES)}", choices=RESET_MODES)
        self.sim_node = declare(self, "sim_node", "/sim_robot", "sim_robot's node name (sim_service reset).",
                                allowed="a fully qualified node name, e.g. /sim_robot")
        if not self.sim_node.startswith("/"):
            raise NodeParameterError(f"parameter 'sim_node' is {self.sim_node!r}; allowed: a fully qualified "
                                     "node name starting with '/'")
        self.reset_timeout_s = declare(self, "reset_timeout_s", 20.0, "Longest reset (PD phase or service).",
                                       allowed="a double in [0.1, 600.0]", low=0.1, high=600.0)
        self.pd_natural_frequency = declare(
            self, "pd_natural_frequency", 4.0, "PD reset: natural frequency (rad/s) in joint acceleration.",
            allowed="a double in [0.1, 100.0]", low=0.1, high=100.0)
        self.pd_damping_ratio = declare(self, "pd_damping_ratio", 1.0, "PD reset: damping ratio.",
                                        allowed="a double in [0.1, 10.0]", low=0.1, high=10.0)
        self.pd_position_tolerance = declare(
            self, "pd_position_tolerance", 0.01, "PD reset ends within this joint-angle error (rad) ...",
            allowed="a double in [1e-6, 1.0]", low=1e-6, high=1.0)
        self.pd_velocity_tolerance = declare(
            self, "pd_velocity_tolerance", 0.02, "... and below this joint speed (rad/s).",
            allowed="a double in [1e-6, 10.0]", low=1e-6, high=10.0)
        self.state_timeout_s = declare(
            self, "state_timeout_s", 1.0, "Abort a running trial when no joint state arrives for this long (s).",
            allowed="a double in [0.01, 60.0]", low=0.01, high=60.0)
        self.controller_wait_s = declare(
            self, "controller_wait_s", 5.0, "How long a request waits for the controller version it names (s).",
            allowed="a double in [0.0, 600.0]", low=0.0, high=600.0)
        self.policy_path = declare(self, "policy_path", "", "Exported TorchScript policy (policy.pt) for trials "
                                   "with executor 'policy'; empty: none. Settable at runtime.",
                                   allowed="empty or the path of a policy exported by `mbpl train`",
                                   read_only=False)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _load_policy(self, path: str) -> None:
        self.policy = None
        if not path:
            return
        try:
            from mbpl_ros.core.policy import load_exported_policy  # torch: only when a policy is used
            policy = load_exported_policy(path)
        except (ValueError, OSError, RuntimeError) as error:
            raise NodeParameterError(f"parameter 'policy_path' is {path!r}: {error}; allowed: empty or an "
                                     "exported policy") from None
        if (policy.dX, policy.dU) != (self.layout.dX, self.layout.dU):
            raise NodeParameterError(f"parameter 'policy_path' is {path!r}: the policy maps dX={policy.dX} to "
                                     f"dU={policy.dU}; this experiment has dX={self.layout.dX}, dU={self.layout.dU}")
        self.policy = _PolicyExecutor(policy)

    def _on_set_parameters(self, parameters):
        from rcl_interfaces.msg import SetParametersResult
        for parameter in parameters:
            if parameter.name == "policy_path":
                try:
                    self._load_policy(parameter.value)
                except NodeParameterError as error:
                    return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs
    def _on_controller(self, msg: Float64MultiArray) -> None:
        try:
            message = wire.decode_controller(msg, dX=self.layout.dX, dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a controller: {error}")
            return
        if message.condition >= len(self.config.conditions) or message.controller.T != self.config.T:
            self.get_logger().error(f"ignored controller for condition {message.condition} with T="
                                    f"{message.controller.T}: the experiment has {len(self.config.conditions)} "
                                    f"conditions and T={self.config.T}")
            return
        with self._lock:
            current = self.controllers.get(message.condition)
            if current is None or message.version >= current.version:
                self.controllers[message.condition] = message
            pending = self._pending
            if pending is not None and pending.condition == message.condition \
                    and pending.controller_version == message.version:
                self._pending = None
                self._start(pending)

    def _on_request(self, msg: Float64MultiArray) -> None:
        try:
            request = wire.decode_trial_request(msg, n_joints=len(self.robot_joints), dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a trial request: {error}")
            return
        with self._lock:
            if self._trial is not None:
                self.get_logger().warning(f"trial {self._trial.request.trial_id} aborted by request "
                                          f"{request.trial_id}")
                self._finish(wire.TrialStatus.ABORTED)
            self._pending = None
            if request.T != self.config.T or request.condition >= len(self.config.conditions):
                self._abort_request(request, f"T={request.T}, condition {request.condition} do not fit the "
                                    f"experiment (T={self.config.T}, {len(self.config.conditions)} conditions)")
                return
            if request.executor == "policy" and self.policy is None:
                self._abort_request(request, "executor 'policy' but parameter 'policy_path' is empty")
                return
            if request.executor == "controller" and not self._has_controller(request):
                self._pending = request
                self._pending_since = time.monotonic()
                return
            self._start(request)

    def _has_controller(self, request: wire.TrialRequest) -> bool:
        current = self.controllers.get(request.condition)
        return current is not None and current.version == request.controller_version

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd, _ = wire.decode_joint_state(msg, self.robot_joints)
        except wire.WireFormatError as error:
            self.get_logger().warning(f"ignored a joint state: {error}", throttle_duration_sec=1.0)
            return
        sample = _JointSample(q, qd, wire.nanoseconds_from_stamp(msg.header.stamp), time.monotonic())
        with self._lock:
            self._latest = sample
            if self.mode == "lockstep":
                self._advance(sample)

    def _on_tick(self) -> None:
        with self._lock:
            if self._latest is not None:
                self._advance(self._latest)

    # ------------------------------------------------------------------ the trial
    def _start(self, request: wire.TrialRequest) -> None:
        if request.executor == "controller":
            act = self.controllers[request.condition].controller.act
        else:
            act = self.policy.act
        T, dU = request.T, self.layout.dU
        self._trial = _Trial(request, act, "resetting", time.monotonic(),
                             stamps=np.zeros(T, dtype=np.int64), commands=np.zeros((T, dU)))
        if self.reset_mode == "sim_service":
            self._call_sim_reset(request)
        else:
            q0 = request.initial_positions
            model = self.state_of.model
            self._pd_mass, self._pd_gravity = model.mass_matrix(q0), model.gravity_torque(q0)
            if self.mode == "lockstep":  # the arm waits for a command: send the first
                if self._latest is not None:
                    self._advance(self._latest)
                else:  # no state seen yet: a zero-effort step makes the arm publish one
                    self._command_pub.publish(wire.encode_effort_command(np.zeros(self.layout.dU)))

    def _call_sim_reset(self, request: wire.TrialRequest) -> None:
        trial_id = request.trial_id
        if not (self._set_parameters.service_is_ready() and self._reset.service_is_ready()):
            # Not discovered yet: _check_timeouts tries again until reset_timeout_s.
            self._trial.awaiting_services = True
            return
        self._trial.awaiting_services = False
        # initial_positions in sim_robot's `joints` order, which this node's `joints` must match
        initial = request.initial_positions[self._wire_order]
        parameter = Parameter("initial_positions", Parameter.Type.DOUBLE_ARRAY, initial.tolist())
        future = self._set_parameters.call_async(SetParameters.Request(parameters=[parameter.to_parameter_msg()]))

        def on_set(done):
            with self._lock:
                if not self._is_current(trial_id):
                    return
                result = done.result()
                if result is None or not result.results[0].successful:
                    reason = result.results[0].reason if result is not None else "no response"
                    self._abort_running(f"setting {self.sim_node} initial_positions failed: {reason}")
                    return
                self._reset.call_async(Trigger.Request()).add_done_callback(on_reset)

        def on_reset(done):
            with self._lock:
                if not self._is_current(trial_id):
                    return
                result = done.result()
                if result is None or not result.success:
                    self._abort_running(f"{self.sim_node}/reset failed: "
                                        f"{result.message if result is not None else 'no response'}")
                    return
                self._trial.reset_answered = time.monotonic()
                # The state published by the reset may already be the latest one.
                if self._latest is not None and self.mode == "lockstep":
                    self._advance(self._latest)

        future.add_done_callback(on_set)

    def _is_current(self, trial_id: int) -> bool:
        return self._trial is not None and self._trial.request.trial_id == trial_id

    def _advance(self, sample: _JointSample) -> None:
        """One control step of the trial on joint state `sample` (under the lock)."""
        trial = self._trial
        if trial is None:
            return
        if trial.phase == "resetting":
            if not self._reset_done(trial, sample):
                return
            trial.phase = "running"
        request, t = trial.request, trial.t
        if trial.t > 0 and self.mode == "lockstep" and sample.stamp_ns == trial.stamps[t - 1]:
            return  # the same state delivered again: lockstep waits for the step's new state
        x = self.state_of(sample.q, sample.qd, request.target)
        u = trial.act(t, x, request.noise[t])
        self._command_pub.publish(wire.encode_effort_command(u[self._wire_order]))
        trial.stamps[t], trial.commands[t] = sample.stamp_ns, u
        trial.t += 1
        if trial.t == request.T:
            self._finish(wire.TrialStatus.OK)

    def _reset_done(self, trial: _Trial, sample: _JointSample) -> bool:
        q0 = trial.request.initial_positions
        if self.reset_mode == "sim_service":
            if trial.reset_answered is None:
                return False
            if self.mode == "realtime":  # the sim keeps stepping: the first state after the answer
                return sample.arrival > trial.reset_answered
            # lockstep: the state the reset published (it may arrive before or after the answer)
            return bool(np.all(np.abs(sample.q - q0) <= RESET_MATCH_TOLERANCE)
                        and np.all(np.abs(sample.qd) <= RESET_MATCH_TOLERANCE))
        error, speed = sample.q - q0, sample.qd
        if np.all(np.abs(error) <= self.pd_position_tolerance) and np.all(np.abs(speed) <= self.pd_velocity_tolerance):
            return True
        w, z = self.pd_natural_frequency, self.pd_damping_ratio
        u = self._pd_mass @ (-w * w * error - 2.0 * z * w * speed) + self._pd_gravity
        self._command_pub.publish(wire.encode_effort_command(u[self._wire_order]))
        return False

    def _check_timeouts(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._pending is not None and now - self._pending_since > self.controller_wait_s:
                request, self._pending = self._pending, None
                self._abort_request(request, f"controller version {request.controller_version} of condition "
                                    f"{request.condition} did not arrive within {self.controller_wait_s:g} s")
            trial = self._trial
            if trial is None:
                return
            if trial.phase == "resetting" and now - trial.started > self.reset_timeout_s:
                waiting = f" ({self.sim_node}'s set_parameters/reset services never appeared)" \
                    if trial.awaiting_services else ""
                self._abort_running(f"reset not done within reset_timeout_s={self.reset_timeout_s:g} s{waiting}")
            elif trial.awaiting_services:
                self._call_sim_reset(trial.request)
            elif trial.phase == "running" and self._latest is not None \
                    and now - max(self._latest.arrival, trial.started) > self.state_timeout_s:
                self._abort_running(f"no joint state for state_timeout_s={self.state_timeout_s:g} s")

    def _abort_running(self, reason: str) -> None:
        self.get_logger().error(f"trial {self._trial.request.trial_id} aborted: {reason}")
        self._finish(wire.TrialStatus.ABORTED)

    def _abort_request(self, request: wire.TrialRequest, reason: str) -> None:
        self.get_logger().error(f"trial {request.trial_id} refused: {reason}")
        self._publish_record(request, wire.TrialStatus.ABORTED, np.zeros(0, dtype=np.int64),
                             np.zeros((0, self.layout.dU)))

    def _finish(self, status: wire.TrialStatus) -> None:
        trial, self._trial = self._trial, None
        n = trial.t if status == wire.TrialStatus.OK else 0
        self._publish_record(trial.request, status, trial.stamps[:n], trial.commands[:n])
        self.trials_done += 1

    def _publish_record(self, request, status, stamps_ns, commands) -> None:
        self._record_pub.publish(wire.encode_trial_record(wire.TrialRecord(
            trial_id=request.trial_id, condition=request.condition, iteration=request.iteration,
            index=request.index, controller_version=request.controller_version, purpose=request.purpose,
            status=status, target=request.target, state_stamps=wire.stamps_to_pairs(stamps_ns),
            commands=commands)))

    def destroy_node(self) -> None:
        state_of = getattr(self, "state_of", None)
        if state_of is not None:
            state_of.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node(LqrControllerNode, "lqr_controller", args)


if __name__ == "__main__":
    sys.exit(main())
