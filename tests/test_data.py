import gzip
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tibalance.data import (
    apply_imbalance,
    build_manifest,
    cap_per_class,
    check_image,
    imbalance_counts,
    make_splits,
)
from tibalance.sources import read_idx
from tibalance.util import TibalanceError, derive_seed, read_json, slugify


def test_slugify_and_seed_by_name():
    assert slugify("T-shirt/top") == "t_shirt_top"
    assert slugify("sword lily") == "sword_lily"
    # a class's seed depends on its name, not on its position in any list
    assert derive_seed(0, "shirt") == derive_seed(0, "shirt")
    assert derive_seed(0, "shirt") != derive_seed(0, "coat") != derive_seed(1, "coat")


def test_fraction_profile_keeps_share_of_listed_classes():
    counts = {"a": 1000, "b": 1000, "c": 500}
    out = imbalance_counts(counts, list(counts), {"type": "fraction", "fractions": {"b": 0.01}})
    assert out == {"a": 1000, "b": 10, "c": 500}
    # never below min_per_class
    out = imbalance_counts(counts, list(counts), {"type": "fraction", "fractions": {"c": 0.0001}, "min_per_class": 2})
    assert out["c"] == 2
    with pytest.raises(TibalanceError, match="unknown class 'zebra'"):
        imbalance_counts(counts, list(counts), {"type": "fraction", "fractions": {"zebra": 0.5}})


def test_long_tail_profile_is_cifar_lt():
    order = [f"c{i}" for i in range(10)]
    out = imbalance_counts({c: 5000 for c in order}, order, {"type": "long_tail", "ratio": 100})
    assert out["c0"] == 5000 and out["c9"] == 50  # imbalance ratio 100
    vals = [out[c] for c in order]
    assert vals == sorted(vals, reverse=True)
    assert out["c5"] == int(5000 * 100 ** (-5 / 9))


def _records(n_per_class=100, classes=("a", "b", "c")):
    rows = [("train", c, f"{c}{i}") for c in classes for i in range(n_per_class)]
    return pd.DataFrame(rows, columns=["split", "label", "ref"])


def test_splits_caps_and_imbalance_are_deterministic_and_per_class():
    rec = _records()
    s1 = make_splits(rec, 0.1, 0.2, seed=3)
    s2 = make_splits(rec, 0.1, 0.2, seed=3)
    assert s1.equals(s2)
    counts = s1.groupby(["split", "label"]).size()
    assert counts[("val", "a")] == 10 and counts[("test", "a")] == 20 and counts[("train", "a")] == 70
    capped = cap_per_class(s1, {"train": 50}, seed=3)
    assert capped.groupby(["split", "label"]).size()[("train", "b")] == 50
    imb = apply_imbalance(capped, ["a", "b", "c"], {"type": "fraction", "fractions": {"b": 0.1}}, seed=3)
    assert imb.groupby(["split", "label"]).size()[("train", "b")] == 5
    # the other classes are untouched, and val/test are never imbalanced
    assert imb.groupby(["split", "label"]).size()[("train", "a")] == 50
    assert (imb[imb.split != "train"].groupby("label").size() == 30).all()
    # a different seed picks different images
    other = apply_imbalance(capped, ["a", "b", "c"], {"type": "fraction", "fractions": {"b": 0.1}}, seed=4)
    assert set(other.ref) != set(imb.ref)


def test_imagefolder_manifest_skips_corrupt_images(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("red rose", "tulip"):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "tulip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    trunc = root / "red rose" / "truncated.png"
    trunc.write_bytes((root / "red rose" / "0.png").read_bytes()[:60])
    assert check_image(trunc) is not None and check_image(root / "tulip" / "0.png") is None

    out = tmp_path / "out"
    cfg = {"source": "imagefolder", "root": str(root), "val_fraction": 0.25, "test_fraction": 0.25,
           "imbalance": {"type": "none"}}
    m = build_manifest(cfg, 0, out / "m.csv", out / "c.json", out / "s.csv", out / "img")
    skipped = pd.read_csv(out / "s.csv")
    assert sorted(skipped["path"]) == sorted([str(root / "red rose" / "truncated.png"),
                                              str(root / "tulip" / "broken.jpg")])
    assert set(m["label"]) == {"red_rose", "tulip"}
    assert not m["path"].str.contains("broken|truncated").any()
    assert len(m) == 24
    sizes = m.groupby(["label", "split"]).size().to_dict()  # 12 readable per class: 6 train / 3 val / 3 test
    assert sizes == {(c, s): n for c in ("red_rose", "tulip") for s, n in (("train", 6), ("val", 3), ("test", 3))}
    assert read_json(out / "c.json")["names"] == {"red_rose": "red rose", "tulip": "tulip"}
    on_disk = pd.read_csv(out / "m.csv", dtype=str)
    assert list(on_disk.columns) == ["path", "label", "split"]


def test_imagefolder_with_split_folders(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "r" / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    cfg = {"source": "imagefolder", "root": str(tmp_path / "r"), "val_fraction": 0.25}
    m = build_manifest(cfg, 0, tmp_path / "m.csv", tmp_path / "c.json", tmp_path / "s.csv", tmp_path / "i")
    sizes = m.groupby(["split", "label"]).size()
    assert sizes[("train", "a")] == 3 and sizes[("val", "a")] == 1 and sizes[("test", "a")] == 4


def test_missing_root_is_one_line_error(tmp_path):
    cfg = {"source": "imagefolder", "root": str(tmp_path / "nope")}
    with pytest.raises(TibalanceError, match=r"data.root: .*nope does not exist"):
        build_manifest(cfg, 0, *(tmp_path / n for n in ("m", "c", "s", "i")))
    cfg = {"source": "fashion_mnist", "root": str(tmp_path / "nope"), "download": False}
    with pytest.raises(TibalanceError, match="dataset-fashion-mnist"):
        build_manifest(cfg, 0, *(tmp_path / n for n in ("m", "c", "s", "i")))


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_source(tmp_path):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 200), ("t10k", 50)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(tmp_path / "train-labels-idx1-ubyte.gz").shape == (200,)
    cfg = {"source": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.1,
           "imbalance": {"type": "fraction", "fractions": {"Shirt": 0.25}}}
    out = tmp_path / "o"
    m = build_manifest(cfg, 0, out / "m.csv", out / "c.json", out / "s.csv", out / "img")
    sizes = m.groupby(["split", "label"]).size()
    assert sizes[("train", "trouser")] == 18 and sizes[("val", "trouser")] == 2 and sizes[("test", "trouser")] == 5
    assert sizes[("train", "shirt")] == 4  # 25% of 18 rounds to 4
    with Image.open(m["path"][0]) as im:
        assert im.size == (28, 28)
    classes = read_json(out / "c.json")
    assert classes["classes"][0] == "t_shirt_top" and classes["names"]["t_shirt_top"] == "T-shirt/top"
    assert classes["counts"]["shirt"]["train"] == 4


def test_a_class_without_val_or_test_images_stops_prepare_data(tmp_path):
    """One line naming the class and split, before any manifest is written."""
    for split, classes in (("train", ("a", "b")), ("test", ("a",))):
        for cls in classes:
            d = tmp_path / "r" / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    cfg = {"source": "imagefolder", "root": str(tmp_path / "r"), "val_fraction": 0.25}
    with pytest.raises(TibalanceError, match="class 'b' has no readable test images"):
        build_manifest(cfg, 0, tmp_path / "m.csv", tmp_path / "c.json", tmp_path / "s.csv", tmp_path / "i")
    assert not (tmp_path / "m.csv").exists()
    (tmp_path / "r" / "test" / "b").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (0, i * 40, 0)).save(tmp_path / "r" / "test" / "b" / f"{i}.png")
    cfg["val_fraction"] = 0.01  # 4 training images: none left for val
    with pytest.raises(TibalanceError, match="class 'a' has no readable val images"):
        build_manifest(cfg, 0, tmp_path / "m.csv", tmp_path / "c.json", tmp_path / "s.csv", tmp_path / "i")


def test_an_interrupted_write_leaves_no_image_a_rerun_would_reuse(tmp_path, monkeypatch):
    """Materialised dataset images: a save that dies half-way (a kill, a full
    disk) leaves no file under the image's name, so the rerun writes it whole."""
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 60), ("t10k", 30)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    cfg = {"source": "fashion_mnist", "root": str(tmp_path), "val_fraction": 0.2}
    out = tmp_path / "o"
    real_save, calls = Image.Image.save, []

    def dying_save(self, fp, *a, **kw):
        calls.append(fp)
        if len(calls) == 5:
            with open(fp, "wb") as fh:  # half an image, then the disk is full
                fh.write(b"\x89PNG\r\n\x1a\n")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError):
        build_manifest(cfg, 0, out / "m.csv", out / "c.json", out / "s.csv", out / "img")
    monkeypatch.setattr(Image.Image, "save", real_save)
    m = build_manifest(cfg, 0, out / "m.csv", out / "c.json", out / "s.csv", out / "img")
    assert all(check_image(p) is None for p in m["path"])
    assert not list((out / "img").rglob("*.tmp"))


def test_bad_image_files_are_skipped_with_their_reason_or_read_right(tmp_path):
    """The catalogue of bad files in a dataset folder: each is skipped and listed
    with its reason (zero bytes, truncated, not an image, too many pixels - from
    its header, never decoded -, a link out of the folder), or read right (CMYK,
    16-bit, a palette with transparency: an 8-bit RGB copy the loaders read)."""
    import os

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    a = root / "a"
    (a / "zero.png").write_bytes(b"")
    (a / "truncated.png").write_bytes((a / "0.png").read_bytes()[:60])
    (a / "notes.jpg").write_text("not an image at all\n")
    Image.new("1", (20000, 20000)).save(a / "huge.png")  # 400 M px, a few kB of PNG
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(outside)
    os.symlink(outside, a / "link_out.png")
    os.symlink(a / "1.png", a / "link_in.png")  # a link within the folder is an image like any other
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(a / "cmyk.jpg", quality=100)  # pure red in CMYK
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(a / "deep.png")  # 16-bit grey at half scale
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    pal.paste(0, (0, 0, 8, 16))  # the left half index 0: blue, declared transparent
    pal.save(a / "palette.png", transparency=0)

    reasons = {name: check_image(a / name, root) for name in ("zero.png", "truncated.png", "notes.jpg", "huge.png",
                                                              "link_out.png", "link_in.png", "cmyk.jpg", "deep.png",
                                                              "palette.png")}
    assert reasons["zero.png"] == "an empty file (0 bytes)"
    assert reasons["truncated.png"] and reasons["notes.jpg"].startswith("UnidentifiedImageError")
    assert reasons["huge.png"] == "20000 x 20000 px is over data.max_pixels (64000000): not decoded"
    assert reasons["link_out.png"].startswith("a link out of the dataset folder")
    assert reasons["link_in.png"] is reasons["cmyk.jpg"] is reasons["deep.png"] is reasons["palette.png"] is None

    out = tmp_path / "out"
    cfg = {"source": "imagefolder", "root": str(root), "val_fraction": 0.25, "test_fraction": 0.25,
           "imbalance": {"type": "none"}}
    m = build_manifest(cfg, 0, out / "m.csv", out / "c.json", out / "s.csv", out / "img")
    skipped = pd.read_csv(out / "s.csv").set_index("path")["reason"]
    assert sorted(skipped.index) == sorted(str(a / n) for n in ("zero.png", "truncated.png", "notes.jpg",
                                                               "huge.png", "link_out.png"))
    assert skipped[str(a / "huge.png")] == reasons["huge.png"]

    def read(stem):
        path = m[m["path"].str.contains(f"/{stem}")]["path"]
        assert len(path) == 1 and "/converted/" in path.iloc[0], (stem, list(path))
        return np.asarray(Image.open(path.iloc[0]))

    assert read("deep-").shape == (16, 16, 3) and (read("deep-") == 128).all()  # scaled, not clipped to white
    cmyk = read("cmyk-").astype(int)
    assert (cmyk[..., 0] > 240).all() and (cmyk[..., 1:] < 15).all()  # red
    pal_px = read("palette-")
    assert (pal_px[:, :8] == 255).all() and (pal_px[:, 8:] == [255, 0, 0]).all()  # transparent -> white
    assert str(a / "0.png") in set(m["path"]) and str(a / "link_in.png") in set(m["path"])  # plain RGB: as is
