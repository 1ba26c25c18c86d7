"""GeNIe and GeNIe-Ada (Koohpayegani et al., arXiv 2312.02548; official code
UCDvision/GeNIe): hard images of a weak class made from the training images of
the classes the baseline confuses with it, by image-to-image towards the weak
class at a noise level high enough to change the class and low enough to keep
the source's layout.

This module holds the decisions the method makes without a generator: which
classes give the start images (`confusers`, from the baseline's confusion on
val), which images (`start_images`: their training images, never a val, test
or judge image) and, for GeNIe-Ada, which noise level each start image keeps
(`ada_level`: the official notebook's largest-jump rule). The sampling mode
that runs them is issue #48's remaining work.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .util import TibalanceError

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)  # GeNIe-Ada's noise levels (the paper's and the official code's)


def confusers(cm: np.ndarray, classes: list[str], weak: str, k: int | None = 3) -> list[str]:
    """The classes the baseline confuses most with `weak` on val: by the images
    of `weak` predicted as each class plus that class's images predicted as
    `weak` (cm[true, pred]), most first, ties in class order; only classes
    with at least one confusion; k None: all of them (the paper's `all`)."""
    if weak not in classes:
        raise TibalanceError(f"genie: class {weak!r} is not one of the study's classes")
    w = classes.index(weak)
    both = np.asarray(cm)[w, :] + np.asarray(cm)[:, w]
    order = sorted((c for c in range(len(classes)) if c != w and both[c] > 0), key=lambda c: (-both[c], c))
    return [classes[c] for c in (order if k is None else order[:int(k)])]


def start_images(manifest: pd.DataFrame, predictions: pd.DataFrame, classes: list[str], weak: str,
                 k: int | None = 3) -> pd.DataFrame:
    """GeNIe's start images for `weak`: the training images (the manifest's
    train split: never val, test or the judge's pool, which the manifest does
    not hold) of the classes the baseline confuses with it on val (its
    predictions' val rows), taken in turn from each confuser (most confused
    first) so that any first n mix them; columns path, source_class."""
    from .analysis import confusion_matrix

    val = predictions[predictions["split"] == "val"]
    if val.empty:
        raise TibalanceError("genie: the baseline's predictions hold no val row to find the confused classes in")
    order = confusers(confusion_matrix(val["label"], val["pred"], classes), classes, weak, k)
    train = manifest[(manifest["split"] == "train") & manifest["label"].isin(order)]
    if train.empty:
        raise TibalanceError(f"genie: the baseline confuses no class with {weak!r} on val, or those classes have no "
                             f"training image: no start image")
    train = train.assign(rank=train.groupby("label").cumcount(), conf=train["label"].map(order.index))
    out = train.sort_values(["rank", "conf"], kind="stable")
    return out[["path", "label"]].rename(columns={"label": "source_class"}).reset_index(drop=True)


def ada_level(source: np.ndarray, outputs: np.ndarray, target_mean: np.ndarray,
              levels=LEVELS) -> tuple[float, list[float], list[float]]:
    """GeNIe-Ada's level for one start image. source: its embedding [D];
    outputs: the embeddings [L, D] of its edits at the L levels (ascending);
    target_mean: the weak class's mean embedding. Every embedding is
    L2-normalised, each output projected on the direction from the source to
    the target mean; the level kept is the one just after the largest jump
    between consecutive projections (the first such, on a tie). Returns (level,
    the projections as a share of the way to the target mean, the jumps)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if len(outputs) != len(levels) or len(levels) < 2:
        raise TibalanceError(f"genie.levels: {len(outputs)} edits for {len(levels)} levels (need 2 or more, one each)")

    def unit(v):
        v = np.asarray(v, dtype=np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    s, t, o = unit(source), unit(target_mean), unit(outputs)
    direction = t - s
    norm2 = float(direction @ direction)
    if norm2 == 0.0:
        raise TibalanceError("genie: the start image's embedding is the weak class's mean: no direction to it")
    share = ((o - s) @ direction) / norm2  # 0 at the source, 1 at the target mean
    jumps = np.abs(np.diff(share))
    return float(levels[int(np.argmax(jumps)) + 1]), share.tolist(), jumps.tolist()


def choose_levels(clf, sources: list[str], candidates: list[list[str]], target_paths: list[str],
                  levels=LEVELS) -> list[dict]:
    """GeNIe-Ada with the baseline classifier `clf` (a TrainedClassifier): for
    each start image (sources[i]) its edits at the levels (candidates[i], one a
    level, ascending), embedded by the classifier's penultimate features; the
    target is the mean of the weak class's (target_paths) normalised features.
    Per start image: {level, projections, jumps} (ada_level's)."""
    from .classifier import predict

    if len(candidates) != len(sources):
        raise TibalanceError(f"genie: {len(candidates)} edit lists for {len(sources)} start images")
    _, src = predict(clf, list(sources))
    _, tgt = predict(clf, list(target_paths))
    if not len(tgt):
        raise TibalanceError("genie: no image of the weak class to aim the levels at")
    target_mean = (tgt / np.maximum(np.linalg.norm(tgt, axis=1, keepdims=True), 1e-12)).mean(0)
    _, out = predict(clf, [p for c in candidates for p in c])
    out = out.reshape(len(sources), len(levels), -1)
    return [dict(zip(("level", "projections", "jumps"), ada_level(src[i], out[i], target_mean, levels)))
            for i in range(len(sources))]
