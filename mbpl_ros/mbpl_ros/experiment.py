"""An experiment: the robot, its conditions, the cost and the algorithm settings, from YAML.

The offline trainer (`mbpl train`) and the ROS nodes build the same objects from the same
file, so a result found offline transfers to the robot.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

import numpy as np

from mbpl_ros.config import ConfigError, describe, doc, from_dict, read_yaml
from mbpl_ros.core import controller as lg
from mbpl_ros.core.costs import build_cost
from mbpl_ros.core.lqr_flm import LqrFlmSettings, PriorSettings
from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.core.traj_opt import StepAdjustment

if TYPE_CHECKING:  # core.mdgps and core.policy import torch: only when MDGPS is run
    from mbpl_ros.core.mdgps import MdgpsSettings
from mbpl_ros.sim.robots import (BUILTIN_ROBOTS, ROBOTS, RobotDescription, RobotSpec, check_robot, describe_robot,
                                  load_robot_description, register_robot, registered_robots, robot_spec)

# initial_controller values when neither the experiment nor the robot description gives one
INITIAL_CONTROLLER_DEFAULTS = {"natural_frequency": 3.0, "damping_ratio": 1.0, "accel_noise_std": 2.0}


@dataclass
class ConditionConfig:
    initial_positions: list[float] = doc("joint angles at the start of every rollout (rad), one per joint")
    target: list[float] = doc("end-effector target point in the world frame (m), [x, y, z]")

    def __post_init__(self):
        if len(self.target) != 3:
            raise ValueError(f"target must have 3 entries [x, y, z], got {len(self.target)}")


@dataclass
class BoxConfig:
    size: list[float] = doc("full side lengths (m), [x, y, z]", gt=0.0)
    position: list[float] = doc("centre in the fixture's frame (m), [x, y, z]", [0.0, 0.0, 0.0])

    def __post_init__(self):
        if len(self.size) != 3 or len(self.position) != 3:
            raise ValueError("size and position must have 3 entries [x, y, z]")


@dataclass
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
        """The sim.scene.Fixture this entry describes."""
        from mbpl_ros.sim.scene import Box, Fixture

        boxes = tuple(Box(tuple(b.size), tuple(b.position)) for b in self.boxes)
        return Fixture(name=self.name, boxes=boxes, position=tuple(self.position),
                       relative_to=self.relative_to,
                       color=tuple(self.color), lateral_friction=self.lateral_friction)


@dataclass
class InitialControllerConfig:
    kind: Literal["pd", "lqr"] = doc("pd: PD hold of the start pose; lqr: LQR on a double integrator", "pd")
    natural_frequency: Optional[float] = doc(
        "closed-loop natural frequency ω (rad/s), in joint-acceleration terms; null: the robot "
        "description's initial_controller.natural_frequency, else 3.0", None, gt=0.0)
    damping_ratio: Optional[float] = doc(
        "closed-loop damping ratio ζ of the PD controller; null: the robot description's, else 1.0",
        None, gt=0.0)
    accel_noise_std: Optional[float] = doc(
        "exploration noise, standard deviation in joint acceleration (rad/s²); null: the robot "
        "description's, else 2.0", None, gt=0.0)
    state_cost_weight: float = doc("lqr only: weight of the joint-position error", 1.0, gt=0.0)
    action_cost_weight: float = doc("lqr only: weight of the joint acceleration", 0.01, gt=0.0)


@dataclass
class ExplorationConfig:
    smoothing: float = doc("std. dev. (time steps) of the Gaussian filter smoothing the noise; 0 = white",
                           1.0, ge=0.0)
    renormalize: bool = doc("rescale smoothed noise back to unit variance", True)


@dataclass
class PriorConfig:
    enabled: bool = doc("use the GMM prior over [x, u, x'] for the dynamics fit", True)
    max_clusters: int = doc("largest number of GMM clusters", 20, ge=1)
    min_points_per_cluster: int = doc("clusters = min(max_clusters, points // this)", 40, ge=1)
    max_rollouts: int = doc("rollouts kept in the prior's buffer (oldest dropped first)", 20, ge=1)
    strength: float = doc("scales the prior's pseudo-counts", 1.0, gt=0.0)


@dataclass
class DynamicsConfig:
    regularization: float = doc("ridge added to the [x, u] covariance of the regression", 1e-6, ge=0.0)
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig, metadata={"doc": "GMM prior"})


@dataclass
class TrajectoryOptimizationConfig:
    kl_step: float = doc("KL bound ε per time step; a trajectory's budget is kl_step · step_mult · T",
                         1.0, gt=0.0)
    initial_eta: float = doc("initial Lagrange multiplier of the KL constraint", 1.0, gt=0.0)
    min_step_mult: float = doc("lower clip of the adaptive step multiplier", 0.01, gt=0.0)
    max_step_mult: float = doc("upper clip of the adaptive step multiplier", 10.0, gt=0.0)
    min_mult_change: float = doc("lower clip of one iteration's change of the multiplier", 0.1, gt=0.0)
    max_mult_change: float = doc("upper clip of one iteration's change of the multiplier", 5.0, gt=0.0)

    def __post_init__(self):
        if self.min_step_mult > self.max_step_mult:
            raise ValueError("min_step_mult must not exceed max_step_mult")
        if self.min_mult_change > self.max_mult_change:
            raise ValueError("min_mult_change must not exceed max_mult_change")


@dataclass
class PolicyPriorConfig:
    enabled: bool = doc("use a GMM prior over [x, policy action] when linearising the policy", True)
    max_clusters: int = doc("largest number of GMM clusters", 20, ge=1)
    min_points_per_cluster: int = doc("clusters = min(max_clusters, points // this)", 20, ge=1)
    strength: float = doc("scales the prior's pseudo-counts", 1.0, gt=0.0)


@dataclass
class PolicyConfig:
    hidden_sizes: list[int] = doc("widths of the hidden layers of the policy network; [] = linear policy",
                                  [64, 64], ge=1)
    activation: Literal["relu", "tanh", "elu", "softplus", "silu"] = doc(
        "activation after each hidden layer", "relu")
    iterations: int = doc("Adam minibatch steps per S-step", 1000, ge=1)
    batch_size: int = doc("states per minibatch (capped at the states available)", 64, ge=1)
    learning_rate: float = doc("Adam step size", 1e-3, gt=0.0)
    weight_decay: float = doc("Adam L2 weight decay", 0.0, ge=0.0)
    initial_variance: float = doc("action variance of the untrained policy (N·m)²", 0.1, gt=0.0)
    seed: Optional[int] = doc("seeds the weights and minibatch order; null: the experiment's seed",
                              None, ge=0)
    device: str = doc("where the S-step trains: cpu, cuda or cuda:<index> (an error if CUDA is absent)",
                      "cpu")
    sample_on_policy: bool = doc("from iteration 2 on, draw the rollouts from the policy (with its "
                                 "variance) instead of the local controllers", False)
    linearization_regularization: float = doc("ridge of the per-step regression that linearises the policy",
                                              1e-6, gt=0.0)
    refit_normalization: bool = doc(
        "refit the policy's input normaliser at every S-step (the network's function kept), not "
        "only at the first: for tasks whose later states leave the first iteration's range", False)
    normalize_actions: bool = doc(
        "scale the policy's outputs by the mean and std. dev. of the first S-step's target "
        "actions: for actions of tens of N·m (an arm's gravity torques)", False)
    prior: PolicyPriorConfig = dataclasses.field(
        default_factory=PolicyPriorConfig, metadata={"doc": "GMM prior of the policy linearisation"})

    def __post_init__(self):
        if not (self.device in ("cpu", "cuda")
                or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device: must be cpu, cuda or cuda:<index>, got {self.device!r}")


@dataclass
class ExperimentConfig:
    robot: str = doc(f"the robot: a built-in one ({', '.join(sorted(BUILTIN_ROBOTS))}), a robot description "
                     "(a mapping: see 'Robot description' below) or the path of a YAML file holding one "
                     "(relative to the experiment file); after loading, the robot's name")
    conditions: list[ConditionConfig] = doc("start poses and targets, one local controller each")
    cost: dict = doc("cost terms: see core.costs.build_cost (action, state, distance)")
    T: int = doc("time steps per rollout", 50, ge=2)
    physics_dt: float = doc("physics time step (s)", 1.0 / 240.0, gt=0.0)
    substeps: int = doc("physics steps per control step; control period = physics_dt · substeps", 12, ge=1)
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
    dynamics: DynamicsConfig = dataclasses.field(
        default_factory=DynamicsConfig, metadata={"doc": "dynamics fit"})
    trajectory_optimization: TrajectoryOptimizationConfig = dataclasses.field(
        default_factory=TrajectoryOptimizationConfig, metadata={"doc": "KL-bounded LQR step"})
    policy: PolicyConfig = dataclasses.field(
        default_factory=PolicyConfig, metadata={"doc": "MDGPS global policy (used when algorithm: mdgps)"})
    fixtures: list[FixtureConfig] = doc("static objects of the scene, made of boxes (see "
                                        "'Fixtures' below); none by default", [])

    def __post_init__(self):
        self.robot = _robot_name(self.robot)
        if not self.conditions:
            raise ValueError("conditions: at least one condition is needed")
        spec = self.robot_spec
        n_joints = spec.n_joints
        for i, condition in enumerate(self.conditions):
            if len(condition.initial_positions) != n_joints:
                raise ValueError(f"conditions[{i}].initial_positions: {self.robot} has {n_joints} joints, "
                                 f"got {len(condition.initial_positions)} angles")
        # Unset initial-controller numbers: the robot's own, else the general defaults.
        given = {key: getattr(self.initial_controller, key) for key in INITIAL_CONTROLLER_DEFAULTS}
        resolved = {key: value if value is not None else spec.initial_controller.get(key, INITIAL_CONTROLLER_DEFAULTS[key])
                    for key, value in given.items()}
        if resolved != given:
            self.initial_controller = dataclasses.replace(self.initial_controller, **resolved)

    @property
    def robot_spec(self) -> RobotSpec:
        """The robot: a built-in one or the description this experiment registered."""
        return robot_spec(self.robot)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(n_joints=self.robot_spec.n_joints, n_points=self.robot_spec.n_points)

    @property
    def scene(self) -> tuple:
        """The fixtures (sim.scene.Fixture) of the scene."""
        return tuple(f.fixture() for f in self.fixtures)

    def make_arm(self, gui: bool = False):
        """The simulated arm of this experiment: its robot, physics_dt, substeps and fixtures."""
        from mbpl_ros.sim.arm import Arm

        return Arm(self.robot, physics_dt=self.physics_dt, substeps=self.substeps, gui=gui,
                   fixtures=self.scene)

    @property
    def control_dt(self) -> float:
        return self.physics_dt * self.substeps

    def build_cost(self):
        try:
            return build_cost(self.cost, self.layout, self.T)
        except ValueError as error:
            raise ConfigError(f"cost: {error}") from None

    def lqr_flm_settings(self) -> LqrFlmSettings:
        t, p = self.trajectory_optimization, self.dynamics.prior
        return LqrFlmSettings(
            kl_step=t.kl_step, initial_eta=t.initial_eta,
            dynamics_regularization=self.dynamics.regularization,
            prior=PriorSettings(enabled=p.enabled, max_clusters=p.max_clusters,
                                min_points_per_cluster=p.min_points_per_cluster,
                                max_rollouts=p.max_rollouts, strength=p.strength),
            step=StepAdjustment(min_mult=t.min_step_mult, max_mult=t.max_step_mult,
                                min_change=t.min_mult_change, max_change=t.max_mult_change))

    def mdgps_settings(self, seed: int | None = None) -> "MdgpsSettings":
        """MDGPS settings from the policy section; the policy seed defaults to `seed`
        (the run's seed, e.g. from the command line), else to the experiment's."""
        from mbpl_ros.core.mdgps import MdgpsSettings, PolicyPriorSettings
        from mbpl_ros.core.policy import PolicySettings

        p = self.policy
        policy_seed = p.seed if p.seed is not None else (self.seed if seed is None else seed)
        return MdgpsSettings(
            policy=PolicySettings(
                hidden_sizes=tuple(p.hidden_sizes), activation=p.activation,
                initial_variance=p.initial_variance, learning_rate=p.learning_rate,
                weight_decay=p.weight_decay, batch_size=p.batch_size, iterations=p.iterations,
                seed=policy_seed, device=p.device, refit_normalization=p.refit_normalization,
                normalize_actions=p.normalize_actions),
            policy_prior=PolicyPriorSettings(
                enabled=p.prior.enabled, max_clusters=p.prior.max_clusters,
                min_points_per_cluster=p.prior.min_points_per_cluster, strength=p.prior.strength),
            linearization_regularization=p.linearization_regularization)

    def initial_controllers(self, arm) -> list[lg.LinearGaussianController]:
        """One initial controller per condition, its gains and noise scaled by the mass
        matrix at the start pose so that they mean the same joint accelerations on any arm."""
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
                    self.T, self.control_dt, layout.position, layout.velocity, layout.dX, mass, gravity,
                    target_position=q0, state_cost_weight=ic.state_cost_weight,
                    action_cost_weight=ic.action_cost_weight, accel_noise_std=ic.accel_noise_std))
        return controllers


def _robot_name(robot: Any, base_dir: Optional[Path] = None) -> str:
    """The name of an experiment's robot, registering it first when it is described here.

    robot: a built-in or registered name; a robot description mapping; the path of a
    robot-description YAML file (relative to base_dir, default the current directory);
    or a RobotSpec. A new description is checked against its URDF once (ConfigError
    naming `robot` otherwise) and registered under its name (see sim.robots.register_robot).
    """
    if isinstance(robot, str) and not robot.endswith((".yaml", ".yml")):
        try:
            robot_spec(robot)
        except ValueError:
            described = f"; described in this process: {', '.join(registered_robots())}" if registered_robots() else ""
            raise ValueError(f"robot: unknown robot {robot!r}; known robots: {', '.join(sorted(BUILTIN_ROBOTS))}{described}; "
                             "or a robot description (a mapping with name, urdf, joints, end_effector) or "
                             "the path of a YAML file holding one") from None
        return robot
    if isinstance(robot, str):
        path = Path(robot).expanduser()
        spec = load_robot_description(path if path.is_absolute() or base_dir is None else base_dir / path)
    elif isinstance(robot, Mapping):
        spec = describe_robot(robot, base_dir, where="robot")
    elif isinstance(robot, RobotSpec):
        spec = robot
    else:
        raise ValueError(f"robot: must be a robot name, a robot description mapping or a YAML path; "
                         f"got {type(robot).__name__}")
    try:
        if ROBOTS.get(spec.name) != spec:  # not loaded before in this process
            check_robot(spec)
        return register_robot(spec).name
    except ValueError as error:
        raise ConfigError(f"robot: {error}") from None


def _named_conditions(data: dict, spec: RobotSpec) -> dict:
    """conditions whose initial_positions or target name one of the robot's
    initial_conditions or targets, with the numbers put in."""
    conditions = data.get("conditions")
    if not isinstance(conditions, list):
        return data
    resolved = []
    for i, condition in enumerate(conditions):
        if isinstance(condition, dict):
            condition = dict(condition)
            for key, table, lookup in (("initial_positions", spec.initial_conditions, spec.initial_condition),
                                       ("target", spec.targets, spec.target)):
                if isinstance(condition.get(key), str):
                    try:
                        condition[key] = [float(v) for v in lookup(condition[key])]
                    except ValueError as error:
                        raise ConfigError(f"conditions[{i}].{key}: {error}") from None
        resolved.append(condition)
    return {**data, "conditions": resolved}


def load_experiment(path: str | Path) -> ExperimentConfig:
    """An experiment file, validated. Its `robot` may describe the robot in place or name a
    description file (relative paths start at the experiment file's directory); a
    condition's initial_positions and target may name the robot's initial_conditions and
    targets. Errors are ConfigError naming the file and the key path."""
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
    """docs/configuration.md: every key of an experiment file, from the schema itself."""
    import inspect

    from mbpl_ros.core import costs

    lines = ["# Experiment configuration", "",
             "Generated by `mbpl config-reference` from the schema in `mbpl_ros/experiment.py`;",
             "a test keeps this file and the schema identical. Unknown keys are rejected, and",
             "so is a key given twice (naming both lines).", "",
             "| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in describe(ExperimentConfig):
        lines.append(f"| `{key}` | `{default}` | {text} |")
    lines += ["", "Each entry of `conditions` has:", "", "| key | meaning |", "| --- | --- |"]
    for key, _, text in describe(ConditionConfig):
        lines.append(f"| `{key}` | {text} |")
    lines += ["", "## Robot description", "",
              "`robot:` names a built-in robot, or describes one in place (a mapping), or gives the path",
              "of a YAML file holding such a mapping. Each controlled joint needs an effort limit (the",
              "URDF's or `limits.effort`); every other movable joint must be locked. A condition's",
              "`initial_positions` and `target` may name the robot's `initial_conditions` and `targets`.",
              "See docs/real-robot.md and mbpl_ros/config/robot_template.yaml.", "",
              "| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in describe(RobotDescription):
        lines.append(f"| `robot.{key}` | `{default}` | {text} |")
    lines += ["", "## Fixtures", "",
              "Each entry of `fixtures` is one static body made of boxes (e.g. a block with a",
              "hole: four walls and a floor; see mbpl_ros/config/peg_insertion.yaml):", "",
              "| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in describe(FixtureConfig):
        lines.append(f"| `fixtures[].{key}` | `{default}` | {text} |")
    for key, default, text in describe(BoxConfig):
        lines.append(f"| `fixtures[].boxes[].{key}` | `{default}` | {text} |")
    lines += ["", "## cost", "", "```", inspect.cleandoc(costs.build_cost.__doc__), "```", ""]
    return "\n".join(lines)
