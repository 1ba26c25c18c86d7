"""Augmented retraining: the training set of each method, and the result tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .util import TibalanceError, derive_seed

METHODS = ("baseline", "oversample", "raw_sd", "ti")


def build_training_set(train: pd.DataFrame, weak: list[str], method: str, synthetic: dict[str, list[str]],
                       mix: str = "add", seed: int = 0) -> pd.DataFrame:
    """Rows path, label, classic (heavy augmentation), alternatives (synthetic
    paths that may replace this image, for mix 'replace').

    - baseline: the real training images;
    - oversample: each weak class's real images repeated (classic augmentation)
      up to real + as many images as its synthetic set holds;
    - raw_sd / ti with mix 'add': the synthetic images added;
    - raw_sd / ti with mix 'replace': class counts unchanged; each real image of a
      weak class may be swapped for one of the class's synthetic images."""
    if method not in METHODS:
        raise TibalanceError(f"retrain.methods: unknown method {method!r} ({', '.join(METHODS)})")
    df = train[["path", "label"]].reset_index(drop=True).assign(classic=False, alternatives=None)
    if method == "baseline":
        return df
    extra = []
    for cls in weak:
        synth = list(synthetic.get(cls, []))
        real = df[df.label == cls]
        if method == "oversample":
            if real.empty:
                continue
            rng = np.random.default_rng(derive_seed(seed, "oversample", cls))
            order = rng.permutation(len(real))
            reps = [real.path.iloc[order[i % len(real)]] for i in range(len(synth))]
            extra += [(p, cls, True, None) for p in reps]
        elif mix == "add":
            extra += [(p, cls, False, None) for p in synth]
        elif mix == "replace":
            if synth:
                df.loc[real.index, "alternatives"] = pd.Series([synth] * len(real), index=real.index, dtype=object)
        else:
            raise TibalanceError(f"retrain.mix: unknown mode {mix!r} (add, replace)")
    if extra:
        df = pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True)
    return df


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary_table(runs: list[dict], weak: list[str] | None = None) -> pd.DataFrame:
    """Per method: test accuracy, macro-F1, the weak classes' mean accuracy and
    each weak class's accuracy (`acc_<class>`), mean ± std over seeds."""
    rows = []
    for method in [m for m in METHODS if any(r["method"] == m for r in runs)]:
        rs = [r for r in runs if r["method"] == method]
        row = {"method": method, "seeds": len(rs)}
        for key in ("accuracy", "macro_f1", "weak_accuracy"):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(r[key] for r in rs)
        for cls in weak or []:
            row[f"acc_{cls}_mean"], row[f"acc_{cls}_std"] = _mean_std(r["per_class_accuracy"][cls] for r in rs)
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_table(runs: list[dict], weak: list[str], fid: dict[str, list[dict]],
                    ti_loss: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """Per weak class: accuracy of every method (mean/std over seeds), FID/KID of
    raw and ti images, and the TI loss: training loss over the first and last 10%
    of its steps, and the fixed-batch denoising loss before and after."""
    rows = []
    for cls in weak:
        row = {"class": cls}
        for method in [m for m in METHODS if any(r["method"] == m for r in runs)]:
            row[f"acc_{method}_mean"], row[f"acc_{method}_std"] = _mean_std(
                r["per_class_accuracy"][cls] for r in runs if r["method"] == method)
        for f in fid.get(cls, []):
            pre = f"{f['method']}_{f['network']}"
            row[f"fid_{pre}"], row[f"kid_{pre}"] = f["fid"], f["kid_mean"]
            row[f"n_{pre}"] = f"{f['n_fake']} vs {f['n_real']}"
        if ti_loss and cls in ti_loss:
            row.update(ti_loss[cls])
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, pm_pairs: bool = True) -> str:
    """Markdown table; *_mean/*_std column pairs become one 'mean ± std' column."""
    cols, out = list(df.columns), {}
    for c in cols:
        if c.endswith("_std") and pm_pairs and c[:-4] + "_mean" in cols:
            continue
        if c.endswith("_mean") and pm_pairs and c[:-5] + "_std" in cols:
            out[c[:-5]] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(df[c], df[c[:-5] + "_std"])]
        else:
            out[c] = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in df[c]]
    keys = list(out)
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    for i in range(len(df)):
        lines.append("| " + " | ".join(out[k][i] for k in keys) + " |")
    return "\n".join(lines) + "\n"
