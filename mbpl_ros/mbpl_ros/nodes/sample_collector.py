"""
sample_collector: turn /joint_states and the controller's trial records into rollouts.

A rollout is X (T, dX), U (T, dU) of the core's state x = [q, qd, p_ee − target, v_ee].

Subscribes   joint_states (sensor_msgs/JointState), kept in a buffer by stamp
             gps/trial_records (mbpl_ros_interfaces/TrialRecord): for each step of a trial,
             the stamp of the joint state the controller acted on and the command it sent
             the camera (sensor_msgs/Image, parameter image_topic), when the experiment
             has one (`camera:`), kept in a buffer by stamp
Publishes    gps/rollouts (mbpl_ros_interfaces/Rollout), with the trial's id, the joint
             states used, the commands, X, U and, with a camera, each step's image

x_t is built from the buffered joint state with the record's stamp t, by forward
kinematics and the Jacobian of the URDF (robot_model.JointStateToState: the same function
as the offline trainer's), so it needs nothing but /joint_states from a robot. U is the
command clamped to the URDF's effort limits: the effort the robot applied, as offline.

A rollout is flagged and dropped — published with its status and no data, and logged with
the reason — when a step's joint state never arrives (MISSING_STATE, after
assembly_timeout_s), when consecutive steps' states are not one control period apart
(GAP) or the same/an older state was used again (STALE), when a state or a command is
not finite (NON_FINITE), or when a state or a step between two leaves the physical envelope
(IMPLAUSIBLE_STATE; core.sanity: beyond the URDF position limits by a margin, faster than a
multiple of the velocity limits): the fit never sees an impossible state. Joint states
stamped ahead of this node's clock, or older than the latest one it accepted, are not
buffered (counted in `rejected_stamps`; core.sanity).

With a camera, step t's image is the one stamped nearest its joint state, within
image_tolerance_s (nodes.images: the rule, and when a step's image is settled); a step
without one drops the rollout (MISSING_IMAGE), once no image that could fill it can still
come (or after assembly_timeout_s). Images of another size than the experiment's camera, or
another encoding than rgb8/bgr8, are ignored (counted in `rejected_images`).
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from mbpl_ros_interfaces.msg import Rollout, TrialRecord

from mbpl_ros.core import sanity
from mbpl_ros.nodes import images, wire
from mbpl_ros.nodes.common import declare, declare_experiment, run_node
from mbpl_ros.nodes.common import check_known_parameters
from mbpl_ros.nodes.parameters import SAMPLE_COLLECTOR
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.robots import robot_spec


class RolloutRejected(Exception):
    def __init__(self, status: wire.TrialStatus, reason: str):
        super().__init__(reason)
        self.status = status


class SampleCollectorNode(Node):
    def __init__(self, node_name: str = "sample_collector", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self.config, self.experiment_path = declare_experiment(self)
            self.layout = self.config.layout
            self.joint_names = robot_spec(self.config.robot).joint_names
            self.control_period_s = declare(self, SAMPLE_COLLECTOR, "control_period_s",
                                            self.config.control_dt)
            self.period_tolerance = declare(self, SAMPLE_COLLECTOR, "period_tolerance")
            self.buffer_size = declare(self, SAMPLE_COLLECTOR, "buffer_size")
            self.assembly_timeout_s = declare(self, SAMPLE_COLLECTOR, "assembly_timeout_s")
            # The camera's parameters are declared (and listed) even without one.
            self.camera = self.config.camera
            self.image_topic = declare(self, SAMPLE_COLLECTOR, "image_topic")
            tolerance = declare(self, SAMPLE_COLLECTOR, "image_tolerance_s",
                                images.default_tolerance_s(self.config))
            self.images = images.ImageBuffer(
                round(tolerance * 1e9), declare(self, SAMPLE_COLLECTOR, "image_buffer_size"))
            self.image_qos = wire.image_qos(declare(self, SAMPLE_COLLECTOR, "image_reliability"))
            self.state_of = JointStateToState(self.config.robot, self.layout)
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        limits = self.state_of.model.effort_limits
        self.envelope = sanity.StateEnvelope(self.state_of.model.position_limits,
                                             self.state_of.model.velocity_limits)
        self.rejected_stamps = 0
        self.rejected_images = 0
        self._latest_accepted: Optional[Tuple[int, float]] = None   # (stamp ns, arrival)
        self._effort_low, self._effort_high = -limits, limits
        # stamp (ns) -> (q (J,), qd (J,)); a later state with the same stamp replaces an earlier
        # one (in lockstep a reset republishes the current simulated time).
        self._states: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()
        # trial id -> (record, arrival)
        self._waiting: Dict[int, Tuple[wire.TrialRecord, float]] = {}
        self.published: Dict[str, int] = {}   # status name -> count, for tests and tools
        group = MutuallyExclusiveCallbackGroup()
        self._rollout_pub = self.create_publisher(Rollout, wire.ROLLOUTS_TOPIC, wire.EVENTS_QOS)
        self.create_subscription(JointState, wire.JOINT_STATES_TOPIC, self._on_joint_state, 1000,
                                 callback_group=group)
        self.create_subscription(TrialRecord, wire.TRIAL_RECORDS_TOPIC, self._on_record,
                                 wire.EVENTS_QOS,
                                 callback_group=group)
        if self.camera is not None:
            self.create_subscription(Image, self.image_topic, self._on_image, self.image_qos,
                                     callback_group=group)
        self.create_timer(0.05, self._check_waiting, callback_group=group,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd, _ = wire.decode_joint_state(msg, self.joint_names)
        except wire.WireFormatError as error:
            self.get_logger().warning(f"ignored a joint state: {error}", throttle_duration_sec=1.0)
            return
        stamp, arrival = wire.nanoseconds_from_stamp(msg.header.stamp), time.monotonic()
        latest = self._latest_accepted
        fault = sanity.stamp_fault(stamp, self.get_clock().now().nanoseconds,
                                   None if latest is None else latest[0],
                                   0.0 if latest is None else arrival - latest[1])
        if fault is not None:
            self.rejected_stamps += 1
            self.get_logger().warning(f"ignored a joint state: {fault}", throttle_duration_sec=1.0)
            return
        if sanity.state_fault(q, qd, self.envelope) is None:  # an impossible one moves no mark
            self._latest_accepted = (stamp, arrival)
        self._states.pop(stamp, None)
        self._states[stamp] = (q, qd)
        while len(self._states) > self.buffer_size:
            self._states.popitem(last=False)
        if self._waiting:
            self._check_waiting()

    def _on_image(self, msg: Image) -> None:
        try:
            pixels = wire.decode_image(msg, self.camera.height, self.camera.width)
        except wire.WireFormatError as error:
            self.rejected_images += 1
            self.get_logger().warning(f"ignored a camera image: {error}",
                                      throttle_duration_sec=1.0)
            return
        self.images.add(wire.nanoseconds_from_stamp(msg.header.stamp), pixels)
        if self._waiting:
            self._check_waiting()

    def _on_record(self, msg: TrialRecord) -> None:
        try:
            record = wire.decode_trial_record(msg, dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a trial record: {error}")
            return
        if record.status != wire.TrialStatus.OK:
            why = f": {record.reason}" if record.reason else ""
            self._publish(record, record.status,
                          f"the controller reported {record.status.name}{why}")
            return
        self._waiting[record.trial_id] = (record, time.monotonic())
        self._check_waiting()

    def _check_waiting(self) -> None:
        now = time.monotonic()
        for trial_id, (record, arrival) in list(self._waiting.items()):
            stamps = record.state_stamps_ns
            missing = [t for t, stamp in enumerate(stamps) if stamp not in self._states]
            unsettled = (self.camera is not None
                         and bool(images.align(self.images, stamps).unsettled))
            if (missing or unsettled) and now - arrival <= self.assembly_timeout_s:
                continue
            del self._waiting[trial_id]
            if missing:
                more = '...' if len(missing) > 5 else ''
                self._publish(record, wire.TrialStatus.MISSING_STATE,
                              f"the joint states of steps {missing[:5]}{more} "
                              f"never arrived (waited {self.assembly_timeout_s:g} s)")
                continue
            try:
                X, U = self.assemble(record)
                alignment = self.align_images(record)
            except RolloutRejected as rejected:
                self._publish(record, rejected.status, str(rejected))
                continue
            self._publish(record, wire.TrialStatus.OK, None, X, U, alignment)

    # ------------------------------------------------------------------ assembly
    def check_timing(self, stamps_ns: np.ndarray) -> None:
        """
        Raise RolloutRejected (STALE or GAP) unless the steps' states are one period apart.

        The steps' joint states must be one control period apart, within period_tolerance.
        """
        if stamps_ns.size < 2:
            return
        periods = np.diff(stamps_ns) * 1e-9
        stale = np.flatnonzero(periods <= 0)
        if stale.size:
            t = int(stale[0]) + 1
            raise RolloutRejected(wire.TrialStatus.STALE,
                                  f"step {t} used a joint state no newer than step "
                                  f"{t - 1}'s ({periods[t - 1]:+.4f} s)")
        expected, tolerance = self.control_period_s, self.period_tolerance * self.control_period_s
        gaps = np.flatnonzero(np.abs(periods - expected) > tolerance)
        if gaps.size:
            t = int(gaps[0]) + 1
            raise RolloutRejected(wire.TrialStatus.GAP,
                                  f"{periods[t - 1]:.4f} s between the joint states of "
                                  f"steps {t - 1} and {t}; "
                                  f"expected {expected:.4f} ± {tolerance:.4f} s")

    def assemble(self, record: wire.TrialRecord) -> Tuple[np.ndarray, np.ndarray]:
        """X (T, dX), U (T, dU) of a trial whose joint states are all buffered."""
        stamps = record.state_stamps_ns
        self.check_timing(stamps)
        joint_states = [self._states[stamp] for stamp in stamps]
        q = np.array([state[0] for state in joint_states])
        qd = np.array([state[1] for state in joint_states])
        bad = ~(np.isfinite(q).all(axis=1) & np.isfinite(qd).all(axis=1)
                & np.isfinite(record.commands).all(axis=1))
        if bad.any():
            raise RolloutRejected(wire.TrialStatus.NON_FINITE,
                                  f"non-finite joint state or command at steps "
                                  f"{np.flatnonzero(bad)[:5].tolist()}")
        fault = sanity.trajectory_fault(q, qd, (stamps - stamps[0]) * 1e-9, self.envelope)
        if fault is not None:
            raise RolloutRejected(wire.TrialStatus.IMPLAUSIBLE_STATE,
                                  f"impossible joint state at {fault}")
        X = np.stack([self.state_of(q[t], qd[t], record.target) for t in range(len(stamps))])
        U = np.clip(record.commands, self._effort_low, self._effort_high)
        return X, U

    def align_images(self, record: wire.TrialRecord) -> Optional[images.Alignment]:
        """
        Return each step's camera image (None without a camera).

        RolloutRejected (MISSING_IMAGE) names the steps without one within the tolerance.
        """
        if self.camera is None:
            return None
        alignment = images.align(self.images, record.state_stamps_ns)
        if alignment.missing:
            more = "..." if len(alignment.missing) > 5 else ""
            latest = self.images.latest_stamp_ns
            seen = ("no camera image has arrived" if latest is None else
                    f"the latest image is stamped {latest * 1e-9:.3f} s")
            raise RolloutRejected(
                wire.TrialStatus.MISSING_IMAGE,
                f"no camera image within image_tolerance_s = "
                f"{self.images.tolerance_ns * 1e-9:g} s of the joint states of steps "
                f"{list(alignment.missing[:5])}{more} ({seen}, on {self.image_topic})")
        return alignment

    def _publish(self, record: wire.TrialRecord, status: wire.TrialStatus, reason: Optional[str],
                 X: Optional[np.ndarray] = None, U: Optional[np.ndarray] = None,
                 alignment: Optional[images.Alignment] = None) -> None:
        if status != wire.TrialStatus.OK:
            self.get_logger().warning(f"trial {record.trial_id} "
                                      f"(condition {record.condition}, index "
                                      f"{record.index}) dropped, {status.name}: {reason}")
            X, U = np.zeros((0, self.layout.dX)), np.zeros((0, self.layout.dU))
        self.published[status.name] = self.published.get(status.name, 0) + 1
        ok = status == wire.TrialStatus.OK
        self._rollout_pub.publish(wire.encode_rollout(wire.RolloutMessage(
            trial_id=record.trial_id, condition=record.condition, iteration=record.iteration,
            index=record.index, controller_version=record.controller_version,
            purpose=record.purpose,
            status=status, X=X, U=U, target=record.target,
            joint_states=self._joint_states(record) if ok else (),
            commands=record.commands if ok else None,
            images=alignment.images if ok and alignment is not None else None,
            image_stamps_ns=alignment.stamps_ns if ok and alignment is not None else None)))

    def _joint_states(self, record: wire.TrialRecord) -> tuple:
        """Return the buffered joint states the trial's steps used, as JointState messages."""
        states = []
        for stamp in record.state_stamps_ns:
            q, qd = self._states[stamp]
            msg = JointState(name=list(self.joint_names), position=q, velocity=qd)
            msg.header.stamp = wire.stamp_from_nanoseconds(int(stamp))
            states.append(msg)
        return tuple(states)

    def destroy_node(self) -> None:
        state_of = getattr(self, "state_of", None)
        if state_of is not None:
            state_of.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node(SampleCollectorNode, "sample_collector", args)


if __name__ == "__main__":
    sys.exit(main())
