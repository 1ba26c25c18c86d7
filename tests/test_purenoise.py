"""OPeN as the paper runs it (the `noise` method): DAR-BN keeps the noise out of
the running statistics the test uses, fresh noise for every draw at the
training resolution, from the deferral epoch under class-balanced draws."""
import pandas as pd
import pytest
import torch
from conftest import pixel_images

from tibalance.classifier import IMAGENET_MEAN, IMAGENET_STD, build_model
from tibalance.purenoise import DarBatchNorm2d, PureNoise, plain_bn, routing, use_dar_bn
from tibalance.rebalance import pixel_stats
from tibalance.retrain import build_training_set
from tibalance.training import train_classifier


def _images(folder, n, mean, std, seed=0):
    return pixel_images(folder, n, mean, std, seed, size=16)  # 16 px: drawn there and resized, noise would shrink


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_dar_bn_keeps_noise_out_of_the_running_statistics_and_the_affine_gradients():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).train()
    layers = use_dar_bn(model)
    assert len(layers) == 20 and all(isinstance(m, DarBatchNorm2d) for m in layers)
    x = torch.randn(8, 3, 32, 32)
    before = _bn_state(model)
    with routing(layers, torch.ones(8, dtype=torch.bool)):  # a noise-only batch
        model(x).sum().backward()
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the statistics the test uses: untouched
    assert all(m.weight.grad is None or not m.weight.grad.any() for m in layers)  # the affine learns from natural only
    assert all(m.noise_mask is None for m in layers)  # the routing ends with the pass

    # a mixed batch: the running statistics move exactly as for its natural rows alone
    mask = torch.tensor([False, True] * 4)
    twin = build_model("resnet18", 3).train()
    twin.load_state_dict(model.state_dict())
    with routing(layers, mask):
        out = model(x)
    ref = twin(x[~mask])
    assert torch.allclose(out[~mask], ref, atol=1e-5)  # natural rows: as if the noise were not in the batch
    got, want = _bn_state(model), _bn_state(twin)
    assert all(torch.allclose(got[k].float(), want[k].float()) for k in got)
    assert not torch.equal(got["bn1.running_mean"], before["bn1.running_mean"])  # and they did move
    plain_bn(model)
    assert not any(isinstance(m, DarBatchNorm2d) for m in model.modules())


def test_the_replacement_probability_follows_the_class_counts(tmp_path):
    rare = _images(tmp_path / "rare", 4, [60, 120, 180], [10, 25, 40])
    big = _images(tmp_path / "big", 12, [200, 50, 50], [20, 20, 20], seed=1)
    noise = PureNoise.of(rare + big, ["rare"] * 4 + ["big"] * 12, ["big", "rare", "none"], 1 / 3, 2, 32)
    assert noise.p.tolist() == pytest.approx([0.0, (1 - 4 / 12) / 3, 0.0])  # share x (1 - n_c / n_max)
    assert noise.mean[1].numpy() * 255 == pytest.approx([60, 120, 180], abs=2)
    train = pd.DataFrame({"path": rare + big, "label": ["rare"] * 4 + ["big"] * 12})
    ts = build_training_set(train, ["rare"], "noise", {}, balanced={"rare": 30})
    assert ts.path.tolist() == train.path.tolist()  # the real images: the noise is drawn in the loop


@pytest.mark.parametrize("pipeline", [{"input": "files"}, {"input": "memory"}, {"augment": "flip"}])
def test_fresh_noise_at_the_training_size_from_the_deferral_epoch(tmp_path, monkeypatch, pipeline):
    """Before the deferral epoch no draw is noise; from it the rare class's draws
    are noise at the stated rate, every image new (two epochs never share one),
    drawn at the training size (32) with the class's spread (its images are
    16 px: drawn there and resized, the spread would shrink), and the same again
    on a rerun; the model saved has plain BatchNorm layers."""
    rare = _images(tmp_path / "rare", 4, [60, 120, 170], [10, 25, 30])
    big = _images(tmp_path / "big", 12, [200, 50, 50], [20, 20, 20], seed=1)
    paths, labels = rare + big, ["rare"] * 4 + ["big"] * 12
    calls = []
    original = PureNoise.replace

    def spy(self, xb, yb, g):
        out, mask = original(self, xb, yb, g)
        calls.append((yb.clone(), out[mask].clone(), mask.clone()))
        return out, mask

    monkeypatch.setattr(PureNoise, "replace", spy)
    cfg = {"arch": "resnet18", "image_size": 32, "epochs": 3, "batch_size": 4, "lr": 0.01, **pipeline}

    def run():
        calls.clear()
        noise = PureNoise.of(paths, labels, ["big", "rare"], 1.0, 1, 32)
        clf = train_classifier(paths, labels, ["big", "rare"], cfg, 0, hold_until=1, balanced=True, noise=noise)
        return clf, list(calls)

    clf, first = run()
    assert len(first) == 8  # epochs 1 and 2 (4 balanced batches of 4 each), none in epoch 0
    ys = torch.cat([y for y, _, _ in first])
    masks = torch.cat([m for _, _, m in first])
    assert not masks[ys == 0].any()  # the largest class: p = 0
    rate = masks[ys == 1].float().mean()  # p = 1 x (1 - 4/12) = 2/3
    assert 0.4 < rate < 0.9, rate
    noise = torch.cat([x for _, x, _ in first]) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(
        IMAGENET_MEAN).view(1, 3, 1, 1)
    assert noise.shape[1:] == (3, 32, 32)
    px = noise.permute(1, 0, 2, 3).reshape(3, -1) * 255
    mean, std, _ = pixel_stats(rare)
    assert px.mean(1).numpy() == pytest.approx(mean, abs=1.5)
    assert px.std(1).numpy() == pytest.approx(std, rel=0.05)
    early = torch.cat([x for _, x, _ in first[:4]]).flatten(1)
    late = torch.cat([x for _, x, _ in first[4:]]).flatten(1)
    assert len(early) and len(late) and torch.cdist(early, late).min() > 1.0  # no image seen twice
    assert not any(isinstance(m, DarBatchNorm2d) for m in clf.model.modules())
    _, again = run()
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again)) and len(again) == len(first)
