"""core.sanity: the physical envelope of joint states, the stamp law, and the checks of fits
and controller updates."""
import numpy as np
import pytest

from mbpl_ros.core import sanity
from mbpl_ros.core.controller import LinearGaussianController
from mbpl_ros.core.dynamics import fit_dynamics

ENVELOPE = sanity.StateEnvelope(position=[[-3.0, 3.0], [-1.0, 2.0]], velocity=[10.0, 5.0])


@pytest.mark.parametrize("q, qd, fault", [
    ([0.0, 0.0], [0.0, 0.0], None),
    ([3.0 + sanity.POSITION_MARGIN_RAD, -1.0 - sanity.POSITION_MARGIN_RAD], [20.0, -10.0],
     None),                                                               # at the edges
    ([3.3, 0.0], [0.0, 0.0], "joint 0 at 3.3 rad, beyond its limits [-3, 3] by more than 0.25"),
    ([0.0, -1.3], [0.0, 0.0], "joint 1 at -1.3 rad, beyond its limits [-1, 2]"),
    ([1e6, 0.0], [0.0, 0.0], "joint 0 at 1e+06 rad"),
    ([0.0, 0.0], [0.0, -10.5], "joint 1 at -10.5 rad/s, above 2 x its velocity limit 5 rad/s"),
    ([0.0, 0.0], [1e300, 0.0], "joint 0 at 1e+300 rad/s"),
    ([np.nan, 0.0], [0.0, 0.0], "not finite"),
    ([0.0, 0.0], [0.0, np.inf], "not finite"),
    ([0.0], [0.0, 0.0], "are not (2,)"),
])
def test_state_fault_names_the_joint_and_the_bound(q, qd, fault):
    found = sanity.state_fault(q, qd, ENVELOPE)
    if fault is None:
        assert found is None
    else:
        assert found is not None and fault in found, found


def test_a_step_may_cover_velocity_factor_times_the_limit_per_second_plus_the_slack():
    dt = 0.05
    reach = sanity.VELOCITY_FACTOR * np.array([10.0, 5.0]) * dt + sanity.STEP_SLACK_RAD
    assert sanity.step_fault([0.0, 0.0], reach, dt, ENVELOPE) is None
    assert sanity.step_fault([0.0, 0.0], -reach, dt, ENVELOPE) is None
    fault = sanity.step_fault([0.0, 0.0], [0.0, reach[1] + 1e-6], dt, ENVELOPE)
    assert fault is not None and fault.startswith("joint 1 moved")
    assert sanity.step_fault([0.0, 0.0], [np.nan, 0.0], dt, ENVELOPE) is not None


def test_trajectory_fault_names_the_first_bad_step():
    T = 5
    q, qd, stamps = np.zeros((T, 2)), np.zeros((T, 2)), 0.05 * np.arange(T)
    assert sanity.trajectory_fault(q, qd, stamps, ENVELOPE) is None
    q[3, 0] = 1.5                                     # a 1.5 rad jump in 0.05 s (1.01 possible)
    fault = sanity.trajectory_fault(q, qd, stamps, ENVELOPE)
    assert fault.startswith("step 3: joint 0 moved 1.5 rad"), fault
    qd[2, 1] = 1e6
    fault = sanity.trajectory_fault(q, qd, stamps, ENVELOPE)
    assert fault.startswith("step 2: joint 1 at 1e+06 rad/s"), fault


def test_stamp_law():
    now, tol = 10 ** 18, int(sanity.FUTURE_STAMP_TOLERANCE_S * 1e9)
    assert sanity.stamp_fault(now + tol, now, None, 0.0) is None
    fault = sanity.stamp_fault(now + 7_700_000_000, now, None, 0.0)
    assert fault.startswith("stamped 7.700 s ahead of this node's clock (tolerance 0.02 s")
    assert sanity.stamp_fault(now - 10, now, now - 10, 0.01) is None      # the same stamp again
    fault = sanity.stamp_fault(now - 11, now, now - 10, 0.01)
    assert fault.startswith("stamped 0.000 s before the latest"), fault
    # nothing accepted for STAMP_RESYNC_S: the source restarted, its (older) clock is taken again
    assert sanity.stamp_fault(5, now, now - 10, sanity.STAMP_RESYNC_S + 0.01) is None
    assert sanity.stamp_fault(5, now, now - 10, sanity.STAMP_RESYNC_S - 0.01) is not None


def _controller(T=4, dU=2, dX=6, scale=1.0):
    return LinearGaussianController.from_covar(scale * np.ones((T, dU, dX)), np.zeros((T, dU)),
                                               0.1 * np.eye(dU))


def test_controller_fault():
    assert sanity.controller_fault(_controller()) is None
    assert "magnitude 1e+09" in sanity.controller_fault(_controller(scale=1e9))
    bad = _controller()
    bad.k[2, 1] = np.nan
    assert sanity.controller_fault(bad) == "the controller's k is not finite (1 of 8 entries)"
    bad = _controller()
    bad.covar[1] = -bad.covar[1]
    assert sanity.controller_fault(bad) == "the controller's covar has a diagonal entry <= 0"


def test_dynamics_fault_rejects_the_fit_of_overflowing_states():
    rng = np.random.default_rng(0)
    X, U = rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 2))
    assert sanity.dynamics_fault(fit_dynamics(X, U)) is None
    X[1, 3, 0] = 1e300                               # the glitch: finite, absurd
    with np.errstate(all="ignore"):
        fit = fit_dynamics(X, U)
    assert sanity.dynamics_fault(fit) is not None
