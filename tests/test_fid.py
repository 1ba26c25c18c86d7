"""FID/KID through torch-fidelity with the classifier's features (offline)."""
import numpy as np
import pytest
import torch
from PIL import Image

from tibalance.classifier import TrainedClassifier, build_model
from tibalance.fid import fid_kid
from tibalance.sources import draw_synthetic
from tibalance.util import TibalanceError


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fid")
    torch.manual_seed(0)
    ckpt = d / "clf.pt"
    TrainedClassifier(build_model("resnet18", 3), ["a", "b", "c"], "resnet18", 32).save(str(ckpt))
    out = {}
    for name, cls, seed in (("circles", "circle", 0), ("circles2", "circle", 1), ("stripes", "stripes", 2)):
        rng = np.random.default_rng(seed)
        paths = []
        for i in range(24):
            p = d / f"{name}{i}.png"
            Image.fromarray(draw_synthetic(cls, rng, 32)).save(p)
            paths.append(str(p))
        out[name] = paths
    return str(ckpt), out, d


def test_fid_kid_of_a_set_with_itself_is_zero_and_grows_with_difference(sets):
    ckpt, s, d = sets
    same = fid_kid(s["circles"], s["circles"], "classifier", classifier=ckpt)
    near = fid_kid(s["circles"], s["circles2"], "classifier", classifier=ckpt)
    far = fid_kid(s["circles"], s["stripes"], "classifier", classifier=ckpt)
    assert abs(same["fid"]) < 1e-3
    # KID is an unbiased estimate over random subsets: ~0 (noise) for a set with itself
    assert abs(same["kid_mean"]) < 0.1 * far["kid_mean"]
    assert far["fid"] > near["fid"] > same["fid"]
    assert far["kid_mean"] > near["kid_mean"] > same["kid_mean"]
    assert far["network"] == "classifier" and far["n_real"] == far["n_fake"] == 24


def test_real_features_are_cached_per_class(sets):
    ckpt, s, d = sets
    cache = d / "cache"
    a = fid_kid(s["circles"], s["stripes"], "classifier", classifier=ckpt, cache_root=str(cache),
                real_cache_name="circle-real")
    assert any(cache.rglob("*circle-real-classifier*"))
    b = fid_kid(s["circles"], s["stripes"], "classifier", classifier=ckpt, cache_root=str(cache),
                real_cache_name="circle-real")
    assert a["fid"] == pytest.approx(b["fid"])


def test_a_retrained_classifier_or_changed_real_images_never_reuse_the_cache(sets):
    """The same cache folder and class name: a classifier with other weights,
    or other bytes under the same real paths, computes the real side anew (a
    stale cache would give the first FID again)."""
    import shutil

    ckpt, s, d = sets
    cache, real = d / "cache-stale", d / "real-stale"
    real.mkdir()
    paths = [str(real / f"{i}.png") for i in range(len(s["circles"]))]
    for src, dst in zip(s["circles"], paths):
        shutil.copy(src, dst)
    first = fid_kid(paths, s["stripes"], "classifier", classifier=ckpt, cache_root=str(cache), real_cache_name="c")
    torch.manual_seed(1)
    other = d / "clf-retrained.pt"
    TrainedClassifier(build_model("resnet18", 3), ["a", "b", "c"], "resnet18", 32).save(str(other))
    fresh = fid_kid(paths, s["stripes"], "classifier", classifier=str(other), cache_root=str(cache))
    cached = fid_kid(paths, s["stripes"], "classifier", classifier=str(other), cache_root=str(cache),
                     real_cache_name="c")
    assert cached["fid"] == pytest.approx(fresh["fid"]) and cached["fid"] != pytest.approx(first["fid"])
    for src, dst in zip(s["circles2"], paths):  # same names, other images
        shutil.copy(src, dst)
    moved = fid_kid(paths, s["stripes"], "classifier", classifier=ckpt, cache_root=str(cache), real_cache_name="c")
    assert moved["fid"] == pytest.approx(
        fid_kid(s["circles2"], s["stripes"], "classifier", classifier=ckpt)["fid"])
    assert moved["fid"] != pytest.approx(first["fid"])


def test_fid_never_reads_the_test_split(tmp_path, monkeypatch):
    """stages.fid hands FID the class's val images only, whatever else the manifest holds."""
    import pandas as pd

    from tibalance import fid as fid_mod
    from tibalance import stages
    from tibalance.util import read_json

    rows = [(f"img/{split}/{cls}{i}.png", cls, split) for split in ("train", "val", "test") for cls in ("a", "b")
            for i in range(4)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"path": [f"s{i}.png" for i in range(5)]}).to_csv(samples, index=False)
    seen = []

    def spy(real, fake, network, **kw):
        seen.append(list(real))
        return {"network": network, "fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0, "n_real": len(real),
                "n_fake": len(fake)}

    monkeypatch.setattr(fid_mod, "fid_kid", spy)
    monkeypatch.setattr("tibalance.data.load_manifest", lambda p: pd.read_csv(p))
    stages.fid("a", str(manifest), "clf.pt", {"ti": str(samples)}, {"networks": ["classifier"]},
               str(tmp_path / "fid.json"), str(tmp_path / "cache"), str(tmp_path / "meta.json"))
    assert seen == [[f"img/val/a{i}.png" for i in range(4)]]
    assert read_json(tmp_path / "fid.json")["rows"][0]["n_real"] == 4


def test_too_few_images_is_a_clear_error(sets):
    ckpt, s, _ = sets
    with pytest.raises(TibalanceError, match="need at least 2 real"):
        fid_kid(s["circles"][:1], s["stripes"], "classifier", classifier=ckpt)


def test_inception_from_a_local_weights_file(sets, tmp_path, monkeypatch):
    """The standard network through metrics.inception_weights (here a locally
    created random-weights file: no Inception weights exist offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        m.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    _, s, _ = sets
    same = fid_kid(s["circles"][:12], s["circles"][:12], "inception", inception_weights=str(weights))
    far = fid_kid(s["circles"][:12], s["stripes"][:12], "inception", inception_weights=str(weights))
    assert same["network"] == "inception" and abs(same["fid"]) < 1e-3
    assert far["fid"] > same["fid"]
