"""
dynamics_fitter: fits each condition's dynamics online, as the rollouts arrive.

The dynamics are time-varying linear-Gaussian, fitted with the GMM prior (core).

Subscribes   gps/rollouts (mbpl_ros_interfaces/Rollout): sample rollouts (status OK, purpose
             sample)
Publishes    gps/dynamics (mbpl_ros_interfaces/LinearGaussianDynamics): condition, controller
             version, the trial ids fitted, complete flag (always true), F, f, covar, x0 mean
             and covariance

Per condition and controller version, the sample rollouts of that version form a batch (kept
by index). When the batch has rollouts_per_condition rollouts, the dynamics are fitted with
core.lqr_flm.fit_batch_dynamics — the very call LQR-FLM makes offline — on a copy of the
prior the batch starts from, which the batch keeps as the prior after it, and published. A
rollout arriving for an index already in a complete batch (a retried trial, a restarted
trainer sampling that version again, or the trainer publishing a batch again because its
fit is overdue) replaces the old one and the fit is redone. Fits of incomplete batches are
not published: nothing uses them. A fit with non-finite or absurd numbers
(core.sanity.dynamics_fault) is not published, nor is its prior kept; the error names the
condition and version.

The prior a batch of version v starts from is the one after the complete batch of version
v - 1 of the same condition, so the GMM prior accumulates the batches exactly as LQR-FLM's
does offline; version 0 starts from a fresh prior. Batches of every version are kept (the
KEPT_VERSIONS most recently used per condition), not only the newest, so a gps_trainer that
restarts at version 0 — or resumes from its checkpoint of iteration k, sampling version k
again — gets complete fits of the rollouts it samples, under the same priors as the run it
replaces: the batches above the version it samples are rebuilt on the new priors as its
rollouts replace theirs. A batch whose version - 1 is not known here (that batch was
dropped) starts from a fresh prior, with a warning.

Nothing is lost when this node dies: with `state_file` set, the batches and their priors
are written there (mbpl_ros.checkpoint's format: atomic, checksummed, naming the experiment)
after every rollout, and read back at start-up (a file of another experiment, or a damaged
one, stops the start naming the file and the problem). Rollouts published while the node
was down reach it when gps_trainer publishes the awaited batch again.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from mbpl_ros_interfaces.msg import LinearGaussianDynamics, Rollout

from mbpl_ros.checkpoint import (Checkpoint, CheckpointError, encode_checkpoint,
                                 experiment_identity, read_checkpoint, write_atomically)
from mbpl_ros.core import sanity
from mbpl_ros.core.gmm import GMMPrior
from mbpl_ros.core.lqr_flm import fit_batch_dynamics, new_dynamics_prior
from mbpl_ros.nodes import wire
from mbpl_ros.nodes.common import (NodeParameterError, check_known_parameters, declare,
                                   declare_experiment, run_node)
from mbpl_ros.nodes.parameters import DYNAMICS_FITTER


#: Batches kept per condition (the most recently used): a resumed trainer needs the newest
#: two, a restarted one version 0's, which starts from a fresh prior anyway.
KEPT_VERSIONS = 8


@dataclass
class _Batch:
    """The sample rollouts of one controller version of one condition, by index."""

    version: int
    rollouts: Dict[int, wire.RolloutMessage] = field(default_factory=dict)
    fitted: bool = False                      # a complete fit was made
    prior_after: Optional[GMMPrior] = None    # the prior after this batch's last complete fit


class DynamicsFitterNode(Node):
    def __init__(self, node_name: str = "dynamics_fitter", **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        try:
            self.config, self.experiment_path = declare_experiment(self)
            state_file = declare(self, DYNAMICS_FITTER, "state_file")
            self.state_file = Path(state_file).expanduser().resolve() if state_file else None
            self.experiment = experiment_identity(self.config, self.config.seed)
            # (condition, controller version) -> batch, least recently used first
            self.batches: Dict[Tuple[int, int], _Batch] = self._read_state()
            check_known_parameters(self)
        except BaseException:
            self.destroy_node()
            raise
        self.layout = self.config.layout
        self.settings = self.config.lqr_flm_settings()
        self.fits_published = 0
        self._fresh_prior_warned = set()
        group = MutuallyExclusiveCallbackGroup()
        self._dynamics_pub = self.create_publisher(LinearGaussianDynamics, wire.DYNAMICS_TOPIC,
                                                   wire.EVENTS_QOS)
        self.create_subscription(Rollout, wire.ROLLOUTS_TOPIC, self._on_rollout, wire.EVENTS_QOS,
                                 callback_group=group)

    def _read_state(self) -> Dict[Tuple[int, int], _Batch]:
        """
        Return the batches of state_file (none if unset or absent).

        Raises NodeParameterError naming the file and the problem if it cannot be used.
        """
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            state = read_checkpoint(self.state_file, self.experiment)
        except CheckpointError as error:
            raise NodeParameterError(f"parameter 'state_file': {error}; allowed: a state file "
                                     "of this experiment, or a path where none exists "
                                     "yet") from None
        batches = state.algorithm.get("batches") if isinstance(state.algorithm, dict) else None
        if not isinstance(batches, dict):
            raise NodeParameterError(f"parameter 'state_file': {self.state_file} holds no "
                                     "dynamics_fitter state; allowed: a state file written by "
                                     "dynamics_fitter")
        self.get_logger().info(f"restored {len(batches)} batches from {self.state_file}")
        # Plain data in the file: this module may be __main__ in the process that wrote it.
        return {key: _Batch(key[1], dict(batch["rollouts"]), batch["fitted"], batch["prior_after"])
                for key, batch in batches.items()}

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        versions = [version for _, version in self.batches]
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state_file, encode_checkpoint(Checkpoint(
            iteration=max(versions, default=0), metrics=[],
            algorithm={"batches": {key: {"rollouts": batch.rollouts, "fitted": batch.fitted,
                                         "prior_after": batch.prior_after}
                                   for key, batch in self.batches.items()}},
            rollouts_total=sum(len(batch.rollouts) for batch in self.batches.values()),
            elapsed_s=0.0,
            seed=self.config.seed, experiment=self.experiment)))

    def _on_rollout(self, msg: Rollout) -> None:
        try:
            rollout = wire.decode_rollout(msg, dX=self.layout.dX, dU=self.layout.dU)
        except wire.WireFormatError as error:
            self.get_logger().error(f"ignored a rollout: {error}")
            return
        if rollout.status != wire.TrialStatus.OK or rollout.purpose != "sample":
            return
        m = rollout.condition
        if m >= len(self.config.conditions) or rollout.X.shape[0] != self.config.T:
            self.get_logger().error(f"ignored rollout {rollout.trial_id}: condition {m}, "
                                    f"T={rollout.X.shape[0]} do not fit the experiment")
            return
        # A fit needs the states and efforts only. The rest (a camera's images: hundreds of kB
        # a rollout) stays out of the batches, and so out of the state file written per rollout.
        rollout = replace(rollout, joint_states=(), commands=None, images=None,
                          image_stamps_ns=None)
        batch = self._touch(m, rollout.controller_version)
        batch.rollouts[rollout.index] = rollout
        complete = len(batch.rollouts) >= self.config.rollouts_per_condition
        fit = self._fit_complete(m, batch) if complete else None
        # The state first: a fitter killed after the trainer got a fit restarts with its prior.
        self._write_state()
        if fit is not None:
            self._publish(m, batch, *fit)

    def _touch(self, m: int, version: int) -> _Batch:
        """
        Return the batch of (m, version), created if new, made the most recently used.

        The least recently used batches of condition m beyond KEPT_VERSIONS are dropped.
        """
        batch = self.batches.pop((m, version), None)
        if batch is None:
            batch = _Batch(version)
        self.batches[(m, version)] = batch
        kept = [key for key in self.batches if key[0] == m]
        for key in kept[:-KEPT_VERSIONS]:
            del self.batches[key]
        return batch

    def _prior_before(self, m: int, batch: _Batch) -> Optional[GMMPrior]:
        """
        Return the prior batch (m, version) starts from (not a copy).

        That is the one after the complete batch of version - 1, or a fresh one (None when the
        experiment disables the prior).
        """
        below = self.batches.get((m, batch.version - 1))
        if below is not None and below.fitted:
            return below.prior_after
        if batch.version > 0 and (m, batch.version) not in self._fresh_prior_warned:
            self._fresh_prior_warned.add((m, batch.version))
            self.get_logger().warning(f"condition {m}: controller version {batch.version} "
                                      "is fitted under a fresh prior: no complete batch of "
                                      f"version {batch.version - 1} is known here "
                                      "(dynamics_fitter restarted without state_file, or that "
                                      "batch was dropped)")
        return new_dynamics_prior(self.settings.dynamics.prior)

    def _fit_complete(self, m: int, batch: _Batch):
        """
        Fit the batch under (a copy of) the prior it starts from, kept with the prior after it.

        Returns (trial ids, dynamics); None for a fit with non-finite or absurd numbers
        (core.sanity), which is never published, nor its prior kept.
        """
        # A copy: the prior before this batch stays as it was for a refit (a replaced rollout).
        prior = copy.deepcopy(self._prior_before(m, batch))
        ordered = self._ordered(batch)[:self.config.rollouts_per_condition]
        X = np.stack([rollout.X for rollout in ordered])
        U = np.stack([rollout.U for rollout in ordered])
        trial_ids = [rollout.trial_id for rollout in ordered]
        dynamics = fit_batch_dynamics(prior, X, U, self.settings.dynamics.regularization)
        fault = sanity.dynamics_fault(dynamics)
        if fault is not None:
            self.get_logger().error(f"condition {m}: the fit of controller version "
                                    f"{batch.version} from {len(trial_ids)} rollouts is not "
                                    f"published: {fault}")
            return None
        batch.prior_after, batch.fitted = prior, True
        return trial_ids, dynamics

    @staticmethod
    def _ordered(batch: _Batch) -> list:
        return [batch.rollouts[index] for index in sorted(batch.rollouts)]

    def _publish(self, m: int, batch: _Batch, trial_ids, dynamics) -> None:
        self._dynamics_pub.publish(wire.encode_dynamics(wire.DynamicsMessage(
            condition=m, controller_version=batch.version, trial_ids=tuple(trial_ids),
            complete=True, dynamics=dynamics)))
        self.fits_published += 1
        self.get_logger().debug(f"condition {m}: dynamics of version {batch.version} from "
                                f"{len(trial_ids)} rollouts")


def main(args=None) -> int:
    return run_node(DynamicsFitterNode, "dynamics_fitter", args)


if __name__ == "__main__":
    sys.exit(main())
