"""The offline demo's generator: a short pretraining lowers the denoising loss,
never sees the rare class, and saves a folder StableDiffusionPipeline loads."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from tibalance.pretrain import generator_quality, majority_classes, pretrain
from tibalance.util import TibalanceError

ARCH = {"resolution": 32, "vae_channels": [16, 32], "unet_channels": [32, 64], "text_hidden": 32}


@pytest.fixture(scope="module")
def pretrained(tiny_run, tmp_path_factory):
    wd, _ = tiny_run
    out = tmp_path_factory.mktemp("pretrained") / "sd"
    classes = json.loads((wd / "results/data/classes.json").read_text())
    cwd = os.getcwd()
    os.chdir(wd)  # manifest paths are relative to the run directory
    try:
        result = pretrain("results/data/manifest.csv", classes, str(out), ARCH,
                          {"vae_steps": 40, "unet_steps": 80, "batch_size": 16, "warmup_steps": 5, "lr": 2e-3},
                          seed=0, loss_out=str(out) + "_loss.csv")
    finally:
        os.chdir(cwd)
    return wd, out, classes, result


def test_short_pretraining_lowers_the_denoising_loss(pretrained):
    _, out, _, result = pretrained
    loss = pd.read_csv(str(out) + "_loss.csv")
    unet = loss[loss["phase"] == "unet"]["loss"].to_numpy()
    vae = loss[loss["phase"] == "vae"]["loss"].to_numpy()
    assert len(unet) == 80 and len(vae) == 40
    assert unet[-8:].mean() < 0.8 * unet[:8].mean()
    assert vae[-4:].mean() < vae[:4].mean()
    assert result["unet_loss_last_10pct"] < result["unet_loss_first_10pct"]


def test_it_never_sees_the_rare_class(pretrained):
    _, _, classes, result = pretrained
    assert "triangle" not in result["classes"]  # cut to 10%: not a majority class
    assert set(result["classes"]) == set(classes["classes"]) - {"triangle"}
    assert all("triangle" not in c for c in result["captions"])
    assert majority_classes(classes, ["circle"]) == [c for c in classes["classes"] if c != "circle"]
    with pytest.raises(TibalanceError, match="generator.pretrain.exclude: unknown class"):
        majority_classes(classes, ["hexagon"])


def test_saved_folder_loads_as_a_stable_diffusion_pipeline(pretrained):
    from diffusers import StableDiffusionPipeline

    _, out, _, result = pretrained
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    assert type(pipe.vae).__name__ == "AutoencoderKL" and type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and len(pipe.tokenizer) == 49408
    assert pipe.vae.config.scaling_factor == pytest.approx(result["scaling_factor"], rel=1e-5)
    assert result["scaling_factor"] != 0.18215  # measured on its own latents, not SD's constant
    img = pipe("a photo of a circle", num_inference_steps=2, height=32, width=32,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()


def test_quality_table_uses_the_baseline_classifier(pretrained):
    wd, out, classes, result = pretrained
    df = generator_quality(str(out), str(wd / "results/baseline/model.pt"), classes, result["classes"],
                           "a photo of a {}", n_per_class=3, steps=2, guidance_scale=2.0, seed=0,
                           grid_out=str(out) + "_grid.png")
    assert list(df["class"]) == result["classes"]
    assert (df["n"] == 3).all() and df["accuracy"].between(0, 1).all()
    assert set(df["most_often"]) <= set(classes["classes"])
    assert os.path.getsize(str(out) + "_grid.png") > 0


def test_pretraining_on_two_threads_gives_the_same_generator_twice(pretrained, tmp_path):
    """Torch's deterministic kernels (util.seed_everything): before them the UNet
    of two identical runs on 2 CPU threads differed in its last digits."""
    wd, out, classes, _ = pretrained
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        for name in ("a", "b"):
            pretrain("results/data/manifest.csv", classes, str(tmp_path / name),
                     {**ARCH, "vae_channels": [16, 32, 32], "unet_channels": [64, 128], "text_hidden": 64},
                     {"vae_steps": 1, "unet_steps": 10, "batch_size": 64, "warmup_steps": 5, "lr": 2e-3}, seed=0)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / unet).read_bytes() == (tmp_path / "b" / unet).read_bytes()


@pytest.mark.parametrize("precision,native", [("bf16", False), (None, True), (None, False)])
def test_mixed_precision_pretraining_computes_in_bf16_with_fp32_weights(pretrained, tmp_path, monkeypatch,
                                                                          precision, native, cpu_kind):
    """generator.pretrain.mixed_precision: bf16 computes the VAE and the UNet
    under bf16 autocast on any CPU; unset (auto) only on a CPU with native bf16,
    fp32 on one without. The saved weights are fp32."""
    import tibalance.pretrain as P

    cpu_kind(native)
    wd, _, classes, _ = pretrained
    seen, build = {"vae": set(), "unet": set()}, P.build_tiny_pipeline

    def build_and_watch(*a, **kw):
        pipe = build(*a, **kw)
        pipe.vae.encoder.conv_in.register_forward_hook(
            lambda m, i, o: seen["vae"].add(o.dtype) if torch.is_grad_enabled() else None)
        pipe.unet.conv_in.register_forward_hook(
            lambda m, i, o: seen["unet"].add(o.dtype) if torch.is_grad_enabled() else None)
        return pipe

    monkeypatch.setattr(P, "build_tiny_pipeline", build_and_watch)
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        pretrain("results/data/manifest.csv", classes, str(tmp_path / "sd"), ARCH,
                 {"vae_steps": 2, "unet_steps": 3, "batch_size": 8, "warmup_steps": 1,
                  **({"mixed_precision": precision} if precision else {})}, seed=0)
    finally:
        os.chdir(cwd)
    want = torch.bfloat16 if precision or native else torch.float32
    assert seen == {"vae": {want}, "unet": {want}}
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "sd/unet/diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_a_killed_pretraining_phase_resumes_to_the_same_weights(tiny_run, tmp_path):
    """Each phase (the VAE; the UNet and text encoder with their EMA) stopped
    half-way goes on from its checkpoint to the weights of a run never stopped."""
    from safetensors.torch import load_file

    from tibalance.pretrain import pretrain_unet, pretrain_vae

    wd, _ = tiny_run
    classes = json.loads((wd / "results/data/classes.json").read_text())
    cfg = {"vae_steps": 6, "unet_steps": 6, "batch_size": 8, "warmup_steps": 2, "lr": 2e-3}
    cwd = os.getcwd()
    os.chdir(wd)  # manifest paths are relative to the run directory
    try:
        args = ("results/data/manifest.csv", classes)
        pretrain_vae(*args, str(tmp_path / "v1"), ARCH, cfg, 0)
        ck = tmp_path / "ck" / "vae.pt"
        assert pretrain_vae(*args, str(tmp_path / "v2"), ARCH, cfg, 0, resume=str(ck), stop_after=3) is None
        pretrain_vae(*args, str(tmp_path / "v2"), ARCH, cfg, 0, resume=str(ck))
        assert not ck.exists()
        a, b = (load_file(tmp_path / v / "vae" / "diffusion_pytorch_model.safetensors") for v in ("v1", "v2"))
        assert all(torch.equal(a[k], b[k]) for k in a)
        pretrain_unet(*args, str(tmp_path / "v1"), str(tmp_path / "u1"), ARCH, cfg, 0)
        ck = tmp_path / "ck" / "unet.pt"
        assert pretrain_unet(*args, str(tmp_path / "v1"), str(tmp_path / "u2"), ARCH, cfg, 0, resume=str(ck),
                             stop_after=3) is None
        pretrain_unet(*args, str(tmp_path / "v1"), str(tmp_path / "u2"), ARCH, cfg, 0, resume=str(ck),
                      loss_out=str(tmp_path / "l2.csv"))
    finally:
        os.chdir(cwd)
    for part in ("unet", "text_encoder"):  # the saved (EMA) weights
        name = "diffusion_pytorch_model.safetensors" if part == "unet" else "model.safetensors"
        a, b = (load_file(tmp_path / u / part / name) for u in ("u1", "u2"))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    loss = pd.read_csv(tmp_path / "l2.csv")
    assert list(loss[loss.phase == "unet"].step) == list(range(1, 7))  # the resumed run's history is whole
