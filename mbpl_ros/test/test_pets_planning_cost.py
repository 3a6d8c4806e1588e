"""
The PETS peer's planning reward (bench/pets) is ReachEnv's reward on the same transitions.

planning_cost.py needs torch and mbpl_ros only, so these run in the main venv; the one
test of the mbrl-lib wiring (ReachModelEnv) needs mbrl, which lives in the PETS venv only.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpl_ros.core.costs import ActionCost, WeightedSum, build_cost
from mbpl_ros.experiment import load_experiment
from mbpl_ros.sim.gym_env import ReachEnv

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "bench" / "pets"))

from planning_cost import PlanningCost  # noqa: E402

CONFIG = REPOSITORY / "mbpl_ros" / "config" / "reacher_2link.yaml"


@pytest.fixture(scope="module")
def env():
    reach = ReachEnv(load_experiment(CONFIG))
    yield reach
    reach.close()


def _episode(env, seed, condition):
    """One ReachEnv episode of seeded random actions: X (T, dX) before each action, A, r (T,)."""
    rng = np.random.default_rng(seed)
    x, _ = env.reset(options={"condition": condition})
    X, A, rewards = [], [], []
    for _ in range(env.T):
        a = rng.uniform(-1.0, 1.0, env.layout.dU)
        X.append(x)
        A.append(a)
        x, r, terminated, truncated, _ = env.step(a)
        rewards.append(r)
        assert not terminated
    assert truncated
    return np.array(X), np.array(A), np.array(rewards)


def _t(array):
    return torch.as_tensor(np.asarray(array, float))


def test_step_costs_are_minus_reach_env_rewards(env):
    planning = PlanningCost(env.cost, env.T, env.effort_limits)
    for seed, condition in [(0, 0), (1, 3)]:
        X, A, rewards = _episode(env, seed, condition)
        l = planning.step_costs(_t(X)[None], _t(A)[None], 0)[0].numpy()  # noqa: E741
        np.testing.assert_allclose(-l, rewards, rtol=1e-12, atol=1e-14)
        # a window from t0 keeps the time ramps of t0 … t0+H-1
        l = planning.step_costs(_t(X[12:27])[None], _t(A[12:27])[None], 12)[0].numpy()  # noqa
        np.testing.assert_allclose(-l, rewards[12:27], rtol=1e-12, atol=1e-14)


def test_steps_past_the_truncation_cost_nothing(env):
    planning = PlanningCost(env.cost, env.T, env.effort_limits)
    X, A, rewards = _episode(env, 2, 1)
    H, t0 = 15, env.T - 5
    Xw = np.concatenate([X[t0:], np.repeat(X[-1:], H - 5, 0)])
    Aw = np.concatenate([A[t0:], np.ones((H - 5, env.layout.dU))])
    l = planning.step_costs(_t(Xw)[None], _t(Aw)[None], t0)[0].numpy()  # noqa: E741
    np.testing.assert_allclose(-l[:5], rewards[t0:], rtol=1e-12)
    assert np.all(l[5:] == 0.0)
    assert planning.reward(_t(Xw)[None], _t(Aw)[None], t0).item() == pytest.approx(
        rewards[t0:].sum(), rel=1e-12)


def test_sequence_reward_through_a_perfect_model_is_the_episode_return(env):
    """With the simulator itself as the model, a plan's reward is what ReachEnv pays for it."""
    planning = PlanningCost(env.cost, env.T, env.effort_limits)
    X, A, rewards = _episode(env, 3, 2)
    twin = ReachEnv(load_experiment(CONFIG))
    try:
        for t0, H in [(0, 15), (20, 15), (40, 15), (0, env.T)]:
            x, _ = twin.reset(options={"condition": 2})
            for t in range(t0):            # bring the twin to x_{t0} with the same actions
                x = twin.step(A[t])[0]
            np.testing.assert_array_equal(x, X[t0])
            window = np.concatenate([A[t0:t0 + H], np.zeros((max(0, t0 + H - env.T),
                                                             env.layout.dU))])

            state = {"x": x, "t": t0}

            def predict(action):
                # past the truncation a state is charged by no step: hold the last one
                if state["t"] < env.T:
                    state["x"], _, _, _, info = twin.step(action[0].numpy())
                    state["t"] = info["t"]
                return _t(state["x"])[None]

            got = planning.sequence_reward(_t(x)[None], _t(window)[None], predict, t0).item()
            assert got == pytest.approx(rewards[t0:t0 + H].sum(), rel=1e-12)
    finally:
        twin.close()


def test_every_core_term_kind_matches_core_costs(env):
    """State terms, log and l1l2 distances, every ramp: the value l of core.costs' evaluate."""
    layout, T = env.layout, env.T
    spec = {"action": {"weight": [0.01, 0.03], "scale": 2.0},
            "state": [{"block": "velocity", "weights": 0.1, "ramp": "quadratic"},
                      {"indices": [0, 1], "target": [0.3, -0.2], "weights": [1.0, 2.0],
                       "ramp": "final_only", "final_multiplier": 7.0}],
            "distance": [{"l1": 1.0, "l2": 10.0, "alpha": 1e-5, "ramp": "linear",
                          "final_multiplier": 5.0},
                         {"l1": 0.5, "l2": 1.0, "form": "log", "weights": [1.0, 2.0, 0.5],
                          "scale": 0.5}]}
    cost = build_cost(spec, layout, T)
    limits = np.array([2.0, 0.5])
    planning = PlanningCost(cost, T, limits)
    rng = np.random.default_rng(4)
    X = rng.normal(scale=0.3, size=(6, T, layout.dX))
    A = rng.uniform(-1.0, 1.0, size=(6, T, layout.dU))
    expected = cost.evaluate(X, A * limits).l
    np.testing.assert_allclose(planning.step_costs(_t(X), _t(A), 0).numpy(), expected,
                               rtol=1e-12, atol=1e-14)


def test_bad_input_is_refused_naming_what_is_allowed(env):
    with pytest.raises(ValueError, match="WeightedSum"):
        PlanningCost(ActionCost(0.1), env.T, env.effort_limits)

    class Unknown:
        def evaluate(self, X, U):
            raise AssertionError("never evaluated")

    with pytest.raises(ValueError, match="allowed: ActionCost, StateTargetCost, DistanceCost"):
        PlanningCost(WeightedSum([(1.0, Unknown())]), env.T, env.effort_limits)
    planning = PlanningCost(env.cost, env.T, env.effort_limits)
    X, A = torch.zeros(2, 5, env.layout.dX), torch.zeros(2, 5, env.layout.dU)
    with pytest.raises(ValueError, match=r"t0 must be in \[0, 50\)"):
        planning.step_costs(X, A, env.T)
    with pytest.raises(ValueError, match="same"):
        planning.step_costs(X, A[:, :4], 0)


def test_reach_model_env_plans_with_the_planning_cost(env):
    """mbrl's ModelEnv subclass: particles averaged, the time index passed through."""
    pytest.importorskip("mbrl", reason="mbrl-lib is installed only in the PETS venv "
                                       "(.venv-pets, made by `make bench`)")
    import run_pets
    import mbrl.util.common

    cfg = run_pets.make_cfg(run_pets.PETS_REACHER, env.T, 100, 0, 7)
    model = mbrl.util.common.create_one_dim_tr_model(cfg, env.observation_space.shape,
                                                     env.action_space.shape)
    planning = PlanningCost(env.cost, env.T, env.effort_limits)
    model_env = run_pets.ReachModelEnv(env, model, planning)
    x, _ = env.reset(options={"condition": 0})
    sequences = torch.zeros(3, 1, env.layout.dU)   # H = 1: only the observed x_0 is charged
    model_env.t0 = 49
    got = model_env.evaluate_action_sequences(sequences, x, num_particles=7)
    expected = -planning.step_costs(_t(x)[None, None], sequences[:1].double(), 49).item()
    np.testing.assert_allclose(got.numpy(), np.full(3, expected), rtol=1e-5)
