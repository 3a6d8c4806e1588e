"""
The parameter table of every node, read from the nodes themselves.

The nodes declare their parameters from the tables of nodes.parameters. Each node of
graph.nodes(with_sim=True) is constructed (not spun) with the parameters of a
ros__parameters file, and its declared parameters are listed with their descriptors, so
the README's table cannot drift from the code: `mbpl params-reference` prints it and a
test compares.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from mbpl_ros.nodes import graph

# Declared by rclpy itself for every node.
_RCLPY_PARAMETERS = {"use_sim_time", "start_type_description_service"}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def parameter_reference(params_file: str | Path) -> str:
    """
    Return the Markdown parameter table of every node under `params_file`.

    One row per (node, parameter): its value under `params_file`, its description and its
    constraints. The nodes are built in a temporary directory, so nothing (such as
    gps_trainer's relative output_dir) is created where the command runs.
    """
    import rclpy
    from rclpy.context import Context

    rows = ["| node | parameter | value | meaning | allowed | runtime |",
            "| --- | --- | --- | --- | --- | --- |"]
    parameters = {spec.name: graph.parameter_overrides(params_file, spec.name)
                  for spec in graph.nodes(with_sim=True)}
    for values in parameters.values():   # found from here as the nodes would find it
        experiment = values.get("experiment_config")
        if isinstance(experiment, str) and experiment and Path(experiment).is_file():
            values["experiment_config"] = str(Path(experiment).resolve())
    context = Context()
    rclpy.init(context=context, args=[])
    try:
        with tempfile.TemporaryDirectory(prefix="mbpl_params_reference_") as scratch, \
                _working_directory(scratch):
            for spec in graph.nodes(with_sim=True):
                rows += _rows(context, spec, parameters[spec.name])
    finally:
        rclpy.try_shutdown(context=context)
    return "\n".join(rows)


@contextlib.contextmanager
def _working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _rows(context, spec: graph.NodeSpec, parameters: dict) -> list:
    """Return the table rows of one node, built with `parameters`."""
    rows = []
    node = graph.load_node_class(spec)(context=context,
                                       parameter_overrides=graph.as_rclpy_parameters(parameters))
    try:
        names = sorted(set(node._parameters) - _RCLPY_PARAMETERS)
        for name, descriptor in zip(names, node.describe_parameters(names)):
            value = node.get_parameter(name).value
            if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
                value = list(value)
            rows.append(f"| `{spec.name}` | `{name}` | `{_cell(repr(value))}` | "
                        f"{_cell(descriptor.description)} | "
                        f"{_cell(descriptor.additional_constraints)} | "
                        f"{'no' if descriptor.read_only else 'yes'} |")
    finally:
        node.destroy_node()
    return rows
