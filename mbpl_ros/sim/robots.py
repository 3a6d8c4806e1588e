"""The robots the simulator knows: where their URDF is and how to load and read them."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence, Union

import numpy as np
import pybullet_data

STANDARD_GRAVITY = (0.0, 0.0, -9.81)


def package_urdf(file_name: str) -> str:
    """Path of one of this package's URDF files, in the source tree or the installed share/.

    The source tree wins so that an edited URDF is used without reinstalling.
    """
    source_tree = Path(__file__).resolve().parents[2] / "urdf" / file_name
    if source_tree.is_file():
        return str(source_tree)
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory("mbpl_ros")) / "urdf" / file_name
    except (ImportError, LookupError):  # PackageNotFoundError is a KeyError
        installed = None
    if installed is not None and installed.is_file():
        return str(installed)
    return str(source_tree)  # does not exist: Arm reports the missing file on load


@dataclass(frozen=True)
class RobotSpec:
    """How to load one robot and which part of it is controlled.

    name: key in ROBOTS.
    urdf_path: absolute path of the URDF.
    joint_names: the controlled joints, in the order of every (J,) array; they must be
        all the movable joints of the URDF.
    ee_link: the link that carries the end-effector point.
    ee_offset: (3,) the end-effector point in ee_link's URDF frame, metres.
    base_position: (3,) world position of the fixed base, metres.
    gravity: True for standard gravity, False for none, or a (3,) world vector in m/s^2.
    damping_overrides: joint name -> viscous joint damping (N·m·s/rad) replacing the URDF
        value at load time (for values that are unstable at the physics rate).
    initial_conditions: condition name -> (J,) joint angles for Arm.reset(name);
        "home" is the default.
    """

    name: str
    urdf_path: str
    joint_names: tuple
    ee_link: str
    ee_offset: tuple = (0.0, 0.0, 0.0)
    base_position: tuple = (0.0, 0.0, 0.0)
    gravity: Union[bool, tuple] = True
    damping_overrides: Mapping[str, float] = field(default_factory=dict)
    initial_conditions: Mapping[str, tuple] = field(default_factory=dict)

    def __post_init__(self):
        # Normalise containers so that a spec is immutable and compares by value.
        object.__setattr__(self, "joint_names", tuple(str(n) for n in self.joint_names))
        object.__setattr__(self, "ee_offset", _vector3(self.ee_offset, "ee_offset"))
        object.__setattr__(self, "base_position", _vector3(self.base_position, "base_position"))
        if not isinstance(self.gravity, bool):
            object.__setattr__(self, "gravity", _vector3(self.gravity, "gravity"))
        if len(set(self.joint_names)) != len(self.joint_names) or not self.joint_names:
            raise ValueError(f"joint_names must be distinct and non-empty; got {self.joint_names}")
        unknown = sorted(set(self.damping_overrides) - set(self.joint_names))
        if unknown:
            raise ValueError(f"damping_overrides names unknown joints {unknown}; "
                             f"joints are {list(self.joint_names)}")
        conditions = {}
        for condition, q in dict(self.initial_conditions).items():
            q = tuple(float(v) for v in np.asarray(q, dtype=float).reshape(-1))
            if len(q) != len(self.joint_names):
                raise ValueError(f"initial condition {condition!r} has {len(q)} angles; "
                                 f"expected one per joint ({len(self.joint_names)})")
            conditions[str(condition)] = q
        # Own copies (plain dicts, so a spec pickles for worker processes).
        object.__setattr__(self, "damping_overrides",
                           {str(k): float(v) for k, v in dict(self.damping_overrides).items()})
        object.__setattr__(self, "initial_conditions", conditions)

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

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


def _vector3(value: Sequence[float], what: str) -> tuple:
    vector = np.asarray(value, dtype=float).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} must be 3 finite numbers; got {value!r}")
    return tuple(float(v) for v in vector)


ROBOTS: Mapping[str, RobotSpec] = MappingProxyType({
    "reacher_2link": RobotSpec(
        name="reacher_2link",
        urdf_path=package_urdf("reacher_2link.urdf"),
        joint_names=("shoulder", "elbow"),
        ee_link="fingertip",
        ee_offset=(0.0, 0.0, 0.0),
        base_position=(0.0, 0.0, 0.0),
        # The joints turn about world z: gravity loads the bearings, never the joints.
        gravity=True,
        initial_conditions={
            "home": (0.0, 1.5),
            "left": (0.8, 1.0),
            "right": (-0.8, -1.0),
            "folded": (0.0, 2.6),
        },
    ),
    "kuka_iiwa": RobotSpec(
        name="kuka_iiwa",
        urdf_path=os.path.join(pybullet_data.getDataPath(), "kuka_iiwa", "model.urdf"),
        joint_names=tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8)),
        ee_link="lbr_iiwa_link_7",
        ee_offset=(0.0, 0.0, 0.05),  # on the flange axis, past the last joint
        base_position=(0.0, 0.0, 0.0),
        gravity=True,
        # The URDF's 0.5 N·m·s/rad on joint 7 (axial inertia ~1e-3 kg·m^2) makes explicit
        # damping diverge at 240 Hz (damping * dt / inertia > 2); use a stable value.
        damping_overrides={"lbr_iiwa_joint_7": 0.05},
        initial_conditions={
            "home": (0.0, 0.5, 0.0, -1.2, 0.0, 0.8, 0.0),
            "left": (0.6, 0.6, 0.0, -1.0, 0.0, 0.9, 0.0),
            "right": (-0.6, 0.6, 0.0, -1.0, 0.0, 0.9, 0.0),
            "upright": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        },
    ),
})


def robot_spec(name: str) -> RobotSpec:
    """The spec of a known robot; unknown name -> ValueError listing the known names."""
    try:
        return ROBOTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown robot {name!r}; known robots: {sorted(ROBOTS)}") from None
