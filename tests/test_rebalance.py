"""The re-balancing yardsticks without a generator: OPeN's pure-noise images,
class-weighted cross-entropy (inverse frequency, effective number) and its
deferred form (DRW)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import pixel_images as _images
from PIL import Image

from tibalance.rebalance import class_weights, cutmix, defer_epoch, noise_count, noise_images, pixel_stats
from tibalance.retrain import build_training_set
from tibalance.training import train_classifier
from tibalance.util import TibalanceError


def test_noise_images_have_the_class_statistics_and_the_stated_share(tmp_path):
    real = _images(tmp_path, 6, [60, 120, 180], [10, 25, 40])
    mean, std, size = pixel_stats(real)
    noise = noise_images(real, 12, 5, str(tmp_path / "noise"))
    assert len(noise) == 12 and all(Image.open(p).size == size == (24, 24) for p in noise)
    px = np.concatenate([np.asarray(Image.open(p), float).reshape(-1, 3) for p in noise])
    assert np.allclose(px.mean(0), mean, atol=1.0) and np.allclose(px.std(0), std, rtol=0.03)
    assert not np.allclose(mean, mean[0])  # per channel, not one grey level
    # the same draw again (a rerun), fewer images leave none of the more
    assert [Image.open(p).tobytes() for p in noise_images(real, 12, 5, str(tmp_path / "noise"))] == [
        Image.open(p).tobytes() for p in noise]
    noise_images(real, 3, 5, str(tmp_path / "noise"))
    assert len(list((tmp_path / "noise").glob("*.png"))) == 3

    # the share: of the class's 30 oversampled images, a third noise and the rest repeats of its real ones
    assert noise_count(30, 1 / 3) == 10 and noise_count(30, 0) == 0 and noise_count(30, 1) == 30
    with pytest.raises(TibalanceError, match="retrain.noise.share"):
        noise_count(30, 1.5)
    train = pd.DataFrame({"path": real + ["a.png", "b.png"], "label": ["rare"] * 6 + ["big"] * 2})
    ts = build_training_set(train, ["rare"], "noise_static", {}, balanced={"rare": 30}, noise={"rare": noise[:10]})
    added = ts.iloc[len(train):]
    assert len(added) == 30 and (added.label == "rare").all()
    assert list(added.path[:10]) == noise[:10] and not added.classic[:10].any()  # noise, as drawn
    assert set(added.path[10:]) <= set(real) and added.classic[10:].all()  # oversample's repeats
    over = build_training_set(train, ["rare"], "oversample", {}, balanced={"rare": 30})
    assert len(over) == len(ts)  # the same count as oversample's


def test_class_weights_by_hand():
    counts = {"a": 100, "b": 10, "c": 1}
    w = class_weights(counts, ["a", "b", "c"], "inverse")
    inv = np.array([1 / 100, 1 / 10, 1])
    assert np.allclose(w, inv / inv.sum() * 3) and sum(w) == pytest.approx(3)
    beta = 0.99
    eff = np.array([(1 - beta) / (1 - beta ** n) for n in (100, 10, 1)])
    assert np.allclose(class_weights(counts, ["a", "b", "c"], "effective", beta), eff / eff.sum() * 3)
    # beta -> 0: every class weighs the same (no re-weighting)
    assert np.allclose(class_weights(counts, ["a", "b", "c"], "effective", 1e-9), [1, 1, 1])
    with pytest.raises(TibalanceError, match="class 'd' has no training image"):
        class_weights(counts, ["a", "d"])
    assert defer_epoch(None, 10) == 8 and defer_epoch(None, 2) == 1 and defer_epoch(3, 10) == 3
    with pytest.raises(TibalanceError, match="defer_epoch: 10 is not one of the run's epochs 0-9"):
        defer_epoch(10, 10)


def test_the_weighted_loss_and_its_deferral(tmp_path, monkeypatch):
    """reweight's loss on a batch is the weighted cross-entropy computed by hand;
    drw's batches are unweighted before the deferral epoch and weighted from it."""
    rare = _images(tmp_path, 2, [200, 50, 50], [20, 20, 20], seed=1)
    (tmp_path / "big").mkdir()
    big = _images(tmp_path / "big", 6, [50, 50, 200], [20, 20, 20], seed=2)
    paths, labels = rare + big, ["rare"] * 2 + ["big"] * 6
    weights = class_weights({"rare": 2, "big": 6}, ["big", "rare"], "inverse")
    calls = []
    ce = torch.nn.functional.cross_entropy

    def spy(logits, target, weight=None, *a, **kw):
        loss = ce(logits, target, weight, *a, **kw)
        calls.append((logits.detach().clone(), target.clone(), None if weight is None else weight.clone(),
                      loss.detach().clone()))
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 3, "batch_size": 8, "lr": 0.01}
    train_classifier(paths, labels, ["big", "rare"], cfg, 0, class_weights=weights, weight_from_epoch=2)
    assert len(calls) == 3  # every image in one batch (both classes in each), 3 epochs
    assert [w is not None for *_, w, _ in calls] == [False, False, True]  # switched at epoch 2
    logits, target, w, loss = calls[2]
    logp = torch.log_softmax(logits.float(), 1)
    wy = torch.tensor(weights, dtype=torch.float32)[target]
    hand = -(wy * logp[torch.arange(len(target)), target]).sum() / wy.sum()
    assert torch.equal(w.cpu(), torch.tensor(weights, dtype=torch.float32))
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
    assert not math.isclose(loss.item(), torch.nn.functional.nll_loss(logp, target).item(), rel_tol=1e-4)


def _batch_labels(monkeypatch) -> list[list[int]]:
    """Each training batch's labels, in order, as the loss sees them (a spy on cross_entropy)."""
    targets = []
    ce = torch.nn.functional.cross_entropy

    def spy(logits, target, *a, **kw):
        targets.append(target.tolist())
        return ce(logits, target, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    return targets


@pytest.mark.parametrize("pipeline", [{"input": "files"}, {"input": "memory"}, {"augment": "flip"}])
def test_deferred_images_join_at_the_stated_epoch(tmp_path, monkeypatch, pipeline):
    """deferred_<method>: the held rows (here labelled `extra` so that the spied
    loss can see them) are in no batch before hold_until and in the epoch's
    batches from it, in each input pipeline; a run of the method holds exactly
    the rows its training set added."""
    (tmp_path / "big").mkdir()
    (tmp_path / "extra").mkdir()
    real = _images(tmp_path, 4, [200, 50, 50], [20, 20, 20], seed=1) + _images(
        tmp_path / "big", 4, [50, 50, 200], [20, 20, 20], seed=2)
    extra = _images(tmp_path / "extra", 4, [50, 200, 50], [20, 20, 20], seed=3)
    paths, labels = real + extra, ["rare"] * 4 + ["big"] * 4 + ["extra"] * 4
    targets = _batch_labels(monkeypatch)
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 3, "batch_size": 2, "lr": 0.01, **pipeline}
    train_classifier(paths, labels, ["big", "rare", "extra"], cfg, 0, held=[False] * 8 + [True] * 4, hold_until=2)
    assert len(targets) == 4 + 4 + 6  # 8 images a batch of 2 in epochs 0 and 1, all 12 in epoch 2
    assert not any(2 in t for t in targets[:8])
    assert sum(t.count(2) for t in targets[8:]) == 4

    from tibalance.stages import _weighting

    train = pd.DataFrame({"path": real, "label": ["rare"] * 4 + ["big"] * 4})
    ts = build_training_set(train, ["rare"], "deferred_ti", {"rare": extra}, "add")
    assert ts["added"].tolist() == [False] * 8 + [True] * 4
    w = _weighting("deferred_ti", ts, ["big", "rare"], {"epochs": 5}, {"defer_epoch": 3})
    assert w == {"held": [False] * 8 + [True] * 4, "hold_until": 3, "balanced": True}
    assert _weighting("deferred_ti", ts, ["big", "rare"], {"epochs": 5},
                      {"defer_epoch": 3, "defer_sampler": "topped_up"})["balanced"] is False
    assert _weighting("deferred_ti", ts, ["big", "rare"], {"epochs": 5}, {})["hold_until"] == 4  # 0.8 of 5
    assert _weighting("ti", ts, ["big", "rare"], {"epochs": 5}, {"defer_epoch": 3}) == {}


@pytest.mark.parametrize("pipeline", [{"input": "files"}, {"input": "memory"}, {"augment": "flip"}])
def test_balanced_deferral_draws_every_class_equally_often_from_the_deferral_epoch(tmp_path, monkeypatch, pipeline):
    """retrain.defer_sampler balanced (Cao et al.'s deferred re-sampling): before
    the deferral the real images alone, each once an epoch; from it every class
    drawn equally often (with replacement, as many rows an epoch as the set),
    where topping up alone would give the rare class 4 of 16."""
    (tmp_path / "big").mkdir()
    rare = _images(tmp_path, 4, [200, 50, 50], [20, 20, 20], seed=1)
    big = _images(tmp_path / "big", 12, [50, 50, 200], [20, 20, 20], seed=2)
    paths, labels = rare + big, ["rare"] * 4 + ["big"] * 12
    held = [False, False, True, True] + [False] * 12  # two of the rare rows are the method's added ones
    targets = _batch_labels(monkeypatch)
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 12, "batch_size": 4, "lr": 0.01, **pipeline}
    train_classifier(paths, labels, ["big", "rare"], cfg, 0, held=held, hold_until=2, balanced=True)
    early, late = targets[:6], targets[6:]  # 14 rows in batches of 4 (last dropped): 3 an epoch before it
    assert all(sum(early[3 * e:3 * e + 3], []).count(1) <= 2 for e in (0, 1))  # the 2 real rare rows at most
    assert len(late) == 10 * 4 and all(len(t) == 4 for t in late)  # 16 rows an epoch, 4 full batches
    share = sum(t.count(1) for t in late) / 160  # rare, label 1: ~0.5 (sd 0.04); topped up it is 0.25
    assert 0.38 < share < 0.62, share


def test_cutmix_pastes_one_box_and_lambda_is_the_background_share():
    g = torch.Generator().manual_seed(0)
    bg, patch = torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)
    lams = []
    for _ in range(20):
        out, lam, (y0, y1, x0, x1) = cutmix(bg, patch, 1.0, g)
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert bool((out[..., inside] == 1).all()) and bool((out[..., ~inside] == 0).all())
        assert lam == pytest.approx(1 - float(inside.float().mean()))
        lams.append(lam)
    assert len(set(lams)) > 10 and min(lams) < 0.5 < max(lams)  # Beta(1, 1): spread over (0, 1)


def test_cmo_mixes_minority_patches_onto_the_batch_with_the_papers_label_rule(tmp_path, monkeypatch):
    """With p 1 every batch is mixed: the patch batch is drawn with weights 1/n
    of its class (the rare class half the draws, not its 2 of 8), its box pasted
    onto the batch, and the loss is lambda' x CE(the batch's labels) + (1 -
    lambda') x CE(the patches' labels), lambda' the background's share."""
    import tibalance.rebalance as rb

    rare = _images(tmp_path, 2, [200, 50, 50], [20, 20, 20], seed=1)
    (tmp_path / "big").mkdir()
    big = _images(tmp_path / "big", 6, [50, 50, 200], [20, 20, 20], seed=2)
    paths, labels = rare + big, ["rare"] * 2 + ["big"] * 6
    mixes, ces, losses = [], [], []
    real_cutmix, ce, real_backward = rb.cutmix, torch.nn.functional.cross_entropy, torch.Tensor.backward

    def spy_cutmix(bg, patch, beta, g):
        out, lam, box = real_cutmix(bg, patch, beta, g)
        mixes.append((bg.clone(), patch.clone(), out.clone(), lam, box))
        return out, lam, box

    def spy_ce(logits, target, *a, **kw):
        loss = ce(logits, target, *a, **kw)
        ces.append((target.tolist(), loss.item()))
        return loss

    def spy_backward(self, *a, **kw):
        losses.append(self.item())
        return real_backward(self, *a, **kw)

    monkeypatch.setattr(rb, "cutmix", spy_cutmix)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy_ce)
    monkeypatch.setattr(torch.Tensor, "backward", spy_backward)
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 20, "batch_size": 8, "lr": 0.01, "input": "memory"}
    # the window opened to every epoch but the first (the official code's start_data_aug < epoch)
    train_classifier(paths, labels, ["big", "rare"], cfg, 0,
                     cmo={"p": 1.0, "beta": 1.0, "start_epoch": 0, "end_epochs": 0})
    # one batch an epoch: epoch 0 unmixed (one CE term), each later one mixed (two)
    assert len(losses) == 20 and len(mixes) == 19 and len(ces) == 1 + 38
    patch_labels = []
    for k, (bg, patch, out, lam, (y0, y1, x0, x1)) in enumerate(mixes):
        assert torch.equal(out[..., y0:y1, x0:x1], patch[..., y0:y1, x0:x1])
        kept = torch.ones(out.shape[-2:], dtype=torch.bool)
        kept[y0:y1, x0:x1] = False
        assert torch.equal(out[..., kept], bg[..., kept])
        (t_bg, l_bg), (t_patch, l_patch) = ces[1 + 2 * k], ces[2 + 2 * k]
        assert sorted(t_bg) == [0] * 6 + [1] * 2  # the epoch's batch: every image once
        assert losses[1 + k] == pytest.approx(lam * l_bg + (1 - lam) * l_patch, rel=1e-5)
        patch_labels += t_patch
    # rare drawn ~76 of 152 times (sd 6), at its share of the images ~38 (sd 5.3)
    assert sum(patch_labels) > 57


def test_cmo_mixes_only_in_the_official_codes_epoch_window(tmp_path, monkeypatch, caplog):
    """CMO's official code mixes in the epochs e with start_data_aug < e <
    epochs - end_data_aug (3 and 3): a 9-epoch run mixes in epochs 4 and 5
    only, a run of 7 epochs in none."""
    import logging

    import tibalance.rebalance as rb
    from tibalance.rebalance import cmo_epochs

    assert cmo_epochs({}, 200) == list(range(4, 197)) and cmo_epochs({}, 7) == [] and cmo_epochs({}, 8) == [4]
    assert cmo_epochs({"start_epoch": 0, "end_epochs": 1}, 4) == [1, 2]
    paths = _images(tmp_path, 8, [200, 50, 50], [20, 20, 20], seed=1)
    mixed = []
    real = rb.cutmix
    monkeypatch.setattr(rb, "cutmix", lambda *a: mixed.append(1) or real(*a))
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 9, "batch_size": 8, "lr": 0.01, "input": "memory"}
    with caplog.at_level(logging.INFO, logger="tibalance.training"):
        train_classifier(paths, ["big"] * 6 + ["rare"] * 2, ["big", "rare"], cfg, 0, cmo={"p": 1.0})
    assert len(mixed) == 2  # one batch an epoch, p 1: the window's two epochs
    said = [r.getMessage() for r in caplog.records if "CMO" in r.getMessage()]
    assert [m for m in said if m.endswith("CMO mixes")] == ["epoch 4: CMO mixes", "epoch 5: CMO mixes"]
