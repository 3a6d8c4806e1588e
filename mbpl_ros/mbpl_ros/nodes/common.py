"""
What the learning-loop nodes share: validated parameters, the experiment file, start-up.

Every node reads the same experiment YAML as `mbpl train` (parameter `experiment_config`),
so the ROS graph and the offline trainer run the same algorithm with the same settings;
ROS-only settings (rates, timeouts, modes) are ordinary parameters, declared from each
node's table in nodes.parameters (description, type, range, read-only) and checked there.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from mbpl_ros.config import ConfigError
from mbpl_ros.experiment import ExperimentConfig, load_experiment
from mbpl_ros.nodes.parameters import EXPERIMENT_CONFIG, NodeParameterError, Parameter

PACKAGE = "mbpl_ros"


#: The descriptor type of each type of nodes.parameters.
_DESCRIPTOR_TYPES = {"bool": ParameterType.PARAMETER_BOOL,
                     "integer": ParameterType.PARAMETER_INTEGER,
                     "double": ParameterType.PARAMETER_DOUBLE,
                     "string": ParameterType.PARAMETER_STRING,
                     "string_array": ParameterType.PARAMETER_STRING_ARRAY,
                     "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY}


def descriptor_of(parameter: Parameter, detail: Optional[str] = None) -> ParameterDescriptor:
    """Return the ROS descriptor of a table entry: doc, type, range, read-only."""
    allowed = parameter.allowed + (f"; {detail}" if detail else "")
    descriptor = ParameterDescriptor(description=parameter.doc, additional_constraints=allowed,
                                     read_only=not parameter.runtime,
                                     type=_DESCRIPTOR_TYPES[parameter.type])
    if parameter.low is not None:
        if parameter.type == "integer":
            low = int(parameter.low) + (1 if parameter.low_open else 0)
            descriptor.integer_range = [IntegerRange(from_value=low,
                                                     to_value=int(parameter.high), step=1)]
        else:  # rclpy's ranges are closed: an open end is the next double
            low = float(parameter.low)
            low = math.nextafter(low, math.inf) if parameter.low_open else low
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=low, to_value=float(parameter.high), step=0.0)]
    return descriptor


def declare(node: Node, table: Dict[str, Parameter], name: str, default: Any = None,
            detail: Optional[str] = None) -> Any:
    """
    Declare the parameter `name` of `table` (nodes.parameters) and return its value.

    `default` replaces the table's (for one that comes from the experiment or the robot;
    the table's doc says from what); `detail` is added to what the descriptor says is
    allowed (e.g. the URDF's limits). A value rclpy or the table's check refuses raises
    NodeParameterError naming the parameter and what is allowed.
    """
    parameter = table[name]
    default = parameter.default if default is None else default
    if default is None:
        raise TypeError(f"parameter {name!r} has no default in its table: the node must give one")
    if parameter.type == "double" and isinstance(default, int):
        default = float(default)
    descriptor = descriptor_of(parameter, detail)
    try:
        value = node.declare_parameter(name, default, descriptor).value
    except (InvalidParameterValueException, InvalidParameterTypeException) as error:
        raise NodeParameterError(f"parameter '{name}' is invalid ({error}); allowed: "
                                 f"{descriptor.additional_constraints}") from None
    return parameter.check(value)


#: Declared by rclpy itself for every node.
RCLPY_PARAMETERS = ("use_sim_time", "start_type_description_service")


def check_known_parameters(node: Node) -> None:
    """
    Raise NodeParameterError for each parameter given to `node` that it has not declared.

    NodeParameterError naming each parameter given to `node` (params file, -p, or
    parameter_overrides) that it has not declared, with the closest declared name. rclpy
    ignores such a parameter silently, so a misspelt safety setting (`effort_limit`) would
    not be in force. Call it once every parameter is declared, before anything starts.
    """
    declared = sorted(node._parameters)
    unknown = sorted(set(node._parameter_overrides) - set(declared))
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        named.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    own = [name for name in declared if name not in RCLPY_PARAMETERS]
    plural = "s" if len(unknown) > 1 else ""
    raise NodeParameterError(f"unknown parameter{plural} {', '.join(named)} given to "
                             f"{node.get_fully_qualified_name()}; allowed: its parameters {own}")


# ---------------------------------------------------------------- the experiment file
def _share_directory() -> Optional[Path]:
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError):  # not installed; no AMENT_PREFIX_PATH
        return None


def experiment_candidates(value: str) -> List[Path]:
    """
    Return where the experiment file `value` may be.

    Where `value` may be, in order: as given (absolute, or relative to the current
    directory), then in the installed share/mbpl_ros/config (and share/mbpl_ros), then in
    this source tree's config/ (so an uninstalled checkout works the same).
    """
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return [path]
    candidates = [Path.cwd() / path]
    share = _share_directory()
    source = Path(__file__).resolve().parents[2]
    for root in ([share] if share is not None else []) + [source]:
        candidates += [root / "config" / path, root / path]
    unique = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def resolve_experiment_path(value: str) -> Path:
    """Return the experiment file the `experiment_config` parameter names."""
    if not value:
        raise NodeParameterError("parameter 'experiment_config' is empty; allowed: the path of an "
                                 "experiment "
                                 "YAML (as for `mbpl train --config`), e.g. reacher_2link.yaml")
    candidates = experiment_candidates(value)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise NodeParameterError(f"parameter 'experiment_config' is {value!r}, which is not a file; "
                             "tried "
                             + ", ".join(str(c) for c in candidates)
                             + "; allowed: an absolute path, or one relative to the current "
                               "directory "
                               "or to share/mbpl_ros/config")


def declare_experiment(node: Node) -> tuple[ExperimentConfig, Path]:
    """Declare `experiment_config`, load the experiment (errors name the file and key)."""
    value = declare(node, {"experiment_config": EXPERIMENT_CONFIG}, "experiment_config")
    path = resolve_experiment_path(value)
    try:
        config = load_experiment(path)
    except (ConfigError, ValueError, OSError) as error:
        raise NodeParameterError(f"parameter 'experiment_config' = {str(path)!r} cannot be "
                                 f"loaded: {error}") from None
    if config.dynamics.description_prior.enabled:
        # Refused rather than ignored: the node graph's fits would silently differ from the
        # experiment's.
        raise NodeParameterError(
            f"parameter 'experiment_config' = {str(path)!r}: dynamics.description_prior is "
            "enabled, which only `mbpl train` supports so far; allowed on the node graph: "
            "dynamics.description_prior.enabled false")
    return config, path


# ---------------------------------------------------------------- entry points
def run_node(factory: Callable[[], Node], name: str, args=None,
             until: Optional[Callable[[Node], bool]] = None) -> int:
    """
    Run a node as a console entry point.

    Console entry point body: init, build the node, spin (until `until(node)` when given,
    e.g. the trainer finishing), destroy, shut down. A bad parameter -> exit code 1.

    SIGINT/SIGTERM stop the spin while the context is still valid (rclpy's own handlers
    would shut it down first), so destroy_node can still publish, e.g. lqr_controller's
    fallback command.
    """
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from mbpl_ros.interrupt import interruptible

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = factory()
    except (NodeParameterError, ConfigError) as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 1
    code = 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        with interruptible():
            # A bounded wait, so that a signal is seen within 0.1 s however quiet the graph.
            while rclpy.ok() and not (until is not None and until(node)):
                executor.spin_once(timeout_sec=0.1)
        if until is not None:
            code = int(getattr(node, "exit_code", 0))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


__all__ = ["NodeParameterError", "check_known_parameters", "declare", "declare_experiment",
           "descriptor_of",
           "resolve_experiment_path",
           "experiment_candidates", "run_node", "ParameterType"]
