"""A trained classifier's per-image predictions on the study's splits, and the
split-level accuracy and macro-F1 (the baseline, every retraining run, the judge)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def split_metrics(df: pd.DataFrame, classes: list[str]) -> dict:
    from .analysis import per_class_metrics

    out = {}
    for split, grp in df.groupby("split", sort=True):
        pc = per_class_metrics(grp["label"], grp["pred"], classes)
        present = pc[pc["support"] > 0]
        out[split] = {"accuracy": float((grp["label"] == grp["pred"]).mean()),
                      "macro_f1": float(present["f1"].mean()),
                      "n": int(len(grp))}
    return out


def evaluate(clf, manifest: pd.DataFrame, splits=("val", "test"), frozen=None) -> pd.DataFrame:
    """Per-image predictions of a classifier on the given splits. frozen:
    (FrozenFeatures, below) when the classifier's stages below `below` are the
    cache's: their outputs of the test images are read, not recomputed."""
    from .classifier import predict

    ev = manifest[manifest["split"].isin(splits)].reset_index(drop=True)
    if frozen is not None and set(splits) == {"test"}:
        from .frozen import predict_cached

        probs = predict_cached(clf, list(ev["path"]), *frozen)
    else:
        probs, _ = predict(clf, list(ev["path"]))
    idx = {c: i for i, c in enumerate(clf.classes)}
    pred_i = probs.argmax(1)
    ev = ev.assign(pred=[clf.classes[i] for i in pred_i],
                   confidence=probs[np.arange(len(ev)), pred_i],
                   prob_true=probs[np.arange(len(ev)), [idx[label] for label in ev["label"]]])
    return ev[["path", "label", "split", "pred", "confidence", "prob_true"]]
