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
import os

import numpy as np
import pandas as pd

from .defaults import FILTER_DEFAULTS, FILTER_METHODS  # noqa: F401 - importers take FILTER_DEFAULTS from here too
from .util import TibalanceError

log = logging.getLogger(__name__)


def kept_mask(table: pd.DataFrame) -> pd.Series:
    """The `kept` column of a filtered table as booleans (CSV round trips give strings)."""
    return table["kept"].astype(str).str.lower().eq("true")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean_knn_distance(query: np.ndarray, ref: np.ndarray, k: int, self_rows: list | None = None) -> np.ndarray:
    """Each query row's mean cosine distance to its k nearest ref rows;
    self_rows[i]: the ref row query row i is (left out), or None. With
    self_rows every row takes the same k, one less than ref has."""
    d = 1.0 - _unit(query) @ _unit(ref).T  # cosine distance
    for i, j in enumerate(self_rows or []):
        if j is not None:
            d[i, j] = np.inf
    k = max(1, min(k, d.shape[1] - (1 if self_rows is not None else 0)))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def knn_scores(feats: np.ndarray, own: np.ndarray, other: np.ndarray, k: int,
               leave_self_out: bool = False, self_rows: list | None = None) -> np.ndarray:
    """d_other / (d_own + d_other) for each row of feats (1: on the class, 0: on another).

    leave_self_out: feats are `own` itself; each row's own distance skips itself.
    self_rows[i]: the row of `own` that row i is (its distance to itself left out), or None."""
    if len(own) == 0 or len(other) == 0:
        raise TibalanceError("filter: knn needs real training images of the class and of at least one other class")
    d_own = _mean_knn_distance(feats, own, k, list(range(len(feats))) if leave_self_out else self_rows)
    d_other = _mean_knn_distance(feats, other, k)
    return np.where(np.isfinite(d_own), d_other / np.maximum(d_own + d_other, 1e-12), 0.0)


def diversity(feats: np.ndarray) -> float | None:
    """Mean pairwise cosine distance of a set's features (0: every image the
    same; None for fewer than 2 images)."""
    if len(feats) < 2:
        return None
    u = _unit(np.asarray(feats, np.float64))
    sims = u @ u.T
    n = len(u)
    return float((n * n - sims.sum()) / (n * (n - 1)))  # the diagonal's 1s count as 0 distance


def score_samples(samples: pd.DataFrame, train: pd.DataFrame, cls: str, classifier,
                  settings: dict, train_feats: np.ndarray | None = None,
                  features: dict | None = None) -> pd.DataFrame:
    """samples (path, ...) with `score`, `cutoff` and `kept` (score >= cutoff) added.

    train: the study's training rows (path, label) — the only real images read.
    train_feats: the classifier's features of those rows, in their order, when
    already computed (train_features); else they are computed here.
    features: a dict that receives the samples' features under "samples"."""
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
        if features is not None:
            features["samples"] = predict(classifier, list(out["path"]))[1]
        return out
    probs, feats = predict(classifier, list(out["path"]))
    if features is not None:
        features["samples"] = feats
    cutoff = float(s["threshold"])
    if method == "prob":
        score = probs[:, classifier.classes.index(cls)]
    else:
        is_own = (train["label"] == cls).to_numpy()
        real_feats = predict(classifier, list(train["path"]))[1] if train_feats is None else train_feats
        own, other = real_feats[is_own], real_feats[~is_own]
        k = int(s["k"])
        score = knn_scores(feats, own, other, k)
        if len(own) >= 2:  # the real images' own scores set the bar
            cutoff = float(np.quantile(knn_scores(own, own, other, k, leave_self_out=True), float(s["quantile"])))
    out["score"] = score
    out["cutoff"] = cutoff
    out["kept"] = out["score"] >= cutoff
    return out


def _train_rows(manifest: str) -> pd.DataFrame:
    from .data import load_manifest

    m = load_manifest(manifest)
    return m[m["split"] == "train"].reset_index(drop=True)  # never val or test


def write_train_features(manifest: str, model: str, out: str) -> int:
    """The classifier's features of the study's training images (path, label,
    features in manifest order), computed once for every filter job."""
    from .classifier import TrainedClassifier, predict
    from .util import pick_device

    train = _train_rows(manifest)
    clf = TrainedClassifier.load(model, device=pick_device("auto"))
    _, feats = predict(clf, list(train["path"]))
    tmp = f"{out}.tmp.npz"
    np.savez(tmp, path=train["path"].to_numpy(str), label=train["label"].to_numpy(str), features=feats)
    os.replace(tmp, out)
    log.info("features of %d training images -> %s", len(train), out)
    return len(train)


def read_train_features(path: str, train: pd.DataFrame) -> np.ndarray:
    """The features of `train`'s rows from a train_features file; an error when
    the file describes other images (a manifest changed since)."""
    with np.load(path) as z:
        paths, feats = z["path"], z["features"]
    if len(paths) != len(train) or not np.array_equal(paths, train["path"].to_numpy(str)):
        raise TibalanceError(f"{path}: features of other training images than the manifest's "
                             f"({len(paths)} vs {len(train)}); delete it and rerun")
    return feats


def filter_class(cls: str, samples_csv: str, manifest: str, model: str, settings: dict, out_csv: str,
                 features: str | None = None) -> dict:
    """Score a class's synthetic images and write them with their kept flag.
    features: the train_features file (else the training images' features are computed here)."""
    from .classifier import TrainedClassifier
    from .util import pick_device, write_csv

    samples = pd.read_csv(samples_csv, dtype={"path": str, "label": str})
    train = _train_rows(manifest)
    clf = TrainedClassifier.load(model, device=pick_device("auto"))
    feats = read_train_features(features, train) if features and settings.get("method") == "knn" else None
    got: dict = {}
    scored = score_samples(samples, train, cls, clf, settings, feats, features=got)
    write_csv(scored, out_csv)
    n, kept = len(scored), int(scored["kept"].sum())
    cutoff = float(scored["cutoff"].iloc[0]) if n else None
    # how varied the set is in the same feature space (the diversity Diff-II reports beside faithfulness)
    div = {"diversity": diversity(got["samples"]), "diversity_kept": diversity(got["samples"][kept_mask(scored).to_numpy()])}
    log.info("class %s: kept %d of %d synthetic images (filter %s, cutoff %s); diversity %s (kept %s)", cls, kept,
             n, settings.get("method"), cutoff, div["diversity"], div["diversity_kept"])
    return {"n": n, "kept": kept, "cutoff": cutoff, **div}
