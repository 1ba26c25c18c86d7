"""Feedback-guided sampling (Askari-Hemmat et al., "Feedback-guided Data
Synthesis with Diffusion Models", TMLR 2024): mode `fg_i2i` is `ti_i2i` with,
on the first `feedback.share` of its denoising steps, the gradient of a fixed
classifier's feedback criterion added to the latents, so the images move to
where the classifier is unsure (entropy) or wrong (loss on the weak class).

The classifier is the study's baseline. Each guided step decodes the current
latents with the VAE, feeds the images to the classifier (its input size and
normalisation), and takes the gradient of the criterion summed over the batch
(each image's own) with respect to the latents; the step adds `feedback.scale`
times that gradient scaled to unit root-mean-square per image (so the scale is
in units of the latents' spread, whatever the criterion's size). Scale 0 adds
nothing: the images are `ti_i2i`'s, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .util import TibalanceError

CRITERIA = ("entropy", "loss")


@dataclass(frozen=True)
class Feedback:
    """One fg_i2i job's guidance: the scale, the share of the steps it acts on,
    the criterion, and the classifier with the weak class's index in it."""

    scale: float
    share: float
    criterion: str
    classifier: object      # a TrainedClassifier (its model in eval mode)
    target: int

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise TibalanceError(f"feedback.criterion: unknown {self.criterion!r} ({', '.join(CRITERIA)})")
        if not 0 <= self.share <= 1:
            raise TibalanceError(f"feedback.share: {self.share} is not a share between 0 and 1")

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's criterion (images in [-1, 1], [B, 3, H, W])."""
        from .classifier import IMAGENET_MEAN, IMAGENET_STD

        clf = self.classifier
        x = F.interpolate((images.float() + 1) / 2, size=(clf.image_size, clf.image_size), mode="bilinear",
                          antialias=True, align_corners=False)
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        logits = clf.model(x).float()
        if self.criterion == "entropy":
            logp = torch.log_softmax(logits, 1)
            return -(logp.exp() * logp).sum(1)
        return F.cross_entropy(logits, torch.full((len(x),), self.target), reduction="none")

    def __call__(self, pipe, i: int, t, kwargs: dict) -> dict:
        """diffusers' callback_on_step_end: the latents after step i, guided on the first share of the steps."""
        if i >= self.share * pipe.num_timesteps:
            return kwargs
        latents = kwargs["latents"]
        with torch.enable_grad(), torch.autocast(latents.device.type, enabled=False):
            lat = latents.detach().float().requires_grad_(True)
            images = pipe.vae.decode(lat.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
            grad, = torch.autograd.grad(self.score(images).sum(), lat)
        rms = grad.pow(2).mean(dim=tuple(range(1, grad.dim())), keepdim=True).sqrt().clamp_min(1e-12)
        kwargs["latents"] = (latents.float() + self.scale * grad / rms).to(latents.dtype)
        return kwargs
