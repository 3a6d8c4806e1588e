"""dynamics_fitter over DDS: one batch per (condition, controller version), so a trainer that
restarts at version 0, or resumes at a version it sampled before, gets complete fits equal to
LQR-FLM's own chain of fit_batch_dynamics calls from a fresh prior (the offline algorithm)."""
import copy

import numpy as np
import pytest

from loop_helpers import Recorder, create_probe, parameters, small_experiment, spinning, wait_until
from mbpl_ros.core.lqr_flm import fit_batch_dynamics, new_dynamics_prior
from mbpl_ros.experiment import load_experiment
from mbpl_ros.nodes import wire
from mbpl_ros_interfaces import msg as interfaces
from mbpl_ros.nodes.dynamics_fitter import DynamicsFitterNode
from mbpl_ros.sim.arm import Arm
from mbpl_ros.core.controller import rollout_noise
from mbpl_ros.sim.rollout import run_rollout

T, N = 10, 2


def batches(config, seed, versions):
    """Per version, N rollouts (X (N, T, dX), U (N, T, dU)) of the initial controller with
    exploration noise of `seed`: real arm data, different for each seed and version."""
    layout, spec = config.layout, config.conditions[0]
    data = []
    with Arm(config.robot, physics_dt=config.physics_dt, substeps=config.substeps) as arm:
        controller = config.initial_controllers(arm)[0]
        for version in range(versions):
            X, U = [], []
            for n in range(N):
                noise = 3.0 * rollout_noise(seed, version, 0, n, T, layout.dU, 2.0, True)
                x, u = run_rollout(arm, layout, lambda t, x: controller.act(t, x, noise[t]),
                                   spec.initial_positions, spec.target, T)
                X.append(x), U.append(u)
            data.append((np.stack(X), np.stack(U)))
    return data


def offline_chain(config, data, prior=None):
    """LQR-FLM's fits of consecutive batches (from version 0, or after `prior`), and the prior after."""
    settings = config.lqr_flm_settings()
    prior = new_dynamics_prior(settings.dynamics.prior) if prior is None else copy.deepcopy(prior)
    fits = [fit_batch_dynamics(prior, X, U, settings.dynamics.regularization) for X, U in data]
    return fits, prior


class Trainer:
    """Plays sample_collector + gps_trainer: publishes rollouts, records the complete fits."""

    def __init__(self, context):
        self.node = create_probe(context, "trainer_probe")
        self.fits = Recorder(wire.decode_dynamics)
        self.node.create_subscription(interfaces.LinearGaussianDynamics, wire.DYNAMICS_TOPIC, self.fits, wire.EVENTS_QOS)
        self.rollouts = self.node.create_publisher(interfaces.Rollout, wire.ROLLOUTS_TOPIC, wire.EVENTS_QOS)

    def sample(self, version, X, U, first_id, timeout=20, images=None):
        """Publish a batch of version `version` (with images (N, T, H, W, 3), if given); its
        complete fit (waited for) by trial ids."""
        ids = tuple(range(first_id, first_id + N))
        for n in range(N):
            self.rollouts.publish(wire.encode_rollout(wire.RolloutMessage(
                trial_id=ids[n], condition=0, iteration=version + 1, index=n, controller_version=version,
                purpose="sample", status=wire.TrialStatus.OK, X=X[n], U=U[n],
                images=None if images is None else images[n])))

        def complete(items):
            return [m for m in items if m.complete and m.controller_version == version and m.trial_ids == ids]
        assert self.fits.wait_for(complete, timeout=timeout), \
            f"no complete fit of version {version} on {ids}"
        return complete(self.fits.items)[-1].dynamics

    def destroy_node(self):
        self.node.destroy_node()


def assert_same_dynamics(actual, expected):
    for name in ("F", "f", "covar", "x0_mean", "x0_covar"):
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.timeout(60)
def test_a_restarted_or_resumed_trainer_gets_the_fits_of_lqr_flm_at_any_version(ros_context, tmp_path):
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=N)
    config = load_experiment(experiment)
    first_run, restarted = batches(config, seed=1, versions=3), batches(config, seed=2, versions=2)
    resumed = batches(config, seed=3, versions=2)[1]
    fitter = DynamicsFitterNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    trainer = Trainer(ros_context)
    with spinning(ros_context, [fitter, trainer]):
        wait_until(lambda: trainer.rollouts.get_subscription_count()
                   and trainer.node.count_publishers(wire.DYNAMICS_TOPIC), what="discovery")
        # A run to version 2, then the trainer restarts at version 0 with new rollouts
        # (before, the fitter dropped them: "sent no complete fit of controller version 0").
        first = [trainer.sample(v, X, U, first_id=100 + 10 * v) for v, (X, U) in enumerate(first_run)]
        again = [trainer.sample(v, X, U, first_id=200 + 10 * v) for v, (X, U) in enumerate(restarted)]
        # Resumed from a checkpoint of iteration 1: version 1 is sampled again.
        after_resume = trainer.sample(1, *resumed, first_id=300)
    expected_first, _ = offline_chain(config, first_run)
    expected_again, _ = offline_chain(config, restarted)
    _, prior_after_version_0 = offline_chain(config, restarted[:1])
    (expected_resumed,), _ = offline_chain(config, [resumed], prior=prior_after_version_0)
    for actual, expected in zip(first + again + [after_resume], expected_first + expected_again + [expected_resumed]):
        assert_same_dynamics(actual, expected)
    # ... and they differ from each other (the check can fail): other data, other priors.
    assert not np.allclose(again[1].F, expected_first[1].F)
    assert sorted(fitter.batches) == [(0, 0), (0, 1), (0, 2)]


def test_the_fitter_keeps_its_batches_in_state_file_and_refuses_another_experiments(ros_context,
                                                                                    tmp_path):
    """state_file: a restarted fitter has the batches and priors (the next version's fit is
    LQR-FLM's chain, not a fresh prior's); a camera's images, which no fit needs, are kept
    out of it (it is written after every rollout); a state file of another experiment stops
    the start."""
    from mbpl_ros.nodes.common import NodeParameterError

    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=N)
    config = load_experiment(experiment)
    data = batches(config, seed=1, versions=2)
    state = tmp_path / "fitter.state"
    overrides = parameters(experiment_config=str(experiment), state_file=str(state))
    fitter = DynamicsFitterNode(context=ros_context, parameter_overrides=overrides)
    trainer = Trainer(ros_context)
    with spinning(ros_context, [fitter, trainer]):
        wait_until(lambda: trainer.rollouts.get_subscription_count(), what="discovery")
        images = np.random.default_rng(0).integers(0, 256, (N, T, 64, 64, 3), dtype=np.uint8)
        trainer.sample(0, *data[0], first_id=10, images=images)
    assert state.stat().st_size < images.nbytes / 4
    restarted = DynamicsFitterNode(context=ros_context, parameter_overrides=overrides)
    assert all(rollout.images is None for batch in restarted.batches.values()
               for rollout in batch.rollouts.values())
    trainer = Trainer(ros_context)
    with spinning(ros_context, [restarted, trainer]):
        wait_until(lambda: trainer.rollouts.get_subscription_count(), what="discovery")
        fit = trainer.sample(1, *data[1], first_id=20)
    expected, _ = offline_chain(config, data)
    assert_same_dynamics(fit, expected[1])
    other = small_experiment(tmp_path / "other.yaml", conditions=1, T=T + 2, N=N)
    with pytest.raises(NodeParameterError, match=rf"parameter 'state_file': {state}: made for "
                       r"another experiment: config differs in keys T; allowed: a state file of "
                       r"this experiment"):
        DynamicsFitterNode(context=ros_context, parameter_overrides=parameters(
            experiment_config=str(other), state_file=str(state)))


@pytest.mark.timeout(60)
def test_a_fit_with_absurd_numbers_is_not_published(ros_context, tmp_path):
    """Finite but absurd states (|q| = 1e300, what a glitching encoder gave before the
    collector's envelope check) make a fit that dynamics_fitter refuses to publish; the next
    sane batch is fitted and published as usual."""
    experiment = small_experiment(tmp_path / "experiment.yaml", conditions=1, T=T, N=N)
    config = load_experiment(experiment)
    (X, U), (X_sane, U_sane) = batches(config, seed=4, versions=2)
    X = X.copy()
    X[1, 4, 0] = 1e300
    fitter = DynamicsFitterNode(context=ros_context, parameter_overrides=parameters(
        experiment_config=str(experiment)))
    trainer = Trainer(ros_context)
    with spinning(ros_context, [fitter, trainer]):
        wait_until(lambda: trainer.rollouts.get_subscription_count()
                   and trainer.node.count_publishers(wire.DYNAMICS_TOPIC), what="discovery")
        with np.errstate(all="ignore"), \
                pytest.raises(AssertionError, match="no complete fit of version 0"):
            trainer.sample(0, X, U, first_id=500, timeout=3)
        published = fitter.fits_published
        fit = trainer.sample(1, X_sane, U_sane, first_id=600)
    assert published == 0                     # incomplete batches are never published
    assert np.all(np.isfinite(fit.F))
