import numpy as np
import pandas as pd
import pytest

from tibalance.analysis import per_class_metrics, select_weak_classes
from tibalance.seeds import kcenter_greedy, select_seed_indices
from tibalance.util import TibalanceError

CLASSES = ["a", "b", "c", "d"]


def _metrics():
    y_true = ["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    y_pred = ["a"] * 10 + ["b"] * 6 + ["a"] * 4 + ["c"] * 1 + ["d"] * 9 + ["d"] * 8 + ["b"] * 2
    return per_class_metrics(y_true, y_pred, CLASSES)


def test_per_class_metrics_values():
    m = _metrics().set_index("class")
    assert m.loc["a", "recall"] == 1.0 and m.loc["a", "precision"] == pytest.approx(10 / 14)
    assert m.loc["b", "accuracy"] == pytest.approx(0.6) and m.loc["b", "precision"] == pytest.approx(6 / 8)
    assert m.loc["c", "recall"] == pytest.approx(0.1) and m.loc["c", "precision"] == 1.0
    assert m.loc["c", "f1"] == pytest.approx(2 * 0.1 / 1.1)
    assert m.loc["d", "precision"] == pytest.approx(8 / 17)
    assert (m["support"] == 10).all()


def test_weak_class_strategies():
    m = _metrics()  # f1: a .83, b .67, c .18, d .62
    assert select_weak_classes(m, {"strategy": "bottom_k", "metric": "f1", "k": 2}) == ["c", "d"]
    assert select_weak_classes(m, {"strategy": "bottom_k", "metric": "recall", "k": 1}) == ["c"]
    assert select_weak_classes(m, {"strategy": "threshold", "metric": "f1", "threshold": 0.65}) == ["c", "d"]
    assert select_weak_classes(m, {"strategy": "explicit", "classes": ["B"]}) == ["b"]
    # include is added, exclude removed and its slot goes to the next-weakest
    assert select_weak_classes(m, {"strategy": "bottom_k", "k": 2, "include": ["a"], "exclude": ["c"]}) == ["a", "b", "d"]
    with pytest.raises(TibalanceError, match="analysis.classes: unknown class 'zebra'"):
        select_weak_classes(m, {"strategy": "explicit", "classes": ["zebra"]})


def test_kcenter_picks_spread_out_points():
    # three tight clusters: 3-center must take one point from each
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]], float)
    feats = np.concatenate([c + rng.normal(0, 0.1, (20, 2)) for c in centers])
    idx = kcenter_greedy(feats, 3, first=0)
    assert len(set(idx)) == 3 and idx[0] == 0
    assert sorted(i // 20 for i in idx) == [0, 1, 2]
    # asking for more than there are returns all, distinct
    assert sorted(kcenter_greedy(feats[:4], 10, first=2)) == [0, 1, 2, 3]


def test_seed_selection_prefers_recognised_images_and_reports_shortfall():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 8))
    conf = np.linspace(0, 1, 40)  # image 39 is the best recognised
    idx, note = select_seed_indices(feats, conf, n=5, candidate_fraction=0.25)
    assert idx[0] == 39 and len(set(idx)) == 5
    assert all(i >= 30 for i in idx)  # only the top quarter are candidates
    idx, note = select_seed_indices(feats[:3], conf[:3], n=5)
    assert sorted(idx) == [0, 1, 2] and "took them all" in note


def test_replicates_pick_other_good_diverse_seed_sets():
    """replicates: R > 1: replicate k > 0 runs the same k-center among a random
    half of the candidates, drawn with its own seed: another set of well-recognised
    images each time, reproducible from the seed; replicate 0 (no seed) as before."""
    rng = np.random.default_rng(1)
    feats, conf = rng.normal(size=(60, 8)), np.linspace(0, 1, 60)
    study, _ = select_seed_indices(feats, conf, n=5, candidate_fraction=0.5)
    assert study == select_seed_indices(feats, conf, n=5, candidate_fraction=0.5, replicate_seed=None)[0]
    reps = [select_seed_indices(feats, conf, n=5, candidate_fraction=0.5, replicate_seed=s)[0] for s in (11, 12, 13)]
    for idx in reps:
        assert len(set(idx)) == 5 and all(i >= 30 for i in idx)  # still among the best-recognised half
        assert idx != study
    assert len({tuple(sorted(i)) for i in reps}) == 3  # each replicate its own set
    assert reps[0] == select_seed_indices(feats, conf, n=5, candidate_fraction=0.5, replicate_seed=11)[0]
    few = select_seed_indices(feats[:5], conf[:5], n=5, replicate_seed=11)[0]
    assert sorted(few) == [0, 1, 2, 3, 4]  # only n images: every replicate gets them


def test_no_weak_class_stops_the_analysis_with_one_line(tmp_path):
    """strategy threshold below every class: a one-line stop at the analysis,
    before any adaptation or retraining is scheduled."""
    from tibalance.analysis import analyse

    y_true = ["a"] * 10 + ["b"] * 10 + ["c"] * 10 + ["d"] * 10
    pred = pd.DataFrame({"label": y_true, "pred": y_true, "split": "val"})
    pred.loc[3, "pred"] = "b"
    with pytest.raises(TibalanceError, match=r"no class is weak under strategy 'threshold' on val \(lowest f1: "):
        analyse(pred, CLASSES, {"strategy": "threshold", "metric": "f1", "threshold": 0.5},
                str(tmp_path / "pc.csv"), str(tmp_path / "cm.png"), str(tmp_path / "weak.json"))
    assert not (tmp_path / "weak.json").exists()
