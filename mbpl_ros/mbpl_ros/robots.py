"""
The robots: where their URDF is and how to load and read them.

A robot is described once, as a mapping (YAML) checked by `RobotDescription`:

    name: panda
    urdf: pybullet_data://franka_panda/panda.urdf    # or package://, absolute, relative
    joints: [panda_joint1, ..., panda_joint7]          # controlled, in command order
    locked_joints: {panda_finger_joint1: 0.02}          # the other movable joints, held
    end_effector: {link: panda_hand, offset: [0, 0, 0.1]}
    limits: {effort: {panda_joint5: 12.0}}             # overrides of the URDF's limits
    ...

`describe_robot` turns it into a `RobotSpec`, the immutable value the robot model
(`robot_model.RobotModel`, what the nodes on hardware use) and the simulator (`sim.arm.Arm`)
load; both import this module, it imports neither. The built-in robots
(`BUILTIN_ROBOTS`: reacher_2link, kuka_iiwa) are such descriptions shipped in this module; a
robot described in an experiment file is registered under its name (`register_robot`) so
that `robot_spec(name)` and `ROBOTS[name]` find it as they find a built-in.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

from xml.etree import ElementTree

import numpy as np
import pybullet_data

from mbpl_ros.config import ConfigError, doc, from_dict, read_yaml

STANDARD_GRAVITY = (0.0, 0.0, -9.81)
PACKAGE = "mbpl_ros"


def package_urdf(file_name: str) -> str:
    """
    Path of one of this package's URDF files, in the source tree or the installed share/.

    The source tree wins so that an edited URDF is used without reinstalling.
    """
    return _package_file(PACKAGE, f"urdf/{file_name}")


def _package_file(package: str, relative: str) -> str:
    """
    Return the path of `relative` inside a ROS package's share directory.

    For this package the source tree comes first (an uninstalled checkout works). Missing files are
    returned as the first candidate, for the caller to report.
    """
    candidates = []
    if package == PACKAGE:
        candidates.append(Path(__file__).resolve().parents[1] / relative)
        if candidates[0].is_file():
            return str(candidates[0])
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(package)) / relative)
    except (ImportError, LookupError, ValueError,
            OSError):  # not installed, or no AMENT_PREFIX_PATH
        pass
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    if not candidates:
        raise ValueError(f"package://{package}/{relative}: package {package!r} is not found in "
                         "the ament "
                         "index (is its workspace sourced?); give an absolute path or one "
                         "relative to "
                         "the YAML file")
    return str(candidates[0])


def resolve_urdf(reference: str, base_dir: Union[str, Path, None] = None) -> str:
    """
    Return the file a URDF reference names.

    pybullet_data://kuka_iiwa/model.urdf  -> in PyBullet's data directory
    package://mbpl_ros/urdf/x.urdf        -> in a ROS package's share directory (this
                                             package: its source tree first)
    /abs/path.urdf                        -> as given (~ expanded)
    relative/path.urdf                    -> relative to base_dir (the YAML file's
                                             directory), else to the current directory
    """
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"must be a URDF path or URL, got {reference!r}")
    if reference.startswith("pybullet_data://"):
        return os.path.join(pybullet_data.getDataPath(), reference[len("pybullet_data://"):])
    if reference.startswith("package://"):
        package, _, relative = reference[len("package://"):].partition("/")
        if not package or not relative:
            raise ValueError(f"{reference!r} must be package://<package>/<path inside its share "
                             "directory>")
        return _package_file(package, relative)
    if "://" in reference:
        raise ValueError(f"{reference!r} has an unknown scheme; allowed: pybullet_data://, "
                         "package://, "
                         "an absolute path or one relative to the YAML file")
    path = Path(os.path.expanduser(reference))
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return str(path)


@dataclass(frozen=True)
class RobotSpec:
    """
    How to load one robot and which part of it is controlled.

    name: key in ROBOTS (a built-in, or a robot registered with register_robot).
    urdf_path: absolute path of the URDF.
    joint_names: the controlled joints, in the order of every (J,) array.
    ee_link: the link that carries the end-effector point.
    ee_offset: (3,) the end-effector point in ee_link's URDF frame, metres.
    extra_points: more points on ee_link, each (offset (3,) in ee_link's URDF frame,
        target_offset (3,) world offset of its target from the end-effector point's): e.g. the
        top of a held peg, so that a cost on every point also sets the tool's orientation.
    base_position: (3,) world position of the fixed base, metres.
    gravity: True for standard gravity, False for none, or a (3,) world vector in m/s^2.
    damping_overrides: joint name -> viscous joint damping (N·m·s/rad) replacing the URDF
        value at load time (for values that are unstable at the physics rate).
    initial_conditions: condition name -> (J,) joint angles for Arm.reset(name);
        "home" is the default.
    locked_joints: joint name -> angle (rad, or m for a prismatic joint) at which a movable
        joint that is not controlled is held. joint_names and locked_joints together must
        be all the movable joints of the URDF.
    effort_limit_overrides, velocity_limit_overrides: joint name -> limit (N·m, rad/s)
        replacing the URDF's.
    position_limit_overrides: joint name -> (lower, upper) replacing the URDF's.
    targets: name -> (3,) end-effector point in the world (m), e.g. reachable goals.
    initial_controller: defaults of the experiment's initial_controller for this robot
        (natural_frequency, damping_ratio, accel_noise_std; joint-acceleration terms).
    """

    name: str
    urdf_path: str
    joint_names: tuple
    ee_link: str
    ee_offset: tuple = (0.0, 0.0, 0.0)
    extra_points: tuple = ()
    base_position: tuple = (0.0, 0.0, 0.0)
    gravity: Union[bool, tuple] = True
    damping_overrides: Mapping[str, float] = field(default_factory=dict)
    initial_conditions: Mapping[str, tuple] = field(default_factory=dict)
    locked_joints: Mapping[str, float] = field(default_factory=dict)
    effort_limit_overrides: Mapping[str, float] = field(default_factory=dict)
    velocity_limit_overrides: Mapping[str, float] = field(default_factory=dict)
    position_limit_overrides: Mapping[str, tuple] = field(default_factory=dict)
    targets: Mapping[str, tuple] = field(default_factory=dict)
    initial_controller: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        # Normalise containers so that a spec is immutable and compares by value.
        object.__setattr__(self, "joint_names", tuple(str(n) for n in self.joint_names))
        object.__setattr__(self, "ee_offset", _vector3(self.ee_offset, "ee_offset"))
        object.__setattr__(self, "extra_points", tuple(
            (_vector3(offset, f"extra_points[{i}] offset"),
             _vector3(target, f"extra_points[{i}] target"))
            for i, (offset, target) in enumerate(self.extra_points)))
        object.__setattr__(self, "base_position", _vector3(self.base_position, "base_position"))
        if not isinstance(self.gravity, bool):
            object.__setattr__(self, "gravity", _vector3(self.gravity, "gravity"))
        if len(set(self.joint_names)) != len(self.joint_names) or not self.joint_names:
            raise ValueError(f"joint_names must be distinct and non-empty; got {self.joint_names}")
        joints = list(self.joint_names)
        both = sorted(set(self.locked_joints) & set(joints))
        if both:
            raise ValueError(f"locked_joints {both} are also controlled joints; a joint is either "
                             f"controlled (joints {joints}) or locked")
        for what, overrides in (("damping_overrides", self.damping_overrides),
                                ("effort_limit_overrides", self.effort_limit_overrides),
                                ("velocity_limit_overrides", self.velocity_limit_overrides),
                                ("position_limit_overrides", self.position_limit_overrides)):
            unknown = sorted(set(overrides) - set(joints))
            if unknown:
                raise ValueError(f"{what} names unknown joints {unknown}; joints are {joints}")
        conditions = {}
        for condition, q in dict(self.initial_conditions).items():
            q = tuple(float(v) for v in np.asarray(q, dtype=float).reshape(-1))
            if len(q) != len(self.joint_names):
                raise ValueError(f"initial condition {condition!r} has {len(q)} angles; "
                                 f"expected one per joint ({len(self.joint_names)})")
            conditions[str(condition)] = q
        positions = {}
        for joint, bounds in dict(self.position_limit_overrides).items():
            lower, upper = (float(v) for v in np.asarray(bounds, dtype=float).reshape(2))
            if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
                raise ValueError(f"position limits of {joint!r} must be finite with lower < "
                                 "upper; "
                                 f"got {list(bounds)}")
            positions[str(joint)] = (lower, upper)
        for what, values in (("effort", self.effort_limit_overrides),
                             ("velocity", self.velocity_limit_overrides)):
            for joint, value in dict(values).items():
                if not (float(value) > 0 and math.isfinite(float(value))):
                    raise ValueError(f"{what} limit of {joint!r} must be a positive finite "
                                     f"number; got {value!r}")
        # Own copies (plain dicts, so a spec pickles for worker processes).
        plain = lambda mapping: {str(k): float(v) for k, v in dict(mapping).items()}  # noqa: E731
        object.__setattr__(self, "damping_overrides", plain(self.damping_overrides))
        object.__setattr__(self, "initial_conditions", conditions)
        object.__setattr__(self, "locked_joints", plain(self.locked_joints))
        object.__setattr__(self, "effort_limit_overrides", plain(self.effort_limit_overrides))
        object.__setattr__(self, "velocity_limit_overrides", plain(self.velocity_limit_overrides))
        object.__setattr__(self, "position_limit_overrides", positions)
        object.__setattr__(self, "targets", {str(k): _vector3(v, f"target {k!r}")
                                             for k, v in dict(self.targets).items()})
        object.__setattr__(self, "initial_controller", plain(self.initial_controller))

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def n_points(self) -> int:
        """P: the end-effector point and the extra points."""
        return 1 + len(self.extra_points)

    @property
    def point_offsets(self) -> np.ndarray:
        """(P, 3) every end-effector point in ee_link's URDF frame, the controlled one first."""
        return np.array([self.ee_offset] + [offset for offset, _ in self.extra_points],
                        dtype=float)

    @property
    def point_target_offsets(self) -> np.ndarray:
        """(P, 3) world offsets of the points' targets from a condition's target (first row 0)."""
        return np.array([(0.0, 0.0, 0.0)] + [target for _, target in self.extra_points],
                        dtype=float)

    def point_targets(self, target: np.ndarray) -> np.ndarray:
        """(P, 3) the targets of every end-effector point for a condition's target (3,)."""
        return np.asarray(target, dtype=float).reshape(1, 3) + self.point_target_offsets

    @property
    def gravity_vector(self) -> np.ndarray:
        """(3,) world gravity in m/s^2."""
        if self.gravity is True:
            return np.array(STANDARD_GRAVITY)
        if self.gravity is False:
            return np.zeros(3)
        return np.array(self.gravity, dtype=float)

    def initial_condition(self, name: str) -> np.ndarray:
        """(J,) joint angles of a named initial condition."""
        try:
            return np.array(self.initial_conditions[name], dtype=float)
        except KeyError:
            raise ValueError(f"unknown initial condition {name!r} for robot {self.name!r}; "
                             f"known: {sorted(self.initial_conditions)}") from None

    def target(self, name: str) -> np.ndarray:
        """(3,) world point of a named target."""
        try:
            return np.array(self.targets[name], dtype=float)
        except KeyError:
            raise ValueError(f"unknown target {name!r} for robot {self.name!r}; "
                             f"known: {sorted(self.targets)}") from None


def _vector3(value: Sequence[float], what: str) -> tuple:
    vector = np.asarray(value, dtype=float).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} must be 3 finite numbers; got {value!r}")
    return tuple(float(v) for v in vector)


# ---------------------------------------------------------------------- the YAML schema
@dataclass
class EndEffectorPoint:
    offset: list[float] = doc("the point in the end-effector link's URDF frame (m), [x, y, z]")
    target: list[float] = doc("where its target is: a world offset (m) from the target of the "
                              "end-effector point, [x, y, z]")

    def __post_init__(self):
        if len(self.offset) != 3 or len(self.target) != 3:
            raise ValueError("offset and target must have 3 entries [x, y, z]")


@dataclass
class EndEffectorDescription:
    link: str = doc("URDF link that carries the end-effector point")
    offset: list[float] = doc("the point in that link's URDF frame (m), [x, y, z]",
                              [0.0, 0.0, 0.0])
    extra_points: list[EndEffectorPoint] = doc(
        "more points on that link, each {offset: [x, y, z] in the link's frame (m), target: "
        "[x, y, z] world offset (m) of its target from the end-effector point's}, e.g. a held "
        "peg's top: a cost on every point sets the tool's orientation too (6 state entries "
        "per point)", [])

    def __post_init__(self):
        if len(self.offset) != 3:
            raise ValueError(f"offset: must have 3 entries [x, y, z], got {len(self.offset)}")


@dataclass
class LimitOverrides:
    effort: dict = doc("joint -> effort limit (N·m) replacing the URDF's; needed where the URDF "
                       "has none", {})
    velocity: dict = doc("joint -> velocity limit (rad/s) replacing the URDF's", {})
    position: dict = doc("joint -> [lower, upper] (rad) replacing the URDF's", {})


@dataclass
class ControllerDefaults:
    natural_frequency: Optional[float] = doc(
        "default initial_controller.natural_frequency (rad/s) of experiments on this robot",
        None, gt=0.0)
    damping_ratio: Optional[float] = doc(
        "default initial_controller.damping_ratio of experiments on this robot", None, gt=0.0)
    accel_noise_std: Optional[float] = doc(
        "default initial_controller.accel_noise_std (rad/s²) of experiments on this robot",
        None, gt=0.0)


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")


@dataclass
class RobotDescription:
    """One robot, as written in YAML (`robot:` of an experiment, or a file of its own)."""

    name: str = doc("the robot's name in logs, metrics and exported policies (letters, digits, _ "
                    "and -; "
                    "not a built-in robot's name)")
    urdf: str = doc("URDF: absolute, relative to the YAML file, package://<pkg>/<path> or "
                    "pybullet_data://<path>")
    joints: list[str] = doc("controlled joints, in the order of commands and of every per-joint "
                            "list")
    end_effector: EndEffectorDescription = dataclasses.field(
        metadata={"doc": "the controlled point"})
    locked_joints: dict = doc("joint -> angle (rad; m if prismatic): every other movable joint, "
                              "held "
                              "there by a stiff position motor", {})
    base_position: list[float] = doc("world position of the fixed base (m)", [0.0, 0.0, 0.0])
    gravity: list[float] = doc("world gravity (m/s²)", list(STANDARD_GRAVITY))
    limits: LimitOverrides = dataclasses.field(
        default_factory=LimitOverrides, metadata={"doc": "overrides of the URDF's joint limits"})
    damping: dict = doc("joint -> viscous damping (N·m·s/rad) replacing the URDF's", {})
    initial_conditions: dict = doc("name -> joint angles (rad), one per joint; 'home' is where "
                                   "the "
                                   "simulator starts", {})
    targets: dict = doc("name -> end-effector point in the world (m), [x, y, z]", {})
    initial_controller: ControllerDefaults = dataclasses.field(
        default_factory=ControllerDefaults,
        metadata={"doc": "this robot's initial-controller defaults"})

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} must start with a letter and hold only "
                             "letters, "
                             "digits, _ and -")
        if len(self.base_position) != 3 or len(self.gravity) != 3:
            raise ValueError("base_position and gravity must have 3 entries [x, y, z]")


def _checked_mapping(where: str, mapping: dict, joints: Optional[Sequence[str]],
                     width: Optional[int],
                     what: str) -> dict:
    """{key: number or list of `width` numbers}, keys among `joints` when given."""
    checked = {}
    for key, value in mapping.items():
        path = f"{where}.{key}"
        if joints is not None and key not in joints:
            raise ConfigError(f"{path}: {key!r} is not one of the {what} {list(joints)}")
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
               for v in values):
            expected = "a finite number" if width is None else f"{width} finite numbers"
            raise ConfigError(f"{path}: must be {expected}"
                              f", got {value!r}")
        if width is None and isinstance(value, list) or width is not None and len(values) != width:
            raise ConfigError(f"{path}: must be "
                              f"{'one number' if width is None else f'a list of {width} numbers'}"
                              f", got {value!r}")
        checked[str(key)] = float(value) if width is None else tuple(float(v) for v in values)
    return checked


def describe_robot(data: Mapping, base_dir: Union[str, Path, None] = None,
                   where: str = "robot") -> RobotSpec:
    """
    Return the RobotSpec of a robot description mapping (see RobotDescription).

    base_dir: the directory relative URDF paths start from (the YAML file's); default
    the current directory. Errors are ConfigError naming the key path under `where`.
    The URDF itself is read when a RobotModel or an Arm loads the spec (see
    robot_model.check_robot).
    """
    description = from_dict(RobotDescription, dict(data) if isinstance(data, Mapping) else data,
                            where)
    joints = description.joints
    if not joints or len(set(joints)) != len(joints):
        raise ConfigError(f"{where}.joints: must be distinct joint names, at least one; got "
                          f"{joints}")
    try:
        urdf_path = resolve_urdf(description.urdf, base_dir)
    except ValueError as error:
        raise ConfigError(f"{where}.urdf: {error}") from None
    if not os.path.isfile(urdf_path):
        raise ConfigError(f"{where}.urdf: {description.urdf!r} is not a file (looked at "
                          f"{urdf_path})")
    locked = _checked_mapping(f"{where}.locked_joints", description.locked_joints, None, None, "")
    both = sorted(set(locked) & set(joints))
    if both:
        raise ConfigError(f"{where}.locked_joints: {both} are also in {where}.joints; a joint is "
                          "either "
                          "controlled or locked")
    limits = description.limits
    conditions = _checked_mapping(f"{where}.initial_conditions", description.initial_conditions,
                                  None,
                                  len(joints), "")
    targets = _checked_mapping(f"{where}.targets", description.targets, None, 3, "")
    positions = _checked_mapping(f"{where}.limits.position", limits.position, joints, 2,
                                 "controlled joints")
    for joint, (lower, upper) in positions.items():
        if not lower < upper:
            raise ConfigError(f"{where}.limits.position.{joint}: lower must be below upper, got "
                              f"{[lower, upper]}")
    overrides = {}
    for key, mapping in (("effort", limits.effort), ("velocity", limits.velocity)):
        overrides[key] = _checked_mapping(f"{where}.limits.{key}", mapping, joints, None,
                                          "controlled joints")
        for joint, value in overrides[key].items():
            if not value > 0:
                raise ConfigError(f"{where}.limits.{key}.{joint}: must be > 0, got {value!r}")
    damping = _checked_mapping(f"{where}.damping", description.damping, joints, None,
                               "controlled joints")
    for joint, value in damping.items():
        if value < 0:
            raise ConfigError(f"{where}.damping.{joint}: must be >= 0, got {value!r}")
    gains = {k: v for k, v in dataclasses.asdict(description.initial_controller).items()
             if v is not None}
    gravity = tuple(float(g) for g in description.gravity)
    return RobotSpec(
        name=description.name, urdf_path=urdf_path, joint_names=tuple(joints),
        ee_link=description.end_effector.link, ee_offset=tuple(description.end_effector.offset),
        extra_points=tuple((tuple(point.offset), tuple(point.target))
                           for point in description.end_effector.extra_points),
        base_position=tuple(description.base_position),
        gravity=True if gravity == STANDARD_GRAVITY else gravity,
        damping_overrides=damping, initial_conditions=conditions, locked_joints=locked,
        effort_limit_overrides=overrides["effort"], velocity_limit_overrides=overrides["velocity"],
        position_limit_overrides=positions, targets=targets, initial_controller=gains)


def load_robot_description(path: Union[str, Path]) -> RobotSpec:
    """Return the RobotSpec of a robot-description YAML file (URDF paths from its directory)."""
    path = Path(path)
    data = read_yaml(path, "robot description file")
    try:
        return describe_robot(data, path.parent, where="robot")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def check_urdf_file(path: str, where: str) -> None:
    """
    Raise a ValueError naming the file unless it is URDF XML without a floating joint.

    PyBullet's own message for a bad file is only "Cannot load URDF file.".
    """
    if not os.path.isfile(path):
        raise ValueError(f"{where}: the URDF file does not exist")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{where}: the URDF is not valid XML: {error}") from None
    if root.tag != "robot":
        raise ValueError(f"{where}: not a URDF (root element <{root.tag}>, expected <robot>)")
    free = [(joint.get("name"), joint.get("type")) for joint in root.iter("joint")
            if joint.get("type") in ("floating", "planar")]
    if free:
        raise ValueError(f"{where}: joints {free} give the robot a floating base or a floating "
                         "part; "
                         "only fixed-base serial arms are supported (the base is fixed where "
                         "base_position says)")


# ---------------------------------------------------------------------- the built-in robots
_BUILTIN_DESCRIPTIONS = {
    "reacher_2link": {
        "urdf": "package://mbpl_ros/urdf/reacher_2link.urdf",
        "joints": ["shoulder", "elbow"],
        # The joints turn about world z: gravity loads the bearings, never the joints.
        "end_effector": {"link": "fingertip"},
        "initial_conditions": {"home": [0.0, 1.5], "left": [0.8, 1.0], "right": [-0.8, -1.0],
                               "folded": [0.0, 2.6]},
    },
    "kuka_iiwa": {
        "urdf": "pybullet_data://kuka_iiwa/model.urdf",
        "joints": [f"lbr_iiwa_joint_{i}" for i in range(1, 8)],
        # The end-effector point is on the flange axis.
        "end_effector": {"link": "lbr_iiwa_link_7", "offset": [0.0, 0.0, 0.05]},
        # The URDF's 0.5 N·m·s/rad on joint 7 (axial inertia ~1e-3 kg·m^2) makes explicit
        # damping diverge at 240 Hz (damping * dt / inertia > 2); use a stable value.
        "damping": {"lbr_iiwa_joint_7": 0.05},
        "initial_conditions": {
            "home": [0.0, 0.5, 0.0, -1.2, 0.0, 0.8, 0.0],
            "left": [0.6, 0.6, 0.0, -1.0, 0.0, 0.9, 0.0],
            "right": [-0.6, 0.6, 0.0, -1.0, 0.0, 0.9, 0.0],
            "upright": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        },
    },
}


def builtin_description(name: str) -> dict:
    """Return the description mapping of a built-in robot (a copy), as written in YAML."""
    import copy

    return {"name": name, **copy.deepcopy(_BUILTIN_DESCRIPTIONS[name])}


BUILTIN_ROBOTS: Mapping[str, RobotSpec] = MappingProxyType({
    name: describe_robot(builtin_description(name), where=f"built-in robot {name}")
    for name in _BUILTIN_DESCRIPTIONS})

# Robots described in experiment files, by name (see register_robot).
_REGISTERED: dict = {}


class _KnownRobots(Mapping):
    """
    The built-in robots, by name.

    Looking a name up also finds the robots registered in this process (so code that knows robots
    by name, ROBOTS[config.robot], runs a described robot too), while iterating lists the built-in
    ones only.
    """

    def __getitem__(self, name: str) -> RobotSpec:
        if name in BUILTIN_ROBOTS:
            return BUILTIN_ROBOTS[name]
        return _REGISTERED[name]

    def __iter__(self):
        return iter(BUILTIN_ROBOTS)

    def __len__(self) -> int:
        return len(BUILTIN_ROBOTS)

    def __repr__(self) -> str:
        return f"ROBOTS(built in: {list(BUILTIN_ROBOTS)}, registered: {registered_robots()})"


#: Robots by name: iterates over BUILTIN_ROBOTS; lookups also find registered robots.
ROBOTS: Mapping[str, RobotSpec] = _KnownRobots()


def register_robot(spec: RobotSpec) -> RobotSpec:
    """
    Make `spec` findable by robot_spec(spec.name) (and ROBOTS[spec.name]) in this process.

    Then an experiment whose robot is described inline is run by code that knows robots
    by name. Returns the registered spec.

    Registering an equal spec again is harmless; a different spec under a name already
    taken (a built-in's, or another description's) is a ValueError.
    """
    if spec.name in BUILTIN_ROBOTS:
        if BUILTIN_ROBOTS[spec.name] != spec:
            raise ValueError(f"robot name {spec.name!r} is a built-in robot; give the description "
                             "another name")
        return BUILTIN_ROBOTS[spec.name]
    known = _REGISTERED.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"robot name {spec.name!r} is already described differently in this "
                         "process "
                         f"(URDF {known.urdf_path}); give this description another name")
    return _REGISTERED.setdefault(spec.name, spec)


def registered_robots() -> list[str]:
    """Names of the robots described (registered) in this process, built-ins excluded."""
    return sorted(_REGISTERED)


def robot_spec(name: str) -> RobotSpec:
    """Return the spec of a built-in or registered robot (ValueError listing the known names)."""
    try:
        return ROBOTS[name]
    except (KeyError, TypeError):
        described = f"; described in this process: {registered_robots()}" if _REGISTERED else ""
        raise ValueError(f"unknown robot {name!r}; known robots: "
                         f"{sorted(BUILTIN_ROBOTS)}{described}") from None
