"""
Peg-in-hole insertion: LQR-FLM and MDGPS against SB3 SAC, on the same task and success test.

The task is config/peg_insertion.yaml: a KUKA iiwa holding a round peg (2 cm across) above
a block whose square hole (2.5 mm clearance to each wall, 5 cm deep) is placed per
condition; T = 100 steps of 0.05 s; the cost on the peg's tip and top (each to its target
in the hole) plus the action cost. A condition counts as inserted when the noise-free
run ends with the tip within success_distance_m (1 cm) of the hole's bottom.

What is measured, per seed:
- LQR-FLM (config/peg_insertion.yaml, 4 hole positions): the first iteration after which
  every training condition's noise-free controller inserts, and the environment steps
  taken until then (iterations x 4 conditions x rollouts_per_condition x T).
- MDGPS (config/peg_insertion_mdgps.yaml, 9 hole positions): the first iteration at which
  every local controller inserts, and the exported policy's success rate from --held-out
  (20) hole positions drawn from the square the training holes span
  (mbpl_ros.offline.held_out_targets, seed --eval-seed), as `mbpl eval` runs it.
- SAC (stable-baselines3; the settings of bench/sample_efficiency.py: rl-baselines3-zoo's
  ReacherBulletEnv-v0 hyperparameters with learning_starts 1000) through
  mbpl_ros.sim.gym_env.ReachEnv on config/peg_insertion.yaml (reward = minus the same
  per-step cost), evaluated every --eval-every steps by the same noise-free runs from the
  4 training conditions: the environment steps before the first evaluation at which every
  condition is inserted, within --sac-steps (a seed that never gets there counts as its
  whole budget, and the ratio to LQR-FLM is then a lower bound, ">=").

A frame of the arm with its peg in the hole (PyBullet's TinyRenderer) is written to
docs/peg_insertion.png (a full run only; --quick writes runs/bench/peg_insertion.png and
never touches docs/).

    .venv/bin/python bench/peg_insertion.py [--seeds 0 1 2] [--sac-seeds 0] [--sac-steps N]
        [--methods lqr_flm mdgps sac] [--jobs N] [--quick] [--markdown]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))

from mbpl_ros.checkpoint import latest_checkpoint  # noqa: E402
from mbpl_ros.experiment import ExperimentConfig, load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun, evaluate_exported_policy, evaluate_policy  # noqa: E402
from mbpl_ros.core.rollouts import final_distance  # noqa: E402
from mbpl_ros.sim.rollout import run_rollout  # noqa: E402
from parallel import run_tasks  # noqa: E402   (bench/, the script's folder)

LQR_CONFIG = PACKAGE / "config" / "peg_insertion.yaml"
MDGPS_CONFIG = PACKAGE / "config" / "peg_insertion_mdgps.yaml"
PICTURE = ROOT / "docs" / "peg_insertion.png"
QUICK_PICTURE = ROOT / "runs" / "bench" / "peg_insertion.png"


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def first_all_inserted(metrics: list[dict], key: str, success: float) -> Optional[dict]:
    """Find the first metrics row whose every distance under `key` is below `success`."""
    return next((row for row in metrics if row.get(key) is not None
                 and all(d < success for d in row[key])), None)


def train(config: ExperimentConfig, seed: int, iterations: int,
          out: Path) -> tuple[list[dict], float]:
    start = time.perf_counter()
    metrics = TrainingRun(config, out, seed, log=io.StringIO()).run(iterations)
    return metrics, time.perf_counter() - start


def run_lqr_flm(config: ExperimentConfig, seed: int, iterations: int,
                picture: Optional[Path]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        metrics, wall = train(config, seed, iterations, Path(out))
        if picture is not None:
            checkpoint = latest_checkpoint(Path(out))
            render_inserted(config, checkpoint.algorithm.controllers, picture)
    success = config.success_distance_m
    row = first_all_inserted(metrics, "final_distance_m", success)
    inserted = [sum(d < success for d in r["final_distance_m"]) for r in metrics]
    log(f"LQR-FLM seed {seed}: inserted per iteration {inserted}, {wall:.0f} s")
    return {"seed": seed, "iteration": None if row is None else row["iteration"],
            "env_steps": None if row is None else row["env_steps"], "inserted": inserted,
            "final_inserted": inserted[-1], "conditions": len(config.conditions), "wall_s": wall,
            "budget": metrics[-1]["env_steps"]}


def run_mdgps(config: ExperimentConfig, seed: int, iterations: int, held_out: int,
              eval_seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        metrics, wall = train(config, seed, iterations, Path(out))
        report = evaluate_exported_policy(config, Path(out) / "policy.pt", held_out, eval_seed)
    success = config.success_distance_m
    row = first_all_inserted(metrics, "final_distance_m", success)
    inserted = [sum(d < success for d in r["final_distance_m"]) for r in metrics]
    policy_train = sum(d < success for d in metrics[-1]["policy_final_distance_m"])
    distances = " ".join(f"{100 * d:.1f}" for d in report["distances_m"])
    log(f"MDGPS seed {seed}: controllers inserted per iteration {inserted}; policy: "
        f"{policy_train}/{len(config.conditions)} training holes, {report['successes']}/"
        f"{held_out} held-out holes (distances cm {distances}), {wall:.0f} s")
    return {"seed": seed, "iteration": None if row is None else row["iteration"],
            "env_steps": None if row is None else row["env_steps"], "inserted": inserted,
            "policy_training": policy_train, "held_out_success": report["success_rate"],
            "held_out_successes": report["successes"], "wall_s": wall,
            "budget": metrics[-1]["env_steps"]}


def run_sac(config: ExperimentConfig, seed: int, budget: int, eval_every: int) -> dict:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from sample_efficiency import SAC_LEARNING_STARTS, SAC_ZOO   # bench/, on the path
    from mbpl_ros.sim.gym_env import ReachEnv

    env = ReachEnv(config, condition_order="round_robin")
    env.reset(seed=seed)
    model = SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0,
                **dict(SAC_ZOO, learning_starts=SAC_LEARNING_STARTS))
    limits = env.effort_limits
    starts = np.array([c.initial_positions for c in config.conditions], float)
    targets = np.array([c.target for c in config.conditions], float)
    success = config.success_distance_m
    evaluations: list[tuple[int, int, float]] = []   # (steps, holes inserted, best distance)

    def effort(x: np.ndarray) -> np.ndarray:
        return limits * model.predict(x.astype(np.float32), deterministic=True)[0]

    def evaluate(arm, steps: int) -> bool:
        distances, _ = evaluate_policy(arm, config, effort, starts, targets)
        evaluations.append((steps, sum(d < success for d in distances), float(np.min(distances))))
        if len(evaluations) % 5 == 1:
            shown = " ".join(f"{100 * d:.1f}" for d in distances)
            log(f"    SAC seed {seed}: {steps:,} steps, inserted {evaluations[-1][1]}/"
                f"{len(starts)}, distances (cm) {shown}")
        return evaluations[-1][1] == len(starts)

    class EvaluateEvery(BaseCallback):
        def __init__(self, arm):
            super().__init__()
            self.arm, self.next_eval = arm, 0

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval = self.num_timesteps + eval_every
                return not evaluate(self.arm, int(self.num_timesteps))    # stop once all are in
            return True

    start = time.perf_counter()
    with config.make_arm() as arm:
        try:
            model.learn(budget, callback=EvaluateEvery(arm))
            if not evaluations or evaluations[-1][0] < model.num_timesteps:
                evaluate(arm, int(model.num_timesteps))
        finally:
            env.close()
    wall = time.perf_counter() - start
    reached = next((steps for steps, n, _ in evaluations if n == len(starts)), None)
    most = max(n for _, n, _ in evaluations)
    log(f"SAC seed {seed}: {evaluations[-1][0]:,} steps, most inserted {most}/{len(starts)}, "
        f"reached {'-' if reached is None else f'{reached:,}'}, {wall:.0f} s")
    return {"seed": seed, "env_steps": reached, "budget": budget, "wall_s": wall,
            "most_inserted": most,
            "best_distance_m": min(d for _, _, d in evaluations)}


def render_inserted(config: ExperimentConfig, controllers, path: Path) -> None:
    """
    Write a PNG of the arm at the end of a noise-free run that inserts.

    The run is that of the first condition whose controller (of `controllers`, one per
    condition) inserts; condition 0 if none does.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero = np.zeros(config.layout.dU)
    with config.make_arm() as arm:
        for condition, controller in zip(config.conditions, controllers):
            X, _ = run_rollout(arm, config.layout, lambda t, x: controller.act(t, x, zero),
                               condition.initial_positions, condition.target, config.T)
            if final_distance(X, config.layout) < config.success_distance_m:
                break
        else:
            condition, controller = config.conditions[0], controllers[0]
            run_rollout(arm, config.layout, lambda t, x: controller.act(t, x, zero),
                        condition.initial_positions, condition.target, config.T)
        client = arm._live_client()
        view = client.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=list(np.asarray(condition.target) + [-0.2, 0.0, 0.22]),
            distance=1.15, yaw=55.0, pitch=-20.0, roll=0.0, upAxisIndex=2)
        projection = client.computeProjectionMatrixFOV(fov=50.0, aspect=4 / 3, nearVal=0.05,
                                                       farVal=3.0)
        width, height = 400, 300
        _, _, rgba, _, _ = client.getCameraImage(width, height, view, projection,
                                                 renderer=client.ER_TINY_RENDERER)
    image = np.reshape(np.asarray(rgba, dtype=np.uint8), (height, width, 4))[:, :, :3]
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, image)


def _median_text(values: list, unit: str = "") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"not reached (0/{len(values)})"
    text = f"{np.median(got):,.0f}{unit}"
    return text + (f" ({len(got)}/{len(values)} seeds)" if len(got) < len(values) else "")


def _per_seed(values: list) -> str:
    return ", ".join("-" if v is None else f"{v:,}" for v in values)


def markdown(results: dict, args, picture: Path) -> str:
    lines = ["Peg-in-hole insertion (`mbpl_ros/config/peg_insertion.yaml`, "
             "`mbpl_ros/config/peg_insertion_mdgps.yaml`): inserted = the noise-free run ends "
             "with the "
             "peg's tip within 1 cm of the hole's bottom. Environment steps count training "
             "rollouts only (never evaluation runs).", "",
             "| method | seeds | budget (env steps) | iterations until every training hole is "
             "inserted (per seed; median) | env steps until then (median) | held-out holes "
             "inserted (per seed; median) | wall time per run (s, median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lqr = results.get("lqr_flm")
    if lqr:
        iterations = [r["iteration"] for r in lqr]
        lines.append(f"| LQR-FLM, 4 holes | {', '.join(str(r['seed']) for r in lqr)} | "
                     f"{lqr[0]['budget']:,} | {_per_seed(iterations)}; "
                     f"{_median_text(iterations)} (inserted after the last iteration: "
                     f"{', '.join(str(r['final_inserted']) for r in lqr)} of 4) | "
                     f"{_median_text([r['env_steps'] for r in lqr])} | – | "
                     f"{np.median([r['wall_s'] for r in lqr]):.0f} |")
    mdgps = results.get("mdgps")
    if mdgps:
        iterations = [r["iteration"] for r in mdgps]
        held = [r["held_out_successes"] for r in mdgps]
        lines.append(f"| MDGPS, 9 holes (policy) | {', '.join(str(r['seed']) for r in mdgps)} | "
                     f"{mdgps[0]['budget']:,} | {_per_seed(iterations)}; "
                     f"{_median_text(iterations)} "
                     f"(local controllers; the policy inserts into "
                     f"{', '.join(str(r['policy_training']) for r in mdgps)} of the 9 training "
                     f"holes at the end) | {_median_text([r['env_steps'] for r in mdgps])} | "
                     f"{', '.join(f'{h}/{args.held_out}' for h in held)}; "
                     f"{100 * np.median([r['held_out_success'] for r in mdgps]):.0f}% | "
                     f"{np.median([r['wall_s'] for r in mdgps]):.0f} |")
    sac = results.get("sac")
    if sac:
        lines.append(f"| SAC (SB3), 4 holes | {', '.join(str(r['seed']) for r in sac)} | "
                     f"{args.sac_steps:,} | – (most inserted at once: "
                     f"{', '.join(str(r['most_inserted']) for r in sac)} of 4) | "
                     f"{_median_text([r['env_steps'] for r in sac])} | – | "
                     f"{np.median([r['wall_s'] for r in sac]):.0f} |")
    if lqr and sac:
        base = [r["env_steps"] for r in lqr if r["env_steps"] is not None]
        filled = [r["env_steps"] if r["env_steps"] is not None else r["budget"] for r in sac]
        bound = "≥ " if any(r["env_steps"] is None for r in sac) else ""
        ratio = (f"{bound}{np.median(filled) / np.median(base):.1f}x" if base
                 else "n/a (LQR-FLM did not insert)")
        lines += ["", "SAC / LQR-FLM, environment steps until every training hole is inserted "
                  "(ratio of medians; a SAC seed that never got there counts as its whole budget, "
                  f"so ≥ marks a lower bound): **{ratio}**."]
    lines += ["", "SAC: the settings of bench/sample_efficiency.py (rl-baselines3-zoo, "
              f"ReacherBulletEnv-v0, learning_starts 1000), evaluated every {args.eval_every:,} "
              f"steps. MDGPS held-out holes: {args.held_out} drawn from the square the 9 training "
              f"holes span (seed {args.eval_seed}), as `mbpl eval` draws them."]
    if picture == PICTURE:
        lines += ["", f"![the peg in the hole after LQR-FLM, seed {args.seeds[0]}]"
                  f"({picture.name})"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sac", "mdgps", "lqr_flm"],
                        choices=["lqr_flm", "mdgps", "sac"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="LQR-FLM and MDGPS seeds")
    parser.add_argument("--sac-seeds", type=int, nargs="+", default=[0], help="SAC seeds")
    parser.add_argument("--lqr-iterations", type=int, default=None, help="default: the config's")
    parser.add_argument("--mdgps-iterations", type=int, default=None, help="default: the config's")
    parser.add_argument("--sac-steps", type=int, default=40_000,
                        help="SAC budget, environment steps")
    parser.add_argument("--eval-every", type=int, default=2000,
                        help="SAC evaluation period (steps)")
    parser.add_argument("--held-out", type=int, default=20,
                        help="held-out hole positions for MDGPS")
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="seed of the held-out hole positions")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: seed 0, 2 iterations each, SAC 2000 steps; writes "
                             "nothing in docs/")
    parser.add_argument("--json", help="also write the per-seed results to this file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="report the results of earlier runs (their --json files) instead of "
                             "running anything; later files win per method")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own process with one thread")
    parser.add_argument("--markdown", action="store_true",
                        help="print only the markdown report on stdout")
    args = parser.parse_args()
    lqr_config, mdgps_config = load_experiment(LQR_CONFIG), load_experiment(MDGPS_CONFIG)
    if args.quick:
        args.seeds, args.sac_seeds, args.sac_steps, args.eval_every = [0], [0], 2000, 1000
        args.lqr_iterations = args.mdgps_iterations = 2
    picture = QUICK_PICTURE if args.quick else PICTURE

    import torch
    torch.set_num_threads(1)
    results: dict[str, list] = {}
    start = time.perf_counter()
    if args.merge:
        # Each method's results, and the settings they were run with, from its file.
        settings = {"lqr_flm": ("seeds",), "mdgps": ("held_out", "eval_seed"),
                    "sac": ("sac_steps", "eval_every")}
        for path in args.merge:
            merged = json.loads(Path(path).read_text())
            for method, rows in merged["results"].items():
                results[method] = rows
                for key in settings[method]:
                    setattr(args, key, merged["args"][key])
        print(markdown(results, args, picture))
        return 0
    tasks = []     # (method, function, arguments), one run each
    for method in args.methods:
        if method == "lqr_flm":
            iterations = args.lqr_iterations or lqr_config.iterations
            tasks += [(method, run_lqr_flm, (lqr_config, seed, iterations,
                                             picture if seed == args.seeds[0] else None))
                      for seed in args.seeds]
        elif method == "mdgps":
            iterations = args.mdgps_iterations or mdgps_config.iterations
            tasks += [(method, run_mdgps, (mdgps_config, seed, iterations, args.held_out,
                                           args.eval_seed)) for seed in args.seeds]
        else:
            tasks += [(method, run_sac, (lqr_config, seed, args.sac_steps, args.eval_every))
                      for seed in args.sac_seeds]
    outcomes = run_tasks([(function, arguments) for _, function, arguments in tasks],
                         args.jobs, [LQR_CONFIG])
    for (method, _, _), outcome in zip(tasks, outcomes):
        results.setdefault(method, []).append(outcome)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    report = markdown(results, args, picture)
    wall = time.perf_counter() - start
    print(report + f"\n\nTotal wall time {wall:.0f} s (one BLAS and torch thread).")
    if not args.markdown:
        print(f"picture: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
