"""
The ROS parameters of every node, one table per node; ROS-free.

Each entry gives a parameter's name, type, default, range or allowed values, doc and
whether it may be set at runtime. The nodes declare their parameters from these tables
(nodes.common.declare builds the descriptor), check runtime changes with them
(Parameter.check) and `mbpl params-reference` lists what they declared, so a parameter and
its range are written once. A default of None is the node's to give at declaration, from
the experiment or the robot (the doc says from what).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

from mbpl_ros.core import safety

__all__ = ["DYNAMICS_FITTER", "EXPERIMENT_CONFIG", "GPS_TRAINER", "LQR_CONTROLLER",
           "NODE_PARAMETERS",
           "NodeParameterError", "Parameter", "SAMPLE_COLLECTOR", "SIM_ROBOT", "TYPES",
           "check_changes"]

#: Parameter types: the Python type of a value of each.
TYPES = {"bool": bool, "integer": int, "double": float, "string": str,
         "string_array": str, "double_array": float}


class NodeParameterError(ValueError):
    """A parameter is invalid; the message names it and the allowed values."""


@dataclass(frozen=True)
class Parameter:
    """One node parameter: its declaration, its doc and its check."""

    name: str
    type: str
    default: Any
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False          # low itself not allowed: (low, high]
    choices: Optional[Tuple[str, ...]] = None
    allowed_words: Optional[str] = None   # what is allowed, where a range cannot say it
    runtime: bool = False

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type {self.type!r} is not one of {sorted(TYPES)}")

    @property
    def allowed(self) -> str:
        """Say what is allowed, in words (the descriptor's additional_constraints)."""
        if self.allowed_words is not None:
            return self.allowed_words
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.low is not None:
            kind = "an integer" if self.type == "integer" else "a double"
            return f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        return {"bool": "true or false", "string": "a string"}.get(self.type, self.type)

    def problem(self, value: Any) -> Optional[str]:
        """Why `value` is not allowed (naming it and what is), or None when it is."""
        kind = TYPES[self.type]
        array = self.type.endswith("_array")
        if array and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")):
            ok, items = False, []
        else:
            items = list(value) if array else [value]
            ok = all(_is(item, kind) for item in items)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.low is not None:
            ok = all(math.isfinite(v) and (v > self.low if self.low_open else v >= self.low)
                     and v <= self.high for v in items)
        if ok:
            return None
        shown = items if array and items else value
        return f"parameter '{self.name}' is {shown!r}; allowed: {self.allowed}"

    def check(self, value: Any) -> Any:
        """Return `value`, or raise NodeParameterError naming it and what is allowed."""
        reason = self.problem(value)
        if reason is not None:
            raise NodeParameterError(reason)
        return value


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, float)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _table(*parameters: Parameter) -> Dict[str, Parameter]:
    table = {p.name: p for p in parameters}
    if len(table) != len(parameters):
        raise ValueError("a parameter is listed twice")
    return table


def check_changes(table: Dict[str, Parameter], changes: Iterable) -> Optional[str]:
    """
    Why the runtime changes (objects with .name, .value) cannot be made, or None.

    Each change of a parameter in `table` must be runtime-settable and allowed by its entry;
    the node then checks what depends on the robot (e.g. the URDF's limits).
    """
    for change in changes:
        parameter = table.get(change.name)
        if parameter is None:
            continue
        if not parameter.runtime:
            return f"parameter '{change.name}' is read-only; allowed: set it at start-up"
        reason = parameter.problem(change.value)
        if reason is not None:
            return reason
    return None


EXPERIMENT_CONFIG = Parameter(
    "experiment_config", "string", "reacher_2link.yaml",
    "Experiment YAML shared with `mbpl train` (robot, conditions, cost, algorithm).",
    allowed_words="an experiment YAML: absolute, relative to the current directory, or in "
                  "share/mbpl_ros/config")


#: The camera parameters of the nodes that read it (experiment section `camera:`).
IMAGE_TOPIC = Parameter(
    "image_topic", "string", "/camera/image_raw",
    "Camera images (sensor_msgs/Image, rgb8 or bgr8, the experiment camera's size): "
    "sim_robot's, or a ROS 2 camera driver's topic; used only when the experiment has a "
    "camera (`camera:`).", allowed_words="a topic name")
IMAGE_RELIABILITY = Parameter(
    "image_reliability", "string", "reliable",
    "QoS reliability of the camera subscription: reliable (sim_robot, most drivers' default) "
    "or best_effort (matches any publisher, e.g. a driver using the sensor-data profile).",
    choices=("reliable", "best_effort"))
IMAGE_TOLERANCE = Parameter(
    "image_tolerance_s", "double", None,
    "A step's image is the one stamped nearest its joint state, at most this far (s); "
    "default: the experiment's camera.image_tolerance_s (without a camera: half the control "
    "period, unused).", low=0.0, high=10.0)

LQR_CONTROLLER = _table(
    EXPERIMENT_CONFIG,
    Parameter("mode", "string", "realtime",
              "Timing: realtime (the robot runs on its own clock; realtime_trigger says what "
              "starts a step) or lockstep (one step per joint state received, with sim_robot "
              "in lockstep).", choices=("realtime", "lockstep")),
    Parameter("realtime_trigger", "string", "joint_state",
              "Realtime mode: what starts a control step. joint_state: each new joint state "
              "(the robot's state publisher, e.g. ros2_control's joint_state_broadcaster, sets "
              "the rate; the command follows its state at once); timer: a timer at "
              "control_rate_hz acting on the latest state (up to one period later).",
              choices=("joint_state", "timer")),
    Parameter("control_rate_hz", "double", None,
              "Control rate (Hz): the watchdog's period in every mode, and the step rate with "
              "realtime_trigger timer; default: the experiment's.", low=0.1, high=1000.0),
    Parameter("joints", "string_array", None,
              "Joint order of the effort commands (the robot's `joints`).",
              allowed_words="an ordering of the robot's joints"),
    Parameter("reset_mode", "string", "pd",
              "How the arm gets to a trial's start pose: a PD phase (pd) or sim_robot's reset "
              "service (sim_service).", choices=("pd", "sim_service")),
    Parameter("sim_node", "string", "/sim_robot", "sim_robot's node name (sim_service reset).",
              allowed_words="a fully qualified node name, e.g. /sim_robot"),
    Parameter("reset_timeout_s", "double", 20.0, "Longest reset (PD phase or service).",
              low=0.1, high=600.0),
    Parameter("pd_natural_frequency", "double", 4.0,
              "PD reset: natural frequency (rad/s) in joint acceleration. Settable at runtime "
              "(applied between trials).", low=0.1, high=100.0, runtime=True),
    Parameter("pd_damping_ratio", "double", 1.0, "PD reset: damping ratio. Settable at runtime.",
              low=0.1, high=10.0, runtime=True),
    Parameter("pd_position_tolerance", "double", 0.01,
              "PD reset ends within this joint-angle error (rad) ...", low=1e-6, high=1.0),
    Parameter("pd_velocity_tolerance", "double", 0.02, "... and below this joint speed (rad/s).",
              low=1e-6, high=10.0),
    Parameter("controller_wait_s", "double", 5.0,
              "How long a request waits for the controller version it names (s).",
              low=0.0, high=600.0),
    Parameter("policy_path", "string", "",
              "Exported TorchScript policy (policy.pt) for trials with executor 'policy'; "
              "empty: none. Settable at runtime.",
              allowed_words="empty or the path of a policy exported by `mbpl train`",
              runtime=True),
    Parameter("effort_limits", "double_array", None,
              "Effort limit per joint (N·m), in the order of `joints`; default: the URDF's. "
              "Settable at runtime; may only lower the URDF's.",
              allowed_words="one double per joint in (0, URDF limit]", runtime=True),
    Parameter("joint_limit_margin", "double", safety.DEFAULT_JOINT_LIMIT_MARGIN,
              "Joint-limit guard: within this distance (rad) of a position limit, effort into "
              "the limit fades to zero and motion towards it is damped. Settable at runtime.",
              low=0.0, high=1.0,
              allowed_words="a double in [0.0, 1.0], below half of every joint's range",
              runtime=True),
    Parameter("joint_limit_damping", "double", safety.DEFAULT_JOINT_LIMIT_DAMPING,
              "Joint-limit guard: damping gain (N·m·s/rad) at the limit, ramping up linearly "
              "across the margin. Settable at runtime.", low=0.0, high=10000.0, runtime=True),
    Parameter("watchdog_periods", "integer", 5,
              "Watchdog: while commanding, a latest joint state older than this many control "
              "periods sends the fallback and aborts the trial. Settable at runtime.",
              low=1, high=100000, runtime=True),
    Parameter("watchdog_action", "string", "zero",
              "Fallback effort of the watchdog, of a non-finite command and after each realtime "
              "trial: zero effort, or hold (gravity torque at the last valid pose). Settable at "
              "runtime.", choices=safety.FALLBACK_ACTIONS, runtime=True),
    Parameter("estop_topic", "string", None,
              "Emergency stop input (std_msgs/Bool, True = stop); cleared only by "
              "~/reset_estop.", allowed_words="a topic name"),
    Parameter("global_estop_topic", "string", None,
              "A second e-stop input, shared by every robot (std_msgs/Bool, True = stop), heard "
              "when it is not estop_topic (a robot in a namespace); empty: none.",
              allowed_words="empty or a topic name"),
    Parameter("estop_latched_at_start", "bool", False,
              "Start with the e-stop latched, so that nothing moves until ~/reset_estop "
              "(recommended on hardware: a restarted controller does not forget a stop)."),
    IMAGE_TOPIC, IMAGE_RELIABILITY, IMAGE_TOLERANCE,
    Parameter("image_timeout_s", "double", None,
              "Image policy: a joint state that waits longer than this (s) for a camera image "
              "within image_tolerance_s of its stamp (the camera stopped, or is late) stops the "
              "policy: the fallback is sent and the trial aborted (MISSING_IMAGE); default: "
              "the watchdog's watchdog_periods / control_rate_hz.", low=0.001, high=3600.0),
)

SAMPLE_COLLECTOR = _table(
    EXPERIMENT_CONFIG,
    Parameter("control_period_s", "double", None,
              "Expected time between the joint states of consecutive steps (s); default: the "
              "experiment's.", low=1e-4, high=10.0),
    Parameter("period_tolerance", "double", 0.5,
              "Allowed relative deviation of a step's period before the rollout counts as "
              "having a gap.", low=0.0, high=0.99),
    Parameter("buffer_size", "integer", 5000, "Joint states kept (by stamp).",
              low=10, high=1_000_000),
    Parameter("assembly_timeout_s", "double", 2.0,
              "How long a trial record waits for the joint states it names before the rollout "
              "is dropped (s).", low=0.0, high=60.0),
    IMAGE_TOPIC, IMAGE_RELIABILITY, IMAGE_TOLERANCE,
    Parameter("image_buffer_size", "integer", 500, "Camera images kept (by stamp).",
              low=10, high=100_000),
)

DYNAMICS_FITTER = _table(
    EXPERIMENT_CONFIG,
    Parameter("state_file", "string", "",
              "Where the batches and their GMM priors are kept across restarts (written after "
              "every rollout, read at start-up); empty: in memory only.",
              allowed_words="empty or a writable file path"),
)

GPS_TRAINER = _table(
    EXPERIMENT_CONFIG,
    Parameter("iterations", "integer", 0, "Learning iterations; 0: the experiment's.",
              low=0, high=100_000),
    Parameter("seed", "integer", -1, "Seed of the exploration noise; -1: the experiment's.",
              low=-1, high=2 ** 31 - 1, allowed_words="an integer in [-1, 2**31 - 1]"),
    Parameter("output_dir", "string", None,
              "Where metrics.jsonl, checkpoints, rollouts.mcap, learning_curve.png and (MDGPS) "
              "policy.pt go (relative to the current directory); default: "
              "runs/gps_<the experiment file's name>.", allowed_words="a writable directory path"),
    Parameter("trial_timeout_s", "double", 60.0,
              "Longest wait for a trial's rollout (s). Settable at runtime.",
              low=0.1, high=3600.0, runtime=True),
    Parameter("max_attempts", "integer", 3,
              "Tries per trial before the trainer stops (trials aborted by the e-stop do not "
              "count). Settable at runtime.", low=1, high=100, runtime=True),
    Parameter("dynamics_timeout_s", "double", 60.0,
              "Longest wait for the fitted dynamics of a batch (s). Settable at runtime.",
              low=0.1, high=3600.0, runtime=True),
    Parameter("kl_step", "double", None,
              "KL bound per time step of the controller update; default: the experiment's. "
              "Settable at runtime (from the next update).", low=0.0, high=1e6, low_open=True,
              allowed_words="a double in (0, 1e6]", runtime=True),
    Parameter("noise_scale", "double", 1.0,
              "Scale of the exploration noise of sample trials (1: the offline trainer's). "
              "Settable at runtime (from the next iteration).", low=0.0, high=100.0,
              runtime=True),
    Parameter("discovery_timeout_s", "double", 60.0,
              "Longest wait for lqr_controller, sample_collector and dynamics_fitter to appear "
              "(s).", low=0.1, high=3600.0),
    Parameter("resume", "bool", False,
              "Continue the run in output_dir from its newest checkpoint (completed iterations "
              "are kept, a half-done one is redone; none: start at iteration 0). false: start "
              "at iteration 0, refused if output_dir holds a run (unless overwrite)."),
    Parameter("overwrite", "bool", False,
              "Without resume: start over in an output_dir that holds a run (its checkpoints "
              "are deleted). false: such an output_dir is refused."),
    Parameter("controller_node", "string", "/lqr_controller",
              "The lqr_controller whose policy_path an MDGPS run sets to output_dir/policy.pt "
              "before policy trials.", allowed_words="a node name"),
    Parameter("allow_incomplete_recording", "bool", False,
              "Resume even if output_dir's rollouts.mcap lacks rollouts of the iterations the "
              "checkpoint covers (the recording is then marked incomplete); false: such a "
              "resume is refused, naming what is missing."),
    Parameter("robots", "string_array", [""],
              "Namespaces of the robots to spread each batch over (e.g. [robot_0, robot_1]: "
              "/robot_0/lqr_controller, ...); [''] (default): one robot, not namespaced.",
              allowed_words="a list of distinct ROS names, or ['']"),
)

SIM_ROBOT = _table(
    Parameter("experiment_config", "string", "",
              "Experiment YAML (as for `mbpl train`) whose robot, physics_dt and control "
              "period are the defaults of robot, physics_dt and control_rate_hz; a robot "
              "described in it (not only a built-in one) can then be simulated.",
              allowed_words="empty, or a path: absolute, relative to the current directory or "
                            "to share/mbpl_ros/config"),
    Parameter("robot", "string", None, "Robot to simulate.",
              allowed_words="a built-in robot or the experiment's robot"),
    Parameter("control_rate_hz", "double", None,
              "Control steps per second (Hz).", low=0.1, high=1000.0),
    Parameter("physics_dt", "double", None, "Physics time step (s); must divide the control "
              "period.", low=1e-5, high=0.1,
              allowed_words="a double in [1e-05, 0.1] that divides 1/control_rate_hz"),
    Parameter("mode", "string", "realtime", "Timing mode.", choices=("realtime", "lockstep")),
    Parameter("joints", "string_array", None,
              "Joint order of effort commands and joint states (default: the robot's joints).",
              allowed_words="an ordering of the robot's joints"),
    Parameter("initial_positions", "double_array", None,
              "Joint angles (rad) at start-up and after ~/reset, ordered like `joints` "
              "(default: the robot's home pose, else the experiment's first start pose); "
              "settable at runtime (takes effect at the next ~/reset).",
              allowed_words="one angle per joint, within the joint limits", runtime=True),
    Parameter("target", "double_array", None,
              "The trial's target (m, world frame): the experiment's fixtures placed relative "
              "to the target (a peg's block) and the target sphere the camera sees are put "
              "there at ~/reset (default: the first condition's; [0, 0, 0] without an "
              "experiment); settable at runtime (takes effect at the next ~/reset; "
              "lqr_controller's sim_service reset sets it to the trial's target).",
              allowed_words="3 finite numbers [x, y, z]", runtime=True),
    Parameter("command_timeout_s", "double", 0.5,
              "Realtime mode: apply zero effort once the last command is older than this (s).",
              low=0.001, high=60.0),
    Parameter("gui", "bool", False, "Open the PyBullet GUI window (camera framed on the arm, "
              "the experiment's targets drawn)."),
    Parameter("image_topic", "string", "/camera/image_raw",
              "Where the experiment's camera (`camera:`) is published (sensor_msgs/Image, rgb8; "
              "lockstep: one per control step, right after its joint state and stamped like "
              "it; realtime: at camera.rate_hz); used only when the experiment has a camera.",
              allowed_words="a topic name"),
    Parameter("camera_info_topic", "string", "/camera/camera_info",
              "Where the camera's intrinsics go (sensor_msgs/CameraInfo, with each image).",
              allowed_words="a topic name"),
)

#: node name (as in nodes.graph) -> its parameter table.
NODE_PARAMETERS = {"lqr_controller": LQR_CONTROLLER, "sample_collector": SAMPLE_COLLECTOR,
                   "dynamics_fitter": DYNAMICS_FITTER, "gps_trainer": GPS_TRAINER,
                   "sim_robot": SIM_ROBOT}
