"""GeNIe and GeNIe-Ada (Koohpayegani et al., arXiv 2312.02548; official code
UCDvision/GeNIe): hard images of a weak class made from the training images of
the classes the baseline confuses with it, by image-to-image towards the weak
class at a noise level high enough to change the class and low enough to keep
the source's layout.

This module holds the decisions the method makes without a generator: which
classes give the start images (`confusers`, from the baseline's confusion on
val), which images (`start_images`: their training images, never a val, test
or judge image) and, for GeNIe-Ada, which noise level each start image keeps
(`ada_level`: the official notebook's largest-jump rule, `choose_levels` with
the baseline classifier), and the two sampling modes (`sample_genie`):

- `genie`: image i starts from start image i mod n (the confusers' training
  images in turn), noised to `genie.level` (0.8) and denoised under the weak
  class's prompt; labelled the weak class;
- `genie_ada`: each start image edited at every level of `genie.levels`
  (same seed and prompt: the candidate at a level is `genie`'s image at that
  level), the kept one chosen by `choose_levels`; levels, projections and the
  source recorded per image.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .util import TibalanceError

log = logging.getLogger(__name__)

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
    share = shares(source, outputs, target_mean)
    jumps = np.abs(np.diff(share))
    return float(levels[int(np.argmax(jumps)) + 1]), share.tolist(), jumps.tolist()


def shares(source: np.ndarray, outputs: np.ndarray, target_mean: np.ndarray) -> np.ndarray:
    """Each output's projection on the direction from the source to the target
    mean (all L2-normalised), as a share of the way: 0 at the source, 1 at the mean."""
    def unit(v):
        v = np.asarray(v, dtype=np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    s, t, o = unit(source), unit(target_mean), unit(outputs)
    direction = t - s
    norm2 = float(direction @ direction)
    if norm2 == 0.0:
        raise TibalanceError("genie: the start image's embedding is the weak class's mean: no direction to it")
    return ((o - s) @ direction) / norm2


class Aim:
    """The baseline classifier's view of GeNIe-Ada's edits: the start images'
    penultimate features and the weak class's mean normalised feature (of
    target_paths); `shares` and `choose` project edits on the way between."""

    def __init__(self, clf, sources: list[str], target_paths: list[str]):
        from .classifier import predict

        self.clf, self.predict = clf, predict
        _, self.src = predict(clf, list(sources))
        _, tgt = predict(clf, list(target_paths))
        if not len(tgt):
            raise TibalanceError("genie: no image of the weak class to aim the levels at")
        self.target_mean = (tgt / np.maximum(np.linalg.norm(tgt, axis=1, keepdims=True), 1e-12)).mean(0)

    def shares(self, rows: list[int], paths: list[str]) -> list[float]:
        """Each edit's projection, as a share of the way from its start image (rows) to the class's mean."""
        _, out = self.predict(self.clf, list(paths))
        return [float(shares(self.src[i], o[None], self.target_mean)[0]) for i, o in zip(rows, out)]

    def choose(self, candidates: list[list[str]], levels) -> list[dict]:
        """Per start image, its edits at the first len(candidates[i]) levels:
        {level, projections, jumps} (ada_level's; one edit: that level)."""
        flat = [p for c in candidates for p in c]
        _, out = self.predict(self.clf, flat) if flat else (None, np.zeros((0, 1)))
        picks, k = [], 0
        for i, c in enumerate(candidates):
            emb, k = out[k:k + len(c)], k + len(c)
            if len(c) == 1:
                picks.append({"level": float(levels[0]), "jumps": [],
                              "projections": shares(self.src[i], emb, self.target_mean).tolist()})
                continue
            picks.append(dict(zip(("level", "projections", "jumps"),
                                  ada_level(self.src[i], emb, self.target_mean, list(levels)[:len(c)]))))
        return picks


def choose_levels(clf, sources: list[str], candidates: list[list[str]], target_paths: list[str],
                  levels=LEVELS) -> list[dict]:
    """GeNIe-Ada with the baseline classifier `clf` (a TrainedClassifier): for
    each start image (sources[i]) its edits at the levels (candidates[i], one a
    level, ascending), embedded by the classifier's penultimate features; the
    target is the mean of the weak class's (target_paths) normalised features.
    Per start image: {level, projections, jumps} (ada_level's)."""
    if len(candidates) != len(sources):
        raise TibalanceError(f"genie: {len(candidates)} edit lists for {len(sources)} start images")
    if any(len(c) != len(levels) for c in candidates):
        raise TibalanceError(f"genie: an edit list does not hold one edit a level ({len(levels)})")
    return Aim(clf, sources, target_paths).choose(candidates, levels)


def sample_genie(model: str, mode: str, cls: str, cls_name: str, settings: dict, seed: int, manifest: str,
                 out_csv: str, image_dir: str, genie: dict, classes: list[str], baseline_model: str,
                 predictions: str, embeds: str | None = None, placeholder: str | None = None, num_vectors: int = 1,
                 lora: str | None = None, lora_prompt_name: str | None = None) -> int:
    """The class's `genie` / `genie_ada` images into image_dir, listed in
    out_csv (sampling.sample_class's columns, plus source_class and, for
    genie_ada, projections: the share of the way to the class's mean at each
    level). classes: the study's, in order (the confusers' ties). Returns how
    many images were newly generated."""
    import shutil
    from pathlib import Path

    import torch

    from .classifier import TrainedClassifier
    from .defaults import GENIE_DEFAULTS, SAMPLING_DEFAULTS
    from .generator import model_digest, resolve_resolution
    from .runtime import pipeline_dtypes
    from .sampling import (
        check_inputs,
        image_folder,
        image_seed,
        load_start_image,
        mode_pipeline,
        n_images_for,
        real_start_images,
        reuse_keys,
        subject_of,
    )
    from .util import file_digest, fingerprint, pick_device, write_csv

    s, g = {**SAMPLING_DEFAULTS, **(settings or {})}, {**GENIE_DEFAULTS, **(genie or {})}
    m = pd.read_csv(manifest, dtype=str)
    n = n_images_for(s["n_images"], cls, m)
    check_inputs(mode, cls, n, embeds, lora, g["concept"])
    subject = subject_of(mode, cls, cls_name, s, placeholder, num_vectors, lora_prompt_name, g["concept"])
    templates = list(s["templates"])
    prompts = [templates[i % len(templates)].format(subject) for i in range(n)]
    seeds = [image_seed(seed, cls, i) for i in range(n)]
    k = None if g["confusers"] == "all" else int(g["confusers"])
    starts = start_images(m, pd.read_csv(predictions, dtype={"path": str}), classes, cls, k) if n else None
    start = [starts["path"][i % len(starts)] for i in range(n)] if n else []
    source = [starts["source_class"][i % len(starts)] for i in range(n)] if n else []
    levels = [float(g["level"])] if mode == "genie" else [float(x) for x in g["levels"]]
    if len({int(int(s["steps"]) * lv) for lv in levels}) < len(levels):
        log.warning("genie.levels %s at %s steps: some levels denoise the same steps (the same images); "
                    "more sampling.steps tell them apart", levels, s["steps"])
    res = s["resolution"] = resolve_resolution(s["resolution"], model, "sampling.resolution") if n else s["resolution"]
    out = Path(image_dir)
    fp = fingerprint({"model": model, "model_digest": model_digest(model) if n else None, "method": mode,
                      "subject": subject, "settings": {k_: s[k_] for k_ in reuse_keys(s, mode)}, "seed": seed,
                      "templates": templates,
                      "genie": {k_: g.get(k_) for k_ in ("confusers", "concept", "level", "levels", "early_stop")},
                      "levels": levels, "starts": sorted(set(start)) or None,
                      "embeds": file_digest(embeds) if embeds else None,
                      **({"lora": file_digest(lora)} if lora else {}),
                      **({"classifier": file_digest(baseline_model)} if mode == "genie_ada" and n else {})})
    paths = image_folder(out, fp, n)
    (out / "candidates").mkdir(exist_ok=True)
    cand = {(i, lv): (paths[i] if mode == "genie" else out / "candidates" / f"{i:05d}_{lv:g}.png")
            for i in range(n) for lv in levels}
    todo = [i for i in range(n) if not paths[i].exists()]
    log.info("class %s, %s: %d images wanted (%d start images of %s), %d to make", cls, mode, n,
             len(starts) if n else 0, ", ".join(dict.fromkeys(source)) or "no class", len(todo))
    stop = g.get("early_stop") if mode == "genie_ada" else None
    aim = Aim(TrainedClassifier.load(baseline_model), start, real_start_images(m, cls)) if stop is not None else None
    active = list(todo if mode == "genie" else range(n))  # genie_ada: every image's levels, to choose among
    done = {i: [] for i in range(n)}  # the levels each image was edited at
    pipe = None
    for lv in levels:  # one level a call (image-to-image takes one strength)
        need = [i for i in active if not cand[i, lv].exists()]
        if need and pipe is None:
            device = pick_device(s["device"])
            wdtype, amp_dtype = pipeline_dtypes(device, s.get("mixed_precision", "auto"), "sampling.mixed_precision")
            autocast = wdtype is None and amp_dtype is not None
            pipe = mode_pipeline(model, mode, s, device, wdtype, embeds, placeholder, lora, g["concept"])
            bs = 8 if s["batch_size"] == "auto" else int(s["batch_size"])
        if need:
            for b in range(0, len(need), bs):
                group = need[b:b + bs]
                kw = dict(num_inference_steps=int(s["steps"]), guidance_scale=float(s["guidance_scale"]),
                          negative_prompt=[s["negative_prompt"]] * len(group) if s["negative_prompt"] else None,
                          generator=[torch.Generator().manual_seed(seeds[i]) for i in group],
                          image=[load_start_image(start[i], res) for i in group], strength=lv)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    images = pipe([prompts[i] for i in group], **kw).images
                for i, im in zip(group, images):
                    tmp = cand[i, lv].with_suffix(".tmp.png")
                    im.save(tmp)
                    tmp.replace(cand[i, lv])
        for i in active:
            done[i].append(lv)
        if aim is not None and active:  # the early stop: an edit past `stop` of the way ends its image's levels
            passed = aim.shares(active, [str(cand[i, lv]) for i in active])
            active = [i for i, x in zip(active, passed) if x < float(stop)]
    level_of, proj = [levels[0]] * n, [""] * n
    if mode == "genie_ada" and n:
        aim = aim or Aim(TrainedClassifier.load(baseline_model), start, real_start_images(m, cls))
        picks = aim.choose([[str(cand[i, lv]) for lv in done[i]] for i in range(n)], levels)
        for i, p in enumerate(picks):
            level_of[i], proj[i] = p["level"], ";".join(f"{x:.4f}" for x in p["projections"])
            if not paths[i].exists():
                shutil.copyfile(cand[i, p["level"]], paths[i])
    write_csv(pd.DataFrame({"index": range(n), "path": [str(p) for p in paths], "seed": seeds, "prompt": prompts,
                            "label": cls, "method": mode, "start_image": start, "strength": level_of,
                            "source_class": source, "projections": proj}), out_csv)
    return len(todo)
