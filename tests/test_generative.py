"""Textual inversion and sampling on the tiny offline SD pipeline."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tibalance.generator import check_model, load_pipeline
from tibalance.inversion import train_textual_inversion
from tibalance.sampling import n_images_for, sample_class
from tibalance.tiny import build_tiny, clip_tokenizer
from tibalance.util import TibalanceError

TI = dict(steps=6, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=3,
          preview_images=2, preview_steps=2, lr=0.05)


def _ti(tiny_sd, seeds, out, **kw):
    return train_textual_inversion(tiny_sd, seeds, "ankle_boot", "Ankle boot", {**TI, **kw.pop("settings", {})},
                                   7, str(out / "e.safetensors"), str(out / "loss.csv"), str(out / "p.png"),
                                   str(out / "resume"), **kw)


def test_tokenizer_is_real_clip_vocabulary():
    import open_clip

    tok = clip_tokenizer(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    assert len(tok) == 49408
    text = "a photo of a shirt, a type of flower"
    assert tok(text).input_ids[1:-1] == open_clip.tokenizer.SimpleTokenizer().encode(text)
    for word in ("shirt", "flower", "boot"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1


def test_only_the_new_token_trains(tiny_sd, seed_images, tmp_path):
    ref = load_pipeline(tiny_sd)
    res = _ti(tiny_sd, seed_images, tmp_path, return_pipeline=True)
    pipe = res["pipeline"]
    tid = pipe.tokenizer.convert_tokens_to_ids("<ankle_boot>")
    assert tid == 49408  # appended after the CLIP vocabulary
    w = pipe.text_encoder.get_input_embeddings().weight.detach().cpu()
    w0 = ref.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(w[:49408], w0)  # every other row bit-identical
    boot = w0[pipe.tokenizer.convert_tokens_to_ids("boot</w>")]
    assert not torch.allclose(w[tid], boot)  # it started at 'boot' and moved
    for name in ("unet", "vae", "text_encoder"):
        sd, sd0 = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        for k, v in sd0.items():
            if "token_embedding" in k:
                continue
            assert torch.equal(sd[k].cpu(), v), f"{name}.{k} changed"
    saved = load_file(tmp_path / "e.safetensors")
    assert list(saved) == ["<ankle_boot>"] and torch.equal(saved["<ankle_boot>"][0], w[tid])
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert list(loss.step) == [1, 2, 3, 4, 5, 6] and loss.loss.notna().all()
    # 6 steps x 2 draw 12 latents: a one-image preview (adapt.fixed_costs), shown at 128 px
    assert Image.open(tmp_path / "p.png").size == (128, 128)
    assert not (tmp_path / "resume" / "checkpoint.pt").exists()  # finished runs leave no checkpoint


def test_saved_embedding_loads_and_changes_the_image(tiny_sd, seed_images, tmp_path):
    _ti(tiny_sd, seed_images, tmp_path, settings={"lr": 0.5})
    pipe = load_pipeline(tiny_sd)

    def image(prompt):
        out = pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images[0]
        return out

    before = image("a photo of a boot")
    pipe.load_textual_inversion(str(tmp_path / "e.safetensors"))
    assert "<ankle_boot>" in pipe.tokenizer.get_vocab()
    with_token = image("a photo of a <ankle_boot>")
    assert np.abs(with_token - before).max() > 1e-3
    assert np.allclose(image("a photo of a boot"), before)  # other prompts unaffected


def test_resume_continues_at_the_saved_step(tiny_sd, seed_images, tmp_path, caplog):
    full = tmp_path / "full"
    _ti(tiny_sd, seed_images, full)
    part = tmp_path / "part"
    assert _ti(tiny_sd, seed_images, part, stop_after=4) == {"stopped_at": 4}  # the "kill"
    assert (part / "resume" / "checkpoint.pt").exists() and not (part / "e.safetensors").exists()
    with caplog.at_level(logging.INFO):
        _ti(tiny_sd, seed_images, part)
    assert "at step 4" in caplog.text
    a, b = pd.read_csv(full / "loss.csv"), pd.read_csv(part / "loss.csv")
    pd.testing.assert_frame_equal(a, b)  # same losses: it continued, it did not restart
    assert torch.equal(load_file(full / "e.safetensors")["<ankle_boot>"],
                       load_file(part / "e.safetensors")["<ankle_boot>"])
    # a checkpoint made with other settings is ignored, not resumed
    _ti(tiny_sd, seed_images, tmp_path / "x", stop_after=3)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        _ti(tiny_sd, seed_images, tmp_path / "x", settings={"lr": 0.01})
    assert "ignoring checkpoint" in caplog.text


def test_empty_seed_list_and_missing_generator(tiny_sd, tmp_path):
    with pytest.raises(TibalanceError, match="class 'ankle_boot' has an empty seed list"):
        _ti(tiny_sd, [], tmp_path)
    with pytest.raises(TibalanceError, match="generator.model: generator folder /no/such/sd does not exist"):
        check_model("/no/such/sd")
    check_model("stable-diffusion-v1-5/stable-diffusion-v1-5")  # a hub id is not a local path


def test_sampling_is_resumable_and_paired(tiny_sd, seed_images, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"] * 7, "label": ["a"] * 5 + ["b"] * 2, "split": ["train"] * 7}).to_csv(manifest, index=False)
    assert n_images_for("median", "b", pd.read_csv(manifest)) == 1  # median of {5, 2} is 3.5 -> 3, minus 2
    _ti(tiny_sd, seed_images, tmp_path)
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


def test_a_generator_rebuilt_in_place_makes_new_images_and_no_checkpoint_resumes(seed_images, tmp_path):
    """The jobs' own reuse (images on disk, a killed adaptation's checkpoint)
    follows the generator's files, not its path: rebuilt at the same folder
    with other weights, nothing made with the old one is kept."""
    import shutil

    from tibalance.generator import model_digest

    model = tmp_path / "gen"
    build_tiny(str(model), {"resolution": 32}, seed=0)
    digest = model_digest(str(model))
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}
    args = (str(model), "raw", "a", "a", s, 0, str(manifest), str(tmp_path / "raw.csv"), str(tmp_path / "raw"))
    assert sample_class(*args) == 2 and sample_class(*args) == 0
    before = (tmp_path / "raw" / "00000.png").read_bytes()
    assert _ti(str(model), seed_images, tmp_path / "ti", stop_after=2) == {"stopped_at": 2}
    shutil.rmtree(model)
    build_tiny(str(model), {"resolution": 32}, seed=1)  # the same path, other weights
    assert model_digest(str(model)) != digest
    assert sample_class(*args) == 2 and (tmp_path / "raw" / "00000.png").read_bytes() != before
    assert _ti(str(model), seed_images, tmp_path / "ti")["resumed_from_step"] == 0


def test_bf16_sampling_on_cpu(tiny_sd, tmp_path, monkeypatch, cpu_kind):
    """sampling.mixed_precision: bf16 samples on CPU under bf16 autocast (the
    UNet computes in bf16, the weights stay fp32); its images are another set
    (regenerated), while auto keeps the fingerprint of images made before the
    setting existed on either CPU kind (fp32: precision.PIPELINE_CPU_BF16)."""
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
    _ti(tiny_sd, seed_images, tmp_path)
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


def test_resolution_defaults_to_the_generators_own(tiny_sd, caplog):
    """Unset, TI, LoRA and sampling take the generator's size (the tiny one's 32
    px, SD 1.5's 512 would be its own); a value that differs runs as asked,
    logged once per key."""
    from tibalance import generator

    assert generator.native_resolution(tiny_sd) == 32
    assert generator.resolve_resolution(None, tiny_sd, "ti.resolution") == 32
    with caplog.at_level(logging.WARNING, logger="tibalance.generator"):
        assert generator.resolve_resolution(32, tiny_sd, "lora.resolution") == 32
        assert not caplog.records
        for _ in range(2):
            assert generator.resolve_resolution(64, tiny_sd, "sampling.resolution") == 64
    said = [r.getMessage() for r in caplog.records]
    assert said == ["sampling.resolution: 64 px, the generator's own size is 32 px (unset: its own)"]
    with pytest.raises(TibalanceError, match="generator.model: .*nowhere has no readable unet/vae config"):
        generator.native_resolution(str(tiny_sd) + "/nowhere")


def test_sd15_preset_is_stable_diffusion_1_5s_exact_architecture():
    """generator.tiny.preset: sd15 builds SD 1.5's layer sizes (random weights,
    for timing): the parameter counts of stable-diffusion-v1-5's UNet, VAE and
    CLIP ViT-L/14 text encoder, at 512 px (sized on the meta device: no memory)."""
    from tibalance.tiny import architecture, build_components

    with torch.device("meta"):
        te, vae, unet = (build_components({"preset": "sd15"})[k] for k in ("text_encoder", "vae", "unet"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(te)) == (859_520_964, 83_653_863, 123_060_480)
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512
    assert unet.config.cross_attention_dim == te.config.hidden_size == 768 and vae.config.scaling_factor == 0.18215
    assert architecture({})["layers_per_block"] == 1  # unset: the tiny sizes
    with pytest.raises(TibalanceError, match=r"^generator.tiny.preset: unknown preset 'sd3' \(sd15, sd21, sdxl\)$"):
        architecture({"preset": "sd3"})
    with pytest.raises(TibalanceError, match=r"sd15 fixes every size; remove generator.tiny.unet_channels$"):
        architecture({"preset": "sd15", "unet_channels": [8, 16]})
    from tibalance.config import check_generator_preset

    check_generator_preset({"generator": {"build": "tiny", "tiny": {"preset": "sd15"}}})
    with pytest.raises(TibalanceError, match=r"^generator.tiny.preset: sd15 is a random-weight architecture for "
                                             r"timing \(generator.build: tiny\); generator.build is pretrain$"):
        check_generator_preset({"generator": {"build": "pretrain", "tiny": {"preset": "sd15"}}})


def test_a_short_jobs_fixed_costs_are_capped_by_its_steps():
    """adapt.fixed_costs: a full job keeps its settings (the demo's TI: 400 steps
    x 8, 8 seeds); a short one (a rehearsal's 4 steps x 1 at 512 px) encodes
    only the latents it draws, evaluates and previews at most about the UNet
    forwards its steps make (~3 per latent drawn: forward and backward; a VAE
    decoding ~3, an encoding ~1.6)."""
    from tibalance.adapt import fixed_costs

    assert fixed_costs(400, 8, 8, 8, 4, 20) == {"variants": 8, "lazy_encoding": False, "eval_latents": 64,
                                                "preview_images": 4, "preview_steps": 20, "preview_resolution": 512}
    # a 4-step job's one preview image at 512 px (2 forwards, a decoding ~3) is more than a quarter of its
    # steps' 12 forwards: drawn at 256 px
    assert fixed_costs(4, 1, 4, 8, 4, 20) == {"variants": 1, "lazy_encoding": True, "eval_latents": 0,
                                              "preview_images": 1, "preview_steps": 1, "preview_resolution": 256}
    assert fixed_costs(4, 1, 4, 8, 4, 20, resolution=64)["preview_resolution"] == 64  # never below 64 px
    for steps in (1, 2, 4, 8, 50):
        for bs in (1, 2, 4, 8):
            f = fixed_costs(steps, bs, 5, 8, 4, 20)
            drawn = steps * bs
            n_lat = 5 * f["variants"]
            assert n_lat <= max(5, drawn + 4)  # no more variants than the steps can draw
            encoded = min(drawn, n_lat) if f["lazy_encoding"] else n_lat
            assert encoded <= max(drawn, 5)
            preview = f["preview_images"] * (2 * f["preview_steps"] + 3) * (f["preview_resolution"] / 512) ** 2
            assert preview <= max(0.75 * drawn, 5 / 4)  # at most a quarter of the steps' work, or its floor
            if drawn >= 16:  # past the floor of one latent and image
                assert 2 * f["eval_latents"] + preview + 1.6 * encoded <= 3 * drawn, (steps, bs, f)


def test_a_short_job_encodes_only_what_it_draws_and_resumes_the_same(tiny_sd, seed_images, tmp_path,
                                                                        monkeypatch):
    """Lazy encoding (a job that draws no more latents than its seeds give): each
    seed latent goes through the VAE, alone, when first drawn or evaluated; a
    job killed after its first step resumes to the same token bit for bit."""
    from diffusers import AutoencoderKL

    calls, encode = [], AutoencoderKL.encode

    def watch(self, x, *a, **kw):
        calls.append(x.shape[0])
        return encode(self, x, *a, **kw)

    monkeypatch.setattr(AutoencoderKL, "encode", watch)
    short = {"steps": 2, "batch_size": 1, "checkpoint_every": 1}
    whole = _ti(tiny_sd, seed_images, tmp_path / "whole", settings=short)
    assert whole["latents"] == 3 and set(calls) == {1}
    assert len(calls) == whole["latents_encoded"] <= 2  # the two drawn (2 latents: no fixed evaluation)
    assert whole["eval_loss_start"] is None and whole["eval_loss_end"] is None
    calls.clear()
    assert _ti(tiny_sd, seed_images, tmp_path / "cut", settings=short, stop_after=1) == {"stopped_at": 1}
    resumed = _ti(tiny_sd, seed_images, tmp_path / "cut", settings=short)
    assert resumed["resumed_from_step"] == 1 and set(calls) == {1}
    a, b = (load_file(tmp_path / d / "e.safetensors")["<ankle_boot>"] for d in ("whole", "cut"))
    assert torch.equal(a, b)
    assert pd.read_csv(tmp_path / "whole" / "loss.csv").equals(pd.read_csv(tmp_path / "cut" / "loss.csv"))


def test_compiled_unet_learns_the_same_token_and_samples_the_same_images(tiny_sd, seed_images, tmp_path):
    """ti.compile / sampling.compile (torch.compile of the UNet; aot_eager here,
    the backend that traces and differentiates as inductor does without its
    minute of code generation on a CPU): the same token and images as the plain
    UNet to rounding; an unknown backend stops with one line naming the key."""
    plain = _ti(tiny_sd, seed_images, tmp_path / "plain")
    comp = _ti(tiny_sd, seed_images, tmp_path / "comp", settings={"compile": "aot_eager"})
    a, b = (load_file(tmp_path / d / "e.safetensors")["<ankle_boot>"] for d in ("plain", "comp"))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert comp["eval_loss_end"] == pytest.approx(plain["eval_loss_end"], rel=1e-4)
    with pytest.raises(TibalanceError, match=r"^ti.compile: 'no_such_backend' is not a torch.compile backend"):
        _ti(tiny_sd, seed_images, tmp_path / "bad", settings={"compile": "no_such_backend"})

    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}
    images = {}
    for name, extra in (("plain", {}), ("comp", {"compile": "aot_eager"})):
        assert sample_class(tiny_sd, "raw", "a", "a", {**s, **extra}, 0, str(manifest), str(tmp_path / f"{name}.csv"),
                            str(tmp_path / name)) == 2
        images[name] = [np.asarray(Image.open(p), dtype=int) for p in sorted((tmp_path / name).glob("*.png"))]
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(images["plain"], images["comp"]))


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


def test_step_losses_flushed_every_n_steps_give_the_same_run(tiny_sd, seed_images, tmp_path):
    """ti.log_every (the GPU path's one host-device synchronisation per N steps
    instead of per step): the loss CSV and the token are the same whatever N,
    and a checkpoint made under one N resumes under another."""
    every_step = tmp_path / "n1"
    _ti(tiny_sd, seed_images, every_step, settings={"log_every": 1})
    a = pd.read_csv(every_step / "loss.csv")
    assert list(a["step"]) == list(range(1, TI["steps"] + 1))
    token = load_file(every_step / "e.safetensors")["<ankle_boot>"]
    for n, stop in ((4, None), (5, 4)):
        out = tmp_path / f"n{n}"
        if stop:
            _ti(tiny_sd, seed_images, out, settings={"log_every": 1}, stop_after=stop)
        _ti(tiny_sd, seed_images, out, settings={"log_every": n})
        pd.testing.assert_frame_equal(a, pd.read_csv(out / "loss.csv"))
        assert torch.equal(token, load_file(out / "e.safetensors")["<ankle_boot>"])


def test_channels_last_computes_the_same_token_and_images(tiny_sd, seed_images, tmp_path):
    """ti/lora/sampling.channels_last (the GPU path's NHWC UNet; auto: GPU only):
    switched on on CPU it trains the same token and samples the same images, to
    rounding; auto keeps a CPU's UNet as it was."""
    from tibalance.runtime import channels_last

    assert channels_last("auto", "cpu") is False and channels_last(None, "cuda") is True
    assert channels_last(True, "cpu") is True and channels_last(False, "cuda") is False
    # fp32 on either CPU kind: under bf16 autocast (auto on a CPU with native bf16) the
    # two layouts round differently at bf16's 3 significant digits
    _ti(tiny_sd, seed_images, tmp_path / "plain", settings={"mixed_precision": "no"})
    _ti(tiny_sd, seed_images, tmp_path / "nhwc", settings={"mixed_precision": "no", "channels_last": True})
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
