"""Class fidelity: does a judge classifier that takes no part in the study see
the intended class in each synthetic set?

The judge is either a checkpoint the user gives (`judge.model`, tibalance's
classifier format) or trained here on images the study does not use (the
demo: the images its caps and imbalance left out, never the test split). It
reports, per weak class and sampling mode, the share of images it assigns to
the intended class (over all images and over the filter's kept ones), where the
others go, and, for reference, its share on the class's real val images."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .util import TibalanceError

log = logging.getLogger(__name__)


def judge_predictions(clf, paths: list[str]) -> list[str]:
    from .classifier import predict

    probs, _ = predict(clf, list(paths))
    return [clf.classes[i] for i in probs.argmax(1)] if len(paths) else []


def share_table(cls: str, preds: list[str], kept: list[bool] | None = None, top: int = 3) -> dict:
    """Share of predictions equal to cls (all, and among kept), and the commonest other classes."""
    n = len(preds)
    out = {"n": n, "share": None, "n_kept": None, "share_kept": None, "others": {}}
    if n == 0:
        return out
    preds_a = np.asarray(preds)
    out["share"] = float((preds_a == cls).mean())
    if kept is not None:
        k = np.asarray(kept, dtype=bool)
        out["n_kept"] = int(k.sum())
        out["share_kept"] = float((preds_a[k] == cls).mean()) if k.any() else None
    others = pd.Series(preds_a[preds_a != cls]).value_counts()
    out["others"] = {str(c): float(v / n) for c, v in others.head(top).items()}
    return out


def judge_class(cls: str, judge_model: str, manifest: str, filtered_csvs: dict[str, str], out_json: str) -> dict:
    """The judge's verdict on each of the class's synthetic sets (and its real val images)."""
    from .classifier import TrainedClassifier
    from .data import load_manifest
    from .filtering import kept_mask
    from .util import pick_device, write_json

    clf = TrainedClassifier.load(judge_model, device=pick_device("auto"))
    if cls not in clf.classes:
        raise TibalanceError(f"judge.model: {judge_model} does not know class {cls!r} (it knows {clf.classes})")
    m = load_manifest(manifest)
    real_val = list(m[(m["split"] == "val") & (m["label"] == cls)]["path"])
    result = {"class": cls, "judge": judge_model, "real_val": share_table(cls, judge_predictions(clf, real_val))}
    for kind, csv in sorted(filtered_csvs.items()):
        t = pd.read_csv(csv, dtype={"path": str})
        kept = kept_mask(t).tolist() if "kept" in t else None
        result[kind] = share_table(cls, judge_predictions(clf, list(t["path"])), kept)
        log.info("class %s, %s: judge sees the class in %s of %d images", cls, kind, result[kind]["share"], len(t))
    write_json(out_json, result)
    return result


def train_judge(pool_csv: str, manifest: str, classes: str, clf_cfg: dict, seed: int,
                model_out: str, metrics_out: str) -> dict:
    """Train the judge on the pool; its per-class accuracy on the study's val split."""
    from .analysis import per_class_metrics
    from .data import load_manifest
    from .evaluation import evaluate
    from .training import train_classifier
    from .util import read_json, write_json

    pool = pd.read_csv(pool_csv, dtype=str)
    order = read_json(classes)["classes"]
    clf = train_classifier(pool["path"], pool["label"], order, clf_cfg, seed, progress_desc="judge",
                           checkpoint=str(Path(model_out).parent / "resume" / "judge.pt"))
    clf.save(model_out)
    pred = evaluate(clf, load_manifest(manifest), splits=("val",))
    pc = per_class_metrics(pred["label"], pred["pred"], order).set_index("class")
    metrics = {"val_accuracy": float((pred["label"] == pred["pred"]).mean()),
               "val_per_class_accuracy": pc["accuracy"].to_dict(),
               "train_counts": pool.groupby("label").size().to_dict()}
    write_json(metrics_out, metrics)
    log.info("judge: val accuracy %.4f", metrics["val_accuracy"])
    return metrics
