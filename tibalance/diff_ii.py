"""Diff-II (inversion circle interpolation, Wang et al.): images of a weak
class that mix two of its real images.

1. The inversion pool (job `invert`): every real training image of the class,
   encoded by the VAE and DDIM-inverted (diffusers' DDIMInverseScheduler, no
   guidance) under the class's prompt with its concept (the `ti` token by
   default; `diff_ii.concept`: lora or ti_lora), at the sampling's steps and
   size. One file per image, so a killed job resumes where it stopped.
2. Random circle interpolation: image i takes two inversions of the class,
   drawn by its own seed, and a point on the great circle through them at a
   random angle (spherical interpolation and extrapolation in one formula),
   which keeps a standard-normal pair's result standard normal. A class with
   one real image draws noise instead (the paper's rule).
3. Two-stage denoising with DDIM from that point: the first `split_ratio` of
   the steps under the prompt with a random context suffix, the rest under the
   plain prompt (the switch is the pipeline's step-end callback).

The suffixes come from a captioner and an LLM in the paper; offline they are
a setting (`diff_ii.suffixes`, or `diff_ii.suffix_file`: one per line)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import TibalanceError
from .util import derive_seed, file_digest, fingerprint, write_csv

log = logging.getLogger(__name__)


def circle_interpolate(z1: torch.Tensor, z2: torch.Tensor, strength: float) -> torch.Tensor:
    """The point at `strength` on the circle through z1 and z2 (Diff-II's Eq. 5):
    (sin((1 - s) theta) z1 + sin(s theta) z2) / sin(theta), theta the angle
    between them. s in [0, 1] interpolates along the shorter arc (0: z1, 1: z2),
    s beyond it extrapolates round the rest of the circle (2 pi / theta: z1
    again). Parallel inputs have no circle: z1."""
    theta = angle(z1, z2)
    if math.sin(theta) < 1e-6:
        return z1.clone()
    w1, w2 = math.sin((1 - strength) * theta) / math.sin(theta), math.sin(strength * theta) / math.sin(theta)
    return (w1 * z1.double() + w2 * z2.double()).to(z1.dtype)


def angle(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """The angle between two latents (radians)."""
    a, b = z1.flatten().double(), z2.flatten().double()
    return math.acos(max(-1.0, min(1.0, float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30)))))


def draw(pool: torch.Tensor, seed: int, suffixes: list[str]) -> dict:
    """Image `seed`'s start: two distinct inversions of the pool and a uniform
    angle round their circle (strength = angle / theta), or standard-normal
    noise when the pool holds one; and its suffix. Deterministic in the seed."""
    rng = np.random.default_rng(seed)
    suffix = suffixes[int(rng.integers(len(suffixes)))] if suffixes else ""
    if len(pool) < 2:
        noise = torch.randn(pool.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        return {"latents": noise, "pair": None, "strength": None, "suffix": suffix}
    a, b = (int(x) for x in rng.choice(len(pool), size=2, replace=False))
    theta = angle(pool[a], pool[b])
    strength = float(rng.uniform(0, 2 * math.pi)) / theta if theta > 1e-6 else 0.0
    return {"latents": circle_interpolate(pool[a], pool[b], strength), "pair": (a, b), "strength": strength,
            "suffix": suffix}


def read_suffixes(settings: dict) -> list[str]:
    """diff_ii.suffix_file (one per line, blank lines skipped) where set, else diff_ii.suffixes."""
    path = settings.get("suffix_file")
    if path:
        try:
            lines = [line.strip() for line in Path(path).read_text().splitlines()]
        except OSError as e:
            raise TibalanceError(f"diff_ii.suffix_file: {path} is not readable ({type(e).__name__})") from e
        suffixes = [line for line in lines if line]
        if not suffixes:
            raise TibalanceError(f"diff_ii.suffix_file: {path} holds no suffix")
        return suffixes
    return [str(s) for s in settings.get("suffixes") or []]


def stage_steps(steps: int, split_ratio: float) -> int:
    """How many of the denoising steps take the suffixed prompt."""
    if split_ratio == "auto":
        raise TibalanceError("diff_ii.split_ratio: auto is resolved per class by the workflow "
                             "(defaults.paper_split_ratio); give a number here")
    if not 0 <= float(split_ratio) <= 1:
        raise TibalanceError(f"diff_ii.split_ratio: {split_ratio} is not between 0 and 1")
    return int(round(float(split_ratio) * int(steps)))


def switch_prompt(pipe, plain: list[str], negative: str | None, at_step: int):
    """A step-end callback that hands the pipeline the plain prompts' embeddings
    (SDXL: and their pooled embedding) after step `at_step` - 1, in the layout
    the pipeline's loop keeps them (the unconditional half first under guidance)."""
    from .generator import is_xl

    xl = is_xl(pipe)

    def callback(p, i, t, kwargs):
        if i != at_step - 1:
            return {}
        cfg = p.do_classifier_free_guidance
        neg = [negative] * len(plain) if negative else None
        if xl:
            pe, npe, pooled, npooled = p.encode_prompt(prompt=plain, device=p._execution_device,
                                                       do_classifier_free_guidance=cfg, negative_prompt=neg)
            return {"prompt_embeds": torch.cat([npe, pe]) if cfg else pe,
                    "add_text_embeds": torch.cat([npooled, pooled]) if cfg else pooled}
        pe, npe = p.encode_prompt(plain, p._execution_device, 1, cfg, neg)
        return {"prompt_embeds": torch.cat([npe, pe]) if cfg else pe}

    return callback, (["prompt_embeds", "add_text_embeds"] if xl else ["prompt_embeds"])


def ddim(pipe) -> None:
    """The pipeline's scheduler as DDIM (deterministic, the inversion's mirror), unclipped."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)


def encode_image(pipe, image, device) -> torch.Tensor:
    """The VAE's latent of a real image (PIL, at the job's size): its mean, scaled as the UNet sees latents."""
    x = pipe.image_processor.preprocess(image).to(device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def invert_latent(pipe, latent: torch.Tensor, unet_kwargs: dict, steps: int, refine: int = 0) -> torch.Tensor:
    """DDIM inversion of a clean latent through the timesteps the pipeline's
    DDIM scheduler denoises with at `steps` (the mirror of its step, as
    diffusers' DDIMInverseScheduler, for epsilon and v-prediction), without
    guidance. Plain inversion (refine 0, the paper's) takes the model's output
    at the latent a step starts from; each refinement takes it again at the
    step's result (a fixed-point iteration), so that DDIM's step back from
    that result lands where the inversion step started."""
    sched = pipe.scheduler
    sched.set_timesteps(int(steps), device=latent.device)
    ratio = sched.config.num_train_timesteps // sched.num_inference_steps
    v_pred = sched.config.prediction_type == "v_prediction"
    alphas = sched.alphas_cumprod.to(latent.device, torch.float64)
    x = latent.double()
    for t in reversed(sched.timesteps):
        a_t = alphas[int(t)]
        a_p = alphas[int(t) - ratio] if int(t) - ratio >= 0 else sched.final_alpha_cumprod.double()
        start, guess = x, x
        for _ in range(1 + int(refine)):
            out = pipe.unet(guess.to(latent.dtype), t, **unet_kwargs).sample.double()
            eps = a_t.sqrt() * out + (1 - a_t).sqrt() * guess if v_pred else out
            guess = (a_t / a_p).sqrt() * (start - (1 - a_p).sqrt() * eps) + (1 - a_t).sqrt() * eps
        x = guess
    return x.to(latent.dtype)


def invert_class(pipe, images: list[str], load, prompt: str, resolution: int, steps: int, out_dir: str,
                 key: dict, device, refine: int = 0) -> list[str]:
    """The inversion of every image (read by load(path, resolution)) into
    out_dir, one safetensors file each, written whole or not at all; those
    already made under the same `key` (everything else that shapes them) are
    kept, so a killed job resumes. Returns the files, in the images' order."""
    import json

    from safetensors.torch import save_file

    from .adapt import PromptConditioning

    out = Path(out_dir)
    fp = fingerprint({**key, "prompt": prompt, "resolution": resolution, "steps": int(steps), "refine": int(refine),
                      "images": [[p, file_digest(p)] for p in images]})
    fp_file = out / "fingerprint.json"
    if out.exists() and (not fp_file.exists() or json.loads(fp_file.read_text()).get("fingerprint") != fp):
        log.info("settings changed: discarding the inversions in %s", out)
        for f in out.glob("*.safetensors"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    fp_file.write_text(json.dumps({"fingerprint": fp}) + "\n")
    ddim(pipe)
    cond = PromptConditioning(pipe, device, resolution)
    with torch.no_grad():
        kwargs = cond.unet_kwargs(cond.encode(cond.ids([prompt])), pipe.unet.dtype)
    files = [out / f"{i:05d}.safetensors" for i in range(len(images))]
    for i, (path, f) in enumerate(zip(images, files)):
        if f.exists():  # written whole (tmp, then renamed): complete
            continue
        with torch.no_grad():
            z = invert_latent(pipe, encode_image(pipe, load(path, resolution), device), kwargs, steps, refine)
        tmp = f.with_suffix(".tmp")
        save_file({"inversion": z[0].float().cpu().contiguous()}, str(tmp))
        tmp.replace(f)
        log.info("inversion %d/%d: %s", i + 1, len(images), path)
    return [str(f) for f in files]


def load_pool(inversions_csv: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """The class's inversions (N, C, h, w), the real images they invert and their files."""
    from safetensors.torch import load_file

    table = pd.read_csv(inversions_csv, dtype={"image": str, "inversion": str})
    if table.empty:
        raise TibalanceError(f"diff_ii: {inversions_csv} lists no inversion (the class has no real training image)")
    files = list(table["inversion"])
    return torch.stack([load_file(f)["inversion"] for f in files]), list(table["image"]), files


def write_inversions(images: list[str], files: list[str], out_csv: str) -> None:
    write_csv(pd.DataFrame({"index": range(len(images)), "image": images, "inversion": files}), out_csv)


def pair_seed(base_seed: int, cls: str, index: int) -> int:
    """The seed of image `index`'s pair, angle and suffix (apart from its noise seed)."""
    return derive_seed(base_seed, cls, "diff_ii", index)
