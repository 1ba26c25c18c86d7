"""The classifier recipe shared by the baseline and every retraining method:
torchvision ResNet, standard augmentations, seeded, CPU or GPU."""
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
from tqdm.auto import tqdm

from .util import TibalanceError, pick_device, seed_everything

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    if arch not in ARCHS:
        raise TibalanceError(f"classifier.arch: unknown architecture {arch!r} (one of {sorted(ARCHS)})")
    ctor, weights = ARCHS[arch]
    if pretrained:
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
    return model


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


def train_classifier(paths, labels, classes: list[str], cfg: dict, seed: int,
                     augment_flags=None, progress_desc: str = "train", alternatives=None,
                     replace_p: float = 0.0, init: str | None = None) -> TrainedClassifier:
    """Train a ResNet on (paths, labels); labels are class slugs.

    cfg: arch, pretrained, image_size, epochs, batch_size, lr, momentum,
    weight_decay, label_smoothing, device, num_workers.
    augment_flags: per-image booleans; True images get the classic (heavy) augmentation.
    init: a saved classifier (same architecture and classes) to fine-tune instead
    of training from the recipe's initial weights.
    """
    seed_everything(seed)
    device = pick_device(cfg.get("device", "auto"))
    index = {c: i for i, c in enumerate(classes)}
    y = [index[l] for l in labels]
    size = int(cfg["image_size"])
    cache = ImageCache(_load_size(size))
    ds = ImageListDataset(paths, y, train_transform(size), cache, augment_flags,
                          train_transform(size, "classic"), alternatives, replace_p)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=int(cfg["batch_size"]), shuffle=True, generator=g,
                        num_workers=int(cfg.get("num_workers", 0)), drop_last=len(ds) > int(cfg["batch_size"]),
                        pin_memory=device.type == "cuda",
                        persistent_workers=int(cfg.get("num_workers", 0)) > 0)
    if init:
        start = TrainedClassifier.load(init)
        if start.arch != cfg["arch"] or start.classes != list(classes):
            raise TibalanceError(f"{init}: a {start.arch} over {len(start.classes)} classes cannot start a "
                                 f"{cfg['arch']} over {len(classes)} classes (retrain.init: baseline needs the "
                                 f"baseline's architecture)")
        model = start.model.to(device).train()
    else:
        model = build_model(cfg["arch"], len(classes), bool(cfg.get("pretrained", False))).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]), momentum=float(cfg.get("momentum", 0.9)),
                          weight_decay=float(cfg.get("weight_decay", 5e-4)), nesterov=True)
    epochs = int(cfg["epochs"])
    total = max(1, epochs * len(loader))
    warmup = min(total // 10, 100)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    crit = nn.CrossEntropyLoss(label_smoothing=float(cfg.get("label_smoothing", 0.0)))
    amp = device.type == "cuda"
    model.train()
    bar = tqdm(total=total, desc=progress_desc, mininterval=2.0)
    for epoch in range(epochs):
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).to(memory_format=torch.channels_last)
            yb = yb.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = crit(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    bar.close()
    model.eval()
    return TrainedClassifier(model, list(classes), cfg["arch"], size)


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
