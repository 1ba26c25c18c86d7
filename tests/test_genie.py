"""GeNIe's two decisions without a generator: the confusers from the baseline's
val confusion, and GeNIe-Ada's largest-jump level rule on hand-made vectors."""
import numpy as np
import pytest

from tibalance.genie import LEVELS, ada_level, confusers
from tibalance.util import TibalanceError


def test_confusers_are_the_classes_most_confused_with_the_weak_one_both_ways():
    classes = ["tshirt", "trouser", "pullover", "coat", "shirt"]
    cm = np.array([[50, 0, 1, 0, 9],    # 9 T-shirts predicted shirt
                   [0, 60, 0, 0, 0],
                   [0, 0, 40, 2, 3],     # 3 pullovers predicted shirt
                   [0, 0, 1, 45, 1],
                   [6, 0, 4, 2, 20]])   # shirts predicted T-shirt 6, pullover 4, coat 2
    assert confusers(cm, classes, "shirt") == ["tshirt", "pullover", "coat"]  # 15, 7, 3
    assert confusers(cm, classes, "shirt", k=1) == ["tshirt"]
    assert confusers(cm, classes, "shirt", k=None) == ["tshirt", "pullover", "coat"]  # never trouser: 0 confusions
    cm[4, 3] = 4  # coat ties pullover at 7: class order decides
    assert confusers(cm, classes, "shirt", k=2) == ["tshirt", "pullover"]
    with pytest.raises(TibalanceError, match="'sock'"):
        confusers(cm, classes, "sock")


def _along(share, source, target, off):
    """A unit vector whose projection is `share` of the way from source to target (plus an orthogonal part)."""
    return source + share * (target - source) + off


def test_ada_level_keeps_the_level_just_after_the_largest_jump():
    source, target = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    off = np.array([0, 0, 0.01])
    shares = [0.05, 0.1, 0.7, 0.8, 0.9]  # the jump from 0.6 to 0.7
    level, proj, jumps = ada_level(source, [_along(s, source, target, off) for s in shares], target)
    assert level == 0.7 and int(np.argmax(jumps)) == 1 and len(jumps) == 4
    assert np.all(np.diff(proj) > 0) and proj[0] < 0.2 < 0.6 < proj[2]
    # the largest jump last: 0.9; first: 0.6
    assert ada_level(source, [_along(s, source, target, off) for s in (0, .1, .2, .3, .9)], target)[0] == 0.9
    assert ada_level(source, [_along(s, source, target, off) for s in (0, .6, .7, .8, .9)], target)[0] == 0.6
    # a tie keeps the first of the largest jumps (three equal ones here)
    level, _, jumps = ada_level(source, [_along(s, source, target, 0) for s in (0, .8, 0, .8, .8)], target)
    assert level == 0.6 and jumps[0] == jumps[1] == jumps[2] > jumps[3]
    # scale does not matter (the embeddings are normalised), the direction's sign does (a step back is a jump too)
    outs = [3 * _along(s, source, target, 0) for s in (0, .1, .2, .3, .9)]
    assert ada_level(5 * source, outs, 2 * target)[0] == 0.9
    assert ada_level(source, [_along(s, source, target, 0) for s in (.5, .5, -.4, -.4, -.4)], target)[0] == 0.7


def test_ada_level_refuses_what_it_cannot_rank():
    source, target = np.array([1.0, 0]), np.array([0, 1.0])
    with pytest.raises(TibalanceError, match="4 edits for 5 levels"):
        ada_level(source, np.zeros((4, 2)) + target, target)
    with pytest.raises(TibalanceError, match="no direction"):
        ada_level(source, np.zeros((5, 2)) + source, source)
    assert LEVELS == (0.5, 0.6, 0.7, 0.8, 0.9)


def test_start_images_are_the_confusers_training_images_in_turn():
    import pandas as pd

    from tibalance.genie import start_images

    classes = ["tshirt", "trouser", "pullover", "shirt"]
    manifest = pd.DataFrame(
        [(f"train/{c}/{i}.png", c, "train") for c in classes for i in range(3)]
        + [(f"val/{c}/{i}.png", c, "val") for c in classes for i in range(2)]
        + [(f"test/{c}/0.png", c, "test") for c in classes], columns=["path", "label", "split"])
    # val: shirts taken for T-shirts twice, a pullover taken for a shirt once, trousers never confused
    preds = pd.DataFrame([("v1", "shirt", "val", "tshirt"), ("v2", "shirt", "val", "tshirt"),
                          ("v3", "pullover", "val", "shirt"), ("v4", "trouser", "val", "trouser"),
                          ("t1", "trouser", "test", "shirt")], columns=["path", "label", "split", "pred"])
    s = start_images(manifest, preds, classes, "shirt")
    assert list(s.source_class) == ["tshirt", "pullover"] * 3  # in turn, most confused first; trouser: only on test
    assert all(p.startswith("train/") for p in s.path)  # never a val or test image
    assert list(s.path[:2]) == ["train/tshirt/0.png", "train/pullover/0.png"]
    assert list(start_images(manifest, preds, classes, "shirt", k=1).source_class) == ["tshirt"] * 3
    with pytest.raises(TibalanceError, match="no val row"):
        start_images(manifest, preds[preds.split == "test"], classes, "shirt")
    with pytest.raises(TibalanceError, match="confuses no class with 'trouser'"):
        start_images(manifest, preds[preds.path != "t1"], classes, "trouser")


def test_the_classifier_chooses_the_level_where_the_edit_turns_into_the_target(tmp_path):
    """Edits that stay the source image up to 0.6 and are the target class's
    image from 0.7: whatever the network's weights, the largest jump of the
    projection is there, so GeNIe-Ada keeps 0.7 (a second start image turns
    at 0.9)."""
    import torch
    from conftest import random_images

    from tibalance.classifier import TrainedClassifier, build_model
    from tibalance.genie import choose_levels

    torch.manual_seed(0)
    clf = TrainedClassifier(build_model("resnet18", 3).eval(), ["a", "b", "c"], "resnet18", 32)
    src1, src2, target = random_images(tmp_path, 3, 32)
    picks = choose_levels(clf, [src1, src2], [[src1, src1, target, target, target],
                                              [src2, src2, src2, src2, target]], [target])
    assert [p["level"] for p in picks] == [0.7, 0.9]
    assert picks[0]["projections"][0] == pytest.approx(0, abs=1e-6)
    assert picks[0]["projections"][-1] == pytest.approx(1, abs=1e-6)
    with pytest.raises(TibalanceError, match="1 edit lists for 2 start images"):
        choose_levels(clf, [src1, src2], [[src1] * 5], [target])


def _genie_study(tmp_path):
    """Three classes' train, val and test images, the baseline's val predictions
    (shirts taken for T-shirts, a pullover for a shirt) and a saved classifier."""
    import pandas as pd
    import torch
    from conftest import random_images

    from tibalance.classifier import TrainedClassifier, build_model

    rows = []
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for j, c in enumerate(("tshirt", "pullover", "shirt")):
            folder = tmp_path / split / c
            folder.mkdir(parents=True)
            rows += [(p, c, split) for p in random_images(folder, n, 32, seed=10 * j + n)]
    manifest = pd.DataFrame(rows, columns=["path", "label", "split"])
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    val = manifest[manifest.split == "val"].assign(pred=lambda d: d.label)
    val.loc[val.label == "shirt", "pred"] = "tshirt"
    val.loc[val.index[val.label == "pullover"][0], "pred"] = "shirt"
    val.to_csv(tmp_path / "predictions.csv", index=False)
    torch.manual_seed(0)
    TrainedClassifier(build_model("resnet18", 3).eval(), ["tshirt", "pullover", "shirt"], "resnet18",
                      32).save(str(tmp_path / "model.pt"))
    return manifest


SAMPLING = {"n_images": 4, "steps": 4, "resolution": 32, "batch_size": 2, "guidance_scale": 2.0}


def _run(tiny_sd, tmp_path, mode, out, genie):
    from tibalance.genie import sample_genie

    return sample_genie(tiny_sd, mode, "shirt", "Shirt", SAMPLING, 7, str(tmp_path / "manifest.csv"),
                        str(tmp_path / out / "samples.csv"), str(tmp_path / out / "images"), genie,
                        ["tshirt", "pullover", "shirt"], str(tmp_path / "model.pt"), str(tmp_path / "predictions.csv"))


def test_genie_modes_edit_the_confusers_training_images_into_the_weak_class(tiny_sd, tmp_path):
    """genie_ada: every start a confuser's training image, each labelled the weak
    class, its level one of the levels, chosen per image and recorded with the
    projections; `genie` at a level is the adaptive run's candidate at it; a
    rerun makes the same bytes; val and test images are never opened (absent)."""
    import shutil

    import pandas as pd

    manifest = _genie_study(tmp_path)
    for split in ("val", "test"):  # the job must not need them
        shutil.rmtree(tmp_path / split)
    levels = [0.5, 0.9]
    assert _run(tiny_sd, tmp_path, "genie_ada", "ada", {"levels": levels}) == 4
    t = pd.read_csv(tmp_path / "ada" / "samples.csv")
    train = manifest[manifest.split == "train"].set_index("path").label
    assert len(t) == 4 and (t.label == "shirt").all() and (t.method == "genie_ada").all()
    assert list(t.source_class) == ["tshirt", "pullover", "tshirt", "pullover"]  # in turn, most confused first
    assert all(train[p] == c for p, c in zip(t.start_image, t.source_class))  # a confuser's training image
    assert set(t.strength) <= set(levels)
    assert all(len(str(p).split(";")) == 2 for p in t.projections)
    for _, r in t.iterrows():  # the kept image is its candidate at the chosen level
        cand = tmp_path / "ada" / "images" / "candidates" / f"{r['index']:05d}_{r.strength:g}.png"
        assert open(r.path, "rb").read() == cand.read_bytes()
    # genie at 0.9: the adaptive run's candidates at 0.9, byte for byte
    assert _run(tiny_sd, tmp_path, "genie", "fixed", {"level": 0.9}) == 4
    f = pd.read_csv(tmp_path / "fixed" / "samples.csv")
    assert (f.strength == 0.9).all() and f.projections.isna().all() and list(f.start_image) == list(t.start_image)
    for i, p in enumerate(f.path):
        assert open(p, "rb").read() == (tmp_path / "ada" / "images" / "candidates" / f"{i:05d}_0.9.png").read_bytes()
    # a rerun from scratch: the same images and levels; a rerun in place makes nothing
    assert _run(tiny_sd, tmp_path, "genie_ada", "again", {"levels": levels}) == 4
    t2 = pd.read_csv(tmp_path / "again" / "samples.csv")
    assert list(t2.strength) == list(t.strength)
    assert [open(p, "rb").read() for p in t2.path] == [open(p, "rb").read() for p in t.path]
    assert _run(tiny_sd, tmp_path, "genie_ada", "ada", {"levels": levels}) == 0
    # the early stop: past a share no higher level is made (here at once: the first level kept);
    # never passed: the full run's images and levels
    _run(tiny_sd, tmp_path, "genie_ada", "early", {"levels": levels, "early_stop": -1e9})
    e = pd.read_csv(tmp_path / "early" / "samples.csv")
    assert (e.strength == 0.5).all() and all(len(str(p).split(";")) == 1 for p in e.projections)
    assert sorted(q.name for q in (tmp_path / "early" / "images" / "candidates").glob("*.png")) == [
        f"{i:05d}_0.5.png" for i in range(4)]
    _run(tiny_sd, tmp_path, "genie_ada", "late", {"levels": levels, "early_stop": 1e9})
    late = pd.read_csv(tmp_path / "late" / "samples.csv")
    assert list(late.strength) == list(t.strength) and list(late.projections) == list(t.projections)
