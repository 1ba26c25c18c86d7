"""The verdict's confirmatory family: which rows it holds, how it spends alpha,
and how large a lift it can detect.

The study declares its question before the run (`verdict.primary`: the
methods whose lifts it is about). The family is, for each declared method and
each weak class the study adds images to, two hypotheses: "no lift
over `baseline`" (B) and "no lift over `oversample`" (O). Every other row the
tables show is descriptive.

Alpha is spent by a graphical procedure (Bretz, Maurer, Brannath & Posch,
Stat. Med. 2009), a sequentially rejective Bonferroni test with strong
family-wise error control:
- alpha is split equally over the B hypotheses (O starts at 0);
- when B of a method and class is rejected, its whole level passes to that
  method's O on the same class (the question "does it beat oversampling?" is
  only asked of a method that lifts at all);
- when an O is rejected, its level is recycled equally to the other B's
  (through the graph's update, on to their O's once those B's are rejected).
With one declared row this is the plain t-test at alpha; a method that does
not lift costs the others nothing beyond its share.

`graphical` returns the adjusted p-values (the smallest alpha at which each
hypothesis is rejected: Algorithm 1 of the paper run on p/w) and, at a given
alpha, the decisions and each hypothesis's local level (alpha times its
weight when it was rejected, or when the procedure stopped), the level of the
decision's dual interval.

`mde` is the smallest true lift a row detects with 80% power: the two-sided
t-test over `units` units at the row's local level, with the units' spread,
from the noncentral t distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as _st

POWER = 0.8


@dataclass(frozen=True)
class Graph:
    """Initial weights (summing to at most 1) and transitions (rows summing to
    at most 1, zero diagonal) over n hypotheses."""
    weights: np.ndarray
    transitions: np.ndarray

    def __post_init__(self):
        w, g = np.asarray(self.weights, float), np.asarray(self.transitions, float)
        if g.shape != (len(w), len(w)) or w.sum() > 1 + 1e-9 or (g.sum(axis=1) > 1 + 1e-9).any() or (w < 0).any():
            raise ValueError("graphical procedure: weights must sum to <= 1 and each transition row to <= 1")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "transitions", g)


def _reject(j: int, w: np.ndarray, g: np.ndarray, active: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The graph after hypothesis j is rejected (the paper's update rule)."""
    w, g2 = w.copy(), g.copy()
    for k in active:
        if k != j:
            w[k] += w[j] * g[j, k]
            for m in active:
                if m not in (j, k):
                    denom = 1.0 - g[k, j] * g[j, k]
                    g2[k, m] = (g[k, m] + g[k, j] * g[j, m]) / denom if denom > 1e-12 else 0.0
    w[j] = 0.0
    g2[j, :], g2[:, j] = 0.0, 0.0
    return w, g2


def graphical(pvalues, graph: Graph, alpha: float) -> tuple[list[float], list[bool], list[float]]:
    """Adjusted p-values, decisions at alpha and local levels (module
    docstring). A NaN p-value (no spread to test) is never rejected; its
    weight stays where it is."""
    p = np.asarray(list(pvalues), dtype=float)
    n = len(p)
    adjusted = [1.0] * n
    w, g, active, q = graph.weights.copy(), graph.transitions.copy(), list(range(n)), 0.0
    while active:
        ratio = [(p[i] / w[i]) if (w[i] > 0 and np.isfinite(p[i])) else math.inf for i in active]
        j = active[int(np.argmin(ratio))]
        if not np.isfinite(min(ratio)):
            break
        q = min(1.0, max(q, min(ratio)))
        adjusted[j] = q
        w, g = _reject(j, w, g, active)
        active.remove(j)
    reject, local = [False] * n, [0.0] * n
    w, g, active = graph.weights.copy(), graph.transitions.copy(), list(range(n))
    while True:
        hits = [i for i in active if np.isfinite(p[i]) and w[i] > 0 and p[i] <= alpha * w[i]]
        if not hits:
            break
        j = hits[0]
        reject[j], local[j] = True, alpha * w[j]
        w, g = _reject(j, w, g, active)
        active.remove(j)
    for i in active:
        local[i] = alpha * w[i]
    return adjusted, reject, local


def baseline_then_oversample(methods: list[str], has_oversample: dict[str, bool]) -> tuple[list[tuple], Graph]:
    """The study's graph for k declared (method, class) rows: alpha/k on each
    "vs baseline"; a rejected one passes its level to its "vs oversample"
    (where that row exists, else equally to the other "vs baseline"); a
    rejected "vs oversample" passes it equally to the other "vs baseline".
    methods: the declared rows' keys; has_oversample: {key: an O row exists}.
    Returns the hypotheses' (key, reference) in the graph's order and the graph."""
    hyps = [(m, "baseline") for m in methods] + [(m, "oversample") for m in methods if has_oversample[m]]
    idx = {h: i for i, h in enumerate(hyps)}
    n, k = len(hyps), len(methods)
    w, g = np.zeros(n), np.zeros((n, n))
    for m in methods:
        b = idx[(m, "baseline")]
        w[b] = 1.0 / k
        others = [idx[(o, "baseline")] for o in methods if o != m]
        if has_oversample[m]:
            g[b, idx[(m, "oversample")]] = 1.0
            for o in others:
                g[idx[(m, "oversample")], o] = 1.0 / len(others)
        else:
            for o in others:
                g[b, o] = 1.0 / len(others)
    return hyps, Graph(w, g)


def power(lift: float, sd: float, units: int, level: float) -> float:
    """The chance that the two-sided t-test over `units` units with spread
    `sd` (one unit's lift's standard deviation) rejects at `level` when the
    true lift is `lift` (noncentral t)."""
    if units < 2 or level <= 0 or not np.isfinite(sd):
        return 0.0
    if sd <= 0:
        return 1.0 if lift != 0 else level
    df = units - 1
    crit = _st.t.ppf(1 - level / 2, df)
    ncp = abs(lift) / (sd / math.sqrt(units))
    upper = _st.nct.sf(crit, df, ncp)
    lower = _st.nct.cdf(-crit, df, ncp)  # the wrong-sign rejections: negligible, NaN where scipy underflows
    return float(min(1.0, upper + (lower if np.isfinite(lower) else 0.0)))


def mde(sd: float, units: int, level: float, target: float = POWER) -> float:
    """The smallest lift the t-test over `units` units (spread `sd`) at `level`
    detects with probability `target`: NaN where it cannot (fewer than two
    units, no spread estimate, level 0)."""
    if units < 2 or level <= 0 or not np.isfinite(sd):
        return float("nan")
    if sd <= 0:
        return 0.0
    hi = sd
    while power(hi, sd, units, level) < target:
        hi *= 2
        if hi > 1e6 * sd:
            return float("inf")
    return float(optimize.brentq(lambda d: power(d, sd, units, level) - target, 0.0, hi, xtol=1e-10 * sd))
