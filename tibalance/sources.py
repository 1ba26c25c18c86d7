"""The dataset sources a study reads its real images from (an image folder,
Fashion-MNIST's idx files, CIFAR-10, Flowers-102, drawn shapes): each yields
its class names and one record per image, before any split, cap or imbalance."""
from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .errors import TibalanceError
from .util import derive_seed, slugify

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
