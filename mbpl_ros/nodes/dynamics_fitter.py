"""dynamics_fitter: fits each condition's time-varying linear-Gaussian dynamics with the
GMM prior (core) online, as the rollouts arrive.

Subscribes   gps/rollouts (record rollout): sample rollouts (status OK, purpose sample)
Publishes    gps/dynamics (record lg_dynamics): condition, controller version, the trial ids
             fitted, complete flag, F, f, covar, x0 mean and covariance

Per condition and controller version, the sample rollouts of that version form a batch (kept
by index). Each new one gives an updated fit (core.dynamics.OnlineDynamics under the prior
the batch starts from, `complete` = false). When the batch has rollouts_per_condition
rollouts, the dynamics are fitted with core.lqr_flm.fit_batch_dynamics — the very call
LQR-FLM makes offline — on a copy of that prior, which the batch keeps as the prior after
it, and published with `complete` = true. A rollout arriving for an index already in a
complete batch (a retried trial, or a restarted trainer sampling that version again)
replaces the old one and the complete fit is redone.

The prior a batch of version v starts from is the one after the complete batch of version
v - 1 of the same condition, so the GMM prior accumulates the batches exactly as LQR-FLM's
does offline; version 0 starts from a fresh prior. Batches of every version are kept (the
KEPT_VERSIONS most recently used per condition), not only the newest, so a gps_trainer that
restarts at version 0 — or resumes from its checkpoint of iteration k, sampling version k
again — gets complete fits of the rollouts it samples, under the same priors as the run it
replaces: the batches above the version it samples are rebuilt on the new priors as its
rollouts replace theirs. A batch whose version - 1 is not known here (this node restarted,
or that batch was dropped) starts from a fresh prior, with a warning.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from mbpl_ros.core.dynamics import OnlineDynamics
from mbpl_ros.core.gmm import GMMPrior
from mbpl_ros.core.lqr_flm import fit_batch_dynamics, new_dynamics_prior
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import declare_experiment, run_node
from mbpl_ros.nodes.common import check_known_parameters


#: Batches kept per condition (the most recently used): a resumed trainer needs the newest
#: two, a restarted one version 0's, which starts from a fresh prior anyway.
KEPT_VERSIONS = 8


@dataclass
class _Batch:
    """The sample rollouts of one controller version of one condition, by index."""

    version: int
    rollouts: Dict[int, wire.RolloutMessage] = field(default_factory=dict)
    online: Optional[OnlineDynamics] = None
    fitted: bool = False                      # a complete fit was made
    prior_after: Optional[GMMPrior] = None    # the prior after this batch's last complete fit
    online_prior: Optional[GMMPrior] = None   # the prior of the last partial fit


class DynamicsFitterNode(Node):
    def __init__(self, node_name: str = "dynamics_fitter", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self.config, self.experiment_path = declare_experiment(self)
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        self.layout = self.config.layout
        self.settings = self.config.lqr_flm_settings()
        # (condition, controller version) -> batch, least recently used first
        self.batches: Dict[Tuple[int, int], _Batch] = {}
        self.fits_published = 0
        self._fresh_prior_warned = set()
        group = MutuallyExclusiveCallbackGroup()
        self._dynamics_pub = self.create_publisher(Float64MultiArray, wire.DYNAMICS_TOPIC, wire.EVENTS_QOS)
        self.create_subscription(Float64MultiArray, wire.ROLLOUTS_TOPIC, self._on_rollout, wire.EVENTS_QOS,
                                 callback_group=group)

    def _on_rollout(self, msg: Float64MultiArray) -> None:
        try:
            rollout = wire.decode_rollout(msg, dX=self.layout.dX, dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a rollout: {error}")
            return
        if rollout.status != wire.TrialStatus.OK or rollout.purpose != "sample":
            return
        m = rollout.condition
        if m >= len(self.config.conditions) or rollout.X.shape[0] != self.config.T:
            self.get_logger().error(f"ignored rollout {rollout.trial_id}: condition {m}, T={rollout.X.shape[0]} "
                                    f"do not fit the experiment")
            return
        batch = self._touch(m, rollout.controller_version)
        N = self.config.rollouts_per_condition
        replaced = rollout.index in batch.rollouts
        batch.rollouts[rollout.index] = rollout
        if len(batch.rollouts) >= N:
            self._fit_complete(m, batch)
        else:
            self._fit_partial(m, batch, rollout, replaced)

    def _touch(self, m: int, version: int) -> _Batch:
        """The batch of (m, version), created if new, made the most recently used; the least
        recently used batches of condition m beyond KEPT_VERSIONS are dropped."""
        batch = self.batches.pop((m, version), None)
        if batch is None:
            batch = _Batch(version)
        self.batches[(m, version)] = batch
        kept = [key for key in self.batches if key[0] == m]
        for key in kept[:-KEPT_VERSIONS]:
            del self.batches[key]
        return batch

    def _prior_before(self, m: int, batch: _Batch) -> Optional[GMMPrior]:
        """The prior batch (m, version) starts from: the one after the complete batch of
        version - 1, or a fresh one (None when the experiment disables the prior). Not a copy."""
        below = self.batches.get((m, batch.version - 1))
        if below is not None and below.fitted:
            return below.prior_after
        if batch.version > 0 and (m, batch.version) not in self._fresh_prior_warned:
            self._fresh_prior_warned.add((m, batch.version))
            self.get_logger().warning(f"condition {m}: controller version {batch.version} is fitted under a fresh "
                                      f"prior: no complete batch of version {batch.version - 1} is known here "
                                      "(dynamics_fitter restarted, or that batch was dropped)")
        return new_dynamics_prior(self.settings.prior)

    def _fit_partial(self, m: int, batch: _Batch, rollout: wire.RolloutMessage, replaced: bool) -> None:
        if batch.online is None or replaced:  # start over when a rollout was replaced
            batch.online = OnlineDynamics(self.settings.dynamics_regularization)
            for earlier in self._ordered(batch):
                if earlier is not rollout:
                    batch.online.add(earlier.X, earlier.U)
        batch.online.add(rollout.X, rollout.U)
        prior = self._prior_before(m, batch)
        # Held while in use: OnlineDynamics caches per id(prior), which a freed prior's successor could reuse.
        batch.online_prior = prior
        dynamics = batch.online.fit(prior if prior is not None and prior.n_rollouts > 0 else None)
        self._publish(m, batch, [rollout.trial_id for rollout in self._ordered(batch)], False, dynamics)

    def _fit_complete(self, m: int, batch: _Batch) -> None:
        # A copy: the prior before this batch stays as it was for a refit (a replaced rollout).
        prior = copy.deepcopy(self._prior_before(m, batch))
        ordered = self._ordered(batch)[:self.config.rollouts_per_condition]
        X = np.stack([rollout.X for rollout in ordered])
        U = np.stack([rollout.U for rollout in ordered])
        dynamics = fit_batch_dynamics(prior, X, U, self.settings.dynamics_regularization)
        batch.prior_after, batch.fitted = prior, True
        self._publish(m, batch, [rollout.trial_id for rollout in ordered], True, dynamics)

    @staticmethod
    def _ordered(batch: _Batch) -> list:
        return [batch.rollouts[index] for index in sorted(batch.rollouts)]

    def _publish(self, m: int, batch: _Batch, trial_ids, complete: bool, dynamics) -> None:
        self._dynamics_pub.publish(wire.encode_dynamics(wire.DynamicsMessage(
            condition=m, controller_version=batch.version, trial_ids=tuple(trial_ids), complete=complete,
            dynamics=dynamics)))
        self.fits_published += 1
        self.get_logger().debug(f"condition {m}: dynamics of version {batch.version} from "
                                f"{len(trial_ids)} rollouts{' (complete)' if complete else ''}")


def main(args=None) -> int:
    return run_node(DynamicsFitterNode, "dynamics_fitter", args)


if __name__ == "__main__":
    sys.exit(main())
