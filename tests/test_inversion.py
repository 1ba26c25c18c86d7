"""Textual inversion: only the new token trains, the saved token loads and changes the image, resume, bad input."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_jobs import TI, run_ti

from tibalance.generator import check_model, load_pipeline
from tibalance.util import TibalanceError


def test_only_the_new_token_trains(tiny_sd, seed_images, tmp_path):
    ref = load_pipeline(tiny_sd)
    res = run_ti(tiny_sd, seed_images, tmp_path, return_pipeline=True)
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
    run_ti(tiny_sd, seed_images, tmp_path, settings={"lr": 0.5})
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
    run_ti(tiny_sd, seed_images, full)
    part = tmp_path / "part"
    assert run_ti(tiny_sd, seed_images, part, stop_after=4) == {"stopped_at": 4}  # the "kill"
    assert (part / "resume" / "checkpoint.pt").exists() and not (part / "e.safetensors").exists()
    with caplog.at_level(logging.INFO):
        run_ti(tiny_sd, seed_images, part)
    assert "at step 4" in caplog.text
    a, b = pd.read_csv(full / "loss.csv"), pd.read_csv(part / "loss.csv")
    pd.testing.assert_frame_equal(a, b)  # same losses: it continued, it did not restart
    assert torch.equal(load_file(full / "e.safetensors")["<ankle_boot>"],
                       load_file(part / "e.safetensors")["<ankle_boot>"])
    # a checkpoint made with other settings is ignored, not resumed
    run_ti(tiny_sd, seed_images, tmp_path / "x", stop_after=3)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        run_ti(tiny_sd, seed_images, tmp_path / "x", settings={"lr": 0.01})
    assert "ignoring checkpoint" in caplog.text


def test_empty_seed_list_and_missing_generator(tiny_sd, tmp_path):
    with pytest.raises(TibalanceError, match="class 'ankle_boot' has an empty seed list"):
        run_ti(tiny_sd, [], tmp_path)
    with pytest.raises(TibalanceError, match="generator.model: generator folder /no/such/sd does not exist"):
        check_model("/no/such/sd")
    check_model("stable-diffusion-v1-5/stable-diffusion-v1-5")  # a hub id is not a local path


def test_step_losses_flushed_every_n_steps_give_the_same_run(tiny_sd, seed_images, tmp_path):
    """ti.log_every (the GPU path's one host-device synchronisation per N steps
    instead of per step): the loss CSV and the token are the same whatever N,
    and a checkpoint made under one N resumes under another."""
    every_step = tmp_path / "n1"
    run_ti(tiny_sd, seed_images, every_step, settings={"log_every": 1})
    a = pd.read_csv(every_step / "loss.csv")
    assert list(a["step"]) == list(range(1, TI["steps"] + 1))
    token = load_file(every_step / "e.safetensors")["<ankle_boot>"]
    for n, stop in ((4, None), (5, 4)):
        out = tmp_path / f"n{n}"
        if stop:
            run_ti(tiny_sd, seed_images, out, settings={"log_every": 1}, stop_after=stop)
        run_ti(tiny_sd, seed_images, out, settings={"log_every": n})
        pd.testing.assert_frame_equal(a, pd.read_csv(out / "loss.csv"))
        assert torch.equal(token, load_file(out / "e.safetensors")["<ankle_boot>"])


def test_a_token_started_from_a_word_lies_nearest_that_word(tiny_sd, seed_images, tmp_path):
    """Seed 000's analysis: the vocabulary tokens nearest a learned token. One
    initialised from 'boot' and trained at lr 0 is that word's embedding: 'boot'
    first at cosine 1; trained on, it moves away from it."""
    from tibalance.inversion import nearest_words

    run_ti(tiny_sd, seed_images, tmp_path / "still", settings={"lr": 0.0})
    rows = nearest_words(tiny_sd, str(tmp_path / "still" / "e.safetensors"), "<ankle_boot>", k=3)
    assert [r["rank"] for r in rows] == [0, 1, 2] and rows[0]["word"] == "boot"
    assert rows[0]["cosine"] == pytest.approx(1.0, abs=1e-4) and rows[1]["cosine"] < 1.0
    run_ti(tiny_sd, seed_images, tmp_path / "moved", settings={"lr": 0.5})
    moved = nearest_words(tiny_sd, str(tmp_path / "moved" / "e.safetensors"), "<ankle_boot>", k=3)
    assert moved[0]["cosine"] < 0.999
