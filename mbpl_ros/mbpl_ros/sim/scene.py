"""
Static objects around the arm: fixtures built from boxes, placed per condition.

A fixture is one rigid, immovable body made of boxes (each a collision shape and a
visual shape), e.g. a block with a hole in it built from four walls and a floor. Its frame
is placed in the world at `position`, or at the condition's target plus `position` when
`relative_to` is "target": a hole whose bottom is the target then moves with the target,
so the hole's position is part of each condition.

Contact between the arm and fixtures uses PyBullet's default solver with the contact
settings of `CONTACT` (see Arm): enough solver iterations and a split impulse so that a
peg pressed into a wall is pushed out without gaining energy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RELATIVE_TO = ("world", "target")


@dataclass(frozen=True)
class Box:
    """
    One box of a fixture, axis-aligned with the fixture's frame.

    One box of a fixture: size (3,) full side lengths (m), position (3,) of its centre
    in the fixture's frame (m); axis-aligned with that frame.
    """

    size: tuple
    position: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        size = _vector3(self.size, "box size")
        if min(size) <= 0:
            raise ValueError(f"box size must be positive side lengths (m); got {list(size)}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "position", _vector3(self.position, "box position"))

    @property
    def lower(self) -> np.ndarray:
        """(3,) lowest corner in the fixture frame."""
        return np.array(self.position) - 0.5 * np.array(self.size)

    @property
    def upper(self) -> np.ndarray:
        """(3,) highest corner in the fixture frame."""
        return np.array(self.position) + 0.5 * np.array(self.size)


@dataclass(frozen=True)
class Fixture:
    """
    A static body of boxes.

    name: for errors and logs. boxes: the Box parts (at least one). position (3,): the
    fixture frame's origin, in the world (relative_to "world") or as an offset from the
    condition's target (relative_to "target"); the frame is aligned with the world's.
    color: RGBA of every box. lateral_friction: Coulomb friction coefficient of its surfaces.
    """

    name: str
    boxes: tuple
    position: tuple = (0.0, 0.0, 0.0)
    relative_to: str = "world"
    color: tuple = (0.55, 0.55, 0.6, 1.0)
    lateral_friction: float = 0.5

    def __post_init__(self):
        boxes = tuple(b if isinstance(b, Box) else Box(**b) for b in self.boxes)
        if not boxes:
            raise ValueError(f"fixture {self.name!r}: needs at least one box")
        if self.relative_to not in RELATIVE_TO:
            raise ValueError(f"fixture {self.name!r}: relative_to must be one of "
                             f"{', '.join(RELATIVE_TO)}; got {self.relative_to!r}")
        color = tuple(float(c) for c in self.color)
        if len(color) != 4 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"fixture {self.name!r}: color must be 4 numbers in [0, 1] (RGBA); "
                             f"got {list(self.color)}")
        if not (math.isfinite(self.lateral_friction) and self.lateral_friction >= 0):
            raise ValueError(f"fixture {self.name!r}: lateral_friction must be >= 0; "
                             f"got {self.lateral_friction!r}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "position",
                           _vector3(self.position, f"fixture {self.name!r} position"))
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "lateral_friction", float(self.lateral_friction))

    def origin(self, target: Sequence[float] | None) -> np.ndarray:
        """(3,) world position of the fixture frame for a condition's target (3,)."""
        if self.relative_to == "world":
            return np.array(self.position)
        if target is None:
            raise ValueError(f"fixture {self.name!r} is placed relative to the target: give one")
        return np.asarray(target, dtype=float).reshape(3) + np.array(self.position)


@dataclass(frozen=True)
class TargetMarker:
    """
    The condition's target drawn as a sphere: visible to a camera, no collision.

    radius (m) and color (RGBA). An image policy finds the target in its images by it.
    """

    radius: float = 0.02
    color: tuple = (1.0, 0.1, 0.1, 1.0)

    def __post_init__(self):
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"target marker radius must be > 0 m; got {self.radius!r}")
        color = tuple(float(c) for c in self.color)
        if len(color) != 4 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"target marker color must be 4 numbers in [0, 1] (RGBA); got "
                             f"{list(self.color)}")
        object.__setattr__(self, "radius", float(self.radius))
        object.__setattr__(self, "color", color)


class MarkerBody:
    """A TargetMarker loaded into one PyBullet client: a visual-only body, moved by `place`."""

    def __init__(self, client, marker: TargetMarker):
        self.marker = marker
        self._client = client
        visual = client.createVisualShape(client.GEOM_SPHERE, radius=marker.radius,
                                          rgbaColor=list(marker.color))
        # No collision shape (index -1): the arm passes through the target.
        self.body = client.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=-1,
                                           baseVisualShapeIndex=visual,
                                           basePosition=[0.0, 0.0, -10.0])

    def place(self, target: Sequence[float] | None) -> None:
        """Put the sphere's centre at the target (3,); None: out of sight, 10 m below."""
        where = [0.0, 0.0, -10.0] if target is None else list(_vector3(target, "target"))
        self._client.resetBasePositionAndOrientation(self.body, where, [0, 0, 0, 1])


class SceneBodies:
    """The fixtures of a scene loaded into one PyBullet client, placed with `place`."""

    def __init__(self, client, fixtures: Sequence[Fixture]):
        self.fixtures = tuple(fixtures)
        self._client = client
        self.bodies = []
        for fixture in self.fixtures:
            half = [[0.5 * s for s in box.size] for box in fixture.boxes]
            where = [list(box.position) for box in fixture.boxes]
            n = len(fixture.boxes)
            # One static body (mass 0) whose compound shape keeps each box an exact box.
            shape = client.createCollisionShapeArray(
                shapeTypes=[client.GEOM_BOX] * n, halfExtents=half, collisionFramePositions=where)
            visual = client.createVisualShapeArray(
                shapeTypes=[client.GEOM_BOX] * n, halfExtents=half, visualFramePositions=where,
                rgbaColors=[list(fixture.color)] * n)
            body = client.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=shape,
                                          baseVisualShapeIndex=visual,
                                          basePosition=list(fixture.origin(np.zeros(3))))
            client.changeDynamics(body, -1, lateralFriction=fixture.lateral_friction)
            self.bodies.append(body)

    def place(self, target: Sequence[float] | None) -> None:
        """
        Put every fixture where it belongs for a condition's target.

        Put every fixture where it belongs for a condition's target (3,) (None: only
        fixtures placed in the world; the others stay where they are).
        """
        for fixture, body in zip(self.fixtures, self.bodies):
            if fixture.relative_to == "target" and target is None:
                continue
            self._client.resetBasePositionAndOrientation(body, list(fixture.origin(target)),
                                                         [0, 0, 0, 1])


def _vector3(value, what: str) -> tuple:
    vector = np.asarray(value, dtype=float).reshape(-1)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} must be 3 finite numbers; got {value!r}")
    return tuple(float(v) for v in vector)
