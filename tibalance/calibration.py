"""Simulated studies for calibrating the verdict's "significant" (tibalance.stats).

A study here is what `stats.comparisons` reads: per method and retraining seed,
one trained model's correctness on a weak class's test images. Each image has
a difficulty every model shares; each trained model has its own tilt (its SGD
path: a normal shift on the logit scale, sd `run_sd`); a method that reads an
adaptation adds its replicate's tilt (sd `replicate_sd`, shared by the seeds
that read that replicate); `lift` shifts one method's logit. With lift 0 the
methods are exchangeable, so every "significant" the verdict says is a false
positive. The image-level test (`p_images`) is counted beside it: it treats the
images as the only randomness and so calls the per-run spread significant.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import ALPHA, comparisons


def simulate_study(rng: np.random.Generator, seeds: int, images: int = 200, methods=("baseline", "ti"),
                   lift: dict[str, float] | None = None, run_sd: float = 0.35, difficulty_sd: float = 1.5,
                   level: float = 0.0, replicates: int = 1, replicate_sd: float = 0.0,
                   classes: tuple[str, ...] = ("weak",)) -> tuple[dict, dict]:
    """One study: ({(method, seed): predictions (path, label, pred)},
    {seed: replicate}). lift: {method: logit shift on every class}; seed k reads
    replicate k mod `replicates` (as the workflow's retraining does). classes:
    each with `images` test images of its own difficulties; a run's tilt is
    shared by its classes (one SGD path)."""
    lift = lift or {}
    difficulty = {c: rng.normal(level, difficulty_sd, size=images) for c in classes}
    paths = {c: np.array([f"{c}/{i:04d}.png" for i in range(images)]) for c in classes}
    rep_of = {s: s % max(1, replicates) for s in range(seeds)}
    runs = {}
    for method in methods:
        rep_tilt = rng.normal(0.0, replicate_sd, size=max(1, replicates)) if method != "baseline" else None
        for s in range(seeds):
            tilt = rng.normal(0.0, run_sd) + (rep_tilt[rep_of[s]] if rep_tilt is not None else 0.0)
            parts = []
            for c in classes:
                p = 1.0 / (1.0 + np.exp(-(difficulty[c] + tilt + lift.get(method, 0.0))))
                ok = rng.random(images) < p
                parts.append(pd.DataFrame({"path": paths[c], "label": c, "pred": np.where(ok, c, "other")}))
            runs[(method, s)] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return runs, rep_of


def rates(studies: int, seeds: int, seed: int = 0, alpha: float = ALPHA,
          groups: dict[str, list[str]] | None = None, **kw) -> dict:
    """Over `studies` simulated studies: the share with any row the verdict
    calls significant (`significant`: its family-wise rate; with every lift 0,
    the false-positive rate), the share with a significant row per method vs
    `baseline` (power where that method has a lift) with its mean observed
    lift (`lift`, accuracy), and the image-level test's share of rows under
    alpha (`images`). groups: {group: classes of kw's `classes`}: the
    comparisons' group rows join the family."""
    rng = np.random.default_rng(seed)
    methods = kw.get("methods", ("baseline", "ti"))
    any_sig, per_method, img = 0, {m: 0 for m in methods if m != "baseline"}, 0
    rows, lifts = 0, {m: [] for m in per_method}
    for _ in range(studies):
        runs, rep_of = simulate_study(rng, seeds, **kw)
        comp = comparisons(runs, list(kw.get("classes", ("weak",))), list(methods), alpha=alpha,
                           replicate_of_seed=rep_of if kw.get("replicates", 1) > 1 else None, groups=groups)
        any_sig += bool(comp["significant"].any())
        for m in per_method:
            row = comp[(comp["method"] == m) & (comp["reference"] == "baseline")]
            per_method[m] += bool(row["significant"].any())
            lifts[m] += list(row["lift"])
        img += int((comp["p_images"] < alpha).sum())
        rows += int(comp["p_images"].notna().sum())
    return {"studies": studies, "seeds": seeds, "significant": any_sig / studies,
            "power": {m: v / studies for m, v in per_method.items()}, "images": img / max(1, rows),
            "lift": {m: float(np.mean(v)) for m, v in lifts.items()}}


def mc_error(rate: float, studies: int) -> float:
    """The Monte-Carlo standard error of a rate estimated from `studies` draws."""
    return float(np.sqrt(rate * (1 - rate) / studies))
