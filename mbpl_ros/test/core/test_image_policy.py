"""The image policy: feature points, its TorchScript export, and its linearisation."""
import numpy as np
import pytest
import torch

from mbpl_ros.core.policy.deploy import export_torchscript, load_exported_policy
from mbpl_ros.core.policy.network import (ImagePolicy, Policy, SpatialSoftArgmax, load_policy,
                                          save_policy)
from mbpl_ros.core.policy.settings import ImagePolicySettings, PolicySettings

SMALL = ImagePolicySettings(conv_channels=(4, 6), kernel_sizes=(3, 3), strides=(2, 1))


def _policy(seed=0):
    return ImagePolicy(8, 2, [0, 1, 2, 3], (16, 20), SMALL, (16,), seed=seed)


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 16, 20, 3), dtype=np.uint8)


def test_spatial_soft_argmax_is_the_expected_position():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 7, 9) * 3.0
    layer = SpatialSoftArgmax(7, 9)
    with torch.no_grad():
        layer.log_temperature.fill_(np.log(0.7))
    points = layer(features).detach().numpy().reshape(3, 5, 2)
    xs, ys = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    for b in range(3):
        for c in range(5):
            f = features[b, c].double().numpy() / 0.7
            weights = np.exp(f - f.max())
            weights /= weights.sum()
            expected_x = sum(weights[i, j] * xs[j] for i in range(7) for j in range(9))
            expected_y = sum(weights[i, j] * ys[i] for i in range(7) for j in range(9))
            np.testing.assert_allclose(points[b, c], [expected_x, expected_y], atol=1e-5)


def test_a_single_bright_pixel_is_its_own_feature_point():
    features = torch.full((1, 1, 5, 5), -50.0)
    features[0, 0, 1, 4] = 50.0
    np.testing.assert_allclose(SpatialSoftArgmax(5, 5)(features).detach().numpy()[0],
                               [1.0, -0.5], atol=1e-6)


def test_the_exported_module_equals_the_policy(tmp_path):
    rng = np.random.default_rng(1)
    policy = _policy()
    X, images = rng.normal(size=(5, 8)), _images(rng, 5)
    policy.fit_normalization(X, images)
    json_path = export_torchscript(policy, tmp_path / "policy.pt", joint_names=["a", "b"])
    exported = load_exported_policy(tmp_path / "policy.pt")
    assert exported.needs_image and exported.image_shape == (16, 20)
    import json
    meta = json.loads(json_path.read_text())
    assert meta["image"] == {"height": 16, "width": 20, "channels": 3}
    assert meta["observation_indices"] == [0, 1, 2, 3] and meta["dO"] == 4
    expected = policy.action_mean(X, images)
    np.testing.assert_allclose(exported(X, images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported(X[:, :4], images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported(X[2], images[2]), expected[2], rtol=1e-5, atol=1e-6)
    # The module alone, as a robot loads it: obs (B, dO) float32 + uint8 images.
    module = torch.jit.load(str(tmp_path / "policy.pt"))
    out = module(torch.as_tensor(X[:, :4], dtype=torch.float32), torch.from_numpy(images))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs a camera image"):
        exported(X)
    with pytest.raises(Exception, match="policy image must have shape"):
        exported(X, images[:, :8])


def test_a_state_policy_needs_no_image(tmp_path):
    policy = Policy(8, 2, (8,))
    export_torchscript(policy, tmp_path / "p.pt")
    exported = load_exported_policy(tmp_path / "p.pt")
    assert not exported.needs_image and exported.image_shape is None
    assert exported(np.zeros(8)).shape == (2,)
    with pytest.raises(ValueError, match="takes no image"):
        exported(np.zeros(8), np.zeros((16, 20, 3), np.uint8))


def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    policy = _policy(seed=3)
    X, images = rng.normal(size=(4, 8)), _images(rng, 4)
    policy.fit_normalization(X, images)
    save_policy(policy, tmp_path / "c.pt")
    again = load_policy(tmp_path / "c.pt")
    np.testing.assert_array_equal(again.action_mean(X, images), policy.action_mean(X, images))


def test_settings_need_one_kernel_and_stride_per_convolution():
    with pytest.raises(ValueError, match="kernel_sizes must have one entry per convolution"):
        ImagePolicySettings(conv_channels=(4, 4), kernel_sizes=(3,), strides=(1, 1))
    with pytest.raises(ValueError, match="leave no pixel"):
        ImagePolicy(8, 2, [0, 1], (4, 4), SMALL)
    with pytest.raises(ValueError, match="needs PolicySettings.image"):
        ImagePolicy.from_settings(8, 2, [0, 1], (16, 20), PolicySettings())


def test_the_linearisation_recovers_a_policy_linear_in_the_observation():
    """μ = W ô + b exactly (features weighted 0): K̄ is W / std on o's entries, 0 elsewhere."""
    from mbpl_ros.core.mdgps import linearize_policy

    rng = np.random.default_rng(4)
    policy = ImagePolicy(8, 2, [0, 1, 2, 3], (16, 20), SMALL, (), seed=5)
    N, T = 12, 3
    X, images = rng.normal(size=(N, T, 8)), _images(rng, N * T).reshape(N, T, 16, 20, 3)
    policy.fit_normalization(X, images)
    W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.3, 0.0, -1.0, 2.0]])
    with torch.no_grad():
        policy.network[0].weight.zero_()
        policy.network[0].weight[:, :4] = W
        policy.network[0].bias.copy_(torch.tensor([0.2, -0.1]))
    fit = linearize_policy(policy, X, images=images, regularization=1e-9)
    std, mean = policy.state_std.double().numpy(), policy.state_mean.double().numpy()
    K = np.zeros((2, 8))
    K[:, :4] = W.double().numpy() / std
    k = np.array([0.2, -0.1]) - K[:, :4] @ mean
    for t in range(T):
        np.testing.assert_allclose(fit.K[t], K, atol=1e-4)
        np.testing.assert_allclose(fit.k[t], k, atol=1e-4)
    with pytest.raises(ValueError, match="give images"):
        linearize_policy(policy, X)


def test_the_linearisation_regresses_image_driven_actions_on_the_state():
    """Actions that depend on x only through the image are still linearised in x."""
    from mbpl_ros.core.mdgps import linearize_policy

    rng = np.random.default_rng(6)
    policy = ImagePolicy(8, 2, [0, 1, 2, 3], (16, 20), SMALL, (), seed=7)
    N, T = 40, 2
    X = rng.normal(size=(N, T, 8))
    # A bright square whose column follows x[5], a part of x the policy never observes.
    X[..., 5] = rng.uniform(-1.0, 1.0, size=(N, T))
    images = np.zeros((N, T, 16, 20, 3), np.uint8)
    columns = np.round(8 + 5 * X[..., 5]).astype(int)
    for n in range(N):
        for t in range(T):
            images[n, t, 6:10, columns[n, t]:columns[n, t] + 4] = 255
    policy.fit_normalization(X, images)
    fit = linearize_policy(policy, X, images=images, regularization=1e-9)
    actions = policy.action_mean(X, images)
    spread = np.abs(actions - actions.mean(0)).max()
    assert spread > 1e-3, "the square moves the feature points and so the actions"
    for t in range(T):
        predicted = X[:, t] @ fit.K[t].T + fit.k[t]
        residual = actions[:, t] - predicted
        # The fit explains most of the actions' variation through x[5] (the square's
        # position) and the observed entries; the other unobserved entries explain none.
        explained = 1 - residual.var(0).sum() / actions[:, t].var(0).sum()
        assert explained > 0.8
        assert np.all(np.abs(fit.K[t][:, [4, 6, 7]]) < 0.2 * np.abs(fit.K[t][:, 5:6]) + 1e-6)
