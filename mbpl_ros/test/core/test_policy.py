"""Tests of the MDGPS policy (core/policy/) against closed forms and autograd."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.gmm import GMMPrior
from mbpl_ros.core.mdgps import linearize_policy
from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy
from mbpl_ros.core.policy.network import Policy, load_policy, resolve_device, save_policy
from mbpl_ros.core.policy.settings import PolicySettings
from mbpl_ros.core.policy.training import controller_targets, train_policy

torch.set_num_threads(1)


def linear_teacher(rng, N, T, dX, dU, precision=None):
    """States X (N, T, dX), a time-invariant teacher u = K x + k and its targets."""
    K = rng.normal(size=(dU, dX))
    k = rng.normal(size=dU)
    X = 1.0 + 2.0 * rng.normal(size=(N, T, dX))
    mean = X @ K.T + k
    if precision is None:
        precision = np.eye(dU)
    return K, k, X, mean, np.broadcast_to(precision, (N, T, dU, dU)).copy()


def linear_policy(dX, dU, W, b, state_mean, state_std, variance):
    """Build a Policy without hidden layers: μ(x) = W (x − mean)/std + b."""
    policy = Policy(dX, dU, hidden_sizes=())
    with torch.no_grad():
        policy.network[0].weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        policy.network[0].bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        policy.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
        policy.state_std.copy_(torch.as_tensor(state_std, dtype=torch.float32))
        policy.action_variance.copy_(torch.as_tensor(variance, dtype=torch.float32))
        policy.normalizer_fitted.fill_(True)
    return policy


# ----------------------------------------------------------------------------- S-step


def test_policy_fits_linear_gaussian_teacher_on_held_out_states():
    rng = np.random.default_rng(0)
    dX, dU = 4, 2
    K, k, X, mean, precision = linear_teacher(rng, N=20, T=25, dX=dX, dU=dU)
    settings = PolicySettings(hidden_sizes=(32, 32), iterations=800, batch_size=64,
                              learning_rate=3e-3)
    policy = Policy.from_settings(dX, dU, settings)
    result = train_policy(policy, X, mean, precision, settings)

    assert result["iterations"] == 800 and not result["stopped_early"]
    assert result["epochs"] == pytest.approx(800 * 64 / 500)
    assert result["loss"] < 1e-3 * result["initial_loss"]
    held_out = 1.0 + 2.0 * rng.normal(size=(1000, dX))
    expected = held_out @ K.T + k
    rms_error = np.sqrt(np.mean((policy.action_mean(held_out) - expected) ** 2))
    # Tolerance: RMS error below 5 % of the targets' spread on fresh states.
    assert rms_error < 0.05 * expected.std(), (rms_error, expected.std())


def test_precision_weighting_follows_the_confident_controller():
    """
    Fit two controllers that disagree at the same states.

    Each is confident (precision 100) in a different action dimension. The minimiser of the
    precision-weighted loss is, per dimension, the precision-weighted average (100·μ_A + μ_B)/101 —
    an unweighted fit would sit at the plain average instead.
    """
    rng = np.random.default_rng(1)
    dX, dU, N, T = 3, 2, 6, 20
    X = rng.normal(size=(N, T, dX))
    K_a, K_b = rng.normal(size=(2, dU, dX))
    k_a, k_b = rng.normal(size=(2, dU))
    mean_a, mean_b = X @ K_a.T + k_a, X @ K_b.T + k_b
    precision_a, precision_b = np.diag([100.0, 1.0]), np.diag([1.0, 100.0])
    states = np.concatenate([X, X])
    targets = np.concatenate([mean_a, mean_b])
    precisions = np.concatenate([np.broadcast_to(precision_a, (N, T, dU, dU)),
                                 np.broadcast_to(precision_b, (N, T, dU, dU))])
    settings = PolicySettings(hidden_sizes=(), iterations=600, batch_size=2 * N * T,
                              learning_rate=2e-2)

    weighted = Policy.from_settings(dX, dU, settings)
    train_policy(weighted, states, targets, precisions, settings)
    unweighted = Policy.from_settings(dX, dU, settings)
    train_policy(unweighted, states, targets,
                 np.broadcast_to(np.eye(dU), precisions.shape).copy(), settings)

    a, b = precision_a.diagonal(), precision_b.diagonal()
    optimum = (a * mean_a + b * mean_b) / (a + b)
    fit_weighted, fit_unweighted = weighted.action_mean(X), unweighted.action_mean(X)
    np.testing.assert_allclose(fit_weighted, optimum, atol=1e-3)
    np.testing.assert_allclose(fit_unweighted, 0.5 * (mean_a + mean_b), atol=1e-3)
    # Dimension 0 follows controller A, dimension 1 controller B, far closer than unweighted.
    for dim, confident in ((0, mean_a), (1, mean_b)):
        gap_weighted = np.abs(fit_weighted[..., dim] - confident[..., dim]).mean()
        gap_unweighted = np.abs(fit_unweighted[..., dim] - confident[..., dim]).mean()
        assert gap_weighted < 0.05 * gap_unweighted


def test_variance_is_inverse_mean_precision_diagonal():
    rng = np.random.default_rng(2)
    dX, dU, N, T = 3, 2, 4, 10
    _, _, X, mean, _ = linear_teacher(rng, N, T, dX, dU)
    A = rng.normal(size=(N, T, dU, dU))
    precision = A @ np.swapaxes(A, 2, 3) + 0.5 * np.eye(dU)
    settings = PolicySettings(hidden_sizes=(8,), iterations=5, entropy_regularization=0.25)
    policy = Policy.from_settings(dX, dU, settings)
    train_policy(policy, X, mean, precision, settings)
    expected = np.array([1.0 / (precision[:, :, i, i].mean() + 0.5) for i in range(dU)])
    np.testing.assert_allclose(policy.action_variance.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(policy.action_covariance(), np.diag(expected), rtol=1e-6)


def test_log_det_term_shifts_reported_loss_only():
    rng = np.random.default_rng(3)
    _, _, X, mean, _ = linear_teacher(rng, 3, 5, 2, 2)
    precision = np.broadcast_to(np.diag([4.0, 9.0]), (3, 5, 2, 2)).copy()
    results = []
    for include in (False, True):
        settings = PolicySettings(hidden_sizes=(8,), iterations=20, batch_size=5,
                                  loss_includes_log_det=include)
        policy = Policy.from_settings(2, 2, settings)
        results.append(train_policy(policy, X, mean, precision, settings))
    shift = -np.log(36.0)
    assert results[1]["loss"] == pytest.approx(results[0]["loss"] + shift, rel=1e-5)
    assert results[1]["initial_loss"] == pytest.approx(results[0]["initial_loss"] + shift,
                                                       rel=1e-5)


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    rng = np.random.default_rng(4)
    _, _, X, mean, precision = linear_teacher(rng, 4, 10, 3, 2)

    def trained(seed):
        settings = PolicySettings(hidden_sizes=(16,), iterations=50, batch_size=8, seed=seed)
        policy = Policy.from_settings(3, 2, settings)
        train_policy(policy, X, mean, precision, settings)
        return policy.state_dict()

    first, again, other = trained(7), trained(7), trained(8)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    assert not torch.equal(first["network.0.weight"], other["network.0.weight"])


def test_warm_start_keeps_weights_and_first_normalization():
    rng = np.random.default_rng(5)
    K, k, X, mean, precision = linear_teacher(rng, 6, 10, 3, 2)
    settings = PolicySettings(hidden_sizes=(16,), iterations=300, batch_size=30,
                              learning_rate=5e-3)
    policy = Policy.from_settings(3, 2, settings)
    first = train_policy(policy, X, mean, precision, settings)
    normalizer = policy.state_mean.clone(), policy.state_std.clone()

    shifted = X + 3.0  # the next iteration's rollouts visit other states
    second = train_policy(policy, shifted, shifted @ K.T + k, precision, settings)
    assert torch.equal(policy.state_mean, normalizer[0])
    assert torch.equal(policy.state_std, normalizer[1])
    assert int(policy.s_steps) == 2
    # Warm start: the second S-step starts far below where a fresh network starts.
    assert second["initial_loss"] < 0.5 * first["initial_loss"]


def test_refitting_normalization_preserves_the_function():
    rng = np.random.default_rng(6)
    policy = Policy(3, 2, hidden_sizes=(16, 16), activation="tanh", seed=3)
    policy.fit_normalization(rng.normal(size=(50, 3)))
    probe = rng.normal(size=(20, 3))
    before = policy.action_mean(probe)
    policy.fit_normalization(5.0 + 3.0 * rng.normal(size=(50, 3)))
    np.testing.assert_allclose(policy.action_mean(probe), before, atol=1e-5)
    assert abs(float(policy.state_mean.mean()) - 5.0) < 1.5


def test_early_stopping_restores_best_held_out_weights():
    """
    Fit few noisy samples with a large network.

    The held-out loss falls, then rises as the network memorises the noise; training stops and
    keeps the best weights.
    """
    rng = np.random.default_rng(0)
    dX, dU, N, T = 2, 1, 8, 6
    X = rng.normal(size=(N, T, dX))
    targets = X @ np.array([[1.0], [-2.0]]) + 0.7 * rng.normal(size=(N, T, dU))
    precision = np.ones((N, T, dU, dU))
    settings = PolicySettings(hidden_sizes=(64, 64), iterations=5000, batch_size=12,
                              learning_rate=1e-2, validation_fraction=0.25,
                              validation_interval=20, patience=5)
    policy = Policy.from_settings(dX, dU, settings)
    result = train_policy(policy, X, targets, precision, settings)

    assert result["stopped_early"] and result["iterations"] < settings.iterations
    assert result["loss"] < 0.2 * result["initial_loss"]
    held_out = result["validation_rollouts"]
    assert len(held_out) == 2
    residual = policy.action_mean(X[held_out]) - targets[held_out]
    assert result["validation_loss"] == pytest.approx(np.mean(residual ** 2), rel=1e-4)


def test_controller_targets_match_per_sample_evaluation():
    rng = np.random.default_rng(8)
    T, dX, dU, N = 4, 3, 2, 5
    K, k = rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU))
    covar = np.broadcast_to(np.diag([0.5, 2.0]), (T, dU, dU)).copy()
    controller = LinearGaussianController(K, k, covar, np.linalg.cholesky(covar),
                                          np.linalg.inv(covar))
    X = rng.normal(size=(N, T, dX))
    mean, precision = controller_targets(controller, X)
    for n in range(N):
        for t in range(T):
            np.testing.assert_allclose(mean[n, t], K[t] @ X[n, t] + k[t])
            np.testing.assert_allclose(precision[n, t], np.diag([2.0, 0.5]))


def test_controller_targets_are_clamped_to_the_action_limits_and_bad_limits_rejected():
    """Targets beyond ±action_limits become the limit (what the robot applies); those inside
    are unchanged; limits of the wrong shape or not > 0 are refused."""
    rng = np.random.default_rng(9)
    T, dX, dU, N = 4, 3, 2, 6
    K, k = 5.0 * rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU))
    controller = LinearGaussianController.from_covar(K, k, np.eye(dU))
    X = rng.normal(size=(N, T, dX))
    limits = np.array([2.0, 0.5])
    free, _ = controller_targets(controller, X)
    clamped, _ = controller_targets(controller, X, limits)
    assert np.any(np.abs(free) > limits) and np.all(np.abs(clamped) <= limits)
    inside = np.abs(free) <= limits
    np.testing.assert_array_equal(clamped[inside], free[inside])
    np.testing.assert_array_equal(clamped[~inside], (np.sign(free) * limits)[~inside])
    for bad in ([2.0], [2.0, 0.0], [2.0, -1.0]):
        with pytest.raises(ValueError, match="action_limits must be"):
            controller_targets(controller, X, bad)


@pytest.mark.parametrize("field, value", [
    ("hidden_sizes", (64, 0)),
    ("hidden_sizes", "64"),
    ("activation", "sigmoidal"),
    ("learning_rate", 0.0),
    ("learning_rate", float("nan")),
    ("batch_size", 0),
    ("batch_size", 2.5),
    ("iterations", True),
    ("validation_fraction", 1.0),
    ("patience", 0),
    ("entropy_regularization", -1.0),
    ("min_state_std", 0.0),
    ("refit_normalization", "yes"),
    ("seed", -1),
    ("device", "tpu"),
])
def test_settings_reject_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"PolicySettings\.{field} must"):
        PolicySettings(**{field: value})


def test_settings_accept_yaml_style_lists():
    assert PolicySettings(hidden_sizes=[32, 16]).hidden_sizes == (32, 16)


def test_training_data_shapes_are_checked():
    policy = Policy(3, 2, hidden_sizes=(4,))
    X = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="target_mean must have shape"):
        train_policy(policy, X, np.zeros((2, 5, 3)), np.zeros((2, 5, 2, 2)))
    with pytest.raises(ValueError, match="X must have shape"):
        train_policy(policy, np.zeros((2, 5, 4)), np.zeros((2, 5, 2)), np.zeros((2, 5, 2, 2)))
    with pytest.raises(ValueError, match="weights must have shape"):
        train_policy(policy, X, np.zeros((2, 5, 2)), np.ones((2, 5, 2, 2)),
                     weights=np.ones(5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_configured_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        Policy.from_settings(2, 1, PolicySettings(device="cuda"))
    assert resolve_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- linearisation


def test_linearizing_a_linear_policy_recovers_its_gains():
    rng = np.random.default_rng(9)
    dX, dU, N, T = 4, 3, 12, 6
    W, b = rng.normal(size=(dU, dX)), rng.normal(size=dU)
    state_mean, state_std = rng.normal(size=dX), rng.uniform(0.5, 2.0, size=dX)
    variance = np.array([0.1, 0.2, 0.3])
    policy = linear_policy(dX, dU, W, b, state_mean, state_std, variance)
    X = rng.normal(size=(N, T, dX))

    lin = linearize_policy(policy, X, prior=None, regularization=1e-8)

    K_true = W / state_std
    k_true = b - K_true @ state_mean
    assert lin.K.shape == (T, dU, dX) and lin.k.shape == (T, dU)
    np.testing.assert_allclose(lin.K, np.broadcast_to(K_true, lin.K.shape), atol=1e-4)
    np.testing.assert_allclose(lin.k, np.broadcast_to(k_true, lin.k.shape), atol=1e-4)
    # The policy is exactly linear: no residual, the covariance is the policy's own.
    np.testing.assert_allclose(lin.covar, np.broadcast_to(np.diag(variance), lin.covar.shape),
                               atol=1e-4)
    np.testing.assert_allclose(lin.chol @ np.swapaxes(lin.chol, 1, 2), lin.covar, atol=1e-10)
    np.testing.assert_allclose(lin.inv_covar @ lin.covar,
                               np.broadcast_to(np.eye(dU), lin.covar.shape), atol=1e-8)


def test_gmm_prior_makes_few_sample_linearization_recover_the_gains():
    """
    Linearise from N = 2 rollouts in dX = 4.

    The per-step regression alone is underdetermined; a prior fitted on earlier rollouts of the
    same (linear) policy restores the gains.
    """
    rng = np.random.default_rng(14)
    dX, dU, T = 4, 2, 5
    W, b = rng.normal(size=(dU, dX)), rng.normal(size=dU)
    policy = linear_policy(dX, dU, W, b, np.zeros(dX), np.ones(dX), np.array([0.1, 0.1]))
    prior = GMMPrior(max_clusters=2, min_points_per_cluster=40, max_rollouts=30)
    linearize_policy(policy, rng.normal(size=(20, T, dX)), prior)  # earlier iteration
    assert prior.n_rollouts == 20 and prior.dim == dX + dU
    few = rng.normal(size=(2, T, dX))

    with_prior = linearize_policy(policy, few, prior)
    without_prior = linearize_policy(policy, few, prior=None)

    assert prior.n_rollouts == 22  # the prior was updated with this call's points
    gain_error = np.abs(with_prior.K - W[None]).max()
    assert gain_error < 1e-3, gain_error
    assert np.abs(without_prior.K - W[None]).max() > 10 * gain_error
    np.testing.assert_allclose(with_prior.k, np.broadcast_to(b, with_prior.k.shape), atol=1e-3)


def test_linearization_of_a_nonlinear_policy_matches_its_jacobian_locally():
    rng = np.random.default_rng(10)
    dX, dU, N, T = 3, 2, 30, 3
    policy = Policy(dX, dU, hidden_sizes=(16, 16), activation="tanh", seed=1)
    policy.fit_normalization(rng.normal(size=(100, dX)))
    centres = rng.normal(size=(T, dX))
    X = centres[None] + 1e-3 * rng.normal(size=(N, T, dX))  # states tightly around centres

    lin = linearize_policy(policy, X, prior=None, regularization=1e-12)

    for t in range(T):
        centre = torch.as_tensor(centres[t], dtype=torch.float32)
        jacobian = torch.autograd.functional.jacobian(policy, centre[None])[0, :, 0].numpy()
        np.testing.assert_allclose(lin.K[t], jacobian, rtol=0.05, atol=0.02)
        np.testing.assert_allclose(lin.K[t] @ centres[t] + lin.k[t],
                                   policy.action_mean(centres[t]), atol=1e-4)


# ----------------------------------------------------------------------------- export


def trained_small_policy(rng):
    _, _, X, mean, precision = linear_teacher(rng, 4, 8, 5, 3)
    settings = PolicySettings(hidden_sizes=(16, 8), activation="elu", iterations=30,
                              batch_size=16)
    policy = Policy.from_settings(5, 3, settings)
    train_policy(policy, X, mean, precision, settings)
    return policy


def test_torchscript_export_round_trips(tmp_path):
    rng = np.random.default_rng(11)
    policy = trained_small_policy(rng)
    path = tmp_path / "policy.pt"
    json_path = export_torchscript(policy, path, joint_names=["a", "b", "c"],
                                   extra_metadata={"task": "reach", "iteration": 3})

    metadata = json.loads(json_path.read_text())
    assert json_path == tmp_path / "policy.json"
    assert (metadata["dX"], metadata["dU"]) == (5, 3)
    assert metadata["joint_names"] == ["a", "b", "c"]
    assert metadata["hidden_sizes"] == [16, 8] and metadata["activation"] == "elu"
    assert metadata["extra"] == {"task": "reach", "iteration": 3}
    np.testing.assert_allclose(metadata["action_variance"], policy.action_variance.numpy())

    states = 1.0 + 2.0 * rng.normal(size=(7, 5))
    expected = policy.action_mean(states)
    loaded = load_exported_policy(path)
    np.testing.assert_allclose(loaded(states), expected, atol=1e-6)
    np.testing.assert_allclose(loaded(states[2]), expected[2], atol=1e-6)
    single32 = loaded(torch.as_tensor(states[0], dtype=torch.float32))
    assert single32.dtype == torch.float32 and single32.shape == (3,)
    batch64 = loaded.module(torch.as_tensor(states))
    assert batch64.dtype == torch.float64 and batch64.shape == (7, 3)
    np.testing.assert_allclose(batch64.numpy(), expected, atol=1e-6)
    with pytest.raises(Exception, match="dX=5"):
        loaded(np.zeros(4))

    # The embedded copy of the metadata suffices when the JSON file is gone.
    json_path.unlink()
    assert load_exported_policy(path).joint_names == ["a", "b", "c"]


def test_exported_policy_runs_in_a_fresh_process_without_mbpl_ros(tmp_path):
    rng = np.random.default_rng(12)
    policy = trained_small_policy(rng)
    export_torchscript(policy, tmp_path / "policy.pt")
    states = rng.normal(size=(4, 5))
    np.save(tmp_path / "states.npy", states)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        module = torch.jit.load({str(tmp_path / 'policy.pt')!r})
        actions = module(torch.from_numpy(np.load({str(tmp_path / 'states.npy')!r})))
        np.save({str(tmp_path / 'actions.npy')!r}, actions.numpy())
        assert not any(name.startswith('mbpl_ros') for name in sys.modules)
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env,
                   timeout=60)
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), policy.action_mean(states),
                               atol=1e-6)


def test_export_rejects_wrong_joint_names_and_unserialisable_metadata(tmp_path):
    policy = Policy(2, 2, hidden_sizes=(4,))
    with pytest.raises(ValueError, match="joint_names must name the dU=2"):
        export_torchscript(policy, tmp_path / "p.pt", joint_names=["only_one"])
    with pytest.raises(ValueError, match="extra_metadata must be JSON-serialisable"):
        export_torchscript(policy, tmp_path / "p.pt", extra_metadata={"bad": object()})


def test_checkpoint_round_trip_restores_weights_and_normalizer(tmp_path):
    rng = np.random.default_rng(13)
    policy = trained_small_policy(rng)
    save_policy(policy, tmp_path / "checkpoint.pt")
    restored = load_policy(tmp_path / "checkpoint.pt")
    for name, tensor in policy.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    assert (restored.hidden_sizes, restored.activation) == ((16, 8), "elu")
    states = rng.normal(size=(6, 5))
    np.testing.assert_array_equal(restored.action_mean(states), policy.action_mean(states))


def test_output_scaling_fits_large_actions_and_is_exported(tmp_path):
    """
    Fit targets of tens of units (an arm's gravity torques).

    With normalize_actions the same S-step budget fits them far better, and the exported module
    applies the scaling.
    """
    rng = np.random.default_rng(0)
    N, T, dX, dU = 4, 20, 6, 3
    X = rng.normal(size=(N, T, dX))
    target = np.array([40.0, -25.0, 10.0]) + 0.5 * X[..., :dU]                 # (N, T, dU)
    precision = np.broadcast_to(np.eye(dU), (N, T, dU, dU)).copy()
    losses = {}
    for scaled in (False, True):
        settings = PolicySettings(hidden_sizes=(32,), iterations=300, batch_size=32,
                                  normalize_actions=scaled, seed=0)
        policy = Policy.from_settings(dX, dU, settings)
        losses[scaled] = train_policy(policy, X, target, precision, settings)["loss"]
    assert losses[True] < 0.05 * losses[False], losses
    np.testing.assert_allclose(policy.action_offset.numpy(), target.reshape(-1, dU).mean(axis=0),
                               rtol=1e-5)
    export_torchscript(policy, tmp_path / "policy.pt")
    exported = load_exported_policy(tmp_path / "policy.pt")
    np.testing.assert_allclose(exported(X[0]), policy.action_mean(X[0]), rtol=1e-5, atol=1e-4)
    # Without the setting the scaling is the identity: the network's output as it was.
    plain = Policy(dX, dU, (32,))
    np.testing.assert_array_equal(plain.action_mean(X[0]), plain.network(
        torch.as_tensor(X[0], dtype=torch.float32)).detach().double().numpy())


def test_the_robot_side_loader_imports_no_training_dynamics_or_gmm():
    # A fresh interpreter: what loading a policy on the robot pulls in, and nothing else.
    code = ("import sys\n"
            "import mbpl_ros.core.policy.deploy\n"
            "import mbpl_ros.core.controller\n"
            "heavy = ['mbpl_ros.core.policy.training', 'mbpl_ros.core.policy.network',\n"
            "         'mbpl_ros.core.policy.settings', 'mbpl_ros.core.dynamics',\n"
            "         'mbpl_ros.core.gmm', 'mbpl_ros.core.mdgps', 'mbpl_ros.training']\n"
            "print([name for name in heavy if name in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
