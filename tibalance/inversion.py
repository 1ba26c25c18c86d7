"""Textual Inversion: learn a placeholder token's embedding from a class's seed
images on a frozen Stable Diffusion pipeline.

Speed-ups over the usual recipe: the pipeline is loaded once per job; the seed
images and their augmented variants go through the VAE once (their latent
means/stds are kept and a latent is sampled from them each step); UNet, VAE and
text encoder carry no gradients of their own; SDPA attention; bf16/fp16 on GPU.
A checkpoint every K steps (trainable rows, optimizer rows, RNG states, losses)
lets a killed job resume where it stopped."""
from __future__ import annotations

import logging
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .generator import half_dtype, load_pipeline
from .seeds import contact_sheet
from .util import TibalanceError, file_digest, fingerprint, pick_device, seed_everything
from .defaults import TI_DEFAULTS  # noqa: F401 - part of this module's interface

log = logging.getLogger(__name__)

OBJECT_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a bright photo of the {}", "a close-up photo of a {}", "a good photo of the {}", "a photo of one {}",
    "a rendition of the {}", "a photo of the nice {}", "a photo of a small {}", "a photo of the weird {}",
    "a photo of a large {}", "a cropped photo of a {}", "a close-up photo of the {}", "a good photo of a {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dark painting in the style of {}",
    "a picture in the style of {}", "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a good painting in the style of {}", "a rendition in the style of {}",
]



def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """diffusers' multi-vector convention: '<x>', '<x>_1', '<x>_2', …"""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


def expand_placeholder(text: str, placeholder: str, num_vectors: int) -> str:
    return text.replace(placeholder, " ".join(placeholder_tokens(placeholder, num_vectors)))


def initializer_word(cls_name: str, setting: str) -> str | None:
    if setting == "random":
        return None
    if setting == "auto":
        words = [w for w in re.split(r"[^A-Za-z0-9]+", cls_name) if w]
        return (words[-1] if words else cls_name).lower()
    return setting


def _lr_lambda(schedule: str, warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return f


def _augmented_pixels(paths: list[str], resolution: int, variants: int, rng: random.Random) -> torch.Tensor:
    """[N * variants, 3, R, R] in [-1, 1]: each seed image as is, then random
    resized crops and flips of it."""
    from torchvision import transforms

    base = transforms.Compose([transforms.Resize(resolution, antialias=True), transforms.CenterCrop(resolution)])
    aug = transforms.Compose([transforms.RandomResizedCrop(resolution, scale=(0.7, 1.0), ratio=(0.9, 1.1),
                                                           antialias=True), transforms.RandomHorizontalFlip()])
    to_t = transforms.ToTensor()
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
        out.append(to_t(base(im)))
        for _ in range(max(0, variants - 1)):
            torch.manual_seed(rng.randrange(2**31))
            out.append(to_t(aug(im)))
    return torch.stack(out) * 2 - 1


class _Rows:
    """The trainable embedding rows and how to restore all the others."""

    def __init__(self, text_encoder, token_ids: list[int]):
        self.emb = text_encoder.get_input_embeddings()
        self.ids = torch.tensor(token_ids)
        self.original = self.emb.weight.detach().clone()
        self.keep = torch.ones(self.emb.weight.shape[0], dtype=torch.bool)
        self.keep[self.ids] = False

    @torch.no_grad()
    def restore_others(self):
        w = self.emb.weight
        w[self.keep] = self.original[self.keep].to(w.device, w.dtype)

    def learned(self) -> torch.Tensor:
        return self.emb.weight.detach()[self.ids.to(self.emb.weight.device)].float().cpu().clone()


def train_textual_inversion(model: str, seed_paths: list[str], cls: str, cls_name: str, settings: dict,
                            seed: int, embeds_out: str, loss_out: str, preview_out: str,
                            resume_dir: str, stop_after: int | None = None,
                            return_pipeline: bool = False) -> dict:
    """Learn `<cls>` from seed_paths; writes learned_embeds.safetensors (diffusers'
    load_textual_inversion format), a loss CSV and a preview grid.

    stop_after: end the run after that many steps (tests use it to simulate a kill).
    return_pipeline: also return the trained pipeline (tests inspect its weights)."""
    import pandas as pd
    from safetensors.torch import save_file

    s = {**TI_DEFAULTS, **(settings or {})}
    if not seed_paths:
        raise TibalanceError(f"textual_inversion: class {cls!r} has an empty seed list")
    device = pick_device(s["device"])
    mp = s["mixed_precision"]
    wdtype = half_dtype(device) if mp == "auto" else {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]
    if device.type == "cpu":
        wdtype = None
    placeholder = s["placeholder"].format(cls=cls)
    n_vec = int(s["num_vectors"])
    steps = int(s["steps"])
    fp = fingerprint({"model": model, "seeds": [[p, file_digest(p)] for p in seed_paths], "settings": s,
                      "seed": seed, "cls": cls, "name": cls_name})

    seed_everything(seed)
    pipe = load_pipeline(model)
    tok, te, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)

    # ---- the placeholder tokens and their initial embeddings
    tokens = placeholder_tokens(placeholder, n_vec)
    added = tok.add_tokens(tokens)
    if added != n_vec:
        raise TibalanceError(f"ti.placeholder: {placeholder!r} (class {cls}) is already a token of the tokenizer")
    token_ids = tok.convert_tokens_to_ids(tokens)
    te.resize_token_embeddings(len(tok), mean_resizing=False)
    weight = te.get_input_embeddings().weight
    word = initializer_word(cls_name, s["initializer"])
    with torch.no_grad():
        if word is None:
            init = torch.randn(n_vec, weight.shape[1], generator=torch.Generator().manual_seed(seed)) * weight[:-n_vec].std()
        else:
            init_ids = tok.encode(word, add_special_tokens=False)
            if not init_ids:
                raise TibalanceError(f"ti.initializer: {word!r} (class {cls}) encodes to no token")
            if len(init_ids) > 1:
                log.info("initializer %r is %d tokens; starting from their mean embedding", word, len(init_ids))
            init = weight[init_ids].mean(0, keepdim=True).expand(n_vec, -1)
        weight[token_ids] = init.to(weight.dtype)
    log.info("class %s: token %s (%d vector(s)), initializer %r, %d seed images, %d steps on %s",
             cls, placeholder, n_vec, word if word else "random", len(seed_paths), steps, device)

    # ---- frozen everything, then only the embedding matrix trains
    for m in (vae, unet, te):
        m.requires_grad_(False)
        m.eval()
    te.get_input_embeddings().weight.requires_grad_(True)
    te.to(device)
    for m in (vae, unet):
        m.to(device) if wdtype is None else m.to(device, dtype=wdtype)
    rows = _Rows(te, token_ids)

    # ---- seed images -> latent distributions, once
    res = int(s["resolution"])
    py_rng = random.Random(seed)
    pixels = _augmented_pixels(seed_paths, res, int(s["augment_variants"]), py_rng)
    with torch.no_grad():
        means, stds = [], []
        for chunk in pixels.split(16):
            dist = vae.encode(chunk.to(device, dtype=wdtype or torch.float32)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        lat_mean, lat_std = torch.cat(means), torch.cat(stds)
    scaling = float(vae.config.scaling_factor)
    del pixels

    templates = s["templates"] or (OBJECT_TEMPLATES if s["learnable_property"] == "object" else STYLE_TEMPLATES)
    subject = " ".join(tokens)

    params = [te.get_input_embeddings().weight]
    opt = torch.optim.AdamW(params, lr=float(s["lr"]), betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(s["lr_schedule"], int(s["warmup_steps"]), steps))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # ---- a fixed evaluation batch: the seed latents at evenly spread timesteps with
    # fixed noise. The training loss is dominated by the random timestep of each
    # step; this one changes only with the learned token.
    pred_type = noise_sched.config.prediction_type
    eval_gen = torch.Generator().manual_seed(seed + 7919)
    n_eval = max(16, min(64, lat_mean.shape[0]))
    e_idx = torch.arange(n_eval) % lat_mean.shape[0]
    e_lat = lat_mean[e_idx.to(lat_mean.device)] * scaling
    e_noise = torch.randn(e_lat.shape, generator=eval_gen).to(device)
    n_train_t = noise_sched.config.num_train_timesteps
    e_t = torch.linspace(0.05 * n_train_t, 0.95 * n_train_t, n_eval).long().to(device)
    e_prompts = [templates[i % len(templates)].format(subject) for i in range(n_eval)]
    e_ids = tok(e_prompts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                return_tensors="pt").input_ids.to(device)

    @torch.no_grad()
    def eval_loss() -> float:
        total = 0.0
        for i in range(0, n_eval, 16):
            sl = slice(i, i + 16)
            lat, noise, t = e_lat[sl].to(device), e_noise[sl], e_t[sl]
            with autocast_ctx():
                cond = te(e_ids[sl])[0]
                pred = unet(noise_sched.add_noise(lat, noise, t).to(unet.dtype), t, cond.to(unet.dtype)).sample
            target = noise if pred_type == "epsilon" else noise_sched.get_velocity(lat, noise, t)
            total += float(F.mse_loss(pred.float(), target.float(), reduction="sum"))
        return total / e_lat.numel()

    def autocast_ctx():
        return torch.autocast(device.type, dtype=wdtype, enabled=wdtype is not None)

    # ---- resume
    start, history = 0, []
    eval_start = None
    ckpt_path = Path(resume_dir) / "checkpoint.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") == fp:
            with torch.no_grad():
                weight[token_ids] = ck["rows"].to(weight.device, weight.dtype)
            w = params[0]
            st = opt.state[w]  # AdamW state, rebuilt: only the trainable rows matter
            st["step"] = torch.tensor(float(ck["step"]))
            for k in ("exp_avg", "exp_avg_sq"):
                st[k] = torch.zeros_like(w, memory_format=torch.preserve_format)
                st[k][token_ids] = ck[k].to(w.device, w.dtype)
            sched.load_state_dict(ck["sched"])
            gen.set_state(ck["gen"])
            py_rng.setstate(ck["py_rng"])
            torch.set_rng_state(ck["torch_rng"])
            start, history = int(ck["step"]), list(ck["history"])
            eval_start = ck.get("eval_start")
            log.info("resuming from checkpoint %s at step %d", ckpt_path, start)
        else:
            log.info("ignoring checkpoint %s: it was made with other settings or seeds", ckpt_path)

    def save_checkpoint(step):
        st = opt.state.get(params[0], {})
        ck = {"fingerprint": fp, "step": step, "rows": rows.learned(), "history": history,
              "exp_avg": st["exp_avg"][token_ids].cpu().clone() if st else None,
              "exp_avg_sq": st["exp_avg_sq"][token_ids].cpu().clone() if st else None,
              "sched": sched.state_dict(), "gen": gen.get_state(), "py_rng": py_rng.getstate(),
              "torch_rng": torch.get_rng_state(), "eval_start": eval_start}
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)

    # ---- training
    if eval_start is None:
        eval_start = eval_loss()
    bs = int(s["batch_size"])
    n_lat = lat_mean.shape[0]
    every = int(s["checkpoint_every"])
    bar = tqdm(total=steps, initial=start, desc=f"TI {cls}", mininterval=2.0)
    autocast = torch.autocast(device.type, dtype=wdtype, enabled=wdtype is not None)
    step = start
    for step in range(start + 1, steps + 1):
        idx = torch.randint(0, n_lat, (bs,), generator=gen)
        eps_lat = torch.randn(lat_mean[idx].shape, generator=gen)
        latents = (lat_mean[idx] + lat_std[idx] * eps_lat.to(lat_mean.device)) * scaling
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=gen).to(device)
        prompts = [py_rng.choice(templates).format(subject) for _ in range(bs)]
        ids = tok(prompts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(device)
        noisy = noise_sched.add_noise(latents, noise, t)
        with autocast:
            cond = te(ids)[0]
            pred = unet(noisy.to(unet.dtype), t, cond.to(unet.dtype)).sample
        target = noise if pred_type == "epsilon" else noise_sched.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rows.restore_others()
        history.append((step, float(loss.item()), float(sched.get_last_lr()[0])))
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        bar.update()
        if every and step % every == 0 and step < steps:
            save_checkpoint(step)
        if stop_after is not None and step >= stop_after:
            save_checkpoint(step)
            bar.close()
            return {"stopped_at": step}
    bar.close()

    eval_end = eval_loss()
    log.info("fixed-batch denoising loss on the seed images: %.5f at the start, %.5f at the end",
             eval_start, eval_end)
    learned = rows.learned()
    Path(embeds_out).parent.mkdir(parents=True, exist_ok=True)
    save_file({placeholder: learned.contiguous()}, embeds_out)
    pd.DataFrame(history, columns=["step", "loss", "lr"]).to_csv(loss_out, index=False, float_format="%.6g")

    # ---- preview with the learned token, same pipeline (already holds the rows)
    pipe.to(device)
    n_prev = int(s["preview_images"])
    with torch.no_grad(), autocast:
        images = pipe([templates[0].format(subject)] * n_prev, num_inference_steps=int(s["preview_steps"]),
                      height=res, width=res,
                      generator=[torch.Generator().manual_seed(seed + i) for i in range(n_prev)]).images
    contact_sheet(images, preview_out)
    if ckpt_path.exists():
        ckpt_path.unlink()  # done: a rerun with new settings must start from step 0
    result = {"final_loss": history[-1][1] if history else None, "steps": steps, "resumed_from_step": start,
              "eval_loss_start": eval_start, "eval_loss_end": eval_end}
    if return_pipeline:
        result["pipeline"] = pipe
    return result

