"""Augmented retraining: the training set of each method, and the result tables."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .defaults import DEFERRED_METHODS, METHODS, MODES, YARDSTICK_METHODS, undeferred
from .util import TibalanceError, derive_seed

# the sampling mode whose images a method trains on
MODE_OF = {"raw_sd": "raw", **{m: m for m in MODES if m != "raw"}}
MODE_OF.update({f"oversample+{m}": k for m, k in list(MODE_OF.items())})
# real_oracle@<method>: the oracle cut to that method's kept count (it reads the mode's filtered tables)
MODE_OF.update({f"real_oracle@{m}": MODE_OF[m] for m in list(MODE_OF) if "+" not in m})
# deferred_<method>: the method's images, later
MODE_OF.update({m: MODE_OF[undeferred(m)] for m in DEFERRED_METHODS if undeferred(m) in MODE_OF})


# the methods that refill the weak classes with real images (repeated, or some
# of them noise) to the count sampling makes for them: their runs read that
# count (a param), not a sample table
REFILLED = ("oversample", "deferred_oversample", "noise_static")


def study_modes(methods) -> list[str]:
    """The sampling modes a study generates: none without a method that reads
    synthetic images; else raw and ti always (the grids, FID) and each other
    mode that is itself one of the study's methods."""
    if not any(m in MODE_OF for m in methods):
        return []
    return ["raw", "ti"] + [m for m in MODES if m not in ("raw", "ti") and m in methods]


def oracle_at(method: str) -> str | None:
    """The synthetic method whose kept count a real_oracle@<method> row takes (None for other rows)."""
    return method.split("@", 1)[1] if method.startswith("real_oracle@") else None


def build_training_set(train: pd.DataFrame, weak: list[str], method: str, synthetic: dict[str, list[str]],
                       mix: str = "add", seed: int = 0, balanced: dict[str, int] | None = None,
                       noise: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Rows path, label, classic (heavy augmentation), alternatives (synthetic
    paths that may replace this image, for mix 'replace'), added (a row beyond
    the real training images: what a deferred_<method> holds back until its
    deferral epoch).

    - baseline: the real training images;
    - oversample: each weak class's real images repeated (classic augmentation)
      up to real + balanced[cls] (the count sampling makes for the class);
    - real_oracle: each weak class's held-back real images (`synthetic` holds
      them: the oracle_images tables) added as real images are;
    - synthetic methods (raw_sd, ti, …) with mix 'add': the synthetic images added;
    - synthetic methods (raw_sd, ti, …) with mix 'replace': class counts unchanged; each real image of a
      weak class may be swapped for one of the class's synthetic images;
    - oversample+<method>: the oversample set up to real + balanced[cls] images
      (the mode's count before the filter, as oversample's), each of whose
      weak-class rows (real and repeated) may be swapped for one of the mode's kept
      synthetic images (whatever retrain.mix says; the rate is the trainer's replace_p);
    - noise_static (OPeN's old form, an ablation): the oversample set, its first
      len(noise[cls]) added images the class's pure-noise images instead of
      repeats (rebalance.noise_images);
    - noise (OPeN), reweight, drw, cmo, cmo_drw: the real training images (noised,
      weighted or mixed in the training loop);
    - deferred_<method>: <method>'s set."""
    if method not in METHODS:
        raise TibalanceError(f"retrain.methods: unknown method {method!r} ({', '.join(METHODS)})")
    method = undeferred(method)
    df = train[["path", "label"]].reset_index(drop=True).assign(classic=False, alternatives=None, added=False)
    if method in ("baseline", "noise", "reweight", "drw", "cmo", "cmo_drw"):
        return df
    extra = []
    for cls in weak:
        synth = list(synthetic.get(cls, []))
        real = df[df.label == cls]
        if method in ("oversample", "noise_static") or method.startswith("oversample+"):
            if real.empty:
                continue
            n = int((balanced or {}).get(cls, 0))
            rng = np.random.default_rng(derive_seed(seed, "oversample", cls))
            order = rng.permutation(len(real))
            reps = [real.path.iloc[order[i % len(real)]] for i in range(n)]
            alts = synth if method.startswith("oversample+") and synth else None
            if alts:
                _swappable(df, real.index, alts)
            pure = list((noise or {}).get(cls, []))[:n] if method == "noise_static" else []
            extra += [(p, cls, False, None, True) for p in pure]  # noise: no augmentation makes it more of itself
            extra += [(p, cls, True, alts, True) for p in reps[len(pure):]]
        elif method == "real_oracle" or mix == "add":
            extra += [(p, cls, False, None, True) for p in synth]
        elif mix == "replace":
            if synth:
                _swappable(df, real.index, synth)
        else:
            raise TibalanceError(f"retrain.mix: unknown mode {mix!r} (add, replace)")
    if extra:
        df = pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True)
    return df


def _swappable(df: pd.DataFrame, index, alts: list[str]) -> None:
    """The rows at `index` may each be swapped for one of `alts` (drawn by the trainer)."""
    df.loc[index, "alternatives"] = pd.Series([alts] * len(index), index=index, dtype=object)


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_deltas(runs: list[dict], method: str, cls: str) -> list[float]:
    """Per seed: the class's accuracy under `method` minus under `baseline` (seeds both have)."""
    base = {r["seed"]: r["per_class_accuracy"][cls] for r in runs if r["method"] == "baseline"}
    return [r["per_class_accuracy"][cls] - base[r["seed"]] for r in sorted(runs, key=lambda r: r["seed"])
            if r["method"] == method and r["seed"] in base]


GROUPS = ("many", "medium", "few")
GROUP_DEFAULTS = {"many": 100, "few": 20}  # the long-tail literature's: > 100 train images, 20-100, < 20


def class_groups(train_counts: dict[str, int], many: int = 100, few: int = 20) -> dict[str, list[str]]:
    """{group: its classes}: many-shot (more than `many` training images),
    few-shot (fewer than `few`), medium-shot the rest."""
    if few > many:
        raise TibalanceError(f"metrics.groups: few ({few}) is above many ({many})")
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for cls, n in train_counts.items():
        out["many" if n > many else "few" if n < few else "medium"].append(cls)
    return out


def summary_table(runs: list[dict], weak: list[str] | None = None,
                  groups: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Per method: test accuracy, macro-F1, the weak classes' mean accuracy and
    each weak class's accuracy (`acc_<class>`), mean ± std over seeds; and per
    weak class the paired difference to `baseline` over seeds (`delta_<class>`,
    mean ± std) with on how many seeds it was positive (`improved_<class>`);
    with a real_oracle row, each other row's mean lift as a share of the
    oracle's (`oracle_share_<class>`; empty where the oracle did not lift it),
    against real_oracle@<method> (the oracle at the row's own kept count) where
    the study ran it, else against real_oracle. groups (class_groups): where
    more than one is populated, each group's accuracy (`acc_<group>`, the mean
    of its classes' accuracies), mean ± std over seeds."""
    rows = []
    shown = {g: c for g, c in (groups or {}).items() if c}
    shown = shown if len(shown) > 1 else {}
    has_baseline = any(r["method"] == "baseline" for r in runs)
    for method in [m for m in METHODS if any(r["method"] == m for r in runs)]:
        rs = [r for r in runs if r["method"] == method]
        row = {"method": method, "seeds": len(rs)}
        for key in ("accuracy", "macro_f1", "weak_accuracy"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(r[key] for r in rs)
        for g, classes in shown.items():
            row[f"acc_{g}_mean"], row[f"acc_{g}_std"] = _mean_std(
                np.mean([r["per_class_accuracy"][c] for c in classes]) for r in rs)
        for cls in weak or []:
            row[f"acc_{cls}_mean"], row[f"acc_{cls}_std"] = _mean_std(r["per_class_accuracy"][cls] for r in rs)
        for cls in (weak or []) if has_baseline else []:
            d = paired_deltas(runs, method, cls) if method != "baseline" else []
            row[f"delta_{cls}_mean"], row[f"delta_{cls}_std"] = _mean_std(d) if d else (float("nan"), float("nan"))
            row[f"improved_{cls}"] = f"{sum(x > 0 for x in d)}/{len(d)}" if d else ""
        rows.append(row)
    # the share of the real-image oracle's lift a row reaches (where the oracle lifted the class)
    by = {r["method"]: r for r in rows}
    for cls in (weak or []) if "real_oracle" in by and has_baseline else []:
        for row in rows:
            if row["method"] in ("baseline", *YARDSTICK_METHODS):
                continue
            ref = by.get(f"real_oracle@{row['method']}", by["real_oracle"])[f"delta_{cls}_mean"]
            row[f"oracle_share_{cls}"] = row[f"delta_{cls}_mean"] / ref if ref > 0 else float("nan")
    return pd.DataFrame(rows)


def ablation_variants(counts: list[int]) -> list[str]:
    """Ablation cells besides the study's own (balanced count, filter on):
    every count x filter on/off, and the balanced count without the filter."""
    cells = [f"n{c}-{f}" for c in counts for f in ("filter", "nofilter")]
    return cells + ["balanced-nofilter"]


def parse_variant(name: str) -> dict:
    """'n100-nofilter' -> {"name": ..., "limit": 100, "filter": False}; 'balanced-filter' -> limit None."""
    count, filt = name.split("-")
    if filt not in ("filter", "nofilter") or not (count == "balanced" or count[1:].isdigit()):
        raise TibalanceError(f"ablation: unknown variant {name!r}")
    return {"name": name, "limit": None if count == "balanced" else int(count[1:]), "filter": filt == "filter"}


def ablation_table(runs: list[dict], main_runs: list[dict], weak: list[str]) -> pd.DataFrame:
    """Per method x synthetic count x filter: each weak class's test accuracy and
    its paired difference to the `baseline` run of the same seed (mean ± std over
    seeds, on how many it improved). The study's own cell (balanced, filter on)
    comes from the main runs, over the ablation's seeds."""
    seeds = sorted({r["seed"] for r in runs})
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["method"], r["variant"]["name"]), []).append(r)
    for method in sorted({r["method"] for r in runs}):
        main = [r for r in main_runs if r["method"] == method and r["seed"] in seeds]
        if main:
            cells[(method, "balanced-filter")] = main
    base = [r for r in main_runs if r["method"] == "baseline"]
    rows = []
    for (method, name), rs in sorted(cells.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        v = parse_variant(name)
        row = {"method": method, "synthetic": "balanced" if v["limit"] is None else str(v["limit"]),
               "filter": "on" if v["filter"] else "off", "seeds": len(rs)}
        for cls in weak:
            row[f"acc_{cls}_mean"], row[f"acc_{cls}_std"] = _mean_std(r["per_class_accuracy"][cls] for r in rs)
            d = paired_deltas(base + rs, method, cls)
            row[f"delta_{cls}_mean"], row[f"delta_{cls}_std"] = _mean_std(d) if d else (float("nan"), float("nan"))
            row[f"improved_{cls}"] = f"{sum(x > 0 for x in d)}/{len(d)}" if d else ""
            row[f"n_{cls}"] = rs[0]["train_counts"].get(cls, 0)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def per_class_table(runs: list[dict], weak: list[str], fid: dict[str, list[dict]],
                    ti_loss: dict[str, dict[str, float]] | None = None,
                    kept: dict[str, dict[str, tuple[int, int]]] | None = None,
                    judge: dict[str, dict] | None = None, fid_min_images: int | None = None) -> pd.DataFrame:
    """Per weak class: accuracy of every method (mean/std over seeds); per
    sampling mode the number of synthetic images, the filter's kept share, the
    judge's class-fidelity share (all images / kept ones, and where the rest
    went) and FID/KID; and the TI loss: training loss over the first and last
    10% of its steps, and the fixed-batch denoising loss before and after.

    FID/KID from fewer than fid_min_images images on either side carry the
    mark ' (few)' (and are then strings): not comparable with full-size sets."""
    rows = []
    for cls in weak:
        row = {"class": cls}
        for method in [m for m in METHODS if any(r["method"] == m for r in runs)]:
            row[f"acc_{method}_mean"], row[f"acc_{method}_std"] = _mean_std(
                r["per_class_accuracy"][cls] for r in runs if r["method"] == method)
        kinds = sorted({k for k in (kept or {}).get(cls, {})} | {f["method"] for f in fid.get(cls, [])},
                       key=lambda k: MODES.index(k) if k in MODES else 9)
        j = (judge or {}).get(cls)
        if j is not None:
            row["judge_real_val"] = _fmt(j["real_val"]["share"])
        for kind in kinds:
            if kept and kind in kept.get(cls, {}):
                n_kept, n = kept[cls][kind]
                row[f"n_{kind}"] = n
                row[f"kept_{kind}"] = f"{n_kept}/{n}" + (f" ({n_kept / n:.2f})" if n else " (0 images)")
            if j is not None and kind in j:
                jk = j[kind]
                row[f"judge_{kind}"] = _fmt(jk["share"]) if jk["n"] else "(0 images)"
                row[f"judge_{kind}_kept"] = _fmt(jk["share_kept"]) if jk.get("n_kept") else ""
                row[f"judge_{kind}_others"] = ", ".join(f"{c} {v:.2f}" for c, v in jk["others"].items())
        for f in fid.get(cls, []):
            pre = f"{f['method']}_{f['network']}"
            if f["fid"] is None:
                row[f"fid_{pre}"] = row[f"kid_{pre}"] = "n/a"
            elif fid_min_images and min(f["n_fake"], f["n_real"]) < fid_min_images:
                row[f"fid_{pre}"], row[f"kid_{pre}"] = f"{_fmt(f['fid'])} (few)", f"{_fmt(f['kid_mean'])} (few)"
            else:
                row[f"fid_{pre}"], row[f"kid_{pre}"] = f["fid"], f["kid_mean"]
            row[f"n_{pre}"] = f"{f['n_fake']} vs {f['n_real']}"
        if ti_loss and cls in ti_loss:
            row.update(ti_loss[cls])
        rows.append(row)
    # a class at its target got 0 images: no token, adapter, sampling, filter,
    # judge or FID job ran for it, and its cells say so
    empty = [row for row, cls in zip(rows, weak) if not (kept or {}).get(cls) and not fid.get(cls)
             and not (judge or {}).get(cls) and not (ti_loss or {}).get(cls)]
    columns = list(dict.fromkeys(c for row in rows if not any(row is e for e in empty) for c in row))
    for row in empty:
        for col in columns:
            if col in row:
                continue
            m = re.fullmatch(r"(n|kept|judge|fid|kid)_(.+)", col)
            if m and m[2] in MODES:
                row[col] = {"n": 0, "kept": "0/0 (0 images)", "judge": "(0 images)"}.get(m[1], "")
            elif m and m[1] == "judge" and col != "judge_real_val":  # judge_<mode>_kept, _others
                row[col] = ""
            elif m and m[1] != "judge":  # fid_ / kid_ / n_<mode>_<network>
                row[col] = "0 images" if m[1] == "n" else "n/a"
            else:  # judge_real_val, the TI / LoRA loss columns
                row[col] = "n/a (0 images)"
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [c for row in rows for c in row])))


def display_names(df: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """The table with classes named as the dataset spells them (names: slug ->
    display name): the values of its `class` and `most_often` columns, the
    columns built from a slug (acc_<slug>_mean, delta_<slug>_std,
    improved_<slug>, n_<slug>) and the '<slug> 0.12, …' lists of *_others."""
    import re

    def name(v):
        return names.get(v, v) if isinstance(v, str) else v

    def others(v):
        if not isinstance(v, str) or not v:
            return v
        return ", ".join(f"{name(s)} {share}" for s, share in (item.rsplit(" ", 1) for item in v.split(", ")))

    def column(c):
        m = re.fullmatch(r"(acc|delta|improved|n|lift|p_over|p|oracle_share)_(.+?)(_mean|_std|_low|_high)?", c)
        return f"{m[1]}_{names[m[2]]}{m[3] or ''}" if m and m[2] in names else c

    out = df.copy()
    for c in ("class", "most_often"):
        if c in out.columns:
            out[c] = out[c].map(name)
    for c in [c for c in out.columns if c.endswith("_others")]:
        out[c] = out[c].map(others)
    return out.rename(columns=column)


def to_markdown(df: pd.DataFrame, pm_pairs: bool = True) -> str:
    """Markdown table; *_mean/*_std column pairs become one 'mean ± std' column."""
    cols, out = list(df.columns), {}
    for c in cols:
        if c.endswith("_std") and pm_pairs and c[:-4] + "_mean" in cols:
            continue
        if c.endswith("_mean") and pm_pairs and c[:-5] + "_std" in cols:
            out[c[:-5]] = ["" if np.isnan(m) else f"{m:.4f} ± {s:.4f}" for m, s in zip(df[c], df[c[:-5] + "_std"])]
        else:
            out[c] = [_fmt(v) if isinstance(v, float) else ("" if v is None else str(v)) for v in df[c]]
    keys = list(out)
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    for i in range(len(df)):
        lines.append("| " + " | ".join(out[k][i] for k in keys) + " |")
    return "\n".join(lines) + "\n"
