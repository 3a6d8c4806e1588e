"""
Real-time control loop: lqr_controller (realtime mode) against sim_robot (realtime mode).

For each rate (default 100, 500 and 1000 Hz) and each of lqr_controller's realtime
triggers (default both: `joint_state`, a step per new joint state; `timer`, a timer at the
rate acting on the latest state) this starts sim_robot and lqr_controller as separate
processes, as a launch file would, both at that rate, and runs one trial of 10 s
(T = 10 · rate steps) of a PD controller holding the start pose. A probe node in this
process records every joint state (its stamp) and every effort command (its arrival time),
and the trial record in which lqr_controller names, for each command, the stamp of the
joint state it acted on. From these:

  period jitter      |Δ arrival of consecutive commands − 1/rate|, at the probe
  state→command      arrival of command t − stamp of the joint state command t used
                     (both on the system clock): the age of the state a command acts on
                     when it reaches the robot: transport both ways and compute, and with
                     the timer trigger also a phase offset spread over [0, 1/rate) (the
                     controller's timer is not synchronised with sim_robot's).
  stale / skipped    commands that reused the previous command's state; states of the
                     trial never used.

Targets (issue): at 500 Hz, p99 jitter < 1 ms and p99 latency < 2 ms. The figures depend
on the machine's load: the 1-minute load average at the end of each run is printed with it.
A trial the watchdog aborted (no joint state for --watchdog-periods periods) is reported
as such instead of figures.

Run: .venv/bin/python bench/control_loop.py [--rates 100 500 1000] [--seconds 10]
         [--triggers joint_state timer] [--watchdog-periods N]
DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST); ROS_DOMAIN_ID defaults to 42.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "42")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from mbpl_ros_interfaces import msg as interfaces  # noqa: E402
from mbpl_ros_interfaces.action import RunTrial  # noqa: E402

from mbpl_ros.experiment import load_experiment  # noqa: E402
from mbpl_ros.nodes import wire  # noqa: E402
from mbpl_ros.sim.arm import Arm  # noqa: E402
from mbpl_ros.robots import robot_spec  # noqa: E402

EXPERIMENT = PACKAGE / "config" / "reacher_2link.yaml"
PHYSICS_DT = 0.001  # divides the period of every rate benchmarked (1/1000 .. 1/100 s)
JITTER_TARGET_MS, LATENCY_TARGET_MS, TARGET_RATE_HZ = 1.0, 2.0, 500.0
START_TIMEOUT_S = 60.0
TRIGGERS = ("joint_state", "timer")


def write_configuration(directory: Path, rate_hz: float, seconds: float, trigger: str,
                        watchdog_periods: int) -> tuple[Path, object]:
    """Write an experiment (T, control period = the rate) and a parameter file for both nodes."""
    substeps = round(1.0 / (rate_hz * PHYSICS_DT))
    if abs(substeps * PHYSICS_DT * rate_hz - 1.0) > 1e-9:
        raise ValueError(f"rate {rate_hz} Hz: allowed rates divide 1/{PHYSICS_DT:g} Hz "
                         "(e.g. 100, 500, 1000)")
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    experiment.update(T=int(round(seconds * rate_hz)), physics_dt=PHYSICS_DT, substeps=substeps)
    experiment_path = directory / f"experiment_{rate_hz:g}hz.yaml"
    experiment_path.write_text(yaml.safe_dump(experiment))
    config = load_experiment(experiment_path)
    start = list(config.conditions[0].initial_positions)
    params = {
        "sim_robot": {"ros__parameters": {
            "robot": config.robot, "mode": "realtime", "control_rate_hz": float(rate_hz),
            "physics_dt": PHYSICS_DT, "initial_positions": [float(q) for q in start],
            "command_timeout_s": 0.5}},
        "lqr_controller": {"ros__parameters": {
            "experiment_config": str(experiment_path), "mode": "realtime",
            "realtime_trigger": trigger, "control_rate_hz": float(rate_hz),
            "reset_mode": "sim_service", "sim_node": "/sim_robot",
            "controller_wait_s": 30.0, "watchdog_periods": int(watchdog_periods)}},
    }
    params_path = directory / f"params_{rate_hz:g}hz_{trigger}.yaml"
    params_path.write_text(yaml.safe_dump(params))
    return params_path, config


def log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_node(module: str, params_path: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")
    command = [sys.executable, "-m", module, "--ros-args", "--params-file", str(params_path)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=PACKAGE)


def stop(process: subprocess.Popen) -> int:
    """SIGINT (a node's clean shutdown), then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


class Probe:
    """Records joint states and commands; sends the controller and the trial request."""

    def __init__(self, context: Context):
        self.node = rclpy.create_node("control_loop_probe", context=context)
        self.state_stamp_ns: list[int] = []
        self.state_arrival_ns: list[int] = []
        self.command_arrival_ns: list[int] = []
        self.records: list[wire.TrialRecord] = []
        node = self.node
        node.create_subscription(JointState, wire.JOINT_STATES_TOPIC, self._on_state, 1000)
        node.create_subscription(Float64MultiArray, wire.EFFORT_COMMANDS_TOPIC, self._on_command,
                                 1000)
        node.create_subscription(interfaces.TrialRecord, wire.TRIAL_RECORDS_TOPIC,
                                 self._on_record, wire.EVENTS_QOS)
        self.controllers = node.create_publisher(interfaces.LinearGaussianController,
                                                 wire.CONTROLLERS_TOPIC, wire.CONTROLLERS_QOS)
        self.trials = ActionClient(node, RunTrial, wire.RUN_TRIAL_ACTION)

    def _on_state(self, msg: JointState) -> None:
        self.state_arrival_ns.append(time.time_ns())
        self.state_stamp_ns.append(wire.nanoseconds_from_stamp(msg.header.stamp))

    def _on_command(self, msg: Float64MultiArray) -> None:
        self.command_arrival_ns.append(time.time_ns())

    def _on_record(self, msg: interfaces.TrialRecord) -> None:
        self.records.append(wire.decode_trial_record(msg))


def check_alone(probe: Probe) -> None:
    """Another process in this ROS_DOMAIN_ID would mix its states or commands into ours."""
    states = probe.node.get_publishers_info_by_topic("/" + wire.JOINT_STATES_TOPIC)
    commands = probe.node.get_publishers_info_by_topic("/" + wire.EFFORT_COMMANDS_TOPIC)
    if len(states) != 1 or len(commands) != 1:
        raise RuntimeError(
            f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} is shared: joint states from "
            f"{[i.node_name for i in states]}, commands from {[i.node_name for i in commands]}; "
            "choose another ROS_DOMAIN_ID")


def wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:g} s")
        time.sleep(0.02)


def run_rate(rate_hz: float, seconds: float, directory: Path, trigger: str,
             watchdog_periods: int) -> dict:
    params_path, config = write_configuration(directory, rate_hz, seconds, trigger,
                                              watchdog_periods)
    arm = Arm(robot_spec(config.robot), physics_dt=config.physics_dt, substeps=config.substeps)
    try:
        controller = config.initial_controllers(arm)[0]
    finally:
        arm.close()
    condition = config.conditions[0]
    request = wire.TrialRequest(
        trial_id=1, condition=0, iteration=0, index=0, controller_version=1, executor="controller",
        purpose="evaluation", initial_positions=np.array(condition.initial_positions, float),
        target=np.array(condition.target, float), noise=np.zeros((config.T, config.layout.dU)))

    context = Context()
    rclpy.init(context=context)
    processes = []
    executor = SingleThreadedExecutor(context=context)
    try:
        probe = Probe(context)
        executor.add_node(probe.node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        logs = [directory / f"sim_{rate_hz:g}_{trigger}.log",
                directory / f"lqr_{rate_hz:g}_{trigger}.log"]
        processes = [start_node("mbpl_ros.nodes.sim_robot", params_path, logs[0]),
                     start_node("mbpl_ros.nodes.lqr_controller", params_path, logs[1])]

        def ready():
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a node exited at start-up; its log ends:\n" + "\n".join(
                    log_tail(log) for p, log in zip(processes, logs)
                    if p.poll() is not None))
            return (probe.trials.server_is_ready()
                    and probe.controllers.get_subscription_count() > 0
                    and probe.node.count_publishers(wire.EFFORT_COMMANDS_TOPIC) > 0
                    and probe.node.count_subscribers(wire.EFFORT_COMMANDS_TOPIC) > 1
                    and len(probe.state_stamp_ns) > 0)

        wait(ready, START_TIMEOUT_S, "sim_robot and lqr_controller did not come up")
        check_alone(probe)
        probe.controllers.publish(wire.encode_controller(wire.ControllerMessage(0, 1, controller)))
        time.sleep(0.5)  # the controller (transient local) arrives before the request
        del probe.command_arrival_ns[:]
        probe.trials.send_goal_async(wire.encode_trial_request(request))
        wait(lambda: probe.records, seconds + 30.0, "no trial record arrived")
        record = probe.records[0]
        if record.status == wire.TrialStatus.OK:  # the end-of-trial fallback follows the record
            wait(lambda: len(probe.command_arrival_ns) > config.T, 5.0,
                 "the end-of-trial fallback did not arrive")
        check_alone(probe)
    finally:
        codes = [stop(p) for p in processes]
        executor.shutdown()
        rclpy.shutdown(context=context)
    load = os.getloadavg()[0]
    if record.status != wire.TrialStatus.OK:
        print(f"{rate_hz:g} Hz, {trigger}: trial status {record.status.name}; "
              "lqr_controller's log ends:\n" + log_tail(logs[1], 3), file=sys.stderr)
        return {"rate_hz": rate_hz, "trigger": trigger, "status": record.status.name, "load": load,
                "exit_codes": codes}
    return {**analyse(rate_hz, probe, record, codes), "trigger": trigger, "status": "OK",
            "load": load}


def analyse(rate_hz: float, probe: Probe, record: wire.TrialRecord, exit_codes: list) -> dict:
    period_ns = 1e9 / rate_hz
    stamps_used = (record.state_stamps[:, 0].astype(np.int64) * 1_000_000_000
                   + record.state_stamps[:, 1].astype(np.int64))  # (T,)
    T = stamps_used.shape[0]
    # After the request (reset by sim_service: no PD commands) come the trial's T commands, then
    # the fallback that ends every realtime trial.
    if len(probe.command_arrival_ns) != T + 1:
        raise RuntimeError(f"{rate_hz:g} Hz: {len(probe.command_arrival_ns)} commands arrived at "
                           f"the probe; expected the record's {T} and the end-of-trial fallback")
    arrivals = np.asarray(probe.command_arrival_ns[:T], dtype=np.int64)
    jitter_ms = np.abs(np.diff(arrivals) - period_ns) / 1e6
    latency_ms = (arrivals - stamps_used) / 1e6
    state_stamps = np.asarray(probe.state_stamp_ns, dtype=np.int64)
    during = (state_stamps >= stamps_used[0]) & (state_stamps <= stamps_used[-1])
    in_trial = state_stamps[during]
    state_arrivals = np.asarray(probe.state_arrival_ns, np.int64)[during]
    state_jitter_ms = np.abs(np.diff(state_arrivals) - period_ns) / 1e6
    # One hop: sim_robot -> a Python subscriber.
    state_transport_ms = (state_arrivals - in_trial) / 1e6
    nan = float("nan")
    return {
        "rate_hz": rate_hz, "commands": T,
        "jitter_p50_ms": np.percentile(jitter_ms, 50),
        "jitter_p99_ms": np.percentile(jitter_ms, 99),
        "jitter_max_ms": jitter_ms.max(),
        "latency_p50_ms": np.percentile(latency_ms, 50),
        "latency_p99_ms": np.percentile(latency_ms, 99),
        "stale": int(np.count_nonzero(np.diff(stamps_used) == 0)),
        "skipped": int(len(np.setdiff1d(in_trial, stamps_used))),
        "state_jitter_p99_ms": np.percentile(state_jitter_ms, 99) if len(state_jitter_ms) else nan,
        "state_hop_p50_ms": np.percentile(state_transport_ms, 50) if len(in_trial) else nan,
        "state_hop_p99_ms": np.percentile(state_transport_ms, 99) if len(in_trial) else nan,
        "exit_codes": exit_codes,
    }


CELL = 41  # width of one trigger's cell in the table


def cell(r: dict) -> str:
    """One trigger's figures: jitter p50/p99, latency p50/p99 (ms), stale/skipped, load."""
    if r["status"] != "OK":
        return f"{'trial ' + r['status']:>33} {r['load']:>5.1f}  "
    return (f"{r['jitter_p50_ms']:>6.3f} {r['jitter_p99_ms']:>6.3f} {r['latency_p50_ms']:>6.3f} "
            f"{r['latency_p99_ms']:>6.3f} {r['stale']:>3d}/{r['skipped']:<3d} {r['load']:>5.1f}  ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--triggers", nargs="+", choices=TRIGGERS, default=list(TRIGGERS),
                        help="lqr_controller realtime_trigger values to compare (default: both)")
    parser.add_argument("--watchdog-periods", type=int, default=50,
                        help="lqr_controller's watchdog_periods (default 50: the bench measures "
                             "timing on a shared machine; a robot uses a few)")
    args = parser.parse_args()
    print(f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) "
          "at the start")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mbpl_control_loop_") as tmp:
        for rate in args.rates:
            for trigger in args.triggers:
                results[rate, trigger] = run_rate(rate, args.seconds, Path(tmp), trigger,
                                                  args.watchdog_periods)
    print(f"lqr_controller realtime_trigger side by side, {args.seconds:g} s trials; per trigger: "
          "period jitter p50 p99, state→command latency p50 p99 (ms), stale/skipped states, "
          "1-min load average")
    print(f"{'':>8} " + "".join(f"{trigger:<{CELL}}" for trigger in args.triggers))
    header = (f"{'jit50':>6} {'jit99':>6} {'lat50':>6} {'lat99':>6} {'st/skip':>7} "
              f"{'load':>5}  ")
    print(f"{'rate Hz':>8} " + header * len(args.triggers))
    for rate in args.rates:
        print(f"{rate:>8g} " + "".join(cell(results[rate, trigger]) for trigger in args.triggers))
    for trigger in args.triggers:
        r = results.get((TARGET_RATE_HZ, trigger))
        if r is None:
            continue
        if r["status"] != "OK":
            print(f"{TARGET_RATE_HZ:g} Hz, {trigger}: trial {r['status']}: targets MISSED")
            continue
        ok_jitter = r["jitter_p99_ms"] < JITTER_TARGET_MS
        ok_latency = r["latency_p99_ms"] < LATENCY_TARGET_MS
        print(f"{TARGET_RATE_HZ:g} Hz, {trigger}: p99 jitter {r['jitter_p99_ms']:.3f} ms "
              f"{'<' if ok_jitter else '>='} {JITTER_TARGET_MS:g} ms "
              f"({'met' if ok_jitter else 'MISSED'}), "
              f"p99 latency {r['latency_p99_ms']:.3f} ms {'<' if ok_latency else '>='} "
              f"{LATENCY_TARGET_MS:g} ms ({'met' if ok_latency else 'MISSED'}); "
              f"max jitter {r['jitter_max_ms']:.2f} ms, "
              f"sim_robot's state jitter p99 {r['state_jitter_p99_ms']:.3f} ms; one hop (state "
              f"stamp → its arrival at this probe) p50 {r['state_hop_p50_ms']:.3f}, "
              f"p99 {r['state_hop_p99_ms']:.3f} ms")
    rows = list(results.values())
    unclean = [(r["rate_hz"], r["trigger"], r["exit_codes"]) for r in rows if any(r["exit_codes"])]
    if unclean:
        print(f"nodes exited uncleanly: {unclean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
