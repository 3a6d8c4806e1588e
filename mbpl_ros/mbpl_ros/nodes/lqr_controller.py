"""
lqr_controller: run trials of a condition's controller (or of the exported policy) on the robot.

The controller is time-varying linear-Gaussian, u_t = K_t x_t + k_t + chol_t ε_t; the policy
is the exported TorchScript one.

Subscribes   joint_states (sensor_msgs/JointState)
             gps/controllers (mbpl_ros_interfaces/LinearGaussianController, transient local):
             the latest controllers
             gps/estop (std_msgs/Bool, True = stop; parameter estop_topic)
             /gps/estop (global_estop_topic: every robot's, heard by one in a namespace)
             the camera (sensor_msgs/Image, image_topic), once a policy that needs images
             is loaded
Publishes    effort_controller/commands (std_msgs/Float64MultiArray, one effort per joint in
             the order of `joints`: the ros2_control forward-command convention)
             gps/trial_records (mbpl_ros_interfaces/TrialRecord): what was done in each trial
             gps/estop_latched (std_msgs/Bool, transient local): the e-stop latch
Serves       gps/run_trial (mbpl_ros_interfaces/RunTrial action): runs one trial per goal
             ~/reset_estop (std_srvs/Trigger): clears the e-stop latch
Calls        <sim_node>/set_parameters, <sim_node>/reset (reset_mode sim_service only; the
             reset puts sim_robot's fixtures and target sphere at the trial's target)

A trial: reset to the request's start pose — with a PD phase that drives the arm there
(`reset_mode: pd`, what a real robot needs) or by setting sim_robot's initial_positions and
target (where its fixtures go) and calling its reset service (`reset_mode: sim_service`,
exactly the offline trainer's arm.reset(q0, target=...)) — then T steps. In `lockstep` mode
a step is taken per joint state received (sim_robot in lockstep steps once per command, so
the loop is deterministic). In `realtime` mode `realtime_trigger` says what starts a step:
`joint_state` (default) — each NEW joint state (a newer stamp than the last step's),
computed and published in the state's callback, so the robot's state publisher
(ros2_control's joint_state_broadcaster) sets the rate and a command follows its state by
the compute time alone, as in ros2_control's own read-update-write loop; `timer` — a steady
timer at control_rate_hz acting on the latest joint state (unsynchronised with the states: a
command waits up to one period after its state). The state x is built from q, qd by forward
kinematics (robot_model.JointStateToState), as everywhere. A new goal aborts a running trial
(the trainer only sends one after giving up on the last).

The RunTrial action: a goal that cannot be run — it does not decode (wrong lengths for its
horizon and action_dim, an unknown executor or purpose), its T or condition does not fit
the experiment, it names the policy while none is loaded, or a controller version older than
the condition's newest one that this node no longer holds — is rejected, logged with the
reason and counted (`rejected_goals`), and never executed. An accepted goal whose controller
version has not arrived yet waits controller_wait_s for it. Feedback gives the phase
(resetting, running) and the steps done; the result the status, the reason, and the stamps
and commands of the steps (also published as the trial's TrialRecord). Cancelling a goal
sends the fallback command (`watchdog_action`) at once and ends the trial with status
CANCELLED; no trial command follows it.

Executor: one SingleThreadedExecutor (rclpy.spin). In CPython one callback runs at a time
anyway (the GIL); a multi-threaded executor would add a thread hand-off per callback and let
a busy thread hold the GIL for up to sys.getswitchinterval() (5 ms). Every callback that can
run during a trial is therefore short: the e-stop, the watchdog tick and the timeout check
are a few comparisons; parsing controllers and requests, and loading a policy on a parameter
change, happen between trials.

Safety (docs/safety.md; the maths in core.safety): every command — trial step or PD
reset — is guarded near the position limits and clamped to `effort_limits` (at most the
URDF's); a non-finite output publishes the fallback (`watchdog_action`: zero effort or a
gravity hold) and aborts the trial (UNSAFE_COMMAND). Malformed joint states (other joints,
wrong lengths) are ignored; joint states stamped ahead of this node's clock or older than
the latest accepted one are ignored and counted (core.sanity), so none can hold back the
next step; a non-finite joint state, or one outside the physical envelope (core.sanity:
beyond the position limits by a margin, too fast, or a step no arm can take), is never acted
on: a trial in progress gets the fallback and is aborted (IMPLAUSIBLE_STATE). The watchdog:
while commanding, a latest valid joint state older than `watchdog_periods` control periods
publishes the fallback and aborts the trial (WATCHDOG).
The e-stop: True on gps/estop latches at once — one zero-effort command, the running trial
aborted (ESTOP), then no command and every request refused (ESTOP) until ~/reset_estop,
which is refused while the last e-stop message was True. In realtime mode every trial, however
it ends, leaves the fallback as the last command (a ros2_control forward-command controller
holds the last one); in lockstep mode a command is one simulated step, so only faults send it.
Safety parameters and the PD gains are settable at runtime: validated (an unsafe value is
rejected with the reason), then applied between trials, never during one.

An image policy (its export says it sees images; the experiment must have a camera of the
same size) acts on the state and the camera image of each step: the image stamped nearest
the joint state, within image_tolerance_s (nodes.images, the rule sample_collector uses). A
step waits for its image: in lockstep for the settled one (stamped like the joint state, right
after it: the collector's choice and the offline one), in realtime for any within the
tolerance (the nearest at hand: a later, nearer one may come after the command); a joint state
that waits longer than image_timeout_s (the camera stopped, or is late) sends the fallback and
aborts the trial (MISSING_IMAGE), before the joint-state watchdog would.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from mbpl_ros_interfaces.action import RunTrial
from mbpl_ros_interfaces.msg import LinearGaussianController, TrialRecord

from mbpl_ros.core import safety, sanity
from mbpl_ros.core.controller import PolicySampler
from mbpl_ros.nodes import images, wire
from mbpl_ros.nodes.common import NodeParameterError, declare, declare_experiment, run_node
from mbpl_ros.nodes.common import check_known_parameters
from mbpl_ros.nodes.parameters import LQR_CONTROLLER
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.robots import robot_spec
from mbpl_ros.training import check_policy_matches

PARAMETERS = LQR_CONTROLLER
MODES = PARAMETERS["mode"].choices
#: What starts a control step in realtime mode (docs/interfaces.md).
REALTIME_TRIGGERS = PARAMETERS["realtime_trigger"].choices
#: realtime_trigger joint_state: a state arriving sooner than this many control periods after
#: the last command's state starts no step, so a flood of joint states cannot raise the
#: command rate above 1 / (this · period); arrival jitter up to half a period loses no state.
MIN_STEP_PERIODS = 0.5
RESET_MODES = PARAMETERS["reset_mode"].choices
#: Joint-state intervals measured at start-up (realtime mode) before trials are accepted,
#: and how far the measured rate may be from what the timing needs (relative).
RATE_SAMPLES = 10
RATE_TOLERANCE = 0.2
#: A sim_service reset is complete at the first joint state this close to the start pose at
#: rest.
RESET_MATCH_TOLERANCE = 1e-9
#: Controller versions kept per condition (a request names the exact version it wants).
KEPT_VERSIONS = 4
#: Feedback of a running trial every this many steps (and at each phase change).
FEEDBACK_EVERY_STEPS = 10
#: Parameters settable at runtime: validated together, applied between trials.
RUNTIME_PARAMETERS = tuple(name for name, p in PARAMETERS.items() if p.runtime)
#: Calls of a newly loaded policy before it is used (TorchScript's optimising passes).
WARM_UP_CALLS = 3
#: Camera images kept for pairing with joint states (a few control periods' worth).
IMAGES_KEPT = 16


@dataclass
class _JointSample:
    q: np.ndarray
    qd: np.ndarray
    stamp_ns: int
    arrival: float  # time.monotonic() when it arrived


@dataclass(frozen=True)
class _Settings:
    """The runtime-settable parameters, validated together; swapped whole between trials."""

    safety: safety.SafetyLimits     # robot joint order
    effort_limits: Tuple[float, ...]  # as the parameter gives them (`joints` order)
    watchdog_periods: int
    watchdog_action: str
    pd_natural_frequency: float
    pd_damping_ratio: float
    policy_path: str
    policy: Optional["_PolicyExecutor"]


@dataclass
class _Trial:
    request: wire.TrialRequest
    act: object                     # act(t, x, noise) -> u (dU,)
    phase: str                      # "resetting" | "running"
    started: float                  # time.monotonic() of the request
    # when commanding began (the watchdog runs from then)
    watched_since: Optional[float] = None
    t: int = 0
    stamps: Optional[np.ndarray] = None    # (T,) int64
    commands: Optional[np.ndarray] = None  # (T, dU)
    reset_answered: Optional[float] = None  # time.monotonic() of the sim reset's response
    # arrival of the joint state the last command acted on
    last_command_arrival: float = -np.inf
    # sim_service reset waits for the services to appear
    awaiting_services: bool = False
    # an image policy's trial: each step needs the camera image of its joint state
    needs_image: bool = False


def joint_state_rate_problem(intervals_s, trigger: str, control_rate_hz: float) -> Optional[str]:
    """
    Return why realtime control cannot work with joint states `intervals_s` (s) apart, or None.

    The intervals' median is the rate. realtime_trigger joint_state steps on each state,
    so the states must come at control_rate_hz; timer needs them at least that often.
    """
    rate = 1.0 / max(float(np.median(intervals_s)), 1e-9)
    ratio = rate / control_rate_hz
    if trigger == "joint_state" and abs(ratio - 1.0) <= RATE_TOLERANCE:
        return None
    if trigger == "timer" and ratio >= 1.0 - RATE_TOLERANCE:
        return None
    fixes = []
    if trigger == "joint_state" and ratio > 1.0:
        fixes.append("set realtime_trigger: timer (a step at control_rate_hz on the latest state)")
    fixes.append(f"make the joint-state publisher (joint_state_broadcaster's publish_rate) run at "
                 f"{control_rate_hz:g} Hz")
    fixes.append(f"or use an experiment whose control period is 1/{rate:.0f} s with "
                 f"control_rate_hz {rate:.0f}")
    needs = "at" if trigger == "joint_state" else "at least at"
    return (f"joint states arrive at {rate:.1f} Hz, but realtime_trigger {trigger} needs them "
            f"{needs} control_rate_hz = {control_rate_hz:g} Hz (within "
            f"{100 * RATE_TOLERANCE:.0f}%); "
            "fix: " + "; ".join(fixes))


class _PolicyExecutor(PolicySampler):
    """
    The exported policy sampled with its action covariance (PolicySampler).

    `file` tells a changed file at the same path.
    """

    def __init__(self, policy, file: Tuple[int, int, int]):
        super().__init__(policy, policy.action_covariance)
        self.file = file
        # TorchScript optimises a module on its first calls (0.4 s for a small conv net):
        # here, between trials, not in a trial's first steps (the watchdog would fire).
        state = np.zeros(policy.dX)
        image = (np.zeros((*policy.image_shape, 3), dtype=np.uint8) if self.needs_image
                 else None)
        for _ in range(WARM_UP_CALLS):
            self.act(0, state, np.zeros(policy.dU), image)

    @property
    def needs_image(self) -> bool:
        """Tell whether the policy acts on camera images too."""
        return bool(self.policy.metadata.get("image"))


def _file_identity(path: str) -> Tuple[int, int, int]:
    """(inode, mtime ns, size) of `path`: an export replaces the file, which changes it."""
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (status.st_ino, status.st_mtime_ns, status.st_size)


class LqrControllerNode(Node):
    def __init__(self, node_name: str = "lqr_controller", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self._read_parameters()
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        # (condition, version) -> controller; a republished version replaces the old copy
        # (a restarted trainer starts again at version 0).
        self.controllers: Dict[Tuple[int, int], wire.ControllerMessage] = {}
        self.trials_done = 0
        self.faults: Dict[str, int] = {"watchdog": 0, "unsafe_command": 0, "estop": 0,
                                       "rejected_state": 0, "implausible_state": 0,
                                       "rejected_stamp": 0, "missing_image": 0,
                                       "rejected_image": 0}
        self.commands_published = 0
        self.rejected_goals = 0
        self.last_rejection: Optional[str] = None
        # trial id -> goal handle of each accepted RunTrial goal until its trial ends, then
        # -> (status, result) until the goal's execute callback hands them to the client
        self._goals: Dict[int, object] = {}
        self._results: Dict[int, Tuple[wire.TrialStatus, object]] = {}
        self.estop_latched = bool(self.estop_latched_at_start)
        self._estop_input = False        # the last value received on the e-stop topic
        self._estop_inputs: Dict[str, bool] = {}   # the last value of each e-stop input
        self._latest: Optional[_JointSample] = None
        self._trial: Optional[_Trial] = None
        # waiting for its controller version
        self._pending: Optional[wire.TrialRequest] = None
        # runtime parameters, for the next trial
        self._staged: Optional[_Settings] = None
        self._lock = threading.RLock()
        self._image_sub = None   # subscribed once a policy that needs images is loaded
        self._image_group = None
        self.state_rate_problem: Optional[str] = None   # see _measure_state_rate
        self.state_rate_hz: Optional[float] = None      # measured at start-up (realtime)
        self._first_stamps: list = []   # stamps (ns) of the first joint states
        self._zero_effort = np.zeros(self.layout.dU)
        # One command message, its layout built once: _send (under the lock) only swaps the data.
        self._command_msg = wire.encode_effort_command(self._zero_effort)
        # Reentrant: service responses must be handled while other callbacks run; the lock
        # above serialises everything that touches the trial.
        group = ReentrantCallbackGroup()
        self._command_pub = self.create_publisher(Float64MultiArray,
                                                  wire.EFFORT_COMMANDS_TOPIC, 10)
        self._record_pub = self.create_publisher(TrialRecord, wire.TRIAL_RECORDS_TOPIC,
                                                 wire.EVENTS_QOS)
        self._estop_state_pub = self.create_publisher(Bool, wire.ESTOP_LATCHED_TOPIC,
                                                      wire.LATCHED_STATE_QOS)
        self.create_subscription(JointState, wire.JOINT_STATES_TOPIC, self._on_joint_state, 10,
                                 callback_group=group)
        self._image_group = group
        self._subscribe_camera_if_needed()
        self.create_subscription(LinearGaussianController, wire.CONTROLLERS_TOPIC,
                                 self._on_controller,
                                 wire.CONTROLLERS_QOS, callback_group=group)
        self._trial_server = ActionServer(
            self, RunTrial, wire.RUN_TRIAL_ACTION, execute_callback=self._execute_goal,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel, callback_group=group)
        self.create_subscription(Bool, self.estop_topic, self._on_estop, wire.ESTOP_QOS,
                                 callback_group=group)
        if (self.global_estop_topic and self.resolve_topic_name(self.global_estop_topic)
                != self.resolve_topic_name(self.estop_topic)):   # a robot in a namespace
            self.create_subscription(Bool, self.global_estop_topic,
                                     lambda msg: self._on_estop(msg, "global"), wire.ESTOP_QOS,
                                     callback_group=group)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop, callback_group=group)
        if self.reset_mode == "sim_service":
            self._set_parameters = self.create_client(SetParameters,
                                                      f"{self.sim_node}/set_parameters",
                                                      callback_group=group)
            self._reset = self.create_client(Trigger, f"{self.sim_node}/reset",
                                             callback_group=group)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        # The watchdog, checked every control period in every mode; realtime_trigger timer:
        # also the step.
        self.create_timer(1.0 / self.control_rate_hz, self._on_tick, callback_group=group,
                          clock=steady)
        self.create_timer(0.1, self._check_timeouts, callback_group=group, clock=steady)
        self._estop_state_pub.publish(Bool(data=self.estop_latched))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        limits = self.settings.safety
        rate = self.control_rate_hz
        timing = (f"realtime, a step per new joint state (watchdog at {rate:g} Hz)"
                  if self._steps_on_state and self.mode == "realtime"
                  else f"{self.mode} at {rate:g} Hz")
        settings = self.settings
        self.get_logger().info(f"{self.config.robot}: {timing}, "
                               f"reset by {self.reset_mode}, joints {list(self.joints)}, "
                               f"effort limits {list(settings.effort_limits)} N·m, "
                               f"joint-limit margin {limits.margin:g} rad, "
                               f"watchdog {settings.watchdog_periods} periods "
                               f"({settings.watchdog_action}), "
                               f"e-stop on {self.resolve_topic_name(self.estop_topic)}"
                               + (" (latched: call ~/reset_estop)" if self.estop_latched else ""))

    # ------------------------------------------------------------------ parameters
    def _read_parameters(self) -> None:
        self.config, self.experiment_path = declare_experiment(self)
        self.layout = self.config.layout
        spec = robot_spec(self.config.robot)
        self.robot_joints = spec.joint_names
        self.mode = declare(self, PARAMETERS, "mode")
        self.realtime_trigger = declare(self, PARAMETERS, "realtime_trigger")
        self.control_rate_hz = declare(self, PARAMETERS, "control_rate_hz",
                                       1.0 / self.config.control_dt)
        # A step per joint state received (lockstep, realtime joint_state) or per timer tick.
        self._steps_on_state = self.mode == "lockstep" or self.realtime_trigger == "joint_state"
        # Realtime joint_state: the shortest interval between commands (s), else 0 (no limit).
        self._min_step_s = (MIN_STEP_PERIODS / self.control_rate_hz
                            if self.mode == "realtime" and self._steps_on_state else 0.0)
        self.joints = tuple(declare(self, PARAMETERS, "joints", list(spec.joint_names),
                                    detail=f"the robot's being {list(spec.joint_names)}"))
        if sorted(self.joints) != sorted(spec.joint_names):
            raise NodeParameterError(f"parameter 'joints' is {list(self.joints)}; "
                                     f"allowed: each joint of "
                                     f"{spec.name} exactly once, from {list(spec.joint_names)}")
        # command[i] = u[_wire_order[i]]
        self._wire_order = np.array([spec.joint_names.index(name) for name in self.joints])
        self.reset_mode = declare(self, PARAMETERS, "reset_mode")
        self.sim_node = declare(self, PARAMETERS, "sim_node")
        if not self.sim_node.startswith("/"):
            raise NodeParameterError(f"parameter 'sim_node' is {self.sim_node!r}; "
                                     "allowed: a fully qualified "
                                     "node name starting with '/'")
        self.reset_timeout_s = declare(self, PARAMETERS, "reset_timeout_s")
        declare(self, PARAMETERS, "pd_natural_frequency")
        declare(self, PARAMETERS, "pd_damping_ratio")
        self.pd_position_tolerance = declare(self, PARAMETERS, "pd_position_tolerance")
        self.pd_velocity_tolerance = declare(self, PARAMETERS, "pd_velocity_tolerance")
        self.controller_wait_s = declare(self, PARAMETERS, "controller_wait_s")
        declare(self, PARAMETERS, "policy_path")
        # ---- safety (docs/safety.md)
        self.state_of = JointStateToState(self.config.robot, self.layout)
        model = self.state_of.model
        # robot order, URDF
        self.robot_effort_limits = np.asarray(model.effort_limits, dtype=float)
        # (J, 2), robot order
        self.position_limits = np.asarray(model.position_limits, dtype=float)
        self.envelope = sanity.StateEnvelope(self.position_limits, model.velocity_limits)
        urdf_in_joints_order = self.robot_effort_limits[self._wire_order].tolist()
        declare(self, PARAMETERS, "effort_limits", urdf_in_joints_order,
                detail=f"the URDF's being {urdf_in_joints_order}")
        declare(self, PARAMETERS, "joint_limit_margin")
        declare(self, PARAMETERS, "joint_limit_damping")
        declare(self, PARAMETERS, "watchdog_periods")
        declare(self, PARAMETERS, "watchdog_action")
        self.estop_topic = declare(self, PARAMETERS, "estop_topic", wire.ESTOP_TOPIC)
        if not self.estop_topic:
            raise NodeParameterError("parameter 'estop_topic' is empty; "
                                     "allowed: a topic name, e.g. gps/estop")
        self.global_estop_topic = declare(self, PARAMETERS, "global_estop_topic",
                                          wire.GLOBAL_ESTOP_TOPIC)
        self.estop_latched_at_start = declare(self, PARAMETERS, "estop_latched_at_start")
        # The camera (used by an image policy only; declared, and listed, in every case).
        self.camera = self.config.camera
        self.image_topic = declare(self, PARAMETERS, "image_topic")
        self.image_qos = wire.image_qos(declare(self, PARAMETERS, "image_reliability"))
        tolerance = declare(self, PARAMETERS, "image_tolerance_s",
                            images.default_tolerance_s(self.config))
        self._images = images.ImageBuffer(round(tolerance * 1e9), IMAGES_KEPT)
        timeout = declare(self, PARAMETERS, "image_timeout_s",
                          self.get_parameter("watchdog_periods").value / self.control_rate_hz)
        self._image_wait = images.ImageWait(timeout)
        self.settings = self._validated_settings(
            {name: self.get_parameter(name).value for name in RUNTIME_PARAMETERS})

    def _validated_settings(self, values: dict, current: Optional[_Settings] = None) -> _Settings:
        """
        Return the runtime parameters `values` (name -> value) as settings.

        Raise NodeParameterError naming the parameter, what is wrong and what is allowed.
        The policy is loaded only when its path or its file changed.
        """
        requested = np.asarray(values["effort_limits"], dtype=float)
        try:
            if requested.shape != (len(self.joints),):
                raise ValueError(f"one per joint of {list(self.joints)} is needed")
            effort = safety.lowered_effort_limits(self.robot_effort_limits[self._wire_order],
                                                  requested)
        except ValueError as error:
            raise NodeParameterError(
                f"parameter 'effort_limits' is {requested.tolist()}: {error}; "
                f"allowed: one double per joint of "
                f"{list(self.joints)} in (0, URDF limit], the URDF's being "
                f"{self.robot_effort_limits[self._wire_order].tolist()}") from None
        effort_robot_order = np.empty_like(effort)
        effort_robot_order[self._wire_order] = effort
        margin, damping = float(values["joint_limit_margin"]), float(values["joint_limit_damping"])
        try:
            limits = safety.SafetyLimits(effort=effort_robot_order, position=self.position_limits,
                                         margin=margin, damping=damping)
        except ValueError as error:
            name = "joint_limit_damping" if "damping" in str(error) else "joint_limit_margin"
            raise NodeParameterError(f"parameter '{name}' is {values[name]!r}: {error}; "
                                     "allowed: a margin "
                                     "in [0, half the smallest joint range) rad "
                                     "and a damping >= 0") from None
        for name in ("watchdog_periods", "watchdog_action", "pd_natural_frequency",
                     "pd_damping_ratio"):
            PARAMETERS[name].check(values[name])
        periods, action = values["watchdog_periods"], values["watchdog_action"]
        path = values["policy_path"]
        unchanged = (current is not None and current.policy_path == path
                     and (current.policy is None or current.policy.file == _file_identity(path)))
        policy = current.policy if unchanged else self._load_policy(path)
        return _Settings(safety=limits, effort_limits=tuple(effort.tolist()),
                         watchdog_periods=int(periods), watchdog_action=action,
                         pd_natural_frequency=float(values["pd_natural_frequency"]),
                         pd_damping_ratio=float(values["pd_damping_ratio"]), policy_path=path,
                         policy=policy)

    def _load_policy(self, path: str) -> Optional[_PolicyExecutor]:
        if not path:
            return None
        file = _file_identity(path)
        try:
            # torch: only when a policy is used
            from mbpl_ros.core.policy.deploy import load_exported_policy
            policy = load_exported_policy(path)
        except (ValueError, OSError, RuntimeError) as error:
            raise NodeParameterError(f"parameter 'policy_path' is {path!r}: {error}; "
                                     "allowed: empty or an "
                                     "exported policy") from None
        try:
            check_policy_matches(policy, self.config, path)
        except ValueError as error:
            raise NodeParameterError(f"parameter 'policy_path': {error}") from None
        return _PolicyExecutor(policy, file)

    @property
    def policy(self) -> Optional[_PolicyExecutor]:
        return self.settings.policy

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """
        Validate runtime parameter changes, then apply them between trials.

        Runtime changes are validated together with the other runtime parameters (an unsafe
        or inconsistent set is rejected with the reason), then applied when no trial runs —
        now, or when the running trial ends.
        """
        with self._lock:
            base = self._staged or self.settings
        values = {"effort_limits": list(base.effort_limits),
                  "joint_limit_margin": base.safety.margin,
                  "joint_limit_damping": base.safety.damping,
                  "watchdog_periods": base.watchdog_periods,
                  "watchdog_action": base.watchdog_action,
                  "pd_natural_frequency": base.pd_natural_frequency,
                  "pd_damping_ratio": base.pd_damping_ratio, "policy_path": base.policy_path}
        for parameter in parameters:
            if parameter.name in values:
                values[parameter.name] = parameter.value
        try:  # outside the lock: loading a policy must not stall the control loop
            staged = self._validated_settings(values, current=base)
        except NodeParameterError as error:
            self.get_logger().warning(f"rejected a parameter change: {error}")
            return SetParametersResult(successful=False, reason=str(error))
        with self._lock:
            self._staged = staged
            if self._trial is None:
                self._apply_staged()
            else:
                names = [p.name for p in parameters]
                self.get_logger().info(f"parameters {names} take effect after trial "
                                       f"{self._trial.request.trial_id}")
        return SetParametersResult(successful=True)

    def _apply_staged(self) -> None:
        """Swap in the staged runtime parameters (under the lock, with no trial running)."""
        if self._staged is not None:
            self.settings, self._staged = self._staged, None
            self._subscribe_camera_if_needed()

    def _subscribe_camera_if_needed(self) -> None:
        """Subscribe to the camera once a policy that needs images is loaded."""
        policy = self.settings.policy
        if self._image_sub is not None or policy is None or not policy.needs_image:
            return
        self._image_sub = self.create_subscription(Image, self.image_topic, self._on_image,
                                                   self.image_qos,
                                                   callback_group=self._image_group)
        self.get_logger().info(f"the policy sees images: camera "
                               f"{self.resolve_topic_name(self.image_topic)} subscribed")

    # ------------------------------------------------------------------ inputs
    def _on_controller(self, msg: LinearGaussianController) -> None:
        try:
            message = wire.decode_controller(msg, dX=self.layout.dX, dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a controller: {error}")
            return
        conditions = len(self.config.conditions)
        if message.condition >= conditions or message.controller.T != self.config.T:
            self.get_logger().error(f"ignored controller for condition {message.condition} with T="
                                    f"{message.controller.T}: the experiment has {conditions} "
                                    f"conditions and T={self.config.T}")
            return
        with self._lock:
            key = (message.condition, message.version)
            self.controllers.pop(key, None)
            self.controllers[key] = message    # newest last
            versions = [k for k in self.controllers if k[0] == message.condition]
            for old in versions[:-KEPT_VERSIONS]:
                del self.controllers[old]
            pending = self._pending
            if pending is not None and pending.condition == message.condition \
                    and pending.controller_version == message.version:
                self._pending = None
                self._start(pending)

    # ------------------------------------------------------------------ the RunTrial action
    def _goal_problem(self, goal) -> Optional[str]:
        """Return why a RunTrial goal cannot be run (None: it can)."""
        try:
            request = wire.decode_trial_request(goal, n_joints=len(self.robot_joints),
                                                dU=self.layout.dU)
        except wire.WireFormatError as error:
            return str(error)
        conditions = len(self.config.conditions)
        if request.T != self.config.T or request.condition >= conditions:
            return (f"T={request.T}, condition {request.condition} do not fit the experiment "
                    f"(T={self.config.T}, conditions 0..{conditions - 1})")
        with self._lock:
            settings = self._staged or self.settings
            if request.executor == "policy" and settings.policy is None:
                return "executor 'policy' but parameter 'policy_path' is empty"
            versions = [v for m, v in self.controllers if m == request.condition]
            stale = versions and request.controller_version < max(versions)
            if request.executor == "controller" and stale and not self._has_controller(request):
                return (f"controller version {request.controller_version} of condition "
                        f"{request.condition} is not held (held: {sorted(versions)})")
            if request.trial_id in self._goals:
                return f"trial id {request.trial_id} is already running"
        return None

    def _on_goal(self, goal) -> GoalResponse:
        """Accept a RunTrial goal that can be run; reject (logged, counted) any other."""
        problem = self._goal_problem(goal)
        if problem is None:
            return GoalResponse.ACCEPT
        with self._lock:
            self.rejected_goals += 1
            self.last_rejection = f"trial {goal.trial_id}: {problem}"
        self.get_logger().error(f"rejected the goal of trial {goal.trial_id}: {problem}")
        return GoalResponse.REJECT

    def _on_cancel(self, goal_handle) -> CancelResponse:
        """Cancel a goal: the fallback is sent at once and its trial ends CANCELLED."""
        trial_id = goal_handle.request.trial_id
        with self._lock:
            if trial_id not in self._goals:
                return CancelResponse.REJECT    # already over
            reason = "cancelled by the client"
            if self._is_current(trial_id):
                self._send(self._fallback())
                self._abort_running(f"{reason}, the fallback ({self.settings.watchdog_action}) "
                                    "was sent", wire.TrialStatus.CANCELLED, fallback_sent=True)
            elif self._pending is not None and self._pending.trial_id == trial_id:
                request, self._pending = self._pending, None
                self._abort_request(request, reason, wire.TrialStatus.CANCELLED)
        return CancelResponse.ACCEPT

    def _on_accepted(self, goal_handle) -> None:
        """Start (or queue) an accepted goal's trial; the goal executes once the trial ends."""
        # Executing only at the end keeps no coroutine pending in the executor during the
        # trial (rclpy resumes a pending task on every spin: a busy loop).
        request = wire.decode_trial_request(goal_handle.request, n_joints=len(self.robot_joints),
                                            dU=self.layout.dU)
        with self._lock:
            self._goals[request.trial_id] = goal_handle
            self._on_request(request)

    def _execute_goal(self, goal_handle):
        """End a goal whose trial has ended: its terminal state and its result."""
        with self._lock:
            status, result = self._results.pop(goal_handle.request.trial_id)
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif status == wire.TrialStatus.OK:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _feedback(self, trial: _Trial) -> None:
        """Publish the goal's feedback: the phase and the steps done."""
        goal_handle = self._goals.get(trial.request.trial_id)
        if goal_handle is not None:
            phase = (RunTrial.Feedback.PHASE_RESETTING if trial.phase == "resetting"
                     else RunTrial.Feedback.PHASE_RUNNING)
            goal_handle.publish_feedback(RunTrial.Feedback(phase=phase, step=trial.t))

    def _on_request(self, request: wire.TrialRequest) -> None:
        """Start (or queue for its controller) the trial of an accepted goal, under the lock."""
        with self._lock:
            if self._trial is not None:
                self.get_logger().warning(f"trial {self._trial.request.trial_id} aborted by the "
                                          f"goal of trial {request.trial_id}")
                self._abort_running(f"superseded by the goal of trial {request.trial_id}")
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self._abort_request(pending, f"superseded by the goal of trial {request.trial_id}")
            if self.estop_latched:
                self._abort_request(request, "the e-stop is latched (call ~/reset_estop)",
                                    wire.TrialStatus.ESTOP)
                return
            if self.state_rate_problem is not None:
                self._abort_request(request, self.state_rate_problem)
                return
            self._apply_staged()
            if request.executor == "policy" and self.policy is None:
                self._abort_request(request,
                                    "executor 'policy' but parameter 'policy_path' is empty")
                return
            if request.executor == "controller" and not self._has_controller(request):
                self._pending = request
                self._pending_since = time.monotonic()
                return
            self._start(request)

    def _measure_state_rate(self, stamp_ns: int) -> None:
        """
        Check the joint-state rate at start-up (realtime, under the lock).

        From the stamps of the first RATE_SAMPLES joint-state intervals (the robot's clock:
        arrivals bunch), a rate the timing cannot work with refuses every trial, naming the fix.
        """
        self._first_stamps.append(stamp_ns)
        if len(self._first_stamps) <= RATE_SAMPLES:
            return
        intervals = np.diff(np.asarray(self._first_stamps, dtype=np.int64)) * 1e-9
        intervals = intervals[intervals > 0]   # repeated stamps (a reset's state) say nothing
        if len(intervals) == 0:
            return
        trigger = self.realtime_trigger
        self.state_rate_hz = 1.0 / max(float(np.median(intervals)), 1e-9)
        self.state_rate_problem = joint_state_rate_problem(intervals, trigger,
                                                           self.control_rate_hz)
        if self.state_rate_problem is not None:
            self.get_logger().error(f"trials refused: {self.state_rate_problem}")
            if self._trial is not None:
                self._abort_running(self.state_rate_problem)

    def _has_controller(self, request: wire.TrialRequest) -> bool:
        return (request.condition, request.controller_version) in self.controllers

    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd, _ = wire.decode_joint_state(msg, self.robot_joints)
        except wire.WireFormatError as error:
            with self._lock:
                self.faults["rejected_state"] += 1
            self.get_logger().warning(f"ignored a joint state: {error}", throttle_duration_sec=1.0)
            return
        sample = _JointSample(q, qd, wire.nanoseconds_from_stamp(msg.header.stamp),
                              time.monotonic())
        now_ns = self.get_clock().now().nanoseconds
        with self._lock:
            latest = self._latest
            # A stamp ahead of this clock or out of order is dropped, so it never gates a step.
            fault = sanity.stamp_fault(
                sample.stamp_ns, now_ns, None if latest is None else latest.stamp_ns,
                0.0 if latest is None else sample.arrival - latest.arrival)
            if fault is not None:
                self.faults["rejected_stamp"] += 1
                self.get_logger().warning(f"ignored a joint state: {fault}",
                                          throttle_duration_sec=1.0)
                return
            measuring = self.state_rate_problem is None and len(self._first_stamps) <= RATE_SAMPLES
            if self.mode == "realtime" and measuring:
                self._measure_state_rate(sample.stamp_ns)
            fault = sanity.state_fault(q, qd, self.envelope)
            trial = self._trial
            if fault is None and trial is not None and trial.phase == "running" and trial.t > 0 \
                    and sample.stamp_ns > latest.stamp_ns:
                dt_s = (sample.stamp_ns - latest.stamp_ns) * 1e-9
                fault = sanity.step_fault(latest.q, q, dt_s, self.envelope)
            if fault is not None:
                self._on_implausible_state(fault)
                return
            self._latest = sample
            if self._steps_on_state:
                self._advance(sample)

    def _on_image(self, msg: Image) -> None:
        try:
            pixels = wire.decode_image(msg, self.camera.height, self.camera.width)
        except wire.WireFormatError as error:
            with self._lock:
                self.faults["rejected_image"] += 1
            self.get_logger().warning(f"ignored a camera image: {error}",
                                      throttle_duration_sec=1.0)
            return
        with self._lock:
            self._images.add(wire.nanoseconds_from_stamp(msg.header.stamp), pixels)
            trial = self._trial
            # A step waiting for this image (in lockstep, it follows its joint state).
            if (trial is not None and trial.needs_image and self._image_wait.since is not None
                    and self._latest is not None):
                self._advance(self._latest)

    def _image_fault_fired(self) -> bool:
        """
        Stop an image-policy trial whose joint state waited too long for its image.

        Under the lock: send the fallback and abort (MISSING_IMAGE); return whether it fired.
        """
        trial = self._trial
        if trial is None or not trial.needs_image:
            return False
        fault = self._image_wait.fault(time.monotonic(), self._images.latest_stamp_ns,
                                       None if self._latest is None else self._latest.stamp_ns)
        if fault is None:
            return False
        self.faults["missing_image"] += 1
        self._send(self._fallback())
        self._abort_running(f"{fault} (on {self.resolve_topic_name(self.image_topic)}); sent the "
                            f"fallback ({self.settings.watchdog_action})",
                            wire.TrialStatus.MISSING_IMAGE, fallback_sent=True)
        return True

    def _on_implausible_state(self, fault: str) -> None:
        """
        Handle a joint state no arm can be in (core.sanity): it is never acted on.

        A trial in progress gets the fallback and is aborted (IMPLAUSIBLE_STATE), as for a
        non-finite command.
        """
        self.faults["rejected_state"] += 1
        self.faults["implausible_state"] += 1
        if self._trial is None:
            self.get_logger().warning(f"ignored an impossible joint state: {fault}",
                                      throttle_duration_sec=1.0)
            return
        self._send(self._fallback())
        self._abort_running(f"impossible joint state, the fallback "
                            f"({self.settings.watchdog_action}) was sent: {fault}",
                            wire.TrialStatus.IMPLAUSIBLE_STATE, fallback_sent=True)

    def _on_tick(self) -> None:
        with self._lock:
            # A step waiting for its image: MISSING_IMAGE, before the joint-state watchdog.
            if self._image_fault_fired() or self._watchdog_fired():
                return
            if not self._steps_on_state and self._latest is not None:
                self._advance(self._latest)

    # ------------------------------------------------------------------ the e-stop
    def _on_estop(self, msg: Bool, source: str = "own") -> None:
        with self._lock:
            self._estop_inputs[source] = bool(msg.data)
            self._estop_input = any(self._estop_inputs.values())   # any input that says stop
            if not msg.data or self.estop_latched:
                return  # a False never clears the latch
            self.estop_latched = True
            self.faults["estop"] += 1
            self._send(np.zeros(self.layout.dU))   # one zero-effort command, then silence
            self._estop_state_pub.publish(Bool(data=True))
            self.get_logger().error("E-STOP latched: zero effort sent; "
                                    "trials refused until ~/reset_estop")
            if self._trial is not None:
                self._abort_running("e-stop", wire.TrialStatus.ESTOP, fallback_sent=True)
            if self._pending is not None:
                request, self._pending = self._pending, None
                self._abort_request(request, "e-stop", wire.TrialStatus.ESTOP)

    def _on_reset_estop(self, request: Trigger.Request,
                        response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if not self.estop_latched:
                response.success, response.message = True, "the e-stop was not latched"
            elif self._estop_input:
                response.success = False
                topics = [self.resolve_topic_name(self.estop_topic)] + (
                    [self.resolve_topic_name(self.global_estop_topic)]
                    if self._estop_inputs.get("global") else [])
                response.message = (f"the e-stop input {' or '.join(topics)} still says stop "
                                    "(its last message was True): "
                                    "release it (publish False), then reset")
            else:
                self.estop_latched = False
                self._estop_state_pub.publish(Bool(data=False))
                response.success, response.message = True, "e-stop reset: trials accepted again"
                self.get_logger().warning("e-stop reset: trials accepted again")
        return response

    # ------------------------------------------------------------------ commands
    def _fallback(self) -> np.ndarray:
        """
        Return the fallback effort (dU,), robot joint order.

        It is zero, or the gravity torque at the last valid pose.
        """
        hold = None
        if self.settings.watchdog_action == "hold" and self._latest is not None:
            hold = self.state_of.model.gravity_torque(self._latest.q)
        return safety.fallback_effort(self.settings.watchdog_action, self.settings.safety, hold)

    def _send(self, effort: np.ndarray) -> None:
        """Publish a checked effort (dU,), robot joint order."""
        self._command_msg.data = effort[self._wire_order]
        self._command_pub.publish(self._command_msg)
        self.commands_published += 1

    def _command(self, u: np.ndarray, sample: _JointSample) -> Optional[np.ndarray]:
        """
        Publish u (dU,) made safe at the joint state `sample` and return the effort sent.

        Return None if u (or the state) was not finite: then the fallback was sent and the
        trial aborted.
        """
        self._trial.last_command_arrival = sample.arrival
        # The fallback is computed only on a fault ("hold" costs a gravity-torque evaluation).
        command = safety.safe_command(u, sample.q, sample.qd, self.settings.safety,
                                      self._zero_effort)
        if command.fault is not None:
            self._send(self._fallback())
            self.faults["unsafe_command"] += 1
            self._abort_running(f"unsafe command, the fallback ({self.settings.watchdog_action}) "
                                f"was sent: {command.fault}", wire.TrialStatus.UNSAFE_COMMAND,
                                fallback_sent=True)
            return None
        self._send(command.effort)
        return command.effort

    def _watchdog_fired(self) -> bool:
        """
        Fire the watchdog if the latest joint state is too old (under the lock); return whether.

        While commanding, a latest joint state older than watchdog_periods control periods:
        send the fallback and abort the trial.
        """
        trial = self._trial
        if trial is None or trial.watched_since is None:
            return False
        limit = self.settings.watchdog_periods / self.control_rate_hz
        latest_arrival = self._latest.arrival if self._latest is not None else -np.inf
        last = max(latest_arrival, trial.watched_since)
        age = time.monotonic() - last
        if age <= limit:
            return False
        self.faults["watchdog"] += 1
        self._send(self._fallback())
        settings = self.settings
        self._abort_running(f"watchdog: no joint state for {age:.3f} s "
                            f"(> {settings.watchdog_periods} control "
                            f"periods = {limit:g} s); "
                            f"sent the fallback ({settings.watchdog_action})",
                            wire.TrialStatus.WATCHDOG, fallback_sent=True)
        return True

    # ------------------------------------------------------------------ the trial
    def _start(self, request: wire.TrialRequest) -> None:
        self._apply_staged()
        needs_image = False
        if request.executor == "controller":
            act = self.controllers[(request.condition, request.controller_version)].controller.act
        else:
            act, needs_image = self.policy.act, self.policy.needs_image
        T, dU = request.T, self.layout.dU
        now = time.monotonic()
        self._image_wait.stepped()
        self._trial = _Trial(request, act, "resetting", now,
                             stamps=np.zeros(T, dtype=np.int64), commands=np.zeros((T, dU)),
                             needs_image=needs_image)
        if self.reset_mode == "sim_service":
            self._call_sim_reset(request)
        else:
            self._trial.watched_since = now   # the PD phase commands the arm
            q0 = request.initial_positions
            model = self.state_of.model
            self._pd_mass, self._pd_gravity = model.mass_matrix(q0), model.gravity_torque(q0)
            if self.mode == "lockstep":  # the arm waits for a command: send the first
                if self._latest is not None:
                    self._advance(self._latest)
                else:  # no state seen yet: a zero-effort step makes the arm publish one
                    self._send(np.zeros(self.layout.dU))

    def _call_sim_reset(self, request: wire.TrialRequest) -> None:
        trial_id = request.trial_id
        if not (self._set_parameters.service_is_ready() and self._reset.service_is_ready()):
            # Not discovered yet: _check_timeouts tries again until reset_timeout_s.
            self._trial.awaiting_services = True
            return
        self._trial.awaiting_services = False
        # initial_positions in sim_robot's `joints` order, which this node's `joints` must match
        initial = request.initial_positions[self._wire_order]
        # and the trial's target, where sim_robot's reset puts the fixtures (a peg's block)
        parameters = [Parameter("initial_positions", Parameter.Type.DOUBLE_ARRAY,
                                initial.tolist()),
                      Parameter("target", Parameter.Type.DOUBLE_ARRAY,
                                [float(v) for v in request.target])]
        future = self._set_parameters.call_async(
            SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters]))

        def on_set(done):
            with self._lock:
                if not self._is_current(trial_id):
                    return
                result = done.result()
                failed = ([r.reason for r in result.results if not r.successful]
                          if result is not None else ["no response"])
                if failed:
                    self._abort_running(f"setting {self.sim_node} initial_positions and target "
                                        f"failed: {'; '.join(failed)}")
                    return
                self._reset.call_async(Trigger.Request()).add_done_callback(on_reset)

        def on_reset(done):
            with self._lock:
                if not self._is_current(trial_id):
                    return
                result = done.result()
                if result is None or not result.success:
                    why = result.message if result is not None else 'no response'
                    self._abort_running(f"{self.sim_node}/reset failed: {why}")
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
        if trial is None or sample.arrival - trial.last_command_arrival < self._min_step_s:
            return
        if trial.phase == "resetting":
            if not self._reset_done(trial, sample):
                return
            trial.phase = "running"
            trial.watched_since = time.monotonic()
            self._feedback(trial)
        request, t = trial.request, trial.t
        if trial.t > 0 and self._steps_on_state and sample.stamp_ns <= trial.stamps[t - 1]:
            return  # the same (or an older) state: a step waits for a new state
        image = None
        if trial.needs_image:
            found = self._images.nearest(sample.stamp_ns)
            # Lockstep: the image stamped like the state comes right after it; until then an
            # older one within the tolerance would be a stale choice. Realtime: the nearest
            # at hand (waiting for a later one would delay the command).
            unsettled = self.mode == "lockstep" and not self._images.settled(sample.stamp_ns)
            if found is None or unsettled:   # it waits (_image_fault_fired: how long)
                self._image_wait.wait(sample.arrival)
                return
            image = found[1]
            self._image_wait.stepped()
        x = self.state_of(sample.q, sample.qd, request.target)
        try:
            # a non-finite u is caught by _command
            with np.errstate(over="ignore", invalid="ignore"):
                u = (trial.act(t, x, request.noise[t]) if image is None
                     else trial.act(t, x, request.noise[t], image))
        except Exception as error:
            # e.g. a policy that raises: the arm must not keep the last command
            u = np.full(self.layout.dU, np.nan)
            self.get_logger().error(f"trial {request.trial_id}, step {t}: the executor raised "
                                    f"{type(error).__name__}: {error}")
        effort = self._command(u, sample)
        if effort is None:
            return
        trial.stamps[t], trial.commands[t] = sample.stamp_ns, effort
        trial.t += 1
        if trial.t == request.T:
            self._finish(wire.TrialStatus.OK)
        elif trial.t % FEEDBACK_EVERY_STEPS == 0:
            self._feedback(trial)

    def _reset_done(self, trial: _Trial, sample: _JointSample) -> bool:
        q0 = trial.request.initial_positions
        if self.reset_mode == "sim_service":
            if trial.reset_answered is None:
                return False
            # realtime: the sim keeps stepping, so the first state after the answer
            if self.mode == "realtime":
                return sample.arrival > trial.reset_answered
            # lockstep: the state the reset published (it may arrive before or after the answer)
            return bool(np.all(np.abs(sample.q - q0) <= RESET_MATCH_TOLERANCE)
                        and np.all(np.abs(sample.qd) <= RESET_MATCH_TOLERANCE))
        error, speed = sample.q - q0, sample.qd
        if (np.all(np.abs(error) <= self.pd_position_tolerance)
                and np.all(np.abs(speed) <= self.pd_velocity_tolerance)):
            return True
        w, z = self.settings.pd_natural_frequency, self.settings.pd_damping_ratio
        pd_effort = self._pd_mass @ (-w * w * error - 2.0 * z * w * speed) + self._pd_gravity
        self._command(pd_effort, sample)
        return False

    def _check_timeouts(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._pending is not None and now - self._pending_since > self.controller_wait_s:
                request, self._pending = self._pending, None
                self._abort_request(request,
                                    f"controller version {request.controller_version} "
                                    f"of condition {request.condition} did not arrive "
                                    f"within {self.controller_wait_s:g} s")
            trial = self._trial
            if trial is None:
                return
            if trial.phase == "resetting" and now - trial.started > self.reset_timeout_s:
                waiting = (f" ({self.sim_node}'s set_parameters/reset services never appeared)"
                           if trial.awaiting_services else "")
                self._abort_running(f"reset not done within "
                                    f"reset_timeout_s={self.reset_timeout_s:g} s{waiting}")
            elif trial.awaiting_services:
                self._call_sim_reset(trial.request)

    def _abort_running(self, reason: str, status: wire.TrialStatus = wire.TrialStatus.ABORTED,
                       fallback_sent: bool = False) -> None:
        self.get_logger().error(f"trial {self._trial.request.trial_id} aborted "
                                f"({status.name}): {reason}")
        self._finish(status, fallback_sent, reason)

    def _abort_request(self, request: wire.TrialRequest, reason: str,
                       status: wire.TrialStatus = wire.TrialStatus.ABORTED) -> None:
        self.get_logger().error(f"trial {request.trial_id} refused ({status.name}): {reason}")
        self._publish_record(request, status, np.zeros(0, dtype=np.int64),
                             np.zeros((0, self.layout.dU)), reason)

    def _finish(self, status: wire.TrialStatus, fallback_sent: bool = False,
                reason: str = "") -> None:
        trial, self._trial = self._trial, None
        n = trial.t if status == wire.TrialStatus.OK else 0
        self._publish_record(trial.request, status, trial.stamps[:n], trial.commands[:n], reason)
        self.trials_done += 1
        if self.mode == "realtime" and not fallback_sent:
            # A forward-command controller holds the last command: leave it a safe one.
            self._send(self._fallback())
        self._apply_staged()

    def _publish_record(self, request, status, stamps_ns, commands, reason: str = "") -> None:
        """Publish the trial's record and end its goal (the result: the same record)."""
        self._record_pub.publish(wire.encode_trial_record(wire.TrialRecord(
            trial_id=request.trial_id, condition=request.condition, iteration=request.iteration,
            index=request.index, controller_version=request.controller_version,
            purpose=request.purpose,
            status=status, target=request.target, state_stamps=wire.stamps_to_pairs(stamps_ns),
            commands=commands, reason=reason)))
        goal_handle = self._goals.pop(request.trial_id, None)
        if goal_handle is not None:
            result = RunTrial.Result(reason=reason, commands=np.asarray(commands).ravel())
            result.status.value = int(status)
            result.state_stamps = [wire.stamp_from_nanoseconds(int(s)) for s in stamps_ns]
            self._results[request.trial_id] = (status, result)
            goal_handle.execute()

    def destroy_node(self) -> None:
        if getattr(self, "_command_pub", None) is not None and self.context.ok():
            with self._lock:
                if self._trial is not None or self.mode == "realtime":
                    # Stopped (Ctrl-C, a launch ending): leave a safe last command, which a
                    # forward-command controller holds.
                    self._send(self._fallback())
                    self._command_pub.wait_for_all_acked(Duration(seconds=1.0))   # before it goes
                    self.get_logger().warning("shutting down: sent the fallback "
                                              f"({self.settings.watchdog_action})")
        state_of = getattr(self, "state_of", None)
        if state_of is not None:
            state_of.close()
        server = getattr(self, "_trial_server", None)
        if server is not None:
            server.destroy()
        super().destroy_node()


def main(args=None) -> int:
    return run_node(LqrControllerNode, "lqr_controller", args)


if __name__ == "__main__":
    sys.exit(main())
