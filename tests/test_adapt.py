"""The adaptation skeleton TI and LoRA share: a short job's capped fixed costs, lazily encoded latents, reuse keyed on the generator's files."""

import pandas as pd
import torch
from safetensors.torch import load_file
from tiny_jobs import run_ti

from tibalance.sampling import sample_class
from tibalance.tiny import build_tiny


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
    assert run_ti(str(model), seed_images, tmp_path / "ti", stop_after=2) == {"stopped_at": 2}
    shutil.rmtree(model)
    build_tiny(str(model), {"resolution": 32}, seed=1)  # the same path, other weights
    assert model_digest(str(model)) != digest
    assert sample_class(*args) == 2 and (tmp_path / "raw" / "00000.png").read_bytes() != before
    assert run_ti(str(model), seed_images, tmp_path / "ti")["resumed_from_step"] == 0


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
    whole = run_ti(tiny_sd, seed_images, tmp_path / "whole", settings=short)
    assert whole["latents"] == 3 and set(calls) == {1}
    assert len(calls) == whole["latents_encoded"] <= 2  # the two drawn (2 latents: no fixed evaluation)
    assert whole["eval_loss_start"] is None and whole["eval_loss_end"] is None
    calls.clear()
    assert run_ti(tiny_sd, seed_images, tmp_path / "cut", settings=short, stop_after=1) == {"stopped_at": 1}
    resumed = run_ti(tiny_sd, seed_images, tmp_path / "cut", settings=short)
    assert resumed["resumed_from_step"] == 1 and set(calls) == {1}
    a, b = (load_file(tmp_path / d / "e.safetensors")["<ankle_boot>"] for d in ("whole", "cut"))
    assert torch.equal(a, b)
    assert pd.read_csv(tmp_path / "whole" / "loss.csv").equals(pd.read_csv(tmp_path / "cut" / "loss.csv"))
