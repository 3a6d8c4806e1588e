"""The parameter table of every node, read from the nodes themselves.

Each node of graph.nodes(with_sim=True) is constructed (not spun) with the parameters of a
ros__parameters file, and its declared parameters are listed with their descriptors, so
the README's table cannot drift from the code: `mbpl params-reference` prints it and a
test compares.
"""
from __future__ import annotations

from pathlib import Path

from mbpl_ros.nodes import graph

# Declared by rclpy itself for every node.
_RCLPY_PARAMETERS = {"use_sim_time", "start_type_description_service"}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def parameter_reference(params_file: str | Path) -> str:
    """Markdown: one row per (node, parameter), its value under `params_file`, its description
    and its constraints."""
    import rclpy
    from rclpy.context import Context

    rows = ["| node | parameter | value | meaning | allowed |", "| --- | --- | --- | --- | --- |"]
    context = Context()
    rclpy.init(context=context, args=[])
    try:
        for spec in graph.nodes(with_sim=True):
            node = graph.load_node_class(spec)(context=context, parameter_overrides=graph.as_rclpy_parameters(
                graph.parameter_overrides(params_file, spec.name)))
            try:
                names = sorted(set(node._parameters) - _RCLPY_PARAMETERS)
                for name, descriptor in zip(names, node.describe_parameters(names)):
                    value = node.get_parameter(name).value
                    value = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
                    rows.append(f"| `{spec.name}` | `{name}` | `{_cell(repr(value))}` | "
                                f"{_cell(descriptor.description)} | {_cell(descriptor.additional_constraints)} |")
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    return "\n".join(rows)
