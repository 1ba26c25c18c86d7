"""FID / KID of synthetic images against a class's real held-out images, through
torch-fidelity, with two feature networks:

- ``inception``: torch-fidelity's Inception-v3 (the standard; weights from a local
  file when given, else torch-fidelity's own download);
- ``classifier``: the baseline classifier's penultimate features, registered as a
  torch-fidelity feature extractor: a domain-specific distance that also works
  offline.

Real-image features are cached by torch-fidelity under a per-class name that
carries a digest of the feature network's file and of the real images (their
paths and bytes): computed once per class and reused across the sampling
modes, and never reused after a retrained classifier or a changed real set."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .util import TibalanceError

log = logging.getLogger(__name__)

CLASSIFIER_EXTRACTOR = "tibalance-classifier"
MIN_IMAGES = 2  # FID needs a covariance: below this on either side it is not computed
INCEPTION_EXTRACTOR = "inception-v3-compat"


class ImageFiles(Dataset):
    """Image files as the uint8 [3, S, S] tensors torch-fidelity expects."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = list(paths), int(size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _classifier_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    from .classifier import IMAGENET_MEAN, IMAGENET_STD, TrainedClassifier

    class ClassifierFeatures(FeatureExtractorBase):
        """Penultimate features of a tibalance classifier checkpoint
        (passed as torch-fidelity's feature_extractor_weights_path)."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if not feature_extractor_weights_path:
                raise TibalanceError("fid: the classifier feature extractor needs the classifier checkpoint path")
            self.clf = TrainedClassifier.load(feature_extractor_weights_path)
            self.model = self.clf.model  # registered as a submodule: .cuda() moves it
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        @staticmethod
        def get_provided_features_list():
            return ("penultimate",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "penultimate"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            x = x.float() / 255.0
            size = self.clf.image_size
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            feats, _ = self.clf.features_and_logits((x - self.mean) / self.std)
            return (feats.double(),)

    return ClassifierFeatures


def register_classifier_extractor() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(CLASSIFIER_EXTRACTOR, _classifier_extractor_class())


def real_side_key(real_paths: list[str], weights: str | None) -> str:
    """A short digest of what the real side's features depend on: the feature
    network's weights file (when there is one) and every real image's path and
    bytes."""
    import os

    from .util import file_digest, fingerprint

    return fingerprint({"weights": file_digest(weights) if weights and os.path.isfile(weights) else weights,
                        "real": [(str(p), file_digest(p)) for p in real_paths]})[:16]


def fid_kid(real_paths: list[str], fake_paths: list[str], network: str, *, classifier: str | None = None,
            inception_weights: str | None = None, cache_root: str | None = None,
            real_cache_name: str | None = None, device: str = "cpu", batch_size: int = 64) -> dict:
    """FID and KID (mean, std) of fake vs real images under one feature network.

    The result names the network and how many images each side used. With
    cache_root and real_cache_name, the real side's features are computed once."""
    import torch_fidelity

    if len(real_paths) < MIN_IMAGES or len(fake_paths) < MIN_IMAGES:
        raise TibalanceError(f"fid: need at least {MIN_IMAGES} real and {MIN_IMAGES} synthetic images (got {len(real_paths)} real, "
                             f"{len(fake_paths)} synthetic)")
    if network == "classifier":
        register_classifier_extractor()
        name, weights = CLASSIFIER_EXTRACTOR, classifier
        from .classifier import TrainedClassifier

        size = TrainedClassifier.load(classifier).image_size
    elif network == "inception":
        name, weights, size = INCEPTION_EXTRACTOR, inception_weights, 299
    else:
        raise TibalanceError(f"metrics.networks: unknown feature network {network!r} (inception, classifier)")
    kwargs = dict(
        input1=ImageFiles(fake_paths, size), input2=ImageFiles(real_paths, size),
        fid=True, kid=True, feature_extractor=name, feature_extractor_weights_path=weights,
        kid_subset_size=min(len(real_paths), len(fake_paths), 1000), batch_size=batch_size,
        cuda=str(device).startswith("cuda"), verbose=False, save_cpu_ram=True,
    )
    if cache_root and real_cache_name:
        kwargs.update(cache=True, cache_root=cache_root,
                      input2_cache_name=f"{real_cache_name}-{network}-{real_side_key(real_paths, weights)}")
    else:
        kwargs.update(cache=False)
    m = torch_fidelity.calculate_metrics(**kwargs)
    return {"network": network, "fid": float(m["frechet_inception_distance"]),
            "kid_mean": float(m["kernel_inception_distance_mean"]),
            "kid_std": float(m["kernel_inception_distance_std"]),
            "n_real": len(real_paths), "n_fake": len(fake_paths)}
