"""Diff-II (inversion circle interpolation): the inversion, the circle, the two
stages, a class with one image, the mode end to end on the tiny pipeline."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_images
from tiny_jobs import run_ti

from tibalance import diff_ii
from tibalance.adapt import PromptConditioning
from tibalance.generator import load_pipeline
from tibalance.sampling import invert_job, load_start_image, sample_class, two_stage
from tibalance.tiny import build_tiny
from tibalance.util import TibalanceError

PROMPT = "a photo of a shirt"


def test_circle_interpolation_starts_at_the_first_input_and_keeps_a_standard_normal():
    """Strength 0 is the first latent, 1 the second, 2 pi / theta the first
    again; random points on the circles through pairs of standard-normal
    latents are standard normal (mean 0, std 1), where a straight-line
    midpoint shrinks to std 1/sqrt(2)."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    assert torch.equal(diff_ii.circle_interpolate(z1, z2, 0.0), z1)
    assert torch.allclose(diff_ii.circle_interpolate(z1, z2, 1.0), z2, atol=1e-5)
    theta = diff_ii.angle(z1, z2)
    assert torch.allclose(diff_ii.circle_interpolate(z1, z2, 2 * math.pi / theta), z1, atol=1e-5)
    pool = torch.randn(20, 4, 8, 8, generator=g)
    drawn = torch.stack([diff_ii.draw(pool, s, ["x"])["latents"] for s in range(400)])
    assert abs(float(drawn.mean())) < 0.02 and abs(float(drawn.std()) - 1) < 0.02
    line = torch.stack([(pool[i] + pool[(i + 1) % 20]) / 2 for i in range(20)])
    assert abs(float(line.std()) - 1 / math.sqrt(2)) < 0.05  # what the circle avoids
    strengths = [diff_ii.draw(pool, s, ["x"])["strength"] for s in range(400)]
    assert min(strengths) >= 0 and sum(s > 1 for s in strengths) > 200  # extrapolation as well as interpolation


def test_a_class_with_one_image_takes_noise_and_draws_are_seeded():
    pool = torch.randn(1, 4, 8, 8)
    d = diff_ii.draw(pool, 7, ["a", "b"])
    assert d["pair"] is None and d["strength"] is None
    assert torch.equal(d["latents"], torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7)))
    pool = torch.randn(5, 4, 8, 8)
    a, b = diff_ii.draw(pool, 3, ["a", "b"]), diff_ii.draw(pool, 3, ["a", "b"])
    assert a["pair"] == b["pair"] and a["suffix"] == b["suffix"] and torch.equal(a["latents"], b["latents"])
    assert a["pair"][0] != a["pair"][1]


@pytest.fixture(scope="module")
def smooth_families(tmp_path_factory):
    """Tiny SD 1.x and SD 2.x (v-prediction) pipelines whose UNet output layer is
    scaled to a tenth: a noise prediction that moves slowly with its input, as a
    trained model's does between neighbouring steps. The random tiny UNet's does
    not (its latents are tiny beside its outputs), and no inversion retraces it."""
    out = {}
    for fam in ("sd1", "sd2"):
        path = tmp_path_factory.mktemp(fam) / fam
        build_tiny(str(path), {"resolution": 32, "family": fam}, seed=0)
        pipe = load_pipeline(str(path))
        with torch.no_grad():
            pipe.unet.conv_out.weight.mul_(0.1)
            pipe.unet.conv_out.bias.mul_(0.1)
        diff_ii.ddim(pipe)
        out[fam] = pipe
    return out


@pytest.mark.parametrize("fam, steps, refine, tolerance", [("sd1", 50, 20, 0.03), ("sd2", 20, 5, 1e-3)])
def test_inversion_then_denoising_reconstructs_the_real_latent(smooth_families, tmp_path, fam, steps, refine,
                                                               tolerance):
    """A real image's latent, DDIM-inverted (refined to the fixed point) and
    denoised by the pipeline's own DDIM without guidance, comes back within
    `tolerance` of its norm; plain inversion (the paper's) does not on this
    model, so the refinement is what the test measures."""
    pipe = smooth_families[fam]
    image = random_images(tmp_path, 1, 32)[0]
    cond = PromptConditioning(pipe, "cpu", 32)
    with torch.no_grad():
        kw = cond.unet_kwargs(cond.encode(cond.ids([PROMPT])), torch.float32)
        x0 = diff_ii.encode_image(pipe, _load(image), "cpu")

    def error(refine):
        z = diff_ii.invert_latent(pipe, x0, kw, steps, refine)
        with torch.no_grad():
            back = pipe(PROMPT, latents=z, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                        height=32, width=32).images
        return float((back - x0).norm() / x0.norm())

    assert error(refine) < tolerance
    assert error(0) > 2 * tolerance


def _load(path):
    return load_start_image(path, 32)


def test_plain_inversion_is_diffusers_ddim_inverse_scheduler(smooth_families, tmp_path):
    """For an epsilon-prediction model the inversion's plain form is the loop
    over diffusers' DDIMInverseScheduler."""
    from diffusers import DDIMInverseScheduler

    pipe = smooth_families["sd1"]
    cond = PromptConditioning(pipe, "cpu", 32)
    with torch.no_grad():
        kw = cond.unet_kwargs(cond.encode(cond.ids([PROMPT])), torch.float32)
        x0 = diff_ii.encode_image(pipe, _load(random_images(tmp_path, 1, 32)[0]), "cpu")
        inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
        inverse.set_timesteps(10)
        x = x0
        for t in inverse.timesteps:
            x = inverse.step(pipe.unet(x, t, **kw).sample, t, x).prev_sample
    assert torch.allclose(diff_ii.invert_latent(pipe, x0, kw, 10), x, rtol=1e-4, atol=1e-5)  # fp64 vs fp32 arithmetic


def test_two_stage_denoising_switches_prompt_at_the_split(tiny_sd, seed_images, tmp_path):
    """The UNet sees the suffixed prompt's embedding for round(split x steps)
    steps, then the plain one's (both halves under guidance), spied on every call."""
    pipe = load_pipeline(tiny_sd)
    diff_ii.ddim(pipe)
    seen = []
    forward = pipe.unet.forward

    def spy(sample, t, encoder_hidden_states, **kw):
        seen.append(encoder_hidden_states.detach().clone())
        return forward(sample, t, encoder_hidden_states, **kw)

    pipe.unet.forward = spy
    plan = {"draws": [{"latents": torch.randn(4, 4, 4), "suffix": "outdoors"}], "split_ratio": 0.4}
    kw = dict(num_inference_steps=5, guidance_scale=3.0, height=32, width=32, output_type="latent")
    texts = two_stage(pipe, plan, [0], [PROMPT], 5, None, kw)
    assert texts == [PROMPT + " outdoors"]
    with torch.no_grad():
        pipe(texts, **kw)
        suffixed = torch.cat(pipe.encode_prompt([PROMPT + " outdoors"], "cpu", 1, True)[::-1])
        plain = torch.cat(pipe.encode_prompt([PROMPT], "cpu", 1, True)[::-1])
    assert len(seen) == 5
    assert [torch.equal(s, suffixed) for s in seen] == [True, True, False, False, False]
    assert all(torch.equal(s, plain) for s in seen[2:])
    for ratio, first in ((0.0, 0), (1.0, 5)):
        kw2 = {}
        out = two_stage(pipe, {**plan, "split_ratio": ratio}, [0], [PROMPT], 5, None, kw2)
        assert out == ([PROMPT] if first == 0 else [PROMPT + " outdoors"])
        assert "callback_on_step_end" not in kw2  # one stage: no switch


def test_diff_ii_mode_end_to_end(tiny_sd, seed_images, tmp_path):
    """The inversion job writes one file per real image and resumes; the mode
    samples paired images from pairs of them, records the pair and strength,
    keeps its images on a rerun and makes new ones when the split changes; a
    missing inversion table stops with one line."""
    ti = run_ti(tiny_sd, seed_images, tmp_path)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": seed_images, "label": "ankle_boot", "split": "train"}).to_csv(manifest, index=False)
    s = {"n_images": 4, "steps": 3, "resolution": 32, "batch_size": 2}
    tok = dict(embeds=str(tmp_path / "e.safetensors"), placeholder="<ankle_boot>")
    assert ti is not None
    inv = tmp_path / "inv"
    got = invert_job(tiny_sd, "ankle_boot", "Ankle boot", str(manifest), s, {}, str(tmp_path / "inv.csv"),
                     str(inv), **tok)
    assert got["images"] == 3 and "<ankle_boot>" in got["prompt"]
    files = sorted(inv.glob("*.safetensors"))
    assert len(files) == 3
    files[1].unlink()  # as a killed job leaves it
    before = files[0].stat().st_mtime_ns
    invert_job(tiny_sd, "ankle_boot", "Ankle boot", str(manifest), s, {}, str(tmp_path / "inv.csv"), str(inv), **tok)
    assert files[1].exists() and files[0].stat().st_mtime_ns == before  # only the missing one made again

    args = (tiny_sd, "diff_ii", "ankle_boot", "Ankle boot", s, 0, str(manifest), str(tmp_path / "d.csv"),
            str(tmp_path / "d"))
    assert sample_class(*args, **tok, diff_ii={"split_ratio": 0.5}, inversions=str(tmp_path / "inv.csv")) == 4
    table = pd.read_csv(tmp_path / "d.csv")
    assert list(table["method"]) == ["diff_ii"] * 4
    assert all(len(str(p).split(";")) == 2 and set(str(p).split(";")) <= set(seed_images) for p in table.start_image)
    assert np.all(table["strength"] >= 0)
    img = (tmp_path / "d" / "00000.png").read_bytes()
    assert sample_class(*args, **tok, diff_ii={"split_ratio": 0.5}, inversions=str(tmp_path / "inv.csv")) == 0
    assert sample_class(*args, **tok, diff_ii={"split_ratio": 1.0}, inversions=str(tmp_path / "inv.csv")) == 4
    assert (tmp_path / "d" / "00000.png").read_bytes() != img
    with pytest.raises(TibalanceError, match="sample: mode diff_ii for class ankle_boot needs its inversions"):
        sample_class(*args, **tok, diff_ii={})


def test_suffixes_from_a_file_and_bad_settings():
    assert diff_ii.read_suffixes({"suffixes": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(TibalanceError, match="diff_ii.suffix_file: /nowhere/s.txt is not readable"):
        diff_ii.read_suffixes({"suffix_file": "/nowhere/s.txt"})
    with pytest.raises(TibalanceError, match="diff_ii.split_ratio: 1.5 is not between 0 and 1"):
        diff_ii.stage_steps(10, 1.5)
    assert diff_ii.stage_steps(25, 0.3) == 8 and diff_ii.stage_steps(10, 0.0) == 0


def test_split_ratio_auto_is_the_papers_rule_by_shots_and_imbalance():
    """Diff-II: 0.3 at 5 shots, 0.1 at 10, 1.0 on long-tailed data."""
    from tibalance.defaults import DIFF_II_DEFAULTS, paper_split_ratio
    from tibalance.diff_ii import stage_steps
    from tibalance.util import TibalanceError

    assert DIFF_II_DEFAULTS["split_ratio"] == "auto"
    assert [paper_split_ratio(n, False) for n in (1, 5, 7, 8, 10, 1000)] == [0.3, 0.3, 0.3, 0.1, 0.1, 0.1]
    assert paper_split_ratio(5, True) == paper_split_ratio(500, True) == 1.0
    with pytest.raises(TibalanceError, match="auto is resolved per class"):
        stage_steps(10, "auto")
