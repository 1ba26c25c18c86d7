"""Whether a method lifts a weak class: tests and intervals whose unit is the training run.

Every method is evaluated on the same test images under the same retraining
seeds (and, with `replicates`, the same replicate of the adaptation per seed).
A comparison of method A with a reference B on one class is summarised per
**run**: the lift of a seed is A's accuracy on the class's test images minus
B's under that seed. Two runs of one method already disagree on many test
images (each follows its own SGD path), so the claim "A lifts the class" must
rest on the spread of these per-run lifts, not on the count of images.

- The unit: a retraining seed. Where seeds share a replicate of the
  adaptation (R replicates, more seeds than R) and A or B reads synthetic
  images, the seeds of one replicate are averaged into one unit: runs that
  share an adaptation are not independent draws of the method. The study's
  default with replicates (`replicates: seeds`) gives every run its own
  replicate, so every run is a unit carrying both sources of variance.
- `run_test`: the paired t-test over the units' lifts (scipy's ttest_1samp,
  df = units - 1). Assumptions: the units are independent and their lifts
  roughly normal (each is a mean over the class's test images). The test
  images are fixed: the claim is about the class's test set under new
  training runs. Where every unit has the same lift the t statistic does not
  exist: the exact sign-flip test over units decides (p = 2^(1-U), 1 for a
  zero lift), which needs no variance.
- `comparisons`: every row the tables show, each either **confirmatory** (the
  family declared before the run, `verdict.primary`; decided by the graphical
  procedure of tibalance.family at 5% family-wise) or **descriptive** (an
  unadjusted 95% interval, never called significant).
- `sign_flip_test`: the exact paired permutation test on images (per image
  the seeds' correctness differences summed; with one seed, McNemar's exact
  test). It holds the trained models fixed, so it only says *these models*
  differ; it is reported as `p_images`, never as the verdict's significance.

The calibration (tests/test_stats.py, benchmarks/calibration.py) draws
studies in the design the workflow runs (replicates shared by the methods,
complete and partial nulls) and counts how often the confirmatory family
calls a true null significant.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as _st

from .defaults import COMBINED_METHODS, ORACLE_AT_METHODS, SYNTHETIC_METHODS, YARDSTICK_METHODS, undeferred
from .family import baseline_then_oversample, graphical, mde
from .util import TibalanceError

ALPHA = 0.05
YARDSTICKS = YARDSTICK_METHODS  # rows that measure the study, not methods it proposes


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise TibalanceError(f"paired comparison: correctness matrices must be seeds x images of one shape "
                             f"(got {a.shape} and {b.shape})")
    return a, b


def reads_adaptation(method: str) -> bool:
    """Whether a method's training set holds synthetic images (and so its runs
    depend on the replicate of the adaptation they read)."""
    method = undeferred(method)
    return method in SYNTHETIC_METHODS or method in COMBINED_METHODS or method in ORACLE_AT_METHODS


def unit_lifts(a, b, units=None) -> np.ndarray:
    """Per-unit lifts: a and b are 0/1 arrays, seeds x images (the same images
    in the same order under the same seeds). Each seed's lift is the mean of
    a - b over the images; units (a label per seed, e.g. its replicate) groups
    seeds, whose lifts are averaged into one."""
    a, b = _check(a, b)
    return _by_unit((a - b).mean(axis=1), units)


def _by_unit(per_seed: np.ndarray, units=None) -> np.ndarray:
    """Per-seed lifts averaged within each unit (a label per seed); as they are without units."""
    if units is None:
        return per_seed
    units = list(units)
    if len(units) != len(per_seed):
        raise TibalanceError(f"paired comparison: {len(units)} unit labels for {len(per_seed)} seeds")
    return np.array([per_seed[[i for i, u in enumerate(units) if u == g]].mean() for g in dict.fromkeys(units)])


def run_test(lifts) -> float:
    """Two-sided p-value that the units' mean lift is 0 (module docstring): the
    paired t-test over units; the exact sign-flip over units where their lifts
    are all equal; NaN with fewer than two units (no spread to judge by)."""
    d = np.asarray(lifts, dtype=float)
    if len(d) < 2:
        return float("nan")
    if np.ptp(d) <= 1e-12:
        return 1.0 if abs(d[0]) <= 1e-12 else min(1.0, 2.0 ** (1 - len(d)))
    return float(_st.ttest_1samp(d, 0.0).pvalue)


def run_interval(lifts, level: float) -> tuple[float, float]:
    """The interval dual to run_test at `level`: the t interval over units
    (scipy's); for equal lifts the sign-flip's inversion (the point where its
    p-value clears 1 - level, else unbounded)."""
    d = np.asarray(lifts, dtype=float)
    if len(d) < 2 or not np.isfinite(level):
        return float("nan"), float("nan")
    if np.ptp(d) <= 1e-12:
        if 2.0 ** (1 - len(d)) < 1 - level:
            return float(d[0]), float(d[0])
        return -math.inf, math.inf
    ci = _st.ttest_1samp(d, 0.0).confidence_interval(confidence_level=level)
    return float(ci.low), float(ci.high)


def sign_flip_test(a, b) -> float:
    """Two-sided exact p-value of the image-level sign-flip test (module docstring):
    whether these trained models differ on these images."""
    a, b = _check(a, b)
    k = np.abs((a - b).sum(axis=0))  # per image |sum over seeds|
    observed = int(abs((a - b).sum()))
    k = k[k > 0]
    if len(k) == 0:
        return 1.0
    total = int(k.sum())
    # distribution of sum(eps_i * k_i), eps_i = +-1 equally likely: offset by `total`
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0
    for v in k:
        dist = 0.5 * (np.roll(dist, int(v)) + np.roll(dist, -int(v)))
    values = np.arange(-total, total + 1)
    p = float(dist[np.abs(values) >= observed].sum())
    return min(1.0, p)


def correctness(preds, cls: str) -> "pd.Series":
    """Per test image of class cls (indexed by path, sorted): 1 where the prediction is right."""
    t = preds[preds["label"] == cls].sort_values("path")
    return pd.Series((t["pred"] == t["label"]).astype(int).to_numpy(), index=t["path"].to_numpy())


def _matrix(runs: dict, method: str, seeds: list[int], cls: str, memo: dict) -> np.ndarray:
    for s in seeds:
        if (method, s, cls) not in memo:
            memo[(method, s, cls)] = correctness(runs[(method, s)], cls)
    rows = [memo[(method, s, cls)] for s in seeds]
    paths = rows[0].index
    for s, r in zip(seeds, rows):
        if not r.index.equals(paths):
            raise TibalanceError(f"{method} seed {s}: its test predictions for class {cls} are not on the "
                                 "same images as the other runs' (rerun it)")
    return np.stack([r.to_numpy() for r in rows])


COLUMNS = ["class", "method", "reference", "role", "seeds", "units", "images", "lift", "se", "low", "high", "level",
           "p", "p_adj", "significant", "mde", "p_images"]
CONFIRMATORY, DESCRIPTIVE = "confirmatory", "descriptive"
DESCRIPTIVE_LEVEL = 0.95

GROUP_SUFFIX = "-shot"  # a group's row label: "few-shot", "medium-shot", "many-shot"
ADAPTATIONS = tuple(m for m in SYNTHETIC_METHODS if m != "raw_sd")  # the rows with a learned token or adapter


def group_label(group: str) -> str:
    """The comparisons' `class` value of a group of classes (retrain.class_groups' names)."""
    return f"{group}{GROUP_SUFFIX}"


def is_group(label: str) -> bool:
    return str(label).endswith(GROUP_SUFFIX)


def default_primary(methods) -> list[str]:
    """The declared family when the config names none: the adaptations (a
    learned token or adapter) among the study's methods."""
    return [m for m in methods if m in ADAPTATIONS]


def _pair_rows(runs, targets, methods, references, rep):
    """Every (class or group, method, reference) with paired seeds: its row's
    counts and estimates and its units' lifts."""
    rows, memo = [], {}  # each run's correctness per class, computed once
    for label, classes in targets:
        for ref in references:
            for method in methods:
                if method == ref or (ref == "oversample" and method in ("baseline", *ORACLE_AT_METHODS)):
                    continue  # real_oracle@<method>: the yardstick of one row's share, against baseline only
                seeds = sorted({s for m, s in runs if m == method} & {s for m, s in runs if m == ref})
                if not seeds:
                    continue
                pairs = [(_matrix(runs, method, seeds, c, memo), _matrix(runs, ref, seeds, c, memo)) for c in classes]
                labels = [rep.get(s, 0) for s in seeds]
                grouped = (reads_adaptation(method) or reads_adaptation(ref)) and 1 < len(set(labels)) < len(seeds)
                per_seed = np.mean([unit_lifts(a, b) for a, b in pairs], axis=0)
                d = _by_unit(per_seed, labels if grouped else None)
                ref_acc = float(np.mean([b.mean() for _, b in pairs]))
                rows.append(({"class": label, "method": method, "reference": ref, "seeds": len(seeds),
                              "units": len(d), "images": sum(a.shape[1] for a, _ in pairs), "lift": float(d.mean()),
                              "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
                              "p": run_test(d),
                              "p_images": sign_flip_test(*pairs[0]) if len(pairs) == 1 else float("nan")},
                             d, ref_acc))
    return rows


def comparisons(runs: dict, weak: list[str], methods: list[str], seed: int = 0,
                references: tuple[str, ...] = ("baseline", "oversample"),
                replicate_of_seed: dict[int, int] | None = None, alpha: float = ALPHA,
                groups: dict[str, list[str]] | None = None, primary: list[str] | None = None,
                receives: dict[str, set[str]] | None = None) -> pd.DataFrame:
    """Per weak class, method and reference (baseline, oversample): the mean
    paired lift on the class's test images over the seeds both ran, the
    run-level test's p-value (`p`, over `units`), the image-level test
    (`p_images`: these trained models differ; not a claim about the method),
    and the row's `role`.

    Confirmatory rows (the declared family, tibalance.family): each method of
    `primary` (None: default_primary(methods)) on each weak class that
    the study adds images to (receives: {class: the methods tested on it},
    report.receivers; None: every method every class), against `baseline` and
    `oversample`. The graphical procedure decides them at alpha: `p_adj`
    (adjusted p), `significant`, and the decision's dual interval (`low`,
    `high` at `level` = 1 - the row's local level: it excludes 0 exactly when
    the row is significant; not simultaneous over the family; NaN where the
    row's hypothesis never received any alpha). `mde`: the lift the row's
    class and reference detect with 80% power at the first step's local level
    (alpha / the number of declared rows vs baseline), with the declared
    rows' pooled spread between units (NaN where no declared row has one).

    Descriptive rows: everything else (yardsticks, undeclared methods, classes
    that get no images, groups): an unadjusted 95% interval, `p_adj` NaN,
    never significant.

    Intervals are cut to the lift's attainable range ([-acc_ref, 1 - acc_ref]).

    runs: {(method, seed): per-image test predictions (path, label, pred)}.
    replicate_of_seed: {seed: the replicate of the adaptation it trained on}:
    where a comparison involves synthetic images and the seeds' R > 1
    replicates are fewer than the seeds, the unit is the replicate; with R =
    seeds or one replicate the unit is the seed (with one replicate the claim
    is conditional on the one adaptation made). `seed` is kept for callers.

    groups: {group: its classes} (retrain.class_groups): after the classes, a
    descriptive row per group of two or more classes, method and reference
    (`class` = group_label(group)) on the group's accuracy, the mean of its
    classes' accuracies."""
    del seed  # the tests are exact or analytic: nothing random left
    rep = {int(k): int(v) for k, v in (replicate_of_seed or {}).items()}
    targets = [(cls, [cls]) for cls in weak] + [(group_label(g), list(c)) for g, c in (groups or {}).items()
                                                if len(c) > 1]
    built = _pair_rows(runs, targets, methods, references, rep)
    primary = default_primary(methods) if primary is None else list(primary)
    weak_set = set(weak)

    def declared(r):
        return (r["class"] in weak_set and r["method"] in primary and r["reference"] in ("baseline", "oversample")
                and (receives is None or r["method"] in receives.get(r["class"], ())))

    where = {(r["method"], r["class"], r["reference"]): i for i, (r, _, _) in enumerate(built)}
    keys = [(r["method"], r["class"]) for r, _, _ in built if declared(r) and r["reference"] == "baseline"]
    hyps, graph = baseline_then_oversample(keys, {(m, c): (m, c, "oversample") in where for m, c in keys})
    index = [where[(m, c, ref)] for (m, c), ref in hyps]
    adjusted, reject, local = graphical([built[i][0]["p"] for i in index], graph, alpha) if hyps else ([], [], [])
    decided = {i: (a, rej, loc) for i, a, rej, loc in zip(index, adjusted, reject, local)}
    for i, (r, d, ref_acc) in enumerate(built):
        if i in decided:
            a, rej, loc = decided[i]
            r.update(role=CONFIRMATORY, p_adj=a, significant=bool(rej), level=1.0 - loc if loc > 0 else float("nan"))
        else:
            r.update(role=DESCRIPTIVE, p_adj=float("nan"), significant=False, level=DESCRIPTIVE_LEVEL)
        low, high = run_interval(d, r["level"])
        r["low"], r["high"] = max(low, -ref_acc), min(high, 1.0 - ref_acc)
    first_level = alpha / max(1, len(keys))
    for (cls, ref) in {(c, ref) for (_, c), ref in hyps}:
        mine = [built[i][0] for i in index if built[i][0]["class"] == cls and built[i][0]["reference"] == ref]
        sds = [r["se"] * math.sqrt(r["units"]) for r in mine if np.isfinite(r["se"]) and r["se"] > 0]
        units = int(np.median([r["units"] for r in mine]))
        value = mde(float(np.sqrt(np.mean(np.square(sds)))), units, first_level) if sds else float("nan")
        for r in mine:
            r["mde"] = value
    return pd.DataFrame([r for r, _, _ in built], columns=COLUMNS)


