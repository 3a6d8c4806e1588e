"""The peg-in-hole task: its robot, block, cost and held-out holes (seconds, not minutes)."""
import dataclasses
import io
from pathlib import Path

import numpy as np
import pybullet
import pytest

from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import HELD_OUT_MIN_SEPARATION_M, TrainingRun, held_out_conditions
from mbpl_ros.core.rollouts import final_distance
from mbpl_ros.robot_model import JointStateToState
from mbpl_ros.sim.rollout import observe

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "peg_insertion.yaml"
MDGPS_CONFIG = ROOT / "config" / "peg_insertion_mdgps.yaml"
PEG_RADIUS, PEG_LENGTH = 0.01, 0.12


@pytest.fixture(scope="module")
def config():
    return load_experiment(CONFIG)


@pytest.fixture
def arm(config):
    with config.make_arm() as arm:
        yield arm


def hole_geometry(config):
    """
    Return (width, depth) of the hole of the config's block, read off its boxes.

    They are the free square
    around the frame's z axis above the floor, and the walls' height.
    """
    boxes = config.scene[0].boxes
    walls = [b for b in boxes if b.lower[2] >= -1e-9]
    floor_top = max(b.upper[2] for b in boxes if b.lower[2] < -1e-9)
    width = 2 * min(min(abs(b.lower[axis]), abs(b.upper[axis]))
                    for b in walls for axis in (0, 1) if b.lower[axis] * b.upper[axis] > 0)
    depth = min(b.upper[2] for b in walls) - floor_top
    return width, depth


def ray_hits(arm, xy_points, z_from=1.0, z_to=0.0):
    """World z where vertical rays down through (x, y) points first hit a fixture."""
    client = arm._live_client()
    starts = [[x, y, z_from] for x, y in xy_points]
    ends = [[x, y, z_to] for x, y in xy_points]
    hits = client.rayTestBatch(starts, ends)
    fixtures = set(arm.scene.bodies)
    return [hit[3][2] if hit[0] in fixtures else None for hit in hits]


def drive_tip(arm, spec, goal_tip, seconds, approach_height=0.0, gain=300.0, damping=30.0):
    """
    Drive both peg points to their targets for goal_tip (3,) by a task-space PD.

    The PD is gravity compensated, at the arm's control rate; the first half of the time the goals
    are `approach_height` higher. Returns the deepest fixture penetration seen (m).
    """
    steps = int(round(seconds / arm.control_dt))
    deepest = 0.0
    goals = spec.point_targets(goal_tip)
    client = arm._live_client()
    for t in range(steps):
        q, qd, _ = arm.joint_state()
        points, velocities = arm.points_kinematics(q, qd)
        effort = arm.gravity_torque(q) - 2.0 * qd
        lift = np.array([0.0, 0.0, approach_height if t < steps // 2 else 0.0])
        for offset, point, velocity, goal in zip(spec.point_offsets, points, velocities, goals):
            zeros = [0.0] * 7
            jacobian = np.array(client.calculateJacobian(
                arm._body, arm._ee_link_index, offset.tolist(), q.tolist(), zeros, zeros)[0])
            effort = effort + jacobian.T @ (gain * (goal + lift - point) - damping * velocity)
        arm.step(effort)
        deepest = max(deepest, arm.fixture_penetration())
    return deepest


# ---------------------------------------------------------------- configuration
def test_peg_configs_load_a_described_robot_with_two_peg_points(config):
    spec = config.robot_spec
    assert spec.name == "kuka_iiwa_peg" and spec.n_joints == 7 and spec.ee_link == "peg"
    assert config.layout.n_points == 2 and config.layout.dX == 2 * 7 + 6 * 2
    np.testing.assert_allclose(spec.point_target_offsets, [[0, 0, 0], [0, 0, PEG_LENGTH]])
    assert len(config.conditions) >= 4 and config.T == 100 and config.rollouts_per_condition <= 5
    assert config.success_distance_m <= 0.01
    targets = np.array([c.target for c in config.conditions])
    assert len(np.unique(targets, axis=0)) == len(targets)        # a hole position per condition
    mdgps = load_experiment(MDGPS_CONFIG)
    assert mdgps.algorithm == "mdgps" and len(mdgps.conditions) >= 9
    assert mdgps.robot_spec == spec and mdgps.fixtures == config.fixtures


def test_a_bad_fixture_is_named(tmp_path):
    text = CONFIG.read_text().replace("relative_to: target", "relative_to: hole")
    robot = (ROOT / "config" / "robot_kuka_iiwa_peg.yaml").read_text()
    (tmp_path / "robot_kuka_iiwa_peg.yaml").write_text(robot)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"fixtures\[0\]\.relative_to.*'world', 'target'"):
        load_experiment(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- geometry
def test_the_peg_is_a_rigid_link_of_the_urdf_with_a_few_mm_clearance_in_a_deep_hole(config, arm):
    client = arm._live_client()
    (shape,) = client.getCollisionShapeData(arm._body, arm._ee_link_index)
    # PyBullet loads a URDF cylinder as its convex hull: a mesh of the cylinder's size.
    assert shape[2] in (pybullet.GEOM_CYLINDER, pybullet.GEOM_MESH)
    assert client.getJointInfo(arm._body, arm._ee_link_index)[2] == pybullet.JOINT_FIXED
    arm.reset(np.asarray(config.conditions[0].initial_positions))     # the peg upright
    lower, upper = (np.array(corner) for corner in client.getAABB(arm._body, arm._ee_link_index))
    # (the box PyBullet reports includes its contact margin, 2 mm on each side)
    np.testing.assert_allclose(upper - lower, [2 * PEG_RADIUS, 2 * PEG_RADIUS, PEG_LENGTH],
                               atol=0.005)
    width, depth = hole_geometry(config)
    assert width / 2 - PEG_RADIUS == pytest.approx(0.0025)
    assert depth >= 0.04
    # The clearance as the collision detection sees it: the upright peg 3 cm down the hole's
    # centre line is a few mm from the walls all round.
    tip = arm.ee_points()[0]
    arm.reset(np.asarray(config.conditions[0].initial_positions), target=tip - [0.0, 0.0, 0.03])
    closest = client.getClosestPoints(arm._body, arm.scene.bodies[0], 0.02,
                                      linkIndexA=arm._ee_link_index)
    gaps = [point[8] for point in closest]
    assert gaps and 0.001 <= min(gaps) <= 0.005, f"clearance {1000 * min(gaps, default=0):.2f} mm"
    assert depth >= 0.04


def test_the_block_is_placed_per_condition_with_the_hole_bottom_at_the_target(config, arm):
    width, depth = hole_geometry(config)
    for condition in config.conditions[:2]:
        arm.reset(np.asarray(condition.initial_positions), target=condition.target)
        x, y, z = condition.target
        # From below the peg, so that the rays meet the block first.
        rays = [(x, y), (x + width / 2 + 0.002, y), (x, y - width / 2 - 0.02)]
        inside, rim, beside = ray_hits(arm, rays, z_from=z + depth + 0.03)
        assert inside == pytest.approx(z, abs=1e-6)                  # down the hole to its bottom
        assert rim == pytest.approx(z + depth, abs=1e-6)
        assert beside == pytest.approx(z + depth, abs=1e-6)


# ---------------------------------------------------------------- contact
def test_the_peg_pressed_onto_the_block_does_not_pass_through_it(config):
    """
    Push the peg at a goal 3 cm inside the block beside the hole, with hundreds of N/m.

    The peg stays on the block's top: penetration below 2 mm at every control step.
    """
    fast = dataclasses.replace(config, substeps=1)     # 240 Hz task-space PD
    width, depth = hole_geometry(config)
    with fast.make_arm() as arm:
        condition = config.conditions[0]
        arm.reset(np.asarray(condition.initial_positions), target=condition.target)
        beside = np.asarray(condition.target) + [width / 2 + 0.015, 0.0, depth - 0.03]
        deepest = drive_tip(arm, config.robot_spec, beside, seconds=2.5, approach_height=0.06)
        tip = arm.ee_points()[0]
    assert deepest < 0.002
    assert tip[2] > condition.target[2] + depth - 0.002


def test_a_peg_guided_over_the_hole_goes_in_to_the_bottom(config):
    fast = dataclasses.replace(config, substeps=1)
    with fast.make_arm() as arm:
        condition = config.conditions[0]
        arm.reset(np.asarray(condition.initial_positions), target=condition.target)
        deepest = drive_tip(arm, config.robot_spec, np.asarray(condition.target), seconds=2.5,
                            approach_height=0.08)
        x = observe(arm, config.layout, condition.target)
    assert final_distance(x[None], config.layout) < config.success_distance_m
    assert deepest < 0.002


# ---------------------------------------------------------------- cost and state
def test_the_state_and_cost_see_both_peg_points(config, arm):
    condition = config.conditions[1]
    q0 = np.asarray(condition.initial_positions)
    arm.reset(q0, target=condition.target)
    x = observe(arm, config.layout, condition.target)
    offsets = x[config.layout.ee_offset].reshape(2, 3)
    expected = arm.ee_points() - config.robot_spec.point_targets(condition.target)
    np.testing.assert_allclose(offsets, expected, atol=1e-9)
    with JointStateToState(config.robot_spec) as to_state:
        np.testing.assert_allclose(to_state(q0, np.zeros(7), condition.target), x, atol=1e-12)
    # The tip on its target, the top off its own: inserted by the success test (the tip),
    # but the cost still charges the top's offset.
    X = np.zeros((1, config.T, config.layout.dX))
    X[:, :, config.layout.ee_offset[3:]] = [0.03, 0.0, 0.0]
    cost = config.build_cost()
    assert final_distance(X[0], config.layout) == 0.0
    assert cost.evaluate(X, np.zeros((1, config.T, 7))).l.sum() > cost.evaluate(
        np.zeros_like(X), np.zeros((1, config.T, 7))).l.sum() + 1.0


# ---------------------------------------------------------------- held out, one iteration
def test_held_out_holes_lie_in_the_training_box_away_from_the_training_holes():
    mdgps = load_experiment(MDGPS_CONFIG)
    starts, targets = held_out_conditions(mdgps, 20, seed=0)
    training = np.array([c.target for c in mdgps.conditions])
    assert starts.shape == (20, 7) and targets.shape == (20, 3)
    start = mdgps.conditions[0].initial_positions
    np.testing.assert_array_equal(starts, np.repeat([start], 20, axis=0))
    assert np.all(targets >= training.min(axis=0)) and np.all(targets <= training.max(axis=0))
    gaps = np.linalg.norm(targets[:, None] - training[None], axis=2)
    assert gaps.min() >= HELD_OUT_MIN_SEPARATION_M
    assert len(np.unique(targets[:, :2], axis=0)) == 20


def test_one_short_lqr_flm_iteration_runs_on_the_peg_task(config, tmp_path):
    short = dataclasses.replace(config, T=10, rollouts_per_condition=2,
                                conditions=config.conditions[:2])
    metrics = TrainingRun(short, tmp_path, seed=0, log=io.StringIO()).run(1)
    assert [row["iteration"] for row in metrics] == [0, 1]
    assert metrics[1]["rollouts"] == 4 and len(metrics[1]["final_distance_m"]) == 2
    assert all(np.isfinite(metrics[1]["final_distance_m"]))


def test_a_bad_extra_point_is_named():
    from mbpl_ros.config import ConfigError
    from mbpl_ros.robots import describe_robot

    description = {"name": "peg_check", "urdf": "package://mbpl_ros/urdf/kuka_iiwa_peg.urdf",
                   "joints": [f"lbr_iiwa_joint_{i}" for i in range(1, 8)],
                   "end_effector": {"link": "peg", "extra_points": [{"offset": [0, 0]}]}}
    with pytest.raises(ConfigError, match=r"robot\.end_effector\.extra_points\[0\]"):
        describe_robot(description)
