"""The adaptation skeleton shared by Textual Inversion and LoRA.

`fit()` adapts a Stable Diffusion pipeline to a class's seed images; an
`Adaptation` says which parameters train and how they are saved:
`inversion.TokenAdaptation` (a new word's embedding) and `lora.LoraAdaptation`
(low-rank adapters on the UNet's attention). Everything else is here, once:

- the pipeline is loaded once per job; the seed images and their augmented
  variants go through the VAE once (latent means/stds are kept and a latent is
  sampled from them each step); nothing but the adaptation carries gradients;
  bf16/fp16 on GPU with the trained parameters in fp32;
- a fixed evaluation batch (the seed latents at spread timesteps, fixed noise)
  whose denoising loss changes only with the adaptation: the job logs it at the
  start and the end, the tests assert it drops (none in a job of under 8 latents);
- a checkpoint every K steps (the adaptation's tensors and optimizer state, the
  LR schedule, every RNG, the loss history) lets a killed job resume where it
  stopped and end with the same result as an uninterrupted run;
- the loss CSV, a progress bar and a preview grid made with the adapted pipeline.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .generator import is_xl, load_pipeline, model_digest, resolve_resolution, text_pairs
from .runtime import channels_last, compiled, pipeline_dtypes, set_attention
from .seeds import contact_sheet
from .util import TibalanceError, file_digest, fingerprint, pick_device, seed_everything

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


class Adaptation:
    """Which parameters train and how they are saved (the rest is `fit`'s)."""

    label = "adapt"              # progress bar and log lines
    config_key = "adapt"         # its section of the config (ti, lora): named in warnings
    trains_text_encoder = True   # False: the prompts' encodings are computed once
    subject = ""                 # what the prompts' templates are filled with
    subjects: list[str] | None = None  # or per seed image (a shared adapter: each image its class's token)

    def prepare(self, pipe, device) -> list[torch.nn.Parameter]:
        """Add what trains to the frozen pipeline (already on `device`); return it."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def state(self, opt) -> dict:
        """The trained tensors and their optimizer state, for a checkpoint."""
        raise NotImplementedError

    def load_state(self, ck: dict, opt) -> None:
        raise NotImplementedError

    def save(self) -> None:
        """Write the result (called once, after the last step)."""
        raise NotImplementedError


def lr_lambda(schedule: str, warmup: int, total: int):
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


def augmented_pixels(paths: list[str], resolution: int, variants: int, rng: random.Random) -> torch.Tensor:
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


def _subjects(adaptation: Adaptation, n_seeds: int, variants: int, n_latents: int) -> tuple[list[str], torch.Tensor]:
    """The prompts' subjects (in first-seen order) and each seed latent's index
    into them: latent i is of seed image i // variants (augmented_pixels' order)."""
    per_seed = list(adaptation.subjects) if adaptation.subjects else [adaptation.subject] * n_seeds
    if len(per_seed) != n_seeds:
        raise TibalanceError(f"{adaptation.label}: {len(per_seed)} subjects for {n_seeds} seed images")
    names = list(dict.fromkeys(per_seed))
    return names, torch.tensor([names.index(per_seed[i // variants]) for i in range(n_latents)])


def _sync(device) -> None:
    """Wait for the device's queued work (timing only; a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fixed_costs(steps: int, batch_size: int, n_seeds: int, variants: int, preview_images: int,
                preview_steps: int, resolution: int = 512) -> dict:
    """What a job does besides its steps, capped by what its steps do, so that a
    short job (a rehearsal's few steps at 512 px) is not mostly overhead.

    In UNet forwards at the job's size (the ratios: docs/performance.md, "TI,
    LoRA and sampling") the steps do ~3 x drawn, drawn = steps x batch. Of the
    rest: the augmented variants encoded are no more than the steps can draw,
    and where the steps draw no more latents than there are (lazy) each is
    encoded when first drawn; the fixed evaluation batch (16 to 64 latents, one
    forward each at the start and the end) is at most a quarter of the latents
    drawn (a sixth of the steps' work), none below 8 (a latent or two measure
    nothing); the preview (an image is two forwards a step under guidance and
    a decoding) at most one image per 16 latents drawn and 8 drawn per
    image-step, at least one image and step; where even that one image (5) is
    more than a quarter of the steps' work, it is drawn at half the size (a
    quarter of the cost), down to 64 px. A full job (the demo's 400 steps x 8)
    is not capped."""
    drawn = max(1, steps * batch_size)
    variants_used = min(variants, max(1, -(-drawn // max(1, n_seeds))))
    n_lat = n_seeds * variants_used
    images = min(preview_images, max(1, drawn // 16))
    p_steps = min(preview_steps, max(1, drawn // (8 * images)))
    p_res, cost = resolution, images * (2 * p_steps + 3)
    while cost > 0.75 * drawn and p_res // 2 >= 64:
        p_res, cost = p_res // 2, cost / 4
    return {"variants": variants_used,
            "lazy_encoding": drawn <= n_lat,
            "eval_latents": 0 if drawn < 8 else min(max(16, min(64, n_lat)), drawn // 4),
            "preview_images": images,
            "preview_steps": p_steps,
            "preview_resolution": p_res}


class SeedLatents:
    """The seed images' latent distributions (mean, std), encoded by the VAE once
    each: all at the start in chunks of 16, or (lazy: a short job that draws no
    more latents than there are) one at a time when first asked for. Either
    way a latent is always encoded the same way, so a resumed job computes the
    same ones as an uninterrupted run."""

    def __init__(self, vae, pixels: torch.Tensor, device, dtype, lazy: bool):
        self.vae, self.pixels, self.device, self.dtype = vae, pixels, device, dtype or torch.float32
        self.n = pixels.shape[0]
        self.mean = self.std = None
        self.have = torch.zeros(self.n, dtype=torch.bool)
        self.seconds = 0.0  # spent encoding (a lazy job's encodings fall inside its steps; step_s leaves them out)
        if not lazy:
            means, stds = zip(*(self._encode(chunk) for chunk in pixels.split(16)))
            self.mean, self.std = torch.cat(means), torch.cat(stds)
            self.have[:] = True
            self.pixels = None

    @torch.no_grad()
    def _encode(self, px):
        t0 = time.perf_counter()
        dist = self.vae.encode(px.to(self.device, dtype=self.dtype)).latent_dist
        out = dist.mean.float(), dist.std.float()
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def encoded(self) -> int:
        return int(self.have.sum())

    def get(self, idx: torch.Tensor):
        """(mean, std) of the latents at idx (a CPU index tensor)."""
        for i in sorted(set(idx.tolist()) - set(self.have.nonzero().flatten().tolist())):
            m, sd = self._encode(self.pixels[i:i + 1])
            if self.mean is None:
                self.mean = torch.zeros((self.n, *m.shape[1:]), device=m.device)
                self.std = torch.ones_like(self.mean)
            self.mean[i], self.std[i] = m[0], sd[0]
            self.have[i] = True
        at = idx.to(self.mean.device)
        return self.mean[at], self.std[at]


class PromptConditioning:
    """The UNet's conditioning on a batch of prompts, as the family's pipeline
    computes it when it samples: SD 1.x / 2.x the text encoder's last hidden
    states; SDXL both encoders' penultimate hidden states side by side, the
    pooled OpenCLIP embedding and the micro-conditioning (original size, crop's
    top-left, target size) added to the time embedding. The micro-conditioning
    is the one sampling uses by default, (R, R), (0, 0), (R, R) at the job's
    resolution R, so a token or adapter is learned under the conditions its
    images are drawn with."""

    def __init__(self, pipe, device, resolution: int):
        self.pairs, self.xl, self.device = text_pairs(pipe), is_xl(pipe), device
        self.time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)

    def ids(self, prompts: list[str]) -> list[torch.Tensor]:
        """The prompts' token ids, one tensor per tokenizer."""
        return [tok(prompts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                    return_tensors="pt").input_ids.to(self.device) for tok, _ in self.pairs]

    def encode(self, ids: list[torch.Tensor]) -> tuple:
        """(hidden states, pooled embedding or None) of token ids from `ids`."""
        if not self.xl:
            return self.pairs[0][1](ids[0])[0], None
        hidden, pooled = [], None
        for (_, te), x in zip(self.pairs, ids):
            out = te(x, output_hidden_states=True)
            pooled = out[0]  # the last encoder's: its projected pooled embedding
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), pooled

    @staticmethod
    def take(cond: tuple, idx: torch.Tensor) -> tuple:
        return cond[0][idx], None if cond[1] is None else cond[1][idx]

    def unet_kwargs(self, cond: tuple, dtype) -> dict:
        hidden, pooled = cond
        kw = {"encoder_hidden_states": hidden.to(dtype)}
        if self.xl:
            kw["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype),
                                       "time_ids": self.time_ids.to(hidden.device, dtype).expand(len(hidden), -1)}
        return kw


def _place(pipe, adaptation: Adaptation, device, wdtype, s: dict):
    """Freeze every module and put it on the device (fp32 on CPU; half-precision
    weights where asked), then let the adaptation add what trains. Returns
    (trainable parameters, the UNet's training forward, the VAE's dtype)."""
    vae, unet = pipe.vae, pipe.unet
    encoders = [te for _, te in text_pairs(pipe)]
    for m in (vae, unet, *encoders):
        m.requires_grad_(False)
        m.eval()
    for te in encoders:
        te.to(device)
    unet.to(device) if wdtype is None else unet.to(device, dtype=wdtype)
    # under fp16 weights a VAE marked force_upcast (the config's default: SD 1.5's and SDXL's, whose
    # activations overflow fp16) encodes in fp32, as diffusers' pipelines upcast it to decode
    vae_dtype = torch.float32 if wdtype == torch.float16 and vae.config.get("force_upcast") else wdtype
    vae.to(device) if vae_dtype is None else vae.to(device, dtype=vae_dtype)
    if channels_last(s.get("channels_last"), device):
        unet.to(memory_format=torch.channels_last)
    set_attention(unet, s.get("attention"), f"{adaptation.config_key}.attention")
    params = adaptation.prepare(pipe, device)
    for p in params:  # trained in fp32 whatever the frozen weights' dtype
        p.data = p.data.float()
    # the training and evaluation passes (the preview samples with the plain pipeline)
    return params, compiled(unet, s.get("compile"), f"{adaptation.config_key}.compile"), vae_dtype


def _plan(s: dict, steps: int, n_seeds: int, res: int) -> dict:
    """fixed_costs for this job, and one log line saying what a short job caps."""
    fixed = fixed_costs(steps, int(s["batch_size"]), n_seeds, int(s["augment_variants"]),
                        int(s["preview_images"]), int(s["preview_steps"]), res)
    capped = {key: (int(s[key]), fixed[k]) for k, key in (("variants", "augment_variants"),
                                                          ("preview_images", "preview_images"),
                                                          ("preview_steps", "preview_steps"))
              if fixed[k] < int(s[key])}
    full_eval = max(16, min(64, n_seeds * fixed["variants"]))
    if fixed["eval_latents"] < full_eval:
        capped["evaluation latents"] = (full_eval, fixed["eval_latents"])
    if fixed["preview_resolution"] < res:
        capped["preview px"] = (res, fixed["preview_resolution"])
    if capped or fixed["lazy_encoding"]:
        log.info("a short job (%d steps x %d): %s%s", steps, int(s["batch_size"]),
                 ", ".join(f"{k} {a} -> {b}" for k, (a, b) in capped.items()),
                 "; each seed latent encoded when first drawn" if fixed["lazy_encoding"] else "")
    return fixed


class _FixedEval:
    """A fixed evaluation batch: the seed latents at evenly spread timesteps with
    fixed noise. The training loss is dominated by each step's random timestep;
    this one changes only with the adaptation. None of it for a job of fewer
    than 8 latents drawn (one latent's loss says nothing)."""

    def __init__(self, n_eval: int, latents_of, scaling: float, seed: int, device, noise_sched, conditioning,
                 prompts: list[str]):
        eval_gen = torch.Generator().manual_seed(seed + 7919)
        self.n, self.device, self.noise_sched, self.conditioning = n_eval, device, noise_sched, conditioning
        e_idx = torch.arange(n_eval) % latents_of.n
        self.lat = latents_of.get(e_idx)[0] * scaling if n_eval else torch.zeros(0)
        self.noise = torch.randn(self.lat.shape, generator=eval_gen).to(device)
        n_train_t = noise_sched.config.num_train_timesteps
        self.t = torch.linspace(0.05 * n_train_t, 0.95 * n_train_t, n_eval).long().to(device)
        self.ids = conditioning.ids(prompts) if n_eval else None

    @torch.no_grad()
    def loss(self, net, unet, autocast_ctx) -> float | None:
        if not self.n:
            return None
        total = 0.0
        for i in range(0, self.n, 16):
            sl = slice(i, i + 16)
            lat, noise, t = self.lat[sl].to(self.device), self.noise[sl], self.t[sl]
            with autocast_ctx():
                cond = self.conditioning.encode([x[sl] for x in self.ids])
                pred = net(self.noise_sched.add_noise(lat, noise, t).to(unet.dtype), t,
                           **self.conditioning.unet_kwargs(cond, unet.dtype)).sample
            total += float(F.mse_loss(pred.float(), _target(self.noise_sched, lat, noise, t).float(),
                                      reduction="sum"))
        return total / self.lat.numel()


def _target(noise_sched, latents, noise, t):
    """What the UNet predicts: the noise (epsilon) or the velocity (v-prediction)."""
    if noise_sched.config.prediction_type == "epsilon":
        return noise
    return noise_sched.get_velocity(latents, noise, t)


class _Checkpoint:
    """The job's resumable state in resume_dir/checkpoint.pt, written atomically;
    taken up only when its fingerprint (model, seeds, settings, identity) matches."""

    def __init__(self, resume_dir: str, fp: str):
        self.path, self.fp = Path(resume_dir) / "checkpoint.pt", fp

    def restore(self, adaptation: Adaptation, opt, sched, gen, py_rng) -> tuple[int, list, float | None]:
        """(start step, loss history, the evaluation loss at the start) of a matching checkpoint, else (0, [], None)."""
        if not self.path.exists():
            return 0, [], None
        ck = torch.load(self.path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != self.fp:
            log.info("ignoring checkpoint %s: it was made with other settings or seeds", self.path)
            return 0, [], None
        adaptation.load_state(ck["adaptation"], opt)
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        py_rng.setstate(ck["py_rng"])
        torch.set_rng_state(ck["torch_rng"])
        log.info("resuming from checkpoint %s at step %d", self.path, int(ck["step"]))
        return int(ck["step"]), list(ck["history"]), ck.get("eval_start")

    def save(self, step: int, adaptation: Adaptation, opt, sched, gen, py_rng, history: list,
             eval_start: float | None) -> None:
        ck = {"fingerprint": self.fp, "step": step, "adaptation": adaptation.state(opt), "history": history,
              "sched": sched.state_dict(), "gen": gen.get_state(), "py_rng": py_rng.getstate(),
              "torch_rng": torch.get_rng_state(), "eval_start": eval_start}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Done: a rerun with new settings must start from step 0."""
        if self.path.exists():
            self.path.unlink()


def _preview(pipe, device, wdtype, autocast, fixed: dict, prompt: str, seed: int, preview_out: str) -> None:
    """A contact sheet of the adapted pipeline's images. Half-precision weights (a
    GPU): the whole pipeline in them, as diffusers samples (a VAE that overflows in
    fp16 is upcast by SDXL's pipeline for its decoding); else fp32 weights under
    the job's autocast."""
    pipe.to(device) if wdtype is None else pipe.to(device, dtype=wdtype)
    n_prev, p_res = fixed["preview_images"], fixed["preview_resolution"]
    with torch.no_grad(), (autocast if wdtype is None else contextlib.nullcontext()):
        images = pipe([prompt] * n_prev, num_inference_steps=fixed["preview_steps"], height=p_res, width=p_res,
                      generator=[torch.Generator().manual_seed(seed + i) for i in range(n_prev)]).images
    contact_sheet(images, preview_out)


def _steps(ctx: dict, start: int, steps: int, history: list, bar, checkpoint, stop_after: int | None,
           clock: dict) -> int | None:
    """The training steps start+1..steps; returns the step a stop_after ended at,
    else None. The step losses stay on the device until a flush (every
    log_every steps, before a checkpoint, at the end): one host-device
    synchronisation per flush, not per step. The steps after the first (kernels
    chosen, memory first touched) are timed, less their encodings."""
    c = ctx
    gen, py_rng, latents_of, device = c["gen"], c["py_rng"], c["latents_of"], c["device"]
    noise_sched, conditioning, templates, unet = c["noise_sched"], c["conditioning"], c["templates"], c["unet"]
    opt, sched, adaptation, bs = c["opt"], c["sched"], c["adaptation"], c["batch_size"]
    pending: list = []

    def flush():
        if pending:
            values = torch.stack([loss_t for _, loss_t, _ in pending]).float().cpu().tolist()
            history.extend((st, v, lr) for (st, _, lr), v in zip(pending, values))
            pending.clear()
            bar.set_postfix(loss=f"{history[-1][1]:.4f}", refresh=False)

    def save(step):
        flush()
        checkpoint.save(step, adaptation, opt, sched, gen, py_rng, history, c["eval_start"])

    t_first, enc_first = None, 0.0
    t_loop, enc_loop = time.perf_counter(), latents_of.seconds
    for step in range(start + 1, steps + 1):
        if step == start + 2:
            _sync(device)
            t_first, enc_first = time.perf_counter(), latents_of.seconds
            clock["first_step_s"] = t_first - t_loop - (enc_first - enc_loop)
        idx = torch.randint(0, latents_of.n, (bs,), generator=gen)
        mean, std = latents_of.get(idx)
        eps_lat = torch.randn(mean.shape, generator=gen)
        latents = (mean + std * eps_lat.to(mean.device)) * c["scaling"]
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=gen).to(device)
        which = [templates.index(w) for w in (py_rng.choice(templates) for _ in range(bs))]
        noisy = noise_sched.add_noise(latents, noise, t)
        with c["autocast"]:
            if c["template_cond"] is None:
                names = c["subject_names"]
                cond = conditioning.encode(conditioning.ids(
                    [templates[w].format(names[int(k)]) for w, k in zip(which, c["subject_of"][idx])]))
            else:  # the (subject, template) pairs encoded once: row subject x templates + template
                rows = c["subject_of"][idx] * len(templates) + torch.tensor(which)
                cond = conditioning.take(c["template_cond"], rows.to(device))
            pred = c["net"](noisy.to(unet.dtype), t, **conditioning.unet_kwargs(cond, unet.dtype)).sample
        loss = F.mse_loss(pred.float(), _target(noise_sched, latents, noise, t).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        adaptation.after_step()
        pending.append((step, loss.detach(), float(sched.get_last_lr()[0])))
        if step % c["log_every"] == 0:
            flush()
        bar.update()
        if c["every"] and step % c["every"] == 0 and step < steps:
            save(step)
        if stop_after is not None and step >= stop_after:
            save(step)
            return step
    flush()
    _sync(device)
    timed_steps = steps - start - 1
    if t_first is not None and timed_steps > 0:
        clock["step_s"] = (time.perf_counter() - t_first - (latents_of.seconds - enc_first)) / timed_steps
    return None


def fit(model: str, seed_paths: list[str], cls: str, settings: dict, seed: int, adaptation: Adaptation,
        identity: dict, loss_out: str, preview_out: str, resume_dir: str, stop_after: int | None = None,
        return_pipeline: bool = False) -> dict:
    """Adapt the pipeline at `model` to seed_paths with `adaptation`; write the
    loss CSV and the preview; `adaptation.save()` writes the result. The parts:
    placing and freezing (_place), what a short job caps (_plan), the seed
    latents (SeedLatents), the fixed evaluation batch (_FixedEval), the
    checkpoint (_Checkpoint), the steps (_steps), the preview (_preview).

    identity: what else shapes the result (class, name, …): with the model, the
    seed files and the settings it decides whether a checkpoint may be resumed.
    stop_after: end the run after that many steps (tests use it to simulate a kill).
    return_pipeline: also return the adapted pipeline (tests inspect its weights)."""
    import pandas as pd
    from diffusers import DDPMScheduler

    t_job = time.perf_counter()
    if not seed_paths:
        raise TibalanceError(f"{adaptation.label}: class {cls!r} has an empty seed list")
    # unset: the generator's own size (what a value equal to it gives, checkpoints included)
    res = resolve_resolution(settings.get("resolution"), model, f"{adaptation.config_key}.resolution")
    s = {**settings, "resolution": res}
    device = pick_device(s["device"])
    # on CPU the weights stay fp32 (auto: fp32 arithmetic too); bf16, when asked, runs under autocast
    wdtype, amp_dtype = pipeline_dtypes(device, s["mixed_precision"], f"{adaptation.config_key}.mixed_precision")
    steps, bs = int(s["steps"]), int(s["batch_size"])
    # log_every shapes no result: a checkpoint resumes under another
    fp = fingerprint({"model": model, "model_digest": model_digest(model),
                      "seeds": [[p, file_digest(p)] for p in seed_paths],
                      "settings": {k: v for k, v in s.items() if k != "log_every"},
                      "seed": seed, **identity})

    seed_everything(seed)
    pipe = load_pipeline(model)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    params, net, vae_dtype = _place(pipe, adaptation, device, wdtype, s)
    log.info("class %s: %s, %d trainable parameters, %d seed images, %d steps on %s", cls, adaptation.label,
             sum(p.numel() for p in params), len(seed_paths), steps, device)

    # ---- seed images -> latent distributions, once
    py_rng = random.Random(seed)
    fixed = _plan(s, steps, len(seed_paths), res)
    pixels = augmented_pixels(seed_paths, res, fixed["variants"], py_rng)
    latents_of = SeedLatents(pipe.vae, pixels, device, vae_dtype, fixed["lazy_encoding"])
    del pixels
    templates = s["templates"] or (OBJECT_TEMPLATES if s["learnable_property"] == "object" else STYLE_TEMPLATES)
    names, subject_of = _subjects(adaptation, len(seed_paths), fixed["variants"], latents_of.n)
    subject = names[0]
    # foreach: the multi-tensor kernels, bit-identical to the per-tensor loop (the CPU default), faster
    opt = torch.optim.AdamW(params, lr=float(s["lr"]), betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
                            foreach=bool(s.get("foreach", True)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(s["lr_schedule"], int(s["warmup_steps"]), steps))
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def autocast_ctx():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    conditioning = PromptConditioning(pipe, device, res)
    template_cond = None  # a frozen text encoder encodes each template once
    if not adaptation.trains_text_encoder:
        with torch.no_grad(), autocast_ctx():
            template_cond = conditioning.encode(conditioning.ids([t.format(n) for n in names for t in templates]))
    scaling = float(pipe.vae.config.scaling_factor)
    n_eval = fixed["eval_latents"]
    evaluation = _FixedEval(n_eval, latents_of, scaling, seed, device, noise_sched, conditioning,
                            [templates[i % len(templates)].format(names[int(subject_of[i % latents_of.n])])
                             for i in range(n_eval)])
    checkpoint = _Checkpoint(resume_dir, fp)
    start, history, eval_start = checkpoint.restore(adaptation, opt, sched, gen, py_rng)

    # ---- training
    clock = {"setup_s": time.perf_counter() - t_job}
    t0 = time.perf_counter()
    if eval_start is None:
        eval_start = evaluation.loss(net, pipe.unet, autocast_ctx)
    clock["eval_s"] = time.perf_counter() - t0
    bar = tqdm(total=steps, initial=start, desc=f"{adaptation.label} {cls}", mininterval=2.0)
    autocast = autocast_ctx()
    ctx = {"gen": gen, "py_rng": py_rng, "latents_of": latents_of, "device": device, "noise_sched": noise_sched,
           "conditioning": conditioning, "templates": templates, "subject_names": names, "subject_of": subject_of,
           "unet": pipe.unet, "net": net,
           "opt": opt, "sched": sched, "adaptation": adaptation, "batch_size": bs, "scaling": scaling,
           "autocast": autocast, "template_cond": template_cond, "eval_start": eval_start,
           "log_every": max(1, int(s.get("log_every") or 1)), "every": int(s["checkpoint_every"])}
    stopped = _steps(ctx, start, steps, history, bar, checkpoint, stop_after, clock)
    bar.close()
    if stopped is not None:
        return {"stopped_at": stopped}

    t0 = time.perf_counter()
    eval_end = evaluation.loss(net, pipe.unet, autocast_ctx)
    clock["eval_s"] += time.perf_counter() - t0
    if eval_end is None:
        log.info("no fixed-batch evaluation: %d latents drawn (%d of %d seed latents encoded)",
                 steps * bs, latents_of.encoded, latents_of.n)
    else:
        log.info("fixed-batch denoising loss on the seed images: %.5f at the start, %.5f at the end "
                 "(%d of %d seed latents encoded)", eval_start, eval_end, latents_of.encoded, latents_of.n)
    adaptation.save()
    Path(loss_out).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history, columns=["step", "loss", "lr"]).to_csv(loss_out, index=False, float_format="%.6g")

    t0 = time.perf_counter()
    _preview(pipe, device, wdtype, autocast, fixed, templates[0].format(subject), seed, preview_out)
    clock["preview_s"] = time.perf_counter() - t0
    clock["encode_s"] = latents_of.seconds  # within setup_s, eval_s and (lazy) the steps
    checkpoint.remove()
    result = {"final_loss": history[-1][1] if history else None, "steps": steps, "resumed_from_step": start,
              "eval_loss_start": eval_start, "eval_loss_end": eval_end, "resolution": res,
              "latents_encoded": latents_of.encoded, "latents": latents_of.n,
              "seconds": {k: round(v, 4) for k, v in clock.items()}}
    if return_pipeline:
        result["pipeline"] = pipe
    return result
