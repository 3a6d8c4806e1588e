"""
An experiment: the robot, its conditions, the cost and the algorithm settings, from YAML.

The offline trainer (`mbpl train`) and the ROS nodes build the same objects from the same
file, so a result found offline transfers to the robot.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import numpy as np

from mbpl_ros.config import ConfigError, describe, doc, from_dict, read_yaml
from mbpl_ros.core import controller as lg
from mbpl_ros.core.costs import ActionTerm, CostSpec, DistanceTerm, StateTerm, build_cost
from mbpl_ros.core.dynamics import DynamicsSettings
from mbpl_ros.core.lqr_flm import LqrFlmSettings
from mbpl_ros.core.policy.settings import (ImagePolicySettings, MdgpsSettings,
                                           PolicyPriorSettings, PolicySettings)
from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.core.settings import field_from, settings_dataclass
from mbpl_ros.core.traj_opt import KlStepSettings
from mbpl_ros.robots import (BUILTIN_ROBOTS, ROBOTS, RobotDescription, RobotSpec, describe_robot,
                             load_robot_description, register_robot, registered_robots,
                             robot_spec)
from mbpl_ros.sim.model_error import ModelError

# initial_controller values when neither the experiment nor the robot description gives one
INITIAL_CONTROLLER_DEFAULTS = {"natural_frequency": 3.0, "damping_ratio": 1.0,
                               "accel_noise_std": 2.0}


@settings_dataclass
class ConditionConfig:
    initial_positions: list[float] = doc("joint angles at the start of every rollout (rad), one "
                                         "per joint")
    target: list[float] = doc("end-effector target point in the world frame (m), [x, y, z]")

    def __post_init__(self):
        if len(self.target) != 3:
            raise ValueError(f"target must have 3 entries [x, y, z], got {len(self.target)}")


@settings_dataclass
class BoxConfig:
    size: list[float] = doc("full side lengths (m), [x, y, z]", gt=0.0)
    position: list[float] = doc("centre in the fixture's frame (m), [x, y, z]", [0.0, 0.0, 0.0])

    def __post_init__(self):
        if len(self.size) != 3 or len(self.position) != 3:
            raise ValueError("size and position must have 3 entries [x, y, z]")


@settings_dataclass
class FixtureConfig:
    name: str = doc("the fixture's name (errors, logs)")
    boxes: list[BoxConfig] = doc("its boxes (each a collision and a visual shape), axis-aligned "
                                 "with the fixture's frame")
    position: list[float] = doc("the fixture frame's origin (m): in the world, or an offset "
                                "from each condition's target when relative_to is target",
                                [0.0, 0.0, 0.0])
    relative_to: Literal["world", "target"] = doc(
        "world: fixed; target: placed at each condition's target + position at every reset "
        "(e.g. a hole whose bottom is the target)", "world")
    color: list[float] = doc("RGBA, each in [0, 1]", [0.55, 0.55, 0.6, 1.0])
    lateral_friction: float = doc("Coulomb friction coefficient of its surfaces", 0.5, ge=0.0)

    def __post_init__(self):
        if not self.boxes:
            raise ValueError("boxes: at least one box is needed")
        if len(self.position) != 3:
            raise ValueError(f"position must have 3 entries [x, y, z], got {len(self.position)}")
        if len(self.color) != 4 or not all(0.0 <= c <= 1.0 for c in self.color):
            raise ValueError(f"color must be 4 numbers in [0, 1] (RGBA), got {self.color}")

    def fixture(self):
        """Return the sim.scene.Fixture this entry describes."""
        from mbpl_ros.sim.scene import Box, Fixture

        boxes = tuple(Box(tuple(b.size), tuple(b.position)) for b in self.boxes)
        return Fixture(name=self.name, boxes=boxes, position=tuple(self.position),
                       relative_to=self.relative_to,
                       color=tuple(self.color), lateral_friction=self.lateral_friction)


@settings_dataclass
class CameraConfig:
    """
    Hold the experiment file's camera section: a pinhole camera looking at the scene.

    Offline, one image is rendered after the state of every control step; sim_robot
    publishes images at rate_hz. The condition's target is drawn as a sphere (target_radius,
    target_color) that the camera sees and nothing collides with.
    """

    eye: list[float] = doc("camera position in the world frame (m), [x, y, z]")
    look_at: list[float] = doc("the point the optical axis goes through, world frame (m), "
                               "[x, y, z]")
    up: list[float] = doc("world direction that appears upwards in the image, [x, y, z]; not "
                          "parallel to look_at - eye", [0.0, 0.0, 1.0])
    fov_deg: float = doc("vertical field of view (degrees)", 45.0, gt=0.0, lt=180.0)
    width: int = doc("image width (pixels)", 64, ge=8, le=1024)
    height: int = doc("image height (pixels)", 64, ge=8, le=1024)
    near: float = doc("near clipping distance (m)", 0.05, gt=0.0)
    far: float = doc("far clipping distance (m); > near", 5.0, gt=0.0)
    rate_hz: float = doc("images per second sim_robot publishes (offline: one per control "
                         "step)", 20.0, gt=0.0)
    image_tolerance_s: float = doc("largest time (s) between a joint state's stamp and the "
                                   "image a step uses", 0.05, gt=0.0)
    target_radius: float = doc("radius of the sphere that marks the target (m)", 0.02, gt=0.0)
    target_color: list[float] = doc("RGBA of the target sphere, each in [0, 1]",
                                    [1.0, 0.1, 0.1, 1.0], ge=0.0, le=1.0)

    def __post_init__(self):
        for key in ("eye", "look_at", "up"):
            if len(getattr(self, key)) != 3:
                raise ValueError(f"{key} must have 3 entries [x, y, z], got {getattr(self, key)}")
        if len(self.target_color) != 4:
            raise ValueError(f"target_color must be 4 numbers in [0, 1] (RGBA), got "
                             f"{self.target_color}")
        axis = np.subtract(self.look_at, self.eye)
        if not np.linalg.norm(axis) > 1e-9:
            raise ValueError(f"look_at {self.look_at} must differ from eye {self.eye}")
        up = np.asarray(self.up, float)
        if np.linalg.norm(np.cross(axis, up)) <= 1e-6 * np.linalg.norm(axis) * max(
                np.linalg.norm(up), 1e-300):
            raise ValueError(f"up {self.up} must not be zero or parallel to the viewing "
                             f"direction look_at - eye = {axis.tolist()}; e.g. [0, 1, 0] for a "
                             "camera looking straight down")
        if not self.far > self.near:
            raise ValueError(f"far ({self.far} m) must be greater than near ({self.near} m)")

    @property
    def target_marker(self):
        """Return the sim.scene.TargetMarker that shows the condition's target."""
        from mbpl_ros.sim.scene import TargetMarker

        return TargetMarker(radius=self.target_radius, color=tuple(self.target_color))


@settings_dataclass
class InitialControllerConfig:
    kind: Literal["pd", "lqr"] = doc("pd: PD hold of the start pose; lqr: LQR on a double "
                                     "integrator", "pd")
    natural_frequency: Optional[float] = doc(
        "closed-loop natural frequency ω (rad/s), in joint-acceleration terms; null: the robot "
        "description's initial_controller.natural_frequency, else 3.0", None, gt=0.0)
    damping_ratio: Optional[float] = doc(
        "closed-loop damping ratio ζ of the PD controller; null: the robot description's, "
        "else 1.0",
        None, gt=0.0)
    accel_noise_std: Optional[float] = doc(
        "exploration noise, standard deviation in joint acceleration (rad/s²); null: the robot "
        "description's, else 2.0", None, gt=0.0)
    state_cost_weight: float = doc("lqr only: weight of the joint-position error", 1.0, gt=0.0)
    action_cost_weight: float = doc("lqr only: weight of the joint acceleration", 0.01, gt=0.0)


@settings_dataclass
class ExplorationConfig:
    smoothing: float = doc("std. dev. (time steps) of the Gaussian filter smoothing the noise; 0 "
                           "= white",
                           1.0, ge=0.0)
    renormalize: bool = doc("rescale smoothed noise back to unit variance", True)


@settings_dataclass
class PolicyConfig(PolicySettings):
    """
    Hold the experiment file's policy section.

    The policy section: the network and S-step settings (core.policy.settings), its
    linearisation's and how MDGPS draws rollouts.
    """

    seed: Optional[int] = field_from(
        PolicySettings, "seed", default=None,
        doc="seeds the weights and minibatch order; null: the experiment's seed")
    sample_on_policy: bool = doc("from iteration 2 on, draw the rollouts from the policy (with "
                                 "its "
                                 "variance) instead of the local controllers", False)
    linearization_regularization: float = field_from(MdgpsSettings, "linearization_regularization")
    covariance: str = field_from(MdgpsSettings, "covariance")
    anchor_max_kl: Optional[float] = field_from(MdgpsSettings, "anchor_max_kl")
    s_step_max_cost_ratio: Optional[float] = field_from(MdgpsSettings, "s_step_max_cost_ratio")
    prior: PolicyPriorSettings = dataclasses.field(
        default_factory=PolicyPriorSettings, metadata={"doc": "GMM prior of the policy "
                                                              "linearisation"})


@settings_dataclass
class ExperimentConfig:
    robot: str = doc(f"the robot: a built-in one ({', '.join(sorted(BUILTIN_ROBOTS))}), a robot "
                     "description "
                     "(a mapping: see 'Robot description' below) or the path of a YAML file "
                     "holding one "
                     "(relative to the experiment file); after loading, the robot's name",
                     allowed="a robot name, a robot description or a YAML path")
    conditions: list[ConditionConfig] = doc("start poses and targets, one local controller each")
    cost: CostSpec = doc("the cost: a sum of action, state and distance terms (see 'cost' below)")
    T: int = doc("time steps per rollout", 50, ge=2)
    physics_dt: float = doc("physics time step (s)", 1.0 / 240.0, gt=0.0)
    substeps: int = doc("physics steps per control step; control period = physics_dt · substeps",
                        12, ge=1)
    rollouts_per_condition: int = doc("rollouts per condition per iteration (N)", 5, ge=1)
    algorithm: Literal["lqr_flm", "mdgps"] = doc(
        "lqr_flm: local controllers only; mdgps: also distil them into one neural-network policy",
        "lqr_flm")
    iterations: int = doc("learning iterations", 10, ge=1)
    seed: int = doc("seed of every random choice (noise, GMM initialisation)", 0, ge=0)
    success_distance_m: float = doc("a condition counts as reached below this final distance (m)",
                                    0.02, gt=0.0)
    initial_controller: InitialControllerConfig = dataclasses.field(
        default_factory=InitialControllerConfig, metadata={"doc": "initial local controllers"})
    exploration: ExplorationConfig = dataclasses.field(
        default_factory=ExplorationConfig, metadata={"doc": "exploration noise"})
    dynamics: DynamicsSettings = dataclasses.field(
        default_factory=DynamicsSettings, metadata={"doc": "dynamics fit"})
    trajectory_optimization: KlStepSettings = dataclasses.field(
        default_factory=KlStepSettings, metadata={"doc": "KL-bounded LQR step"})
    policy: PolicyConfig = dataclasses.field(
        default_factory=PolicyConfig, metadata={"doc": "MDGPS global policy (used when algorithm: "
                                                       "mdgps)"})
    fixtures: list[FixtureConfig] = doc("static objects of the scene, made of boxes (see "
                                        "'Fixtures' below); none by default", [])
    camera: Optional[CameraConfig] = doc("a camera rendering the scene for an image policy (see "
                                         "'camera' below); null: no camera", None)
    model_error: ModelError = dataclasses.field(
        default_factory=ModelError, metadata={"doc": "how the simulated arm differs from the "
                                                     "robot description the learner sees "
                                                     "(none by default)"})

    def __post_init__(self):
        self.robot = _robot_name(self.robot)
        if not self.conditions:
            raise ValueError("conditions: at least one condition is needed")
        spec = self.robot_spec
        n_joints = spec.n_joints
        for i, condition in enumerate(self.conditions):
            if len(condition.initial_positions) != n_joints:
                raise ValueError(f"conditions[{i}].initial_positions: {self.robot} has {n_joints} "
                                 "joints, "
                                 f"got {len(condition.initial_positions)} angles")
        if self.policy.image is not None and self.camera is None:
            raise ValueError("policy.image: an image policy needs a camera section (camera: "
                             "eye, look_at, ...); or set policy.image to null")
        if self.policy.image is not None and self.algorithm != "mdgps":
            raise ValueError(f"policy.image: an image policy is trained by algorithm mdgps; "
                             f"algorithm is {self.algorithm!r}")
        if self.policy.image is not None and self.policy.action_base != "none":
            raise ValueError(f"policy.action_base: {self.policy.action_base!r} is for a state "
                             "policy; allowed with policy.image: 'none'")
        if self.policy.image is not None:
            try:
                self.policy.image.feature_map_size(self.camera.height, self.camera.width)
            except ValueError as error:
                raise ValueError(f"policy.image: {error} (camera.height, camera.width)") from None
        # Unset initial-controller numbers: the robot's own, else the general defaults.
        given = {key: getattr(self.initial_controller, key) for key in INITIAL_CONTROLLER_DEFAULTS}
        robot_own = spec.initial_controller
        resolved = {key: value if value is not None
                    else robot_own.get(key, INITIAL_CONTROLLER_DEFAULTS[key])
                    for key, value in given.items()}
        if resolved != given:
            self.initial_controller = dataclasses.replace(self.initial_controller, **resolved)

    @property
    def robot_spec(self) -> RobotSpec:
        """Return the robot: a built-in one or the description this experiment registered."""
        return robot_spec(self.robot)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(n_joints=self.robot_spec.n_joints, n_points=self.robot_spec.n_points)

    @property
    def scene(self) -> tuple:
        """Return the fixtures (sim.scene.Fixture) of the scene."""
        return tuple(f.fixture() for f in self.fixtures)

    @property
    def target_marker(self):
        """Return the visible target (sim.scene.TargetMarker) with a camera, else None."""
        return None if self.camera is None else self.camera.target_marker

    def make_arm(self, gui: bool = False):
        """
        Return the simulated arm of this experiment.

        Its robot, physics_dt, substeps, fixtures and model_error (the learner's robot
        description, robot_spec, is not changed by model_error), and with a camera the
        visible target.
        """
        from mbpl_ros.sim.arm import Arm

        return Arm(self.robot, physics_dt=self.physics_dt, substeps=self.substeps, gui=gui,
                   fixtures=self.scene, target_marker=self.target_marker,
                   model_error=self.model_error)

    def make_camera(self, arm):
        """Return the sim.camera.Camera of this experiment in `arm`'s world (None: no camera)."""
        if self.camera is None:
            return None
        from mbpl_ros.sim.camera import Camera

        return Camera(arm.client._client, self.camera)

    @property
    def control_dt(self) -> float:
        return self.physics_dt * self.substeps

    def build_cost(self):
        try:
            return build_cost(self.cost, self.layout, self.T)
        except ValueError as error:
            raise ConfigError(f"cost: {error}") from None

    def lqr_flm_settings(self) -> LqrFlmSettings:
        """LQR-FLM's settings: this experiment's dynamics and trajectory_optimization."""
        return LqrFlmSettings(dynamics=self.dynamics,
                              trajectory_optimization=self.trajectory_optimization)

    def mdgps_settings(self, seed: int | None = None) -> MdgpsSettings:
        """
        Return MDGPS's settings: the policy section's.

        MDGPS settings from the policy section; the policy seed defaults to `seed`
        (the run's seed, e.g. from the command line), else to the experiment's.
        """
        p = self.policy
        policy_seed = p.seed if p.seed is not None else (self.seed if seed is None else seed)
        network = {f.name: getattr(p, f.name) for f in dataclasses.fields(PolicySettings)}
        return MdgpsSettings(policy=PolicySettings(**{**network, "seed": policy_seed}),
                             policy_prior=p.prior, covariance=p.covariance,
                             linearization_regularization=p.linearization_regularization,
                             anchor_max_kl=p.anchor_max_kl,
                             s_step_max_cost_ratio=p.s_step_max_cost_ratio)

    def initial_controllers(self, arm) -> list[lg.LinearGaussianController]:
        """
        Return one initial controller per condition.

        One initial controller per condition, its gains and noise scaled by the mass
        matrix at the start pose so that they mean the same joint accelerations on any arm.
        """
        layout, ic = self.layout, self.initial_controller
        controllers = []
        for condition in self.conditions:
            q0 = np.asarray(condition.initial_positions, float)
            x0 = np.zeros(layout.dX)
            x0[layout.position] = q0
            mass, gravity = arm.mass_matrix(q0), arm.gravity_torque(q0)
            if ic.kind == "pd":
                controllers.append(lg.pd_controller(
                    self.T, x0, layout.position, layout.velocity, mass, gravity,
                    natural_frequency=ic.natural_frequency, damping_ratio=ic.damping_ratio,
                    accel_noise_std=ic.accel_noise_std))
            else:
                controllers.append(lg.double_integrator_lqr_controller(
                    self.T, self.control_dt, layout.position, layout.velocity, layout.dX, mass,
                    gravity,
                    target_position=q0, state_cost_weight=ic.state_cost_weight,
                    action_cost_weight=ic.action_cost_weight, accel_noise_std=ic.accel_noise_std))
        return controllers


def _robot_name(robot: Any, base_dir: Optional[Path] = None) -> str:
    """
    Return the name of an experiment's robot, registering it first if described here.

    The name of an experiment's robot, registering it first when it is described here.

    robot: a built-in or registered name; a robot description mapping; the path of a
    robot-description YAML file (relative to base_dir, default the current directory);
    or a RobotSpec. A new description is checked against its URDF once (ConfigError
    naming `robot` otherwise) and registered under its name (see robots.register_robot).
    """
    if isinstance(robot, str) and not robot.endswith((".yaml", ".yml")):
        try:
            robot_spec(robot)
        except ValueError:
            described = (f"; described in this process: {', '.join(registered_robots())}"
                         if registered_robots() else "")
            raise ValueError(f"robot: unknown robot {robot!r}; known robots: "
                             f"{', '.join(sorted(BUILTIN_ROBOTS))}{described}; "
                             "or a robot description (a mapping with name, urdf, joints, "
                             "end_effector) or "
                             "the path of a YAML file holding one") from None
        return robot
    if isinstance(robot, str):
        path = Path(robot).expanduser()
        spec = load_robot_description(
            path if path.is_absolute() or base_dir is None else base_dir / path)
    elif isinstance(robot, Mapping):
        spec = describe_robot(robot, base_dir, where="robot")
    elif isinstance(robot, RobotSpec):
        spec = robot
    else:
        raise ValueError("robot: must be a robot name, a robot description mapping or a YAML "
                         "path; "
                         f"got {type(robot).__name__}")
    try:
        if ROBOTS.get(spec.name) != spec:  # not loaded before in this process
            from mbpl_ros.robot_model import check_robot

            check_robot(spec)
        return register_robot(spec).name
    except ValueError as error:
        raise ConfigError(f"robot: {error}") from None


def _named_conditions(data: dict, spec: RobotSpec) -> dict:
    """
    Return `data` with the named initial positions and targets put in.

    Conditions whose initial_positions or target name one of the robot's
    initial_conditions or targets, with the numbers put in.
    """
    conditions = data.get("conditions")
    if not isinstance(conditions, list):
        return data
    resolved = []
    for i, condition in enumerate(conditions):
        if isinstance(condition, dict):
            condition = dict(condition)
            for key, table, lookup in (("initial_positions", spec.initial_conditions,
                                        spec.initial_condition),
                                       ("target", spec.targets, spec.target)):
                if isinstance(condition.get(key), str):
                    try:
                        condition[key] = [float(v) for v in lookup(condition[key])]
                    except ValueError as error:
                        raise ConfigError(f"conditions[{i}].{key}: {error}") from None
        resolved.append(condition)
    return {**data, "conditions": resolved}


def load_experiment(path: str | Path) -> ExperimentConfig:
    """
    Load an experiment file, validated.

    Its `robot` may describe the robot in place or name a description file (relative paths start at
    the experiment file's directory); a condition's initial_positions and target may name the
    robot's initial_conditions and targets. Errors are ConfigError naming the file and the key
    path.
    """
    path = Path(path)
    data = read_yaml(path)
    try:
        if isinstance(data, dict) and "robot" in data:
            name = _robot_name(data["robot"], path.resolve().parent)
            data = _named_conditions({**data, "robot": name}, robot_spec(name))
        return from_dict(ExperimentConfig, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def configuration_reference() -> str:
    """Return docs/configuration.md: every key of an experiment file, from the schema itself."""
    def table(cls, prefix=""):
        rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        return rows + [f"| `{prefix}{key}` | `{default}` | {allowed} | {text} |"
                       for key, default, allowed, text in describe(cls)]

    def section(title, *prose):
        return ["", f"## {title}", "", *prose, ""]

    lines = ["# Experiment configuration", "",
             "Generated by `mbpl config-reference` from the settings classes themselves (each",
             "field's doc and limits, in `mbpl_ros/experiment.py` and the `mbpl_ros/core` modules",
             "that use them); a test keeps this file and the schema identical. Unknown keys are",
             "rejected, and so is a key given twice (naming both lines).", ""]
    lines += table(ExperimentConfig)
    lines += ["", "Each entry of `conditions` has:", ""] + table(ConditionConfig)
    lines += ["", "## Robot description", "",
              "`robot:` names a built-in robot, or describes one in place (a mapping), or gives "
              "the path",
              "of a YAML file holding such a mapping. Each controlled joint needs an effort limit "
              "(the",
              "URDF's or `limits.effort`); every other movable joint must be locked. A "
              "condition's",
              "`initial_positions` and `target` may name the robot's `initial_conditions` and "
              "`targets`.",
              "See docs/real-robot.md and mbpl_ros/config/robot_template.yaml.", ""]
    lines += table(RobotDescription, "robot.")
    lines += section(
        "Fixtures",
        "Each entry of `fixtures` is one static body made of boxes (e.g. a block with a",
        "hole: four walls and a floor; see mbpl_ros/config/peg_insertion.yaml):")
    lines += table(FixtureConfig, "fixtures[].") + table(BoxConfig, "fixtures[].boxes[].")[2:]
    lines += section(
        "camera",
        "`camera:` adds a pinhole camera (PyBullet's CPU renderer) and draws each",
        "condition's target as a sphere it sees; an image policy (`policy.image`) is",
        "trained on its images (see mbpl_ros/config/reacher_2link_vision.yaml).")
    lines += table(CameraConfig, "camera.")
    lines += section(
        "policy.image",
        "`policy.image:` makes the MDGPS policy an image policy (needs `camera:`): it sees",
        "the joint angles and speeds and the camera image, never the target. Each",
        "convolution is followed by a ReLU (no padding); the last one's channels become",
        "feature points (spatial soft-argmax), which with the joint state feed the MLP of",
        "`policy.hidden_sizes`. The S-step's other settings are the policy section's.")
    lines += table(ImagePolicySettings, "policy.image.")
    lines += section(
        "Model error",
        "`model_error` makes the simulated arm differ from the robot description that the",
        "learner sees, to measure a method under model error as on a real robot: the",
        "simulator loads a copy of the URDF with every link's mass and inertia times",
        "`mass_scale` and a point mass of `payload_kg` fixed at the end-effector point, and",
        "adds `joint_damping` and a Coulomb `joint_friction` at every controlled joint. The",
        "robot description, its rigid-body model and the initial controllers built from it",
        "keep the URDF's values. E.g. `model_error: {mass_scale: 1.3, payload_kg: 0.2}`.",
        "It changes only simulators: those of `mbpl train`, `mbpl eval` and the",
        "benchmarks, and sim_robot when it simulates the experiment's robot.")
    lines += section(
        "cost",
        "Each of `action`, `state` and `distance` holds one term (a mapping) or a list of",
        "them; the cost is the sum of every term times its `scale`. A `state` term needs",
        "exactly one of `block` and `indices`.")
    lines += (table(ActionTerm, "cost.action[].") + table(StateTerm, "cost.state[].")[2:]
              + table(DistanceTerm, "cost.distance[].")[2:] + [""])
    return "\n".join(lines)
