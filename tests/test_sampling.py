"""Sampling: how many images a class gets, resumable and paired images,
image-to-image from the real images, bf16 on CPU, the batch size."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_jobs import run_ti

from tibalance.sampling import n_images_for, sample_class
from tibalance.util import TibalanceError


def _manifest(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}{i}.png", c, "train") for c, n in counts.items() for i in range(n)]
    rows += [("t.png", "a", "test")] * 50  # other splits never count
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def test_balancing_count_refills_to_the_target():
    m = _manifest({"a": 100, "b": 100, "c": 60, "rare": 10})
    assert n_images_for("median", "rare", m) == 70      # median of 100, 100, 60, 10 = 80
    assert n_images_for("max", "rare", m) == 90
    assert n_images_for({"fill_to": 50}, "rare", m) == 40
    assert n_images_for(25, "rare", m) == 25             # an integer stays a count
    assert n_images_for("median", "a", m) == 0           # already at (above) the target: 0 images
    assert n_images_for("max", "b", m) == 0
    with pytest.raises(TibalanceError, match="sampling.n_images"):
        n_images_for("mean", "rare", m)


def test_sampling_is_resumable_and_paired(tiny_sd, seed_images, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"] * 7, "label": ["a"] * 5 + ["b"] * 2, "split": ["train"] * 7}).to_csv(manifest, index=False)
    assert n_images_for("median", "b", pd.read_csv(manifest)) == 1  # median of {5, 2} is 3.5 -> 3, minus 2
    run_ti(tiny_sd, seed_images, tmp_path)
    s = {"n_images": 3, "batch_size": 2, "steps": 2, "resolution": 32}
    kw = dict(embeds=str(tmp_path / "e.safetensors"), placeholder="<ankle_boot>")
    args = (tiny_sd, "ti", "ankle_boot", "Ankle boot", s, 0, str(manifest), str(tmp_path / "ti.csv"))
    assert sample_class(*args, str(tmp_path / "ti"), **kw) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "ti").glob("*.png")}
    assert sample_class(*args, str(tmp_path / "ti"), **kw) == 0  # second run: no new image
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ti").glob("*.png")} == mtimes
    # more images: only the new ones are generated
    assert sample_class(tiny_sd, "ti", "ankle_boot", "Ankle boot", {**s, "n_images": 4}, 0, str(manifest),
                        str(tmp_path / "ti.csv"), str(tmp_path / "ti"), **kw) == 1
    # another guidance scale makes different images: the old ones are discarded
    assert sample_class(tiny_sd, "ti", "ankle_boot", "Ankle boot", {**s, "guidance_scale": 1.0}, 0, str(manifest),
                        str(tmp_path / "ti.csv"), str(tmp_path / "ti"), **kw) == 3
    table = pd.read_csv(tmp_path / "ti.csv")
    assert list(table.prompt) == ["a photo of a <ankle_boot>"] * 3 and table.seed.is_unique
    # raw uses the plain name (or prompt_name) and the same per-image seeds
    sample_class(tiny_sd, "raw", "ankle_boot", "Ankle boot", {**s, "prompt_name": "boot"}, 0, str(manifest),
                 str(tmp_path / "raw.csv"), str(tmp_path / "raw"))
    raw = pd.read_csv(tmp_path / "raw.csv")
    assert list(raw.prompt) == ["a photo of a boot"] * 3 and list(raw.seed) == list(table.seed)


def test_bf16_sampling_on_cpu(tiny_sd, tmp_path, monkeypatch, cpu_kind):
    """sampling.mixed_precision: bf16 samples on CPU under bf16 autocast (the
    UNet computes in bf16, the weights stay fp32); its images are another set
    (regenerated), while auto keeps the fingerprint of images made before the
    setting existed on either CPU kind (fp32: docs/performance.md)."""
    from diffusers import UNet2DConditionModel

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}
    dtypes, forward = [], UNet2DConditionModel.forward

    def watch(self, sample, *a, **kw):
        out = forward(self, sample, *a, **kw)
        dtypes.append((next(self.parameters()).dtype, (out.sample if hasattr(out, "sample") else out[0]).dtype))
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", watch)

    def run(**extra):
        dtypes.clear()
        n = sample_class(tiny_sd, "raw", "a", "a", {**s, **extra}, 0, str(manifest), str(tmp_path / "raw.csv"),
                         str(tmp_path / "raw"))
        return n, [np.asarray(Image.open(p)) for p in sorted((tmp_path / "raw").glob("*.png"))]

    cpu_kind(False)
    n, fp32 = run()
    assert n == 2 and set(dtypes) == {(torch.float32, torch.float32)}
    assert run(mixed_precision="auto")[0] == 0  # auto = unset: the same images, kept
    cpu_kind(True)
    assert run(mixed_precision="auto")[0] == 0  # native bf16 too: fp32, the same images
    n, native_bf16 = run(mixed_precision="bf16")
    assert n == 2 and set(dtypes) == {(torch.float32, torch.bfloat16)}
    cpu_kind(False)
    n, bf16 = run(mixed_precision="bf16")
    assert n == 0  # the same setting on the other kind: the same fingerprint, kept
    assert all(im.shape == (32, 32, 3) for im in bf16) and any((a != b).any() for a, b in zip(fp32, bf16))
    assert all((a == b).all() for a, b in zip(native_bf16, bf16))


def test_fewer_images_leave_no_stale_ones_and_zero_is_clean(tiny_sd, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 3, "batch_size": 3, "steps": 2, "resolution": 32}
    args = (tiny_sd, "raw", "a", "a", s, 0, str(manifest), str(tmp_path / "raw.csv"), str(tmp_path / "raw"))
    assert sample_class(*args) == 3
    assert sample_class(tiny_sd, "raw", "a", "a", {**s, "n_images": 0}, 0, str(manifest), str(tmp_path / "raw.csv"),
                        str(tmp_path / "raw")) == 0
    assert list((tmp_path / "raw").glob("*.png")) == []  # the earlier run's images are gone
    assert pd.read_csv(tmp_path / "raw.csv").empty


def test_image_to_image_starts_from_the_real_images(tiny_sd, seed_images, tmp_path):
    """ti_i2i: image i starts from real training image i mod n of the class; its
    output depends on that image and on the strength; seeds pair with ti."""
    run_ti(tiny_sd, seed_images, tmp_path)
    kw = dict(embeds=str(tmp_path / "e.safetensors"), placeholder="<ankle_boot>")
    s = {"n_images": 4, "batch_size": 4, "steps": 4, "resolution": 32, "strength": 0.5}

    def run(name, real, settings):
        manifest = tmp_path / f"{name}.m.csv"
        rows = [(p, "ankle_boot", "train") for p in real] + [("/no/such/test.png", "ankle_boot", "test"),
                                                            ("/no/such/other.png", "bag", "train")]
        pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
        sample_class(tiny_sd, "ti_i2i", "ankle_boot", "Ankle boot", settings, 0, str(manifest),
                     str(tmp_path / f"{name}.csv"), str(tmp_path / name), **kw)
        table = pd.read_csv(tmp_path / f"{name}.csv")
        return table, np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in table.path])

    table, base = run("base", seed_images, s)
    assert list(table.start_image) == [sorted(seed_images)[i % 3] for i in range(4)]
    assert all(p == "a photo of a <ankle_boot>" for p in table.prompt)
    # another first real image changes image 0 (and 3, which starts from it too), not images 1 and 2
    other = tmp_path / "other.png"
    Image.fromarray(np.full((28, 28, 3), 255, np.uint8)).save(other)
    swapped = [str(other)] + sorted(seed_images)[1:]
    table2, imgs2 = run("swapped", swapped, s)
    assert list(table2.start_image) == [sorted(swapped)[i % 3] for i in range(4)]
    changed = [not np.array_equal(a, b) for a, b in zip(base, imgs2)]
    moved = [sorted(swapped)[i % 3] != sorted(seed_images)[i % 3] for i in range(4)]
    assert changed == moved and any(moved)
    _, strong = run("strong", seed_images, {**s, "strength": 0.9})
    assert all(not np.array_equal(a, b) for a, b in zip(base, strong))
    # a list of strengths: image i takes the (i mod 2)-th, and is the image that strength alone makes
    table3, mixed = run("mixed", seed_images, {**s, "strength": [0.5, 0.9]})
    assert list(table3.strength) == [0.5, 0.9, 0.5, 0.9]
    for i in range(4):
        assert np.allclose(mixed[i], (base if i % 2 == 0 else strong)[i], atol=1.0)  # to rounding of the PNG
    ti = pd.DataFrame({"seed": table.seed})
    sample_class(tiny_sd, "ti", "ankle_boot", "Ankle boot", s, 0, str(tmp_path / "base.m.csv"),
                 str(tmp_path / "ti.csv"), str(tmp_path / "ti"), **kw)
    assert list(pd.read_csv(tmp_path / "ti.csv").seed) == list(ti.seed)  # paired with text-to-image


def test_sampling_batch_size_auto(tiny_sd, tmp_path):
    """sampling.batch_size auto: on a GPU the batch from its free memory and a
    batch-1 call's peak (batch_from_memory), on a CPU 8; every image keeps its
    own seed, so auto and a batch of 1 make the same images."""
    from tibalance.sampling import AUTO_BATCH_CPU, auto_batch_size, batch_from_memory

    gb = 1 << 30
    assert batch_from_memory(80 * gb, 2 * gb) == 34 and batch_from_memory(10 * gb, 2 * gb) == 4
    assert batch_from_memory(gb, 2 * gb) == 1 and batch_from_memory(1000 * gb, gb // 10) == 64
    assert auto_batch_size("cpu", probe=lambda: pytest.fail("no probe on a CPU")) == AUTO_BATCH_CPU == 8
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    images = {}
    for bs in ("auto", 1):
        s = {"n_images": 3, "batch_size": bs, "steps": 2, "resolution": 32}
        assert sample_class(tiny_sd, "raw", "a", "a", s, 0, str(manifest), str(tmp_path / f"{bs}.csv"),
                            str(tmp_path / str(bs))) == 3
        images[bs] = [np.asarray(Image.open(p), dtype=int) for p in sorted((tmp_path / str(bs)).glob("*.png"))]
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(images["auto"], images[1]))
