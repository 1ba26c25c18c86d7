"""Fine-tuning above frozen stages, with their outputs computed once.

A retraining run that fine-tunes the baseline with `freeze_below` (the demo:
only layer4 and the head train) sends every image through stages whose weights
and BatchNorm statistics never change. Their output for an image depends only
on the image as the stages see it, so:

- for the test images (the evaluation's fixed view) it is the same in every
  run: computed once by the `frozen_features` job, the runs evaluate the head on it;
- with `classifier.augment: flip` (the whole image, mirrored at random: no random
  crop) a training image has two views, both computed once too; the runs then train
  on cached outputs and send only their own images (synthetic ones, and the
  oversampled copies with the classic augmentation) through the frozen stages.

The frozen stages run in fp32 here, cached or not (as the evaluation does), so a
cached output and a live one are the same computation."""
from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

from .classifier import _IndexedBatches
from .util import TibalanceError, file_digest

log = logging.getLogger(__name__)

# torchvision ResNet's forward, in order; `freeze_below: X` freezes what comes before X
_SEQUENCE = (("stem", ("conv1", "bn1", "relu", "maxpool")), ("layer1", ("layer1",)), ("layer2", ("layer2",)),
             ("layer3", ("layer3",)), ("layer4", ("layer4",)), ("fc", ("avgpool", "flatten", "fc")))
FORMAT = 1


def _modules(model: nn.Module, names) -> list:
    return [torch.flatten if n == "flatten" else getattr(model, n) for n in names]


def split_model(model: nn.Module, below: str | None):
    """(frozen, head): the ResNet's forward cut before stage `below`; frozen(x)
    is the identity when nothing is frozen."""
    stages = [s for s, _ in _SEQUENCE]
    if below not in stages:
        raise TibalanceError(f"classifier.freeze_below: {below!r} is not one of {', '.join(stages)}")
    cut = stages.index(below)
    lower = [m for _, names in _SEQUENCE[:cut] for m in _modules(model, names)]
    upper = [m for _, names in _SEQUENCE[cut:] for m in _modules(model, names)]

    def run(mods, x):
        for m in mods:
            x = m(x, 1) if m is torch.flatten else m(x)
        return x

    return (lambda x: run(lower, x)), (lambda x: run(upper, x))


def eval_view(paths, size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]: each image as the evaluation sees it (the
    classifier's eval transform before ToTensor), decoded once."""
    from torchvision import transforms

    from .classifier import ImageCache, _load_size

    cache = ImageCache(_load_size(size))
    view = transforms.Compose([transforms.Resize(size, antialias=True), transforms.CenterCrop(size)])
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = torch.from_numpy(np.asarray(view(cache.get(p)), dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def normalise(x01: torch.Tensor) -> torch.Tensor:
    from .classifier import IMAGENET_MEAN, IMAGENET_STD

    return (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def frozen_outputs(frozen, images: torch.Tensor, flip: bool = False, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The frozen stages' fp32 output (on the CPU) for uint8 images (mirrored when flip)."""
    outs = []
    for b in range(0, len(images), batch_size):
        x = images[b:b + batch_size].float().div_(255.0)
        outs.append(frozen(normalise(x.flip(-1) if flip else x).to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def write_frozen_features(manifest: str, model: str, below: str, augment: str, out: str) -> dict:
    """The `frozen_features` job: for the baseline `model` cut before `below`,
    the frozen stages' output of every test image and, with augment 'flip',
    of both views of every training image."""
    from .classifier import TrainedClassifier
    from .data import load_manifest
    from .util import pick_device

    m = load_manifest(manifest)
    clf = TrainedClassifier.load(model, device=pick_device("auto"))
    # the memory format a training run gives the model (classifier.train_classifier): the same
    # kernels, so the cached outputs are the live ones bit for bit
    clf.model.to(memory_format=torch.channels_last)
    frozen, _ = split_model(clf.model, below)
    blob = {"format": FORMAT, "model_digest": file_digest(model), "below": below, "image_size": clf.image_size}
    counts = {}
    for split in ("test",) + (("train",) if augment == "flip" else ()):
        paths = list(m.loc[m["split"] == split, "path"])
        images = eval_view(paths, clf.image_size)
        dev = next(clf.model.parameters()).device
        views = [frozen_outputs(frozen, images, device=dev)]
        views += [frozen_outputs(frozen, images, flip=True, device=dev)] if split == "train" else []
        blob[split] = {"paths": paths, "views": torch.stack(views, 1) if views[0].numel() else torch.zeros(0)}
        counts[split] = len(paths)
    tmp = f"{out}.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, out)
    log.info("frozen stages (below %s) of %s -> %s", below, ", ".join(f"{n} {s} images" for s, n in counts.items()), out)
    return counts


class FrozenFeatures:
    """A frozen_features file, checked against the run that reads it."""

    def __init__(self, path: str, init_model: str, below: str, image_size: int):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != FORMAT:
            raise TibalanceError(f"{path}: written by another version of tibalance; delete it and rerun")
        if blob["model_digest"] != file_digest(init_model):
            raise TibalanceError(f"{path}: computed with another classifier than {init_model}; delete it and rerun")
        for key, want in (("below", below), ("image_size", image_size)):
            if blob[key] != want:
                raise TibalanceError(f"{path}: computed for {key} {blob[key]!r}, this run has {want!r}; "
                                     f"delete it and rerun")
        self.path = path
        self.splits = {s: (blob[s]["paths"], blob[s]["views"]) for s in ("test", "train") if s in blob}

    def lookup(self, split: str, paths) -> tuple[torch.Tensor, np.ndarray]:
        """(views [N, V, ...] with rows of missing images zero, found mask) for paths."""
        if split not in self.splits:
            return torch.zeros(0), np.zeros(len(paths), bool)
        known, views = self.splits[split]
        where = {p: i for i, p in enumerate(known)}
        rows = np.array([where.get(p, -1) for p in paths])
        found = rows >= 0
        out = torch.zeros((len(paths),) + tuple(views.shape[1:]), dtype=views.dtype)
        out[torch.from_numpy(found)] = views[torch.from_numpy(rows[found])]
        return out, found


@lru_cache(maxsize=2)
def open_features(path: str, init_model: str, below: str, image_size: int) -> FrozenFeatures:
    """A run reads its frozen_features file (and hashes its start) once, for training and evaluation."""
    return FrozenFeatures(path, init_model, below, image_size)


class ViewBatches(_IndexedBatches):
    """Training batches for `classifier.augment: flip`, as inputs of the stages
    above the frozen ones: each image whole (the evaluation's view), mirrored
    with probability 1/2; the images flagged for the classic augmentation then get
    perspective / rotation / colour jitter / solarize as in TensorBatches. A
    training image in `cache` (and not flagged) takes its cached output; the
    others go through the frozen stages here, batch by batch."""

    def __init__(self, paths, labels, size: int, batch_size: int, generator: torch.Generator, frozen,
                 augment_flags=None, alternatives=None, replace_p: float = 0.0, drop_last: bool = True,
                 cache: FrozenFeatures | None = None, device: torch.device | None = None):
        uniq = self._index(paths, labels, batch_size, generator, augment_flags, alternatives, replace_p, drop_last)
        if self.flags is None:
            self.flags = torch.zeros(len(self.index), dtype=torch.bool)
        self.views, found = cache.lookup("train", uniq) if cache is not None else (None, np.zeros(len(uniq), bool))
        self.cached = torch.from_numpy(found)
        # pixels only of the images that are not cached or get the classic augmentation
        flagged = set(self.index[self.flags].tolist())
        need = [i for i in range(len(uniq)) if not found[i] or i in flagged]
        self.pixel_row = torch.full((len(uniq),), -1, dtype=torch.long)
        self.pixel_row[need] = torch.arange(len(need))
        self.pixels = eval_view([uniq[i] for i in need], size)
        self.n_cached, self.n_live = int(found.sum()), len(need)
        self.frozen = frozen
        self.device = device or torch.device("cpu")

    def _make(self, pos, idx):
        flip = torch.rand(len(idx), generator=self.g) < 0.5
        classic = self.flags[pos]
        use_cache = self.cached[idx] & ~classic
        live = torch.nonzero(~use_cache).flatten()
        parts = {}
        if len(live):
            x = self.pixels[self.pixel_row[idx[live]]].float().div_(255.0)
            x = torch.where(flip[live][:, None, None, None], x.flip(-1), x)
            for k in torch.nonzero(classic[live]).flatten().tolist():
                x[k] = self.classic(x[k])
            with torch.no_grad():
                parts["live"] = self.frozen(normalise(x).to(self.device)).float()
        if bool(use_cache.any()):
            hit = torch.nonzero(use_cache).flatten()
            parts["cached"] = self.views[idx[hit], flip[hit].long()].to(self.device)
        ref = parts.get("live", parts.get("cached"))
        out = torch.empty((len(idx),) + tuple(ref.shape[1:]), dtype=ref.dtype, device=self.device)
        if "live" in parts:
            out[live] = parts["live"]
        if "cached" in parts:
            out[hit] = parts["cached"]
        return out, self.labels[pos]


@torch.no_grad()
def predict_cached(clf, paths, cache: FrozenFeatures, below: str, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, C] of a classifier whose stages below `below` are
    the cache's: the head on the cached test outputs; images the cache lacks
    take the whole forward (classifier.predict)."""
    from .classifier import predict

    paths = list(paths)
    views, found = cache.lookup("test", paths)
    probs = np.zeros((len(paths), len(clf.classes)), np.float32)
    if (~found).any():
        probs[~found] = predict(clf, [p for p, f in zip(paths, found) if not f])[0]
    _, head = split_model(clf.model, below)
    device = next(clf.model.parameters()).device
    clf.model.eval()
    rows = np.flatnonzero(found)
    for b in range(0, len(rows), batch_size):
        r = rows[b:b + batch_size]
        probs[r] = torch.softmax(head(views[torch.from_numpy(r), 0].to(device)).float(), 1).cpu().numpy()
    return probs
