"""Stage 1: build the image manifest (path, label, split) from a dataset source
(sources.py), with deterministic induced imbalance and corrupt-image
screening; the judge's pool and the oracle's set from the images left out."""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .sources import SPLITS, SourceData, check_root, load_source
from .util import TibalanceError, derive_seed, save_image_atomic, slugify, write_csv, write_json

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- splits and imbalance

def make_splits(rec: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Carve val (and test, when the source has none) out of train, per class,
    deterministically by a per-class seed."""
    rec = rec.copy()
    need = [s for s, f in (("val", val_fraction), ("test", test_fraction))
            if s not in set(rec["split"]) and f > 0]
    if not need:
        return rec
    for cls, idx in rec[rec["split"] == "train"].groupby("label").groups.items():
        idx = np.array(sorted(idx))
        rng = np.random.default_rng(derive_seed(seed, "split", cls))
        rng.shuffle(idx)
        start = 0
        for split in need:
            frac = val_fraction if split == "val" else test_fraction
            n = int(round(len(idx) * frac))
            rec.loc[idx[start:start + n], "split"] = split
            start += n
    return rec


def cap_per_class(rec: pd.DataFrame, caps: dict, seed: int) -> pd.DataFrame:
    """Subsample each class of each split to at most caps[split] images."""
    keep = []
    for (split, cls), grp in rec.groupby(["split", "label"], sort=True):
        cap = (caps or {}).get(split)
        idx = grp.index.to_numpy()
        if cap is not None and len(idx) > cap:
            rng = np.random.default_rng(derive_seed(seed, "cap", split, cls))
            idx = np.sort(rng.choice(idx, size=int(cap), replace=False))
        keep.append(idx)
    return rec.loc[np.sort(np.concatenate(keep))] if keep else rec


def imbalance_counts(counts: dict[str, int], order: list[str], imb: dict) -> dict[str, int]:
    """Target train counts per class under an imbalance profile.

    - none: unchanged;
    - fraction: listed classes keep round(n * fraction) (at least min_per_class);
    - long_tail: class i (in class order) keeps n_max * ratio ** (-i / (C - 1)),
      the CIFAR-10-LT profile: the first class keeps n_max, the last n_max / ratio.
    """
    kind = imb.get("type", "none")
    floor = int(imb.get("min_per_class", 1))
    if kind == "none":
        return dict(counts)
    if kind == "fraction":
        fracs = imb.get("fractions", {})
        out = dict(counts)
        for name, f in fracs.items():
            cls = slugify(name)
            if cls not in counts:
                raise TibalanceError(f"data.imbalance.fractions: unknown class {name!r}")
            out[cls] = min(counts[cls], max(floor, int(round(counts[cls] * float(f)))))
        return out
    if kind == "long_tail":
        ratio = float(imb["ratio"])
        n_max = max(counts.values())
        c = len(order)
        out = {}
        for i, cls in enumerate(order):
            target = n_max * ratio ** (-i / (c - 1)) if c > 1 else n_max
            out[cls] = min(counts[cls], max(floor, int(math.floor(target))))
        return out
    raise TibalanceError(f"data.imbalance.type: unknown profile {kind!r}")


def apply_imbalance(rec: pd.DataFrame, order: list[str], imb: dict, seed: int) -> pd.DataFrame:
    """Keep a seeded subset of each class's train images per imbalance_counts."""
    train = rec[rec["split"] == "train"]
    counts = train.groupby("label").size().to_dict()
    targets = imbalance_counts({c: int(counts.get(c, 0)) for c in order}, order, imb)
    drop = []
    for cls, grp in train.groupby("label"):
        n = targets[cls]
        if n < len(grp):
            rng = np.random.default_rng(derive_seed(seed, "imbalance", cls))
            keep = set(rng.choice(grp.index.to_numpy(), size=n, replace=False).tolist())
            drop += [i for i in grp.index if i not in keep]
    return rec.drop(index=drop)


# --------------------------------------------------------------------------- materialise

# the most pixels an image may have (data.max_pixels' default): a 20,000 x 20,000
# photo (400 M px, ~1.2 GB decoded) is refused from its header, never decoded
MAX_PIXELS = 64_000_000


def check_image(path: str | os.PathLike, root: str | os.PathLike | None = None,
                max_pixels: int = MAX_PIXELS) -> str | None:
    """None if the file decodes as an image, else a short reason: a link
    leading out of the dataset's folder (root), an empty file, a size over
    max_pixels (read from the header: refused before decoding), a file no
    decoder reads or one that ends early."""
    p = Path(path)
    if root is not None and p.is_symlink():
        target, base = p.resolve(), Path(root).resolve()
        if base not in target.parents:
            return f"a link out of the dataset folder (to {target})"
    try:
        if p.stat().st_size == 0:
            return "an empty file (0 bytes)"
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the header only: this function's own limit, with its own message
        try:
            im = Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        with im:
            if im.width * im.height > max_pixels:
                return f"{im.width} x {im.height} px is over data.max_pixels ({max_pixels}): not decoded"
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


def needs_conversion(im: Image.Image) -> bool:
    """Whether the loaders' plain convert("RGB") would get the image wrong:
    16- and 32-bit samples (clipped to white), transparency (dropped onto the
    palette's colours), CMYK."""
    return im.mode not in ("RGB", "L", "1") or "transparency" in im.info


def to_rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: 16-bit (and 32-bit) samples scaled to 0-255 by
    their type's range, transparent areas composited onto white, CMYK and
    palettes converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def build_manifest(data_cfg: dict, seed: int, out_manifest: str, out_classes: str,
                   out_skipped: str, image_dir: str) -> pd.DataFrame:
    """Run the whole data stage; returns the manifest (path, label, split)."""
    src, rec, _, skipped = select_records(data_cfg, seed)
    order = list(src.names)
    manifest = pd.DataFrame(_materialise(src, rec, image_dir), columns=["path", "label", "split"])
    manifest["split"] = pd.Categorical(manifest["split"], SPLITS, ordered=True)
    manifest["label"] = pd.Categorical(manifest["label"], order, ordered=True)
    manifest = manifest.sort_values(["split", "label", "path"]).astype(str).reset_index(drop=True)
    for split in ("train", "val", "test"):
        missing = [c for c in order if not ((manifest.split == split) & (manifest.label == c)).any()]
        if missing:  # a class without val images cannot be analysed, one without test images never judged
            raise TibalanceError(f"data: class {missing[0]!r} has no readable {split} images"
                                 + (" (the weak classes are chosen on val)" if split == "val" else
                                    " (its lift could not be measured)" if split == "test" else ""))
    write_csv(manifest, out_manifest)
    write_csv(pd.DataFrame(skipped, columns=["path", "label", "split", "reason"]), out_skipped)
    counts = manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    write_json(out_classes, {
        "classes": order,
        "names": src.names,
        "counts": {c: {s: int(counts.loc[c, s]) if s in counts.columns and c in counts.index else 0
                       for s in SPLITS} for c in order},
    })
    log.info("manifest: %d images (%s), %d skipped", len(manifest),
             manifest.groupby("split").size().to_dict(), len(skipped))
    return manifest


def select_records(data_cfg: dict, seed: int):
    """(source, the study's records, the unused records, skipped files).

    The unused records are the train/val-side images that the caps and the
    imbalance left out (never test): what an independent judge may learn from."""
    src, _, rec, unused, skipped = _select(data_cfg, seed)
    return src, rec, unused, skipped


def _select(data_cfg: dict, seed: int):
    """select_records, with the records after the caps and before the imbalance as well."""
    check_root(data_cfg)
    src = load_source(data_cfg, seed)
    order = list(src.names)
    skipped = []
    if not src.arrays:  # file-based: screen unreadable files before any split is drawn
        root, most = data_cfg.get("root"), int(data_cfg.get("max_pixels") or MAX_PIXELS)
        reasons = [check_image(p, root, most) for p in src.records["ref"]]
        for (split, cls, ref), reason in zip(src.records[["split", "label", "ref"]].itertuples(index=False), reasons):
            if reason:
                log.warning("skipping unreadable image %s (%s)", ref, reason)
                skipped.append((ref, cls, split, reason))
        src.records = src.records[[r is None for r in reasons]].reset_index(drop=True)
    split_rec = make_splits(src.records, data_cfg.get("val_fraction", 0.1), data_cfg.get("test_fraction", 0.2), seed)
    capped = cap_per_class(split_rec, data_cfg.get("max_per_class") or {}, seed)
    rec = apply_imbalance(capped, order, data_cfg.get("imbalance") or {}, seed)
    unused = split_rec[split_rec["split"].isin(["train", "val"]) & ~split_rec.index.isin(rec.index)]
    return src, capped, rec, unused, skipped


def _materialise(src: SourceData, rec: pd.DataFrame, image_dir: str) -> list[tuple[str, str, str]]:
    """(path, label, split) per record; array images are written as PNGs once."""
    rows = []
    for split, cls, ref in rec[["split", "label", "ref"]].itertuples(index=False):
        if src.arrays:
            arr = src.arrays[_array_split(split, src.arrays)][int(ref)]
            path = Path(image_dir) / split / cls / f"{int(ref):06d}.png"
            if not path.exists():  # written whole or not at all (save_image_atomic)
                save_image_atomic(Image.fromarray(arr), path)
            rows.append((str(path), cls, split))
        else:  # a file the loaders would misread (16-bit, alpha, CMYK): an 8-bit RGB copy, written once
            with Image.open(ref) as im:
                if needs_conversion(im):
                    tag = hashlib.sha1(str(ref).encode()).hexdigest()[:8]  # two files of one name stay two
                    path = Path(image_dir) / "converted" / split / cls / f"{Path(ref).stem}-{tag}.png"
                    if not path.exists():
                        save_image_atomic(to_rgb(im), path)
                    log.info("%s (%s) read as 8-bit RGB: %s", ref, im.mode, path)
                    ref = str(path)
            rows.append((ref, cls, split))
    return rows


def judge_pool_index(unused: pd.DataFrame, per_class: int, seed: int) -> np.ndarray:
    """The records (index into `unused`) the judge's pool takes: up to per_class per class, seeded."""
    keep = []
    for cls, grp in unused.groupby("label", sort=True):
        idx = grp.index.to_numpy()
        if len(idx) > per_class:
            rng = np.random.default_rng(derive_seed(seed, "judge_pool", cls))
            idx = np.sort(rng.choice(idx, size=per_class, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else unused.index.to_numpy()


def build_judge_pool(data_cfg: dict, seed: int, per_class: int, out_csv: str, image_dir: str) -> pd.DataFrame:
    """Up to `per_class` images per class that the study does not use (the images
    the caps and the imbalance left out of train/val; never the test split), for
    training a judge classifier that takes no part in the study."""
    src, _, unused, _ = select_records(data_cfg, seed)
    pool = unused.loc[judge_pool_index(unused, per_class, seed)]
    rows = _materialise(src, pool, image_dir)
    df = pd.DataFrame([(p, c) for p, c, _ in rows], columns=["path", "label"]).sort_values(["label", "path"])
    missing = [c for c in src.names if c not in set(df["label"])]
    if df.empty:
        raise TibalanceError("judge: the data source leaves no train/val image unused to train a judge on; "
                             "set judge.model to a checkpoint or judge.train_per_class: 0")
    if missing:
        log.warning("judge: no unused images of %s: the judge cannot recognise them", ", ".join(missing))
    write_csv(df.reset_index(drop=True), out_csv)
    log.info("judge pool: %d images (%s)", len(df), df.groupby("label").size().to_dict())
    return df


def oracle_absent_reason(data_cfg: dict) -> str | None:
    """Why a study has no real_oracle row (None when it has one): the oracle refills
    a weak class with the real images the study itself removed."""
    kind = (data_cfg.get("imbalance") or {}).get("type", "none")
    if kind not in ("fraction", "long_tail"):
        return (f"real_oracle: absent, the study removed no real images (data.imbalance.type {kind}): "
                "there are no held-back real images of a weak class to refill it with")
    return None


def build_oracle_set(data_cfg: dict, seed: int, cls: str, n: int, judge_per_class: int,
                     out_csv: str, image_dir: str) -> pd.DataFrame:
    """The real-image oracle of weak class `cls`: up to n real training-split images
    of the class that the study does not use (first those the imbalance removed, then
    those the per-class caps left out; each group in a seeded order), never a test or
    val image and none of the judge's pool (judge_per_class: the judge's
    train_per_class, 0 when it trains none). Written like a sample table."""
    src, capped, _, unused, _ = _select(data_cfg, seed)
    if cls not in src.names:
        raise TibalanceError(f"real_oracle: unknown class {cls!r}")
    if judge_per_class > 0:
        unused = unused.drop(index=judge_pool_index(unused, judge_per_class, seed))
    cand = unused[(unused["split"] == "train") & (unused["label"] == cls)]
    removed = cand[cand.index.isin(capped.index)]  # in the study's caps, dropped by the imbalance
    left = cand[~cand.index.isin(capped.index)]
    rng = np.random.default_rng(derive_seed(seed, "real_oracle", cls))
    order = [*removed.index[rng.permutation(len(removed))], *left.index[rng.permutation(len(left))]]
    chosen = unused.loc[order[:max(0, int(n))]]
    if len(chosen) < n:
        log.warning("real_oracle: class %s has %d unused real training images, %d wanted", cls, len(chosen), n)
    rows = _materialise(src, chosen, image_dir)
    df = pd.DataFrame({"index": range(len(rows)), "path": [p for p, _, _ in rows], "label": cls,
                       "method": "real_oracle",
                       "source": ["imbalance" if i in removed.index else "caps" for i in chosen.index]})
    write_csv(df, out_csv)
    log.info("real_oracle %s: %d real images (%d the imbalance removed)", cls, len(df), int((df.source == "imbalance").sum()))
    return df


def _array_split(split: str, arrays: dict) -> str:
    # val images carved out of train keep their index into the train array
    return split if split in arrays else "train"


def load_manifest(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str)
