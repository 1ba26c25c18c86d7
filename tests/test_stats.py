"""The paired intervals and tests (tibalance.stats) against independent computations."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from tibalance.stats import comparisons, holm, lift_interval, sign_flip_test, verdict
from tibalance.util import TibalanceError


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


def test_lift_interval_two_stage_bootstrap():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, size=(3, 50)), rng.integers(0, 2, size=(3, 50))
    lift, low, high = lift_interval(a, b, n_boot=500, seed=7)
    assert lift == pytest.approx((a.mean(axis=1) - b.mean(axis=1)).mean())
    # the same draws by hand: per replicate the seeds, then the images
    g, stats = np.random.default_rng(7), []
    for _ in range(500):
        rows, cols = g.integers(0, 3, size=3), g.integers(0, 50, size=50)
        stats.append(np.mean([[a[r, c] - b[r, c] for c in cols] for r in rows]))
    assert (low, high) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])))
    assert low <= lift <= high
    assert lift_interval(a, a, n_boot=100) == (0.0, 0.0, 0.0)
    # a lift far larger than the noise: the interval excludes 0
    strong = np.ones((3, 50), dtype=int)
    assert lift_interval(strong, np.zeros_like(strong), n_boot=100)[1] == 1.0
    with pytest.raises(TibalanceError, match="seeds x images"):
        lift_interval(a, b[:, :10])


def test_holm():
    # hand-computed: sorted 0.01, 0.02, 0.04, 0.30 -> 4*0.01, max(.04, 3*.02), max(.06, 2*.04), max(.08, .30)
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([float("nan"), 0.02])
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.02)


def _preds(correct: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for cls, flags in correct.items():
        rows += [(f"{cls}/{i:03d}.png", cls, cls if ok else "other") for i, ok in enumerate(flags)]
    return pd.DataFrame(rows, columns=["path", "label", "pred"])


def test_comparisons_and_verdict():
    rng = np.random.default_rng(1)
    runs = {}
    for seed in (0, 1):
        runs[("baseline", seed)] = _preds({"weak": [0] * 14, "other": [1] * 10})
        runs[("oversample", seed)] = _preds({"weak": list(rng.random(14) < 0.5), "other": [1] * 10})
        runs[("ti", seed)] = _preds({"weak": list(rng.random(14) < 0.1), "other": [1] * 10})
    comp = comparisons(runs, ["weak"], ["baseline", "oversample", "ti"], seed=0, n_boot=200)
    assert set(zip(comp["method"], comp["reference"])) == {("oversample", "baseline"), ("ti", "baseline"),
                                                           ("ti", "oversample")}
    row = comp[(comp["method"] == "oversample") & (comp["reference"] == "baseline")].iloc[0]
    over = np.stack([runs[("oversample", s)].query("label == 'weak'").sort_values("path").eval("pred == label")
                     for s in (0, 1)]).astype(int)
    assert row["lift"] == pytest.approx(over.mean())
    assert row["p"] == pytest.approx(brute_force_sign_flip(over, np.zeros_like(over)), abs=1e-12)
    fam = comp[comp["reference"] == "baseline"]
    assert list(fam["p_holm"]) == pytest.approx(holm(fam["p"]))
    assert row["seeds"] == 2 and row["images"] == 14
    text = verdict(comp, {"weak": "Weak"})
    assert "### Weak" in text and "Best method: `oversample`" in text
    assert "Significant lift over `baseline` at 5%: `oversample`" in text
    # predictions on other images than the rest: one line naming the run
    runs[("ti", 1)] = _preds({"weak": [1] * 13, "other": [1] * 10})
    with pytest.raises(TibalanceError, match="ti seed 1"):
        comparisons(runs, ["weak"], ["baseline", "ti"])


def test_replicate_ranking_says_whether_the_order_holds_in_every_replicate():
    """Seeds 0-2 trained on replicates 0-2: the overall order is the mean lift's,
    each replicate's its own seeds'; counted and in words."""
    from tibalance.stats import ranking_line, replicate_ranking

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
