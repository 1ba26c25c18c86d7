"""The verdict in words: the declared family's decisions per weak class, then
the descriptive rows (labelled so), and whether the adaptations' ranking holds
replicate by replicate."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .defaults import SYNTHETIC_METHODS
from .stats import ADAPTATIONS, ALPHA, CONFIRMATORY, DESCRIPTIVE, YARDSTICKS, is_group


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
    if not np.isfinite(r["level"]) or not np.isfinite(r["low"]):
        return "no interval"
    return f"{r['level']:.4g} CI [{_pts(r['low'])}, {_pts(r['high'])}]"


def _listed(rows: pd.DataFrame) -> str:
    """Rows with their intervals; a row whose units all agree has no t interval (the sign-flip's spans the
    attainable range), so it says so instead."""
    return ", ".join(f"`{r.method}` {_pts(r.lift)} " + ("(every unit the same)" if r.se == 0 else
                                                      f"[{_pts(r.low)}, {_pts(r.high)}]") for r in rows.itertuples())


def _decision(r) -> str:
    """One confirmatory row in words."""
    if r is None:
        return "not run"
    if not np.isfinite(r["level"]):
        return (f"{_pts(r['lift'])} points, not tested (no alpha reached it: its test against `baseline` did not "
                f"reject)")
    above, below = (("**lifted**", "**lowered**") if r["reference"] == "baseline"
                    else ("**above** it", "**below** it"))
    verb = f"{above} (significant)" if r["significant"] and r["lift"] > 0 else (
        f"{below} (significant)" if r["significant"] else "not significant")
    return f"{_pts(r['lift'])} points, {_ci(r)}, adjusted p = {r['p_adj']:.3g}: {verb}"


def _confirmatory(grp: pd.DataFrame, alpha: float, k: int) -> list[str]:
    """The declared family's rows on one class, each method against both
    references, and the class's MDE (k: the family's tests against `baseline`)."""
    conf = grp[grp["role"] == CONFIRMATORY]
    out = []
    for method, rows in conf.groupby("method", sort=False):
        by = {r["reference"]: r for _, r in rows.iterrows()}
        out.append(f"- `{method}`: vs `baseline` {_decision(by.get('baseline'))}; vs `oversample` "
                   f"{_decision(by.get('oversample'))}.")
    mdes = []
    for ref in ("baseline", "oversample"):
        r = conf[conf["reference"] == ref]
        if len(r) and np.isfinite(r["mde"].iloc[0]):
            mdes.append(f"{100 * r['mde'].iloc[0]:.1f} points over `{ref}`")
    if mdes:
        units = int(conf["units"].median())
        out.append(f"- Minimum detectable effect (80% power, {units} units, the declared rows' own spread between "
                   f"units, at the first step's level {alpha:g}/{k}): " + ", ".join(mdes) + ".")
    return out


def _descriptive(grp: pd.DataFrame, cls: str, n: dict, ranking: dict | None) -> list[str]:
    """The rows outside the family, labelled as such: the best method, the yardstick, the oracle share, the ranking."""
    out = []
    base = grp[grp["reference"] == "baseline"].sort_values("lift", ascending=False, kind="stable")
    methods = base[~base["method"].isin(YARDSTICKS)]
    if len(methods):
        best = methods.iloc[0]
        tied = [m for m, v in zip(methods["method"], methods["lift"])
                if np.isclose(v, best["lift"], rtol=0, atol=1e-12)]
        head = (f"- Highest lift (tied): {', '.join(f'`{t}`' for t in tied)}, " if len(tied) > 1
                else f"- Highest lift: `{best['method']}`, ")
        out.append(head + f"{_pts(best['lift'])} points over `baseline` ({_ci(best)}"
                   + (", confirmatory above" if best["role"] == CONFIRMATORY else ", descriptive") + ").")
    desc = base[(base["role"] == DESCRIPTIVE) & ~base["method"].isin(YARDSTICKS) & base["p"].notna()]
    desc = desc[desc["method"] != (methods.iloc[0]["method"] if len(methods) else None)]  # the highest: above
    if len(desc):
        out.append("- Other methods vs `baseline` (descriptive, unadjusted 95% intervals): " + _listed(desc) + ".")
    untested = base[base["p"].isna()]
    if len(untested):
        out.append("- No spread to judge by (a single unit): "
                   + ", ".join(f"`{r.method}` {_pts(r.lift)}" for r in untested.itertuples()) + ".")
    by = {r["method"]: r for _, r in base.iterrows()}
    unit = "group" if is_group(cls) else "class"
    if "real_oracle" in by:
        o = by["real_oracle"]
        same = n.get("real_oracle") is not None and n.get("real_oracle") == n.get("baseline")
        added = f", none added to the {unit}" if same else ""  # a class at its target: the oracle adds nothing there
        out.append(f"- Real-image yardstick (`real_oracle`, {n.get('real_oracle', float('nan')):.0f} real training "
                   f"images of the {unit}{added}; descriptive): {_pts(o['lift'])} points ({_ci(o)}).")
    gen = base[base["method"].isin(SYNTHETIC_METHODS)]
    if len(gen) and any(m in by for m in YARDSTICKS):
        g = gen.iloc[0]
        at = by.get(f"real_oracle@{g['method']}")
        o = at if at is not None else by.get("real_oracle")
        if o is not None and o["lift"] > 0:
            equal = "at equal counts" if at is not None else "at unequal counts"
            out.append(f"- The best generative row, `{g['method']}` ({n.get(g['method'], float('nan')):.0f} "
                       f"training images of the {unit}), reaches {g['lift'] / o['lift']:.0%} of `{o['method']}` "
                       f"({n.get(o['method'], float('nan')):.0f} real ones, {_pts(o['lift'])} points): {equal}.")
    line = ranking_line(ranking)
    if line:
        out.append(line)
    return out


def verdict(comp: pd.DataFrame, names: dict[str, str] | None = None, alpha: float = ALPHA,
            rankings: dict[str, dict | None] | None = None,
            counts: dict[str, dict[str, float]] | None = None, replicates: int | None = None) -> str:
    """The comparisons in words, per weak class (and group of classes): first
    the declared family (each declared method against `baseline` and
    `oversample`: lifted or not, its decision's interval, the minimum
    detectable effect), then the descriptive rows, labelled so (the highest
    lift, the other methods, the yardstick and the share of it the best
    generative row reaches, and with rankings (replicate_ranking per class)
    whether the adaptations' order holds in every replicate). A yardstick is
    never a method that beats anything. counts: {class: {method: the class's
    training images in its runs}}. replicates: the study's R; with one, the
    verdict says its decisions are about the one adaptation made."""
    names = names or {}
    rankings = rankings or {}
    counts = counts or {}
    conf_all = comp[comp["role"] == CONFIRMATORY]
    k = int((conf_all["reference"] == "baseline").sum())
    declared = list(dict.fromkeys(conf_all["method"]))
    out = []
    if k:
        out.append(f"The confirmatory family, declared before the run (`verdict.primary`): "
                   f"{', '.join(f'`{m}`' for m in declared)} on each weak class the study adds images to, against "
                   f"`baseline` and `oversample`: {len(conf_all)} hypotheses, family-wise error {alpha:.0%} "
                   f"(graphical procedure: {alpha:g}/{k} on each test against `baseline`, passed on rejection to the "
                   f"same method's test against `oversample`, then to the other methods). Each decision's interval "
                   f"is at the row's own final level, so it excludes 0 exactly when the row is significant; the "
                   f"intervals are not simultaneous. Every other row is descriptive: an unadjusted 95% interval, "
                   f"never called significant.\n")
        if replicates == 1:
            out.append("**One replicate of the adaptation**: every run reads the same seed images, token and "
                       "adapters, so the units vary the retraining only and each decision is about the one "
                       "adaptation made, not the method (`replicates: seeds` makes every run its own replicate; "
                       "`make verdict` does).\n")
    else:
        out.append("No confirmatory family (no declared method adds images of a weak class): every row below is "
                   "descriptive, an unadjusted 95% interval, never called significant.\n")
    for cls, grp in comp.groupby("class", sort=False):
        base = grp[grp["reference"] == "baseline"]
        if base.empty:
            continue
        seeds, units, images = int(base["seeds"].max()), int(base["units"].min()), int(base["images"].max())
        whose = (f"group's {images} test images (its accuracy: the mean of its classes')" if is_group(cls)
                 else f"class's {images} test images")
        unit_word = "run" if units == seeds else "replicate of the adaptation (its seeds averaged) for rows with synthetic images"
        out.append(f"### {names.get(cls, cls)}\n")
        out.append(f"Paired over {seeds} retraining seed(s) on the {whose}; the unit is the {unit_word}, a t-test "
                   f"over the per-unit lifts.\n")
        conf = grp[grp["role"] == CONFIRMATORY]
        if len(conf):
            out.append("**Confirmatory**\n")
            out += _confirmatory(conf, alpha, k)
            out.append("")
            out.append("**Descriptive**\n")
        else:
            out.append("No declared method adds images here: every row is **descriptive**.\n")
        out += _descriptive(grp, cls, counts.get(cls, {}), rankings.get(cls))
        if images < 20 and not is_group(cls):
            out.append(f"- **Too few test images**: {images}, so one image is {100 / images:.1f} points; no lift "
                       f"the study is about can be separated from chance on this class.")
        out.append("")
    return "\n".join(out) + "\n" if len(out) > 1 else "No weak class with paired runs to compare.\n"
