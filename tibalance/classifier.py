"""The classifier shared by the baseline and every retraining method: torchvision
ResNet, its input pipelines and augmentations, saving, loading and prediction
(the training recipe is tibalance.training)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms

from .util import TibalanceError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}


class UnitOutputConv2d(nn.Conv2d):
    """A Conv2d that computes an output of 1x1 pixels as one matrix product
    over the input pixels its kernel covers: the same sum as the convolution
    (the taps that fall on zero padding contribute nothing, and get no
    gradient either way), without oneDNN's convolution kernels, whose backward
    pass on such shapes is slow (on an AVX2 CPU a fine-tuning run of ResNet-18
    at 32 px, whose layer4 works on 1x1 pixels, spent 3/4 of its time there).
    Any other output size, and dilated, grouped or non-zero-padded
    convolutions, take the ordinary path. The parameters and state_dict are
    those of nn.Conv2d."""

    def _conv_forward(self, input, weight, bias):
        if (input.dim() == 4 and self.groups == 1 and self.padding_mode == "zeros"
                and self.dilation == (1, 1) and not isinstance(self.padding, str)):
            (H, W), (kh, kw), (ph, pw), (sh, sw) = input.shape[-2:], self.kernel_size, self.padding, self.stride
            if (H + 2 * ph - kh) // sh + 1 == 1 and (W + 2 * pw - kw) // sw + 1 == 1:
                h, w = min(H, kh - ph), min(W, kw - pw)
                if h > 0 and w > 0:
                    taps = weight[:, :, ph:ph + h, pw:pw + w].reshape(weight.shape[0], -1)
                    out = nn.functional.linear(input[:, :, :h, :w].reshape(input.shape[0], -1), taps, bias)
                    return out[:, :, None, None]
        return super()._conv_forward(input, weight, bias)


def unit_output_convs(model: nn.Module) -> nn.Module:
    """Every plain nn.Conv2d of the model becomes a UnitOutputConv2d (in place)."""
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = UnitOutputConv2d
    return model


def build_model(arch: str, num_classes: int, pretrained: bool = False, weights_file: str | None = None) -> nn.Module:
    """A torchvision ResNet with a new head. pretrained: ImageNet weights, from
    weights_file (fetched by the fetch_weights rule: jobs never download) or
    else torchvision's download."""
    if arch not in ARCHS:
        raise TibalanceError(f"classifier.arch: unknown architecture {arch!r} (one of {sorted(ARCHS)})")
    ctor, weights = ARCHS[arch]
    if pretrained and weights_file:
        model = ctor(weights=None, num_classes=len(weights.meta["categories"]))
        try:
            model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise TibalanceError(f"{weights_file}: not the ImageNet weights of {arch} ({type(e).__name__}); "
                                 f"delete it and rerun fetch_weights") from e
        log.info("ImageNet weights of %s from %s", arch, weights_file)
    elif pretrained:
        try:
            model = ctor(weights=weights)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError when offline
            raise TibalanceError(
                f"classifier.pretrained: ImageNet weights for {arch} could not be loaded ({type(e).__name__}); "
                f"set classifier.pretrained: false, or put {weights.url.rsplit('/', 1)[-1]} under $TORCH_HOME/hub/checkpoints"
            ) from e
    else:
        model = ctor(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return unit_output_convs(model)


def train_transform(size: int, augment: str = "standard") -> transforms.Compose:
    ops = [transforms.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
           transforms.RandomHorizontalFlip()]
    if augment == "classic":  # the 'oversample' method's heavier augmentation
        ops += [transforms.RandomPerspective(0.3, p=0.5), transforms.RandomRotation(15),
                transforms.ColorJitter(0.3, 0.3, 0.3, 0.05), transforms.RandomSolarize(192, p=0.2)]
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(size, antialias=True), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageCache:
    """Decodes each image once (RGB, shorter side resized to `load_size`) and
    keeps it in memory: epochs then cost only the augmentation."""

    def __init__(self, load_size: int):
        self.load_size = load_size
        self._cache: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        im = self._cache.get(path)
        if im is None:
            with Image.open(path) as raw:
                im = raw.convert("RGB")
            if min(im.size) != self.load_size:
                scale = self.load_size / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.BICUBIC)
            self._cache[path] = im
        return im


class ImageListDataset(Dataset):
    def __init__(self, paths, labels, transform, cache: ImageCache, augment_flags=None,
                 classic_transform=None, alternatives=None, replace_p: float = 0.0):
        self.paths, self.labels = list(paths), list(labels)
        # alternatives[i]: images that may stand in for image i (probability replace_p, drawn anew each epoch)
        self.alternatives = list(alternatives) if alternatives is not None else None
        self.replace_p = float(replace_p)
        self.transform, self.cache = transform, cache
        self.augment_flags = list(augment_flags) if augment_flags is not None else None
        self.classic_transform = classic_transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        alts = self.alternatives[i] if self.alternatives is not None else None
        if isinstance(alts, list) and alts and float(torch.rand(1)) < self.replace_p:
            path = alts[int(torch.randint(len(alts), (1,)))]
        im = self.cache.get(path)
        tf = self.transform
        if self.augment_flags is not None and self.augment_flags[i] and self.classic_transform is not None:
            tf = self.classic_transform
        return tf(im), self.labels[i]


class _IndexedBatches:
    """What the tensor input pipelines share: the distinct images (with the
    alternatives of mix: replace) indexed once, the classic augmentation, and
    an epoch's batches as (positions, image indices) with the alternatives drawn."""

    def _index(self, paths, labels, batch_size, generator, augment_flags, alternatives, replace_p,
               drop_last) -> list[str]:
        from torchvision.transforms import v2

        paths = list(paths)
        alternatives = list(alternatives) if alternatives is not None else None
        uniq = list(dict.fromkeys(paths + [a for alts in (alternatives or []) if isinstance(alts, list) for a in alts]))
        where = {p: i for i, p in enumerate(uniq)}
        self.index = torch.tensor([where[p] for p in paths])
        self.labels = torch.as_tensor(list(labels))
        self.flags = torch.as_tensor(list(augment_flags), dtype=torch.bool) if augment_flags is not None else None
        self.alts = [[where[a] for a in alts] if isinstance(alts, list) and alts else None
                     for alts in alternatives] if alternatives is not None else None
        self.replace_p = float(replace_p)
        self.batch_size, self.g, self.drop_last = batch_size, generator, drop_last
        self.held, self.holding = None, False
        self.classic = v2.Compose([v2.RandomPerspective(0.3, p=0.5), v2.RandomRotation(15),
                                   v2.ColorJitter(0.3, 0.3, 0.3, 0.05), v2.RandomSolarize(0.75, p=0.2)])
        return uniq

    def hold(self, held) -> None:
        """Rows (a bool each) left out of the epochs while `holding` is True, and no
        swap drawn then (deferral: the trainer sets `holding` per epoch)."""
        self.held = torch.as_tensor(list(held), dtype=torch.bool)

    def _rows(self) -> torch.Tensor | None:
        """The rows an epoch draws from now: None for all of them."""
        return torch.nonzero(~self.held).flatten() if self.holding and self.held is not None else None

    def __len__(self):
        rows = self._rows()
        n = len(self.index) if rows is None else len(rows)
        return n // self.batch_size if self.drop_last and n > self.batch_size else math.ceil(n / self.batch_size)

    def _batches(self):
        rows = self._rows()
        order = torch.randperm(len(self.index) if rows is None else len(rows), generator=self.g)
        order = order if rows is None else rows[order]
        for b in range(len(self)):
            pos = order[b * self.batch_size:(b + 1) * self.batch_size]
            idx = self.index[pos].clone()
            if self.alts is not None and self.replace_p > 0 and rows is None:
                draw = torch.rand(len(pos), generator=self.g)
                for k, p in enumerate(pos.tolist()):
                    if self.alts[p] and float(draw[k]) < self.replace_p:
                        idx[k] = self.alts[p][int(torch.randint(len(self.alts[p]), (1,), generator=self.g))]
            yield pos, idx

    def __iter__(self):
        for pos, idx in self._batches():
            yield self._make(pos, idx)

    def draw(self, pos: torch.Tensor):
        """The batch (inputs, labels) of the rows at `pos` (no swap), augmented as an epoch's are."""
        return self._make(pos, self.index[pos])


class TensorBatches(_IndexedBatches):
    """The training input pipeline on tensors: every image decoded once into one
    uint8 canvas [N, 3, H, W] (shorter side resized to the load size, padded to
    the largest by repeating the edge), then each batch cropped, resized, flipped and normalised as
    a whole: random-resized crops as boxes of `torchvision.ops.roi_align`
    (bilinear, averaged over the input pixels each output pixel covers). The
    images flagged for the classic augmentation then get perspective / rotation / colour jitter /
    solarize one by one (torchvision.transforms.v2 on tensors). Same
    augmentation family as the per-image PIL path (classifier.input: files)."""

    SCALE, RATIO = (0.6, 1.0), (3 / 4, 4 / 3)

    def __init__(self, paths, labels, size: int, load_size: int, batch_size: int, generator: torch.Generator,
                 augment_flags=None, alternatives=None, replace_p: float = 0.0, drop_last: bool = True):
        cache = ImageCache(load_size)
        uniq = self._index(paths, labels, batch_size, generator, augment_flags, alternatives, replace_p, drop_last)
        ims = [np.array(cache.get(p)) for p in uniq]
        self.hw = torch.tensor([[im.shape[0], im.shape[1]] for im in ims], dtype=torch.float32)
        H, W = int(self.hw[:, 0].max()), int(self.hw[:, 1].max())
        self.canvas = torch.zeros((len(ims), 3, H, W), dtype=torch.uint8)
        for i, im in enumerate(ims):
            h, w = im.shape[:2]
            self.canvas[i, :, :h, :w] = torch.from_numpy(im).permute(2, 0, 1)
            # edge pixels repeated into the padding: bilinear samples within half a
            # pixel of the image's border must not blend in the padding
            self.canvas[i, :, h:, :w] = self.canvas[i, :, h - 1:h, :w]
            self.canvas[i, :, :, w:] = self.canvas[i, :, :, w - 1:w]
        self.size = size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _boxes(self, hw: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomResizedCrop parameters for each image (10 tries, else the whole image)."""
        n, tries = len(hw), 10
        area = (hw[:, 0] * hw[:, 1])[:, None] * torch.empty(n, tries).uniform_(*self.SCALE, generator=self.g)
        logr = torch.empty(n, tries).uniform_(math.log(self.RATIO[0]), math.log(self.RATIO[1]), generator=self.g)
        w = torch.sqrt(area * torch.exp(logr)).round()
        h = torch.sqrt(area / torch.exp(logr)).round()
        ok = (w <= hw[:, 1:2]) & (h <= hw[:, 0:1]) & (w > 0) & (h > 0)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        rows = torch.arange(n)
        w = torch.where(first >= 0, w[rows, first.clamp(min=0)], hw[:, 1])
        h = torch.where(first >= 0, h[rows, first.clamp(min=0)], hw[:, 0])
        y0 = torch.floor(torch.rand(n, generator=self.g) * (hw[:, 0] - h + 1))
        x0 = torch.floor(torch.rand(n, generator=self.g) * (hw[:, 1] - w + 1))
        return torch.stack([rows.float(), x0, y0, x0 + w, y0 + h], 1)

    def _make(self, pos, idx):
        from torchvision.ops import roi_align

        x = self.canvas[idx].float()
        x = roi_align(x, self._boxes(self.hw[idx]), (self.size, self.size), 1.0, -1, aligned=True)
        flip = torch.rand(len(idx), generator=self.g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).div_(255.0).clamp_(0, 1)
        if self.flags is not None:
            for k in torch.nonzero(self.flags[pos]).flatten().tolist():
                x[k] = self.classic(x[k])
        return (x - self.mean) / self.std, self.labels[pos]


@dataclass
class TrainedClassifier:
    model: nn.Module
    classes: list[str]
    arch: str
    image_size: int

    def save(self, path: str) -> None:
        torch.save({"arch": self.arch, "classes": self.classes, "image_size": self.image_size,
                    "state_dict": self.model.state_dict()}, path)

    @classmethod
    def load(cls, path: str, device="cpu") -> "TrainedClassifier":
        ck = torch.load(path, map_location=device, weights_only=True)
        model = build_model(ck["arch"], len(ck["classes"]), pretrained=False)
        model.load_state_dict(ck["state_dict"])
        model.to(device).eval()
        return cls(model, list(ck["classes"]), ck["arch"], int(ck["image_size"]))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        feats = torch.flatten(m.avgpool(x), 1)
        return feats, m.fc(feats)


def _load_size(image_size: int) -> int:
    return int(math.ceil(image_size * 1.14))  # the usual 256/224 resize-then-crop ratio


@torch.no_grad()
def predict(clf: TrainedClassifier, paths, batch_size: int = 256, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], penultimate features [N, D]) for a list of image paths."""
    device = device or next(clf.model.parameters()).device
    cache = ImageCache(_load_size(clf.image_size))
    ds = ImageListDataset(paths, [0] * len(paths), eval_transform(clf.image_size), cache)
    probs, feats = [], []
    clf.model.eval()
    for xb, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
        f, logits = clf.features_and_logits(xb.to(device))
        probs.append(torch.softmax(logits.float(), 1).cpu())
        feats.append(f.float().cpu())
    if not probs:
        return np.zeros((0, len(clf.classes)), np.float32), np.zeros((0, clf.model.fc.in_features), np.float32)
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()
