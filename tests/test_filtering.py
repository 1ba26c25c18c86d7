"""The filter: k-NN scores in the baseline's feature space, kept by quantile, never a test image."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tibalance.filtering import diversity, knn_scores, score_samples
from tibalance.util import TibalanceError


def test_knn_score_is_high_near_the_class_and_low_near_others():
    rng = np.random.default_rng(0)
    own = rng.normal([5, 0, 0], 0.3, (10, 3))
    other = rng.normal([0, 5, 0], 0.3, (1000, 3))        # 100x more images of the other class
    near_own = rng.normal([5, 0.5, 0], 0.3, (20, 3))
    near_other = rng.normal([0.5, 5, 0], 0.3, (20, 3))
    s_own, s_other = knn_scores(near_own, own, other, 5), knn_scores(near_other, own, other, 5)
    assert (s_own > 0.5).all() and (s_other < 0.5).all()
    assert ((0 < s_own) & (s_own < 1)).all()


def _img(path, value):
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)
    return str(path)


def test_diversity_is_the_mean_pairwise_cosine_distance():
    same = np.tile([[1.0, 2.0, 3.0]], (5, 1))
    assert diversity(same) == pytest.approx(0.0, abs=1e-12)  # identical images: none
    pair = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = 1 / np.sqrt(2)
    assert diversity(pair) == pytest.approx(((1 - 0) + (1 - c) + (1 - c)) / 3)
    assert diversity(pair[:1]) is None


def test_filter_keeps_by_its_recorded_score_and_never_reads_test_images(tmp_path):
    """The kept flag is score >= threshold; val/test images are unreadable here,
    so a filter that opened one would fail."""
    from tibalance.filtering import filter_class
    from tibalance.training import train_classifier

    rows = []
    for cls, value in (("dark", 20), ("light", 230)):
        for i in range(12):
            rows.append((_img(tmp_path / f"{cls}{i}.png", value + i), cls, "train"))
        for split in ("val", "test"):
            bad = tmp_path / f"{cls}_{split}.png"
            bad.write_bytes(b"not an image")
            rows.append((str(bad), cls, split))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    train = [r for r in rows if r[2] == "train"]
    clf = train_classifier([r[0] for r in train], [r[1] for r in train], ["dark", "light"],
                           {"arch": "resnet18", "image_size": 16, "epochs": 1, "batch_size": 8, "lr": 0.01,
                            "device": "cpu"}, seed=0)
    clf.save(tmp_path / "model.pt")
    fake = [_img(tmp_path / f"fake{i}.png", v) for i, v in enumerate([25, 28, 225, 228, 120])]
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"path": fake, "label": "dark"}).to_csv(samples, index=False)
    for settings in ({"method": "knn", "k": 3, "quantile": 0.25}, {"method": "prob", "threshold": 0.5}):
        out = tmp_path / f"filtered_{settings['method']}.csv"
        got = filter_class("dark", str(samples), str(manifest), str(tmp_path / "model.pt"), settings, str(out))
        t = pd.read_csv(out)
        assert list(t.path) == fake and t.score.notna().all()
        assert list(t.kept) == list(t.score >= t.cutoff)
    assert (pd.read_csv(tmp_path / "filtered_prob.csv").cutoff == 0.5).all()
    knn = pd.read_csv(tmp_path / "filtered_knn.csv")
    # the cutoff is the 0.25 quantile of the 12 real dark images' own (leave-one-out) scores
    from tibalance.classifier import predict

    _, feats = predict(clf, [r[0] for r in train])
    own, other = feats[:12], feats[12:]
    real = knn_scores(own, own, other, 3, leave_self_out=True)
    assert knn.cutoff.iloc[0] == pytest.approx(np.quantile(real, 0.25), rel=1e-5)
    assert knn.score[:2].min() > knn.score[2:4].max()  # the dark fakes score above the light ones
    assert not knn.kept[2:4].any()  # the light fakes are dropped
    # the diversity of the kept images in the same feature space (prob's the last in the loop)
    from tibalance.classifier import predict as _predict

    fake_feats = _predict(clf, fake)[1]
    kept_prob = pd.read_csv(tmp_path / "filtered_prob.csv").kept.to_numpy()
    assert got["diversity"] == pytest.approx(diversity(fake_feats))
    # float32 features: cosine distances agree to ~1e-7, whatever the batch the features came in
    assert got["diversity_kept"] == (pytest.approx(diversity(fake_feats[kept_prob]), abs=1e-6)
                                     if kept_prob.sum() > 1 else None)
    if 1 < kept_prob.sum() < len(kept_prob):  # the kept set's, not the whole set's (far apart at this tolerance)
        assert abs(got["diversity"] - got["diversity_kept"]) > 1e-3
    off = score_samples(pd.DataFrame({"path": fake}), pd.DataFrame(columns=["path", "label"]), "dark", clf,
                        {"method": "none"})
    assert off.kept.all() and off.score.isna().all()

    # the shared features file (rule train_features) gives the same table, byte for byte,
    # without the filter reading a training image; one of other images is refused
    from tibalance.filtering import write_train_features

    feats_file = tmp_path / "train_features.npz"
    assert write_train_features(str(manifest), str(tmp_path / "model.pt"), str(feats_file)) == 24
    for r in train:
        os.rename(r[0], r[0] + ".hidden")  # a filter that opened a training image would fail now
    out = tmp_path / "filtered_shared.csv"
    filter_class("dark", str(samples), str(manifest), str(tmp_path / "model.pt"),
                 {"method": "knn", "k": 3, "quantile": 0.25}, str(out), str(feats_file))
    assert out.read_bytes() == (tmp_path / "filtered_knn.csv").read_bytes()
    m = pd.read_csv(manifest)
    pd.concat([m, m.iloc[:1].assign(path="extra.png")]).to_csv(tmp_path / "manifest2.csv", index=False)
    with pytest.raises(TibalanceError, match="train_features.npz: features of other training images"):
        filter_class("dark", str(samples), str(tmp_path / "manifest2.csv"), str(tmp_path / "model.pt"),
                     {"method": "knn", "k": 3, "quantile": 0.25}, str(out), str(feats_file))
