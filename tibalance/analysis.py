"""Stage 3: per-class metrics, confusion matrix, and which classes are weak."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .util import TibalanceError, slugify

METRICS = ("precision", "recall", "f1", "accuracy")


def confusion_matrix(y_true, y_pred, classes: list[str]) -> np.ndarray:
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[idx[t], idx[p]] += 1
    return cm


def per_class_metrics(y_true, y_pred, classes: list[str]) -> pd.DataFrame:
    """precision / recall / F1 / accuracy / support per class.

    A class's accuracy is the share of its images classified correctly (= recall)."""
    cm = confusion_matrix(y_true, y_pred, classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                         "accuracy": recall, "support": support})


def select_weak_classes(metrics: pd.DataFrame, cfg: dict) -> list[str]:
    """Choose the weak classes from per-class metrics.

    cfg: strategy (bottom_k | threshold | explicit), metric, k, threshold,
    classes (explicit list), include (always weak), exclude (never weak).
    Returns class slugs in the order of the metrics table."""
    known = list(metrics["class"])
    def check(names, key):
        out = []
        for n in names or []:
            s = slugify(n)
            if s not in known:
                raise TibalanceError(f"analysis.{key}: unknown class {n!r} (classes: {', '.join(known)})")
            out.append(s)
        return out

    include, exclude = check(cfg.get("include"), "include"), check(cfg.get("exclude"), "exclude")
    strategy, metric = cfg.get("strategy", "bottom_k"), cfg.get("metric", "f1")
    if metric not in METRICS:
        raise TibalanceError(f"analysis.metric: unknown metric {metric!r} (one of {', '.join(METRICS)})")
    candidates = metrics[~metrics["class"].isin(exclude)]
    if strategy == "explicit":
        chosen = check(cfg.get("classes"), "classes")
    elif strategy == "bottom_k":
        # stable sort: ties broken by class order, so the choice is deterministic
        chosen = list(candidates.sort_values(metric, kind="mergesort")["class"][: int(cfg.get("k", 3))])
    elif strategy == "threshold":
        chosen = list(candidates[candidates[metric] < float(cfg["threshold"])]["class"])
    else:
        raise TibalanceError(f"analysis.strategy: unknown strategy {strategy!r}")
    weak = (set(chosen) | set(include)) - set(exclude)
    return [c for c in known if c in weak]


def plot_confusion(cm: np.ndarray, classes: list[str], out_png: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(4.0, min(24.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    with np.errstate(invalid="ignore"):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_yticks(range(n), classes, fontsize=7 if n > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100, metadata={"Software": None})
    plt.close(fig)


def analyse(predictions: pd.DataFrame, classes: list[str], cfg: dict,
            out_csv: str, out_png: str, out_weak: str, names: dict[str, str] | None = None) -> list[str]:
    """Per-class metrics of the baseline on cfg's split, its confusion matrix
    and the weak classes (slugs, in out_weak). The table and the plot name
    classes as the dataset spells them (names: slug -> display name); the
    table keeps the slug in a column of its own."""
    from .util import write_csv, write_json

    split = cfg.get("split", "val")
    pred = predictions[predictions["split"] == split]
    if pred.empty:
        raise TibalanceError(f"analysis.split: the baseline has no predictions on split {split!r}")
    metrics = per_class_metrics(pred["label"], pred["pred"], classes)
    weak = select_weak_classes(metrics, cfg)
    if not weak:  # stop here, before any class is adapted or any method retrained for nothing to compare
        metric = cfg.get("metric", "f1")
        low = metrics.sort_values(metric, kind="mergesort").iloc[0]
        raise TibalanceError(f"analysis: no class is weak under strategy {cfg.get('strategy', 'bottom_k')!r} on "
                             f"{split} (lowest {metric}: {low['class']} {low[metric]:.3f}); nothing to adapt or "
                             f"compare: change analysis.threshold, k or classes")
    names = names or {}
    shown = [names.get(c, c) for c in classes]
    table = metrics.assign(weak=metrics["class"].isin(weak))
    table.insert(1, "slug", table["class"])
    table["class"] = shown
    write_csv(table, out_csv)
    plot_confusion(confusion_matrix(pred["label"], pred["pred"], classes), shown, out_png,
                   f"baseline confusion ({split})")
    write_json(out_weak, {
        "classes": weak,
        "split": split,
        "strategy": cfg.get("strategy", "bottom_k"),
        "metric": cfg.get("metric", "f1"),
        "scores": {c: float(v) for c, v in zip(metrics["class"], metrics[cfg.get("metric", "f1")]) if c in weak},
    })
    return weak
