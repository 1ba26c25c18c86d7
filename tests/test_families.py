"""The generator families beside SD 1.x (issue #26): SD 2.x's kind (v-prediction,
linear projections, a GELU text encoder) through TI, LoRA and sampling on a
tiny random-weight build; a family the stages do not handle stops with one line."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tibalance.generator import build_tiny, check_model, load_pipeline, prediction_type
from tibalance.inversion import train_textual_inversion
from tibalance.lora import WEIGHTS_NAME, train_lora
from tibalance.sampling import sample_class
from tibalance.util import TibalanceError

SETTINGS = dict(steps=4, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=2,
                preview_images=1, preview_steps=1)


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd2") / "tiny_sd2"
    build_tiny(str(path), {"resolution": 32, "family": "sd2"}, seed=0)
    return str(path)


def _ti(model, seeds, out, **kw):
    return train_textual_inversion(model, seeds, "ankle_boot", "Ankle boot", {**SETTINGS, **kw.pop("settings", {})},
                                   7, str(out / "e.safetensors"), str(out / "loss.csv"), str(out / "p.png"),
                                   str(out / "resume"), **kw)


def test_the_sd2_build_is_sd2s_kind(tiny_sd2):
    pipe = load_pipeline(tiny_sd2)
    assert prediction_type(tiny_sd2) == "v_prediction" == pipe.scheduler.config.prediction_type
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.unet.config.use_linear_projection is True and pipe.text_encoder.config.hidden_act == "gelu"
    with torch.device("meta"):
        from tibalance.generator import build_components

        te, vae, unet = build_components({"preset": "sd21"})
    assert unet.config.use_linear_projection and unet.config.cross_attention_dim == te.config.hidden_size == 1024
    assert te.config.num_hidden_layers == 23 and list(unet.config.attention_head_dim) == [5, 10, 20, 20]
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 768


def test_v_prediction_trains_the_token_on_the_velocity(tiny_sd2, seed_images, tmp_path, monkeypatch):
    """TI on a v-prediction generator: the loss's target is the scheduler's
    velocity (not the noise); the token loads with diffusers' own loader and
    changes the image; a job killed after 2 steps resumes to the same token."""
    from diffusers import DDPMScheduler

    velocities, targets = [], []
    get_velocity, mse = DDPMScheduler.get_velocity, torch.nn.functional.mse_loss

    def spy_velocity(self, *a, **kw):
        v = get_velocity(self, *a, **kw)
        velocities.append(v.detach().float().clone())
        return v

    def spy_mse(pred, target, *a, **kw):
        targets.append(target.detach().clone())
        return mse(pred, target, *a, **kw)

    monkeypatch.setattr(DDPMScheduler, "get_velocity", spy_velocity)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", spy_mse)
    whole = _ti(tiny_sd2, seed_images, tmp_path / "whole", settings={"lr": 0.5})
    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse)
    assert whole["steps"] == 4 and len(velocities) == len(targets) >= 4
    assert all(torch.equal(v, t) for v, t in zip(velocities, targets))  # every loss against the velocity

    assert _ti(tiny_sd2, seed_images, tmp_path / "cut", settings={"lr": 0.5}, stop_after=2) == {"stopped_at": 2}
    _ti(tiny_sd2, seed_images, tmp_path / "cut", settings={"lr": 0.5})
    a, b = (load_file(tmp_path / d / "e.safetensors")["<ankle_boot>"] for d in ("whole", "cut"))
    assert torch.equal(a, b)

    pipe = load_pipeline(tiny_sd2)

    def image(prompt):
        return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image("a photo of a boot")
    pipe.load_textual_inversion(str(tmp_path / "whole" / "e.safetensors"))
    assert np.abs(image("a photo of a <ankle_boot>") - before).max() > 1e-3


def test_lora_on_sd2_changes_only_its_adapters_and_loads(tiny_sd2, seed_images, tmp_path):
    ref = load_pipeline(tiny_sd2)
    res = train_lora(tiny_sd2, seed_images, "ankle_boot", "Ankle boot", {**SETTINGS, "lr": 1e-2}, 7,
                     str(tmp_path / "w"), str(tmp_path / "loss.csv"), str(tmp_path / "p.png"),
                     str(tmp_path / "resume"), return_pipeline=True)
    sd = res["pipeline"].unet.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in sd.items() if "lora_" not in k}
    assert all(torch.equal(base[k].cpu(), v) for k, v in ref.unet.state_dict().items())
    assert any("lora_" in k for k in sd)
    pipe = load_pipeline(tiny_sd2)
    pipe.load_lora_weights(str(tmp_path / "w"), weight_name=WEIGHTS_NAME)
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


def test_sampling_on_sd2(tiny_sd2, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}
    assert sample_class(tiny_sd2, "raw", "a", "a", s, 0, str(manifest), str(tmp_path / "raw.csv"),
                        str(tmp_path / "raw")) == 2
    assert len(list((tmp_path / "raw").glob("*.png"))) == 2


def test_a_family_the_stages_do_not_handle_stops_with_one_line(tmp_path):
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(TibalanceError, match=r"^generator.model: .*sdxl is a StableDiffusionXLPipeline; TI, LoRA "
                                             r"and sampling support SD 1.x and SD 2.x"):
        check_model(str(folder))
    with pytest.raises(TibalanceError, match=r"^generator.model: "):
        load_pipeline(str(folder))
    from tibalance.config import check_generator_preset

    with pytest.raises(TibalanceError, match=r"^generator.tiny.family: sd2 is built with random weights"):
        check_generator_preset({"generator": {"build": "pretrain", "tiny": {"family": "sd2"}}})
