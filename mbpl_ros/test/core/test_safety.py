"""Command safety (core.safety): property tests over limits, commands and states — finite
or not — and closed-form checks of the joint-limit guard."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mbpl_ros.core.safety import (SafetyLimits, clamp_effort, fallback_effort, joint_limit_guard, limit_proximity,
                                  lowered_effort_limits, safe_command)

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def limits_strategy(draw, dU=None):
    dU = dU or draw(st.integers(1, 5))
    effort = draw(hnp.arrays(float, dU, elements=st.floats(1e-3, 1e3)))
    lower = draw(hnp.arrays(float, dU, elements=st.floats(-10.0, 0.0)))
    span = draw(hnp.arrays(float, dU, elements=st.floats(0.05, 10.0)))
    margin = draw(st.floats(0.0, 0.49)) * float(span.min())
    damping = draw(st.one_of(st.just(0.0), st.floats(0.0, 1e3)))
    return SafetyLimits(effort=effort, position=np.stack([lower, lower + span], axis=1), margin=margin,
                        damping=damping)


@st.composite
def case(draw, elements=ANY_FLOAT):
    limits = draw(limits_strategy())
    vectors = [draw(hnp.arrays(float, limits.dU, elements=elements)) for _ in range(3)]
    action = draw(st.sampled_from(["zero", "hold"]))
    hold = draw(hnp.arrays(float, limits.dU, elements=ANY_FLOAT))
    return limits, *vectors, fallback_effort(action, limits, hold)


def reference_guard(u, q, qd, limits):
    """One joint at a time, written out from the law in the module docstring."""
    out = np.empty(len(u))
    with np.errstate(over="ignore"):
        return _reference_guard(u, q, qd, limits, out)


def _reference_guard(u, q, qd, limits, out):
    for i in range(len(u)):
        lower, upper = limits.position[i]
        m, c = limits.margin, limits.damping
        ramp = (lambda d: min(max(1 - d / m, 0.0), 1.0)) if m > 0 else (lambda d: 1.0 if d <= 0 else 0.0)
        s_up, s_lo = ramp(upper - q[i]), ramp(q[i] - lower)
        v = u[i] * (1 - s_up) if u[i] > 0 else u[i] * (1 - s_lo)
        if qd[i] > 0:
            v -= c * s_up * qd[i]
        else:
            v -= c * s_lo * qd[i]
        out[i] = min(max(v, -limits.effort[i]), limits.effort[i])
    return out


# ---------------------------------------------------------------- properties
@PROPERTIES
@given(case())
def test_every_command_is_finite_and_within_the_limits_for_any_input(example):
    limits, u, q, qd, fallback = example
    command = safe_command(u, q, qd, limits, fallback)
    assert np.all(np.isfinite(command.effort))
    assert np.all(np.abs(command.effort) <= limits.effort)
    inputs_finite = all(np.all(np.isfinite(v)) for v in (u, q, qd))
    assert (command.fault is None) == inputs_finite
    if not inputs_finite:
        np.testing.assert_array_equal(command.effort, fallback)


@PROPERTIES
@given(case(elements=FINITE))
def test_the_guard_matches_its_law_joint_by_joint(example):
    limits, u, q, qd, _ = example
    np.testing.assert_allclose(joint_limit_guard(u, q, qd, limits), reference_guard(u, q, qd, limits),
                               rtol=1e-12, atol=1e-12)


@PROPERTIES
@given(case(elements=FINITE))
def test_at_or_beyond_a_limit_nothing_pushes_further_into_it(example):
    limits, u, q, qd, fallback = example
    effort = safe_command(u, q, qd, limits, fallback).effort
    lower, upper = limits.position.T
    assert np.all(effort[q >= upper] <= 0.0)
    assert np.all(effort[q <= lower] >= 0.0)


@PROPERTIES
@given(case(elements=FINITE))
def test_far_from_the_limits_the_command_is_only_clamped(example):
    limits, u, q, qd, fallback = example
    lower, upper = limits.position.T
    # strictly outside the margin (or anywhere, with margin 0, strictly inside the range)
    free = (q > lower + limits.margin) & (q < upper - limits.margin)
    effort = safe_command(u, q, qd, limits, fallback).effort
    np.testing.assert_array_equal(effort[free], np.clip(u, -limits.effort, limits.effort)[free])


@PROPERTIES
@given(case(elements=FINITE))
def test_the_guard_never_adds_push_towards_a_limit_nor_touches_motion_away_from_it(example):
    limits, u, q, qd, _ = example
    lower, upper = limits.position.T
    towards = np.where(q > (lower + upper) / 2, 1.0, -1.0)   # sign of the direction to the nearer limit
    clamped = clamp_effort(u, limits.effort)
    effort = joint_limit_guard(u, q, qd, limits)
    assert np.all(towards * effort <= np.maximum(towards * clamped, 0.0))
    away = (towards * clamped <= 0) & (towards * qd <= 0)     # pushing and moving away from it
    np.testing.assert_array_equal(effort[away], clamped[away])


@PROPERTIES
@given(limits_strategy(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_the_allowed_push_fades_monotonically_towards_the_limit(limits, a, b):
    """Closer to the upper limit (smaller distance) -> smaller (or equal) share of the push."""
    if limits.margin == 0:
        return
    near, far = sorted([a, b])
    s_near = limit_proximity(near * limits.margin, limits.margin)
    s_far = limit_proximity(far * limits.margin, limits.margin)
    assert 1 - s_near <= 1 - s_far


@PROPERTIES
@given(limits_strategy(), hnp.arrays(float, 5, elements=ANY_FLOAT))
def test_effort_limits_can_only_be_lowered(limits, requested):
    robot = limits.effort
    requested = requested[:robot.size] if requested.size >= robot.size else np.resize(requested, robot.size)
    valid = np.all(np.isfinite(requested) & (requested > 0) & (requested <= robot))
    if valid:
        np.testing.assert_array_equal(lowered_effort_limits(robot, requested), requested)
    else:
        with pytest.raises(ValueError, match="effort limits"):
            lowered_effort_limits(robot, requested)


# ---------------------------------------------------------------- closed forms and errors
LIMITS = SafetyLimits(effort=[2.0, 1.0], position=[[-3.0, 3.0], [-1.0, 1.0]], margin=0.2, damping=0.5)


def test_guard_in_the_middle_of_the_margin_halves_the_push_and_brakes():
    # joint 0 at 2.9: 0.1 rad inside the 0.2 rad margin of upper 3.0 -> s = 0.5
    effort = joint_limit_guard(np.array([1.0, 0.0]), np.array([2.9, 0.0]), np.array([2.0, 0.0]), LIMITS)
    np.testing.assert_allclose(effort, [1.0 * 0.5 - 0.5 * 0.5 * 2.0, 0.0], atol=1e-12)
    # moving away from the limit: no braking; pushing away: untouched
    effort = joint_limit_guard(np.array([-1.5, 0.0]), np.array([2.9, 0.0]), np.array([-2.0, 0.0]), LIMITS)
    np.testing.assert_allclose(effort, [-1.5, 0.0])
    # lower limit of joint 1, beyond it: no push down, braking clamped to the 1 N·m limit
    effort = joint_limit_guard(np.array([0.0, -0.8]), np.array([0.0, -1.05]), np.array([0.0, -10.0]), LIMITS)
    np.testing.assert_allclose(effort, [0.0, 1.0])


def test_non_finite_inputs_give_the_fallback_with_the_fault_named():
    hold = fallback_effort("hold", LIMITS, np.array([5.0, -0.25]))
    np.testing.assert_array_equal(hold, [2.0, -0.25])
    command = safe_command([np.nan, 0.0], [0.0, 0.0], [0.0, 0.0], LIMITS, hold)
    assert command.fault == "the command is not finite: [nan, 0.0]"
    np.testing.assert_array_equal(command.effort, hold)
    assert "the joint velocity" in safe_command([0.0, 0.0], [0.0, 0.0], [np.inf, 0.0], LIMITS, hold).fault
    assert "shape (3,)" in safe_command([0.0, 0.0, 0.0], [0.0, 0.0], [0.0, 0.0], LIMITS, hold).fault
    np.testing.assert_array_equal(fallback_effort("hold", LIMITS, np.array([np.nan, 1.0])), [0.0, 0.0])
    np.testing.assert_array_equal(fallback_effort("zero", LIMITS, np.array([1.0, 1.0])), [0.0, 0.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(effort=[2.0, 0.0], position=[[-1, 1], [-1, 1]]), "effort limits must be finite and > 0"),
    (dict(effort=[2.0], position=[[-1, 1], [-1, 1]]), r"position limits must have shape \(dU=1, 2\)"),
    (dict(effort=[2.0], position=[[1, -1]]), "lower < upper"),
    (dict(effort=[2.0], position=[[-1, 1]], margin=1.0), "margin 1.0 rad must be below half"),
    (dict(effort=[2.0], position=[[-1, 1]], margin=-0.1), "margin must be finite and >= 0"),
    (dict(effort=[2.0], position=[[-1, 1]], damping=np.nan), "damping must be finite and >= 0"),
])
def test_bad_limits_are_rejected_naming_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyLimits(**kwargs)


def test_bad_fallbacks_and_actions_are_rejected():
    with pytest.raises(ValueError, match="the fallback must be finite and within the effort limits"):
        safe_command([0.0, 0.0], [0.0, 0.0], [0.0, 0.0], LIMITS, np.array([3.0, 0.0]))
    with pytest.raises(ValueError, match=r"allowed: one of \['zero', 'hold'\]"):
        fallback_effort("brake", LIMITS)
    with pytest.raises(ValueError, match=r"may only lower the robot's \[2.0, 1.0\]; \[2.0, 1.5\] raises joints \[1\]"):
        lowered_effort_limits([2.0, 1.0], [2.0, 1.5])


def test_the_guard_vectorises_over_time_and_rollouts():
    rng = np.random.default_rng(0)
    u, qd = rng.normal(scale=3.0, size=(4, 6, 2)), rng.normal(scale=5.0, size=(4, 6, 2))   # (N, T, dU)
    q = rng.uniform(-3.2, 3.2, size=(4, 6, 2)) * [1.0, 0.35]                                 # some near/over the limits
    batch = joint_limit_guard(u, q, qd, LIMITS)
    expected = np.array([[reference_guard(u[n, t], q[n, t], qd[n, t], LIMITS) for t in range(6)] for n in range(4)])
    np.testing.assert_allclose(batch, expected, rtol=1e-12, atol=1e-12)
