
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tibalance.retrain import build_training_set, class_groups, paired_deltas, summary_table, to_markdown

TRAIN = pd.DataFrame({"path": [f"a{i}" for i in range(10)] + ["w0", "w1"], "label": ["a"] * 10 + ["w"] * 2})
SYNTH = {"w": [f"s{i}" for i in range(5)]}


def counts(df):
    return df.groupby("label").size().to_dict()


def test_mixing_modes_give_the_promised_class_counts():
    assert counts(build_training_set(TRAIN, ["w"], "baseline", SYNTH)) == {"a": 10, "w": 2}
    add = build_training_set(TRAIN, ["w"], "ti", SYNTH, "add")
    assert counts(add) == {"a": 10, "w": 7} and set(add[add.label == "w"].path) == {"w0", "w1", *SYNTH["w"]}
    over = build_training_set(TRAIN, ["w"], "oversample", {}, balanced={"w": 5})
    assert counts(over) == {"a": 10, "w": 7}  # real images repeated up to real + the refill count
    assert set(over[over.label == "w"].path) == {"w0", "w1"} and over[over.classic].label.eq("w").all()
    assert over.classic.sum() == 5
    rep = build_training_set(TRAIN, ["w"], "raw_sd", SYNTH, "replace")
    assert counts(rep) == {"a": 10, "w": 2}  # counts unchanged, weak images may be swapped
    assert all(a == SYNTH["w"] for a in rep[rep.label == "w"].alternatives)
    assert rep[rep.label == "a"].alternatives.isna().all()


def test_replace_mode_swaps_with_probability_p(tmp_path):
    import numpy as np

    from tibalance.classifier import ImageCache, ImageListDataset

    real, fake = tmp_path / "r.png", tmp_path / "f.png"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(real)
    Image.new("RGB", (8, 8), (255, 255, 255)).save(fake)
    ds = ImageListDataset([str(real)] * 400, [0] * 400, lambda im: np.asarray(im).mean(), ImageCache(8),
                          alternatives=[[str(fake)]] * 400, replace_p=0.5)
    torch.manual_seed(0)
    swapped = np.mean([ds[i][0] > 128 for i in range(400)])
    assert 0.4 < swapped < 0.6


def test_synthetic_on_top_of_oversampling_holds_the_stated_proportion():
    """oversample+<method>: the oversample set (real + the balanced count of
    repeats, the same repeats as `oversample` under the same seed), every one of
    its weak-class rows swappable for the mode's kept images; the trainer's batches
    swap them at combine_p: the expected synthetic share of the class's draws."""

    from tibalance.classifier import _IndexedBatches

    kept = {"w": SYNTH["w"][:3]}  # the filter kept 3 of the mode's 5 images
    over = build_training_set(TRAIN, ["w"], "oversample", {}, seed=4, balanced={"w": 5})
    both = build_training_set(TRAIN, ["w"], "oversample+ti_i2i", kept, seed=4, balanced={"w": 5})
    assert counts(both) == counts(over) == {"a": 10, "w": 7}
    assert list(both.path) == list(over.path) and list(both.classic) == list(over.classic)
    weak = both[both.label == "w"]
    assert all(a == kept["w"] for a in weak.alternatives) and both[both.label == "a"].alternatives.isna().all()
    # the trainer's draws over many epochs: how often a synthetic image stands in for a weak row
    batches = _IndexedBatches.__new__(_IndexedBatches)
    uniq = batches._index(list(both.path), [0] * len(both), 4, torch.Generator().manual_seed(0),
                          list(both.classic), list(both.alternatives), 0.3, False)
    drawn = pd.Series([uniq[i] for _ in range(400) for _, idx in batches._batches() for i in idx.tolist()])
    weak_draws = drawn[drawn.str.startswith(("w", "s"))]
    assert len(weak_draws) == 400 * 7 and (drawn.str.startswith("a")).sum() == 400 * 10
    assert weak_draws.str.startswith("s").mean() == pytest.approx(0.3, abs=0.03)
    assert set(weak_draws[weak_draws.str.startswith("s")]) == set(kept["w"])


def test_summary_mean_std():
    runs = [{"method": "ti", "accuracy": a, "macro_f1": a, "weak_accuracy": a} for a in (0.5, 0.7)]
    s = summary_table(runs).iloc[0]
    assert s.accuracy_mean == pytest.approx(0.6) and s.accuracy_std == pytest.approx(0.1414213, rel=1e-5)
    assert "0.6000 ± 0.1414" in to_markdown(summary_table(runs))


def test_group_accuracy_from_the_training_counts():
    """many > 100 training images, few < 20, medium between (the thresholds
    settings); the summary's group accuracy is the mean of its classes', per
    run, then mean ± std over the seeds; one populated group shows none."""
    counts = {"a": 1000, "b": 101, "c": 100, "d": 20, "e": 19, "f": 1}
    assert class_groups(counts) == {"many": ["a", "b"], "medium": ["c", "d"], "few": ["e", "f"]}
    assert class_groups(counts, many=500, few=2) == {"many": ["a"], "medium": ["b", "c", "d", "e"], "few": ["f"]}
    with pytest.raises(Exception, match="few \\(30\\) is above many \\(10\\)"):
        class_groups(counts, many=10, few=30)
    groups = class_groups(counts)
    acc = [{"a": 0.9, "b": 0.7, "c": 0.6, "d": 0.4, "e": 0.2, "f": 0.0},
           {"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.6, "e": 0.4, "f": 0.2}]
    runs = [{"method": "baseline", "seed": s, "accuracy": 0.5, "macro_f1": 0.5, "weak_accuracy": 0.1,
             "per_class_accuracy": a} for s, a in enumerate(acc)]
    t = summary_table(runs, ["f"], groups).set_index("method")
    assert t.loc["baseline", "acc_many_mean"] == pytest.approx(np.mean([0.8, 0.9]))
    assert t.loc["baseline", "acc_few_mean"] == pytest.approx(0.2)
    assert t.loc["baseline", "acc_few_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert t.loc["baseline", "acc_medium_mean"] == pytest.approx(0.55)
    assert "acc_many_mean" not in summary_table(runs, ["f"], {"many": list(counts), "few": []}).columns


def test_fid_from_too_few_images_is_marked_in_the_tables():
    """FID/KID below the stated minimum (either side) keep their value but carry
    '(few)'; a set that had no FID at all says n/a; full-size sets stay numbers."""
    from tibalance.retrain import per_class_table, to_markdown

    runs = [{"method": "baseline", "seed": 0, "per_class_accuracy": {"shirt": 0.1}}]
    fid = {"shirt": [
        {"method": "raw", "network": "classifier", "fid": 12.5, "kid_mean": 0.01, "n_fake": 990, "n_real": 300},
        {"method": "ti", "network": "classifier", "fid": 80.0, "kid_mean": 0.2, "n_fake": 4, "n_real": 300},
        {"method": "ti_i2i", "network": "classifier", "fid": None, "kid_mean": None, "n_fake": 0, "n_real": 300}]}
    t = per_class_table(runs, ["shirt"], fid, fid_min_images=100).set_index("class")
    assert t.loc["shirt", "fid_raw_classifier"] == 12.5 and t.loc["shirt", "kid_raw_classifier"] == 0.01
    assert t.loc["shirt", "fid_ti_classifier"] == "80.0000 (few)" and t.loc["shirt", "kid_ti_classifier"] == "0.2000 (few)"
    assert t.loc["shirt", "fid_ti_i2i_classifier"] == "n/a"
    assert "80.0000 (few)" in to_markdown(t.reset_index())
    # the minimum counts the real side too
    t = per_class_table(runs, ["shirt"], fid, fid_min_images=400).set_index("class")
    assert t.loc["shirt", "fid_raw_classifier"] == "12.5000 (few)"


def test_tables_name_classes_as_the_dataset_spells_them():
    from tibalance.retrain import display_names

    names = {"shirt": "Shirt", "t_shirt_top": "T-shirt/top", "sword_lily": "sword lily"}
    df = pd.DataFrame({"class": ["shirt", "all (mean)"], "most_often": ["t_shirt_top", ""],
                       "acc_t_shirt_top_mean": [0.1, 0.2], "acc_shirt_std": [0.0, 0.0], "delta_sword_lily_mean": [1, 2],
                       "improved_shirt": ["1/3", ""], "n_shirt": [3, 4], "acc_baseline_mean": [0.5, 0.5],
                       "judge_ti_others": ["t_shirt_top 0.61, sword_lily 0.02", ""]})
    out = display_names(df, names)
    assert list(out["class"]) == ["Shirt", "all (mean)"] and list(out["most_often"]) == ["T-shirt/top", ""]
    assert list(out.columns) == ["class", "most_often", "acc_T-shirt/top_mean", "acc_Shirt_std",
                                 "delta_sword lily_mean", "improved_Shirt", "n_Shirt", "acc_baseline_mean",
                                 "judge_ti_others"]
    assert out["judge_ti_others"][0] == "T-shirt/top 0.61, sword lily 0.02"


def test_slugs_fold_accents_and_never_lose_a_class():
    from tibalance.util import slugify

    assert slugify("Löwenzahn") == "lowenzahn" and slugify("Ærø rose") == "aero_rose"
    assert slugify("Crème brûlée") == "creme_brulee" and slugify("T-shirt/top") == "t_shirt_top"
    assert slugify("日本").startswith("class_") and slugify("日本") != slugify("中国")


def _run(method, seed, acc):
    return {"method": method, "seed": seed, "accuracy": acc, "macro_f1": acc, "weak_accuracy": acc,
            "per_class_accuracy": {"w": acc}}


def test_paired_differences_are_per_seed():
    runs = [_run("baseline", s, a) for s, a in ((0, 0.1), (1, 0.3), (2, 0.2))]
    runs += [_run("ti", s, a) for s, a in ((2, 0.25), (0, 0.2), (1, 0.2))]
    assert paired_deltas(runs, "ti", "w") == pytest.approx([0.1, -0.1, 0.05])
    row = summary_table(runs, ["w"]).set_index("method").loc["ti"]
    assert row.delta_w_mean == pytest.approx(np.mean([0.1, -0.1, 0.05]))
    assert row.delta_w_std == pytest.approx(np.std([0.1, -0.1, 0.05], ddof=1))
    assert row.improved_w == "2/3"
