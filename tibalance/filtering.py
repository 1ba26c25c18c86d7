"""Filtering of synthetic images: every image gets a score and a kept flag.

The filter looks only at the study's training images (never val or test), in
the baseline classifier's feature space:

- ``knn``: does the image fall within the class's region? score = d_other /
  (d_own + d_other), where d_own (d_other) is the mean cosine distance to its k
  nearest real training images of the class (of the other classes): 1 on the
  class, 0 on another. A rare class is sparse (10 images against thousands),
  so even its own real images score low; the cutoff is therefore calibrated on
  them: each real training image of the class is scored the same way (itself
  left out), and an image is kept when its score reaches the `quantile` of
  those real scores (0.25: at least as on-class as the least typical quarter
  of the real images). With fewer than 2 real images the cutoff is `threshold`.
- ``prob``: the baseline classifier's probability of the class; kept when
  >= threshold.
- ``none``: every image kept (score left empty): the filter switched off.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .util import TibalanceError

log = logging.getLogger(__name__)

FILTER_DEFAULTS = {"method": "knn", "k": 5, "quantile": 0.25, "threshold": 0.5}
FILTER_METHODS = ("knn", "prob", "none")


def kept_mask(table: pd.DataFrame) -> pd.Series:
    """The `kept` column of a filtered table as booleans (CSV round trips give strings)."""
    return table["kept"].astype(str).str.lower().eq("true")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean_knn_distance(query: np.ndarray, ref: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    d = 1.0 - _unit(query) @ _unit(ref).T  # cosine distance
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = max(1, min(k, d.shape[1] - (1 if exclude_self else 0)))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def knn_scores(feats: np.ndarray, own: np.ndarray, other: np.ndarray, k: int,
               leave_self_out: bool = False) -> np.ndarray:
    """d_other / (d_own + d_other) for each row of feats (1: on the class, 0: on another).

    leave_self_out: feats are `own` itself; each row's own distance skips itself."""
    if len(own) == 0 or len(other) == 0:
        raise TibalanceError("filter: knn needs real training images of the class and of at least one other class")
    d_own = _mean_knn_distance(feats, own, k, exclude_self=leave_self_out)
    d_other = _mean_knn_distance(feats, other, k)
    return d_other / np.maximum(d_own + d_other, 1e-12)


def score_samples(samples: pd.DataFrame, train: pd.DataFrame, cls: str, classifier,
                  settings: dict) -> pd.DataFrame:
    """samples (path, ...) with `score`, `cutoff` and `kept` (score >= cutoff) added.

    train: the study's training rows (path, label) — the only real images read."""
    from .classifier import predict

    s = {**FILTER_DEFAULTS, **(settings or {})}
    method = s["method"]
    if method not in FILTER_METHODS:
        raise TibalanceError(f"filter.method: unknown filter {method!r} ({', '.join(FILTER_METHODS)})")
    out = samples.copy()
    if method == "none" or out.empty:
        out["score"] = np.nan
        out["cutoff"] = np.nan
        out["kept"] = True
        return out
    probs, feats = predict(classifier, list(out["path"]))
    cutoff = float(s["threshold"])
    if method == "prob":
        score = probs[:, classifier.classes.index(cls)]
    else:
        is_own = (train["label"] == cls).to_numpy()
        _, real_feats = predict(classifier, list(train["path"]))
        own, other = real_feats[is_own], real_feats[~is_own]
        k = int(s["k"])
        score = knn_scores(feats, own, other, k)
        if len(own) >= 2:  # the real images' own scores set the bar
            cutoff = float(np.quantile(knn_scores(own, own, other, k, leave_self_out=True), float(s["quantile"])))
    out["score"] = score
    out["cutoff"] = cutoff
    out["kept"] = out["score"] >= cutoff
    return out


def filter_class(cls: str, samples_csv: str, manifest: str, model: str, settings: dict, out_csv: str) -> dict:
    """Score a class's synthetic images and write them with their kept flag."""
    from .classifier import TrainedClassifier
    from .data import load_manifest
    from .util import pick_device, write_csv

    samples = pd.read_csv(samples_csv, dtype={"path": str, "label": str})
    m = load_manifest(manifest)
    train = m[m["split"] == "train"].reset_index(drop=True)  # never val or test
    clf = TrainedClassifier.load(model, device=pick_device("auto"))
    scored = score_samples(samples, train, cls, clf, settings)
    write_csv(scored, out_csv)
    n, kept = len(scored), int(scored["kept"].sum())
    cutoff = float(scored["cutoff"].iloc[0]) if n else None
    log.info("class %s: kept %d of %d synthetic images (filter %s, cutoff %s)", cls, kept, n,
             settings.get("method"), cutoff)
    return {"n": n, "kept": kept, "cutoff": cutoff}
