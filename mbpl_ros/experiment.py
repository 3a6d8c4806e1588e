"""An experiment: the robot, its conditions, the cost and the algorithm settings, from YAML.

The offline trainer (`mbpl train`) and the ROS nodes build the same objects from the same
file, so a result found offline transfers to the robot.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

from mbpl_ros.config import ConfigError, describe, doc, load_yaml
from mbpl_ros.core import controller as lg
from mbpl_ros.core.costs import build_cost
from mbpl_ros.core.lqr_flm import LqrFlmSettings, PriorSettings
from mbpl_ros.core.rollouts import StateLayout
from mbpl_ros.core.traj_opt import StepAdjustment

if TYPE_CHECKING:  # core.mdgps and core.policy import torch: only when MDGPS is run
    from mbpl_ros.core.mdgps import MdgpsSettings
from mbpl_ros.sim.robots import ROBOTS


@dataclass
class ConditionConfig:
    initial_positions: list[float] = doc("joint angles at the start of every rollout (rad), one per joint")
    target: list[float] = doc("end-effector target point in the world frame (m), [x, y, z]")

    def __post_init__(self):
        if len(self.target) != 3:
            raise ValueError(f"target must have 3 entries [x, y, z], got {len(self.target)}")


@dataclass
class InitialControllerConfig:
    kind: Literal["pd", "lqr"] = doc("pd: PD hold of the start pose; lqr: LQR on a double integrator", "pd")
    natural_frequency: float = doc("closed-loop natural frequency ω (rad/s), in joint-acceleration terms",
                                   3.0, gt=0.0)
    damping_ratio: float = doc("closed-loop damping ratio ζ of the PD controller", 1.0, gt=0.0)
    accel_noise_std: float = doc("exploration noise, standard deviation in joint acceleration (rad/s²)",
                                 2.0, gt=0.0)
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
    prior: PolicyPriorConfig = dataclasses.field(
        default_factory=PolicyPriorConfig, metadata={"doc": "GMM prior of the policy linearisation"})

    def __post_init__(self):
        if not (self.device in ("cpu", "cuda")
                or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device: must be cpu, cuda or cuda:<index>, got {self.device!r}")


@dataclass
class ExperimentConfig:
    robot: str = doc(f"robot to simulate: one of {', '.join(sorted(ROBOTS))}")
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

    def __post_init__(self):
        if self.robot not in ROBOTS:
            raise ValueError(f"robot: unknown robot {self.robot!r}; known robots: {', '.join(sorted(ROBOTS))}")
        if not self.conditions:
            raise ValueError("conditions: at least one condition is needed")
        n_joints = len(ROBOTS[self.robot].joint_names)
        for i, condition in enumerate(self.conditions):
            if len(condition.initial_positions) != n_joints:
                raise ValueError(f"conditions[{i}].initial_positions: {self.robot} has {n_joints} joints, "
                                 f"got {len(condition.initial_positions)} angles")

    @property
    def layout(self) -> StateLayout:
        return StateLayout(n_joints=len(ROBOTS[self.robot].joint_names), n_points=1)

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
                seed=policy_seed, device=p.device),
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


def load_experiment(path: str | Path) -> ExperimentConfig:
    return load_yaml(ExperimentConfig, path)


def configuration_reference() -> str:
    """docs/configuration.md: every key of an experiment file, from the schema itself."""
    import inspect

    from mbpl_ros.core import costs

    lines = ["# Experiment configuration", "",
             "Generated by `mbpl config-reference` from the schema in `mbpl_ros/experiment.py`;",
             "a test keeps this file and the schema identical. Unknown keys are rejected.", "",
             "| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in describe(ExperimentConfig):
        lines.append(f"| `{key}` | `{default}` | {text} |")
    lines += ["", "Each entry of `conditions` has:", "", "| key | meaning |", "| --- | --- |"]
    for key, _, text in describe(ConditionConfig):
        lines.append(f"| `{key}` | {text} |")
    lines += ["", "## cost", "", "```", inspect.cleandoc(costs.build_cost.__doc__), "```", ""]
    return "\n".join(lines)
