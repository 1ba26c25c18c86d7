"""Simulated studies for calibrating the verdict's "significant" (tibalance.stats).

A study here is what `stats.comparisons` reads: per method and retraining seed,
one trained model's correctness on a weak class's test images, in the design
the workflow runs. Each image has a difficulty every model shares; each
trained model has its own tilt (its SGD path: a normal shift on the logit
scale, sd `run_sd`); a method that reads an adaptation (stats.reads_adaptation)
adds its replicate's tilt (sd `replicate_sd`), read by the seeds that train on
that replicate (seed k on replicate k mod R) and shared across those methods
with correlation `replicate_corr` (one replicate's seed images and token feed
every adaptation); `lift` shifts a method's logit. A method with the same lift
as a reference is a true null against it (partial nulls: some methods lift,
others do not), so every "significant" on such a row is a false positive.
The image-level test (`p_images`) is counted beside it: it treats the images
as the only randomness and so calls the per-run spread significant.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import ALPHA, CONFIRMATORY, comparisons, reads_adaptation


def _replicate_effects(rng: np.random.Generator, method: str, shared: np.ndarray, sd: float,
                       corr: float) -> np.ndarray:
    """A method's effect per replicate: sd x (sqrt(corr) x the replicate's
    part shared by every adaptation + sqrt(1 - corr) x its own); zero for a
    method that reads no adaptation (its own part is drawn all the same, so
    every method consumes the generator alike)."""
    own = rng.normal(0.0, 1.0, size=len(shared))
    if not reads_adaptation(method):
        return np.zeros(len(shared))
    return sd * (np.sqrt(corr) * shared + np.sqrt(1 - corr) * own)


def simulate_study(rng: np.random.Generator, seeds: int, images: int = 200, methods=("baseline", "ti"),
                   lift: dict[str, float] | None = None, run_sd: float = 0.35, difficulty_sd: float = 1.5,
                   level: float = 0.0, replicates: int = 1, replicate_sd: float = 0.0,
                   replicate_corr: float = 0.0, classes: tuple[str, ...] = ("weak",)) -> tuple[dict, dict]:
    """One study: ({(method, seed): predictions (path, label, pred)},
    {seed: replicate}). lift: {method: logit shift on every class}; seed k reads
    replicate k mod `replicates` (as the workflow's retraining does). classes:
    each with `images` test images of its own difficulties; a run's tilt is
    shared by its classes (one SGD path)."""
    lift = lift or {}
    difficulty = {c: rng.normal(level, difficulty_sd, size=images) for c in classes}
    paths = {c: np.array([f"{c}/{i:04d}.png" for i in range(images)]) for c in classes}
    r = max(1, replicates)
    rep_of = {s: s % r for s in range(seeds)}
    shared = rng.normal(0.0, 1.0, size=r)  # each replicate's part common to every adaptation
    runs = {}
    for method in methods:
        rep_tilt = _replicate_effects(rng, method, shared, replicate_sd, replicate_corr)
        for s in range(seeds):
            tilt = rng.normal(0.0, run_sd) + rep_tilt[rep_of[s]]
            parts = []
            for c in classes:
                p = 1.0 / (1.0 + np.exp(-(difficulty[c] + tilt + lift.get(method, 0.0))))
                ok = rng.random(images) < p
                parts.append(pd.DataFrame({"path": paths[c], "label": c, "pred": np.where(ok, c, "other")}))
            runs[(method, s)] = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return runs, rep_of


def gaussian_study(rng: np.random.Generator, seeds: int, replicates: int | None = None, images: int = 2000,
                   methods=("baseline", "oversample", "ti"), lift: dict[str, float] | None = None,
                   accuracy: float = 0.3, run_sd: float = 0.02, replicate_sd: float = 0.02,
                   replicate_corr: float = 0.0) -> tuple[dict, dict]:
    """A study whose spreads are known on the accuracy scale (the planner's
    model, tibalance.plan): a run's accuracy on the class is `accuracy` + the
    method's `lift` + its replicate's effect (methods reading an adaptation;
    sd `replicate_sd`, correlation `replicate_corr` across them) + its own
    (sd `run_sd`), realised as that share of the `images` test images right.
    A method's lift over `baseline` then has, per seed, variance
    replicate_sd^2 + 2 run_sd^2. Seed k reads replicate k mod R (replicates:
    R, None: one per seed)."""
    lift = lift or {}
    replicates = replicates or seeds
    rep_of = {s: s % replicates for s in range(seeds)}
    paths = np.array([f"weak/{i:05d}.png" for i in range(images)])
    shared = rng.normal(0.0, 1.0, size=replicates)
    runs = {}
    for method in methods:
        rep = _replicate_effects(rng, method, shared, replicate_sd, replicate_corr)
        for s in range(seeds):
            acc = accuracy + lift.get(method, 0.0) + rep[rep_of[s]] + rng.normal(0.0, run_sd)
            right = int(round(min(1.0, max(0.0, acc)) * images))
            runs[(method, s)] = pd.DataFrame({"path": paths, "label": "weak",
                                              "pred": np.where(np.arange(images) < right, "weak", "other")})
    return runs, rep_of


def rates(studies: int, seeds: int, seed: int = 0, alpha: float = ALPHA,
          groups: dict[str, list[str]] | None = None, primary: list[str] | None = None, **kw) -> dict:
    """Over `studies` simulated studies: the family-wise error (`fwer`: the
    share with a significant confirmatory row whose null is true: a method's
    lift equal to the reference's), the share with any significant row
    (`significant`), per method the share significant vs `baseline` (`power`
    where it has a lift) and vs `oversample` (`power_over`) with its mean
    observed lift (`lift`, accuracy), and the image-level test's share of rows
    under alpha (`images`). primary: the declared family (None: comparisons'
    default). groups: {group: classes of kw's `classes`}: descriptive rows.
    simulate (in kw): simulate_study (default) or gaussian_study, called as
    simulate(rng, seeds, **kw)."""
    rng = np.random.default_rng(seed)
    simulate = kw.pop("simulate", simulate_study)
    methods = kw.get("methods", ("baseline", "ti"))
    lift = kw.get("lift") or {}
    any_sig, fwer, img, rows = 0, 0, 0, 0
    per_method = {m: 0 for m in methods if m != "baseline"}
    over = dict(per_method)
    lifts = {m: [] for m in per_method}
    for _ in range(studies):
        runs, rep_of = simulate(rng, seeds, **kw)
        comp = comparisons(runs, list(kw.get("classes", ("weak",))), list(methods), alpha=alpha,
                           replicate_of_seed=rep_of, groups=groups, primary=primary)
        any_sig += bool(comp["significant"].any())
        conf = comp[comp["role"] == CONFIRMATORY]
        true_null = [lift.get(m, 0.0) == lift.get(ref, 0.0) for m, ref in zip(conf["method"], conf["reference"])]
        fwer += bool((conf["significant"] & np.array(true_null, dtype=bool)).any())
        for m in per_method:
            row = comp[(comp["method"] == m) & (comp["reference"] == "baseline")]
            per_method[m] += bool(row["significant"].any())
            over[m] += bool(comp[(comp["method"] == m) & (comp["reference"] == "oversample")]["significant"].any())
            lifts[m] += list(row["lift"])
        img += int((comp["p_images"] < alpha).sum())
        rows += int(comp["p_images"].notna().sum())
    return {"studies": studies, "seeds": seeds, "significant": any_sig / studies, "fwer": fwer / studies,
            "power": {m: v / studies for m, v in per_method.items()},
            "power_over": {m: v / studies for m, v in over.items()}, "images": img / max(1, rows),
            "lift": {m: float(np.mean(v)) for m, v in lifts.items()}}


def mc_error(rate: float, studies: int) -> float:
    """The Monte-Carlo standard error of a rate estimated from `studies` draws."""
    return float(np.sqrt(rate * (1 - rate) / studies))
