"""`mbpl replay` renders a run off-screen into a GIF that shows the arm, and `mbpl eval`
measures an LQR-FLM run's controllers and names a wrong file for what it is."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mbpl_ros.experiment import load_experiment
from mbpl_ros.offline import TrainingRun
from mbpl_ros.runs import write_run_description
from mbpl_ros.sim import view
from mbpl_ros.sim.arm import Arm

ROOT = Path(__file__).resolve().parents[1]
PYTHON = (
    str(ROOT.parent / ".venv" / "bin" / "python")
    if (ROOT.parent / ".venv" / "bin" / "python").exists()
    else sys.executable
)
WIDTH, HEIGHT = 160, 120


def mbpl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [PYTHON, "-m", "mbpl_ros.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def trained_run(tmp_path: Path, name: str, **changes) -> tuple[Path, Path]:
    """A one-iteration LQR-FLM run of config/<name>.yaml, made smaller by `changes`."""
    data = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    data.update(changes)
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(data))
    output = tmp_path / "run"
    TrainingRun(load_experiment(config_file), output, data.get("seed", 0), log=io.StringIO()).run(
        1
    )
    write_run_description(output, config_file, ["test"])
    return config_file, output


def projected(camera: view.Camera, points: np.ndarray) -> np.ndarray:
    """Pixel (column, row) of world points (P, 3) in a WIDTH × HEIGHT frame of `camera`."""
    import pybullet

    V = (
        np.array(
            pybullet.computeViewMatrixFromYawPitchRoll(
                list(camera.target), camera.distance, camera.yaw, camera.pitch, 0.0, 2
            )
        )
        .reshape(4, 4)
        .T
    )
    P = (
        np.array(pybullet.computeProjectionMatrixFOV(camera.fov, WIDTH / HEIGHT, 0.01, 100.0))
        .reshape(4, 4)
        .T
    )
    clip = (P @ V @ np.c_[points, np.ones(len(points))].T).T
    ndc = clip[:, :2] / clip[:, 3:4]
    return np.c_[(ndc[:, 0] + 1) / 2 * WIDTH, (1 - ndc[:, 1]) / 2 * HEIGHT]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "name, changes",
    [
        ("reacher_2link", dict(T=12, rollouts_per_condition=2)),
        ("kuka_reach", dict(T=10, rollouts_per_condition=2, conditions=None)),
    ],
)
def test_replay_writes_a_gif_that_shows_the_arm(tmp_path, name, changes):
    if "conditions" in changes:  # two of the KUKA's four starts
        changes["conditions"] = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())[
            "conditions"
        ][:2]
    config_file, run = trained_run(tmp_path, name, **changes)
    config = load_experiment(config_file)
    M, T = len(config.conditions), config.T
    gif = tmp_path / "replay.gif"
    result = mbpl(
        "replay",
        str(run),
        "--output",
        str(gif),
        "--width",
        str(WIDTH),
        "--height",
        str(HEIGHT),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m, distance in enumerate(metrics[-1]["final_distance_m"]):  # the same noise-free rollouts
        assert f"condition {m}: final distance {100 * distance:.2f} cm" in result.stderr

    image = Image.open(gif)
    assert image.n_frames == T and image.size == (
        M * WIDTH,
        HEIGHT,
    )  # one step a frame, tiles side by side
    image.seek(0)
    first = np.asarray(image.convert("RGB")).astype(int)
    # Where the arm is at its start pose, the frame is not background.
    with Arm(config.robot) as arm:
        camera = view.frame_arm(
            arm,
            [c.initial_positions for c in config.conditions],
            [c.target for c in config.conditions],
        )
        for m, condition in enumerate(config.conditions):
            arm.reset(condition.initial_positions)
            links = [
                np.array(arm.client.getLinkState(arm.body, i, computeForwardKinematics=True)[4])
                for i in range(arm.client.getNumJoints(arm.body))
            ]
            pixels = projected(camera, np.array(links + [arm.ee_position()]))
            tile = first[:, m * WIDTH : (m + 1) * WIDTH]
            low = np.clip(pixels.min(axis=0).astype(int) - 2, 0, None)
            high = np.minimum(pixels.max(axis=0).astype(int) + 3, [WIDTH, HEIGHT])
            region = tile[low[1] : high[1], low[0] : high[0]]
            differs = np.abs(region - np.array(view.BACKGROUND)).sum(axis=2) > 30
            assert region.size and differs.mean() > 0.05, (name, m, differs.mean())
            corner = tile[-10:, -10:]  # away from the arm: the plain background
            assert np.all(np.abs(corner - np.array(view.BACKGROUND)).sum(axis=2) <= 30)
    # The arm moves: the last frame differs from the first.
    image.seek(T - 1)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - first).sum() > 0


@pytest.fixture(scope="module")
def reacher_run(tmp_path_factory):
    return trained_run(
        tmp_path_factory.mktemp("reacher"), "reacher_2link", T=12, rollouts_per_condition=2
    )


@pytest.mark.timeout(120)
def test_eval_measures_the_controllers_of_an_lqr_flm_run(reacher_run, tmp_path):
    _, run = reacher_run
    result = mbpl("eval", "--run", str(run), "--output", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval_controllers.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert report["iteration"] == 1 and report["algorithm"] == "lqr_flm"
    assert [row["final_distance_m"] for row in report["conditions"]] == metrics[-1][
        "final_distance_m"
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "given, says",
    [
        (
            "checkpoint_0001.pkl",
            r"is an mbpl_ros checkpoint \(iteration 1, LqrFlm\); expected an exported policy"
            r".*mbpl eval --run ",
        ),
        ("metrics.jsonl", r"is a JSON file; expected an exported policy"),
        (".", r"is a run directory \(checkpoints\); expected an exported policy"),
    ],
)
def test_eval_of_a_wrong_file_says_what_it_is(reacher_run, tmp_path, given, says):
    config_file, run = reacher_run
    result = mbpl("eval", "--policy", str(run / given), "--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    import re

    assert re.search(says, result.stderr), result.stderr
    assert "corrupted" not in result.stderr


@pytest.mark.timeout(120)
def test_replay_refuses_what_it_cannot_do_before_rendering(reacher_run, tmp_path):
    _, run = reacher_run
    result = mbpl(
        "replay", str(run), "--policy", "--output", str(tmp_path / "x.gif"), cwd=tmp_path
    )
    assert (
        result.returncode == 2
        and "has no policy.pt: only an mdgps run exports one" in result.stderr
    )
    result = mbpl(
        "replay", str(run), "--condition", "7", "--output", str(tmp_path / "x.gif"), cwd=tmp_path
    )
    assert (
        result.returncode == 2
        and "--condition 7: the experiment has conditions 0 .. 3" in result.stderr
    )
    result = mbpl("replay", str(run), "--output", str(tmp_path / "x.png"), cwd=tmp_path)
    assert result.returncode == 2 and "allowed: a .gif or .mp4 file name" in result.stderr
    if shutil.which("ffmpeg") is None:
        result = mbpl("replay", str(run), "--output", str(tmp_path / "x.mp4"), cwd=tmp_path)
        assert result.returncode == 2 and "writing mp4 needs ffmpeg" in result.stderr
    assert not list(tmp_path.glob("x.*"))


def test_markers_and_frames_leave_the_dynamics_alone():
    """What --gui adds to a training arm (view.prepare: markers, camera) and rendering change
    no rollout: the same efforts give bit-identical states with and without them."""
    config = load_experiment(ROOT / "config" / "kuka_reach.yaml")
    efforts = np.random.default_rng(0).uniform(-5.0, 5.0, (15, 7))

    def states(viewed: bool) -> np.ndarray:
        with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
            if viewed:
                starts = [c.initial_positions for c in config.conditions]
                camera, markers = view.prepare(arm, starts, [c.target for c in config.conditions])
            arm.reset(config.conditions[0].initial_positions)
            out = []
            for u in efforts:
                arm.step(u)
                if viewed:
                    markers.follow()
                    view.render(arm, camera, 64, 48)
                out.append(np.concatenate(arm.joint_state()[:2]))
            return np.array(out)

    np.testing.assert_array_equal(states(True), states(False))


@pytest.mark.timeout(180)
def test_replay_of_an_exported_policy_from_held_out_starts(reacher_run, tmp_path):
    """--policy --held-out K: K tiles of the policy (here an untrained network: what is tested
    is the replay, not the learning), from the starts `mbpl eval` draws."""
    import torch

    from mbpl_ros.core.policy.deploy import export_torchscript
    from mbpl_ros.core.policy.network import Policy
    from mbpl_ros.offline import held_out_conditions

    config_file, trained = reacher_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = load_experiment(config_file)
    torch.manual_seed(0)
    network = Policy(config.layout.dX, config.layout.dU, hidden_sizes=(8,))
    export_torchscript(network, run / "policy.pt")
    gif = tmp_path / "policy.gif"
    result = mbpl("replay", str(run), "--policy", "--held-out", "3", "--sequence", "--output",
                  str(gif), "--width", str(WIDTH), "--height", str(HEIGHT), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the exported policy from 3 held-out starts (seed 0)" in result.stderr
    image = Image.open(gif)
    assert image.n_frames == 3 * config.T and image.size == (WIDTH, HEIGHT)   # in sequence
    starts, _ = held_out_conditions(config, 3, 0)
    assert len(starts) == 3
    assert all(f"held-out {k}: final distance" in result.stderr for k in range(3))
