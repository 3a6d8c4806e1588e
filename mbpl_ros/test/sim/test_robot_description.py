"""
Robots from URDF + YAML.

Kinematics against PyBullet's own link states, limits and overrides enforced, locked joints held,
and every bad URDF or description reported with the file, joint or key path and what exists.
"""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pybullet
import pytest
import yaml

from mbpl_ros import cli
from mbpl_ros.config import ConfigError
from mbpl_ros.experiment import load_experiment
from mbpl_ros.sim.arm import Arm
from mbpl_ros.robots import (BUILTIN_ROBOTS, ROBOTS, builtin_description, describe_robot,
                             register_robot, resolve_urdf, robot_spec)

ROOT = Path(__file__).resolve().parents[2]
PANDA_CONFIG = ROOT / "config" / "panda_reach.yaml"
PANDA_ROBOT = yaml.safe_load(PANDA_CONFIG.read_text())["robot"]
REACHER_URDF = ROOT / "urdf" / "reacher_2link.urdf"


def panda(**changes) -> dict:
    """Return the Panda description of config/panda_reach.yaml, top-level keys changed."""
    return {**copy.deepcopy(PANDA_ROBOT), **changes}


def shipped_spec(name):
    return load_experiment(PANDA_CONFIG).robot_spec if name == "panda" else robot_spec(name)


def link_frame_point(arm: Arm, link_index: int, offset) -> np.ndarray:
    """Return a point fixed in a link's URDF frame, in the world, from PyBullet's state."""
    state = arm._client.getLinkState(arm._body, link_index, computeForwardKinematics=True)
    rotation = np.array(pybullet.getMatrixFromQuaternion(state[5])).reshape(3, 3)
    return np.array(state[4]) + rotation @ np.asarray(offset, float)


@pytest.fixture(params=["reacher_2link", "kuka_iiwa", "panda"])
def shipped_arm(request):
    with Arm(shipped_spec(request.param)) as arm:
        yield arm


def random_q(arm, rng, margin=0.1):
    lower, upper = arm.position_limits.T
    return rng.uniform(lower + margin, upper - margin)


# ---------------------------------------------------------------- shipped robots
def test_forward_kinematics_is_pybullets_link_state_plus_the_offset(shipped_arm):
    rng = np.random.default_rng(0)
    link = shipped_arm._ee_link_index
    for _ in range(5):
        q = random_q(shipped_arm, rng)
        shipped_arm.reset(q)
        reference = link_frame_point(shipped_arm, link, shipped_arm.spec.ee_offset)
        # PyBullet reports the URDF frame in single precision only.
        np.testing.assert_allclose(shipped_arm.forward_kinematics(q), reference, atol=2e-6)


def test_jacobian_matches_finite_differences_of_forward_kinematics(shipped_arm):
    q = random_q(shipped_arm, np.random.default_rng(1))
    step = 1e-6
    fk = shipped_arm.forward_kinematics
    columns = [(fk(q + step * e) - fk(q - step * e)) / (2 * step)
               for e in np.eye(shipped_arm.n_joints)]
    np.testing.assert_allclose(shipped_arm.jacobian(q), np.array(columns).T, atol=1e-6)


def test_gravity_torque_holds_the_arm_still_with_locked_joints_carried(shipped_arm):
    q = random_q(shipped_arm, np.random.default_rng(2), margin=0.3)
    shipped_arm.reset(q)
    for _ in range(10):
        shipped_arm.step(np.clip(shipped_arm.gravity_torque(shipped_arm.joint_state()[0]),
                                 -shipped_arm.effort_limits, shipped_arm.effort_limits))
    np.testing.assert_allclose(shipped_arm.joint_state()[0], q, atol=2e-3)


def test_efforts_are_clamped_and_positions_and_speeds_stay_within_the_limits(shipped_arm):
    rng = np.random.default_rng(3)
    lower, upper = shipped_arm.position_limits.T
    for _ in range(30):
        command = rng.choice([-10.0, 10.0], size=shipped_arm.n_joints) * shipped_arm.effort_limits
        applied = shipped_arm.step(command)
        np.testing.assert_array_equal(applied, np.sign(command) * shipped_arm.effort_limits)
        q, qd, _ = shipped_arm.joint_state()
        assert np.all(q >= lower - 0.05) and np.all(q <= upper + 0.05)
        assert np.all(np.abs(qd) <= shipped_arm.velocity_limits * 1.05 + 1e-6)


def test_panda_locked_fingers_stay_put_under_violent_arm_motion():
    with Arm(shipped_spec("panda")) as arm:
        fingers = arm._locked_indices
        assert [arm._client.getJointInfo(arm._body, i)[1].decode() for i in fingers] == \
            ["panda_finger_joint1", "panda_finger_joint2"]
        rng = np.random.default_rng(4)
        for _ in range(40):
            arm.step(rng.uniform(-1, 1, arm.n_joints) * arm.effort_limits)
        held = [arm._client.getJointState(arm._body, i)[0] for i in fingers]
        np.testing.assert_allclose(held, [0.02, 0.02], atol=1e-4)
        assert arm.n_joints == 7 and arm.mass_matrix(arm.joint_state()[0]).shape == (7, 7)


def test_builtin_robots_are_descriptions():
    for name in ("reacher_2link", "kuka_iiwa"):
        described = describe_robot(builtin_description(name))
        assert described == BUILTIN_ROBOTS[name] == robot_spec(name)
    assert robot_spec("kuka_iiwa").damping_overrides == {"lbr_iiwa_joint_7": 0.05}


def test_urdf_references_resolve():
    assert resolve_urdf("pybullet_data://franka_panda/panda.urdf").endswith(
        "pybullet_data/franka_panda/panda.urdf")
    assert resolve_urdf("package://mbpl_ros/urdf/reacher_2link.urdf") == str(REACHER_URDF)
    assert resolve_urdf("arm.urdf", "/robots") == "/robots/arm.urdf"
    assert resolve_urdf("/abs/arm.urdf", "/robots") == "/abs/arm.urdf"
    with pytest.raises(ValueError, match="unknown scheme"):
        resolve_urdf("http://example.com/arm.urdf")


# ---------------------------------------------------------------- overrides
def test_yaml_limit_and_damping_overrides_replace_the_urdf_values():
    description = panda(name="panda_limited", limits={
        "effort": {"panda_joint1": 5.0}, "velocity": {"panda_joint2": 0.5},
        "position": {"panda_joint4": [-2.5, -1.0]}}, damping={"panda_joint7": 0.01})
    with Arm(describe_robot(description)) as arm:
        limits = arm.effort_limits
        assert limits[0] == 5.0 and limits[1] == 87.0 and limits[4] == 12.0
        assert arm.velocity_limits[1] == 0.5 and arm.velocity_limits[0] == pytest.approx(2.175)
        np.testing.assert_array_equal(arm.position_limits[3], [-2.5, -1.0])
        assert arm.joint_damping[6] == 0.01
        assert arm.step(np.full(7, 50.0))[0] == 5.0
        for _ in range(60):  # push joint 4 up, joint 2 fast
            arm.step(np.array([0.0, 87.0, 0.0, 87.0, 0.0, 0.0, 0.0]))
            q, qd, _ = arm.joint_state()
            assert q[3] <= -1.0 + 0.03 and abs(qd[1]) <= 0.5 * 1.05
        with pytest.raises(ValueError, match="outside the position limits.*panda_joint4"):
            arm.reset([0.0, 0.0, 0.0, -0.5, 0.0, 2.0, 0.8])


def test_initial_controller_defaults_come_from_the_robot_unless_the_experiment_sets_them(tmp_path):
    config = load_experiment(PANDA_CONFIG)
    ic = config.initial_controller
    assert (ic.natural_frequency, ic.damping_ratio, ic.accel_noise_std) == (6.0, 1.0, 2.0)
    data = yaml.safe_load(PANDA_CONFIG.read_text())
    data["initial_controller"] = {"kind": "pd", "accel_noise_std": 0.5}
    path = tmp_path / "quiet.yaml"
    path.write_text(yaml.safe_dump(data))
    ic = load_experiment(path).initial_controller
    assert (ic.natural_frequency, ic.accel_noise_std) == (6.0, 0.5)
    reacher = load_experiment(ROOT / "config" / "reacher_2link.yaml").initial_controller
    assert (reacher.natural_frequency, reacher.accel_noise_std) == (2.0, 2.0)


def test_named_conditions_resolve_to_the_robots_numbers():
    config = load_experiment(PANDA_CONFIG)
    spec = config.robot_spec
    assert config.conditions[0].initial_positions == list(spec.initial_condition("left"))
    assert config.conditions[0].target == list(spec.target("front"))
    with Arm(spec) as arm:  # the target is the grasp point at the documented angles
        np.testing.assert_allclose(arm.forward_kinematics([0.0, 0.2, 0.0, -1.9, 0.0, 2.1, 0.8]),
                                   spec.target("front"), atol=1e-6)


def test_a_description_file_and_a_relative_urdf_are_found_next_to_the_yaml(tmp_path):
    (tmp_path / "robots").mkdir()
    (tmp_path / "robots" / "two_link.urdf").write_text(REACHER_URDF.read_text())
    (tmp_path / "robots" / "two_link.yaml").write_text(yaml.safe_dump({
        "name": "two_link_copy", "urdf": "two_link.urdf", "joints": ["shoulder", "elbow"],
        "end_effector": {"link": "fingertip"}, "targets": {"ahead": [0.2005, 0.3411, 0.0]}}))
    experiment = yaml.safe_load((ROOT / "config" / "reacher_2link.yaml").read_text())
    experiment["robot"] = "robots/two_link.yaml"
    experiment["conditions"] = [{"initial_positions": [0.0, 0.0], "target": "ahead"}]
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    config = load_experiment(tmp_path / "experiment.yaml")
    assert config.robot == "two_link_copy" and ROBOTS["two_link_copy"] is config.robot_spec
    assert "two_link_copy" in ROBOTS and "two_link_copy" not in set(ROBOTS)  # found, not listed
    assert config.robot_spec.urdf_path == str(tmp_path / "robots" / "two_link.urdf")
    assert config.conditions[0].target == [0.2005, 0.3411, 0.0]


def test_a_name_is_registered_once():
    spec = describe_robot(panda(name="panda_once"))
    again = dataclasses.replace(spec)
    assert register_robot(spec) is register_robot(again) is robot_spec("panda_once")
    with pytest.raises(ValueError, match="'panda_once' is already described differently"):
        register_robot(dataclasses.replace(spec, ee_offset=(0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="'kuka_iiwa' is a built-in robot"):
        register_robot(dataclasses.replace(spec, name="kuka_iiwa"))


# ---------------------------------------------------------------- bad URDFs
def reacher_description(urdf, **changes) -> dict:
    return {"name": "bad_arm", "urdf": str(urdf), "joints": ["shoulder", "elbow"],
            "end_effector": {"link": "fingertip"}, **changes}


def test_a_urdf_without_an_effort_limit_needs_an_override(tmp_path):
    urdf = tmp_path / "no_effort.urdf"
    urdf.write_text(REACHER_URDF.read_text().replace('effort="1.0"', 'effort="0"'))
    with pytest.raises(ValueError, match=r"no_effort.urdf.*positive effort limit for joints "
                                         r"\['elbow'\].*"
                                         r"limits.effort"):
        Arm(describe_robot(reacher_description(urdf)))
    with Arm(describe_robot(reacher_description(urdf, limits={"effort": {"elbow": 0.5}}))) as arm:
        np.testing.assert_array_equal(arm.effort_limits, [2.0, 0.5])


@pytest.mark.parametrize("text, message", [
    ("<robot name='x'><link name='a'/>", r"broken.urdf.*not valid XML"),
    ("<sdf version='1.6'/>", r"broken.urdf.*not a URDF \(root element <sdf>"),
    ("""<robot name="free"><link name="world"/><link name="body"/>
        <joint name="free_joint" type="floating"><parent link="world"/><child link="body"/>
        </joint></robot>""",
     r"broken.urdf.*\('free_joint', 'floating'\).*floating base"),
])
def test_urdfs_that_do_not_load_name_the_file_and_the_reason(tmp_path, text, message):
    urdf = tmp_path / "broken.urdf"
    urdf.write_text(text)
    with pytest.raises(ValueError, match=message):
        Arm(describe_robot(reacher_description(urdf)))


@pytest.mark.parametrize("changes, message", [
    ({"joints": [f"panda_joint{i}" for i in range(1, 8)] + ["panda_joint9"]},
     r"joints \['panda_joint9'\] are not in the URDF; its movable joints: \['panda_joint1'"),
    ({"joints": [f"panda_joint{i}" for i in range(1, 8)] + ["panda_hand_joint"]},
     r"joints \['panda_hand_joint'\] are fixed in the URDF"),
    ({"locked_joints": {"panda_finger_joint1": 0.02}},
     r"must be exactly the movable joints of the URDF.*lock or control \['panda_finger_joint2'\]"),
    ({"locked_joints": {"panda_finger_joint1": 0.02, "panda_finger_joint2": 0.5}},
     r"locked joint 'panda_finger_joint2' at 0.5 is outside its URDF limits \[0.0, 0.04\]"),
    ({"end_effector": {"link": "panda_gripper"}},
     r"ee_link 'panda_gripper' is not a link of the URDF .*panda.urdf; links: .*'panda_hand'"),
    ({"joints": [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"],
      "locked_joints": {"panda_finger_joint2": 0.02}, "end_effector": {"link": "panda_link7"}},
     r"controlled joints \['panda_finger_joint1'\] do not move the end-effector link "
     r"'panda_link7'"),
])
def test_joints_and_links_that_do_not_fit_the_urdf_are_named_with_what_exists(changes, message):
    with pytest.raises(ValueError, match=message):
        Arm(describe_robot(panda(name="bad_panda", initial_conditions={}, **changes)))


# ---------------------------------------------------------------- bad YAML
@pytest.mark.parametrize("changes, message", [
    ({"name": None}, r"robot.name: must be a string"),
    ({"name": "my arm"}, r"robot: name: 'my arm' must start with a letter"),
    ({"urdf": "ftp://x/y.urdf"}, r"robot.urdf: 'ftp://x/y.urdf' has an unknown scheme"),
    ({"urdf": "missing/arm.urdf"}, r"robot.urdf: 'missing/arm.urdf' is not a file \(looked at "
                                   r".*missing/arm.urdf\)"),
    ({"joints": []}, r"robot.joints: must be distinct joint names"),
    ({"end_effector": {"offset": [0, 0, 0.1]}},
     r"robot.end_effector.link: required key is missing"),
    ({"end_effector": {"link": "panda_hand", "offset": [0, 0]}},
     r"robot.end_effector: offset: must have 3"),
    ({"limits": {"effort": {"panda_joint8": 10.0}}},
     r"robot.limits.effort.panda_joint8: 'panda_joint8' is not one of the controlled joints "
     r"\['panda_joint1'"),
    ({"limits": {"effort": {"panda_joint1": -1.0}}},
     r"robot.limits.effort.panda_joint1: must be > 0"),
    ({"limits": {"torque": {}}}, r"robot.limits: unknown key 'torque'; allowed keys: effort, "
                                 r"position, velocity"),
    ({"limits": {"position": {"panda_joint1": [1.0, -1.0]}}},
     r"robot.limits.position.panda_joint1: lower must be below upper"),
    ({"damping": {"panda_joint7": "low"}}, r"robot.damping.panda_joint7: must be a finite number"),
    ({"locked_joints": {"panda_joint1": 0.0}},
     r"robot.locked_joints: \['panda_joint1'\] are also in robot.joints"),
    ({"initial_conditions": {"home": [0.0, 0.0]}},
     r"robot.initial_conditions.home: must be a list of 7 numbers"),
    ({"targets": {"front": [0.5, 0.0]}}, r"robot.targets.front: must be a list of 3 numbers"),
    ({"initial_controller": {"natural_frequency": 0.0}},
     r"robot.initial_controller.natural_frequency: must be > 0"),
    ({"gripper": "closed"}, r"robot: unknown key 'gripper'; allowed keys: base_position, damping, "
                            r"end_effector"),
])
def test_bad_descriptions_name_the_key_path(changes, message):
    with pytest.raises(ConfigError, match=message):
        describe_robot(panda(**changes))


@pytest.mark.parametrize("robot, conditions, message", [
    ({**PANDA_ROBOT, "name": "kuka_iiwa"}, None,
     r"robot: robot name 'kuka_iiwa' is a built-in robot"),
    ({**PANDA_ROBOT, "joints": ["panda_joint1"], "initial_conditions": {}, "limits": {}}, None,
     r"robot: robot 'panda' .*must be exactly the movable joints .*lock or control "
     r"\['panda_joint2'"),
    ({k: v for k, v in PANDA_ROBOT.items() if k != "urdf"}, None,
     r"robot.urdf: required key is missing"),
    ("ur5", None, r"robot: unknown robot 'ur5'; known robots: kuka_iiwa, reacher_2link"),
    ("robots/absent.yaml", None, r".*robots/absent.yaml: no such robot description file"),
    (PANDA_ROBOT, [{"initial_positions": "nowhere", "target": "front"}],
     r"conditions\[0\].initial_positions: unknown initial condition 'nowhere' for robot 'panda'; "
     r"known: \['home'"),
    (PANDA_ROBOT, [{"initial_positions": "home", "target": "behind"}],
     r"conditions\[0\].target: unknown target 'behind' for robot 'panda'; known: \['front'\]"),
])
def test_bad_experiment_robots_name_the_file_and_key(tmp_path, robot, conditions, message):
    data = yaml.safe_load(PANDA_CONFIG.read_text())
    data["robot"] = robot
    if conditions is not None:
        data["conditions"] = conditions
    path = tmp_path / "bad_experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad_experiment.yaml: " + message):
        load_experiment(path)


# ---------------------------------------------------------------- a new arm from the template
def test_a_new_arm_written_from_the_template_alone_loads_and_runs_a_first_trial(tmp_path, capsys):
    """
    Run the xArm 6 of pybullet_data, described from config/robot_template.yaml.

    It fills in the template's robot section and conditions; every other setting is the template's.
    """
    experiment = yaml.safe_load((ROOT / "config" / "robot_template.yaml").read_text())
    robot = experiment["robot"]
    robot.update(
        name="xarm6_from_template", urdf="pybullet_data://xarm/xarm6_robot.urdf",
        joints=[f"joint{i}" for i in range(1, 7)], locked_joints={},
        end_effector={"link": "link6", "offset": [0.0, 0.0, 0.0]},
        limits={"effort": {"joint1": 30.0, "joint2": 30.0, "joint3": 30.0}, "velocity": {},
                "position": {}},
        # The URDF's damping 1.0 on a wrist of inertia ~1e-4 kg·m² diverges at 240 Hz.
        damping={"joint4": 0.05, "joint5": 0.05, "joint6": 0.005},
        initial_conditions={"home": [0.0, -0.5, -0.5, 0.0, 1.0, 0.0]},
        targets={"reach": [0.35, 0.05, 0.30]})
    path = tmp_path / "xarm6.yaml"
    path.write_text(yaml.safe_dump(experiment))
    output = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), "--output", str(output), "--iterations",
                     "1"]) == 0
    assert "after 1 iterations" in capsys.readouterr().out
    rows = [yaml.safe_load(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1]
    start_distance = np.linalg.norm(np.array([0.316631, 0.0, 0.325482]) - [0.35, 0.05, 0.30])
    assert rows[0]["final_distance_m"][0] < start_distance  # the PD hold keeps the arm near home
