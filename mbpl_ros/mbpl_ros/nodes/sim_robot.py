"""
sim_robot: a PyBullet arm behind the interfaces of a ros2_control effort-controlled robot.

Publishes      joint_states (sensor_msgs/JointState: name, position, velocity, effort, stamped),
               ee_pose (geometry_msgs/PoseStamped) and ee_twist (geometry_msgs/TwistStamped) of
               the end-effector point, in frame "world";
               clock (rosgraph_msgs/Clock), in lockstep mode only;
               with a camera in the experiment (`camera:`): image_topic (sensor_msgs/Image,
               rgb8) and camera_info_topic (sensor_msgs/CameraInfo), frame "camera".
Subscribes     effort_controller/commands (std_msgs/Float64MultiArray): one effort per joint in
               the order of the `joints` parameter (ros2_control forward-command convention).
Serves         ~/reset (std_srvs/Trigger): back to `initial_positions` at rest, the
               experiment's fixtures and the camera's target sphere placed for `target`.
               `initial_positions` and `target` are the parameters settable at runtime (the
               standard ~/set_parameters service; validated like at start-up), so a trainer
               (lqr_controller's sim_service reset) can choose the start pose and the target
               (a peg's hole) of the next ~/reset.

Fixtures: the experiment's static bodies (a peg's block with its hole) are built in the
arm's world by the Arm of the offline trainer (sim.arm.Arm with sim.scene's fixtures and
CONTACT_SETTINGS), so a trial here meets the block that `mbpl train` meets; those placed
relative to the target move with `target` at each ~/reset, before the arm is put back. A real
robot has its real block: on hardware nothing simulates fixtures. The experiment's
`model_error` (a simulated arm unlike its description) applies here too, as in `mbpl train`.

The camera: the experiment's (sim.camera.Camera, the renderer of `mbpl train`), looking at the
arm and the target sphere (placed at `target` by each reset). In lockstep one image per
control step (and per reset), rendered right after the state it belongs to, published right
after its joint state and stamped exactly like it, as offline; in realtime a steady timer at
camera.rate_hz renders the arm as it is, stamped with the time of the render.

Timing modes
  realtime  a steady-clock timer steps the arm at control_rate_hz; the last valid command is
            held, and zero effort is applied once it is older than command_timeout_s.
  lockstep  each valid command advances the arm by exactly one control step, then the state
            is published, stamped with simulated time, which is also published on /clock
            (for nodes with use_sim_time). Deterministic. The state is also published at
            start-up and after every reset, so a client may call ~/reset, read the initial
            state, then send one command per state it receives.

Bad input never reaches the simulator as given: a command of the wrong length or with
NaN/inf is rejected (in lockstep, no step is taken), one beyond the effort limits is clamped;
both with a rate-limited warning. A bad parameter stops start-up with a message naming it
and its allowed values.

Executor: one SingleThreadedExecutor, as every node here. Under rclpy's
MultiThreadedExecutor the realtime timer was measured to stall for 0.1-2.6 s after a command
arrived (with a mutually exclusive or a reentrant group), so the timing holds under the first.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import (NodeParameterError, check_known_parameters, declare,
                                   resolve_experiment_path, run_node)
from mbpl_ros.nodes.parameters import SIM_ROBOT, check_changes
from mbpl_ros.sim import view
from mbpl_ros.sim.arm import Arm
from mbpl_ros.robots import ROBOTS, robot_spec

MODES = SIM_ROBOT["mode"].choices
WARNING_PERIOD_S = 1.0  # at most one warning of a kind per second
COMMAND_QUEUE_DEPTH = 100  # lockstep clients may queue several commands; none may be lost


class SimRobotParameterError(NodeParameterError):
    """A parameter of sim_robot is invalid; the message names it and the allowed values."""


@dataclass(frozen=True)
class SimRobotSettings:
    """The validated parameters. Arrays are ordered like `joints`."""

    robot: str
    control_rate_hz: float
    physics_dt: float
    substeps: int
    mode: str
    joints: tuple
    initial_positions: np.ndarray
    target: np.ndarray        # (3,) where the fixtures relative to the target go at ~/reset
    command_timeout_s: float
    gui: bool
    image_topic: str
    camera_info_topic: str

    @property
    def control_period_ns(self) -> int:
        return round(self.substeps * self.physics_dt * 1e9)


class SimRobotNode(Node):
    """The sim_robot node; `settings` and `arm` are public for tests and tools."""

    def __init__(self, node_name: str = "sim_robot", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self.settings = self._read_parameters()
            check_known_parameters(self)
            spec = robot_spec(self.settings.robot)
            # The experiment's fixtures and target sphere, built and placed by the offline
            # trainer's own code.
            fixtures = self.experiment.scene if self.experiment is not None else ()
            camera = self.experiment.camera if self.experiment is not None else None
            self.arm = Arm(spec, physics_dt=self.settings.physics_dt,
                           substeps=self.settings.substeps, gui=self.settings.gui,
                           fixtures=fixtures,
                           target_marker=None if camera is None else camera.target_marker,
                           model_error=self._model_error())
            self.camera = None if camera is None else self.experiment.make_camera(self.arm)
            # command index i drives arm joint _arm_index[i]
            self._arm_index = np.array([spec.joint_names.index(name)
                                        for name in self.settings.joints])
            self._initial_q = np.empty(spec.n_joints)
            self._initial_q[self._arm_index] = self.settings.initial_positions
            try:
                self.arm.reset(self._initial_q, target=self.settings.target)
            except ValueError as error:
                raise SimRobotParameterError(
                    "parameter 'initial_positions' is "
                    f"{self.settings.initial_positions.tolist()}: "
                    f"{error}; allowed: angles within "
                    f"{self.arm.position_limits[self._arm_index].tolist()} for joints "
                    f"{list(self.settings.joints)}") from None
            if self.settings.gui:   # the camera and markers of `mbpl replay`, in the window
                conditions = self.experiment.conditions if self.experiment is not None else []
                view.prepare(self.arm,
                             [self._initial_q] + [c.initial_positions for c in conditions],
                             [c.target for c in conditions], gui=True)
                self.arm.reset(self._initial_q, target=self.settings.target)
        except BaseException:
            self.destroy_node()
            raise

        self.steps_taken = 0  # control steps since start-up; lockstep sim time = steps * period
        self.rejected_commands = 0
        self.clamped_commands = 0
        self._held_effort: Optional[np.ndarray] = None  # (J,) in arm order
        self._held_since = -math.inf  # time.monotonic() of the held command

        # One mutually exclusive group: the arm is touched by one callback at a time under
        # any executor, so no locks are needed.
        group = MutuallyExclusiveCallbackGroup()
        self._joint_state_pub = self.create_publisher(JointState, wire.JOINT_STATES_TOPIC, 10)
        self._pose_pub = self.create_publisher(PoseStamped, wire.EE_POSE_TOPIC, 10)
        self._twist_pub = self.create_publisher(TwistStamped, wire.EE_TWIST_TOPIC, 10)
        self._clock_pub = (self.create_publisher(ClockMsg, "/clock", 10)
                           if self.settings.mode == "lockstep" else None)
        self.images_published = 0
        if self.camera is not None:
            self._image_pub = self.create_publisher(Image, self.settings.image_topic,
                                                    wire.image_qos("reliable"))
            self._info_pub = self.create_publisher(CameraInfo, self.settings.camera_info_topic,
                                                   wire.image_qos("reliable"))
            self._intrinsics = self.camera.intrinsics()
        self.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, self._on_command,
                                 COMMAND_QUEUE_DEPTH, callback_group=group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=group)
        if self.settings.mode == "realtime":
            self._timer = self.create_timer(1.0 / self.settings.control_rate_hz, self._on_tick,
                                            callback_group=group,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))
            if self.camera is not None:
                self.create_timer(1.0 / float(self.experiment.camera.rate_hz),
                                  lambda: self._publish_image(self._stamp()),
                                  callback_group=group,
                                  clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._publish_state()
        self.get_logger().info(
            f"{self.settings.robot} in {self.settings.mode} mode at "
            f"{self.settings.control_rate_hz:g} Hz "
            f"({self.settings.substeps} physics steps of {self.settings.physics_dt:g} s), "
            f"joints {list(self.settings.joints)}"
            + ("" if self.camera is None else
               f"; camera {self.camera.width}x{self.camera.height} on "
               f"{self.resolve_topic_name(self.settings.image_topic)}"))

    # ------------------------------------------------------------------ parameters
    def _declare(self, name: str, default=None, detail: Optional[str] = None):
        """
        Declare one parameter of SIM_ROBOT (nodes.parameters).

        Declare one parameter of SIM_ROBOT (nodes.parameters); a rejected value becomes
        SimRobotParameterError.
        """
        try:
            return declare(self, SIM_ROBOT, name, default, detail)
        except NodeParameterError as error:
            raise SimRobotParameterError(str(error)) from None

    def _read_parameters(self) -> SimRobotSettings:
        experiment_file = self._declare("experiment_config")
        experiment = self.experiment = None
        if experiment_file:
            try:
                experiment = self.experiment = load_experiment(
                    resolve_experiment_path(experiment_file))
            except ValueError as error:   # ConfigError and NodeParameterError are ValueErrors
                raise SimRobotParameterError(f"parameter 'experiment_config': {error}") from None
        robot = self._declare("robot", experiment.robot if experiment else "reacher_2link",
                              f"the built-in ones being {sorted(ROBOTS)}")
        if robot not in ROBOTS:
            raise SimRobotParameterError(
                f"parameter 'robot' is {robot!r}; allowed: one of {sorted(ROBOTS)} or the robot "
                "of "
                f"the experiment_config")
        spec = robot_spec(robot)

        rate = self._declare("control_rate_hz",
                             1.0 / experiment.control_dt if experiment else 20.0)
        physics_dt = self._declare("physics_dt",
                                   experiment.physics_dt if experiment else 1.0 / 240.0)
        substeps = round(1.0 / (rate * physics_dt))
        if substeps < 1 or abs(substeps * physics_dt * rate - 1.0) > 1e-9:
            raise SimRobotParameterError(
                f"parameter 'physics_dt' = {physics_dt!r} does not divide the control period "
                f"1/control_rate_hz = {1.0 / rate!r} s; allowed: 1/(control_rate_hz * n) for an "
                f"integer n >= 1, e.g. {1.0 / (rate * max(substeps, 1))!r}")

        mode = self._declare("mode")
        joints = tuple(self._declare("joints", list(spec.joint_names),
                                     f"the robot's being {list(spec.joint_names)}"))
        if sorted(joints) != sorted(spec.joint_names):
            unknown = sorted(set(joints) - set(spec.joint_names))
            raise SimRobotParameterError(
                f"parameter 'joints' is {list(joints)}"
                + (f" (unknown: {unknown})" if unknown else "")
                + f"; allowed: each joint of {robot} exactly once, from {list(spec.joint_names)}")

        # The robot's home pose, else (a robot without one, e.g. the peg's) the first start.
        home = (spec.initial_condition("home") if "home" in spec.initial_conditions
                else experiment.conditions[0].initial_positions
                if experiment and experiment.robot == robot else np.zeros(len(spec.joint_names)))
        default_initial = [float(home[spec.joint_names.index(name)]) for name in joints]
        initial = np.array(self._declare("initial_positions", default_initial), dtype=float)
        if initial.shape != (len(joints),) or not np.all(np.isfinite(initial)):
            raise SimRobotParameterError(
                f"parameter 'initial_positions' is {initial.tolist()}; allowed: {len(joints)} "
                "finite "
                f"angles (rad), one per joint {list(joints)}, within the joint limits")

        first_target = experiment.conditions[0].target if experiment else [0.0, 0.0, 0.0]
        target = np.array(self._declare("target", [float(v) for v in first_target]), dtype=float)
        error = _target_error(target)
        if error is not None:
            raise SimRobotParameterError(error)

        timeout = self._declare("command_timeout_s")
        gui = self._declare("gui")
        return SimRobotSettings(robot=robot, control_rate_hz=float(rate),
                                physics_dt=float(physics_dt),
                                substeps=int(substeps), mode=mode, joints=joints,
                                initial_positions=initial, target=target,
                                command_timeout_s=float(timeout), gui=bool(gui),
                                image_topic=self._declare("image_topic"),
                                camera_info_topic=self._declare("camera_info_topic"))

    def _model_error(self):
        """Return how the simulated arm differs from its description: the experiment's."""
        experiment = self.experiment
        if experiment is None or experiment.robot != self.settings.robot:
            return None
        return experiment.model_error

    def _initial_positions_error(self, value) -> Optional[str]:
        """Why `value` cannot be initial_positions, or None if it can."""
        try:
            initial = np.array(value, dtype=float)
        except (TypeError, ValueError):
            initial = np.array([np.nan])
        joints = list(self.settings.joints)
        limits = self.arm.position_limits[self._arm_index]
        if initial.shape != (len(joints),) or not np.all(np.isfinite(initial)):
            return (f"parameter 'initial_positions' is {value!r}; allowed: {len(joints)} finite "
                    "angles "
                    f"(rad), one per joint {joints}, within the joint limits")
        outside = (initial < limits[:, 0]) | (initial > limits[:, 1])
        if outside.any():
            return (f"parameter 'initial_positions' is {initial.tolist()}: outside the position "
                    "limits "
                    f"at joints {[name for name, out in zip(joints, outside) if out]}; allowed: "
                    "angles within "
                    f"{limits.tolist()} for joints {joints}")
        return None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Runtime changes: initial_positions and target (the others are read-only), checked."""
        reason = check_changes(SIM_ROBOT, parameters)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        # All checked before any is applied: a refused request changes nothing.
        for parameter in parameters:
            check = {"target": _target_error,
                     "initial_positions": self._initial_positions_error}.get(parameter.name)
            error = None if check is None else check(parameter.value)
            if error is not None:
                return SetParametersResult(successful=False, reason=error)
        for parameter in parameters:
            if parameter.name == "target":
                target = np.array(parameter.value, dtype=float)
                self.settings = dataclasses.replace(self.settings, target=target)
                continue
            if parameter.name != "initial_positions":
                continue
            initial = np.array(parameter.value, dtype=float)
            initial_q = np.empty(self.arm.n_joints)
            initial_q[self._arm_index] = initial
            # Swapped as whole objects: a concurrent ~/reset sees the old or the new pose.
            self.settings = dataclasses.replace(self.settings, initial_positions=initial)
            self._initial_q = initial_q
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ callbacks
    def _on_command(self, msg: Float64MultiArray) -> None:
        effort = self._validated_effort(msg)
        if effort is None:
            return
        if self.settings.mode == "lockstep":
            self._step(effort)
        else:
            self._held_effort, self._held_since = effort, time.monotonic()

    def _on_tick(self) -> None:
        effort = np.zeros(self.arm.n_joints)
        if self._held_effort is not None:
            if time.monotonic() - self._held_since <= self.settings.command_timeout_s:
                effort = self._held_effort
            else:
                self.get_logger().warning(
                    f"no effort command for {self.settings.command_timeout_s:g} s: applying zero "
                    "effort",
                    throttle_duration_sec=WARNING_PERIOD_S)
        self._step(effort)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        # The fixtures move first (Arm.reset), as the offline trainer's reset does.
        target = self.settings.target
        self.arm.reset(self._initial_q, target=target)
        self._held_effort, self._held_since = None, -math.inf
        self._publish_state()
        response.success = True
        response.message = ("reset to initial_positions "
                            f"{self.settings.initial_positions.tolist()} "
                            f"for joints {list(self.settings.joints)}, at rest"
                            + (f"; fixtures placed for target {target.tolist()}"
                               if self.arm.fixtures else ""))
        return response

    # ------------------------------------------------------------------ helpers
    def _validated_effort(self, msg: Float64MultiArray) -> Optional[np.ndarray]:
        """Return the command in arm joint order, clamped to the effort limits (None: rejected)."""
        try:
            command = wire.decode_effort_command(msg, self.arm.n_joints)
        except wire.WireFormatError as error:
            self.rejected_commands += 1
            self.get_logger().warning(f"rejected effort command: {error}",
                                      throttle_duration_sec=WARNING_PERIOD_S)
            return None
        effort = np.empty(self.arm.n_joints)
        effort[self._arm_index] = command
        clamped = np.clip(effort, -self.arm.effort_limits, self.arm.effort_limits)
        if np.any(clamped != effort):
            self.clamped_commands += 1
            self.get_logger().warning(
                f"effort command {command.tolist()} beyond the limits "
                f"{self.arm.effort_limits[self._arm_index].tolist()}: clamped",
                throttle_duration_sec=WARNING_PERIOD_S)
        return clamped

    def _step(self, effort: np.ndarray) -> None:
        self.arm.step(effort)
        self.steps_taken += 1
        self._publish_state()

    def _stamp(self):
        if self.settings.mode == "lockstep":
            return self.steps_taken * self.settings.control_period_ns
        return self.get_clock().now().to_msg()

    def _publish_state(self) -> None:
        stamp = self._stamp()
        if self._clock_pub is not None:
            self._clock_pub.publish(wire.encode_clock(stamp))
        q, qd, effort = self.arm.joint_state()
        order = self._arm_index
        self._joint_state_pub.publish(wire.encode_joint_state(
            self.settings.joints, q[order], qd[order], effort[order], stamp))
        self._pose_pub.publish(wire.encode_pose(self.arm.ee_position(), self.arm.ee_orientation(),
                                                stamp))
        self._twist_pub.publish(wire.encode_twist(self.arm.ee_velocity(),
                                                  self.arm.ee_angular_velocity(), stamp))
        if self.camera is not None and self.settings.mode == "lockstep":
            self._publish_image(stamp)   # the image of this state, after its joint state

    def _publish_image(self, stamp) -> None:
        """Render the camera and publish the image and the camera info, stamped `stamp`."""
        image = wire.encode_image(self.camera.render(), stamp)
        self._image_pub.publish(image)
        self._info_pub.publish(wire.encode_camera_info(self._intrinsics, image.header.stamp))
        self.images_published += 1

    def destroy_node(self) -> None:
        arm = getattr(self, "arm", None)
        if arm is not None:
            arm.close()
        super().destroy_node()


def _target_error(value) -> Optional[str]:
    """Why `value` cannot be the parameter `target`, or None if it can."""
    try:
        target = np.array(value, dtype=float)
    except (TypeError, ValueError):
        target = np.array([np.nan])
    if target.shape != (3,) or not np.all(np.isfinite(target)):
        return (f"parameter 'target' is {value!r}; allowed: 3 finite numbers [x, y, z] (m, "
                "world frame)")
    return None


def main(args=None) -> int:
    """Console entry point: `sim_robot --ros-args -p robot:=kuka_iiwa ...`."""
    return run_node(SimRobotNode, "sim_robot", args)


if __name__ == "__main__":
    sys.exit(main())
