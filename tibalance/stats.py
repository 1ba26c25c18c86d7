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
  share an adaptation are not independent draws of the method.
- `run_test`: the paired t-test over the units' lifts (scipy's ttest_1samp,
  df = units - 1). Assumptions: the units are independent and their lifts
  roughly normal (each is a mean over the class's test images). The test
  images are fixed: the claim is about the class's test set under new
  training runs. Where every unit has the same lift the t statistic does not
  exist: the exact sign-flip test over units decides (p = 2^(1-U), 1 for a
  zero lift), which needs no variance.
- `holm_levels`: one family for every class x method x reference the verdict
  speaks of. Holm's step-down decision, and for each row an interval at the
  level of the step that decided it (rejected at step r of m: level
  1 - alpha/(m - r); not rejected: the level of the first step that failed),
  so that "significant" and "the interval excludes 0" are the same statement.
- `sign_flip_test`: the exact paired permutation test on images (per image
  the seeds' correctness differences summed; with one seed, McNemar's exact
  test). It holds the trained models fixed, so it only says *these models*
  differ; it is reported as `p_images`, never as the verdict's significance.
- `holm`: Holm's step-down adjusted p-values.

The calibration (tests/test_stats.py, benchmarks/calibration.py) draws
studies with no true lift and a per-run spread, and counts how often the
verdict says "significant".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as _st

from .defaults import COMBINED_METHODS, ORACLE_AT_METHODS, SYNTHETIC_METHODS, YARDSTICK_METHODS, undeferred
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


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (NaN entries stay NaN, not counted)."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def holm_levels(pvalues, alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's decisions at alpha and, per row, the confidence level of its
    interval (module docstring): rows rejected at step r (0-based) of m get
    1 - alpha/(m - r); the rest the level of the first step that failed. NaN
    p-values: not rejected, level NaN."""
    p = np.asarray(list(pvalues), dtype=float)
    idx = [i for i in np.argsort(p, kind="stable") if not np.isnan(p[i])]
    m = len(idx)
    reject, level = [False] * len(p), [float("nan")] * len(p)
    failed = None
    for rank, i in enumerate(idx):
        if failed is None and p[i] >= alpha / (m - rank):
            failed = rank
        step = rank if failed is None else failed
        reject[i] = failed is None
        level[i] = 1.0 - alpha / (m - step)
    return reject, level


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


COLUMNS = ["class", "method", "reference", "seeds", "units", "images", "lift", "se", "low", "high", "level",
           "p", "p_holm", "significant", "p_images"]


GROUP_SUFFIX = "-shot"  # a group's row label: "few-shot", "medium-shot", "many-shot"


def group_label(group: str) -> str:
    """The comparisons' `class` value of a group of classes (retrain.class_groups' names)."""
    return f"{group}{GROUP_SUFFIX}"


def is_group(label: str) -> bool:
    return str(label).endswith(GROUP_SUFFIX)


def comparisons(runs: dict, weak: list[str], methods: list[str], seed: int = 0,
                references: tuple[str, ...] = ("baseline", "oversample"),
                replicate_of_seed: dict[int, int] | None = None, alpha: float = ALPHA,
                groups: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Per weak class, method and reference (baseline, oversample): the mean
    paired lift on the class's test images over the seeds both ran, the run-level
    test's p-value (`p`, over `units`), Holm's adjustment over every row
    (`p_holm`), the decision the verdict uses (`significant`), the interval
    dual to it (`low`, `high` at `level`), and the image-level test (`p_images`:
    these trained models differ; not a claim about the method).

    runs: {(method, seed): per-image test predictions (path, label, pred)}.
    replicate_of_seed: {seed: the replicate of the adaptation it trained on}:
    where a comparison involves synthetic images and the seeds' R > 1
    replicates are fewer than the seeds, the unit is the replicate; with one
    replicate the unit is the seed and the claim is conditional on the one
    adaptation made. `seed` is kept for callers; nothing is drawn.

    groups: {group: its classes} (retrain.class_groups): after the classes, a
    row per group, method and reference (`class` = group_label(group)) on the
    group's accuracy, the mean of its classes' accuracies: a seed's lift is the
    mean of its classes' lifts, the same test over the same units, in the same
    Holm family. No image-level test for a group (its classes weigh equally,
    not its images): `p_images` is NaN there."""
    del seed  # the tests are exact or analytic: nothing random left
    rep = {int(k): int(v) for k, v in (replicate_of_seed or {}).items()}
    targets = [(cls, [cls]) for cls in weak] + [(group_label(g), list(c)) for g, c in (groups or {}).items() if c]
    rows, lifts, memo = [], [], {}  # each run's correctness per class, computed once
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
                lifts.append(d)
                rows.append({"class": label, "method": method, "reference": ref, "seeds": len(seeds),
                             "units": len(d), "images": sum(a.shape[1] for a, _ in pairs), "lift": float(d.mean()),
                             "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
                             "p": run_test(d),
                             "p_images": sign_flip_test(*pairs[0]) if len(pairs) == 1 else float("nan")})
    reject, level = holm_levels([r["p"] for r in rows], alpha)
    for r, d, adj, rej, lev in zip(rows, lifts, holm([r["p"] for r in rows]), reject, level):
        r["p_holm"], r["significant"], r["level"] = adj, bool(rej), lev
        r["low"], r["high"] = run_interval(d, lev)
    return pd.DataFrame(rows, columns=COLUMNS)


def detectable_lift(comp: pd.DataFrame, cls: str, alpha: float = ALPHA) -> float | None:
    """The smallest lift over `baseline` the verdict's family could call
    significant on class cls: the t-test at Holm's strictest threshold
    (alpha/m, m the family's size) with the class's median standard error
    between units, and never under one test image. None where no row has a
    spread to judge by."""
    rows = comp[(comp["class"] == cls) & (comp["reference"] == "baseline") & (comp["se"] > 0)]
    if rows.empty:
        return None
    m = max(1, int(comp["p"].notna().sum()))
    u = int(rows["units"].median())
    return max(1.0 / int(rows["images"].max()),
               float(_st.t.ppf(1 - alpha / (2 * m), u - 1) * rows["se"].median()))


ADAPTATIONS = tuple(m for m in SYNTHETIC_METHODS if m != "raw_sd")  # the rows with a learned token or adapter


def _kendall_tau(order: list[str], other: list[str]) -> float:
    """Kendall's tau between two orderings of the same items (1: the same order)."""
    pos = {m: i for i, m in enumerate(other)}
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
    if not pairs:
        return 1.0
    return sum(1 if pos[a] < pos[b] else -1 for a, b in pairs) / len(pairs)


def replicate_ranking(run_rows: list[dict], cls: str, replicate_of_seed: dict[int, int],
                      methods: tuple[str, ...] = ADAPTATIONS) -> dict | None:
    """Whether the ranking of the adaptation rows on one class holds replicate
    by replicate: the overall order (mean paired lift over `baseline`, all
    seeds), each replicate's order (the lifts of the seeds that trained on it),
    in how many replicates the order is the overall one and the best row the
    overall best, and each replicate order's Kendall tau with the overall one.

    run_rows: the runs' metrics (method, seed, per_class_accuracy).
    replicate_of_seed: {seed: the replicate it trained on}. None where fewer
    than two adaptation rows have paired runs."""
    base = {int(r["seed"]): r["per_class_accuracy"][cls] for r in run_rows if r["method"] == "baseline"}
    lifts: dict[str, dict[int, float]] = {}
    for r in run_rows:
        if r["method"] in methods and int(r["seed"]) in base and cls in r["per_class_accuracy"]:
            lifts.setdefault(r["method"], {})[int(r["seed"])] = r["per_class_accuracy"][cls] - base[int(r["seed"])]
    shown = [m for m in methods if m in lifts]
    if len(shown) < 2:
        return None
    seeds = sorted(set.intersection(*(set(lifts[m]) for m in shown)))
    if not seeds:
        return None

    def order(ss):
        means = {m: float(np.mean([lifts[m][s] for s in ss])) for m in shown}
        return sorted(shown, key=lambda m: (-means[m], shown.index(m))), means

    overall, means = order(seeds)
    reps = sorted({replicate_of_seed.get(s, 0) for s in seeds})
    per_rep = {k: order([s for s in seeds if replicate_of_seed.get(s, 0) == k])[0] for k in reps}
    return {"class": cls, "overall": overall, "means": means, "replicates": per_rep,
            "same_order": sum(o == overall for o in per_rep.values()),
            "best_first": sum(o[0] == overall[0] for o in per_rep.values()),
            "tau": {k: _kendall_tau(o, overall) for k, o in per_rep.items()}}


def ranking_line(rk: dict | None) -> str | None:
    """replicate_ranking in words (one bullet of the verdict)."""
    if rk is None:
        return None
    r = len(rk["replicates"])
    order = " > ".join(f"`{m}`" for m in rk["overall"])
    if r < 2:
        return (f"- Ranking of the adaptations: {order}, from one replicate of the seed images, token and adapters "
                f"(the seeds vary the retraining only; `replicates: R` repeats the adaptation).")
    taus = ", ".join(f"{t:+.2f}" for t in rk["tau"].values())
    return (f"- Ranking of the adaptations over {r} replicates (seed images, token, adapters and samples made anew "
            f"in each): {order}; the same order in {rk['same_order']} of {r} replicates, "
            f"`{rk['overall'][0]}` first in {rk['best_first']} of {r} (Kendall's tau of each replicate's order "
            f"with it: {taus}).")


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ci(r) -> str:
    return f"{r['level']:.4g} CI [{_pts(r['low'])}, {_pts(r['high'])}]" if np.isfinite(r["level"]) else "no interval"


def _listed(rows: pd.DataFrame) -> str:
    return ", ".join(f"`{r.method}` {_pts(r.lift)}" for r in rows.itertuples())


def verdict(comp: pd.DataFrame, names: dict[str, str] | None = None, alpha: float = ALPHA,
            rankings: dict[str, dict | None] | None = None,
            counts: dict[str, dict[str, float]] | None = None) -> str:
    """The comparisons in words, per weak class (and group of classes, where
    comparisons had groups): the best method (never a
    yardstick) with its interval, which lifts over `baseline` are significant
    (comparisons' `significant`: run-level test, Holm over every row), whether
    any method beats `oversample`, the smallest lift the family could detect,
    the yardstick with both training counts, and (rankings: replicate_ranking
    per class) whether the adaptations' ranking holds in every replicate.
    counts: {class: {method: the class's training images in its runs}}."""
    names = names or {}
    rankings = rankings or {}
    counts = counts or {}
    m = int(comp["p"].notna().sum())
    out = []
    for cls, grp in comp.groupby("class", sort=False):
        name = names.get(cls, cls)
        base = grp[grp["reference"] == "baseline"].sort_values("lift", ascending=False, kind="stable")
        if base.empty:
            continue
        seeds, units, images = int(base["seeds"].max()), int(base["units"].min()), int(base["images"].max())
        out.append(f"### {name}\n")
        unit_word = "run" if units == seeds else "replicate of the adaptation (its seeds averaged) for rows with synthetic images"
        whose = (f"group's {images} test images (its accuracy: the mean of its classes')" if is_group(cls)
                 else f"class's {images} test images")
        out.append(f"Paired over {seeds} retraining seed(s) on the {whose}. The unit is the "
                   f"{unit_word}: a t-test over the per-unit lifts, Holm-adjusted over all {m} comparisons of this "
                   f"verdict; each interval is at the level of the Holm step that decided its row, so a lift is "
                   f"significant exactly when its interval excludes 0.\n")
        methods = base[~base["method"].isin(YARDSTICKS)]
        if len(methods):
            best = methods.iloc[0]
            tied = [mm for mm, v in zip(methods["method"], methods["lift"])
                    if np.isclose(v, best["lift"], rtol=0, atol=1e-12)]
            verb = "significant" if best["significant"] else "not significant"
            head = (f"- Best methods (tied): {', '.join(f'`{t}`' for t in tied)}, " if len(tied) > 1
                    else f"- Best method: `{best['method']}`, ")
            out.append(head + f"{_pts(best['lift'])} points over `baseline` ({_ci(best)}, adjusted p = "
                       f"{best['p_holm']:.3g}: {verb}).")
        sig = base[base["significant"]]
        up, down = sig[sig["lift"] > 0], sig[sig["lift"] < 0]
        rest = base[~base["significant"] & base["p"].notna()]
        untested = base[base["p"].isna()]
        if len(up):
            out.append("- Significant lift over `baseline`: " + _listed(up) + ".")
        if len(down):
            out.append("- Significantly worse than `baseline`: " + _listed(down) + ".")
        if len(rest):
            out.append("- Not distinguishable from `baseline`: " + _listed(rest) + ".")
        if len(untested):
            out.append("- Not tested (a single unit: no spread between runs to judge by): " + _listed(untested) + ".")
        floor = detectable_lift(comp, cls, alpha)
        if floor is not None:
            out.append(f"- Detectable here: lifts under about {100 * floor:.1f} points cannot be called significant "
                       f"with {units} unit(s), {images} test images and {m} comparisons.")
        if images < 20 and not is_group(cls):
            out.append(f"- **Too few test images**: {images}, so one image is {100 / images:.1f} points; no lift "
                       f"the study is about can be separated from chance on this class.")
        by = {r["method"]: r for _, r in base.iterrows()}
        gen = base[base["method"].isin(SYNTHETIC_METHODS)]
        n = counts.get(cls, {})
        unit = "group" if is_group(cls) else "class"
        if "real_oracle" in by:
            o = by["real_oracle"]
            out.append(f"- Real-image yardstick (`real_oracle`, {n.get('real_oracle', float('nan')):.0f} real training "
                       f"images of the {unit}): {_pts(o['lift'])} points ({_ci(o)}).")
        if len(gen) and any(m in by for m in YARDSTICKS):
            g = gen.iloc[0]
            at = by.get(f"real_oracle@{g['method']}")
            o = at if at is not None else by.get("real_oracle")
            if o is not None and o["lift"] > 0:
                equal = "at equal counts" if at is not None else "at unequal counts"
                out.append(f"- The best generative row, `{g['method']}` ({n.get(g['method'], float('nan')):.0f} "
                           f"training images of the {unit}), reaches {g['lift'] / o['lift']:.0%} of `{o['method']}` "
                           f"({n.get(o['method'], float('nan')):.0f} real ones, {_pts(o['lift'])} points): {equal}.")
        over = grp[grp["reference"] == "oversample"].sort_values("lift", ascending=False, kind="stable")
        if len(over):
            better = over[over["significant"] & (over["lift"] > 0)]
            worse = over[over["significant"] & (over["lift"] < 0)]
            if len(better):
                out.append("- Significantly better than `oversample`: " + _listed(better) + ".")
            else:
                top = over.iloc[0]
                out.append(f"- No method is significantly better than `oversample` (closest: `{top['method']}`, "
                           f"{_pts(top['lift'])} points, {_ci(top)}).")
            if len(worse):
                out.append("- Significantly worse than `oversample`: " + _listed(worse) + ".")
        line = ranking_line(rankings.get(cls))
        if line:
            out.append(line)
        out.append("")
    return "\n".join(out) + "\n" if out else "No weak class with paired runs to compare.\n"
