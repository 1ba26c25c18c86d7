"""Intervals and tests for the paired comparison of two methods on one class.

Every method is evaluated on the same test images under the same seeds (and,
with replicates, the same replicate per seed), so the data of a comparison is a
matrix of per-image correctness, seeds x images, for each of the two methods.

- `lift_interval`: the mean paired lift (accuracy of A minus accuracy of B,
  averaged over seeds) with a percentile bootstrap interval that resamples
  seeds and then test images (a two-stage bootstrap: the seeds' spread, which
  with replicates includes the adaptation's, and the test images' sampling
  error both enter it).
- `sign_flip_test`: the exact paired permutation test on images. Per image the
  seeds' correctness difference is summed (an integer in -S..S); under the null
  hypothesis that the two methods are exchangeable on every image, each image's
  sum is as likely negated. The null distribution of the total is computed
  exactly (a convolution over images), so the p-value is deterministic. With
  one seed it is McNemar's exact test (a binomial test on the discordant
  images). It conditions on the seeds/replicates run: it asks whether the
  methods differ on these, the interval whether the lift is larger than their
  spread.
- `holm`: Holm's step-down adjustment of a family of p-values.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .defaults import SYNTHETIC_METHODS
from .util import TibalanceError


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise TibalanceError(f"paired comparison: correctness matrices must be seeds x images of one shape "
                             f"(got {a.shape} and {b.shape})")
    return a, b


def lift_interval(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean lift, low, high): a and b are 0/1 arrays, seeds x images, the same
    images in the same order under the same seeds. Bootstrap: per replicate,
    draw the seeds with replacement, then the images with replacement (one draw
    of images per replicate, shared by the drawn seeds: the pairing holds)."""
    a, b = _check(a, b)
    d = (a - b).astype(np.float64)  # seeds x images
    s, n = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for k in range(n_boot):
        rows = rng.integers(0, s, size=s)
        cols = rng.integers(0, n, size=n)
        stats[k] = d[np.ix_(rows, cols)].mean()
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(d.mean()), float(low), float(high)


def sign_flip_test(a, b) -> float:
    """Two-sided exact p-value of the paired sign-flip test (see the module's docstring)."""
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


def comparisons(runs: dict, weak: list[str], methods: list[str], seed: int = 0, n_boot: int = 2000,
                references: tuple[str, ...] = ("baseline", "oversample")) -> pd.DataFrame:
    """Per weak class, method and reference (baseline, oversample): the paired
    lift on the class's test images over the seeds both have, its bootstrap 95%
    interval, the sign-flip test's p-value and its Holm adjustment over the
    methods compared with that reference for that class.

    runs: {(method, seed): per-image test predictions (path, label, pred)}."""
    from .util import derive_seed

    rows, memo = [], {}  # each run's correctness per class, computed once
    for cls in weak:
        for ref in references:
            family = []
            for method in methods:
                if method == ref or (ref == "oversample" and method == "baseline"):
                    continue
                seeds = sorted({s for m, s in runs if m == method} & {s for m, s in runs if m == ref})
                if not seeds:
                    continue
                a, b = _matrix(runs, method, seeds, cls, memo), _matrix(runs, ref, seeds, cls, memo)
                lift, low, high = lift_interval(a, b, n_boot=n_boot, seed=derive_seed(seed, "bootstrap", cls, method, ref))
                family.append({"class": cls, "method": method, "reference": ref, "seeds": len(seeds),
                               "images": a.shape[1], "lift": lift, "low": low, "high": high,
                               "p": sign_flip_test(a, b)})
            for row, adj in zip(family, holm(r["p"] for r in family)):
                row["p_holm"] = adj
            rows += family
    return pd.DataFrame(rows, columns=["class", "method", "reference", "seeds", "images", "lift", "low", "high",
                                       "p", "p_holm"])


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


def verdict(comp: pd.DataFrame, names: dict[str, str] | None = None, alpha: float = 0.05,
            rankings: dict[str, dict | None] | None = None) -> str:
    """The comparisons in words, per weak class: the best method with its interval,
    which lifts over `baseline` are significant at alpha (Holm-adjusted), whether
    any method beats `oversample` significantly, and (rankings: replicate_ranking
    per class) whether the adaptations' ranking holds in every replicate."""
    names = names or {}
    rankings = rankings or {}
    out = []
    for cls, grp in comp.groupby("class", sort=False):
        name = names.get(cls, cls)
        base = grp[grp["reference"] == "baseline"].sort_values("lift", ascending=False, kind="stable")
        if base.empty:
            continue
        seeds, images = int(base["seeds"].max()), int(base["images"].max())
        best = base.iloc[0]
        tied = [m for m, v in zip(base["method"], base["lift"]) if np.isclose(v, best["lift"], rtol=0, atol=1e-12)]
        out.append(f"### {name}\n")
        out.append(f"Paired over {seeds} seed(s) and the class's {images} test images; 95% bootstrap intervals "
                   f"(seeds, then images), p-values of the exact sign-flip test Holm-adjusted over the methods.\n")
        if len(tied) > 1:
            out.append(f"- Best methods (tied): {', '.join(f'`{m}`' for m in tied)}, {_pts(best['lift'])} points "
                       f"over `baseline` (`{best['method']}`: 95% CI [{_pts(best['low'])}, {_pts(best['high'])}], "
                       f"adjusted p = {best['p_holm']:.3g}).")
        else:
            out.append(f"- Best method: `{best['method']}`, {_pts(best['lift'])} points over `baseline` "
                       f"(95% CI [{_pts(best['low'])}, {_pts(best['high'])}], adjusted p = {best['p_holm']:.3g}).")
        sig = base[base["p_holm"] < alpha]
        up, down = sig[sig["lift"] > 0], sig[sig["lift"] < 0]
        rest = base[base["p_holm"] >= alpha]
        if len(up):
            out.append("- Significant lift over `baseline` at 5%: " + ", ".join(
                f"`{r.method}` {_pts(r.lift)}" for r in up.itertuples()) + ".")
        if len(down):
            out.append("- Significantly worse than `baseline`: " + ", ".join(
                f"`{r.method}` {_pts(r.lift)}" for r in down.itertuples()) + ".")
        if len(rest):
            out.append("- Not distinguishable from `baseline` at 5%: " + ", ".join(
                f"`{r.method}` {_pts(r.lift)}" for r in rest.itertuples()) + ".")
        oracle = base[base["method"] == "real_oracle"]
        gen = base[base["method"].isin(SYNTHETIC_METHODS)]
        if len(oracle):
            o = oracle.iloc[0]
            line = (f"- Real-image oracle (`real_oracle`, held-back real images to the same count): "
                    f"{_pts(o['lift'])} points (95% CI [{_pts(o['low'])}, {_pts(o['high'])}])")
            if len(gen) and o["lift"] > 0:
                g = gen.iloc[0]
                line += f"; the best generative row, `{g['method']}`, reaches {g['lift'] / o['lift']:.0%} of it"
            out.append(line + ".")
        over = grp[grp["reference"] == "oversample"].sort_values("lift", ascending=False, kind="stable")
        if len(over):
            better = over[(over["p_holm"] < alpha) & (over["lift"] > 0)]
            worse = over[(over["p_holm"] < alpha) & (over["lift"] < 0)]
            if len(better):
                out.append("- Significantly better than `oversample`: " + ", ".join(
                    f"`{r.method}` {_pts(r.lift)}" for r in better.itertuples()) + ".")
            else:
                top = over.iloc[0]
                out.append(f"- No method is significantly better than `oversample` (closest: `{top['method']}`, "
                           f"{_pts(top['lift'])} points, 95% CI [{_pts(top['low'])}, {_pts(top['high'])}]).")
            if len(worse):
                out.append("- Significantly worse than `oversample`: " + ", ".join(
                    f"`{r.method}` {_pts(r.lift)}" for r in worse.itertuples()) + ".")
        line = ranking_line(rankings.get(cls))
        if line:
            out.append(line)
        out.append("")
    return "\n".join(out) + "\n" if out else "No weak class with paired runs to compare.\n"
