"""dynamics_fitter: fits each condition's time-varying linear-Gaussian dynamics with the
GMM prior (core) online, as the rollouts arrive.

Subscribes   gps/rollouts (record rollout): sample rollouts (status OK, purpose sample)
Publishes    gps/dynamics (record lg_dynamics): condition, controller version, the trial ids
             fitted, complete flag, F, f, covar, x0 mean and covariance

Per condition, the rollouts of the current controller version form the batch. Each new one
gives an updated fit (core.dynamics.OnlineDynamics under the prior as it was before this
batch, `complete` = false). When the batch has rollouts_per_condition rollouts, the prior is
refitted on them and the dynamics fitted under it with core.lqr_flm.fit_batch_dynamics —
the very call LQR-FLM makes offline — and published with `complete` = true. A rollout
arriving for an index already in a complete batch (a retried trial) replaces the old one
and the complete fit is redone from the prior as it was before the batch.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from mbpl_ros.core.dynamics import OnlineDynamics
from mbpl_ros.core.gmm import GMMPrior
from mbpl_ros.core.lqr_flm import fit_batch_dynamics, new_dynamics_prior
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import declare_experiment, run_node


@dataclass
class _Batch:
    """The sample rollouts of one controller version of one condition, by index."""

    version: int
    rollouts: Dict[int, wire.RolloutMessage] = field(default_factory=dict)
    online: Optional[OnlineDynamics] = None
    prior_before: Optional[GMMPrior] = None   # deep copy taken before the prior saw this batch


class DynamicsFitterNode(Node):
    def __init__(self, node_name: str = "dynamics_fitter", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self.config, self.experiment_path = declare_experiment(self)
        except BaseException:
            self.destroy_node()
            raise
        self.layout = self.config.layout
        self.settings = self.config.lqr_flm_settings()
        M = len(self.config.conditions)
        self.priors = [new_dynamics_prior(self.settings.prior) for _ in range(M)]
        self.batches: list[Optional[_Batch]] = [None] * M
        self.fits_published = 0
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
        if m >= len(self.batches) or rollout.X.shape[0] != self.config.T:
            self.get_logger().error(f"ignored rollout {rollout.trial_id}: condition {m}, T={rollout.X.shape[0]} "
                                    f"do not fit the experiment")
            return
        batch = self.batches[m]
        if batch is not None and rollout.controller_version < batch.version:
            return  # from an older controller: that batch is done
        if batch is None or rollout.controller_version > batch.version:
            batch = self.batches[m] = _Batch(rollout.controller_version)
        N = self.config.rollouts_per_condition
        replaced = rollout.index in batch.rollouts
        batch.rollouts[rollout.index] = rollout
        if len(batch.rollouts) >= N:
            self._fit_complete(m, batch)
        else:
            self._fit_partial(m, batch, rollout, replaced)

    def _fit_partial(self, m: int, batch: _Batch, rollout: wire.RolloutMessage, replaced: bool) -> None:
        if batch.online is None or replaced:  # start over when a rollout was replaced
            batch.online = OnlineDynamics(self.settings.dynamics_regularization)
            for earlier in self._ordered(batch):
                if earlier is not rollout:
                    batch.online.add(earlier.X, earlier.U)
        batch.online.add(rollout.X, rollout.U)
        prior = self.priors[m]
        dynamics = batch.online.fit(prior if prior is not None and prior.n_rollouts > 0 else None)
        self._publish(m, batch, [rollout.trial_id for rollout in self._ordered(batch)], False, dynamics)

    def _fit_complete(self, m: int, batch: _Batch) -> None:
        if batch.prior_before is None:
            batch.prior_before = copy.deepcopy(self.priors[m])
        else:  # refit of a complete batch: undo the prior's update with the old batch
            self.priors[m] = copy.deepcopy(batch.prior_before)
        ordered = self._ordered(batch)[:self.config.rollouts_per_condition]
        X = np.stack([rollout.X for rollout in ordered])
        U = np.stack([rollout.U for rollout in ordered])
        dynamics = fit_batch_dynamics(self.priors[m], X, U, self.settings.dynamics_regularization)
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
