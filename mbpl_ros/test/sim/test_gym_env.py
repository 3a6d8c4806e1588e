"""ReachEnv poses exactly the offline task: same states, same cost, same success measure."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mbpl_ros.core.controller import smoothed_noise
from mbpl_ros.experiment import load_experiment
from mbpl_ros.sim.arm import Arm
from mbpl_ros.sim.gym_env import ReachEnv
from mbpl_ros.core.rollouts import final_distance
from mbpl_ros.sim.rollout import run_rollout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config():
    return load_experiment(ROOT / "config" / "reacher_2link.yaml")


@pytest.fixture
def env(config):
    env = ReachEnv(config)
    yield env
    env.close()


def recorded_rollout(config, condition: int, seed: int = 3):
    """
    Run a noisy rollout of the config's initial controller on its own arm.

    Returns X (T, dX), U (T, dU), with an extra push beyond the effort limits in the middle
    (clamped by the arm).
    """
    layout = config.layout
    spec = config.conditions[condition]
    with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
        controller = config.initial_controllers(arm)[condition]
        noise = smoothed_noise(np.random.default_rng(seed), config.T, layout.dU,
                               smoothing_sigma=2.0)

        def act(t, x):
            u = controller.act(t, x, noise[t])
            return u + (5.0 if 10 <= t < 14 else 0.0)   # 5 N·m above both joints' limits

        X, U = run_rollout(arm, layout, act, spec.initial_positions, spec.target, config.T)
    return X, U


def play(env, efforts, condition):
    """
    Run an episode commanding efforts (T, dU) in N·m.

    Returns observations (T+1, dX), rewards (T,), truncation flags (T,) and the last info.
    """
    x, _ = env.reset(options={"condition": condition})
    observations, rewards, truncations = [x], [], []
    for effort in efforts:
        x, reward, terminated, truncated, info = env.step(env.action_from_effort(effort))
        assert terminated is False
        observations.append(x), rewards.append(reward), truncations.append(truncated)
    return np.array(observations), np.array(rewards), np.array(truncations), info


def test_passes_the_gymnasium_env_checker(config):
    env = ReachEnv(config, condition_order="random")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)
        # The state (joint speeds, offsets) has no hard bounds: the only warnings allowed
        # are the checker's remarks on the unbounded observation box.
        unexpected = [str(w.message) for w in caught if "infinity" not in str(w.message)]
        assert unexpected == []
    finally:
        env.close()


@pytest.mark.parametrize("condition", [0, 2])
def test_observations_and_rewards_match_a_recorded_rollout_and_the_core_cost(config, condition):
    # Actions in N·m, so the replayed efforts are bit-identical to the recorded ones.
    env = ReachEnv(config, normalize_actions=False)
    X, U = recorded_rollout(config, condition)
    assert np.all(np.abs(U) <= env.effort_limits) and np.any(np.abs(U) == env.effort_limits)
    observations, rewards, truncations, info = play(env, U, condition)

    # Same states as sim.rollout.observe along run_rollout: the simulation is deterministic.
    np.testing.assert_array_equal(observations[:-1], X)
    # Reward of step t = -l_t(x_t, u_t), from one whole-trajectory evaluation of the core cost.
    core_cost = config.build_cost().evaluate(X[None], U[None]).l[0]
    np.testing.assert_allclose(rewards, -core_cost, rtol=1e-12, atol=1e-14)
    # The ramp makes the last steps dearer: a time-blind reward would not match above.
    assert core_cost[-1] > 4 * core_cost[-2] > 0
    # Truncated after exactly T steps, with the offline success measure.
    assert truncations.tolist() == [False] * (config.T - 1) + [True]
    assert info["final_distance_m"] == pytest.approx(final_distance(X, config.layout), rel=1e-12)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.close()


def test_effort_beyond_the_limits_is_clamped_and_charged_as_applied(env, config):
    env.reset(options={"condition": 1})
    x = env.unwrapped._x.copy()
    _, reward, *_ = env.step(np.array([3.0, -3.0]))      # normalised: 3x the limits
    applied = np.array([1.0, -1.0]) * env.effort_limits
    assert reward == pytest.approx(-env.step_cost(x, applied, 0), rel=1e-12)
    # The action term alone: ½ · 0.01 · Σ u² for the applied, not the commanded, effort.
    expected_action_cost = 0.5 * 0.01 * np.sum(applied ** 2)
    distance_only = env.step_cost(x, np.zeros(2), 0)
    assert -reward - distance_only == pytest.approx(expected_action_cost, rel=1e-12)


def test_same_seed_gives_the_same_episode_and_the_round_robin_visits_every_condition(config):
    env = ReachEnv(config, condition_order="random")
    try:
        actions = np.random.default_rng(0).uniform(-1, 1, size=(config.T, 2))

        def episode(seed):
            x, info = env.reset(seed=seed)
            xs, rs = [x], []
            for a in actions:
                x, r, *_ = env.step(a)
                xs.append(x), rs.append(r)
            return info["condition"], np.array(xs), np.array(rs)

        first, second = episode(7), episode(7)
        assert first[0] == second[0]
        np.testing.assert_array_equal(first[1], second[1])
        np.testing.assert_array_equal(first[2], second[2])
        # Seeded random order: the same seed draws the same sequence of conditions.
        env.reset(seed=11)
        drawn = [env.reset()[1]["condition"] for _ in range(12)]
        env.reset(seed=11)
        assert [env.reset()[1]["condition"] for _ in range(12)] == drawn
        assert set(drawn) == {0, 1, 2, 3}
    finally:
        env.close()

    env = ReachEnv(config)   # round-robin; a seed restarts the cycle
    try:
        assert [env.reset()[1]["condition"] for _ in range(5)] == [0, 1, 2, 3, 0]
        assert env.reset(seed=1)[1]["condition"] == 0
        x, info = env.reset(options={"condition": 3})
        assert info["condition"] == 3
        np.testing.assert_allclose(x[:2], config.conditions[3].initial_positions)
        np.testing.assert_allclose(x[4:7],
                                   env.arm.ee_position() - np.array(config.conditions[3].target))
        assert env.reset()[1]["condition"] == 1           # options do not advance the cycle
    finally:
        env.close()


def test_action_spaces_and_bad_input(config):
    env = ReachEnv(config, normalize_actions=False)
    try:
        np.testing.assert_array_equal(env.action_space.high, env.effort_limits)
        np.testing.assert_array_equal(env.action_space.low, -env.effort_limits)
        assert env.observation_space.shape == (config.layout.dX,)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(2))
        env.reset()
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3))
        with pytest.raises(ValueError, match=r"options\['condition'\]"):
            env.reset(options={"condition": 4})
        with pytest.raises(ValueError, match="time index"):
            env.step_cost(np.zeros(config.layout.dX), np.zeros(2), config.T)
    finally:
        env.close()
    with pytest.raises(ValueError, match="round_robin, random"):
        ReachEnv(config, condition_order="shuffled")
    with pytest.raises(ValueError, match="ExperimentConfig"):
        ReachEnv({"robot": "reacher_2link"})
    env = ReachEnv(config)
    try:
        np.testing.assert_array_equal(env.action_space.high, np.ones(2))
    finally:
        env.close()
