"""Fine-tuning above frozen stages with their outputs computed once
(tibalance/frozen.py: rule frozen_features, classifier.augment: flip)."""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_images

from tibalance import frozen
from tibalance.classifier import TrainedClassifier, predict
from tibalance.training import train_classifier
from tibalance.util import TibalanceError

CFG = {"arch": "resnet18", "image_size": 16, "epochs": 2, "batch_size": 8, "lr": 0.05, "device": "cpu"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A manifest of 24 training and 10 test images (two classes), a start
    classifier trained on them and its frozen_features file (layer4, flip)."""
    root = tmp_path_factory.mktemp("frozen")
    for sub in ("train", "test", "synthetic"):
        (root / sub).mkdir()
    train = random_images(root / "train", 24, 20, seed=1)
    test = random_images(root / "test", 10, 20, seed=2)
    labels = ["a", "b"] * 12
    m = pd.DataFrame({"path": train + test, "label": labels + ["a", "b"] * 5,
                      "split": ["train"] * 24 + ["test"] * 10})
    m.to_csv(root / "manifest.csv", index=False)
    start = train_classifier(train, labels, ["a", "b"], CFG, seed=0)
    start.save(str(root / "start.pt"))
    counts = frozen.write_frozen_features(str(root / "manifest.csv"), str(root / "start.pt"), "layer4", "flip",
                                          str(root / "frozen.pt"))
    return {"root": root, "train": train, "test": test, "labels": labels, "counts": counts,
            "start": str(root / "start.pt"), "cache": str(root / "frozen.pt")}


def test_the_cache_holds_what_the_frozen_stages_compute(study):
    """Both views of each training image and the test images: the stem and
    layer1-3 of the start classifier on the evaluation's view (mirrored for
    view 1); the classifier's probabilities from the cached test outputs are the
    whole forward's."""
    assert study["counts"] == {"test": 10, "train": 24}
    clf = TrainedClassifier.load(study["start"])
    clf.model.to(memory_format=torch.channels_last)  # as a training run holds it
    cache = frozen.FrozenFeatures(study["cache"], study["start"], "layer4", 16)
    lower, _ = frozen.split_model(clf.model, "layer4")
    images = frozen.eval_view(study["train"], 16)
    views, found = cache.lookup("train", study["train"])
    assert found.all() and views.shape == (24, 2, 256, 1, 1)
    with torch.no_grad():
        x = frozen.normalise(images.float() / 255)
        assert torch.allclose(views[:, 0], lower(x), atol=1e-6)
        assert torch.allclose(views[:, 1], lower(x.flip(-1)), atol=1e-6)
        assert not torch.allclose(views[:, 0], views[:, 1])
    full = predict(clf, study["test"])[0]
    cached = frozen.predict_cached(clf, study["test"], cache, "layer4")
    assert np.allclose(full, cached, atol=1e-6)
    # an image the cache lacks takes the whole forward
    mixed = frozen.predict_cached(clf, study["test"][:3] + study["train"][:2], cache, "layer4")
    assert np.allclose(mixed, predict(clf, study["test"][:3] + study["train"][:2])[0], atol=1e-6)


def test_training_on_cached_outputs_is_training_on_live_ones(study):
    """augment flip with layer4 frozen: the same seed gives the same weights
    whether the real images' outputs come from the cache or from the frozen
    stages in the run; synthetic images (not in the cache) and images flagged
    for the classic augmentation go through the frozen stages in the run."""
    synthetic = random_images(study["root"] / "synthetic", 6, 20, seed=3)
    paths, labels = study["train"] + synthetic, study["labels"] + ["b"] * 6
    flags = [False] * 24 + [False] * 3 + [True] * 3
    flags[0] = True  # a real image with the classic augmentation: live too
    cfg = {**CFG, "freeze_below": "layer4", "augment": "flip", "epochs": 1, "lr": 0.005}
    runs = [train_classifier(paths, labels, ["a", "b"], cfg, seed=4, augment_flags=flags, init=study["start"],
                             frozen_cache=cache) for cache in (study["cache"], None)]
    a, b = (r.model.state_dict() for r in runs)
    # the same sums (bit for bit on an AVX512 CPU; on AVX2 the frozen stages' kernels round by batch
    # shape, which one epoch on these random images carries to ~2e-4 of a tensor's norm; a wrong view
    # or image would differ by its whole size)
    rel = {k: float((a[k].float() - b[k].float()).norm() / (b[k].float().norm() + 1e-12)) for k in a}
    assert max(rel.values()) < 1e-3, sorted(rel.items(), key=lambda kv: kv[1])[-3:]
    start = TrainedClassifier.load(study["start"]).model.state_dict()
    assert not torch.equal(a["fc.weight"], start["fc.weight"])
    assert torch.equal(a["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])
    ints = [int(lbl == "b") for lbl in labels]
    lower, _ = frozen.split_model(TrainedClassifier.load(study["start"]).model, "layer4")
    loader = frozen.ViewBatches(paths, ints, 16, 8, torch.Generator().manual_seed(0), lower,
                                flags, cache=frozen.FrozenFeatures(study["cache"], study["start"], "layer4", 16))
    assert (loader.n_cached, loader.n_live) == (24, 1 + 6)
    # an epoch is a permutation of the images; flip without a freeze trains every stage on images
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (8, 256, 1, 1) for x, _ in batches)
    whole = train_classifier(paths, labels, ["a", "b"], {**CFG, "augment": "flip", "epochs": 1}, seed=4)
    assert not torch.equal(whole.model.conv1.weight, TrainedClassifier.load(study["start"]).model.conv1.weight)


def test_a_cache_of_another_start_or_cut_is_refused(study, tmp_path):
    other = train_classifier(study["train"], study["labels"], ["a", "b"], CFG, seed=9)
    other.save(str(tmp_path / "other.pt"))
    with pytest.raises(TibalanceError, match=r"frozen.pt: computed with another classifier than .*other.pt; delete it"):
        frozen.FrozenFeatures(study["cache"], str(tmp_path / "other.pt"), "layer4", 16)
    with pytest.raises(TibalanceError, match=r"frozen.pt: computed for below 'layer4', this run has 'layer3'"):
        frozen.FrozenFeatures(study["cache"], study["start"], "layer3", 16)
    with pytest.raises(TibalanceError, match="classifier.augment: unknown value 'crop'"):
        train_classifier(study["train"], study["labels"], ["a", "b"], {**CFG, "augment": "crop"}, seed=0)
