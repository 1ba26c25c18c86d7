"""The generator families beside SD 1.x (issue #26): SD 2.x's kind (v-prediction,
linear projections, a GELU text encoder) and SDXL's (two text encoders, the
pooled embedding and size/crop micro-conditioning) through TI, LoRA and
sampling on tiny random-weight builds; a family the stages do not handle stops
with one line."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tibalance.generator import check_model, family, load_pipeline, prediction_type
from tibalance.inversion import XL_KEYS, load_token, train_textual_inversion
from tibalance.lora import WEIGHTS_NAME, train_lora
from tibalance.sampling import MODES, invert_job, sample_class
from tibalance.tiny import build_components, build_tiny
from tibalance.util import TibalanceError

SETTINGS = dict(steps=4, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=2,
                preview_images=1, preview_steps=1)
FAMILIES = ("sd2", "sdxl")


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    built = {}

    def get(fam):
        if fam not in built:
            path = tmp_path_factory.mktemp(fam) / f"tiny_{fam}"
            build_tiny(str(path), {"resolution": 32, "family": fam}, seed=0)
            built[fam] = str(path)
        return built[fam]
    return get


def _ti(model, seeds, out, **kw):
    return train_textual_inversion(model, seeds, "ankle_boot", "Ankle boot", {**SETTINGS, **kw.pop("settings", {})},
                                   7, str(out / "e.safetensors"), str(out / "loss.csv"), str(out / "p.png"),
                                   str(out / "resume"), **kw)


def _encoders(pipe):
    return [(pipe.tokenizer, pipe.text_encoder)] + ([(pipe.tokenizer_2, pipe.text_encoder_2)]
                                                    if getattr(pipe, "text_encoder_2", None) is not None else [])


def test_the_builds_are_their_familys_kind(tiny_family):
    sd2, xl = load_pipeline(tiny_family("sd2")), load_pipeline(tiny_family("sdxl"))
    assert prediction_type(tiny_family("sd2")) == "v_prediction" == sd2.scheduler.config.prediction_type
    assert type(sd2).__name__ == "StableDiffusionPipeline" and type(sd2.scheduler).__name__ == "DDIMScheduler"
    assert sd2.unet.config.use_linear_projection is True and sd2.text_encoder.config.hidden_act == "gelu"
    assert family(tiny_family("sd2")) == "sd" and family(tiny_family("sdxl")) == "sdxl"
    assert type(xl).__name__ == "StableDiffusionXLPipeline" and type(xl.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.unet.config.addition_embed_type == "text_time"
    assert xl.unet.config.cross_attention_dim == xl.text_encoder.config.hidden_size + xl.text_encoder_2.config.hidden_size
    with torch.device("meta"):
        m21, mxl = build_components({"preset": "sd21"}), build_components({"preset": "sdxl"})
    te, vae, unet = (m21[k] for k in ("text_encoder", "vae", "unet"))
    assert unet.config.use_linear_projection and unet.config.cross_attention_dim == te.config.hidden_size == 1024
    assert te.config.num_hidden_layers == 23 and list(unet.config.attention_head_dim) == [5, 10, 20, 20]
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 768
    # SDXL base 1.0: UNet 2,567.5M parameters, CLIP ViT-L 123.1M, OpenCLIP ViT-bigG 694.7M, 1024 px, 2816 added
    counts = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in mxl.items()}
    assert round(counts["unet"], 1) == 2567.5 and round(counts["text_encoder"], 1) == 123.1
    assert round(counts["text_encoder_2"], 1) == 694.7 and round(counts["vae"], 1) == 83.7
    assert mxl["unet"].config.projection_class_embeddings_input_dim == 2816
    assert mxl["unet"].config.sample_size * 8 == 1024 and mxl["unet"].config.cross_attention_dim == 2048


@pytest.mark.parametrize("fam", FAMILIES)
def test_the_token_trains_on_the_familys_target_loads_and_resumes(fam, tiny_family, seed_images, tmp_path,
                                                                   monkeypatch):
    """TI: the loss's target is the scheduler's velocity on a v-prediction
    generator (the noise otherwise); SDXL's UNet is given both encoders'
    conditioning and the micro-conditioning; the token loads with diffusers'
    own loader into every text encoder and changes the image; a job killed
    after 2 steps resumes to the same token."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    model = tiny_family(fam)
    velocities, targets, added = [], [], []
    get_velocity, mse, forward = DDPMScheduler.get_velocity, torch.nn.functional.mse_loss, UNet2DConditionModel.forward

    def spy_velocity(self, *a, **kw):
        v = get_velocity(self, *a, **kw)
        velocities.append(v.detach().float().clone())
        return v

    def spy_mse(pred, target, *a, **kw):
        targets.append(target.detach().clone())
        return mse(pred, target, *a, **kw)

    def spy_forward(self, sample, timestep, encoder_hidden_states, *a, **kw):
        added.append((encoder_hidden_states.shape[-1], kw.get("added_cond_kwargs")))
        return forward(self, sample, timestep, encoder_hidden_states, *a, **kw)

    monkeypatch.setattr(DDPMScheduler, "get_velocity", spy_velocity)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", spy_mse)
    monkeypatch.setattr(UNet2DConditionModel, "forward", spy_forward)
    whole = _ti(model, seed_images, tmp_path / "whole", settings={"lr": 0.5})
    monkeypatch.undo()
    assert whole["steps"] == 4 and len(targets) >= 4
    if fam == "sd2":
        assert len(velocities) == len(targets) and all(torch.equal(v, t) for v, t in zip(velocities, targets))
    else:
        assert not velocities
        train = added[:4]  # the steps' forwards (the preview's follow)
        assert all(width == 64 for width, _ in train)  # 32 + 32: both encoders' hidden states side by side
        for _, kw in train:
            assert kw["text_embeds"].shape == (2, 32)  # the pooled projection of the second encoder
            assert kw["time_ids"].tolist() == [[32.0, 32, 0, 0, 32, 32]] * 2  # (R, R), (0, 0), (R, R)

    assert _ti(model, seed_images, tmp_path / "cut", settings={"lr": 0.5}, stop_after=2) == {"stopped_at": 2}
    _ti(model, seed_images, tmp_path / "cut", settings={"lr": 0.5})
    a, b = (load_file(tmp_path / d / "e.safetensors") for d in ("whole", "cut"))
    assert sorted(a) == sorted(b) == (sorted(XL_KEYS) if fam == "sdxl" else ["<ankle_boot>"])
    assert all(torch.equal(a[k], b[k]) for k in a)

    pipe = load_pipeline(model)

    def image(prompt):
        return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image("a photo of a boot")
    if fam == "sdxl":  # diffusers' own loader, once per encoder (its documented way for SDXL embeddings)
        pipe.load_textual_inversion(a["clip_l"], token="<ankle_boot>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(a["clip_g"], token="<ankle_boot>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    else:
        pipe.load_textual_inversion(str(tmp_path / "whole" / "e.safetensors"))
    vectors = list(a.values()) if fam == "sd2" else [a[k] for k in XL_KEYS]
    for (tok, te), vec in zip(_encoders(pipe), vectors, strict=True):  # each encoder holds its own vector
        row = te.get_input_embeddings().weight[tok.convert_tokens_to_ids("<ankle_boot>")]
        assert torch.equal(row.detach(), vec[0])
    assert np.abs(image("a photo of a <ankle_boot>") - before).max() > 1e-3
    fresh = load_pipeline(model)
    load_token(fresh, str(tmp_path / "whole" / "e.safetensors"), "<ankle_boot>")  # what the stages call
    assert all("<ankle_boot>" in tok.get_vocab() for tok, _ in _encoders(fresh))


@pytest.mark.parametrize("fam", FAMILIES)
def test_a_token_goes_on_from_a_learned_one_in_every_text_encoder(fam, tiny_family, seed_images, tmp_path):
    """COTI's cycles train on from the last cycle's token (init_embeds): at lr 0
    the saved token is that one, row for row in each text encoder (SDXL: clip_l
    and clip_g each into its own), not the initializer word's."""
    from safetensors.torch import load_file

    model = tiny_family(fam)
    _ti(model, seed_images, tmp_path / "a", settings={"lr": 0.5})
    _ti(model, seed_images, tmp_path / "b", settings={"lr": 0.0, "steps": 1}, init_embeds=str(tmp_path / "a" /
                                                                                            "e.safetensors"))
    a, b = load_file(tmp_path / "a" / "e.safetensors"), load_file(tmp_path / "b" / "e.safetensors")
    assert sorted(a) == sorted(b) == (["clip_g", "clip_l"] if fam == "sdxl" else ["<ankle_boot>"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = load_file(_ti(model, seed_images, tmp_path / "c", settings={"lr": 0.0, "steps": 1}) and
                      tmp_path / "c" / "e.safetensors")
    assert not any(torch.equal(a[k], fresh[k]) for k in a)  # the word's rows are another start


@pytest.mark.parametrize("fam", FAMILIES)
def test_lora_changes_only_its_adapters_and_loads(fam, tiny_family, seed_images, tmp_path):
    model = tiny_family(fam)
    ref = load_pipeline(model)
    res = train_lora(model, seed_images, "ankle_boot", "Ankle boot", {**SETTINGS, "lr": 1e-2}, 7,
                     str(tmp_path / "w"), str(tmp_path / "loss.csv"), str(tmp_path / "p.png"),
                     str(tmp_path / "resume"), return_pipeline=True)
    trained = res["pipeline"]
    sd = trained.unet.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in sd.items() if "lora_" not in k}
    assert all(torch.equal(base[k].cpu(), v) for k, v in ref.unet.state_dict().items())
    for (_, te), (_, te0) in zip(_encoders(trained), _encoders(ref), strict=True):
        assert all(torch.equal(v, te0.state_dict()[k]) for k, v in te.state_dict().items())
    lora = {k: v for k, v in sd.items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0: it trained
    pipe = load_pipeline(model)
    pipe.load_lora_weights(str(tmp_path / "w"), weight_name=WEIGHTS_NAME)
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora" in n}
    assert len(loaded) == len(lora)


def test_ti_lora_on_sdxl_resumes_bit_identically(tiny_family, seed_images, tmp_path):
    """token + LoRA on SDXL: the learned token loaded into both encoders and
    kept frozen, the adapter trained; killed after 2 steps, the same adapter."""
    model = tiny_family("sdxl")
    tok = tmp_path / "tok"
    _ti(model, seed_images, tok)

    def run(d, **kw):
        return train_lora(model, seed_images, "ankle_boot", "Ankle boot", {**SETTINGS, "lr": 1e-2}, 7,
                          str(tmp_path / d / "w"), str(tmp_path / d / "loss.csv"), str(tmp_path / d / "p.png"),
                          str(tmp_path / d / "resume"), kind="ti_lora", embeds=str(tok / "e.safetensors"),
                          placeholder="<ankle_boot>", **kw)

    run("whole")
    assert run("cut", stop_after=2) == {"stopped_at": 2}
    run("cut")
    a, b = (load_file(tmp_path / d / "w" / WEIGHTS_NAME) for d in ("whole", "cut"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_sampling_mode_on_the_family(fam, tiny_family, seed_images, tmp_path):
    model = tiny_family(fam)
    _ti(model, seed_images, tmp_path / "tok")
    train_lora(model, seed_images, "a", "a", {**SETTINGS, "lr": 1e-2}, 7, str(tmp_path / "w"),
               str(tmp_path / "l.csv"), str(tmp_path / "p.png"), str(tmp_path / "r"))
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": seed_images, "label": "a", "split": "train"}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32, "strength": 0.6}
    pixels = {}
    tok = dict(embeds=str(tmp_path / "tok" / "e.safetensors"), placeholder="<ankle_boot>")
    # diff_ii's inversions under the token, on the family's UNet conditioning
    assert invert_job(model, "a", "a", str(manifest), s, {}, str(tmp_path / "inv.csv"), str(tmp_path / "inv"),
                      **tok)["images"] == len(seed_images)
    # GeNIe's modes and fg_i2i read the baseline classifier: the family DAGs run them (test_families_dag)
    for mode in [m for m in MODES if m not in ("genie", "genie_ada", "fg_i2i")]:
        assert sample_class(model, mode, "a", "a", s, 0, str(manifest), str(tmp_path / f"{mode}.csv"),
                            str(tmp_path / mode), **tok, lora=str(tmp_path / "w" / WEIGHTS_NAME),
                            inversions=str(tmp_path / "inv.csv")) == 2
        pngs = sorted((tmp_path / mode).glob("*.png"))
        assert len(pngs) == 2
        from PIL import Image

        pixels[mode] = np.asarray(Image.open(pngs[0]))
    assert not np.array_equal(pixels["raw"], pixels["ti"])  # the token changes the paired image
    assert not np.array_equal(pixels["raw"], pixels["lora"])  # so does the adapter
    assert not np.array_equal(pixels["ti"], pixels["diff_ii"])  # a start from two inversions, not noise


def test_a_family_the_stages_do_not_handle_stops_with_one_line(tmp_path, tiny_family):
    other = tmp_path / "kandinsky"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(TibalanceError, match=r"^generator.model: .*kandinsky is a KandinskyV22Pipeline; TI, LoRA "
                                             r"and sampling support SD 1.x and SD 2.x .*, SDXL base"):
        check_model(str(other))
    with pytest.raises(TibalanceError, match=r"^generator.model: "):
        load_pipeline(str(other))
    # SDXL's refiner: no first text encoder
    refiner = tmp_path / "refiner"
    refiner.mkdir()
    from pathlib import Path

    xl_index = json.loads((Path(tiny_family("sdxl")) / "model_index.json").read_text())
    xl_index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None], tokenizer=[None, None])
    (refiner / "model_index.json").write_text(json.dumps(xl_index))
    with pytest.raises(TibalanceError, match=r"^generator.model: .*refiner is a StableDiffusionXLImg2ImgPipeline "
                                             r"without text_encoder, tokenizer \(an SDXL refiner\?\)"):
        check_model(str(refiner))
    from tibalance.config import check_generator_preset

    for fam in FAMILIES:
        with pytest.raises(TibalanceError, match=rf"^generator.tiny.family: {fam} is built with random weights"):
            check_generator_preset({"generator": {"build": "pretrain", "tiny": {"family": fam}}})
    with pytest.raises(TibalanceError, match=r"^generator.tiny.family: 'sd3' is not sd1, sd2, sdxl"):
        check_generator_preset({"generator": {"build": "tiny", "tiny": {"family": "sd3", "preset": None}}})


def test_the_sdxl_variant_of_the_real_study_plans_its_generator(tmp_path):
    """config/flowers-sdxl.yaml over config/config.yaml: valid (the schema and
    the parse-time checks), the study's DAG planned from it."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
           "-n", "--configfile", str(repo / "config/config.yaml"), str(repo / "config/flowers-sdxl.yaml")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rule train_baseline:" in p.stdout + p.stderr
    variant = yaml.safe_load((repo / "config/flowers-sdxl.yaml").read_text())
    assert variant["generator"]["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
