"""The paired intervals and tests (tibalance.stats) against independent computations."""
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from scipy.stats import t as student_t

from tibalance.calibration import mc_error, rates, simulate_study
from tibalance.family import Graph, baseline_then_oversample, graphical, mde
from tibalance.stats import (
    comparisons,
    group_label,
    run_interval,
    run_test,
    sign_flip_test,
    unit_lifts,
)
from tibalance.util import TibalanceError
from tibalance.verdict import verdict


def brute_force_sign_flip(a, b) -> float:
    """Every assignment of signs to the images, counted: the exact two-sided p-value."""
    k = (np.asarray(a) - np.asarray(b)).sum(axis=0)
    obs = abs(k.sum())
    hits = sum(abs(np.dot(signs, k)) >= obs for signs in itertools.product((1, -1), repeat=len(k)))
    return hits / 2 ** len(k)


def test_sign_flip_with_one_seed_is_mcnemars_exact_test():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.integers(0, 2, size=(1, 60))
        b = np.where(rng.random((1, 60)) < 0.3, 1 - a, a)  # discordant on ~30% of the images
        n_ab = int(((a == 1) & (b == 0)).sum())
        n_ba = int(((a == 0) & (b == 1)).sum())
        expected = binomtest(n_ab, n_ab + n_ba, 0.5).pvalue if n_ab + n_ba else 1.0
        assert sign_flip_test(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_sign_flip_over_seeds_equals_enumeration():
    rng = np.random.default_rng(5)
    for seeds in (2, 3):
        for _ in range(10):
            a, b = rng.integers(0, 2, size=(seeds, 12)), rng.integers(0, 2, size=(seeds, 12))
            assert sign_flip_test(a, b) == pytest.approx(brute_force_sign_flip(a, b), abs=1e-12)
    same = rng.integers(0, 2, size=(3, 12))
    assert sign_flip_test(same, same) == 1.0


def test_run_test_is_the_t_test_over_runs_and_its_interval_is_dual():
    """Per-seed lifts (a seed's accuracy difference), the one-sample t statistic
    by hand, p from the t distribution; the interval at 1 - p touches 0."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, size=(4, 50)), rng.integers(0, 2, size=(4, 50))
    d = unit_lifts(a, b)
    assert d == pytest.approx(a.mean(axis=1) - b.mean(axis=1))
    t = d.mean() / (d.std(ddof=1) / np.sqrt(4))
    p = run_test(d)
    assert p == pytest.approx(2 * student_t.sf(abs(t), 3))
    low, high = run_interval(d, 1 - p)
    assert min(abs(low), abs(high)) == pytest.approx(0, abs=1e-9)
    assert run_interval(d, 0.95)[0] < d.mean() < run_interval(d, 0.95)[1]
    # seeds sharing a replicate: averaged into one unit, in order of first appearance
    assert unit_lifts(a, b, [0, 1, 0, 1]) == pytest.approx([d[[0, 2]].mean(), d[[1, 3]].mean()])
    # equal lifts: no t statistic; the exact sign-flip over units (2^(1-U)), and 1 for no lift
    assert run_test([0.02, 0.02, 0.02]) == pytest.approx(0.25)
    assert run_test([0.0] * 5) == 1.0
    assert np.isnan(run_test([0.1]))  # one unit: no spread to judge by
    with pytest.raises(TibalanceError, match="seeds x images"):
        unit_lifts(a, b[:, :10])


def _holm(p):
    """Holm's adjusted p-values, by the textbook recipe."""
    order = np.argsort(p, kind="stable")
    out, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return list(out)


def test_graphical_procedure_with_holms_graph_is_holm():
    """Equal weights, each rejected hypothesis's level passed equally to the
    rest: the graphical procedure is Holm's (Bretz et al. 2009, sec. 2)."""
    rng = np.random.default_rng(2)
    for n in (1, 2, 4, 7):
        g = Graph(np.full(n, 1 / n), (np.ones((n, n)) - np.eye(n)) / max(1, n - 1))
        for _ in range(50):
            p = list(rng.uniform(0, 0.1, size=n))
            adjusted, reject, _ = graphical(p, g, 0.05)
            assert adjusted == pytest.approx(_holm(p))
            assert reject == [a <= 0.05 for a in adjusted]


def test_baseline_then_oversample_passes_alpha_on_by_hand():
    """Two declared methods: each vs baseline at 0.025; a rejection passes its
    level to the same method vs oversample, that one's on to the other method.
    p = (B1 .01, B2 .04, O1 .02, O2 .045): B1 (.01 <= .025), O1 (.02 <= .025),
    then B2 at .05 (.04), O2 at .05 (.045): all four, where Holm over the
    four rows stops after one (.02 > .05/3). Adjusted: max over the steps of p/w."""
    hyps, g = baseline_then_oversample(["a", "b"], {"a": True, "b": True})
    assert hyps == [("a", "baseline"), ("b", "baseline"), ("a", "oversample"), ("b", "oversample")]
    adjusted, reject, local = graphical([0.01, 0.04, 0.02, 0.045], g, 0.05)
    assert adjusted == pytest.approx([0.02, 0.04, 0.04, 0.045]) and all(reject)
    assert local == pytest.approx([0.025, 0.05, 0.025, 0.05])
    assert sum(h <= 0.05 for h in _holm([0.01, 0.04, 0.02, 0.045])) == 1
    # a method that does not lift keeps its own share: b's .04 > .025, and a's
    # test against oversample fails, so nothing reaches b; b's O never gets alpha
    adjusted, reject, local = graphical([0.01, 0.04, 0.3, 0.001], g, 0.05)
    assert reject == [True, False, False, False] and local == pytest.approx([0.025, 0.025, 0.025, 0.0])
    # no oversample row: a rejected baseline test passes its level to the other method's
    hyps, g = baseline_then_oversample(["a", "b"], {"a": False, "b": False})
    assert graphical([0.02, 0.04], g, 0.05)[1] == [True, True]


def test_mde_is_the_lift_found_80_percent_of_the_time():
    """At the MDE, t-tests of normal units with that mean and spread reject at
    the level 80% of the time (simulated, not the formula mde solves)."""
    rng = np.random.default_rng(7)
    for units, level in ((5, 0.05 / 3), (8, 0.05), (3, 0.05 / 6)):
        m = mde(0.04, units, level)
        x = rng.normal(m, 0.04, size=(40000, units))
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / np.sqrt(units))
        rate = float((np.abs(t) > student_t.ppf(1 - level / 2, units - 1)).mean())
        assert rate == pytest.approx(0.8, abs=0.01), (units, level, rate)
    assert np.isnan(mde(0.04, 1, 0.05)) and mde(0.04, 5, 0.05 / 7) > mde(0.04, 5, 0.05)


def _preds(correct: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for cls, flags in correct.items():
        rows += [(f"{cls}/{i:03d}.png", cls, cls if ok else "other") for i, ok in enumerate(flags)]
    return pd.DataFrame(rows, columns=["path", "label", "pred"])


def _by_hand(runs, method, ref, cls, seeds):
    """Per seed: method's accuracy on cls minus ref's."""
    def acc(t):
        t = t[t["label"] == cls]
        return float((t["pred"] == t["label"]).mean())

    return np.array([acc(runs[(method, s)]) - acc(runs[(ref, s)]) for s in seeds])


def test_comparisons_confirmatory_family_and_descriptive_rows():
    """Declared ti and lora; weak gets their images, weak2 none. The family is
    their four rows on weak, decided by the graphical procedure on the
    run-level p-values; every other row (oversample, the yardstick, weak2) is
    descriptive: its unadjusted 95% t interval by hand, never significant,
    even where its p is under 5%. Without `primary`, the adaptations."""
    runs, _ = simulate_study(np.random.default_rng(1), 4, images=60, classes=("weak", "weak2"),
                             methods=("baseline", "oversample", "ti", "lora", "real_oracle"),
                             lift={"oversample": 2.0, "ti": 1.5, "real_oracle": 3.0})
    methods = ["baseline", "oversample", "ti", "lora", "real_oracle"]
    receives = {"weak": {"oversample", "ti", "lora", "real_oracle"}, "weak2": set()}
    comp = comparisons(runs, ["weak", "weak2"], methods, primary=["ti", "lora"], receives=receives)
    conf = comp[comp["role"] == "confirmatory"]
    assert set(zip(conf["class"], conf["method"], conf["reference"])) == {
        ("weak", m, ref) for m in ("ti", "lora") for ref in ("baseline", "oversample")}
    hyps, graph = baseline_then_oversample([("ti", "weak"), ("lora", "weak")],
                                           {("ti", "weak"): True, ("lora", "weak"): True})
    by = comp.set_index(["class", "method", "reference"])
    p = [by.loc[("weak", m, ref), "p"] for (m, _), ref in hyps]
    adjusted, reject, local = graphical(p, graph, 0.05)
    for ((m, _), ref), a, rej, loc in zip(hyps, adjusted, reject, local):
        row = by.loc[("weak", m, ref)]
        assert row["p_adj"] == pytest.approx(a) and row["significant"] == rej
        if loc > 0:
            assert row["level"] == pytest.approx(1 - loc) and rej == (row["low"] > 0 or row["high"] < 0)
    d = _by_hand(runs, "oversample", "baseline", "weak", range(4))
    over = by.loc[("weak", "oversample", "baseline")]
    half = student_t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert over["role"] == "descriptive" and over["level"] == 0.95 and np.isnan(over["p_adj"])
    assert over["p"] < 0.05 and not over["significant"]
    base_acc = np.mean([(runs[("baseline", s)].query("label == 'weak'").eval("pred == label")).mean() for s in range(4)])
    assert over["low"] == pytest.approx(max(d.mean() - half, -base_acc))
    assert over["high"] == pytest.approx(min(d.mean() + half, 1 - base_acc))  # cut to the attainable lift
    desc = comp[comp["role"] == "descriptive"]
    assert not desc["significant"].any() and desc["mde"].isna().all()
    assert set(desc["class"]) == {"weak", "weak2"} and (comp[comp["class"] == "weak2"]["role"] == "descriptive").all()
    # the MDE: the declared rows' pooled spread at the first step's level (alpha / 2 declared rows)
    rows = conf[conf["reference"] == "baseline"]
    sd = np.sqrt(np.mean((rows["se"] * 2) ** 2))
    assert rows["mde"].iloc[0] == pytest.approx(mde(sd, 4, 0.05 / 2)) and rows["mde"].nunique() == 1
    # every interval inside the lift's range: no bound past 100 points
    assert (comp["low"].dropna() >= -1).all() and (comp["high"].dropna() <= 1).all()
    assert comp["low"].isna().sum() == comp["level"].isna().sum()  # only where no alpha reached the row
    default = comparisons(runs, ["weak", "weak2"], methods)
    assert set(default[default["role"] == "confirmatory"]["method"]) == {"ti", "lora"}
    text = verdict(comp, {"weak": "Weak"}, counts={"weak": {"real_oracle": 990, "ti": 854}})
    weak_part, weak2_part = text.split("### Weak")[1].split("### weak2")
    assert "**Confirmatory**" in weak_part and "- `ti`: vs `baseline`" in weak_part
    assert "Minimum detectable effect (80% power, 4 units" in weak_part and "0.05/2" in weak_part
    assert "every row is **descriptive**" in weak2_part and "**Confirmatory**" not in weak2_part
    assert "Significantly" not in text and "significant" not in weak2_part.replace("never called significant", "")
    best = next(x for x in weak_part.splitlines() if x.startswith("- Highest lift"))
    assert "real_oracle" not in best
    assert "One replicate of the adaptation" not in text  # said only where the study made one
    assert "One replicate of the adaptation" in verdict(comp, replicates=1)
    # a class the oracle adds nothing to says so (its count is baseline's)
    same = verdict(comp, counts={"weak2": {"real_oracle": 40, "baseline": 40}})
    assert "40 real training images of the class, none added to the class" in same.split("### weak2")[1]
    assert "none added" not in text
    # predictions on other images than the rest: one line naming the run
    runs[("ti", 1)] = _preds({"weak": [1] * 13, "other": [1] * 10})
    with pytest.raises(TibalanceError, match="ti seed 1"):
        comparisons(runs, ["weak"], ["baseline", "ti"])


def test_a_group_row_is_its_classes_mean_lift_and_descriptive():
    """A group's per-seed lift is the mean of its classes' per-seed lifts (its
    accuracy is its classes' mean, whatever their image counts); the t-test over
    those; a descriptive row (never significant, however large its lift); a
    group of one class is no row; the verdict names the group."""
    rng = np.random.default_rng(3)
    runs = {}
    for seed in range(4):
        for m, p in (("baseline", 0.3), ("noise", 0.6)):
            runs[(m, seed)] = _preds({"a": list(rng.random(10) < p), "b": list(rng.random(30) < p),
                                      "c": list(rng.random(20) < 0.5)})
    comp = comparisons(runs, ["a", "b"], ["baseline", "noise"], references=("baseline",),
                       groups={"few": ["a", "b"], "many": ["c"]})
    assert list(comp["class"]) == ["a", "b", "few-shot"]  # many holds c alone: no row

    def per_seed(cls):
        def acc(t):
            t = t[t["label"] == cls]
            return float((t["pred"] == t["label"]).mean())

        return np.array([acc(runs[("noise", s)]) - acc(runs[("baseline", s)]) for s in range(4)])

    few = comp[comp["class"] == "few-shot"].iloc[0]
    d = (per_seed("a") + per_seed("b")) / 2  # not pooled over the 40 images: a's 10 weigh as b's 30
    assert few["lift"] == pytest.approx(d.mean())
    assert few["p"] == pytest.approx(2 * student_t.sf(abs(d.mean()) / (d.std(ddof=1) / 2), 3))
    assert few["images"] == 40 and few["units"] == 4 and np.isnan(few["p_images"])
    assert few["role"] == "descriptive" and few["p"] < 0.05 and not few["significant"] and few["level"] == 0.95
    text = verdict(comp, {"few-shot": "few-shot group (A, B)"})
    assert "### few-shot group (A, B)" in text and "group's 40 test images" in text
    assert "Too few test images" not in text.split("### few-shot")[1].split("###")[0]


def test_replicates_are_the_unit_where_seeds_share_them():
    """Seeds 0-3 on replicates 0,1,0,1: a synthetic method's rows have 2 units
    (each replicate's seeds averaged); oversample vs baseline keeps 4."""
    runs, _ = simulate_study(np.random.default_rng(4), 4, images=40, methods=("baseline", "oversample", "ti"))
    comp = comparisons(runs, ["weak"], ["baseline", "oversample", "ti"], replicate_of_seed={0: 0, 1: 1, 2: 0, 3: 1})
    units = {(r.method, r.reference): r.units for r in comp.itertuples()}
    assert units == {("oversample", "baseline"): 4, ("ti", "baseline"): 2, ("ti", "oversample"): 2}


def test_a_method_identical_to_baseline_is_never_significant():
    """coat in the demo: no synthetic image, so ti's training set is baseline's;
    with the same predictions under every seed its lift is 0 and p is 1."""
    runs, _ = simulate_study(np.random.default_rng(5), 5, methods=("baseline",))
    for s in range(5):
        runs[("ti", s)] = runs[("baseline", s)].copy()
    comp = comparisons(runs, ["weak"], ["baseline", "ti"], primary=[])
    row = comp.iloc[0]
    assert row["lift"] == 0 and row["p"] == 1.0 and not row["significant"] and row["low"] <= 0 <= row["high"]
    runs[("lora", 0)] = runs[("baseline", 0)].copy()
    runs[("oversample", 0)] = runs[("baseline", 0)].copy()
    text = verdict(comparisons(runs, ["weak"], ["baseline", "oversample", "ti", "lora"], primary=[]))
    assert "`ti` +0.0 (every unit the same)" in text  # not an interval spanning the attainable range


def test_best_method_is_never_the_yardstick():
    runs, _ = simulate_study(np.random.default_rng(6), 3, methods=("baseline", "real_oracle", "ti"),
                             lift={"real_oracle": 3.0, "ti": 1.0}, classes=("weak", "weak2"))
    comp = comparisons(runs, ["weak"], ["baseline", "real_oracle", "ti"], groups={"few": ["weak", "weak2"]})
    text = verdict(comp, counts={"weak": {"real_oracle": 990, "ti": 854},
                                 group_label("few"): {"real_oracle": 990, "ti": 854}})
    assert "Highest lift: `ti`" in text and "real_oracle" not in "".join(
        x for x in text.splitlines() if x.startswith("- Highest") or "significant)" in x)
    cls, group = text.split(f"### {group_label('few')}")
    assert "`real_oracle`, 990 real training images of the class" in cls and "`ti` (854 training images" in cls
    assert "990 real training images of the group" in group and "854 training images of the group" in group


def _demo_seeds() -> int:
    import yaml

    return len(yaml.safe_load(open(Path(__file__).parents[1] / "config" / "demo.yaml"))["retrain"]["seeds"])


DECLARED = ("baseline", "oversample", "ti", "lora", "ti_i2i")  # three adaptations: the default family


@pytest.mark.parametrize("seeds,replicates", [(5, 5), (6, 3)])
def test_calibration_complete_null_in_the_real_design(seeds, replicates):
    """The design the workflow runs: R replicates of the adaptation (every run
    its own, or two seeds per replicate), a replicate spread shared by the
    adaptations (correlation 0.5) on top of each run's, no true lift. The
    confirmatory family's error (any of its 6 rows significant) at most 5%
    plus two Monte-Carlo errors; the image-level test on the same rows far
    above (the spreads are in the simulation)."""
    n = 300
    null = rates(n, seeds, seed=11 + seeds, methods=DECLARED, replicates=replicates, replicate_sd=0.3,
                 replicate_corr=0.5)
    print(f"\ncomplete null, {seeds} seeds on {replicates} replicates, {n} studies: family-wise "
          f"{null['fwer']:.3f}, image-level {null['images']:.3f}")
    assert null["fwer"] == null["significant"]  # only confirmatory rows are ever significant
    assert null["fwer"] <= 0.05 + 2 * mc_error(0.05, n)
    assert null["images"] > 0.2


def test_calibration_partial_null_and_power():
    """ti truly lifts, lora and ti_i2i do not (nor oversample): the family's
    error on the true nulls (lora's and ti_i2i's rows) at most 5% plus two
    Monte-Carlo errors, while ti's lift is found far more often."""
    n = 300
    out = rates(n, 5, seed=31, methods=DECLARED, replicates=5, replicate_sd=0.3, replicate_corr=0.5,
                lift={"ti": 1.0})
    print(f"\npartial null, 5 seeds on 5 replicates: family-wise {out['fwer']:.3f}, power ti {out['power']['ti']:.3f}")
    assert out["fwer"] <= 0.05 + 2 * mc_error(0.05, n)
    assert out["power"]["ti"] > 0.3 > out["fwer"]


def test_replicate_ranking_says_whether_the_order_holds_in_every_replicate():
    """Seeds 0-2 trained on replicates 0-2: the overall order is the mean lift's,
    each replicate's its own seeds'; counted and in words."""
    from tibalance.verdict import ranking_line, replicate_ranking

    acc = {"baseline": [0.10, 0.10, 0.10], "ti": [0.30, 0.20, 0.40], "lora": [0.20, 0.30, 0.15],
           "ti_i2i": [0.15, 0.12, 0.11], "oversample": [0.9, 0.9, 0.9]}  # oversample: not an adaptation
    runs = [{"method": m, "seed": s, "per_class_accuracy": {"shirt": v[s]}} for m, v in acc.items() for s in range(3)]
    rk = replicate_ranking(runs, "shirt", {0: 0, 1: 1, 2: 2})
    assert rk["overall"] == ["ti", "lora", "ti_i2i"]  # mean lifts 0.20, 0.117, 0.027
    assert rk["replicates"] == {0: ["ti", "lora", "ti_i2i"], 1: ["lora", "ti", "ti_i2i"], 2: ["ti", "lora", "ti_i2i"]}
    assert rk["same_order"] == 2 and rk["best_first"] == 2
    assert rk["tau"] == {0: 1.0, 1: pytest.approx(1 / 3), 2: 1.0}
    line = ranking_line(rk)
    assert "over 3 replicates" in line and "same order in 2 of 3" in line and "`ti` first in 2 of 3" in line
    one = replicate_ranking(runs, "shirt", {0: 0, 1: 0, 2: 0})  # replicates: 1: one replicate, said so
    assert list(one["replicates"]) == [0] and "one replicate" in ranking_line(one)
    assert replicate_ranking([r for r in runs if r["method"] in ("baseline", "ti")], "shirt", {}) is None
