"""The study's result tables, plots, significance table and verdict (the
report job): from the retraining runs' metrics and predictions, the FID, filter,
judge and adaptation files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import MODES
from .filtering import kept_mask
from .stats import group_label
from .util import TibalanceError, read_json, write_csv, write_markdown


def write_report(runs: list[str], fids: list[str], weak_json: str, summary_csv: str, summary_md: str,
           per_class_csv: str, per_class_md: str, acc_plot: str, fid_plot: str,
           ti_losses: list[str] | None = None, ti_metas: list[str] | None = None,
           filtered: list[str] | None = None, judges: list[str] | None = None,
           ablation: list[str] | None = None, ablation_csv: str | None = None,
           ablation_md: str | None = None, lora_losses: list[str] | None = None,
           lora_metas: list[str] | None = None, fid_min_images: int | None = None,
           classes: str | None = None, predictions: list[str] | None = None,
           significance_csv: str | None = None, significance_md: str | None = None,
           verdict_md: str | None = None, seed: int = 0, notes: list[str] | None = None,
           replicate_of_seed: dict[int, int] | None = None, group_thresholds: dict | None = None,
           neighbours: list[str] | None = None, long_tail: bool = False,
           lpips: list[str] | None = None, primary: list[str] | None = None) -> None:
    """The result tables. group_thresholds: metrics.groups (many, few: the
    training-image counts that make a class many- or few-shot). predictions: the retraining runs' per-image test
    predictions (beside each run's metrics.json): the paired intervals and tests
    (tibalance.stats) go into the summary (lift_<class>_low/_high, p_<class> vs
    baseline, p_over_<class> vs oversample, Holm-adjusted), the significance
    table and the verdict in words. replicate_of_seed: {retraining seed: the
    replicate of the adaptation it trained on} (the verdict's ranking line).
    long_tail (data.imbalance.type): the groups of classes (where more than one
    is populated) get their own rows in the significance table and verdict, as
    in any study with several weak classes; otherwise the summary shows the
    groups' accuracies only. lpips: results/lpips/<class>.json (metrics.lpips): the
    per-class table's lpips_<mode>. primary (verdict.primary): the declared
    methods, the verdict's confirmatory family (None: the adaptations among
    the study's methods)."""

    from .retrain import ablation_table, display_names, per_class_table, summary_table, to_markdown

    weak_info = read_json(weak_json)
    weak_classes = weak_info["classes"]
    notes = list(notes or []) + selection_notes(weak_info)
    run_rows = [read_json(p) for p in runs]
    fid_rows = {}
    for p in fids:
        d = read_json(p)
        fid_rows[d["class"]] = d["rows"]
    names = read_json(classes)["names"] if classes else {}
    groups = None
    if classes:
        from .retrain import GROUP_DEFAULTS, class_groups

        g = {**GROUP_DEFAULTS, **(group_thresholds or {})}
        counts = {c: int(v.get("train", 0)) for c, v in read_json(classes)["counts"].items()}
        groups = class_groups(counts, int(g["many"]), int(g["few"]))
    summary = summary_table(run_rows, weak_classes, groups)
    populated = {g: c for g, c in (groups or {}).items() if c}
    # groups of two or more classes (a group of one would repeat its class's rows and bars), where several are populated
    shown = {g: c for g, c in populated.items() if len(c) > 1} if len(populated) > 1 else {}
    tested = shown if (len(weak_classes) > 1 or long_tail) else {}  # the verdict's (descriptive) group rows
    comp = None
    if predictions:
        from .stats import comparisons

        by_dir = {str(Path(p).parent): p for p in predictions}
        preds = {}
        for p, r in zip(runs, run_rows):
            if str(Path(p).parent) not in by_dir:
                raise TibalanceError(f"{p}: no predictions.csv beside it (rerun the run)")
            preds[(r["method"], int(r["seed"]))] = pd.read_csv(by_dir[str(Path(p).parent)],
                                                               dtype={"path": str, "label": str, "pred": str})
        methods = [m for m in summary["method"]]
        comp = comparisons(preds, weak_classes, methods, seed=seed, replicate_of_seed=replicate_of_seed,
                           groups=tested, primary=primary, receives=receivers(run_rows, weak_classes))
        summary = _with_comparisons(summary, comp, weak_classes + [group_label(g) for g in tested])
    summary = display_names(summary, names)
    loss_rows, kept = _class_extras(ti_losses, ti_metas, lora_losses, lora_metas, neighbours, filtered, lpips)
    judge_rows = {j["class"]: j for j in (read_json(p) for p in judges or [])}
    per_class = display_names(
        per_class_table(run_rows, weak_classes, fid_rows, loss_rows, kept, judge_rows, fid_min_images), names)
    fid_rows = {names.get(c, c): rows for c, rows in fid_rows.items()}
    write_csv(summary, summary_csv)
    write_csv(per_class, per_class_csv)
    write_markdown(summary_md, to_markdown(summary) + "".join(f"\n{n}\n" for n in notes or []), "Summary per method")
    write_markdown(per_class_md, to_markdown(per_class), "Per weak class")
    _plots(per_class, fid_rows, acc_plot, fid_plot, run_rows, weak_classes, shown)
    if comp is not None and significance_csv:
        _write_significance(comp, names, tested, run_rows, weak_classes, kept, replicate_of_seed, notes,
                            significance_csv, significance_md, verdict_md)
    if ablation_csv:
        ab = display_names(ablation_table([read_json(p) for p in ablation or []], run_rows, weak_classes), names)
        write_csv(ab, ablation_csv)
        write_markdown(ablation_md, to_markdown(ab) if len(ab) else
                       "No ablation configured (config `ablation.methods` is empty).\n", "Ablation")


def _class_extras(ti_losses, ti_metas, lora_losses, lora_metas, neighbours, filtered, lpips=None):
    """The per-class table's columns from the adaptations', filters' and LPIPS jobs'
    files: each token's or adapter's loss at the start and end, its held-out loss,
    its nearest words, and per mode the kept/made counts and the kept images'
    diversity (feature space; LPIPS with metrics.lpips)."""
    loss_rows: dict[str, dict] = {}

    def class_and_prefix(p):
        """results/inversion/<cls>/… -> (cls, 'ti'); results/lora/<kind>/<cls>/… -> (cls, kind)."""
        return Path(p).parent.name, ("ti" if Path(p).parts[-3] == "inversion" else Path(p).parts[-3])

    for p in list(ti_losses or []) + list(lora_losses or []):
        cls, pre = class_and_prefix(p)
        loss = pd.read_csv(p)["loss"].to_numpy()
        k = max(1, len(loss) // 10)
        loss_rows.setdefault(cls, {}).update({f"{pre}_loss_first10pct": float(loss[:k].mean()),
                                              f"{pre}_loss_last10pct": float(loss[-k:].mean())})
    for p in list(ti_metas or []) + list(lora_metas or []):
        cls, pre = class_and_prefix(p)
        m = read_json(p)
        if m.get("eval_loss_start") is not None:
            loss_rows.setdefault(cls, {}).update(
                {f"{pre}_eval_loss_start": m["eval_loss_start"], f"{pre}_eval_loss_end": m["eval_loss_end"]})
    for p in neighbours or []:  # results/inversion/<cls>/neighbours.csv: each token's nearest words
        t = pd.read_csv(p, dtype={"word": str}, keep_default_na=False)
        t = t[(t["encoder"] == 0) & (t["vector"] == 0)]  # the first encoder's, the first vector's
        for name, grp in t.groupby("token", sort=False):
            loss_rows.setdefault(Path(p).parent.name, {})[f"{name}_nearest_words"] = ", ".join(
                f"{w} {c:.2f}" for w, c in zip(grp["word"], grp["cosine"]))
    kept: dict[str, dict[str, tuple[int, int]]] = {}
    for p in filtered or []:  # results/samples/<kind>/<cls>/filtered.csv
        kind, cls = Path(p).parts[-3], Path(p).parts[-2]
        t = pd.read_csv(p, dtype={"path": str})
        n_kept = int(kept_mask(t).sum()) if len(t) else 0
        kept.setdefault(cls, {})[kind] = (n_kept, len(t))
        meta = Path(p).with_name("filter.meta.json")  # the same job's sidecar: the kept images' diversity
        div = read_json(meta).get("diversity_kept") if meta.exists() else None
        if div is not None:
            loss_rows.setdefault(cls, {})[f"div_{kind}"] = div
    for p in lpips or []:  # results/lpips/<cls>.json: each mode's kept images' LPIPS diversity
        d = read_json(p)
        for r in d["rows"]:
            loss_rows.setdefault(d["class"], {})[f"lpips_{r['mode']}"] = r["lpips"]
    return loss_rows, kept


def _write_significance(comp, names, tested, run_rows, weak_classes, kept, replicate_of_seed, notes,
                        significance_csv, significance_md, verdict_md):
    """The significance table and the verdict in words; a group's rows named with its classes
    (the summary's columns keep the short label)."""
    from .retrain import display_names, to_markdown
    from .verdict import replicate_ranking, verdict

    names = {**names, **{group_label(g): f"{group_label(g)} group ({', '.join(names.get(c, c) for c in cs)})"
                         for g, cs in tested.items()}}
    shown = display_names(comp, names)
    write_csv(shown, significance_csv)
    write_markdown(significance_md, to_markdown(shown, pm_pairs=False), "Paired comparisons")
    rankings = {c: replicate_ranking(run_rows, c, {int(k): int(v) for k, v in (replicate_of_seed or {}).items()})
                for c in weak_classes if c in kept}  # the classes that got synthetic images

    listed = ["baseline", *comp["method"].unique()]  # baseline's count: what a method added
    counts = {c: {m: train_count(run_rows, m, c) for m in listed} for c in weak_classes}
    for g, cs in tested.items():  # a group's training images: its classes'
        counts[group_label(g)] = {m: float(sum(train_count(run_rows, m, c) for c in cs)) for m in listed}
    replicates = len(set((replicate_of_seed or {0: 0}).values()))
    write_markdown(verdict_md, verdict(comp, names, rankings=rankings, counts=counts, replicates=replicates)
                   + "".join(f"\n{n}\n" for n in notes or []), "Verdict")


def train_count(run_rows: list[dict], method: str, cls: str) -> float:
    """The class's training images in the method's runs (their mean; NaN without runs)."""
    v = [r["train_counts"].get(cls, 0) for r in run_rows if r["method"] == method]
    return float(np.mean(v)) if v else float("nan")


def receivers(run_rows: list[dict], weak: list[str]) -> dict[str, set[str]]:
    """{weak class: the methods tested on it}: every method on a class the
    study adds images to (some method's runs train on more of its images than
    `baseline`'s), none on a class it leaves as it is (a class already at its
    target). Decided by the class, not by a method's own count, so a declared
    method whose filter kept none of a class's images keeps its declared row
    (and shows no lift there)."""
    methods = {r["method"] for r in run_rows}
    return {c: methods if any(train_count(run_rows, m, c) > train_count(run_rows, "baseline", c) for m in methods)
            else set() for c in weak}


def selection_notes(weak_info: dict) -> list[str]:
    """The tables' warnings about how the weak classes were chosen (weak_info:
    weak_classes.json): chosen on the test split, every lift on them is
    measured on the images that picked them."""
    if weak_info.get("split") == "test":
        return ["**Weak classes chosen on the test split** (`analysis.split: test`): the classes were picked for "
                "doing badly on the very images their lifts are measured on, so those lifts are biased upward "
                "(regression to the mean). Choose them on `val` for a verdict."]
    return []


def _with_comparisons(summary: pd.DataFrame, comp: pd.DataFrame, weak: list[str]) -> pd.DataFrame:
    """The summary with, per weak class, the lift's interval (the decision's for
    a confirmatory row, else the unadjusted 95%) and the family's adjusted
    p-values against baseline (p_<cls>) and oversample (p_over_<cls>; empty
    for descriptive rows)."""
    out = summary.copy()
    for cls in weak:
        for ref, col in (("baseline", f"p_{cls}"), ("oversample", f"p_over_{cls}")):
            c = comp[(comp["class"] == cls) & (comp["reference"] == ref)].set_index("method")
            if ref == "baseline":
                out[f"lift_{cls}_low"] = out["method"].map(c["low"])
                out[f"lift_{cls}_high"] = out["method"].map(c["high"])
            out[col] = out["method"].map(c["p_adj"])
    return out


def _group_deltas(run_rows: list[dict], method: str, classes: list[str]) -> list[float]:
    """Per seed: the group's accuracy (its classes' mean) under `method` minus under `baseline`."""
    def acc(r):
        return float(np.mean([r["per_class_accuracy"][c] for c in classes]))

    base = {r["seed"]: acc(r) for r in run_rows if r["method"] == "baseline"}
    return [acc(r) - base[r["seed"]] for r in sorted(run_rows, key=lambda r: r["seed"])
            if r["method"] == method and r["seed"] in base]


def _plots(per_class: pd.DataFrame, fid_rows: dict, acc_plot: str, fid_plot: str,
           run_rows: list[dict] | None = None, weak: list[str] | None = None,
           groups: dict[str, list[str]] | None = None) -> None:
    """The accuracy plot: per weak class and method the mean paired lift over
    `baseline` with the std of the per-seed paired differences as its error bar
    (run_rows and weak give them, in per_class's row order), then per group of
    classes (groups: {group: its classes}, from run_rows) the same on the
    group's accuracy; the FID plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .retrain import paired_deltas

    methods = [c[4:-5] for c in per_class.columns if c.startswith("acc_") and c.endswith("_mean")]
    others = [m for m in methods if m != "baseline"]
    groups = {g: c for g, c in (groups or {}).items() if c} if run_rows else {}
    labels = list(per_class["class"]) + [group_label(g) for g in groups]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2) + 2.2, 3.5))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(others))
    palette = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")  # a colour per method, none repeated
    for i, meth in enumerate(others):
        delta = list(per_class[f"acc_{meth}_mean"] - per_class["acc_baseline_mean"])
        spread = ([np.std(d, ddof=1) if len(d := paired_deltas(run_rows or [], meth, c)) > 1 else 0.0
                   for c in (weak or [])] if weak and len(weak) == len(per_class) else [0.0] * len(per_class))
        for cs in groups.values():
            d = _group_deltas(run_rows, meth, cs)
            delta.append(float(np.mean(d)) if d else float("nan"))
            spread.append(float(np.std(d, ddof=1)) if len(d) > 1 else 0.0)
        ax.bar(x + (i - (len(others) - 1) / 2) * width, delta, width, yerr=spread, label=meth, color=palette(i))
    ax.axhline(0, color="black", lw=0.8)
    if groups:
        ax.axvline(len(per_class) - 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, labels)
    ax.set_ylabel("test accuracy − baseline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # beside the bars, never on them
    fig.tight_layout()
    fig.savefig(acc_plot, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for network in sorted({r["network"] for rows in fid_rows.values() for r in rows}):
        for kind in [m for m in MODES if m != "raw"]:
            pts = []
            for cls, rows in fid_rows.items():
                by = {r["method"]: r["fid"] for r in rows if r["network"] == network}
                if by.get("raw") is not None and by.get(kind) is not None:
                    pts.append((by["raw"], by[kind], cls))
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=f"{kind} ({network})")
            for raw, other, cls in pts:
                ax.annotate(cls, (raw, other), fontsize=8)
    lim = max(ax.get_xlim()[1], ax.get_ylim()[1]) if fid_rows else 1
    ax.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("FID raw SD")
    ax.set_ylabel("FID adapted generator (token, LoRA)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="mode (features)")
    fig.tight_layout()
    fig.savefig(fid_plot, dpi=100)
    plt.close(fig)
