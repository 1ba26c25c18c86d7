"""OPeN (Zada, Benou & Irani, "Pure Noise to the Rescue of Insufficient Data",
ICML 2023) inside the training loop: the `noise` method.

From the deferral epoch every class is drawn equally often (class-balanced
re-sampling, as OPeN's deferred runs); each drawn image of class c is replaced,
with probability share x (1 - n_c / n_max), by a fresh pure-noise image: every
pixel drawn per channel from the class's real images' mean and standard
deviation, at the training resolution, from the run's own generator (so a run is
reproducible and two epochs see different noise). The noise images pass each
BatchNorm through DAR-BN (distribution-aware routing): the natural images are
normalised as usual (and alone update the running statistics the test uses);
the noise images by their own batch statistics, scaled by the layer's affine
parameters without training them (Appendix E of the paper).

The old row (noise PNGs drawn once at the source resolution, added as
oversampled images from the first epoch, no DAR-BN) stays as the `noise_static`
ablation (rebalance.noise_images).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classifier import IMAGENET_MEAN, IMAGENET_STD
from .util import TibalanceError

SHARE = 1 / 3  # OPeN's delta on CIFAR-10-LT: the share of the oversampled draws that are noise


class DarBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d with DAR-BN's routing while `noise_mask` (rows of the
    batch that are noise) is set; a plain BatchNorm2d otherwise (the same
    parameters and buffers: a model converted back and forth keeps its state)."""

    noise_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.noise_mask
        if mask is None or not bool(mask.any()):
            return super().forward(x)
        out = torch.empty_like(x)
        natural = ~mask
        if bool(natural.any()):
            xn = x[natural]
            if self.training and xn.shape[0] * xn[0, 0].numel() < 2:  # one value per channel: no batch statistics
                out[natural] = F.batch_norm(xn, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps).to(x.dtype)
            else:
                out[natural] = super().forward(xn).to(x.dtype)
        xm = x[mask].float()  # its own batch statistics (one value a channel: 0 variance, the shift alone)
        mean, var = xm.mean((0, 2, 3), keepdim=True), xm.var((0, 2, 3), unbiased=False, keepdim=True)
        out[mask] = ((xm - mean) / torch.sqrt(var + self.eps) * self.weight.detach().view(1, -1, 1, 1)
                     + self.bias.detach().view(1, -1, 1, 1)).to(x.dtype)
        return out


def use_dar_bn(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm2d of the model made a DarBatchNorm2d (in place); returns them."""
    out = []
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = DarBatchNorm2d
        if isinstance(m, DarBatchNorm2d):
            out.append(m)
    return out


def plain_bn(model: nn.Module) -> None:
    """The DarBatchNorm2d layers back to BatchNorm2d (what is saved and evaluated)."""
    for m in model.modules():
        if type(m) is DarBatchNorm2d:
            m.__dict__.pop("noise_mask", None)
            m.__class__ = nn.BatchNorm2d


@contextlib.contextmanager
def routing(layers: list[nn.Module], mask: torch.Tensor | None):
    """The batch's noise rows routed through DAR-BN in `layers` for the forward pass."""
    for m in layers:
        m.noise_mask = mask
    try:
        yield
    finally:
        for m in layers:
            m.noise_mask = None


@dataclass(frozen=True)
class PureNoise:
    """The `noise` method's settings for one run: per class (in the classifier's
    order) the pixel mean and std (0-1, RGB) of its real training images and
    the probability that a drawn image of it becomes noise; the first epoch it
    applies in (the deferral epoch); the training resolution."""

    mean: torch.Tensor   # [classes, 3]
    std: torch.Tensor    # [classes, 3]
    p: torch.Tensor      # [classes]
    from_epoch: int
    size: int

    @classmethod
    def of(cls, paths, labels, classes: list[str], share: float, from_epoch: int, size: int) -> "PureNoise":
        """From the run's training rows (paths, label slugs): each class's pixel
        statistics and its replacement probability share x (1 - n_c / n_max)."""
        from .rebalance import pixel_stats

        if not 0 <= share <= 1:
            raise TibalanceError(f"retrain.noise.share: {share} is not a share between 0 and 1")
        by = {c: [p for p, label in zip(paths, labels) if label == c] for c in classes}
        top = max(len(v) for v in by.values())
        mean, std, p = torch.zeros(len(classes), 3), torch.zeros(len(classes), 3), torch.zeros(len(classes))
        for i, c in enumerate(classes):
            p[i] = share * (1.0 - len(by[c]) / top) if by[c] else 0.0
            if p[i] > 0:  # only a class whose draws can be noise needs its pixels read
                m, s, _ = pixel_stats(by[c])
                mean[i], std[i] = torch.from_numpy(m / 255.0).float(), torch.from_numpy(s / 255.0).float()
        return cls(mean, std, p, int(from_epoch), int(size))

    def describe(self) -> str:
        return (f"every class drawn equally often, a draw of class c pure noise with probability "
                f"{[round(float(p), 3) for p in self.p]} (DAR-BN)")

    def draw(self, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Fresh noise images of these classes, [N, 3, size, size], in pixels (0-1)."""
        n = len(labels)
        z = torch.randn((n, 3, self.size, self.size), generator=g)
        return (z * self.std[labels][:, :, None, None] + self.mean[labels][:, :, None, None]).clamp_(0, 1)

    def replace(self, xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch (normalised as the classifier's input) with each row of class
        c replaced by noise with probability p[c]; (batch, the noise rows' mask)."""
        y = yb.cpu()
        mask = torch.rand(len(y), generator=g) < self.p[y]
        if not bool(mask.any()):
            return xb, mask.to(xb.device)
        noise = self.draw(y[mask], g)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        xb = xb.clone()
        mask = mask.to(xb.device)
        xb[mask] = ((noise - mean) / std).to(xb.device, xb.dtype)
        return xb, mask
