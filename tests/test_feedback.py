"""Feedback-guided sampling (fg_i2i) on the tiny pipeline: scale 0 is ti_i2i
byte for byte; a guided step climbs the baseline classifier's criterion; it
guides the stated share of the steps."""
import pandas as pd
import pytest
import torch
from conftest import random_images

from tibalance.classifier import TrainedClassifier, build_model
from tibalance.feedback import Feedback
from tibalance.generator import load_pipeline
from tibalance.inversion import train_textual_inversion
from tibalance.sampling import img2img, sample_class
from tibalance.util import TibalanceError

S = {"n_images": 3, "steps": 4, "resolution": 32, "batch_size": 3, "guidance_scale": 2.0, "strength": 1.0}


def _classifier(path, classes=("boot", "bag")):
    torch.manual_seed(0)
    TrainedClassifier(build_model("resnet18", len(classes)).eval(), list(classes), "resnet18", 32).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def study(tiny_sd, tmp_path_factory):
    d = tmp_path_factory.mktemp("fg")
    (d / "boot").mkdir()
    real = random_images(d / "boot", 3, 32)
    pd.DataFrame({"path": real, "label": "boot", "split": "train"}).to_csv(d / "m.csv", index=False)
    train_textual_inversion(tiny_sd, real, "boot", "boot", {"steps": 2, "resolution": 32, "batch_size": 2,
                                                            "preview_images": 1, "preview_steps": 1}, 7,
                            str(d / "e.safetensors"), str(d / "loss.csv"), str(d / "p.png"), str(d / "r"))
    return d, _classifier(d / "model.pt")


def _run(tiny_sd, d, mode, out, **kw):
    sample_class(tiny_sd, mode, "boot", "boot", S, 0, str(d / "m.csv"), str(d / out / "s.csv"), str(d / out / "img"),
                 embeds=str(d / "e.safetensors"), placeholder="<boot>", **kw)
    t = pd.read_csv(d / out / "s.csv")
    return t, [open(p, "rb").read() for p in t.path]


def test_scale_zero_is_ti_i2i_byte_for_byte_and_a_scale_moves_the_images(tiny_sd, study, monkeypatch):
    d, clf = study
    ref, ref_bytes = _run(tiny_sd, d, "ti_i2i", "ti_i2i")
    zero, zero_bytes = _run(tiny_sd, d, "fg_i2i", "fg0", feedback={"scale": 0}, baseline_model=clf)
    assert zero_bytes == ref_bytes and list(zero.prompt) == list(ref.prompt) and list(zero.seed) == list(ref.seed)
    calls = []
    score = Feedback.score
    monkeypatch.setattr(Feedback, "score", lambda self, x: calls.append(len(x)) or score(self, x))
    _, guided = _run(tiny_sd, d, "fg_i2i", "fg", feedback={"scale": 0.5, "share": 0.5}, baseline_model=clf)
    assert calls == [3, 3]  # 4 steps at strength 1: the first half guided, the batch of 3 at once
    assert all(a != b for a, b in zip(guided, ref_bytes))
    with pytest.raises(TibalanceError, match="fg_i2i for class boot needs the baseline classifier"):
        _run(tiny_sd, d, "fg_i2i", "none", feedback={"scale": 0.5})


@pytest.mark.parametrize("criterion", ["entropy", "loss"])
def test_a_guided_step_climbs_the_criterion(tiny_sd, study, criterion):
    """One guided step at a small scale raises the criterion of the decoded
    latents (first-order ascent): the sign and the target are right."""
    d, clf_file = study
    pipe = img2img(load_pipeline(tiny_sd))
    pipe._num_timesteps = 4
    clf = TrainedClassifier.load(clf_file)
    clf.model.requires_grad_(False)
    guide = Feedback(0.05, 0.5, criterion, clf, clf.classes.index("boot"))
    lat = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    def total(latents):
        with torch.no_grad():
            return float(guide.score(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample).sum())

    moved = guide(pipe, 0, None, {"latents": lat.clone()})["latents"]
    assert total(moved) > total(lat)
    assert torch.equal(guide(pipe, 2, None, {"latents": lat.clone()})["latents"], lat)  # past the share: untouched
    with pytest.raises(TibalanceError, match="feedback.criterion"):
        Feedback(0.1, 0.5, "hardness", clf, 0)
