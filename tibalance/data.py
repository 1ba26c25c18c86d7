"""Stage 1: build the image manifest (path, label, split) from a dataset source,
with deterministic induced imbalance and corrupt-image screening."""
from __future__ import annotations

import gzip
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .util import TibalanceError, derive_seed, save_image_atomic, slugify, write_csv, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
SYNTHETIC_CLASSES = ["circle", "square", "triangle", "cross", "stripes", "ring"]


@dataclass
class SourceData:
    """What a source yields before imbalance and materialisation.

    records: one row per image, columns split, label (slug), ref. `ref` is a file
    path for file-based sources, or an index into `arrays[split]` (uint8 HxW or
    HxWxC images) for array-based ones.
    """

    names: dict[str, str]  # slug -> display name, in class order
    records: pd.DataFrame
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- sources

def dataset_class_names(data_cfg: dict) -> list[str]:
    """Class display names of the configured source, without loading any image.

    Used at DAG-parse time to validate class names in the config."""
    source = data_cfg["source"]
    if source == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if source == "cifar10":
        return list(CIFAR10_CLASSES)
    if source == "flowers102":
        from torchvision.datasets import Flowers102

        return list(Flowers102.classes)
    if source == "synthetic":
        return list(SYNTHETIC_CLASSES[: data_cfg.get("synthetic", {}).get("num_classes", 4)])
    if source == "imagefolder":
        root = Path(data_cfg["root"])
        base = root / "train" if (root / "train").is_dir() else root
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise TibalanceError(f"data.source: unknown source {source!r}")


def check_root(data_cfg: dict) -> None:
    """A one-line error when the dataset root is missing and cannot be downloaded."""
    source, root = data_cfg["source"], data_cfg.get("root")
    if source == "synthetic":
        return
    if not root:
        raise TibalanceError(f"data.root must be set for data.source: {source}")
    if source == "imagefolder":
        if not Path(root).is_dir():
            raise TibalanceError(f"data.root: imagefolder root {root} does not exist")
        return
    if source == "fashion_mnist" and _find_idx_dir(Path(root)) is not None:
        return
    if not data_cfg.get("download", False) and not Path(root).is_dir():
        hint = " (install Debian's dataset-fashion-mnist)" if source == "fashion_mnist" else ""
        raise TibalanceError(
            f"data.root: {source} dataset not found at {root}{hint}; set data.download: true to fetch it"
        )


def download_source(source: str, root: str) -> None:
    """torchvision's download of every split of a dataset into root (fetch_dataset,
    on the login node); the jobs then read it with download: false."""
    from torchvision import datasets

    kinds = {"fashion_mnist": (datasets.FashionMNIST, [{"train": True}, {"train": False}]),
             "cifar10": (datasets.CIFAR10, [{"train": True}, {"train": False}]),
             "flowers102": (datasets.Flowers102, [{"split": s} for s in SPLITS])}
    if source not in kinds:
        raise TibalanceError(f"data.source: {source!r} is not downloaded by torchvision (one of {sorted(kinds)})")
    if source == "fashion_mnist" and _find_idx_dir(Path(root)) is not None:
        return  # the idx files are there already (e.g. Debian's dataset-fashion-mnist)
    cls, splits = kinds[source]
    Path(root).mkdir(parents=True, exist_ok=True)
    for kw in splits:
        try:
            cls(str(root), download=True, **kw)
        except Exception as e:  # noqa: BLE001 - network failures come in many types
            raise TibalanceError(f"data.download: could not download {source} into {root} ({type(e).__name__}: {e}); "
                                 f"download it where there is internet, or set data.root to a folder that holds it") from e


def load_source(data_cfg: dict, seed: int) -> SourceData:
    source = data_cfg["source"]
    loaders = {
        "imagefolder": _load_imagefolder,
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": _load_cifar10,
        "flowers102": _load_flowers102,
        "synthetic": _load_synthetic,
    }
    if source not in loaders:
        raise TibalanceError(f"data.source: unknown source {source!r}")
    return loaders[source](data_cfg, seed)


def _names(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in names:
        s = slugify(n)
        if s in out:
            raise TibalanceError(f"classes {out[s]!r} and {n!r} map to the same slug {s!r}; rename one")
        out[s] = n
    return out


def _load_imagefolder(cfg: dict, seed: int) -> SourceData:
    root = Path(cfg["root"])
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise TibalanceError(f"data.root: {root} has split folders but no train/")
    bases = split_dirs or {"train": root}
    names = _names(dataset_class_names(cfg))
    rows = []
    for split, base in bases.items():
        for cls_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            slug = slugify(cls_dir.name)
            if slug not in names:
                raise TibalanceError(f"data.root: class folder {cls_dir} is not in {root / 'train'}")
            for f in sorted(cls_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((split, slug, str(f)))
    return SourceData(names, pd.DataFrame(rows, columns=["split", "label", "ref"]))


def _find_idx_dir(root: Path) -> Path | None:
    for cand in (root, root / "FashionMNIST" / "raw"):
        if all((cand / f).is_file() for pair in FASHION_MNIST_FILES.values() for f in pair):
            return cand
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx (MNIST format) file, gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise TibalanceError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist(cfg: dict, seed: int) -> SourceData:
    root = Path(cfg["root"])
    idx_dir = _find_idx_dir(root)
    if idx_dir is None:
        if not cfg.get("download", False):
            raise TibalanceError(
                f"data.root: no Fashion-MNIST idx files under {root}; install Debian's "
                f"dataset-fashion-mnist or set data.download: true"
            )
        download_source("fashion_mnist", str(root))
        idx_dir = _find_idx_dir(root)
    names = _names(FASHION_MNIST_CLASSES)
    slugs = list(names)
    arrays, rows = {}, []
    for split, (img_f, lab_f) in FASHION_MNIST_FILES.items():
        arrays[split] = read_idx(idx_dir / img_f)
        labels = read_idx(idx_dir / lab_f)
        rows += [(split, slugs[int(y)], i) for i, y in enumerate(labels)]
    return SourceData(names, pd.DataFrame(rows, columns=["split", "label", "ref"]), arrays)


def _download_error(source: str, root, e: Exception) -> TibalanceError:
    return TibalanceError(
        f"data.root: {source} not found under {root} and could not be downloaded ({type(e).__name__}); "
        f"set data.root to a folder that holds it, or data.download: true when online"
    )


def _load_cifar10(cfg: dict, seed: int) -> SourceData:
    from torchvision.datasets import CIFAR10

    names = _names(CIFAR10_CLASSES)
    slugs = list(names)
    arrays, rows = {}, []
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(cfg["root"], train=train, download=cfg.get("download", False))
        except Exception as e:  # noqa: BLE001
            raise _download_error("cifar10", cfg["root"], e) from e
        arrays[split] = ds.data
        rows += [(split, slugs[int(y)], i) for i, y in enumerate(ds.targets)]
    return SourceData(names, pd.DataFrame(rows, columns=["split", "label", "ref"]), arrays)


def _load_flowers102(cfg: dict, seed: int) -> SourceData:
    from torchvision.datasets import Flowers102

    names = _names(list(Flowers102.classes))
    slugs = list(names)
    rows = []
    for split in SPLITS:
        try:
            ds = Flowers102(cfg["root"], split=split, download=cfg.get("download", False))
        except Exception as e:  # noqa: BLE001
            raise _download_error("flowers102", cfg["root"], e) from e
        rows += [(split, slugs[int(y)], str(p)) for p, y in zip(ds._image_files, ds._labels)]
    return SourceData(names, pd.DataFrame(rows, columns=["split", "label", "ref"]))


def draw_synthetic(cls: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One procedurally drawn RGB image of a simple shape class (random colours,
    position, scale), so a classifier can learn them in seconds."""
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))
    fg = tuple(int(v) for v in rng.integers(140, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    w = max(1, size // 10)
    if cls == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif cls == "cross":
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif cls == "stripes":
        step = max(3, int(size / rng.uniform(4, 7)))
        for x in range(0, size, step):
            d.rectangle([x, 0, x + step // 2 - 1, size], fill=fg)
    elif cls == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=w + 1)
    else:
        raise TibalanceError(f"synthetic: unknown class {cls!r}")
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _load_synthetic(cfg: dict, seed: int) -> SourceData:
    syn = cfg.get("synthetic", {})
    n_classes = syn.get("num_classes", 4)
    size = syn.get("image_size", 32)
    counts = syn.get("per_class", {"train": 40, "val": 10, "test": 10})
    names = _names(SYNTHETIC_CLASSES[:n_classes])
    arrays, rows = {}, []
    for split in SPLITS:
        imgs = []
        for cls in names:
            rng = np.random.default_rng(derive_seed(seed, "synthetic", split, cls))
            for _ in range(int(counts.get(split, 0))):
                rows.append((split, cls, len(imgs)))
                imgs.append(draw_synthetic(cls, rng, size))
        arrays[split] = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    return SourceData(names, pd.DataFrame(rows, columns=["split", "label", "ref"]), arrays)


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

def check_image(path: str | os.PathLike) -> str | None:
    """None if the file decodes as an image, else a short reason."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


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
        reasons = [check_image(p) for p in src.records["ref"]]
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
        else:
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
