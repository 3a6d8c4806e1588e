"""
The node set of mbpl_ros, described once.

The launch files (launch/*.launch.py) and the in-process runner (mbpl_ros.sim_runner,
`mbpl sim`) both start the nodes listed here, with parameters read from one
ros__parameters YAML file, so the two ways of running the graph cannot drift apart.

This module imports no node module and no ROS package at import time: launch files
import it, and must stay light. `load_node_class` imports a node's module on demand.

Parameter files use the ROS 2 format::

    /**:                      # every node
      ros__parameters:
        experiment_config: reacher_2link.yaml
    lqr_controller:           # one node (also "/lqr_controller" or nested namespaces)
      ros__parameters:
        control_rate_hz: 20.0
        limits: {effort: [1.0, 0.5]}   # nested mappings become "limits.effort"

`parameter_overrides(path, "lqr_controller")` merges the sections that apply to that
node the way rcl does: wildcard sections first, in file order, then the node's own
sections, each parameter (by its flattened dotted name) overriding the earlier value.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from mbpl_ros.config import read_yaml

PACKAGE = "mbpl_ros"
PARAMETERS_KEY = "ros__parameters"


@dataclass(frozen=True)
class NodeSpec:
    """
    One node of the graph.

    name: default node name (also the section of the parameter file).
    executable: its console script, as `ros2 run mbpl_ros <executable>` and launch_ros's
        Node(package="mbpl_ros", executable=...) find it.
    node_class: "module:Class" of the rclpy Node subclass, for in-process runs.
    """

    name: str
    executable: str
    node_class: str

    @property
    def module(self) -> str:
        return self.node_class.split(":", 1)[0]


SIM_NODES: Tuple[NodeSpec, ...] = (
    NodeSpec("sim_robot", "sim_robot", "mbpl_ros.nodes.sim_robot:SimRobotNode"),
)

LEARNING_NODES: Tuple[NodeSpec, ...] = (
    NodeSpec("sample_collector", "sample_collector",
             "mbpl_ros.nodes.sample_collector:SampleCollectorNode"),
    NodeSpec("dynamics_fitter", "dynamics_fitter",
             "mbpl_ros.nodes.dynamics_fitter:DynamicsFitterNode"),
    NodeSpec("lqr_controller", "lqr_controller",
             "mbpl_ros.nodes.lqr_controller:LqrControllerNode"),
    NodeSpec("gps_trainer", "gps_trainer", "mbpl_ros.nodes.gps_trainer:GpsTrainerNode"),
)

#: With several robots (gps_trainer's `robots`): the nodes each robot runs in its own
#: namespace (with sim_robot in simulation), and the ones the trainer runs once, beside it
#: (one dynamics_fitter: a condition's batch is spread over the robots, and the fit must see
#: all of it).
ROBOT_NODES: Tuple[str, ...] = ("sample_collector", "lqr_controller")
TRAINER_NODES: Tuple[str, ...] = ("dynamics_fitter", "gps_trainer")


def robot_namespaces(count: int) -> List[str]:
    """Return the default namespaces of `count` robots: robot_0, robot_1, ..."""
    return [f"robot_{k}" for k in range(count)]


# Topics the learning nodes use by these (relative) names; a launch file remaps them to a
# robot's controllers. Kept equal to mbpl_ros.nodes.wire's constants by test_graph.py
# (wire imports the message packages, which this module must not).
JOINT_STATES_TOPIC = "joint_states"
EFFORT_COMMANDS_TOPIC = "effort_controller/commands"


def nodes(with_sim: bool) -> List[NodeSpec]:
    """Return the nodes to start: the learning nodes, preceded by the simulator if `with_sim`."""
    return list(SIM_NODES if with_sim else ()) + list(LEARNING_NODES)


def node_spec(name: str) -> NodeSpec:
    """Return the NodeSpec called `name`; ValueError listing the known names otherwise."""
    for spec in SIM_NODES + LEARNING_NODES:
        if spec.name == name:
            return spec
    known = [spec.name for spec in SIM_NODES + LEARNING_NODES]
    raise ValueError(f"unknown node {name!r}; known nodes: {known}")


def load_node_class(spec: NodeSpec) -> type:
    """Import and return the Node subclass named by `spec.node_class`."""
    module_name, _, class_name = spec.node_class.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"{module_name} has no class {class_name!r} "
                          f"(NodeSpec {spec.name!r})") from None


# ---------------------------------------------------------------- parameter files
ParameterValue = Union[bool, int, float, str, List[bool], List[int], List[float], List[str]]


def read_parameter_file(
        params_file: Union[str, Path]) -> List[Tuple[str, Dict[str, ParameterValue]]]:
    """
    Read every section of a ros__parameters YAML file, in file order.

    Returns [(node name pattern, {dotted parameter name: value})], the pattern fully
    qualified ("/sim_robot", "/ns/sim_robot", "/**"). Nested namespace mappings
    (`ns: {node: {ros__parameters: ...}}`) are joined into the pattern.
    Raises ValueError naming the file and the offending key on malformed content.
    """
    path = Path(params_file)
    document = read_yaml(path, "parameter file")
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must map node names to {{{PARAMETERS_KEY}: ...}}, "
                         f"got a {type(document).__name__}")
    sections: List[Tuple[str, Dict[str, ParameterValue]]] = []
    _collect_sections(path, document, "", sections)
    return sections


def _collect_sections(path: Path, mapping: dict, prefix: str, out: list) -> None:
    for key, value in mapping.items():
        name = f"{prefix}/{str(key).strip('/')}"
        if not isinstance(value, dict):
            raise ValueError(f"{path}: {name!r} must hold a mapping with {PARAMETERS_KEY!r} "
                             f"(or nested namespaces), got {value!r}")
        if PARAMETERS_KEY in value:
            extra = sorted(set(value) - {PARAMETERS_KEY})
            if extra:
                raise ValueError(f"{path}: {name!r} has keys {extra} beside {PARAMETERS_KEY!r}; "
                                 f"only {PARAMETERS_KEY!r} is allowed there")
            parameters = value[PARAMETERS_KEY] or {}
            if not isinstance(parameters, dict):
                raise ValueError(f"{path}: {name}.{PARAMETERS_KEY} must be a mapping, "
                                 f"got {parameters!r}")
            out.append((name, flatten_parameters(parameters, where=f"{path}: {name}")))
        else:
            _collect_sections(path, value, name, out)


def flatten_parameters(parameters: dict, where: str = "parameters") -> Dict[str, ParameterValue]:
    """
    Nested mappings to dotted parameter names: {"a": {"b": 1}} -> {"a.b": 1}.

    Values must be what a ROS parameter can hold: bool, int, float, str, or a list of
    one of those types (ints and floats not mixed, as rcl requires). ValueError otherwise.
    """
    flat: Dict[str, ParameterValue] = {}

    def visit(mapping: dict, prefix: str) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                visit(value, name + ".")
            else:
                flat[name] = _checked_value(value, f"{where}: parameter {name!r}")

    visit(parameters, "")
    return flat


_SCALAR_TYPES = (bool, int, float, str)


def _checked_value(value: Any, what: str) -> ParameterValue:
    if isinstance(value, _SCALAR_TYPES):
        return value
    if isinstance(value, (list, tuple)):
        kinds = {type(item) for item in value}
        if not kinds <= set(_SCALAR_TYPES) or len(kinds) > 1:
            raise ValueError(f"{what} is {value!r}; allowed: a list of items of one type "
                             f"(bool, int, float or str)")
        return list(value)
    raise ValueError(f"{what} is {value!r}; allowed: bool, int, float, str "
                     "or a list of one of them")


def _pattern_regex(pattern: str) -> "re.Pattern[str]":
    """Rcl's node-name wildcards: "*" one token, "**" any number of tokens."""
    tokens = pattern.strip("/").split("/")
    parts = []
    for token in tokens:
        if token == "**":
            parts.append(r"(?:/[^/]+)*")
        else:
            parts.append("/" + re.escape(token).replace(r"\*", "[^/]*"))
    return re.compile("".join(parts) + r"\Z")


def _fully_qualified(node_name: str, namespace: str) -> str:
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{namespace}/{node_name.strip('/')}"


def parameter_overrides(params_file: Union[str, Path], node_name: str,
                        namespace: str = "/") -> Dict[str, ParameterValue]:
    """
    Return the parameters a node called `node_name` in `namespace` gets from `params_file`.

    Sections whose name has a wildcard ("/**", "/*/x") and matches apply first, in file
    order; then the node's own sections ("x" or "/x"), so a node's value beats a shared one.
    Nested mappings are flattened to dotted names. Returns {parameter name: value},
    ready for rclpy's Node(parameter_overrides=[Parameter(name, value=value), ...]).
    """
    target = _fully_qualified(node_name, namespace)
    wildcard, exact = [], []
    for pattern, parameters in read_parameter_file(params_file):
        if "*" in pattern:
            if _pattern_regex(pattern).match(target):
                wildcard.append(parameters)
        elif pattern == target:
            exact.append(parameters)
    merged: Dict[str, ParameterValue] = {}
    for parameters in wildcard + exact:
        merged.update(parameters)
    return merged


def as_rclpy_parameters(overrides: Dict[str, ParameterValue]) -> list:
    """[rclpy.parameter.Parameter] for Node(parameter_overrides=...); imports rclpy lazily."""
    from rclpy.parameter import Parameter

    return [Parameter(name, value=value) for name, value in overrides.items()]
