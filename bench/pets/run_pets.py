"""
PETS (mbrl-lib 0.2.0) on an experiment's reach, or on mbrl's cartpole as a check; JSON out.

Runs in the PETS venv (.venv-pets, made by `make bench`; mbrl's pins clash with the main
venv's), started by bench/sample_efficiency.py as a subprocess:

    .venv-pets/bin/python bench/pets/run_pets.py reach --config CONFIG --seed 0
        --budget 3000 --eval-every 200 [--population 350 --particles 20] --json OUT
    .venv-pets/bin/python bench/pets/run_pets.py cartpole --seed 0 --trials 3

The recipe is mbrl.algorithms.pets.train's, written out here because the reach needs
what that function does not offer: the time index of the planning cost, and evaluations
during training. Its parts are mbrl-lib's own: a probabilistic ensemble
(mbrl.models.GaussianMLP in OneDTransitionRewardModel, normalised inputs, delta targets),
its ModelTrainer, and the CEM TrajectoryOptimizerAgent over mbrl.models.ModelEnv with
num_particles particles per sequence (trajectory sampling, propagation random_model).

Hyperparameters: mbrl-lib's examples/conf for pets_reacher (overrides/pets_reacher.yaml,
algorithm/pets.yaml, dynamics_model/gaussian_mlp_ensemble.yaml, action_optimizer/cem.yaml):
ensemble of 7 (5 elites), 4 hidden layers of 200 SiLU, lr 4e-4, weight decay 1.7e-4,
batch 32, validation ratio 0.05, patience 25, at most 25 epochs per training, planning
horizon 15, CEM 5 iterations, elite ratio 0.1, population 350, alpha 0.1, truncated normal
sampling, mean of the elites returned, 20 particles, replanning every step. Deviations:
- reward: not learned (pets_reacher learns it) but computed by planning_cost.PlanningCost,
  minus the experiment's per-step cost on the predicted states: the same reward ReachEnv
  pays (learned_rewards false, as in mbrl's pets_cartpole). Termination: none.
- no_delta_list empty: pets_reacher's [0] is an index of mbrl's own reacher observation;
  every entry of our x is predicted as a delta.
- the trial is our episode (T = 50 steps, conditions round-robin); the initial random
  exploration is one episode per condition (pets.yaml: one trial), and the model is
  retrained before every episode (every T steps, more often than pets_reacher's 250, in
  PETS's favour).
- --population and --particles (default: the config's 350 and 20) may be lowered where
  the CPU budget demands it; the report states what a run used.
Evaluation (reach): before training starts and every --eval-every environment steps,
offline.evaluate_policy runs the planner noise-free (the CEM mean, no added exploration)
from each training condition on its own arm, exactly as for SAC and PPO; these runs are
never counted as environment steps and never enter the replay buffer.

Cartpole: mbrl's cartpole_continuous with its pets_cartpole config and reward_fns.cartpole
(a trial's return is the number of steps the pole stays up, 200 at most), through
mbrl.algorithms.pets.train itself; prints each trial's return.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import omegaconf
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "mbpl_ros"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mbrl.models  # noqa: E402
import mbrl.planning  # noqa: E402
import mbrl.util.common  # noqa: E402

from planning_cost import PlanningCost  # noqa: E402

#: mbrl-lib examples/conf/overrides/pets_reacher.yaml (reward and no_delta_list: see above).
PETS_REACHER = dict(learned_rewards=False, num_elites=5, model_lr=4e-4, model_wd=1.7e-4,
                    model_batch_size=32, validation_ratio=0.05, no_delta_list=[], patience=25,
                    num_epochs_train_model=25, planning_horizon=15, cem_num_iters=5,
                    cem_elite_ratio=0.1, cem_population_size=350, cem_alpha=0.1,
                    cem_clipped_normal=False)
NUM_PARTICLES = 20   # algorithm/pets.yaml


def make_cfg(overrides: dict, trial_length: int, num_steps: int, seed: int,
             num_particles: int) -> omegaconf.DictConfig:
    """Compose mbrl-lib's main/pets/gaussian_mlp_ensemble/cem configuration for `overrides`."""
    cfg = {
        "seed": seed, "device": "cpu",
        "overrides": dict(overrides, trial_length=trial_length, num_steps=num_steps),
        "algorithm": {
            "name": "pets", "normalize": True, "normalize_double_precision": True,
            "target_is_delta": True, "initial_exploration_steps": trial_length,
            "freq_train_model": trial_length, "learned_rewards": overrides["learned_rewards"],
            "num_particles": num_particles,
            # _recursive_ off (as hydra 1.0 behaved for mbrl): the agent instantiates its
            # optimizer once it has set the optimizer's bounds.
            "agent": {"_target_": "mbrl.planning.TrajectoryOptimizerAgent", "_recursive_": False,
                      "action_lb": "???", "action_ub": "???",
                      "planning_horizon": "${overrides.planning_horizon}",
                      "optimizer_cfg": "${action_optimizer}", "replan_freq": 1,
                      "verbose": False}},
        # _recursive_ off: GaussianMLP instantiates activation_fn_cfg itself (hydra 1.3 would
        # otherwise pass it an SiLU object, which omegaconf refuses).
        "dynamics_model": {"_target_": "mbrl.models.GaussianMLP", "_recursive_": False,
                           "device": "cpu",
                           "num_layers": 4, "ensemble_size": 7, "hid_size": 200,
                           "in_size": "???", "out_size": "???", "deterministic": False,
                           "propagation_method": "random_model", "learn_logvar_bounds": False,
                           "activation_fn_cfg": {"_target_": "torch.nn.SiLU"}},
        "action_optimizer": {"_target_": "mbrl.planning.CEMOptimizer",
                             "num_iterations": "${overrides.cem_num_iters}",
                             "elite_ratio": "${overrides.cem_elite_ratio}",
                             "population_size": "${overrides.cem_population_size}",
                             "alpha": "${overrides.cem_alpha}", "lower_bound": "???",
                             "upper_bound": "???", "return_mean_elites": True, "device": "cpu",
                             "clipped_normal": "${overrides.cem_clipped_normal}"}}
    cfg = omegaconf.OmegaConf.create(cfg)
    # in_size/out_size are filled in by create_one_dim_tr_model from the spaces.
    cfg.dynamics_model.in_size = None
    cfg.dynamics_model.out_size = None
    return cfg


class ReachModelEnv(mbrl.models.ModelEnv):
    """
    mbrl's ModelEnv with the reach's reward: minus the experiment's cost l_t(x_t, u_t).

    ModelEnv charges reward_fn(u_t, x_{t+1}) without a time index; ReachEnv pays
    -l_t(x_t, u_t), on the state before the action and with the time ramps at t. So the
    sequences are rolled out through the model (as ModelEnv does, sampling) and the whole
    predicted trajectory is charged once by PlanningCost, from the time index t0 of the
    state being planned from (set before every act).
    """

    def __init__(self, env, model, planning_cost: PlanningCost, generator=None):
        super().__init__(env, model, termination_fn=_never, reward_fn=None, generator=generator)
        self.planning_cost = planning_cost
        self.t0 = 0

    def evaluate_action_sequences(self, action_sequences: torch.Tensor,
                                  initial_state: np.ndarray, num_particles: int) -> torch.Tensor:
        """Return the mean over particles of each sequence's planning reward (population,)."""
        with torch.no_grad():
            population, horizon, _ = action_sequences.shape
            obs = np.tile(initial_state, (num_particles * population, 1)).astype(np.float32)
            model_state = self.reset(obs, return_as_np=False)
            actions = torch.repeat_interleave(action_sequences, num_particles, dim=0)

            def predict(action: torch.Tensor) -> torch.Tensor:
                nonlocal model_state
                next_obs, _, _, model_state = self.step(action, model_state, sample=True)
                return next_obs

            rewards = self.planning_cost.sequence_reward(torch.from_numpy(obs), actions,
                                                         predict, self.t0)
            return rewards.reshape(-1, num_particles).mean(dim=1).float()


def _never(act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """Termination function of a task without terminal states: never done."""
    return torch.zeros(next_obs.shape[0], 1, dtype=torch.bool, device=next_obs.device)


class PlannerPolicy:
    """The PETS agent as a state-feedback effort of evaluate_policy: x (dX,) -> u (dU,) N·m."""

    def __init__(self, agent, model_env: ReachModelEnv, effort_limits: np.ndarray, T: int):
        self.agent, self.model_env = agent, model_env
        self.effort_limits, self.T = effort_limits, T
        self.t = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.t == 0:
            self.agent.reset()
        self.model_env.t0 = self.t
        action = self.agent.act(np.asarray(x, float))
        self.t = (self.t + 1) % self.T      # evaluate_policy runs T steps per condition
        return self.effort_limits * np.clip(action, -1.0, 1.0)


def run_reach(config_path: Path, seed: int, budget: int, eval_every: int, population: int,
              particles: int, partial: Optional[Path] = None, log=sys.stderr) -> dict:
    """
    Train PETS for `budget` environment steps on the reach of `config_path`; the curve.

    With `partial`, the curve so far is written there after every evaluation (complete:
    false until the run ends), so a run stopped by a time limit still leaves its curve.
    """
    from mbpl_ros.experiment import load_experiment
    from mbpl_ros.offline import evaluate_policy
    from mbpl_ros.sim.gym_env import ReachEnv

    config = load_experiment(config_path)
    T, M = config.T, len(config.conditions)
    if eval_every % T:
        raise ValueError(f"--eval-every must be a multiple of T = {T} (evaluations come between "
                         f"episodes); got {eval_every}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    overrides = dict(PETS_REACHER, cem_population_size=population)
    cfg = make_cfg(overrides, trial_length=T, num_steps=budget, seed=seed,
                   num_particles=particles)

    env = ReachEnv(config, condition_order="round_robin")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
    dynamics_model = mbrl.util.common.create_one_dim_tr_model(cfg, obs_shape, act_shape)
    replay_buffer = mbrl.util.common.create_replay_buffer(
        cfg, obs_shape, act_shape, rng=rng, obs_type=np.double, action_type=np.double,
        reward_type=np.double)
    planning_cost = PlanningCost(env.cost, T, env.effort_limits)
    model_env = ReachModelEnv(env, dynamics_model, planning_cost, generator=generator)
    trainer = mbrl.models.ModelTrainer(dynamics_model, optim_lr=cfg.overrides.model_lr,
                                       weight_decay=cfg.overrides.model_wd)
    agent = mbrl.planning.create_trajectory_optim_agent_for_model(
        model_env, cfg.algorithm.agent, num_particles=particles)
    random_agent = mbrl.planning.RandomAgent(env)

    eval_arm = config.make_arm()
    starts = np.array([c.initial_positions for c in config.conditions], float)
    targets = np.array([c.target for c in config.conditions], float)
    policy = PlannerPolicy(agent, model_env, env.effort_limits, T)
    steps, distances, step_s = [], [], []
    start = time.perf_counter()

    def result(complete: bool) -> dict:
        planning_ms = 1e3 * np.median(step_s) if step_s else float("nan")
        return {"method": "pets", "seed": seed, "steps": steps, "distance_m": distances,
                "wall_s": time.perf_counter() - start, "budget": budget, "complete": complete,
                "note": f"population {population}, particles {particles}, horizon "
                        f"{cfg.overrides.planning_horizon}; planning {planning_ms:.0f} ms per "
                        "environment step (median CPU time)"}

    def evaluate(env_steps: int) -> None:
        distance, _ = evaluate_policy(eval_arm, config, policy, starts, targets)
        steps.append(env_steps)
        distances.append(float(np.mean(distance)))
        print(f"    PETS seed {seed}: {env_steps:,} steps, mean final distance "
              f"{100 * distances[-1]:.2f} cm ({time.perf_counter() - start:.0f} s)",
              file=log, flush=True)
        if partial is not None:
            partial.write_text(json.dumps(result(complete=False)))

    env_steps, trained = 0, False
    try:
        while env_steps < budget:
            exploring = env_steps < M * T      # one random episode per condition first
            if not exploring:
                mbrl.util.common.train_model_and_save_model_and_data(
                    dynamics_model, trainer, cfg.overrides, replay_buffer)
                trained = True
            if trained and env_steps % eval_every == 0 and (not steps or steps[-1] < env_steps):
                evaluate(env_steps)
            obs, _ = env.reset()
            agent.reset()
            for t in range(T):
                tick = time.process_time()
                model_env.t0 = t
                action = (random_agent if exploring else agent).act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                replay_buffer.add(obs, action, next_obs, reward, terminated, truncated)
                obs = next_obs
                env_steps += 1
                if not exploring:
                    step_s.append(time.process_time() - tick)
        mbrl.util.common.train_model_and_save_model_and_data(
            dynamics_model, trainer, cfg.overrides, replay_buffer)
        if steps[-1] < env_steps:
            evaluate(env_steps)
    finally:
        eval_arm.close()
        env.close()
    return result(complete=True)


def run_cartpole(seed: int, trials: int, population: int, particles: int) -> dict:
    """Run mbrl.algorithms.pets.train on mbrl's cartpole_continuous; each trial's return."""
    import mbrl.algorithms.pets as pets
    import mbrl.env.cartpole_continuous as cartpole_env
    import mbrl.env.reward_fns as reward_fns
    import mbrl.env.termination_fns as termination_fns

    #: mbrl-lib examples/conf/overrides/pets_cartpole.yaml.
    overrides = dict(learned_rewards=False, num_elites=5, model_lr=7.5e-4, model_wd=3e-5,
                     model_batch_size=256, validation_ratio=0, freq_train_model=50,
                     patience=25, num_epochs_train_model=25, planning_horizon=15,
                     cem_num_iters=5, cem_elite_ratio=0.1, cem_population_size=population,
                     cem_alpha=0.1, cem_clipped_normal=False)
    trial_length = 200
    cfg = make_cfg(overrides, trial_length, trials * trial_length, seed, particles)
    cfg.algorithm.freq_train_model = overrides["freq_train_model"]
    env = cartpole_env.CartPoleEnv()
    env.reset(seed=seed)
    env.action_space.seed(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        pets.train(env, termination_fns.cartpole, reward_fns.cartpole, cfg, silent=False,
                   work_dir=work_dir)
        rows = Path(work_dir, "results.csv").read_text().split("\n")[1:]
    returns = [float(r.split(",")[-1]) for r in rows if r.strip()]
    return {"task": "cartpole_continuous", "seed": seed, "returns": returns,
            "population": population, "particles": particles,
            "wall_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("task", choices=["reach", "cartpole"])
    parser.add_argument("--config", type=Path, help="experiment YAML (reach)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=3000, help="environment steps (reach)")
    parser.add_argument("--eval-every", type=int, default=200,
                        help="environment steps between evaluations, a multiple of T (reach)")
    parser.add_argument("--trials", type=int, default=3, help="trials of 200 steps (cartpole)")
    parser.add_argument("--population", type=int, default=PETS_REACHER["cem_population_size"])
    parser.add_argument("--particles", type=int, default=NUM_PARTICLES)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the result here (else stdout)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    if args.task == "reach":
        if args.config is None:
            parser.error("reach needs --config")
        result = run_reach(args.config, args.seed, args.budget, args.eval_every,
                           args.population, args.particles, partial=args.json)
    else:
        result = run_cartpole(args.seed, args.trials, args.population, args.particles)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
