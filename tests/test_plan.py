"""The planner (tibalance.plan): the spreads it reads from a pilot, the design it
picks, and that design's power when studies are simulated through the
verdict's own comparisons."""
import json

import numpy as np
import pandas as pd
import pytest

from tibalance.calibration import gaussian_study, mc_error, rates
from tibalance.plan import Costs, Spread, cheapest, estimate_spread, main, plan, upper_variance

METHODS = ("baseline", "oversample", "ti", "lora", "ti_i2i")  # three declared adaptations


def _run_rows(runs: dict) -> list[dict]:
    """gaussian_study's predictions as the runs' metrics (per-class accuracy)."""
    return [{"method": m, "seed": s, "per_class_accuracy": {"weak": float((p["pred"] == p["label"]).mean())},
             "train_counts": {"weak": 10 if m == "baseline" else 100}} for (m, s), p in runs.items()]


def test_planned_design_reaches_80_percent_power_and_no_cheaper_one_does():
    """Known spreads (between replicates 3 points, each run 2 points: a seed's
    lift varies by 3^2 + 2 * 2^2), three declared methods, a target of 8
    points: the planned design, simulated through stats.comparisons with the
    declared family (one method lifting, two not), reaches 80% power within
    two Monte-Carlo errors; the most powerful strictly cheaper design does not
    reach 80%."""
    rs, ru, target = 0.03, 0.02, 0.08
    spread = Spread("ti", "weak", rs ** 2, 2 * ru ** 2, rs ** 2, 2 * ru ** 2, 0, 1)
    designs = plan([spread] * 3, 3, Costs(3600, 0, 1200, 0), target, upper=False, max_per_replicate=3)
    best = cheapest(designs)
    cheaper = max((d for d in designs if d.hours < best.hours - 1e-9), key=lambda d: d.power)
    n = 300
    got = {}
    for d in (best, cheaper):
        r = rates(n, d.replicates * d.seeds_per_replicate, seed=21, simulate=gaussian_study, images=500,
                  replicates=d.replicates, methods=METHODS, lift={"ti": target}, replicate_sd=rs, run_sd=ru,
                  replicate_corr=0.5)
        got[d] = r["power"]["ti"]
        print(f"\n{d.replicates} x {d.seeds_per_replicate}: planned power {d.power:.3f}, simulated {got[d]:.3f}")
    assert got[best] >= 0.8 - 2 * mc_error(0.8, n)
    assert got[cheaper] < 0.8


def test_spreads_from_a_pilot_recover_the_known_components():
    """A large pilot (20 replicates x 3 seeds): the one-way ANOVA's components
    near the simulation's (replicate 3^2, runs 2 * 2^2 points^2); with every
    run its own replicate (40 x 1) the runs' part comes from oversample's
    spread; one replicate: only the runs'. Upper bounds above the points."""
    rng = np.random.default_rng(5)
    runs, rep = gaussian_study(rng, 60, replicates=20, images=4000, methods=("baseline", "oversample", "ti"),
                               replicate_sd=0.03, run_sd=0.02)
    s = estimate_spread(_run_rows(runs), "ti", "weak", rep)
    assert s.seeds_per_replicate == 3 and s.replicates == 20
    assert s.replicate == pytest.approx(0.03 ** 2, rel=0.6) and s.run == pytest.approx(2 * 0.02 ** 2, rel=0.3)
    assert s.replicate_up > s.replicate and s.run_up > s.run
    runs, rep = gaussian_study(rng, 40, images=4000, methods=("baseline", "oversample", "ti"),
                               replicate_sd=0.03, run_sd=0.02)
    s = estimate_spread(_run_rows(runs), "ti", "weak", rep)
    assert s.seeds_per_replicate == 1 and "oversample" in s.note
    assert s.unit_variance(1, upper=False) == pytest.approx(0.03 ** 2 + 2 * 0.02 ** 2, rel=0.4)
    assert s.run == pytest.approx(2 * 0.02 ** 2, rel=0.5)
    one = estimate_spread(_run_rows(runs), "ti", "weak", {k: 0 for k in rep})
    assert one.replicate == 0 and "lower bound" in one.note
    assert upper_variance(1.0, 4, 0.8) > 1.0 and upper_variance(1.0, 4, 0.95) > upper_variance(1.0, 4, 0.8)


def _pilot(tmp_path, seeds: int = 5):
    runs, _ = gaussian_study(np.random.default_rng(9), seeds, images=500, methods=("baseline", "oversample", "ti"),
                             lift={"ti": 0.1}, replicate_sd=0.03, run_sd=0.02)
    for r in _run_rows(runs):
        d = tmp_path / "results" / "retrain" / r["method"] / f"seed{r['seed']}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(r))
    (tmp_path / "results" / "analysis").mkdir()
    (tmp_path / "results" / "analysis" / "weak_classes.json").write_text(json.dumps({"classes": ["weak"]}))
    (tmp_path / "results" / "tables").mkdir()
    pd.DataFrame([
        {"stage": "textual_inversion", "class": "weak", "method": "", "jobs": seeds, "wall_s": 600 * seeds,
         "cpu_s": 0, "gpu_s": 600 * seeds},
        {"stage": "sample", "class": "weak", "method": "ti", "jobs": seeds, "wall_s": 300 * seeds, "cpu_s": 0,
         "gpu_s": 300 * seeds},
        {"stage": "sample", "class": "weak", "method": "lora", "jobs": seeds, "wall_s": 999, "cpu_s": 0,
         "gpu_s": 999},  # a mode no declared method reads
        {"stage": "retrain", "class": "", "method": "ti", "jobs": seeds, "wall_s": 60 * seeds, "cpu_s": 0,
         "gpu_s": 0},
        {"stage": "retrain", "class": "", "method": "baseline", "jobs": seeds, "wall_s": 60 * seeds, "cpu_s": 0,
         "gpu_s": 0},
        {"stage": "total", "class": "", "method": "", "jobs": 0, "wall_s": 1e9, "cpu_s": 0, "gpu_s": 1e9},
    ]).to_csv(tmp_path / "results" / "tables" / "cost.csv", index=False)
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps({"replicates": "seeds", "retrain": {"methods": ["baseline", "oversample", "ti"],
                                                                   "seeds": list(range(seeds))},
                               "verdict": {"target_lift": 10}}))
    return cfg


def test_plan_command_on_a_finished_study(tmp_path, capsys):
    """python -m tibalance.plan on a pilot's folders: the spreads table, a
    replicate's GPU-hours from the declared method's jobs only (token and ti
    sampling: 900 s), a seed's retraining runs, and the cheapest design."""
    cfg = _pilot(tmp_path)
    assert main(["--configfile", str(cfg), "--results", str(tmp_path / "results"), "--out",
                 str(tmp_path / "plan.md")]) == 0
    out = capsys.readouterr().out
    assert "| ti | weak |" in out and "Cheapest design:" in out
    assert "0.250 GPU-hours; a seed's retraining runs: 0.033 CPU job-hours" in out
    assert (tmp_path / "plan.md").read_text() == out[:-1]


def test_plan_command_bad_input_is_one_line(tmp_path, capsys):
    cfg = _pilot(tmp_path)
    assert main(["--configfile", str(cfg), "--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no retraining runs under" in err
    assert main(["--configfile", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
