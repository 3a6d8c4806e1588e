"""
`mbpl replay`: watch what a run learned.

Noise-free rollouts of a run's local controllers (from a checkpoint) or of its exported
policy (from the training starts or held-out ones), drawn off-screen frame by frame with
PyBullet's TinyRenderer (mbpl_ros.sim.view) and written as a GIF (Pillow) or an mp4
(ffmpeg, when one is installed). Each episode is one tile with its label, time and the
end-effector's distance to the target; tiles stand side by side (up to four a row) or
follow one another. With gui the PyBullet window shows the same camera and markers, in
real time. An experiment with a camera (an image policy's) shows beside each episode's
scene what that camera saw at each step, the image the policy acted on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, TextIO

import numpy as np

from mbpl_ros.experiment import ExperimentConfig
from mbpl_ros.runs import RunError, run_checkpoint, run_config
from mbpl_ros.sim import view
from mbpl_ros.sim.rollout import Act, observe

FORMATS = (".gif", ".mp4")
TILES_PER_ROW = 4


@dataclass
class Episode:
    """One noise-free rollout to show: its label, start (J,), target (3,) and executor."""

    label: str
    initial_positions: np.ndarray
    target: np.ndarray
    act: Act
    frames: List[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 each
    distances: List[float] = field(default_factory=list)  # (T,) m, of the state at each step
    sees_image: bool = False   # act(t, x, image): an image policy
    camera_frames: List[np.ndarray] = field(default_factory=list)  # the experiment camera's


def episodes_of_run(
    run: Path,
    config_path=None,
    *,
    iteration: Optional[int] = None,
    condition: Optional[int] = None,
    policy: bool = False,
    held_out: Optional[int] = None,
    held_out_seed: int = 0,
) -> tuple[ExperimentConfig, List[Episode], str]:
    """
    Return the experiment, the episodes to replay and a description of what they show.

    Controllers: those of checkpoint `iteration` (default the newest), one episode per
    training condition (or only `condition`). policy: RUN/policy.pt from the training
    starts, or from `held_out` held-out starts (offline.held_out_conditions).
    """
    from mbpl_ros.offline import held_out_conditions

    run = Path(run)
    config = run_config(run, config_path)
    M = len(config.conditions)
    if condition is not None and not 0 <= condition < M:
        raise RunError(f"--condition {condition}: the experiment has conditions 0 .. {M - 1}")
    if held_out is not None and not policy:
        raise RunError(
            "--held-out needs --policy: a local controller is made for its own condition's start"
        )
    if held_out is not None and condition is not None:
        raise RunError("--held-out and --condition exclude each other")
    zero = np.zeros(config.layout.dU)
    if not policy:
        checkpoint, config = run_checkpoint(run, config, iteration)
        chosen = range(M) if condition is None else [condition]
        episodes = [
            Episode(
                f"condition {m}",
                np.asarray(config.conditions[m].initial_positions, float),
                np.asarray(config.conditions[m].target, float),
                lambda t, x, c=checkpoint.algorithm.controllers[m]: c.act(t, x, zero),
            )
            for m in chosen
        ]
        return (
            config,
            episodes,
            f"controllers of iteration {checkpoint.iteration} ({checkpoint.path.name})",
        )
    if iteration is not None:
        raise RunError(
            "--iteration chooses a checkpoint's controllers; the exported policy (--policy) is "
            "the final one"
        )
    path = run / "policy.pt"
    if not path.is_file():
        raise RunError(
            f"{run} has no policy.pt: only an mdgps run exports one, when it finishes; replay the "
            "controllers instead (without --policy)"
        )
    from mbpl_ros.core.policy.deploy import load_exported_policy

    exported = load_exported_policy(path)
    if (exported.dX, exported.dU) != (config.layout.dX, config.layout.dU):
        raise RunError(
            f"{path}: the policy maps dX={exported.dX} to dU={exported.dU}, but {config.robot} "
            f"has dX={config.layout.dX}, dU={config.layout.dU}"
        )

    def act(t, x, image=None):
        return np.asarray(exported(x) if image is None else exported(x, image), dtype=float)

    sees_image = exported.needs_image
    if sees_image and config.camera is None:
        raise RunError(f"{path} is an image policy; the experiment has no camera section")
    if held_out is not None:
        starts, targets = held_out_conditions(config, held_out, held_out_seed)
        episodes = [
            Episode(f"held-out {k}", q, g, act, sees_image=sees_image)
            for k, (q, g) in enumerate(zip(starts, targets))
        ]
        return (
            config,
            episodes,
            f"the exported policy from {held_out} held-out starts (seed {held_out_seed})",
        )
    chosen = range(M) if condition is None else [condition]
    episodes = [
        Episode(
            f"condition {m}",
            np.asarray(config.conditions[m].initial_positions, float),
            np.asarray(config.conditions[m].target, float),
            act,
            sees_image=sees_image,
        )
        for m in chosen
    ]
    return config, episodes, "the exported policy from the training starts"


def play(
    config: ExperimentConfig,
    episodes: List[Episode],
    *,
    render: bool = True,
    gui: bool = False,
    width: int = 320,
    height: int = 240,
) -> view.Camera:
    """
    Run each episode noise-free for config.T steps on one arm.

    Keeps its distances and (render) a frame per step; with gui, in the PyBullet window at
    the control rate. With the experiment's camera, its image of every step too (the one an
    image policy acts on, the target drawn as the camera sees it).
    """
    layout = config.layout
    with config.make_arm(gui=gui) as arm:   # with the experiment's fixtures (a peg's block)
        experiment_camera = config.make_camera(arm)
        camera, markers = view.prepare(
            arm,
            [e.initial_positions for e in episodes],
            [e.target for e in episodes],
            marker_targets=[episodes[0].target],
            gui=gui,
        )
        for episode in episodes:
            markers.move_target(0, episode.target)
            # The fixtures placed relative to the target (a peg's block) and the target sphere
            # the camera sees go where the episode's target is, as in training.
            arm.reset(episode.initial_positions, target=episode.target)
            for t in range(config.T):
                x = observe(arm, layout, episode.target)
                episode.distances.append(float(np.linalg.norm(x[layout.ee_offset])))
                image = None
                if experiment_camera is not None:
                    # The policy's camera sees the scene as in training: no view markers.
                    for body in markers.targets + [markers.ee]:
                        arm.client.resetBasePositionAndOrientation(body, [0.0, 0.0, -10.0],
                                                                   [0.0, 0.0, 0.0, 1.0])
                    image = experiment_camera.render()
                    markers.move_target(0, episode.target)
                    if render:
                        episode.camera_frames.append(image)
                markers.follow()
                if render:
                    episode.frames.append(view.render(arm, camera, width, height))
                started = time.monotonic()
                arm.step(episode.act(t, x, image) if episode.sees_image else episode.act(t, x))
                if gui:
                    time.sleep(max(0.0, config.control_dt - (time.monotonic() - started)))
    return camera


def _annotated(frame: np.ndarray, lines: List[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((6, 4 + 12 * i), line, fill=(20, 20, 20))
    return np.asarray(image)


def camera_panel(image: np.ndarray, height: int) -> np.ndarray:
    """
    Return the camera's image (h, w, 3) as a panel `height` pixels high, labelled.

    Scaled up by a whole factor (each camera pixel a block, nothing smoothed away) and
    centred on white.
    """
    h, w, _ = image.shape
    scale = max(1, height // h)
    big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)[:height]
    panel = np.full((height, big.shape[1] + 8, 3), 255, dtype=np.uint8)
    top = (height - big.shape[0]) // 2
    panel[top:top + big.shape[0], 4:4 + big.shape[1]] = big
    labelled = _annotated(panel[:16].copy(), [f"camera {w}x{h}"])
    panel[:min(16, top)] = labelled[:min(16, top)]
    return panel


def compose(
    config: ExperimentConfig, episodes: List[Episode], sequence: bool = False
) -> List[np.ndarray]:
    """
    Return the frames of the video.

    Per step, the episodes' tiles side by side (up to TILES_PER_ROW a row, rows stacked),
    or (sequence) one episode after the other; each tile labelled with the episode, the
    time and the distance to the target.
    """

    def tile(episode: Episode, t: int) -> np.ndarray:
        scene = _annotated(
            episode.frames[t],
            [
                episode.label,
                f"t {t * config.control_dt:5.2f} s",
                f"distance {100 * episode.distances[t]:6.2f} cm",
            ],
        )
        if not episode.camera_frames:
            return scene
        return np.concatenate([scene, camera_panel(episode.camera_frames[t], scene.shape[0])], 1)

    if sequence:
        return [tile(e, t) for e in episodes for t in range(len(e.frames))]
    height, width, _ = tile(episodes[0], 0).shape   # the scene, and the camera's panel
    columns = min(len(episodes), TILES_PER_ROW)
    rows = -(-len(episodes) // columns)
    frames = []
    for t in range(len(episodes[0].frames)):
        canvas = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
        for i, episode in enumerate(episodes):
            r, c = divmod(i, columns)
            canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile(episode, t)
        frames.append(canvas)
    return frames


def _ffmpeg() -> Optional[str]:
    found = shutil.which("ffmpeg")
    if found is None:
        try:
            import imageio_ffmpeg  # optional: bundles an ffmpeg binary

            found = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            return None
    return found


def check_output(path: Path) -> None:
    """Raise RunError unless `path` is a .gif, or an .mp4 with ffmpeg available (checked first)."""
    if path.suffix.lower() not in FORMATS:
        raise RunError(f"--output {path}: allowed: a .gif or .mp4 file name")
    if path.suffix.lower() == ".mp4" and _ffmpeg() is None:
        raise RunError(
            f"--output {path}: writing mp4 needs ffmpeg (on PATH, or the imageio-ffmpeg package), "
            "and neither is installed; write a .gif instead (--output NAME.gif)"
        )
    if not path.parent.is_dir():
        raise RunError(f"--output {path}: the directory {path.parent} does not exist")


def write_video(frames: List[np.ndarray], path: Path, frame_s: float) -> None:
    """Frames (H, W, 3) uint8 as a looping GIF or an mp4 (H.264), `frame_s` seconds each."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [
            Image.fromarray(f).quantize(colors=64, method=Image.Quantize.MEDIANCUT) for f in frames
        ]
        images[0].save(
            path,
            save_all=True,
            append_images=images[1:],
            duration=max(20, round(1000 * frame_s)),
            loop=0,
            optimize=True,
        )
        return
    height, width, _ = frames[0].shape
    command = [
        _ffmpeg(),
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        f"{1.0 / frame_s:g}",
        "-i",
        "-",
        "-vf",
        "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white",
        "-pix_fmt",
        "yuv420p",
        str(path),
    ]
    process = subprocess.run(
        command, input=b"".join(f.tobytes() for f in frames), capture_output=True
    )
    if process.returncode != 0:
        raise RunError(
            f"ffmpeg could not write {path}: {process.stderr.decode(errors='replace').strip()}"
        )


def replay(
    run: Path,
    output: Optional[Path],
    *,
    config_path=None,
    iteration=None,
    condition=None,
    policy=False,
    held_out=None,
    sequence=False,
    gui=False,
    width=320,
    height=240,
    log: Optional[TextIO] = None,
) -> List[Episode]:
    """
    Replay a run (see episodes_of_run) into `output` (.gif or .mp4) and/or the GUI.

    Prints one line per episode (its final distance) to `log`. Returns the episodes.
    """
    log = log or sys.stderr
    if output is not None:
        check_output(Path(output))
    config, episodes, what = episodes_of_run(
        run,
        config_path,
        iteration=iteration,
        condition=condition,
        policy=policy,
        held_out=held_out,
    )
    print(
        f"replaying {what}: {len(episodes)} episode(s) of {config.T} steps", file=log, flush=True
    )
    play(config, episodes, render=output is not None, gui=gui, width=width, height=height)
    for episode in episodes:
        print(
            f"{episode.label}: final distance {100 * episode.distances[-1]:.2f} cm",
            file=log,
            flush=True,
        )
    if output is not None:
        write_video(compose(config, episodes, sequence), Path(output), config.control_dt)
        print(f"written to {output}", file=log, flush=True)
    return episodes
