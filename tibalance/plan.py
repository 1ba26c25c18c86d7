"""The planner: how many replicates of the adaptation, and retraining seeds per
replicate, a study needs to detect a target lift with 80% power under its
declared family, and what that design costs.

    python -m tibalance.plan --configfile config/demo.yaml [more.yaml ...] [--results results]
    make plan    # on make verdict's study

It reads a finished study (a pilot): its retraining runs' metrics, its weak
classes and its cost table (results/tables/cost.csv). For each declared
method (verdict.primary) and each weak class it adds images to, the per-seed
lift over `baseline` is modelled as

    d(r, s) = lift + a(r) + e(r, s),  var a = sR2 (between replicates), var e = sE2 (between runs),

so a unit of a design with n seeds per replicate (their lifts averaged) has
variance sR2 + sE2 / n, and the test has R - 1 degrees of freedom.

- With seeds sharing replicates (n > 1 in the pilot) both components come from
  a one-way analysis of variance of the method's lifts by replicate.
- With every run its own replicate (n = 1), the lifts' variance is sR2 + sE2;
  sE2 comes from the runs' spread without an adaptation (`oversample` minus
  `baseline` per seed, which holds run-to-run variance only), sR2 is the rest.
- With one replicate, sR2 cannot be estimated: it is taken as 0 and the plan
  is a lower bound (said so).

A pilot has few degrees of freedom, so the plan uses upper confidence bounds
(one-sided, `--confidence`, 80% by default): sE2 and the pilot's unit variance
each at their chi-square bound, sR2 the unit bound less the point sE2 / n.
The design must give 80% power to every declared row (its largest spread) at
the family's first-step level alpha / k (tibalance.family: k declared rows
against `baseline`); its cost is R times a replicate's adaptation jobs plus
R n times a seed's retraining runs (baseline, oversample and the declared
methods), from the pilot's cost table, in job-hours per device kind.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml
from scipy import stats as _st

from .config import deep_merge, replicate_count, replicate_of
from .cost import method_stages
from .family import POWER, power
from .stats import ALPHA, default_primary
from .util import TibalanceError, read_json

CONFIDENCE = 0.8


@dataclass(frozen=True)
class Spread:
    """One declared row's variance components (accuracy squared) from a pilot:
    point estimates and the upper bounds the plan uses."""
    method: str
    cls: str
    replicate: float
    run: float
    replicate_up: float
    run_up: float
    replicates: int
    seeds_per_replicate: int
    note: str = ""

    def unit_variance(self, n: int, upper: bool = True) -> float:
        """A unit's variance with n seeds per replicate."""
        r, e = (self.replicate_up, self.run_up) if upper else (self.replicate, self.run)
        return r + e / n


@dataclass(frozen=True)
class Costs:
    """Job-seconds of one replicate's adaptation and of one seed's retraining
    runs, per device kind (cpu: jobs that held no GPU; gpu: GPU-seconds)."""
    replicate_cpu_s: float
    replicate_gpu_s: float
    seed_cpu_s: float
    seed_gpu_s: float

    def of(self, replicates: int, per_replicate: int) -> tuple[float, float]:
        """(cpu, gpu) job-hours of a design."""
        seeds = replicates * per_replicate
        return ((replicates * self.replicate_cpu_s + seeds * self.seed_cpu_s) / 3600,
                (replicates * self.replicate_gpu_s + seeds * self.seed_gpu_s) / 3600)


@dataclass(frozen=True)
class Design:
    replicates: int
    seeds_per_replicate: int
    power: float
    cpu_h: float
    gpu_h: float

    @property
    def hours(self) -> float:
        return self.cpu_h + self.gpu_h


def upper_variance(s2: float, df: int, confidence: float = CONFIDENCE) -> float:
    """The one-sided upper confidence bound of a variance estimated with df degrees of freedom."""
    if df < 1 or not np.isfinite(s2):
        return float("nan")
    return df * s2 / _st.chi2.ppf(1 - confidence, df)


def _lifts(run_rows: list[dict], method: str, cls: str, ref: str = "baseline") -> dict[int, float]:
    base = {int(r["seed"]): r["per_class_accuracy"][cls] for r in run_rows if r["method"] == ref}
    return {int(r["seed"]): r["per_class_accuracy"][cls] - base[int(r["seed"])]
            for r in run_rows if r["method"] == method and int(r["seed"]) in base}


def estimate_spread(run_rows: list[dict], method: str, cls: str, replicate_of_seed: dict[int, int],
                    confidence: float = CONFIDENCE) -> Spread:
    """One declared row's variance components (module docstring)."""
    d = _lifts(run_rows, method, cls)
    if len(d) < 2:
        raise TibalanceError(f"plan: {method} on {cls} has {len(d)} paired run(s) with baseline; a pilot needs two")
    by_rep: dict[int, list[float]] = {}
    for s, v in d.items():
        by_rep.setdefault(replicate_of_seed.get(s, 0), []).append(v)
    groups = list(by_rep.values())
    reps, n = len(groups), min(len(g) for g in groups)
    if n > 1 and reps > 1:  # one-way ANOVA by replicate
        within = sum(((np.asarray(g) - np.mean(g)) ** 2).sum() for g in groups)
        df_w = sum(len(g) - 1 for g in groups)
        means = np.array([np.mean(g) for g in groups])
        run, unit, df_u = within / df_w, float(means.var(ddof=1)), reps - 1
        run_up, note, per = upper_variance(run, df_w, confidence), "", n
    else:
        over = _lifts(run_rows, "oversample", cls)
        unit, df_u = float(np.var(list(d.values()), ddof=1)), len(d) - 1
        if reps == 1:  # one replicate: only the runs' spread is seen
            run, run_up, per = unit, upper_variance(unit, df_u, confidence), len(d)
            note = "one replicate in the pilot: the spread between replicates is taken as 0 (a lower bound)"
            return Spread(method, cls, 0.0, run, 0.0, run_up, 1, per, note)
        if len(over) < 2:
            raise TibalanceError(f"plan: every run its own replicate, and no oversample runs to tell the runs' "
                                 f"spread from the replicates' ({method} on {cls})")
        run = float(np.var(list(over.values()), ddof=1))
        run_up, note, per = upper_variance(run, len(over) - 1, confidence), "runs' spread from oversample", 1
    replicate = max(0.0, unit - run / per)
    replicate_up = max(0.0, upper_variance(unit, df_u, confidence) - run / per)
    return Spread(method, cls, replicate, run, replicate_up, run_up, reps, per, note)


def plan(spreads: list[Spread], k: int, costs: Costs, target: float, alpha: float = ALPHA,
         max_replicates: int = 40, max_per_replicate: int = 4, upper: bool = True) -> list[Design]:
    """Every design (R >= 2 replicates, n seeds per replicate) with its power
    for the worst declared row at alpha / k, cheapest first (job-hours, both
    kinds summed)."""
    out = []
    for reps in range(2, max_replicates + 1):
        for n in range(1, max_per_replicate + 1):
            worst = min(power(target, math.sqrt(s.unit_variance(n, upper)), reps, alpha / max(1, k)) for s in spreads)
            cpu, gpu = costs.of(reps, n)
            out.append(Design(reps, n, worst, cpu, gpu))
    return sorted(out, key=lambda d: (d.hours, d.replicates, d.seeds_per_replicate))


def cheapest(designs: list[Design], target_power: float = POWER) -> Design | None:
    """The cheapest design that reaches the target power (designs: plan's, cheapest first)."""
    return next((d for d in designs if d.power >= target_power), None)


def study_costs(cost_csv: str, declared: list[str], replicates: int, seeds: int, concept: str = "ti") -> Costs:
    """Costs from the pilot's stage table (cost.csv: stage, class, method, jobs,
    wall_s, gpu_s): the adaptation jobs the declared methods need (each job
    once), over the pilot's replicates; the retraining runs of baseline,
    oversample and the declared methods, over its seeds."""
    t = pd.read_csv(cost_csv, dtype={"method": str, "class": str})
    t = t[t["stage"] != "total"]
    need = pd.Series(False, index=t.index)
    for m in declared:
        for stage, mode in method_stages(m, concept).items():
            need |= (t["stage"] == stage) & ((t["method"] == mode) if mode else True)
    runs = (t["stage"] == "retrain") & t["method"].isin(["baseline", "oversample", *declared])

    def split(rows, per):
        gpu = rows["gpu_s"].fillna(0).sum()
        cpu = rows.loc[rows["gpu_s"].fillna(0) <= 0, "wall_s"].fillna(0).sum()
        return cpu / per, gpu / per

    rc, rg = split(t[need], max(1, replicates))
    sc, sg = split(t[runs], max(1, seeds))
    return Costs(rc, rg, sc, sg)


def _config(paths: list[str]) -> dict:
    cfg: dict = {}
    for p in paths:
        if not os.path.isfile(p):
            raise TibalanceError(f"plan: config file {p} does not exist")
        cfg = deep_merge(cfg, yaml.safe_load(open(p)) or {})
    return cfg


def report(cfg: dict, results: str, confidence: float = CONFIDENCE, target: float | None = None,
           rows_planned: int | None = None) -> str:
    """The plan in markdown, from a finished study's results folder and its
    config. rows_planned: the declared rows against `baseline` of the study
    being planned, where it differs from the pilot's (a pilot on one weak
    class for a study of ten: ten times its rows); default the pilot's."""
    retrain = cfg.get("retrain") or {}
    methods, seeds = retrain.get("methods") or [], retrain.get("seeds") or []
    verdict = cfg.get("verdict") or {}
    declared = verdict.get("primary") or default_primary(methods)
    target = float(target if target is not None else verdict.get("target_lift", 10)) / 100
    r_pilot = replicate_count({"replicates": cfg.get("replicates", 1), "retrain": {"seeds": seeds}})
    rep = {int(s): replicate_of(int(s), seeds, r_pilot) for s in seeds}
    paths = sorted(glob.glob(os.path.join(results, "retrain", "*", "seed*", "metrics.json")))
    if not paths:
        raise TibalanceError(f"plan: no retraining runs under {results}/retrain (run the study first)")
    run_rows = [read_json(p) for p in paths]
    weak = read_json(os.path.join(results, "analysis", "weak_classes.json"))["classes"]
    from .report import receivers

    gets = receivers(run_rows, weak)
    rows = [(m, c) for m in declared for c in weak if m in gets.get(c, set())]
    if not rows:
        raise TibalanceError(f"plan: no declared method ({', '.join(declared)}) adds images to a weak class "
                             f"({', '.join(weak)})")
    spreads = [estimate_spread(run_rows, m, c, rep, confidence) for m, c in rows]
    cost_csv = os.path.join(results, "tables", "cost.csv")
    if not os.path.isfile(cost_csv):
        raise TibalanceError(f"plan: {cost_csv} does not exist (the study's cost rule makes it)")
    costs = study_costs(cost_csv, declared, r_pilot, len(seeds), (cfg.get("diff_ii") or {}).get("concept", "ti"))
    k = rows_planned or len(rows)
    designs = plan(spreads, k, costs, target)
    best = cheapest(designs)
    out = [f"# Plan: {100 * target:.1f} points on every declared row with {POWER:.0%} power\n",
           f"Pilot: {len(seeds)} seeds on {r_pilot} replicate(s) in `{results}`; declared family: "
           f"{len(rows)} row(s) against `baseline` ({', '.join(f'`{m}` on {c}' for m, c in rows)})"
           + (f"; planned for a family of {k} rows" if k != len(rows) else "")
           + f", first-step level {ALPHA:g}/{k}. Spreads in accuracy points (sd), point and {confidence:.0%} "
           f"upper bound:\n",
           "| method | class | between replicates | between runs | upper: replicates | upper: runs | note |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in spreads:
        out.append(f"| {s.method} | {s.cls} | {100 * math.sqrt(s.replicate):.2f} | {100 * math.sqrt(s.run):.2f} | "
                   f"{100 * math.sqrt(s.replicate_up):.2f} | {100 * math.sqrt(s.run_up):.2f} | {s.note} |")
    out += ["", f"A replicate's adaptation jobs: {costs.replicate_cpu_s / 3600:.3f} CPU job-hours, "
                f"{costs.replicate_gpu_s / 3600:.3f} GPU-hours; a seed's retraining runs: "
                f"{costs.seed_cpu_s / 3600:.3f} CPU job-hours, {costs.seed_gpu_s / 3600:.3f} GPU-hours.", ""]
    if best is None:
        out.append(f"No design up to {designs and max(d.replicates for d in designs)} replicates reaches "
                   f"{POWER:.0%} power: declare fewer methods or aim at a larger lift.")
    else:
        out.append(f"**Cheapest design: {best.replicates} replicates x {best.seeds_per_replicate} seed(s) per "
                   f"replicate** (`replicates: {best.replicates}`, {best.replicates * best.seeds_per_replicate} "
                   f"retraining seeds): power {best.power:.2f}, {best.cpu_h:.2f} CPU job-hours, {best.gpu_h:.2f} "
                   f"GPU-hours.\n")
    out += ["| replicates | seeds per replicate | power | CPU job-hours | GPU-hours |", "| --- | --- | --- | --- | --- |"]
    shown = [d for d in designs if d.seeds_per_replicate == 1 or d is best][:8]
    for d in sorted(shown, key=lambda d: d.hours):
        out.append(f"| {d.replicates} | {d.seeds_per_replicate} | {d.power:.2f} | {d.cpu_h:.2f} | {d.gpu_h:.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tibalance.plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="+", required=True, help="the study's config files, as given to snakemake")
    ap.add_argument("--results", default="results", help="the finished study's results folder")
    ap.add_argument("--target", type=float, default=None, help="points (default: verdict.target_lift)")
    ap.add_argument("--confidence", type=float, default=CONFIDENCE)
    ap.add_argument("--rows", type=int, default=None,
                    help="the planned study's declared rows against baseline (default: the pilot's)")
    ap.add_argument("--out", default=None, help="also write the plan here (markdown)")
    args = ap.parse_args(argv)
    try:
        text = report(_config(args.configfile), args.results, args.confidence, args.target, args.rows)
    except TibalanceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
