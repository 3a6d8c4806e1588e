"""
Costs l(x, u) with analytic derivatives.

Every cost is an object with ``evaluate(X (N, T, dX), U (N, T, dU)) -> CostExpansion``,
vectorised over the N rollouts and T time steps. The terms follow GPS
(cbfinn/gps, ``algorithm/cost``): an action penalty ½ Σ w_i u_i², a quadratic
state-target penalty, and the end-effector distance penalties in the l1/l2 form
½ l2 ‖d‖² + l1 √(α + ‖d‖²) and the log form ½ l2 ‖d‖² + l1 log(α + ‖d‖²), each
scaled over time by a ramp (``time_ramp``), and weighted sums of them.

``quadratic_cost_model`` turns the per-rollout local expansions into the one
quadratic cost per time step that LQR consumes; ``build_cost`` builds a cost from
a CostSpec (one typed spec per term, documented and checked like every setting, see
core.settings), or from the plain YAML mapping of one.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from mbpl_ros.core.rollouts import rollout_arrays
from mbpl_ros.core.settings import from_mapping, setting, settings_dataclass


@dataclass
class CostExpansion:
    """
    Hold a cost and its derivatives at given points.

    Cost and its derivatives at given points, for N rollouts of T steps:
    l (N, T), lx (N, T, dX), lu (N, T, dU), lxx (N, T, dX, dX),
    luu (N, T, dU, dU), lux (N, T, dU, dX).
    """

    l: np.ndarray
    lx: np.ndarray
    lu: np.ndarray
    lxx: np.ndarray
    luu: np.ndarray
    lux: np.ndarray

    @classmethod
    def zeros(cls, N: int, T: int, dX: int, dU: int) -> "CostExpansion":
        """Return an all-zero expansion of the given sizes."""
        return cls(np.zeros((N, T)), np.zeros((N, T, dX)), np.zeros((N, T, dU)),
                   np.zeros((N, T, dX, dX)), np.zeros((N, T, dU, dU)), np.zeros((N, T, dU, dX)))

    def scaled(self, weight: float) -> "CostExpansion":
        """Return the expansion of weight · l."""
        return CostExpansion(weight * self.l, weight * self.lx, weight * self.lu,
                             weight * self.lxx, weight * self.luu, weight * self.lux)

    def __add__(self, other: "CostExpansion") -> "CostExpansion":
        return CostExpansion(self.l + other.l, self.lx + other.lx, self.lu + other.lu,
                             self.lxx + other.lxx, self.luu + other.luu, self.lux + other.lux)


@dataclass
class QuadraticCost:
    """
    Hold a time-varying quadratic cost in absolute coordinates.

    A time-varying quadratic cost in absolute coordinates, for z_t = [x_t; u_t]:
    l_t(z) = ½ zᵀ C_t z + c_tᵀ z + c0_t, with C (T, dX+dU, dX+dU), c (T, dX+dU), c0 (T,).
    """

    C: np.ndarray
    c: np.ndarray
    c0: np.ndarray


# ---------------------------------------------------------------------------
# Time ramps

RAMP_KINDS = ("constant", "linear", "quadratic", "final_only")


def time_ramp(kind: str, T: int, final_multiplier: float = 1.0) -> np.ndarray:
    """
    Per-step multiplier (T,) of a cost term.

    constant: 1; linear: (t+1)/T; quadratic: ((t+1)/T)²; final_only: 1 at the last
    step, 0 before. The last step is then multiplied by ``final_multiplier``.
    """
    if kind not in RAMP_KINDS:
        raise ValueError(f"unknown ramp kind {kind!r}; allowed kinds: {', '.join(RAMP_KINDS)}")
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"T must be a positive integer number of time steps; got {T!r}")
    final_multiplier = _finite_float(final_multiplier, "final_multiplier")
    fraction = np.arange(1, T + 1, dtype=float) / T
    if kind == "constant":
        ramp = np.ones(T)
    elif kind == "linear":
        ramp = fraction
    elif kind == "quadratic":
        ramp = fraction ** 2
    else:
        ramp = np.zeros(T)
        ramp[-1] = 1.0
    ramp[-1] *= final_multiplier
    return ramp


# ---------------------------------------------------------------------------
# Cost terms

class Cost:
    """Interface of a cost: ``evaluate(X (N, T, dX), U (N, T, dU)) -> CostExpansion``."""

    def evaluate(self, X: np.ndarray, U: np.ndarray) -> CostExpansion:
        raise NotImplementedError


class ActionCost(Cost):
    """
    L = ½ Σ_i w_i u_i² at every step (GPS's CostAction).

    weights: (dU,) non-negative, or one number for every action dimension.
    """

    def __init__(self, weights):
        self.weights = _nonnegative_vector(weights, "weights")

    def evaluate(self, X, U):
        X, U = rollout_arrays(X, U)
        N, T, dX = X.shape
        dU = U.shape[2]
        w = _broadcast_to_size(self.weights, dU, "ActionCost weights", "one per action dimension, "
                                                                       "dU")
        out = CostExpansion.zeros(N, T, dX, dU)
        out.l = 0.5 * np.einsum("ntu,u->nt", U ** 2, w)  # noqa: E741 (l: the cost, GPS's name)
        out.lu = U * w
        out.luu[:] = np.diag(w)
        return out


class StateTargetCost(Cost):
    """
    l_t = ramp_t · ½ Σ_i w_i (x_i − target_i)² over the selected state indices.

    indices: (k,) distinct state indices; target, weights: (k,) or one number each;
    ramp, final_multiplier: see ``time_ramp``; T: if given, the horizon the ramp is
    meant for, checked against X.
    """

    def __init__(self, indices, target, weights, ramp: str = "constant",
                 final_multiplier: float = 1.0, *, T: int | None = None):
        self.indices = _index_vector(indices, "indices")
        k = self.indices.size
        self.target = _broadcast_to_size(_finite_vector(target, "target"), k, "target",
                                         "one per index")
        self.weights = _broadcast_to_size(_nonnegative_vector(weights, "weights"), k, "weights",
                                          "one per index")
        self.ramp, self.final_multiplier, self.T = _ramp_settings(ramp, final_multiplier, T)

    def evaluate(self, X, U):
        X, U = rollout_arrays(X, U)
        N, T, dX = X.shape
        _check_indices(self.indices, dX)
        ramp = _ramp_for(self, T)[None, :, None]  # (1, T, 1)
        out = CostExpansion.zeros(N, T, dX, U.shape[2])
        idx = self.indices
        diff = X[..., idx] - self.target
        out.l = 0.5 * np.sum(ramp * self.weights * diff ** 2, axis=-1)  # noqa: E741 (GPS's name)
        out.lx[..., idx] = ramp * self.weights * diff
        out.lxx[..., idx, idx] = ramp * self.weights  # the diagonal of the block
        return out


DISTANCE_FORMS = ("l1l2", "log")
HESSIAN_KINDS = ("psd", "exact")


class DistanceCost(Cost):
    """
    Penalise the distance d = w ⊙ x[indices], scaled over time by a ramp.

    Distance penalty on d = w ⊙ x[indices], scaled over time by a ramp:
    l_t = ramp_t · φ(d_t) with, for p = α + ‖d‖²,

      form "l1l2": φ(d) = ½ l2 ‖d‖² + l1 √p
      form "log":  φ(d) = ½ l2 ‖d‖² + l1 log p

    x[indices] is meant to be the end-effector-minus-target block of the state
    (``StateLayout.ee_offset``): the target is already subtracted. The l2 term pulls
    hard from far away, the l1 (or log) term keeps pulling precisely near d = 0.

    Hessian in d-space, H = l2 I + a I + b d dᵀ:
      l1l2: a = l1/√p, b = −l1/p^{3/2}. This is exact, and it is PSD (its eigenvalues are
            l2 + l1/√p across d and l2 + l1 α/p^{3/2} along d), so ``hessian`` changes nothing.
      log, hessian="exact": a = 2 l1/p, b = −4 l1/p². Along d its curvature is
            l2 + 2 l1 (α − ‖d‖²)/p², negative far from the target when l2 is small.
      log, hessian="psd" (default): a = 2 l1/p, b = −2 l1/p², i.e. the exact Hessian plus
            the PSD term 2 l1 d dᵀ/p², so it bounds the exact one from above; its eigenvalues
            are l2 + 2 l1/p across d and l2 + 2 l1 α/p² along d. It is GPS's evallogl2term
            Hessian; LQR needs a PSD cost Hessian, so trajectory optimisation should use it.
    The gradient is exact in every case: l2 d + l1 d/√p (l1l2), l2 d + 2 l1 d/p (log).

    Differences from GPS (evall1l2term / evallogl2term): GPS weights d by wp = w · ramp
    inside the norms (wp d² in the l2 term, (wp d)² under the root); here d is weighted
    once and the whole per-step cost is multiplied by the ramp, so a step with ramp 0
    costs exactly 0 (GPS leaves the constant l1 √α there); with unit weights and α → 0
    the two agree. GPS's log form is ½ l1 log p, so its l1 is twice the l1 here.

    indices: (k,) distinct state indices; weights: (k,) non-negative or one number
    (default 1); l1, l2 ≥ 0; alpha > 0; T: if given, the horizon, checked against X.
    """

    def __init__(self, indices, l1: float = 0.0, l2: float = 1.0, alpha: float = 1e-5,
                 ramp: str = "constant", final_multiplier: float = 1.0, form: str = "l1l2", *,
                 weights=1.0, hessian: str = "psd", T: int | None = None):
        self.indices = _index_vector(indices, "indices")
        self.weights = _broadcast_to_size(_nonnegative_vector(weights, "weights"),
                                          self.indices.size,
                                          "weights", "one per index")
        self.l1 = _nonnegative_float(l1, "l1")
        self.l2 = _nonnegative_float(l2, "l2")
        self.alpha = _finite_float(alpha, "alpha")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (it keeps the root and the log smooth at d = 0); "
                             f"got {alpha!r}")
        if form not in DISTANCE_FORMS:
            raise ValueError(f"unknown distance form {form!r}; allowed forms: "
                             f"{', '.join(DISTANCE_FORMS)}")
        if hessian not in HESSIAN_KINDS:
            raise ValueError(f"unknown hessian kind {hessian!r}; allowed kinds: "
                             f"{', '.join(HESSIAN_KINDS)}")
        self.form = form
        self.hessian = hessian
        self.ramp, self.final_multiplier, self.T = _ramp_settings(ramp, final_multiplier, T)

    def evaluate(self, X, U):
        X, U = rollout_arrays(X, U)
        N, T, dX = X.shape
        _check_indices(self.indices, dX)
        ramp = _ramp_for(self, T)[None, :]  # (1, T)
        idx, w, k = self.indices, self.weights, self.indices.size

        d = w * X[..., idx]                     # (N, T, k)
        d_sq = np.sum(d ** 2, axis=-1)          # (N, T)
        p = self.alpha + d_sq
        if self.form == "l1l2":
            root = np.sqrt(p)
            phi = 0.5 * self.l2 * d_sq + self.l1 * root
            a = self.l1 / root
            b = -self.l1 / (p * root)
        else:
            phi = 0.5 * self.l2 * d_sq + self.l1 * np.log(p)
            a = 2.0 * self.l1 / p
            b = (-4.0 if self.hessian == "exact" else -2.0) * self.l1 / p ** 2
        grad_d = (self.l2 + a)[..., None] * d   # (N, T, k)
        hess_d = ((self.l2 + a)[..., None, None] * np.eye(k)
                  + b[..., None, None] * np.einsum("nti,ntj->ntij", d, d))

        out = CostExpansion.zeros(N, T, dX, U.shape[2])
        out.l = ramp * phi  # noqa: E741 (l: the cost, GPS's name)
        # chain rule through d = w ⊙ x[idx]: ∂d/∂x[idx] = diag(w)
        out.lx[..., idx] = ramp[..., None] * w * grad_d
        out.lxx[..., idx[:, None], idx[None, :]] = ramp[..., None, None] * np.outer(w, w) * hess_d
        return out


class WeightedSum(Cost):
    """L = Σ_j weight_j · cost_j(x, u), for terms [(weight, cost), ...]; empty means l = 0."""

    def __init__(self, terms):
        self.terms = []
        for j, term in enumerate(terms):
            if not (isinstance(term, Sequence) and len(term) == 2):
                raise ValueError(f"term {j} must be a (weight, cost) pair; got {term!r}")
            weight, cost = term
            weight = _finite_float(weight, f"weight of term {j}")
            if not callable(getattr(cost, "evaluate", None)):
                raise ValueError(f"term {j}: {cost!r} is not a cost (it has no evaluate(X, U) "
                                 "method)")
            self.terms.append((weight, cost))

    def evaluate(self, X, U):
        X, U = rollout_arrays(X, U)
        (N, T, dX), dU = X.shape, U.shape[2]
        total = CostExpansion.zeros(N, T, dX, dU)
        for weight, cost in self.terms:
            total = total + cost.evaluate(X, U).scaled(weight)
        return total


# ---------------------------------------------------------------------------
# From local expansions to one quadratic model per step

def quadratic_cost_model(X: np.ndarray, U: np.ndarray, expansion: CostExpansion) -> QuadraticCost:
    """
    Average of the rollouts' second-order Taylor models, in absolute coordinates.

    Rollout n's expansion at z̄ = [x_t; u_t] (its own point) is
      l(z) ≈ l̄ + gᵀ(z − z̄) + ½ (z − z̄)ᵀ H (z − z̄)
           = ½ zᵀ H z + (g − H z̄)ᵀ z + (l̄ − gᵀ z̄ + ½ z̄ᵀ H z̄),
    with g = [lx; lu] and H = [[lxx, luxᵀ], [lux, luu]] (symmetrised). C, c, c0 are the
    means of these coefficients over the N rollouts (GPS's _eval_cost with its rdiff
    shift). X (N, T, dX), U (N, T, dU); returns C (T, dZ, dZ) exactly symmetric,
    c (T, dZ), c0 (T,) for dZ = dX + dU.
    """
    X, U = rollout_arrays(X, U)
    N, T, dX = X.shape
    dU = U.shape[2]
    expected = {"l": (N, T), "lx": (N, T, dX), "lu": (N, T, dU), "lxx": (N, T, dX, dX),
                "luu": (N, T, dU, dU), "lux": (N, T, dU, dX)}
    for name, shape in expected.items():
        got = np.shape(getattr(expansion, name))
        if got != shape:
            raise ValueError(f"expansion.{name} has shape {got}; X {X.shape} and U {U.shape} need "
                             f"{shape}")

    Z = np.concatenate([X, U], axis=-1)                                        # (N, T, dZ)
    g = np.concatenate([expansion.lx, expansion.lu], axis=-1)                  # (N, T, dZ)
    lux = np.asarray(expansion.lux, float)
    H = np.block([[np.asarray(expansion.lxx, float), np.swapaxes(lux, -1, -2)],
                  [lux, np.asarray(expansion.luu, float)]])                    # (N, T, dZ, dZ)
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    HZ = np.einsum("ntij,ntj->nti", H, Z)
    c = g - HZ
    c0 = np.asarray(expansion.l, float) - np.einsum("nti,nti->nt", g,
                                                    Z) + 0.5 * np.einsum("nti,nti->nt", Z, HZ)
    C = H.mean(axis=0)
    return QuadraticCost(C=0.5 * (C + np.swapaxes(C, -1, -2)), c=c.mean(axis=0),
                         c0=c0.mean(axis=0))


# ---------------------------------------------------------------------------
# From a configuration dictionary

STATE_BLOCKS = ("position", "velocity", "ee_offset", "ee_velocity")
_SCALE_DOC = "the term's weight in the sum of the terms"
_RAMP_DOC = ("how the term is scaled over time: constant, linear, quadratic or final_only "
             "(see time_ramp)")


@settings_dataclass
class ActionTerm:
    """An `action:` entry of the cost: ½ Σ_i w_i u_i² (ActionCost)."""

    weight: Union[float, list[float]] = setting("w: one number, or dU numbers (one per action)",
                                                ge=0.0)
    scale: float = setting(_SCALE_DOC, 1.0)


@settings_dataclass
class StateTerm:
    """A `state:` entry of the cost: ramp_t · ½ Σ_i w_i (x_i − target_i)² (StateTargetCost)."""

    block: Optional[str] = setting("the state block the term is on (or give indices)", None,
                                   choices=STATE_BLOCKS)
    indices: Optional[list[int]] = setting("the state indices the term is on (or give block)",
                                           None, ge=0)
    target: Union[float, list[float]] = setting("target: one number, or one per index", 0.0)
    weights: Union[float, list[float]] = setting("w: one number, or one per index", 1.0, ge=0.0)
    ramp: str = setting(_RAMP_DOC, "constant", choices=RAMP_KINDS)
    final_multiplier: float = setting("multiplies the last step's cost", 1.0, ge=0.0)
    scale: float = setting(_SCALE_DOC, 1.0)

    def __post_init__(self):
        if (self.block is None) == (self.indices is None):
            raise ValueError(f"needs exactly one of block ({', '.join(STATE_BLOCKS)}) or indices "
                             "(state indices)")
        if self.indices is not None and (not self.indices
                                         or len(set(self.indices)) != len(self.indices)):
            raise ValueError(f"indices must be distinct and non-empty; got {self.indices}")


@settings_dataclass
class DistanceTerm:
    """A `distance:` entry of the cost, on the layout's ee_offset block (DistanceCost)."""

    l1: float = setting("weight of the l1 (√(α + ‖d‖²)) or log (log(α + ‖d‖²)) term", 0.0, ge=0.0)
    l2: float = setting("weight of the ½ ‖d‖² term", 1.0, ge=0.0)
    alpha: float = setting("α: keeps the root and the log smooth at d = 0", 1e-5, gt=0.0)
    ramp: str = setting(_RAMP_DOC, "constant", choices=RAMP_KINDS)
    final_multiplier: float = setting("multiplies the last step's cost", 1.0, ge=0.0)
    form: str = setting("l1l2: ½ l2 ‖d‖² + l1 √p; log: ½ l2 ‖d‖² + l1 log p", "l1l2",
                        choices=DISTANCE_FORMS)
    hessian: str = setting("psd (GPS's, for LQR) or exact (see DistanceCost)", "psd",
                           choices=HESSIAN_KINDS)
    weights: Union[float, list[float]] = setting(
        "w in d = w ⊙ x[ee_offset]: one number, or 3 per end-effector point", 1.0, ge=0.0)
    scale: float = setting(_SCALE_DOC, 1.0)


@settings_dataclass
class CostSpec:
    """The experiment file's cost: a sum of terms, each key holding one term or a list of them."""

    action: Union[ActionTerm, list[ActionTerm], None] = setting("action penalties", None)
    state: Union[StateTerm, list[StateTerm], None] = setting("state-target penalties", None)
    distance: Union[DistanceTerm, list[DistanceTerm], None] = setting(
        "end-effector distance penalties", None)

    def terms(self, kind: str) -> list:
        """Return the terms of `kind` (action, state or distance) as a list."""
        entries = getattr(self, kind)
        return [] if entries is None else entries if isinstance(entries, list) else [entries]

    def __post_init__(self):
        if not (self.terms("action") or self.terms("state") or self.terms("distance")):
            raise ValueError("cost is empty; name at least one of: action, state, distance")


def build_cost(spec: CostSpec | Mapping, layout, T: int) -> WeightedSum:
    """
    Return the cost `spec` describes for `layout` (a StateLayout) and the horizon T.

    spec: a CostSpec, or a plain mapping of one (e.g. from YAML), such as::

        {"action": {"weight": 1e-3},
         "distance": [{"l1": 0.1, "l2": 10.0, "alpha": 1e-5},
                      {"l1": 1.0, "l2": 10.0, "alpha": 1e-5, "ramp": "final_only",
                       "final_multiplier": 10.0}],
         "state": {"block": "velocity", "weights": 0.1}}

    Bad keys or values raise ValueError naming the key path, the value and what is allowed.
    """
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"T must be a positive integer number of time steps; got {T!r}")
    if not isinstance(spec, CostSpec):
        spec = from_mapping(CostSpec, dict(spec) if isinstance(spec, Mapping) else spec, "cost")
    terms = []
    for kind in ("action", "state", "distance"):
        entries = spec.terms(kind)
        for j, term in enumerate(entries):
            path = f"{kind}[{j}]" if isinstance(getattr(spec, kind), list) else kind
            terms.append((term.scale, _TERM_BUILDERS[kind](term, path, layout, T)))
    return WeightedSum(terms)


def _sized(value, size, name, size_name):
    return _broadcast_to_size(np.asarray(value, dtype=float), size, name, size_name)


def _build_action(term: ActionTerm, path, layout, T):
    return ActionCost(_sized(term.weight, layout.dU, f"{path}.weight", "one per action, dU"))


def _build_state(term: StateTerm, path, layout, T):
    if term.block is not None:
        indices = getattr(layout, term.block)
    else:
        indices = np.asarray(term.indices, dtype=int)
        bad = indices[indices >= layout.dX]
        if bad.size:
            raise ValueError(f"{path}.indices {bad.tolist()} are out of range for "
                             f"dX = {layout.dX}")
    size, size_name = indices.size, "one per selected state index"
    return StateTargetCost(indices, target=_sized(term.target, size, f"{path}.target", size_name),
                           weights=_sized(term.weights, size, f"{path}.weights", size_name),
                           ramp=term.ramp, final_multiplier=term.final_multiplier, T=T)


def _build_distance(term: DistanceTerm, path, layout, T):
    size = layout.ee_offset.size
    return DistanceCost(layout.ee_offset, l1=term.l1, l2=term.l2, alpha=term.alpha,
                        ramp=term.ramp, final_multiplier=term.final_multiplier, form=term.form,
                        weights=_sized(term.weights, size, f"{path}.weights",
                                       "one per ee_offset entry"),
                        hessian=term.hessian, T=T)


_TERM_BUILDERS = {"action": _build_action, "state": _build_state, "distance": _build_distance}


# ---------------------------------------------------------------------------
# Input checks

def _finite_float(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real,
                                                         np.ndarray)) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return value


def _nonnegative_float(value, name):
    value = _finite_float(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return value


def _finite_vector(value, name):
    """Return a number (kept 0-d, to broadcast) or a 1-D list of finite numbers."""
    if isinstance(value, (str, bytes, Mapping)) or (isinstance(value, bool)):
        raise ValueError(f"{name} must be a number or a list of numbers; got {value!r}")
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers; got {value!r}") from None
    if array.ndim > 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a finite number or a non-empty 1-D list of them; got "
                         f"{value!r}")
    return array


def _nonnegative_vector(value, name):
    array = _finite_vector(value, name)
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return array


def _broadcast_to_size(array, size, name, size_name):
    if array.ndim == 0:
        return np.full(size, float(array))
    if array.shape != (size,):
        raise ValueError(f"{name} has {array.size} entries; allowed: one number or {size} "
                         f"({size_name})")
    return array


def _index_vector(value, name):
    if isinstance(value, (str, bytes, Mapping)):
        raise ValueError(f"{name} must be a list of state indices; got {value!r}")
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-D list of integer state indices; got "
                         f"{value!r}")
    if np.any(array < 0) or np.unique(array).size != array.size:
        raise ValueError(f"{name} must be distinct and >= 0; got {array.tolist()}")
    return array.astype(int)


def _check_indices(indices, dX):
    if indices.max() >= dX:
        raise ValueError(f"state index {int(indices.max())} is out of range for dX = {dX}")


def _ramp_settings(ramp, final_multiplier, T):
    time_ramp(ramp, 1 if T is None else T, final_multiplier)  # validates all three
    if final_multiplier < 0:
        raise ValueError("final_multiplier must be >= 0 (a negative cost weight); got "
                         f"{final_multiplier!r}")
    return ramp, float(final_multiplier), T


def _ramp_for(cost, T):
    if cost.T is not None and cost.T != T:
        raise ValueError(f"this cost was built for T = {cost.T} steps but X has {T}")
    return time_ramp(cost.ramp, T, cost.final_multiplier)
