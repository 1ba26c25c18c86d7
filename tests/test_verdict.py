"""The study's verdict: balanced counts, real-image-guided sampling, the filter,
the judge and the paired differences."""
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tibalance.filtering import knn_scores, score_samples
from tibalance.retrain import paired_deltas, summary_table
from tibalance.sampling import n_images_for
from tibalance.util import TibalanceError


def _manifest(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}{i}.png", c, "train") for c, n in counts.items() for i in range(n)]
    rows += [("t.png", "a", "test")] * 50  # other splits never count
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def test_balancing_count_refills_to_the_target():
    m = _manifest({"a": 100, "b": 100, "c": 60, "rare": 10})
    assert n_images_for("median", "rare", m) == 70      # median of 100, 100, 60, 10 = 80
    assert n_images_for("max", "rare", m) == 90
    assert n_images_for({"fill_to": 50}, "rare", m) == 40
    assert n_images_for(25, "rare", m) == 25             # an integer stays a count
    assert n_images_for("median", "a", m) == 0           # already at (above) the target: 0 images
    assert n_images_for("max", "b", m) == 0
    with pytest.raises(TibalanceError, match="sampling.n_images"):
        n_images_for("mean", "rare", m)


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
        filter_class("dark", str(samples), str(manifest), str(tmp_path / "model.pt"), settings, str(out))
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
