"""mbpl_ros.nodes.graph: the one node set of the launch files and the in-process runner."""
import ast
import importlib
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mbpl_ros.nodes import graph

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = {"sim_gps.launch.py": True, "robot_gps.launch.py": False}  # file -> with_sim


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(text))
    return path


PARAMS = """\
    /**:
      ros__parameters:
        experiment_config: shared.yaml
        rate_hz: 20.0
        limits: {effort: [1.0, 2.0], velocity: 3.0}
    lqr_controller:
      ros__parameters:
        rate_hz: 100.0
        limits: {effort: [0.5, 0.5]}
        joints: [shoulder, elbow]
    /sample_collector:
      ros__parameters:
        horizon: 50
    other:
      ros__parameters:
        rate_hz: 1.0
    """


# ---------------------------------------------------------------- parameter files
def test_node_section_overrides_wildcard_parameter_by_parameter(tmp_path):
    params = graph.parameter_overrides(write(tmp_path, PARAMS), "lqr_controller")
    assert params == {
        "experiment_config": "shared.yaml",   # only in /**
        "rate_hz": 100.0,                     # node beats /**
        "limits.effort": [0.5, 0.5],          # node beats /** for this nested name ...
        "limits.velocity": 3.0,               # ... but keeps /**'s sibling (merged per name)
        "joints": ["shoulder", "elbow"],
    }


def test_leading_slash_and_unlisted_nodes(tmp_path):
    path = write(tmp_path, PARAMS)
    assert graph.parameter_overrides(path, "sample_collector")["horizon"] == 50
    assert graph.parameter_overrides(path, "gps_trainer") == {
        "experiment_config": "shared.yaml", "rate_hz": 20.0,
        "limits.effort": [1.0, 2.0], "limits.velocity": 3.0}


def test_wildcard_applies_first_even_when_written_last(tmp_path):
    path = write(tmp_path, """\
        sim_robot: {ros__parameters: {mode: lockstep}}
        /**: {ros__parameters: {mode: realtime, gui: false}}
        """)
    assert graph.parameter_overrides(path, "sim_robot") == {"mode": "lockstep", "gui": False}


def test_namespaces_nested_sections_and_partial_wildcards(tmp_path):
    path = write(tmp_path, """\
        arm1:
          lqr_controller: {ros__parameters: {a: 1}}
        /*/lqr_controller: {ros__parameters: {b: 2}}
        /**/lqr_controller: {ros__parameters: {c: 3}}
        lqr_controller: {ros__parameters: {d: 4}}
        """)
    assert graph.parameter_overrides(path, "lqr_controller", namespace="/arm1") == {"a": 1, "b": 2, "c": 3}
    assert graph.parameter_overrides(path, "lqr_controller") == {"c": 3, "d": 4}


def test_flatten_parameters_joins_nested_names_with_dots():
    assert graph.flatten_parameters({"a": {"b": {"c": 1}, "d": [1.0, 2.0]}, "e": "x"}) == {
        "a.b.c": 1, "a.d": [1.0, 2.0], "e": "x"}


@pytest.mark.parametrize("text, message", [
    ("lqr_controller: {ros__parameters: {gains: [1, 2.5]}}", "'gains'"),
    ("lqr_controller: {ros__parameters: {gains: null}}", "'gains'"),
    ("lqr_controller: {ros__parameters: {gains: [[1]]}}", "'gains'"),
    ("lqr_controller: {rate_hz: 1.0}", "'/lqr_controller/rate_hz'"),
    ("lqr_controller: {ros__parameters: {a: 1}, other: 2}", "beside"),
    ("[1, 2]", "must map node names"),
    ("a: [", "not valid YAML"),
])
def test_malformed_files_are_rejected_naming_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        graph.parameter_overrides(write(tmp_path, text), "lqr_controller")


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such parameter file"):
        graph.parameter_overrides(tmp_path / "absent.yaml", "sim_robot")


NODE_BUILTINS = {"use_sim_time", "start_type_description_service"}  # every rclpy Node declares them


@pytest.mark.ros
def test_overrides_equal_what_rcl_gives_a_node_from_the_same_file(tmp_path):
    """Independent reference: rcl's own YAML parser, through --params-file."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node

    path = write(tmp_path, PARAMS)
    context = Context()
    rclpy.init(args=["--ros-args", "--params-file", str(path)], context=context)
    try:
        for name in ("lqr_controller", "sample_collector", "gps_trainer"):
            node = Node(name, context=context, automatically_declare_parameters_from_overrides=True)
            try:
                names = [n for n in node.list_parameters([], 0).names if n not in NODE_BUILTINS]
                from_rcl = {p.name: p.value for p in node.get_parameters(names)}
            finally:
                node.destroy_node()
            ours = graph.parameter_overrides(path, name)
            assert {k: list(v) if not isinstance(v, (bool, int, float, str)) else v
                    for k, v in from_rcl.items()} == ours, name
            assert [p.name for p in graph.as_rclpy_parameters(ours)] == list(ours)
    finally:
        rclpy.shutdown(context=context)


# ---------------------------------------------------------------- the node set
def test_node_set():
    assert [s.name for s in graph.nodes(with_sim=True)] == [
        "sim_robot", "sample_collector", "dynamics_fitter", "lqr_controller", "gps_trainer"]
    assert graph.nodes(with_sim=False) == list(graph.LEARNING_NODES)
    assert graph.node_spec("lqr_controller").executable == "lqr_controller"
    with pytest.raises(ValueError, match="known nodes"):
        graph.node_spec("nope")


def test_topic_names_equal_the_wire_module():
    from mbpl_ros.nodes import wire

    assert graph.JOINT_STATES_TOPIC == wire.JOINT_STATES_TOPIC
    assert graph.EFFORT_COMMANDS_TOPIC == wire.EFFORT_COMMANDS_TOPIC


def test_importing_graph_imports_no_node_and_no_ros_module():
    code = ("import sys, mbpl_ros.nodes.graph\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
            "('rclpy', 'launch', 'launch_ros', 'std_msgs', 'sensor_msgs', 'torch', 'pybullet')"
            " or (n.startswith('mbpl_ros.nodes.') and n != 'mbpl_ros.nodes.graph'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def console_scripts() -> dict:
    """name -> "module:function", read from setup.py's entry_points without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "setup":
            (entry_points,) = [k.value for k in call.keywords if k.arg == "entry_points"]
            scripts = ast.literal_eval(entry_points)["console_scripts"]
            return {n.strip(): t.strip() for n, t in (s.split("=", 1) for s in scripts)}
    raise AssertionError("no setup(...) call in setup.py")


def module_present(spec: graph.NodeSpec) -> bool:
    return importlib.util.find_spec(spec.module) is not None


ALL_SPECS = graph.nodes(with_sim=True)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=[s.name for s in ALL_SPECS])
def test_executable_is_the_console_script_of_the_node_module(spec):
    scripts = console_scripts()
    if spec.executable not in scripts and not module_present(spec):
        pytest.skip(f"{spec.module} does not exist yet (nor console script {spec.executable!r})")
    assert spec.executable in scripts, f"setup.py has no console script {spec.executable!r}"
    assert scripts[spec.executable] == f"{spec.module}:main"


@pytest.mark.parametrize("spec", ALL_SPECS, ids=[s.name for s in ALL_SPECS])
def test_node_class_is_an_rclpy_node(spec):
    if not module_present(spec):
        pytest.skip(f"{spec.module} does not exist yet")
    from rclpy.node import Node

    node_class = graph.load_node_class(spec)
    assert issubclass(node_class, Node)
    assert callable(importlib.import_module(spec.module).main)


# ---------------------------------------------------------------- launch files agree
@pytest.mark.parametrize("file_name, with_sim", LAUNCH_FILES.items())
def test_launch_file_takes_its_node_set_from_graph(file_name, with_sim):
    """Static check (no launch needed): the nodes come from graph.nodes(with_sim=...), and
    no mbpl_ros executable is named by hand."""
    tree = ast.parse((ROOT / "launch" / file_name).read_text())
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)]
    node_set_calls = [c for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "nodes"
                      and getattr(c.func.value, "id", None) == "graph"]
    assert len(node_set_calls) == 1
    (keyword,) = node_set_calls[0].keywords
    assert (keyword.arg, ast.literal_eval(keyword.value)) == ("with_sim", with_sim)
    named = {ast.literal_eval(k.value) for c in calls for k in c.keywords
             if k.arg == "executable" and isinstance(k.value, ast.Constant)}
    assert not named & {s.executable for s in ALL_SPECS}


@pytest.mark.parametrize("file_name, with_sim", LAUNCH_FILES.items())
def test_launch_description_starts_exactly_graphs_nodes(file_name, with_sim):
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI: run with the "
                                             "overlay, see CONTRIBUTING.md")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node

    description = get_launch_description_from_python_launch_file(str(ROOT / "launch" / file_name))
    # The nodes as `ros2 launch` with default arguments makes them: the arguments set their
    # defaults, then an OpaqueFunction (the robot count decides the node set) returns the nodes.
    context, entities = LaunchContext(), []
    for entity in description.entities:
        if isinstance(entity, (DeclareLaunchArgument, OpaqueFunction)):
            if entity.condition is None or entity.condition.evaluate(context):
                entities += entity.execute(context) or []
        else:
            entities.append(entity)
    started = [(e.node_package, e.node_executable) for e in entities if isinstance(e, Node)]
    assert started == [(graph.PACKAGE, s.executable) for s in graph.nodes(with_sim=with_sim)]
