"""The classifier's training recipe (baseline, retraining runs, the judge):
seeded SGD with warm-up and cosine decay, frozen stages, bf16 where native.
Apart from tibalance.classifier because it also drives tibalance.frozen's
cached lower stages, which build on the classifier."""
from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .classifier import (
    ImageCache,
    ImageListDataset,
    TensorBatches,
    TrainedClassifier,
    _load_size,
    build_model,
    train_transform,
)
from .frozen import ViewBatches, open_features, split_model
from .precision import autocast_bf16
from .purenoise import PureNoise, plain_bn, routing, use_dar_bn
from .rebalance import cmo_epochs
from .util import TibalanceError, pick_device, seed_everything

log = logging.getLogger(__name__)

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")


def freeze_stages(model: nn.Module, below: str | None, has_start: bool) -> list[nn.Module]:
    """Fix the weights of every ResNet stage before `below` (stem = conv1 + bn1;
    then layer1..layer4, fc): they keep the starting weights and BatchNorm
    statistics, and need no backward pass. Returns the frozen modules."""
    if not below or below == "stem":
        return []
    if below not in STAGES:
        raise TibalanceError(f"classifier.freeze_below: {below!r} is not one of {', '.join(STAGES)}")
    if not has_start:
        raise TibalanceError(f"classifier.freeze_below: {below!r} freezes randomly initialised weights; "
                             f"it needs a start (retrain.init: baseline, or classifier.pretrained: true)")
    names = {"stem": ["conv1", "bn1"]}
    frozen = []
    for stage in STAGES[:STAGES.index(below)]:
        for name in names.get(stage, [stage]):
            mod = getattr(model, name)
            mod.requires_grad_(False)
            frozen.append(mod)
    return frozen


AUGMENTS = ("standard", "flip")


class EpochCheckpoint:
    """A classifier training's resumable state at an epoch's end (model,
    optimiser, schedule, the loader's generator and every global RNG), written
    atomically to `path`; taken up only when its fingerprint (settings, seed,
    the training set, the start) matches. A preempted or killed job goes on
    after its last saved epoch, to the same weights as a run never stopped."""

    def __init__(self, path: str | None, key: dict):
        from .util import fingerprint

        self.path = Path(path) if path else None
        self.fp = fingerprint(key)

    def restore(self, model, opt, sched, g) -> int:
        """The epochs already done (0 without a matching checkpoint)."""
        if self.path is None or not self.path.exists():
            return 0
        ck = torch.load(self.path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != self.fp:
            log.info("ignoring %s: made with other settings or images", self.path)
            return 0
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        g.set_state(ck["g"])
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["np_rng"])
        random.setstate(ck["py_rng"])
        log.info("resuming from %s after epoch %d", self.path, ck["epochs"])
        return int(ck["epochs"])

    def save(self, epochs: int, model, opt, sched, g) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"fingerprint": self.fp, "epochs": epochs, "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "g": g.get_state(), "torch_rng": torch.get_rng_state(),
                    "np_rng": np.random.get_state(), "py_rng": random.getstate()}, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def _checkpoint_key(paths, labels, classes, cfg, seed, augment_flags, alternatives, replace_p, init, frozen_cache,
                    class_weights, weight_from_epoch, held=None, hold_until=0, cmo=None, balanced=False,
                    noise=None) -> dict:
    """What a training's result depends on (its checkpoint's key)."""
    from .util import file_digest

    flags = None if augment_flags is None else [bool(f) for f in augment_flags]
    alts = None if alternatives is None else [list(a) if a else None for a in alternatives]
    return {"paths": [str(p) for p in paths], "labels": [str(x) for x in labels], "classes": list(classes),
            "cfg": {k: v for k, v in cfg.items() if k not in ("checkpoint_every", "num_workers")}, "seed": seed,
            "flags": flags, "alternatives": alts, "replace_p": replace_p,
            "init": file_digest(init) if init else None,
            "frozen_cache": file_digest(frozen_cache) if frozen_cache else None,
            "class_weights": class_weights, "weight_from_epoch": weight_from_epoch,
            "held": None if held is None else [bool(h) for h in held], "hold_until": hold_until,
            "cmo": cmo, **({"balanced": True} if balanced else {}),
            **({"noise": {"p": noise.p.tolist(), "from": noise.from_epoch}} if noise is not None else {})}


def train_classifier(paths, labels, classes: list[str], cfg: dict, seed: int,
                     augment_flags=None, progress_desc: str = "train", alternatives=None,
                     replace_p: float = 0.0, init: str | None = None,
                     frozen_cache: str | None = None, class_weights: list[float] | None = None,
                     weight_from_epoch: int = 0, checkpoint: str | None = None,
                     stop_after_epoch: int | None = None, held=None,
                     hold_until: int = 0, cmo: dict | None = None,
                     balanced: bool = False, noise: PureNoise | None = None) -> TrainedClassifier | None:
    """Train a ResNet on (paths, labels); labels are class slugs.

    cfg: arch, pretrained, image_size, epochs, batch_size, lr, momentum,
    weight_decay, label_smoothing, device, num_workers, input, mixed_precision,
    freeze_below (the stages before it keep their starting weights: see freeze_stages),
    augment (standard: random resized crop and flip; flip: the whole image, mirrored
    at random, see tibalance.frozen).
    augment_flags: per-image booleans; True images get the classic (heavy) augmentation.
    init: a saved classifier (same architecture and classes) to fine-tune instead
    of training from the recipe's initial weights.
    frozen_cache: a frozen_features file of `init` (augment flip with freeze_below):
    the training images' frozen-stage outputs, computed once for every run.
    class_weights: the cross-entropy's per-class weights (in `classes` order)
    from epoch weight_from_epoch (0-based) on; the plain loss before it
    (deferred re-weighting).
    held: per-image booleans: those images (and every swap for an alternative)
    wait until epoch hold_until (0-based); the epochs before it draw from the
    others alone (deferred re-sampling); with balanced, the epochs from it draw
    every class equally often (class-balanced, with replacement).
    noise: OPeN (tibalance.purenoise): from its epoch (with balanced and
    hold_until, the class-balanced draws) each drawn image may become fresh pure
    noise, routed through DAR-BN; on pixels, as cmo.
    cmo: {"p", "beta", "start_epoch", "end_epochs"}: context-rich minority
    oversampling (rebalance.cutmix): in the epochs of its window
    (rebalance.cmo_epochs, the official code's), with probability p a batch gets
    a box of a batch drawn with weights 1/n of its classes; on pixels, so with augment flip the frozen stages run on
    every batch here (their cached outputs are of unmixed images).
    checkpoint: a file the state is saved to every cfg checkpoint_every epochs
    (1 unset) and resumed from (EpochCheckpoint); removed when the training ends.
    stop_after_epoch: stop after that many epochs, saved, returning None (tests: a kill).
    """
    paths, labels = list(paths), list(labels)
    resume = EpochCheckpoint(checkpoint, _checkpoint_key(
        paths, labels, classes, cfg, seed, augment_flags, alternatives, replace_p, init, frozen_cache,
        class_weights, weight_from_epoch, held, hold_until, cmo, balanced, noise)) if checkpoint else None
    held = list(held) if held is not None and hold_until > 0 and any(held) else None
    seed_everything(seed)
    device = pick_device(cfg.get("device", "auto"))
    index = {c: i for i, c in enumerate(classes)}
    y = [index[label] for label in labels]
    size = int(cfg["image_size"])
    g = torch.Generator().manual_seed(seed)
    augment = cfg.get("augment", "standard")
    if augment not in AUGMENTS:
        raise TibalanceError(f"classifier.augment: unknown value {augment!r} ({', '.join(AUGMENTS)})")
    images = (paths, y, augment_flags, alternatives, replace_p)
    # in this order (the model's random start draws from the global generator after the loader is made)
    batches = None if augment == "flip" else _pixel_batches(images, cfg, g, device, held)
    model = _start_model(cfg, classes, init, device)
    frozen = freeze_stages(model, cfg.get("freeze_below"), init or cfg.get("pretrained"))
    forward, pixel_lower = model, None
    if augment == "flip":
        batches, forward, pixel_lower = _view_batches(images, model, cfg, g, device, init, frozen_cache,
                                                      pixels=cmo is not None or noise is not None)
    batches.hold(held, hold_until,
                 (y, int(cfg["batch_size"]), g) if balanced and (held is not None or noise is not None) else None)
    dar = use_dar_bn(model) if noise is not None else []
    epochs = int(cfg["epochs"])
    steps = [len(batches.of_epoch(e)) for e in range(epochs)]
    mixer = _Mixer(cmo, y, batches.draw, g, device) if cmo is not None else None
    mixing = set(cmo_epochs(cmo, epochs)) if cmo is not None else set()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=float(cfg["lr"]),
                          momentum=float(cfg.get("momentum", 0.9)),
                          weight_decay=float(cfg.get("weight_decay", 5e-4)), nesterov=True)
    total = max(1, sum(steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total))
    smoothing = float(cfg.get("label_smoothing", 0.0))
    crit = nn.CrossEntropyLoss(label_smoothing=smoothing)
    weighted = crit if class_weights is None else nn.CrossEntropyLoss(
        weight=torch.tensor(class_weights, dtype=torch.float32, device=device), label_smoothing=smoothing)
    amp = autocast_bf16(device, cfg.get("mixed_precision", "auto"), "classifier.mixed_precision")
    done = resume.restore(model, opt, sched, g) if resume else 0
    every = max(1, int(cfg.get("checkpoint_every") or 1))
    model.train()
    for m in frozen:  # frozen stages keep their BatchNorm statistics too
        m.eval()
    bar = tqdm(total=total, initial=sum(steps[:done]), desc=progress_desc, mininterval=2.0)
    for epoch in range(done, epochs):
        loss_fn = weighted if epoch >= weight_from_epoch else crit
        if class_weights is not None and epoch == weight_from_epoch:
            log.info("epoch %d: the loss weighted per class from here on", epoch)
        if held is not None and epoch == hold_until:
            log.info("epoch %d: the %d held images join from here on%s", epoch, sum(held),
                     ", every class drawn equally often" if balanced else "")
        if mixer is not None:
            log.info("epoch %d: CMO %s", epoch, "mixes" if epoch in mixing else "mixes nothing (outside its window)")
        if noise is not None and epoch == noise.from_epoch:
            log.info("epoch %d: %s", epoch, noise.describe())
        for xb, yb in batches.of_epoch(epoch):
            xb, yb, mix, noise_rows = _prepared(xb, yb, epoch, device, g, noise, dar, mixer, mixing, pixel_lower)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), routing(dar, noise_rows):
                out = forward(xb)
                loss = (loss_fn(out, yb) if mix is None
                        else mix[1] * loss_fn(out, yb) + (1.0 - mix[1]) * loss_fn(out, mix[0]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
        stop = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
        if resume and (stop or ((epoch + 1) % every == 0 and epoch + 1 < epochs)):
            resume.save(epoch + 1, model, opt, sched, g)
        if stop:
            bar.close()
            return None
    bar.close()
    if resume:
        resume.remove()
    plain_bn(model)
    model.eval()
    return TrainedClassifier(model, list(classes), cfg["arch"], size)


def _prepared(xb, yb, epoch: int, device, g, noise, dar, mixer, mixing, pixel_lower):
    """A batch as the trained part sees it: on the device, OPeN's noise drawn in
    (from its epoch), CMO's mix (in its window), through the frozen stages where
    they run on every batch; (batch, labels, the mix or None, the noise rows or None)."""
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    xb, noise_rows = noise.replace(xb, yb, g) if noise is not None and epoch >= noise.from_epoch else (xb, None)
    xb, mix = mixer(xb) if epoch in mixing else (xb, None)
    if pixel_lower is not None:
        with torch.no_grad(), routing(dar, noise_rows):
            xb = pixel_lower(xb).float()
    return (xb.to(memory_format=torch.channels_last) if xb.dim() == 4 else xb), yb, mix, noise_rows


def warmup_cosine(total: int):
    """The learning rate's factor per step: a linear warm-up over a tenth of the
    steps (at most 100), then a cosine to 0 at `total`."""
    warmup = min(total // 10, 100)
    return lambda s: ((s + 1) / (warmup + 1) if s < warmup
                      else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))


class _Batches:
    """A training's batches per epoch. Deferred re-sampling (hold): before
    hold_until the held images sit out, through a loader of the others
    (`early`, files) or the batch maker's own `holding` switch (memory, views).
    draw(rows): a batch of those rows, in that order (CMO's minority batch)."""

    def __init__(self, loader, draw, early=None):
        self.loader, self.draw, self.early = loader, draw, early
        self.held, self.hold_until, self.balanced = None, 0, None

    def hold(self, held, hold_until: int, balanced=None) -> None:
        """held rows wait until epoch hold_until; balanced (labels, batch size,
        generator): from then on every class is drawn equally often."""
        self.held, self.hold_until = held, hold_until
        self.balanced = None if balanced is None else _BalancedEpoch(self.draw, *balanced)  # one for every epoch
        if held is not None and self.early is None:
            self.loader.hold(held)

    def of_epoch(self, epoch: int):
        ours = not isinstance(self.loader, DataLoader)
        if self.balanced is not None and epoch >= self.hold_until:
            if ours:
                self.loader.holding = False
            return self.balanced
        if self.held is None or epoch >= self.hold_until:
            if ours:
                self.loader.holding = False
            return self.loader
        if not ours:
            return self.early
        self.loader.holding = True
        return self.loader


class _BalancedEpoch:
    """An epoch of class-balanced re-sampling (Cao et al.'s deferred re-sampling,
    OPeN's sampler): as many rows as the training set, drawn with replacement
    with weights 1/n of their class, so every class is drawn equally often."""

    def __init__(self, draw, labels, batch_size: int, g):
        from .rebalance import minority_weights

        self.draw, self.bs, self.g = draw, int(batch_size), g
        self.weights, self.n = minority_weights(labels), len(labels)

    def __len__(self) -> int:
        return max(1, self.n // self.bs)  # full batches, as the loaders' drop_last

    def __iter__(self):
        rows = torch.multinomial(self.weights, len(self) * self.bs, replacement=True, generator=self.g)
        for k in range(len(self)):
            yield self.draw(rows[k * self.bs:(k + 1) * self.bs])


def _pixel_batches(images, cfg: dict, g, device, held) -> _Batches:
    """The batches of augment standard: from memory (TensorBatches) or from files
    (decoded once, ImageCache; augmented per image with PIL; num_workers apply)."""
    paths, y, flags, alternatives, replace_p = images
    size, bs = int(cfg["image_size"]), int(cfg["batch_size"])
    if cfg.get("input", "files") == "memory":
        loader = TensorBatches(paths, y, size, _load_size(size), bs, g, flags, alternatives, replace_p)
        return _Batches(loader, loader.draw)
    ds = ImageListDataset(paths, y, train_transform(size), ImageCache(_load_size(size)), flags,
                          train_transform(size, "classic"), alternatives, replace_p)
    workers = int(cfg.get("num_workers", 0))

    def files_loader(ds):
        return DataLoader(ds, batch_size=bs, shuffle=True, generator=g, num_workers=workers,
                          drop_last=len(ds) > bs, pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def draw(rows):
        items = [ds[int(i)] for i in rows]
        return torch.stack([x for x, _ in items]), torch.tensor([label for _, label in items])

    early = None
    if held is not None:  # the epochs before hold_until: the other images, no swap
        others = ImageListDataset(paths, y, train_transform(size), ds.cache, flags,
                                  train_transform(size, "classic"), alternatives, 0.0)
        early = files_loader(Subset(others, [i for i, h in enumerate(held) if not h]))
    return _Batches(files_loader(ds), draw, early)


def _start_model(cfg: dict, classes, init: str | None, device) -> nn.Module:
    """The recipe's initial network, or `init` (a saved classifier of the same
    architecture and classes) to fine-tune."""
    if init:
        start = TrainedClassifier.load(init)
        if start.arch != cfg["arch"] or start.classes != list(classes):
            raise TibalanceError(f"{init}: a {start.arch} over {len(start.classes)} classes cannot start a "
                                 f"{cfg['arch']} over {len(classes)} classes (retrain.init: baseline needs the "
                                 f"baseline's architecture)")
        model = start.model.to(device).train()
    else:
        model = build_model(cfg["arch"], len(classes), bool(cfg.get("pretrained", False)),
                            cfg.get("weights_file")).to(device)
    return model.to(memory_format=torch.channels_last)


def _view_batches(images, model, cfg: dict, g, device, init, frozen_cache, pixels: bool):
    """The batches of augment flip (ViewBatches: the frozen stages' outputs of each
    image and its mirror, cached in `frozen_cache` where given) and the model split
    there: (batches, the trained upper part, the frozen lower part when it must
    run on every batch (pixels: CMO mixes pixels, OPeN replaces them) else None)."""
    paths, y, flags, alternatives, replace_p = images
    size, bs = int(cfg["image_size"]), int(cfg["batch_size"])
    below = cfg.get("freeze_below") or "stem"
    lower, forward = split_model(model, below)
    cache = (open_features(frozen_cache, init, below, size)
             if frozen_cache and below != "stem" and not pixels else None)
    pixel_lower = None
    if pixels:  # the batches in pixels, mixed or noised, then through the frozen stages
        pixel_lower, lower = lower, (lambda x: x)
    loader = ViewBatches(paths, y, size, bs, g, lower, flags, alternatives, replace_p, cache=cache, device=device)
    log.info("augment flip, stages below %s frozen: %d images' outputs cached (%s), %d computed here",
             below, loader.n_cached, frozen_cache or "none", loader.n_live)
    return _Batches(loader, loader.draw), forward, pixel_lower


class _Mixer:
    """CMO (rebalance.cutmix): with probability p a batch gets a box of a batch
    drawn with weights 1/n of its classes; returns (batch, (minority labels, lambda)
    or None)."""

    def __init__(self, cmo: dict, y, draw, g, device):
        from .rebalance import CMO_DEFAULTS, cutmix, minority_weights

        self.cmo = {**CMO_DEFAULTS, **cmo}
        self.weights, self.draw, self.g, self.device = minority_weights(y), draw, g, device
        self.cutmix = cutmix

    def __call__(self, xb):
        if float(torch.rand(1, generator=self.g)) >= float(self.cmo["p"]):
            return xb, None
        xf, yf = self.draw(torch.multinomial(self.weights, len(xb), replacement=True, generator=self.g))
        xb, lam, _ = self.cutmix(xb, xf.to(self.device), float(self.cmo["beta"]), self.g)
        return xb, (yf.to(self.device), lam)
