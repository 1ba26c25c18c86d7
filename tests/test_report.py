"""The report stage on a small study written by hand: the flag for weak classes
chosen on test, and the accuracy plot's error bars (paired differences)."""
import json

import numpy as np
import pandas as pd
import pytest

from tibalance import stages


def _study(tmp_path, split: str):
    """baseline and ti under 3 seeds on class `weak` (10 test images): ti is
    baseline + 2 images on every seed, while both accuracies vary by seed."""
    runs, preds = [], []
    for method, extra in (("baseline", 0), ("ti", 2)):
        for seed in range(3):
            right = 2 * seed + extra  # 0, 2, 4 (+2): the accuracies spread, their differences do not
            d = tmp_path / method / f"seed{seed}"
            d.mkdir(parents=True)
            p = pd.DataFrame({"path": [f"w{i}.png" for i in range(10)] + [f"o{i}.png" for i in range(10)],
                              "label": ["weak"] * 10 + ["other"] * 10})
            p["pred"] = ["weak" if i < right else "other" for i in range(10)] + ["other"] * 10
            p.to_csv(d / "predictions.csv", index=False)
            acc = {"weak": right / 10, "other": 1.0, "big": 1.0}  # big: a class with no test predictions here
            (d / "metrics.json").write_text(json.dumps({
                "method": method, "seed": seed, "accuracy": (right + 10) / 20, "macro_f1": 0.5,
                "per_class_accuracy": acc, "weak_accuracy": acc["weak"],
                "train_counts": {"weak": 5 if method == "baseline" else 9, "other": 50}}))
            runs.append(str(d / "metrics.json"))
            preds.append(str(d / "predictions.csv"))
    weak = tmp_path / "weak.json"
    weak.write_text(json.dumps({"classes": ["weak"], "split": split}))
    out = {k: str(tmp_path / "out" / v) for k, v in (
        ("summary_csv", "s.csv"), ("summary_md", "s.md"), ("per_class_csv", "pc.csv"), ("per_class_md", "pc.md"),
        ("acc_plot", "acc.png"), ("fid_plot", "fid.png"), ("significance_csv", "sig.csv"),
        ("significance_md", "sig.md"), ("verdict_md", "v.md"))}
    (tmp_path / "out").mkdir()
    return runs, preds, str(weak), out


@pytest.mark.parametrize("split", ["val", "test"])
def test_weak_classes_chosen_on_test_are_flagged_in_the_tables(tmp_path, split):
    runs, preds, weak, out = _study(tmp_path, split)
    stages.report(runs, [], weak, predictions=preds, **out)
    flagged = [("chosen on the test split" in open(out[k]).read()) for k in ("summary_md", "verdict_md")]
    assert flagged == [split == "test"] * 2


def test_accuracy_plot_error_bars_are_the_paired_differences_spread(tmp_path, monkeypatch):
    """ti - baseline is +0.2 on every seed while each method's accuracy has
    std 0.2: the bar's error is 0 (the paired spread), not 0.2."""
    import matplotlib.axes

    seen = []
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, height, *a, yerr=None, **kw):
        seen.append((list(np.atleast_1d(height)), None if yerr is None else list(np.atleast_1d(yerr))))
        return real_bar(self, x, height, *a, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    runs, preds, weak, out = _study(tmp_path, "val")
    stages.report(runs, [], weak, predictions=preds, **out)
    assert seen == [([pytest.approx(0.2)], [pytest.approx(0.0)])]


@pytest.mark.parametrize("long_tail", [False, True])
def test_groups_of_classes_in_the_verdict_and_the_plot(tmp_path, monkeypatch, long_tail):
    """weak and other (5 training images each: few-shot) and big (500:
    many-shot). The plot adds a bar for the few-shot group (the mean of weak's
    +0.2 and other's 0 on every seed: +0.1, spread 0), none for the many-shot
    group of one class (it would repeat the class's). Only in a long-tailed
    study (one weak class here) the few-shot group gets rows of its own, all
    descriptive; the many-shot group of one class gets none."""
    import matplotlib.axes

    seen = []
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, height, *a, yerr=None, **kw):
        seen.append((list(np.atleast_1d(height)), list(np.atleast_1d(yerr))))
        return real_bar(self, x, height, *a, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    runs, preds, weak, out = _study(tmp_path, "val")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": ["big", "other", "weak"],
                                   "names": {"weak": "Weak", "other": "Other", "big": "Big"},
                                   "counts": {"weak": {"train": 5}, "other": {"train": 5}, "big": {"train": 500}}}))
    stages.report(runs, [], weak, predictions=preds, classes=str(classes), long_tail=long_tail, **out)
    assert seen == [([pytest.approx(0.2), pytest.approx(0.1)],  # Weak, few-shot (Other, Weak); no many-shot bar
                     [pytest.approx(0.0, abs=1e-12)] * 2)]
    sig = pd.read_csv(out["significance_csv"])
    summary = pd.read_csv(out["summary_csv"]).set_index("method")
    assert summary.loc["ti", "acc_few_mean"] == pytest.approx((summary.loc["ti", "acc_Weak_mean"] + 1.0) / 2)
    text = open(out["verdict_md"]).read()
    assert "many-shot" not in text and "p_many-shot" not in summary.columns
    if not long_tail:
        assert list(sig["class"].unique()) == ["Weak"] and "-shot" not in text
        return
    assert list(sig["class"].unique()) == ["Weak", "few-shot group (Weak, Other)"]
    few = sig[sig["class"] == "few-shot group (Weak, Other)"]
    assert (few["role"] == "descriptive").all() and not few["significant"].any()
    assert few.iloc[0]["lift"] == pytest.approx(0.1) and few.iloc[0]["images"] == 20
    assert "### few-shot group (Weak, Other)" in text
