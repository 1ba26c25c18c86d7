"""LoRA adapters on the tiny offline SD pipeline: training, what changes,
resume, the saved format and sampling with it."""
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tibalance.config import check_lora, text_encoder_lora_problem
from tibalance.generator import load_pipeline
from tibalance.inversion import train_textual_inversion
from tibalance.lora import WEIGHTS_NAME, train_lora
from tibalance.sampling import sample_class
from tibalance.util import TibalanceError

LORA = dict(steps=8, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=3,
            preview_images=2, preview_steps=2, lr=1e-2)


def _lora(tiny_sd, seeds, out, **kw):
    return train_lora(tiny_sd, seeds, "ankle_boot", "Ankle boot", {**LORA, **kw.pop("settings", {})}, 7,
                      str(out / "w"), str(out / "loss.csv"), str(out / "p.png"), str(out / "resume"), **kw)


def _digests(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_training_lowers_the_denoising_loss_and_only_adapters_change(tiny_sd, seed_images, tmp_path):
    on_disk = _digests(tiny_sd)
    ref = load_pipeline(tiny_sd)
    res = _lora(tiny_sd, seed_images, tmp_path, settings={"steps": 20}, return_pipeline=True)
    assert res["eval_loss_end"] < res["eval_loss_start"] * 0.95, res  # the fixed batch: seed latents, fixed noise
    pipe = res["pipeline"]
    sd = pipe.unet.state_dict()
    lora_keys = [k for k in sd if "lora_" in k]
    assert lora_keys and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in lora_keys)
    base = {k.replace(".base_layer", ""): v for k, v in sd.items() if "lora_" not in k}
    ref_sd = ref.unet.state_dict()
    assert set(base) == set(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(base[k].cpu(), v), f"unet.{k} changed"
    for name in ("vae", "text_encoder"):
        for k, v in getattr(ref, name).state_dict().items():
            assert torch.equal(getattr(pipe, name).state_dict()[k].cpu(), v), f"{name}.{k} changed"
    assert _digests(tiny_sd) == on_disk  # the generator's files are untouched
    saved = load_file(tmp_path / "w" / WEIGHTS_NAME)
    assert saved and all(k.startswith("unet.") and "lora" in k for k in saved)
    # lora_B starts at zero: the trained adapter is not the identity
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if "lora.up" in k or "lora_B" in k)
    loss = pd.read_csv(tmp_path / "loss.csv")
    assert list(loss.step) == list(range(1, 21)) and loss.loss.notna().all()
    assert Image.open(tmp_path / "p.png").size == (256, 128)
    assert not (tmp_path / "resume" / "checkpoint.pt").exists()


def test_a_killed_job_resumes_and_ends_with_the_same_adapter(tiny_sd, seed_images, tmp_path, caplog):
    full, part = tmp_path / "full", tmp_path / "part"
    _lora(tiny_sd, seed_images, full)
    assert _lora(tiny_sd, seed_images, part, stop_after=4) == {"stopped_at": 4}  # the "kill"
    assert (part / "resume" / "checkpoint.pt").exists() and not (part / "w").exists()
    with caplog.at_level(logging.INFO):
        res = _lora(tiny_sd, seed_images, part)
    assert res["resumed_from_step"] == 4 and "at step 4" in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(full / "loss.csv"), pd.read_csv(part / "loss.csv"))
    a, b = load_file(full / "w" / WEIGHTS_NAME), load_file(part / "w" / WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint of other settings is ignored
    _lora(tiny_sd, seed_images, tmp_path / "x", stop_after=3)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        _lora(tiny_sd, seed_images, tmp_path / "x", settings={"rank": 2})
    assert "ignoring checkpoint" in caplog.text


def test_saved_adapter_loads_with_load_lora_weights_and_changes_the_images(tiny_sd, seed_images, tmp_path):
    _lora(tiny_sd, seed_images, tmp_path, settings={"lr": 0.05, "rank": 2, "alpha": 8})
    pipe = load_pipeline(tiny_sd)

    def image():
        return pipe("a photo of a Ankle boot", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    before = image()
    pipe.load_lora_weights(str(tmp_path / "w"))
    assert pipe.unet.peft_config["default_0"].r == 2 and pipe.unet.peft_config["default_0"].lora_alpha == 8
    after = image()
    assert np.abs(after - before).max() > 1e-3
    pipe.unload_lora_weights()
    assert np.allclose(image(), before, atol=1e-6)


def test_text_encoder_adapters_need_a_recent_peft(tiny_sd, seed_images, tmp_path):
    """transformers 5 adds text-encoder adapters only with peft >= 0.22; the
    registry here has 0.21.2. Where it is missing, the job and the config check
    say so in one line; where it is there, the adapter holds both parts."""
    problem = text_encoder_lora_problem()
    if problem:
        with pytest.raises(TibalanceError, match=r"lora.train_text_encoder: needs peft >= 0.22"):
            _lora(tiny_sd, seed_images, tmp_path, settings={"train_text_encoder": True})
        with pytest.raises(TibalanceError, match=r"classes.shirt.lora.train_text_encoder: needs peft"):
            check_lora({"lora": {}, "classes": {"shirt": {"lora": {"train_text_encoder": True}}}})
        return
    _lora(tiny_sd, seed_images, tmp_path, settings={"train_text_encoder": True})
    saved = load_file(tmp_path / "w" / WEIGHTS_NAME)
    assert any(k.startswith("text_encoder.") for k in saved) and any(k.startswith("unet.") for k in saved)


def test_token_plus_lora_starts_from_the_learned_token(tiny_sd, seed_images, tmp_path):
    ti = tmp_path / "ti"
    train_textual_inversion(tiny_sd, seed_images, "ankle_boot", "Ankle boot",
                            {**LORA, "lr": 0.05, "steps": 4}, 7, str(ti / "e.safetensors"), str(ti / "loss.csv"),
                            str(ti / "p.png"), str(ti / "resume"))
    with pytest.raises(TibalanceError, match="ti_lora for class ankle_boot needs the class's learned token"):
        _lora(tiny_sd, seed_images, tmp_path / "none", kind="ti_lora")
    res = _lora(tiny_sd, seed_images, tmp_path / "tl", kind="ti_lora", embeds=str(ti / "e.safetensors"),
                placeholder="<ankle_boot>", return_pipeline=True)
    pipe = res["pipeline"]
    tid = pipe.tokenizer.convert_tokens_to_ids("<ankle_boot>")
    learned = load_file(ti / "e.safetensors")["<ankle_boot>"][0]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid].detach().cpu(), learned)  # frozen

    # sampling: lora with the class name, ti_lora with the token; both paired with raw's seeds
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"] * 2, "label": ["ankle_boot"] * 2, "split": ["train"] * 2}).to_csv(manifest, index=False)
    _lora(tiny_sd, seed_images, tmp_path / "l", settings={"lr": 0.05})
    s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32}

    def run(mode, **kw):
        sample_class(tiny_sd, mode, "ankle_boot", "Ankle boot", s, 0, str(manifest), str(tmp_path / f"{mode}.csv"),
                     str(tmp_path / mode), **kw)
        t = pd.read_csv(tmp_path / f"{mode}.csv")
        return t, np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in t.path])

    raw, raw_img = run("raw")
    lora, lora_img = run("lora", lora=str(tmp_path / "l" / "w" / WEIGHTS_NAME))
    tl, _ = run("ti_lora", lora=str(tmp_path / "tl" / "w" / WEIGHTS_NAME), embeds=str(ti / "e.safetensors"),
                placeholder="<ankle_boot>")
    assert list(lora.prompt) == list(raw.prompt) == ["a photo of a Ankle boot"] * 2
    assert list(tl.prompt) == ["a photo of a <ankle_boot>"] * 2
    assert list(lora.seed) == list(raw.seed) == list(tl.seed)
    assert np.abs(lora_img - raw_img).max() > 0  # same prompt and seeds: the adapter made the difference
    with pytest.raises(TibalanceError, match="mode lora for class ankle_boot needs its LoRA adapter"):
        run("lora")


def test_one_adapter_shared_by_the_classes_each_image_prompted_with_its_own_token(tiny_sd, seed_images, tmp_path,
                                                                                  monkeypatch):
    """Diff-II's concept: one LoRA on every adapted class's seed images, each
    image's prompts with its class's token (here the fixed evaluation batch's:
    latent i is of seed image i // variants), both tokens loaded and frozen."""
    from conftest import random_images

    import tibalance.adapt as adapt
    from tibalance.lora import train_shared_lora

    (tmp_path / "other").mkdir()
    other = random_images(tmp_path / "other", 2, 28, seed=1)
    tokens = {}
    for cls, seeds in (("ankle_boot", seed_images), ("bag", other)):
        ti = tmp_path / f"ti_{cls}"
        train_textual_inversion(tiny_sd, seeds, cls, cls, {**LORA, "lr": 0.05, "steps": 2}, 7,
                                str(ti / "e.safetensors"), str(ti / "loss.csv"), str(ti / "p.png"),
                                str(ti / "resume"))
        tokens[cls] = {"embeds": str(ti / "e.safetensors"), "placeholder": f"<{cls}>", "num_vectors": 1}
    seen = []

    class Watched(adapt._FixedEval):
        def __init__(self, *a, **kw):
            seen.append(list(a[-1]))
            super().__init__(*a, **kw)

    monkeypatch.setattr(adapt, "_FixedEval", Watched)
    out = tmp_path / "shared"
    settings = {**LORA, "batch_size": 8}  # 64 latents drawn: a fixed batch of 16
    res = train_shared_lora(tiny_sd, {"bag": other, "ankle_boot": seed_images}, tokens, settings, 7, str(out / "w"),
                            str(out / "loss.csv"), str(out / "p.png"), str(out / "resume"), return_pipeline=True)
    assert res["latents"] == 2 * 5  # 3 + 2 seed images, 2 variants each, classes in name order
    prompts = seen[0]
    assert len(prompts) == 16
    for i, p in enumerate(prompts):
        assert ("<ankle_boot>" in p) == ((i % 10) // 2 < 3) and ("<bag>" in p) == ((i % 10) // 2 >= 3), (i, p)
    pipe = res["pipeline"]
    for cls, t in tokens.items():  # both tokens in, as learned
        tid = pipe.tokenizer.convert_tokens_to_ids(t["placeholder"])
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid].detach().cpu(),
                           load_file(t["embeds"])[t["placeholder"]][0])
    assert (out / "w" / WEIGHTS_NAME).exists() and len(pd.read_csv(out / "loss.csv")) == LORA["steps"]
    with pytest.raises(TibalanceError, match="lora_shared: class 'shirt' has no learned token"):
        train_shared_lora(tiny_sd, {"shirt": other}, tokens, LORA, 7, str(out / "x"), str(out / "l.csv"),
                          str(out / "q.png"), str(out / "r"))
