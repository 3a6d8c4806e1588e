"""
Model error: a simulated arm that differs from the robot description the learner sees.

A real robot never matches its URDF. To measure a method honestly, the experiment's
`model_error` section makes the simulated arm (sim.arm.Arm) heavier or lighter, gives it
a payload, and adds joint damping and Coulomb friction, while everything the learner
reads (the robot description, mbpl_ros.robot_model, the initial controllers built from
it) keeps the URDF's values. Pure Python (the URDF edit is XML only): the experiment
loader imports it without the simulator.
"""
from __future__ import annotations

from xml.etree import ElementTree

from mbpl_ros.core.settings import setting, settings_dataclass

#: Names of the link and fixed joint that carry the payload in the simulated URDF.
PAYLOAD_LINK = "mbpl_model_error_payload"
PAYLOAD_JOINT = "mbpl_model_error_payload_joint"
#: Rotational inertia (kg·m²) of the payload about its centre: a point mass in effect,
#: but positive so that the physics engine accepts the link.
PAYLOAD_INERTIA = 1.0e-6


@settings_dataclass
class ModelError:
    """How the simulated arm differs from its description: the experiment's model_error."""

    mass_scale: float = setting(
        "factor on every link's mass and rotational inertia of the simulated arm only "
        "(the learner's robot description keeps the URDF's); 1: none, e.g. 1.3 for +30%",
        1.0, gt=0.0)
    payload_kg: float = setting(
        "point mass (kg) at the end-effector point of the simulated arm only", 0.0, ge=0.0)
    joint_damping: float = setting(
        "viscous damping (N·m·s/rad) added to every controlled joint of the simulated arm",
        0.0, ge=0.0)
    joint_friction: float = setting(
        "Coulomb friction (N·m) at every controlled joint of the simulated arm: the most "
        "torque that a joint at rest resists", 0.0, ge=0.0)

    @property
    def changes_urdf(self) -> bool:
        """Whether the simulated URDF differs from the description's (masses, payload)."""
        return self.mass_scale != 1.0 or self.payload_kg > 0.0

    @property
    def active(self) -> bool:
        """Whether the simulated arm differs from its description at all."""
        return self.changes_urdf or self.joint_damping > 0.0 or self.joint_friction > 0.0


def apply_to_urdf(robot: ElementTree.Element, error: ModelError, ee_link: str,
                  ee_offset) -> None:
    """
    Edit the URDF tree `robot` in place: scaled masses and inertias, the payload added.

    The payload is a link fixed to `ee_link` at `ee_offset` (3,) (the end-effector point
    in ee_link's frame), so it adds its mass there and the inertia that its distance from
    each joint implies. Joint damping and friction are not URDF edits (sim.arm.Arm sets
    them).
    """
    for inertial in robot.iter("inertial"):
        mass = inertial.find("mass")
        if mass is not None:
            mass.set("value", repr(error.mass_scale * float(mass.get("value", "0"))))
        inertia = inertial.find("inertia")
        if inertia is not None:
            for key in ("ixx", "ixy", "ixz", "iyy", "iyz", "izz"):
                if key in inertia.attrib:
                    inertia.set(key, repr(error.mass_scale * float(inertia.get(key))))
    if error.payload_kg > 0.0:
        link = ElementTree.SubElement(robot, "link", name=PAYLOAD_LINK)
        inertial = ElementTree.SubElement(link, "inertial")
        ElementTree.SubElement(inertial, "origin", xyz="0 0 0", rpy="0 0 0")
        ElementTree.SubElement(inertial, "mass", value=repr(float(error.payload_kg)))
        ElementTree.SubElement(inertial, "inertia", ixx=repr(PAYLOAD_INERTIA), ixy="0",
                               ixz="0", iyy=repr(PAYLOAD_INERTIA), iyz="0",
                               izz=repr(PAYLOAD_INERTIA))
        joint = ElementTree.SubElement(robot, "joint", name=PAYLOAD_JOINT, type="fixed")
        ElementTree.SubElement(joint, "parent", link=ee_link)
        ElementTree.SubElement(joint, "child", link=PAYLOAD_LINK)
        ElementTree.SubElement(joint, "origin", xyz=" ".join(repr(float(v)) for v in ee_offset),
                               rpy="0 0 0")
