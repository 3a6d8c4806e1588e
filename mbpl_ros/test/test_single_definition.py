"""Each experiment key and each node parameter is defined in exactly one place."""
import ast
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from mbpl_ros.config import ConfigError, describe, from_dict
from mbpl_ros.core.costs import CostSpec
from mbpl_ros.core.dynamics import DynamicsSettings
from mbpl_ros.core.lqr_flm import LqrFlmSettings
from mbpl_ros.core.policy.settings import MdgpsSettings, PolicyPriorSettings, PolicySettings
from mbpl_ros.core.traj_opt import KlStepSettings
from mbpl_ros.experiment import ExperimentConfig, PolicyConfig, load_experiment
from mbpl_ros.nodes.parameters import NODE_PARAMETERS, NodeParameterError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"
NODES = PACKAGE / "nodes"


def settings_classes(cls, seen=None):
    """`cls` and every settings dataclass reachable from its fields."""
    seen = [] if seen is None else seen
    if cls in seen:
        return seen
    seen.append(cls)
    for kind in typing.get_type_hints(cls).values():
        for candidate in (kind, *typing.get_args(kind)):
            if dataclasses.is_dataclass(candidate):
                settings_classes(candidate, seen)
    return seen


# ---------------------------------------------------------------- experiment keys
def test_experiment_sections_are_the_core_settings_classes():
    hints = typing.get_type_hints(ExperimentConfig)
    assert hints["dynamics"] is DynamicsSettings
    assert hints["trajectory_optimization"] is KlStepSettings
    assert hints["cost"] is CostSpec
    assert issubclass(hints["policy"], PolicySettings)
    assert typing.get_type_hints(PolicyConfig)["prior"] is PolicyPriorSettings
    lqr = typing.get_type_hints(LqrFlmSettings)
    assert (lqr["dynamics"], lqr["trajectory_optimization"]) == (DynamicsSettings, KlStepSettings)


def test_every_experiment_key_is_documented_once():
    keys = [row[0] for row in describe(ExperimentConfig)]
    assert len(keys) == len(set(keys))
    for cls in settings_classes(ExperimentConfig):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("doc"), f"{cls.__name__}.{field.name} has no doc"


def test_policy_keys_taken_from_the_core_keep_its_limits():
    """Check PolicyConfig: it redefines only what the experiment means differently."""
    own = {f.name: f for f in dataclasses.fields(PolicySettings)}
    mdgps = {f.name: f for f in dataclasses.fields(MdgpsSettings)}
    for field in dataclasses.fields(PolicyConfig):
        original = own.get(field.name) or mdgps.get(field.name)
        if original is None:
            continue
        limits = {k: v for k, v in field.metadata.items() if k != "doc"}
        assert limits == {k: v for k, v in original.metadata.items() if k != "doc"}, field.name


def test_every_policy_setting_reaches_the_core_from_the_experiment_file():
    """The options once unreachable (used only by tests) are experiment keys now."""
    data = load_experiment(ROOT / "config" / "reacher_2link.yaml")
    data = dataclasses.asdict(data)
    changed = {"validation_fraction": 0.25, "validation_interval": 7, "patience": 2,
               "entropy_regularization": 0.5, "refit_normalization": True,
               "loss_includes_log_det": True, "min_state_std": 0.01, "covariance": "diagonal"}
    data["policy"].update(changed)
    data["conditions"] = [{"initial_positions": c["initial_positions"], "target": c["target"]}
                          for c in data["conditions"]]
    config = from_dict(ExperimentConfig, data)
    settings = config.mdgps_settings()
    for name, value in changed.items():
        owner = settings if name == "covariance" else settings.policy
        assert getattr(owner, name) == value, name


def test_one_validation_names_the_key_in_the_file_and_in_the_core():
    with pytest.raises(ConfigError, match=r"policy\.patience: must be >= 1, got 0"):
        from_dict(PolicyConfig, {"patience": 0}, "policy")
    with pytest.raises(ValueError, match=r"PolicySettings\.patience must be >= 1, got 0"):
        PolicySettings(patience=0)


def _literal_ranges(path: Path):
    """(line, text) of numeric limit keywords (gt=, ge=, lt=, le=, low=, high=) in a file."""
    pattern = re.compile(r"\b(gt|ge|lt|le|low|high)=\s*-?[0-9]")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.search(line):
            yield number, line.strip()


def test_no_second_range_check_of_a_setting():
    """Limits are written as field metadata (setting/doc) or in the node tables, nowhere else."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in _literal_ranges(path):
            if path == NODES / "parameters.py" or "setting(" in line or "doc(" in line:
                continue
            found.append(f"{path.relative_to(ROOT)}:{number}: {line}")
    allowed_elsewhere = [entry for entry in found if "setting(" not in entry]
    # a continuation line of a setting(...) / doc(...) call: its call starts above
    stray = [entry for entry in allowed_elsewhere if not _inside_field_call(entry)]
    assert not stray, stray


def _inside_field_call(entry: str) -> bool:
    file, number = entry.split(":")[:2]
    tree = ast.parse((ROOT / file).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setting", "doc"):
            if node.lineno <= int(number) <= node.end_lineno:
                return True
    return False


def test_core_settings_have_no_hand_written_checks_left():
    for path in sorted((PACKAGE / "core" / "policy").glob("*.py")):
        source = path.read_text()
        assert "_check_float(" not in source and "_check_int(" not in source, path.name
    experiment = (PACKAGE / "experiment.py").read_text()
    for copied in ("PriorSettings(", "StepAdjustment(", "PolicyPriorSettings("):
        assert copied not in experiment, copied


# ---------------------------------------------------------------- node parameters
def node_declarations(path: Path):
    """
    Return the parameter names a node module declares.

    The parameter names a node module declares: declare(self, TABLE, "name", ...) or
    self._declare("name", ...).
    """
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called == "declare" and len(node.args) >= 3:
            name = node.args[2]
        elif called == "_declare" and node.args:
            name = node.args[0]
        else:
            continue
        if isinstance(name, ast.Name) and name.id == "name":   # sim_robot's wrapper of declare
            continue
        assert isinstance(name, ast.Constant), f"{path.name}:{node.lineno}: declare a literal name"
        names.append(name.value)
    return names


@pytest.mark.parametrize("node", sorted(NODE_PARAMETERS))
def test_each_node_declares_exactly_its_table(node):
    declared = node_declarations(NODES / f"{node}.py")
    if node != "sim_robot":
        declared.append("experiment_config")   # by common.declare_experiment
    assert sorted(declared) == sorted(NODE_PARAMETERS[node]), node
    assert len(declared) == len(set(declared)), node


def test_descriptors_are_built_in_one_place():
    for path in sorted(NODES.glob("*.py")):
        text = path.read_text()
        if path.name == "common.py":
            continue
        for built in ("ParameterDescriptor(", "FloatingPointRange(", "IntegerRange(",
                      "declare_parameter("):
            assert built not in text, f"{path.name} builds {built}"


def test_parameter_tables_are_checked_without_ros():
    code = ("import sys, mbpl_ros.nodes.parameters\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
            "('rclpy', 'rcl_interfaces', 'torch', 'pybullet'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("node, name, value, message", [
    ("gps_trainer", "kl_step", 0.0,
     r"parameter 'kl_step' is 0.0; allowed: a double in \(0, 1e6\]"),
    ("gps_trainer", "max_attempts", 101, r"is 101; allowed: an integer in \[1, 100\]"),
    ("gps_trainer", "max_attempts", 2.0, r"is 2.0; allowed: an integer"),
    ("lqr_controller", "watchdog_action", "brake", r"allowed: one of \['zero', 'hold'\]"),
    ("lqr_controller", "pd_damping_ratio", float("nan"), r"is nan; allowed: a double in \[0.1"),
    ("lqr_controller", "effort_limits", "2.0", r"is '2.0'; allowed: one double per joint"),
    ("sim_robot", "gui", 1, r"parameter 'gui' is 1; allowed: true or false"),
])
def test_a_table_entry_checks_its_values(node, name, value, message):
    with pytest.raises(NodeParameterError, match=message):
        NODE_PARAMETERS[node][name].check(value)


def test_runtime_entries_say_so_in_their_doc():
    for node, table in NODE_PARAMETERS.items():
        for parameter in table.values():
            says = "settable at runtime" in parameter.doc.lower()
            assert says == parameter.runtime, (node, parameter.name)
            if parameter.default is not None and parameter.low is not None:
                assert parameter.problem(parameter.default) is None, (node, parameter.name)
