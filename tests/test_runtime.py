"""The generative jobs' speed switches compute the same token and images."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_jobs import run_ti

from tibalance.sampling import sample_class
from tibalance.util import TibalanceError


def test_compiled_unet_learns_the_same_token_and_samples_the_same_images(tiny_sd, seed_images, tmp_path):
    """ti.compile / sampling.compile (torch.compile of the UNet; aot_eager here,
    the backend that traces and differentiates as inductor does without its
    minute of code generation on a CPU): the same token and images as the plain
    UNet to rounding; an unknown backend stops with one line naming the key."""
    plain = run_ti(tiny_sd, seed_images, tmp_path / "plain")
    comp = run_ti(tiny_sd, seed_images, tmp_path / "comp", settings={"compile": "aot_eager"})
    a, b = (load_file(tmp_path / d / "e.safetensors")["<ankle_boot>"] for d in ("plain", "comp"))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert comp["eval_loss_end"] == pytest.approx(plain["eval_loss_end"], rel=1e-4)
    with pytest.raises(TibalanceError, match=r"^ti.compile: 'no_such_backend' is not a torch.compile backend"):
        run_ti(tiny_sd, seed_images, tmp_path / "bad", settings={"compile": "no_such_backend"})

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}
    images = {}
    for name, extra in (("plain", {}), ("comp", {"compile": "aot_eager"})):
        assert sample_class(tiny_sd, "raw", "a", "a", {**s, **extra}, 0, str(manifest), str(tmp_path / f"{name}.csv"),
                            str(tmp_path / name)) == 2
        images[name] = [np.asarray(Image.open(p), dtype=int) for p in sorted((tmp_path / name).glob("*.png"))]
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(images["plain"], images["comp"]))


def test_channels_last_computes_the_same_token_and_images(tiny_sd, seed_images, tmp_path):
    """ti/lora/sampling.channels_last (the GPU path's NHWC UNet; auto: GPU only):
    switched on on CPU it trains the same token and samples the same images, to
    rounding; auto keeps a CPU's UNet as it was."""
    from tibalance.runtime import channels_last

    assert channels_last("auto", "cpu") is False and channels_last(None, "cuda") is True
    assert channels_last(True, "cpu") is True and channels_last(False, "cuda") is False
    # fp32 on either CPU kind: under bf16 autocast (auto on a CPU with native bf16) the
    # two layouts round differently at bf16's 3 significant digits
    run_ti(tiny_sd, seed_images, tmp_path / "plain", settings={"mixed_precision": "no"})
    run_ti(tiny_sd, seed_images, tmp_path / "nhwc", settings={"mixed_precision": "no", "channels_last": True})
    a, b = pd.read_csv(tmp_path / "plain/loss.csv"), pd.read_csv(tmp_path / "nhwc/loss.csv")
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-4)
    torch.testing.assert_close(load_file(tmp_path / "plain/e.safetensors")["<ankle_boot>"],
                               load_file(tmp_path / "nhwc/e.safetensors")["<ankle_boot>"], rtol=1e-4, atol=1e-5)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32, "mixed_precision": "no"}
    for name, extra in (("plain", {}), ("nhwc", {"channels_last": True})):
        sample_class(tiny_sd, "raw", "ankle_boot", "Ankle boot", {**s, **extra}, 0, str(manifest),
                     str(tmp_path / f"{name}.csv"), str(tmp_path / f"img_{name}"))
    for i in range(2):
        x, y = (np.asarray(Image.open(tmp_path / f"img_{n}/{i:05d}.png"), dtype=int) for n in ("plain", "nhwc"))
        assert np.abs(x - y).max() <= 1  # 8-bit images: rounding at most one level
