"""The long-tail literature's re-balancing yardsticks that need no generator:

- ``noise`` (OPeN, Zada et al., "Pure Noise to the Rescue of Insufficient
  Data"): the weak classes oversampled as `oversample` does, a share of the
  added images being pure noise drawn from the class's own per-channel pixel
  mean and standard deviation, labelled as the class;
- ``reweight`` / ``drw``: the cross-entropy weighted per class, by inverse
  frequency or by the effective number of samples (Cui et al., CVPR 2019:
  (1 - beta) / (1 - beta^n)), normalised to sum to the number of classes;
  ``drw`` (deferred re-weighting, Cao et al., LDAM-DRW) plain until the
  deferral epoch, weighted from it;
- ``deferred_<method>`` (deferred re-sampling, DRS; OPeN's and OSeD's runs): the
  real images alone until the deferral epoch, <method>'s whole set from it;
- ``cmo`` / ``cmo_drw`` (context-rich minority oversampling, Park et al., CVPR
  2022): with probability p a batch gets a box of a second batch drawn with
  weights 1/n of its classes (the minority) pasted onto it (CutMix: the box's
  side sqrt(1 - lambda) of the image's, lambda ~ Beta(beta, beta), its centre
  uniform, clipped to the image); the loss is lambda' x CE(background's
  label) + (1 - lambda') x CE(the patch's), lambda' = 1 - the pasted share of
  the image. ``cmo_drw`` adds drw's deferred re-weighting.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .util import TibalanceError, save_image_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REWEIGHT_DEFAULTS = {
    "weights": "effective",   # inverse (1/n) | effective ((1 - beta) / (1 - beta^n), Cui et al.)
    "beta": 0.9999,
}
# the paper's CIFAR-LT mixing probability and Beta(1, 1); the official code
# mixes only in the epochs e with start_epoch < e < epochs - end_epochs
# (its start_data_aug and end_data_aug, 3 and 3)
CMO_DEFAULTS = {"p": 0.5, "beta": 1.0, "start_epoch": 3, "end_epochs": 3}


def cmo_epochs(cmo: dict, epochs: int) -> list[int]:
    """The epochs (0-based) of a run of `epochs` in which CMO mixes."""
    c = {**CMO_DEFAULTS, **cmo}
    return [e for e in range(epochs) if int(c["start_epoch"]) < e < epochs - int(c["end_epochs"])]
NOISE_DEFAULTS = {"share": 1 / 3}  # of the added images, the share that is noise (OPeN's ratio: the rest repeat)
WEIGHTINGS = ("inverse", "effective")


def class_weights(counts: dict[str, int], classes: list[str], kind: str = "effective",
                  beta: float = 0.9999) -> list[float]:
    """Per-class loss weights in `classes` order, summing to len(classes)."""
    if kind not in WEIGHTINGS:
        raise TibalanceError(f"retrain.reweight.weights: unknown weighting {kind!r} ({', '.join(WEIGHTINGS)})")
    missing = [c for c in classes if int(counts.get(c, 0)) <= 0]
    if missing:
        raise TibalanceError(f"retrain.reweight: class {missing[0]!r} has no training image to weigh")
    n = np.array([int(counts[c]) for c in classes], float)
    w = 1.0 / n if kind == "inverse" else (1.0 - beta) / (1.0 - np.power(beta, n))
    return list(w / w.sum() * len(classes))


def defer_epoch(setting, epochs: int) -> int:
    """The deferred methods' first re-balanced epoch (retrain.defer_epoch; drw's first
    weighted one): the setting, or 0.8 of the epochs (LDAM-DRW's 160 of 200)."""
    e = int(0.8 * epochs) if setting is None else int(setting)
    if not 0 <= e < max(1, epochs):
        raise TibalanceError(f"retrain.defer_epoch: {e} is not one of the run's epochs 0-{epochs - 1}")
    return e


def pixel_stats(paths: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per-channel (RGB) mean and std of every pixel of the images, and their size (the first's)."""
    from PIL import Image

    if not paths:
        raise TibalanceError("noise: the class has no real training image to take its pixel statistics from")
    total, sq, count, size = np.zeros(3), np.zeros(3), 0, None
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"), np.float64).reshape(-1, 3)
            size = size or im.size
        total += a.sum(0)
        sq += (a * a).sum(0)
        count += len(a)
    mean = total / count
    return mean, np.sqrt(np.maximum(sq / count - mean * mean, 0.0)), size


def noise_count(n_added: int, share: float) -> int:
    """How many of a class's n_added oversampled images are noise."""
    if not 0 <= share <= 1:
        raise TibalanceError(f"retrain.noise.share: {share} is not a share between 0 and 1")
    return int(round(n_added * share))


def noise_images(real: list[str], n: int, seed: int, out_dir: str) -> list[str]:
    """n pure-noise PNGs, each pixel drawn per channel from the class's real
    images' mean and std (clipped to 0-255), at their size; written once (a
    rerun with the same images and seed finds them)."""
    from PIL import Image

    mean, std, (w, h) = pixel_stats(real)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        px = rng.normal(mean, std, size=(h, w, 3))
        p = out / f"{i:05d}.png"
        save_image_atomic(Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8)), p)
        paths.append(str(p))
    for stale in set(out.glob("*.png")) - {Path(p) for p in paths}:
        stale.unlink()
    log.info("%d noise images (mean %s, std %s per channel) -> %s", n, np.round(mean, 1), np.round(std, 1), out)
    return paths


def minority_weights(labels) -> "torch.Tensor":
    """CMO's minority sampler: per row the weight 1/n of its class (n: the class's
    rows), so that every class is drawn equally often."""
    import torch

    labels = list(labels)
    counts = {c: labels.count(c) for c in set(labels)}
    return torch.tensor([1.0 / counts[c] for c in labels], dtype=torch.float64)


def cutmix(background: "torch.Tensor", patch: "torch.Tensor", beta: float,
           generator: "torch.Generator") -> tuple["torch.Tensor", float, tuple[int, int, int, int]]:
    """CMO's mix of two batches [B, C, H, W]: one box (CutMix's rand_bbox) of
    `patch` pasted onto every image of `background`; (the mixed batch, lambda' =
    1 - the box's share of the image: the background label's weight, the box
    (y0, y1, x0, x1))."""
    import torch

    h, w = background.shape[-2:]
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(beta, beta))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator) % torch.tensor([h, w]))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = background.clone()
    out[..., y0:y1, x0:x1] = patch[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w), (y0, y1, x0, x1)
