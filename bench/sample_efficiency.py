"""
Sample efficiency on the 2-link reach: LQR-FLM and MDGPS against SB3 SAC and PPO, and PETS.

Every method learns the task of config/reacher_2link.yaml (4 start poses, one target,
T = 50 steps of 0.05 s, the same cost) from the same seeds, and is measured the same way:
after each learning iteration (LQR-FLM, MDGPS) or every --eval-every environment steps
(SAC, PPO), one noise-free run from each of the 4 training conditions
(mbpl_ros.offline.evaluate_controllers / evaluate_policy: identical rollouts, identical
final-distance measure), averaged over the conditions. Evaluation runs are not counted
as environment steps for any method; every training step is (for LQR-FLM and MDGPS:
iterations x 4 conditions x the config's rollouts_per_condition x 50 steps).

Reached: the first evaluation at which the mean final distance is below the success
distance (2 cm, the config's success_distance_m) and stays below it at every later
evaluation of the run, with at least --consecutive (3) evaluations in that final stretch
(so a run that only dips below at its very end does not count). The reported steps are
the environment steps taken before that evaluation.

What each method is:
- LQR-FLM: config/reacher_2link.yaml, its own 4 time-varying local controllers.
- MDGPS: config/reacher_2link_mdgps.yaml (same task and cost), measured by its one neural
  network policy x -> u (the local controllers are shown for reference in the per-seed
  output).
- SAC: rl-baselines3-zoo hyperparams/sac.yml, ReacherBulletEnv-v0 (= the zoo's
  pybullet-defaults: lr 7.3e-4, buffer 300k, batch 256, ent_coef auto, gamma 0.98,
  tau 0.02, train_freq 8, gradient_steps 8, gSDE with log_std_init -3, net [400, 300]),
  except learning_starts 1000 instead of 10000 (in SAC's favour at these budgets).
- PPO: rl-baselines3-zoo hyperparams/ppo.yml, ReacherBulletEnv-v0 (VecNormalize obs and
  reward, 8 envs, n_steps 512, batch 64, 20 epochs, gamma 0.99, gae_lambda 0.9,
  lr 3e-5, clip lin 0.4, gSDE sde_sample_freq 4 log_std_init -2.7, ReLU [256, 256] pi
  and vf, max_grad_norm 0.5, vf_coef 0.5, ent_coef 0).
- PETS: mbrl-lib 0.2.0 (probabilistic ensemble, CEM over the learned model, the reward
  minus our per-step cost on the predicted states), bench/pets/run_pets.py in its own venv
  (.venv-pets, made by `make bench`) as a subprocess; its docstring states the recipe,
  mbrl-lib's pets_reacher hyperparameters and the deviations. mbrl's population 350 x 20
  particles costs ~3 CPU s per environment step here, so the defaults plan with
  --pets-population 50 x --pets-particles 7 (0.15-0.3 s), for a budget of --pets-steps
  (1000); evaluated by the same noise-free runs (of its planner) every --pets-eval-every
  (200) steps, the first after its initial random episodes (one per condition) and first
  model fit. An evaluation costs as much planning as 200 training steps.
SAC, PPO and PETS see the environment mbpl_ros.sim.gym_env.ReachEnv (observation: the core
state x; action: efforts normalised to [-1, 1]; reward: minus the per-step cost), both
with one stationary policy over x, like MDGPS's. The model-based methods start from the
config's initial PD controllers (which already hold the arm against gravity); the
model-free ones from SB3's random initialisation.

Run: .venv/bin/python bench/sample_efficiency.py [--quick] [--markdown]
     [--seeds 0 1] [--sac-steps N] [--ppo-steps N] [--pets-steps N]
     [--methods lqr_flm mdgps sac ppo pets] [--jobs 2]
Prints a markdown table (steps to reach, ratios) and writes the plot of mean final
distance against environment steps (--plot, default docs/benchmark_sample_efficiency.png).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mbpl_ros"  # the ament_python package folder
sys.path.insert(0, str(PACKAGE))

from mbpl_ros.experiment import ExperimentConfig, load_experiment  # noqa: E402
from mbpl_ros.offline import TrainingRun, evaluate_policy  # noqa: E402
from parallel import run_tasks  # noqa: E402   (bench/, the script's folder)

LQR_CONFIG = PACKAGE / "config" / "reacher_2link.yaml"
MDGPS_CONFIG = PACKAGE / "config" / "reacher_2link_mdgps.yaml"
DEFAULT_PLOT = ROOT / "docs" / "benchmark_sample_efficiency.png"
METHOD_LABELS = {"lqr_flm": "LQR-FLM", "mdgps": "MDGPS (policy)", "sac": "SAC (SB3)",
                 "ppo": "PPO (SB3)", "pets": "PETS (mbrl-lib)"}
PETS_RUNNER = ROOT / "bench" / "pets" / "run_pets.py"
PETS_PYTHON = ROOT / ".venv-pets" / "bin" / "python"   # made by `make bench`

# rl-baselines3-zoo, hyperparams/sac.yml, ReacherBulletEnv-v0 (<<: *pybullet-defaults).
SAC_ZOO = dict(learning_rate=7.3e-4, buffer_size=300_000, batch_size=256, ent_coef="auto",
               gamma=0.98, tau=0.02, train_freq=8, gradient_steps=8, learning_starts=10_000,
               use_sde=True,
               policy_kwargs=dict(log_std_init=-3, net_arch=[400, 300]))
# The zoo's 10 000 random steps would equal LQR-FLM's whole 10-iteration run.
SAC_LEARNING_STARTS = 1000
# rl-baselines3-zoo, hyperparams/ppo.yml, ReacherBulletEnv-v0.
PPO_ZOO_ENVS = 8
PPO_ZOO = dict(batch_size=64, n_steps=512, gamma=0.99, gae_lambda=0.9, n_epochs=20, ent_coef=0.0,
               sde_sample_freq=4, max_grad_norm=0.5, vf_coef=0.5, learning_rate=3e-5, use_sde=True)


@dataclasses.dataclass
class Curve:
    """One run's learning curve: environment steps (K,) and mean final distance (K,) in m."""

    method: str
    seed: int
    steps: list
    distance_m: list
    wall_s: float
    budget: int
    note: str = ""


def steps_to_reach(curve: Curve, threshold_m: float, consecutive: int) -> Optional[int]:
    """
    Count the steps before the run stays below threshold_m for good.

    That is the steps before the first evaluation from which every later one is below
    threshold_m, if that final stretch holds at least `consecutive` evaluations; else None.
    """
    below = np.asarray(curve.distance_m) < threshold_m
    if not below.size or not below[-1]:
        return None
    above = np.flatnonzero(~below)
    first = above[-1] + 1 if above.size else 0       # start of the final stretch below it
    if below.size - first < consecutive:
        return None
    return int(curve.steps[first])


# --------------------------------------------------------------------------- model-based


def run_model_based(method: str, config: ExperimentConfig, seed: int, iterations: int) -> Curve:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        metrics = TrainingRun(config, Path(out), seed, log=io.StringIO()).run(iterations)
    if method == "mdgps":
        rows = [r for r in metrics if r.get("policy_final_distance_m") is not None]
        key = "policy_final_distance_m"
    else:
        rows, key = metrics, "final_distance_m"
    controllers = " ".join(f"{100 * np.mean(r['final_distance_m']):.2f}" for r in metrics)
    return Curve(method, seed, [r["env_steps"] for r in rows],
                 [float(np.mean(r[key])) for r in rows],
                 time.perf_counter() - start, metrics[-1]["env_steps"],
                 note=f"local controllers' mean distance (cm) per iteration: {controllers}")


# --------------------------------------------------------------------------- model-free


class _Evaluator:
    """Noise-free runs of a mean policy from the 4 training conditions on its own arm."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.arm = config.make_arm()
        self.starts = np.array([c.initial_positions for c in config.conditions], float)
        self.targets = np.array([c.target for c in config.conditions], float)

    def mean_final_distance(self, effort_of_state: Callable[[np.ndarray], np.ndarray]) -> float:
        distances, _ = evaluate_policy(self.arm, self.config, effort_of_state, self.starts,
                                       self.targets)
        return float(np.mean(distances))

    def close(self):
        self.arm.close()


def _make_callback(evaluator: _Evaluator, effort_of_state, eval_every: int, steps: list,
                   distances: list, label: str):
    from stable_baselines3.common.callbacks import BaseCallback

    class EvaluateEvery(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval = 0

        def _on_training_start(self) -> None:
            self._evaluate()   # the untrained policy, at 0 steps

        def _evaluate(self) -> None:
            steps.append(int(self.num_timesteps))
            distances.append(
                evaluator.mean_final_distance(lambda x: effort_of_state(self.model, x)))
            self.next_eval = self.num_timesteps + eval_every
            if len(steps) % 10 == 1:
                print(f"    {label}: {steps[-1]:,} steps, "
                      f"mean final distance {100 * distances[-1]:.2f} cm",
                      file=sys.stderr, flush=True)

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self._evaluate()
            return True

    return EvaluateEvery()


def run_sac(config: ExperimentConfig, seed: int, budget: int, eval_every: int) -> Curve:
    from stable_baselines3 import SAC

    from mbpl_ros.sim.gym_env import ReachEnv

    env = ReachEnv(config, condition_order="round_robin")
    env.reset(seed=seed)
    settings = dict(SAC_ZOO, learning_starts=SAC_LEARNING_STARTS)
    model = SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    limits = env.effort_limits

    def effort_of_state(model, x):
        return limits * model.predict(x.astype(np.float32), deterministic=True)[0]

    return _learn_and_evaluate("sac", config, seed, model, env, effort_of_state, budget,
                               eval_every)


def run_ppo(config: ExperimentConfig, seed: int, budget: int, eval_every: int) -> Curve:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from mbpl_ros.sim.gym_env import ReachEnv

    # Random condition order: the 8 envs step in lockstep, so round-robin would put all 8
    # on the same condition at every step.
    venv = make_vec_env(lambda: ReachEnv(config, condition_order="random"), n_envs=PPO_ZOO_ENVS,
                        seed=seed)
    venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=PPO_ZOO["gamma"])
    schedule_start = 0.4

    def clip_range(progress_remaining: float) -> float:   # the zoo's lin_0.4
        return schedule_start * progress_remaining

    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, clip_range=clip_range,
                policy_kwargs=dict(log_std_init=-2.7, ortho_init=False,
                                   activation_fn=torch.nn.ReLU,
                                   net_arch=dict(pi=[256, 256], vf=[256, 256])),
                **PPO_ZOO)
    limits = venv.get_attr("effort_limits", [0])[0]

    def effort_of_state(model, x):
        obs = venv.normalize_obs(x[None].astype(np.float32))
        return limits * np.clip(model.predict(obs, deterministic=True)[0][0], -1.0, 1.0)

    return _learn_and_evaluate("ppo", config, seed, model, venv, effort_of_state, budget,
                               eval_every)


def _learn_and_evaluate(method, config, seed, model, env, effort_of_state, budget,
                        eval_every) -> Curve:
    """
    Train `model` for `budget` environment steps, evaluating it now and then; close `env`.

    The noise-free evaluations come every `eval_every` steps and once more at the end.
    """
    evaluator, steps, distances = _Evaluator(config), [], []
    start = time.perf_counter()
    try:
        callback = _make_callback(evaluator, effort_of_state, eval_every, steps, distances,
                                  f"{method.upper()} seed {seed}")
        model.learn(budget, callback=callback)
        if steps[-1] < model.num_timesteps:
            steps.append(int(model.num_timesteps))
            distances.append(evaluator.mean_final_distance(lambda x: effort_of_state(model, x)))
    finally:
        evaluator.close()
        env.close()
    return Curve(method, seed, steps, distances, time.perf_counter() - start, budget)


# --------------------------------------------------------------------------- PETS


def load_pets_curve(path: Path) -> Curve:
    """Read one seed's curve written by bench/pets/run_pets.py --json (possibly cut short)."""
    data = json.loads(Path(path).read_text())
    note = data["note"]
    if not data.get("complete", True):
        # a run stopped by a time limit: its budget is what it got to
        note += f"; stopped at {data['steps'][-1]:,} of {data['budget']:,} steps"
        data["budget"] = data["steps"][-1]
    return Curve("pets", data["seed"], data["steps"], data["distance_m"], data["wall_s"],
                 data["budget"], note=note)


def run_pets(config_path: Path, seed: int, budget: int, eval_every: int, population: int,
             particles: int, torch_threads: int) -> Curve:
    """Run bench/pets/run_pets.py in the PETS venv (mbrl's pins need their own) for one seed."""
    with tempfile.TemporaryDirectory() as out:
        result = Path(out) / "pets.json"
        command = [str(PETS_PYTHON), str(PETS_RUNNER), "reach", "--config", str(config_path),
                   "--seed", str(seed), "--budget", str(budget), "--eval-every", str(eval_every),
                   "--population", str(population), "--particles", str(particles),
                   "--torch-threads", str(torch_threads), "--json", str(result)]
        threads = {k: str(torch_threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS")}
        subprocess.run(command, check=True, stdout=sys.stderr, env=dict(os.environ, **threads))
        return load_pets_curve(result)


# --------------------------------------------------------------------------- report


def steps_to_first_below(curve: Curve, threshold_m: float) -> Optional[int]:
    """Count the steps before the first evaluation below threshold_m (else None)."""
    below = np.flatnonzero(np.asarray(curve.distance_m) < threshold_m)
    return int(curve.steps[below[0]]) if below.size else None


def summarise(curves: list[Curve], methods: list[str], threshold_m: float,
              consecutive: int) -> dict:
    summary = {}
    for method in methods:
        mine = [c for c in curves if c.method == method]
        summary[method] = {
            "seeds": [c.seed for c in mine],
            "stays": [steps_to_reach(c, threshold_m, consecutive) for c in mine],
            "first": [steps_to_first_below(c, threshold_m) for c in mine],
            "budget": max(c.budget for c in mine),
            "final_cm": [100 * c.distance_m[-1] for c in mine],
            "best_cm": [100 * min(c.distance_m) for c in mine],
            "wall_s": [c.wall_s for c in mine]}
    return summary


def _steps_text(reached: list) -> str:
    got = [r for r in reached if r is not None]
    if not got:
        return f"not reached (0/{len(reached)})"
    text = f"{np.median(got):,.0f} [{min(got):,}, {max(got):,}]"
    return text + (f" ({len(got)}/{len(reached)} seeds)" if len(got) < len(reached) else "")


def _ratio_text(summary: dict, method: str, key: str) -> str:
    """
    Give the median steps of `method` over the median steps of LQR-FLM.

    A seed that never reached counts as its whole budget, making the ratio a lower bound (≥).
    """
    base = [r for r in summary["lqr_flm"][key] if r is not None]
    if not base:
        return "n/a (LQR-FLM did not reach)"
    s = summary[method]
    filled = [r if r is not None else s["budget"] for r in s[key]]
    bound = "≥ " if None in s[key] else ""
    return f"{bound}{np.median(filled) / np.median(base):.1f}x"


def markdown_report(summary: dict, threshold_m: float, consecutive: int, settings: str) -> str:
    cm = f"{100 * threshold_m:g} cm"
    lines = [f"Mean final distance over the 4 conditions, noise-free evaluation. "
             f"**Stays < {cm}**: environment steps before the first evaluation from which every "
             f"later evaluation of the run is below {cm} (at least {consecutive} evaluations). "
             f"**First < {cm}**: before the first evaluation below {cm}, whatever follows. "
             f"{settings}", "",
             f"| method | seeds | budget (env steps) | stays < {cm}: steps, median [min, max] | "
             f"first < {cm}: steps, median [min, max] | final distance at end (cm, median) | "
             f"best (cm, median) | wall time per run (s, median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, s in summary.items():
        lines.append(f"| {METHOD_LABELS[method]} | {', '.join(map(str, s['seeds']))} | "
                     f"{s['budget']:,} | "
                     f"{_steps_text(s['stays'])} | {_steps_text(s['first'])} | "
                     f"{np.median(s['final_cm']):.2f} | {np.median(s['best_cm']):.2f} | "
                     f"{np.median(s['wall_s']):.0f} |")
    if "lqr_flm" in summary:
        others = [m for m in ("sac", "ppo", "pets", "mdgps") if m in summary]
        lines += ["", "Environment steps relative to LQR-FLM (ratio of medians over seeds; a seed "
                  "that never reached counts as its whole budget, so ≥ marks a lower bound):", "",
                  f"| method / LQR-FLM | stays < {cm} | first < {cm} |", "| --- | ---: | ---: |"]
        lines += [f"| {METHOD_LABELS[m]} | {_ratio_text(summary, m, 'stays')} | "
                  f"{_ratio_text(summary, m, 'first')} |" for m in others]
    return "\n".join(lines)


STEP_ZERO_DRAWN_AT = 300.0


def plot(curves: list[Curve], threshold_m: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"lqr_flm": "tab:blue", "mdgps": "tab:green", "sac": "tab:red", "ppo": "tab:orange",
               "pets": "tab:purple"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labelled = set()
    for c in curves:
        steps = np.maximum(np.asarray(c.steps, float), STEP_ZERO_DRAWN_AT)   # step 0 on a log axis
        ax.loglog(steps, 100 * np.asarray(c.distance_m), color=colours[c.method], alpha=0.8,
                  lw=1.2,
                  marker="." if c.method in ("lqr_flm", "mdgps", "pets") else None,
                  label=None if c.method in labelled else METHOD_LABELS[c.method])
        labelled.add(c.method)
    ax.axhline(100 * threshold_m, color="k", linestyle=":", label=f"{100 * threshold_m:g} cm")
    ax.set_xlim(left=0.8 * STEP_ZERO_DRAWN_AT)
    ax.set(xlabel=f"environment steps (log; 0 drawn at {STEP_ZERO_DRAWN_AT:g})",
           ylabel="mean final distance (cm)",
           title="2-link reach: noise-free final distance, mean of 4 conditions "
                 "(one line per seed)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _task(method: str, seed: int, args, lqr_config: ExperimentConfig,
          mdgps_config: ExperimentConfig) -> tuple[Callable, tuple]:
    """Return the run of `method` on `seed` as (function, arguments) for parallel.run_tasks."""
    if method in ("lqr_flm", "mdgps"):
        config, iterations = ((lqr_config, args.lqr_iterations) if method == "lqr_flm"
                              else (mdgps_config, args.mdgps_iterations))
        return run_model_based, (method, config, seed, iterations)
    if method == "pets":
        return run_pets, (LQR_CONFIG, seed, args.pets_steps, args.pets_eval_every,
                          args.pets_population, args.pets_particles, args.torch_threads)
    if method == "sac":
        return run_sac, (lqr_config, seed, args.sac_steps, args.eval_every)
    return run_ppo, (lqr_config, seed, args.ppo_steps,
                     max(args.eval_every, PPO_ZOO_ENVS * PPO_ZOO["n_steps"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["lqr_flm", "mdgps", "sac", "ppo", "pets"],
                        choices=list(METHOD_LABELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="seeds of every method")
    parser.add_argument("--lqr-iterations", type=int, default=10,
                        help="LQR-FLM iterations (config: 10)")
    parser.add_argument("--mdgps-iterations", type=int, default=12,
                        help="MDGPS iterations (config: 12)")
    parser.add_argument("--sac-steps", type=int, default=40_000,
                        help="SAC budget, environment steps")
    parser.add_argument("--ppo-steps", type=int, default=300_000,
                        help="PPO budget, environment steps")
    parser.add_argument("--pets-steps", type=int, default=1000,
                        help="PETS budget, environment steps")
    parser.add_argument("--pets-eval-every", type=int, default=200,
                        help="PETS evaluation period, environment steps (a multiple of T)")
    parser.add_argument("--pets-population", type=int, default=50,
                        help="PETS CEM population (mbrl's pets_reacher: 350)")
    parser.add_argument("--pets-particles", type=int, default=7,
                        help="PETS particles per sequence (mbrl's pets: 20); population x "
                             "particles must be a multiple of the ensemble's 7 members")
    parser.add_argument("--pets-curves", nargs="+", type=Path, metavar="JSON",
                        help="take the PETS curves from these run_pets.py --json files (one "
                             "per seed, run with the same settings) instead of running PETS")
    parser.add_argument("--eval-every", type=int, default=1000,
                        help="model-free evaluation period, environment steps (PPO: at least "
                             "once per rollout of 8 x 512 steps, as its policy only changes then)")
    parser.add_argument("--consecutive", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own process (one BLAS thread, "
                             "--torch-threads torch threads)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: seed 0, SAC 3000, PPO 8192 and PETS 400 steps, 7 LQR-FLM "
                             "/ MDGPS iterations")
    parser.add_argument("--plot", help=f"where the plot goes (default: "
                                       f"{DEFAULT_PLOT.relative_to(ROOT)}; with --quick a "
                                       "temporary file, never the committed plot)")
    parser.add_argument("--json", help="also write every curve to this file")
    parser.add_argument("--markdown", action="store_true",
                        help="print only the markdown report on stdout")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sac_steps, args.ppo_steps, args.pets_steps = [0], 3000, 8192, 400
        args.lqr_iterations = args.mdgps_iterations = 7
    if args.plot is None:
        quick_plot = Path(tempfile.gettempdir()) / "benchmark_sample_efficiency_quick.png"
        args.plot = str(quick_plot if args.quick else DEFAULT_PLOT)

    import torch
    torch.set_num_threads(args.torch_threads)
    log = sys.stderr if args.markdown else sys.stdout

    lqr_config = load_experiment(LQR_CONFIG)
    mdgps_config = dataclasses.replace(load_experiment(MDGPS_CONFIG), algorithm="mdgps")
    threshold = lqr_config.success_distance_m
    given = {}   # the PETS curves of --pets-curves, by seed
    if "pets" in args.methods and args.pets_curves:
        given = {c.seed: c for c in map(load_pets_curve, args.pets_curves)}
        missing = [seed for seed in args.seeds if seed not in given]
        if missing:
            raise SystemExit(f"no --pets-curves file has seed(s) {missing}")
    runs = [(method, seed) for method in args.methods for seed in args.seeds
            if not (method == "pets" and given)]
    if any(method == "pets" for method, _ in runs) and not PETS_PYTHON.exists():
        raise SystemExit(f"PETS needs its venv {PETS_PYTHON.relative_to(ROOT)} (`make bench` "
                         "makes it); or leave pets out of --methods, or give --pets-curves")
    start = time.perf_counter()
    ran = dict(zip(runs, run_tasks([_task(method, seed, args, lqr_config, mdgps_config)
                                    for method, seed in runs], args.jobs,
                                   [LQR_CONFIG, MDGPS_CONFIG], args.torch_threads)))
    curves = [ran[method, seed] if (method, seed) in ran else given[seed]
              for method in args.methods for seed in args.seeds]
    for curve in curves:
        reached = steps_to_reach(curve, threshold, args.consecutive)
        print(f"{METHOD_LABELS[curve.method]:15s} seed {curve.seed}: {curve.wall_s:7.1f} s, "
              f"{curve.steps[-1]:,} steps, final {100 * curve.distance_m[-1]:.2f} cm, "
              f"best {100 * min(curve.distance_m):.2f} cm, reached at "
              f"{'-' if reached is None else f'{reached:,}'} steps", file=log, flush=True)
        print("    mean distance (cm) at steps: " + " ".join(
            f"{s}:{100 * d:.2f}" for s, d in zip(curve.steps, curve.distance_m)), file=log)
        if curve.note:
            print(f"    {curve.note}", file=log)
    summary = summarise(curves, args.methods, threshold, args.consecutive)
    pets = (f", PETS {args.pets_steps:,} (CEM population {args.pets_population} x "
            f"{args.pets_particles} particles, evaluated every {args.pets_eval_every})"
            if "pets" in args.methods else "")
    settings = (f"Budgets: SAC {args.sac_steps:,}, PPO {args.ppo_steps:,}{pets} environment "
                f"steps; "
                f"LQR-FLM {args.lqr_iterations}, MDGPS {args.mdgps_iterations} iterations of "
                f"4 x {lqr_config.rollouts_per_condition} (LQR-FLM) and "
                f"{mdgps_config.rollouts_per_condition} (MDGPS) rollouts x 50 steps. Total wall "
                f"time {time.perf_counter() - start:.0f} s "
                f"(torch threads: {args.torch_threads}).")
    print(markdown_report(summary, threshold, args.consecutive, settings))
    plot(curves, threshold, Path(args.plot))
    print(f"\n![final distance against environment steps]({Path(args.plot).name})" if args.markdown
          else f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(c) for c in curves], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
