"""The offline demo's generator: a small text-conditioned latent diffusion model
pretrained on the demo dataset's majority classes.

Same classes as Stable Diffusion (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel with the real CLIP vocabulary, SD 1.5's noise schedule), saved
with `save_pretrained`, so the rest of the DAG loads it like SD 1.5. It never
sees the rare classes: like SD with a flower it has no name for, its `raw`
prompts for them are a fair "raw SD" row, and textual inversion has something
to learn from the seed images.

Two phases: the VAE learns to reconstruct (its latent scale is then measured,
as SD's `scaling_factor`), then UNet and text encoder learn to denoise latents
conditioned on "a photo of a <class name>", with captions dropped for
classifier-free guidance and an EMA of the weights, which is what is saved.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .defaults import PRETRAIN_DEFAULTS  # noqa: F401 - part of this module's interface
from .precision import autocast_bf16
from .tiny import build_tiny_pipeline
from .util import TibalanceError, seed_everything

log = logging.getLogger(__name__)



def majority_classes(classes_json: dict, exclude) -> list[str]:
    counts = {c: classes_json["counts"][c].get("train", 0) for c in classes_json["classes"]}
    if exclude == "auto":
        top = max(counts.values())
        keep = [c for c in classes_json["classes"] if counts[c] >= 0.5 * top]
    else:
        from .util import slugify

        exclude = [slugify(e) for e in exclude]
        unknown = sorted(set(exclude) - set(counts))
        if unknown:
            raise TibalanceError(f"generator.pretrain.exclude: unknown class(es) {', '.join(unknown)}")
        keep = [c for c in classes_json["classes"] if c not in set(exclude)]
    if not keep:
        raise TibalanceError("generator.pretrain.exclude leaves no class to pretrain on")
    return keep


def load_images(paths: list[str], res: int) -> torch.Tensor:
    """[N, 3, res, res] in [-1, 1]."""
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((res, res), Image.BICUBIC)) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


class _EMA:
    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow, self.modules):
            torch._foreach_lerp_(list(s.parameters()), [p.detach() for p in m.parameters()], 1 - d)
            for bs, bm in zip(s.buffers(), m.buffers()):
                bs.copy_(bm)


VAE_DIR, RNG_FILE, VAE_LOSS = "vae", "pretrain_rng.pt", "vae_loss.csv"
CHECKPOINT_EVERY = 200  # steps (generator.pretrain.checkpoint_every): a killed phase loses at most these


class _StepCheckpoint:
    """A pretraining phase's resumable state every `every` steps (its modules,
    optimiser, schedule, the random generator, the loss history; the EMA's
    copies), written atomically to `path`; taken up only under the same key
    (settings, architecture, seed, images, the VAE it builds on)."""

    def __init__(self, path: str | None, key: dict, every: int):
        from .util import fingerprint

        self.path, self.fp, self.every = (Path(path) if path else None), fingerprint(key), max(1, int(every))

    def restore(self, modules: list, opt, sched, gen) -> tuple[int, list]:
        if self.path is None or not self.path.exists():
            return 0, []
        ck = torch.load(self.path, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != self.fp:
            log.info("ignoring %s: made with other settings or images", self.path)
            return 0, []
        for m, state in zip(modules, ck["modules"], strict=True):
            m.load_state_dict(state)
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        log.info("resuming from %s at step %d", self.path, ck["step"])
        return int(ck["step"]), [tuple(h) for h in ck["history"]]

    def maybe_save(self, step: int, steps: int, modules: list, opt, sched, gen, history: list,
                   stop_after: int | None = None) -> bool:
        """Save at every `every` steps (not the last) and at stop_after; True when the run stops here."""
        stop = stop_after is not None and step >= stop_after
        if self.path is not None and (stop or (step % self.every == 0 and step < steps)):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            torch.save({"fingerprint": self.fp, "step": step, "modules": [m.state_dict() for m in modules],
                        "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                        "history": history}, tmp)
            os.replace(tmp, self.path)
        return stop

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def _images_key(man: pd.DataFrame) -> list:
    return [[p, os.path.getsize(p)] for p in man["path"]]


def _setup(manifest_csv: str, classes_json: dict, arch_cfg: dict, cfg: dict, seed: int):
    c = {**PRETRAIN_DEFAULTS, **cfg}
    seed_everything(seed)
    pipe = build_tiny_pipeline(arch_cfg, seed)
    res = int(pipe.vae.config.sample_size)
    keep = majority_classes(classes_json, c["exclude"])
    man = pd.read_csv(manifest_csv, dtype=str)
    man = man[(man["split"] == "train") & man["label"].isin(keep)].reset_index(drop=True)
    if man.empty:
        raise TibalanceError(f"{manifest_csv}: no train images of the classes to pretrain on")
    return c, pipe, res, keep, man


def _autocast_factory(device, c):
    # bf16 autocast (auto, the default: on a GPU and on a CPU with native bf16;
    # bf16: also emulated; no: fp32): weights, optimiser and losses stay fp32;
    # on a CPU with native bf16 a UNet step 0.34 -> 0.26 s, a VAE step -15%
    amp = autocast_bf16(device, c.get("mixed_precision", "auto"), "generator.pretrain.mixed_precision")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def pretrain_vae(manifest_csv: str, classes_json: dict, out_dir: str, arch_cfg: dict, cfg: dict, seed: int,
                 device: torch.device | str = "cpu", resume: str | None = None,
                 stop_after: int | None = None) -> dict | None:
    """Phase 1: the VAE learns to reconstruct the majority classes' images; its
    latent scale is measured (SD's scaling_factor). Writes out_dir/vae (the
    VAE, save_pretrained), the random generator's state for phase 2 and the
    loss history. It needs no UNet: the workflow runs it beside the baseline.
    resume: a checkpoint file (every checkpoint_every steps) a killed run goes
    on from; stop_after: stop there, saved, returning None (tests: a kill)."""
    device = torch.device(device)
    c, pipe, res, keep, man = _setup(manifest_csv, classes_json, arch_cfg, cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    log.info("pretraining on %d train images of %d classes (never sees: %s)", len(man), len(keep),
             ", ".join(sorted(set(classes_json["classes"]) - set(keep))) or "-")
    x_all = load_images(list(man["path"]), res)
    bs = int(c["batch_size"])
    autocast = _autocast_factory(device, c)
    history = []
    vae = pipe.vae.to(device).train()
    # fused AdamW: one kernel for all tensors (on CPU 28 -> 12 ms a step for the UNet's 244 tensors)
    opt = torch.optim.AdamW(vae.parameters(), lr=float(c["vae_lr"]), weight_decay=0.0, fused=True)
    steps = int(c["vae_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(50, steps // 10 + 1), steps))
    ck = _StepCheckpoint(resume, {"phase": "vae", "cfg": c, "arch": arch_cfg, "seed": seed, "keep": keep,
                                  "images": _images_key(man)}, c.get("checkpoint_every", CHECKPOINT_EVERY))
    start, history = ck.restore([vae], opt, sched, gen)
    for step in tqdm(range(start + 1, steps + 1), desc="pretrain VAE", mininterval=5.0, initial=start, total=steps):
        idx = torch.randint(0, len(x_all), (bs,), generator=gen)
        x = x_all[idx]
        if c["hflip"]:
            flip = torch.rand(bs, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = x.to(device)
        with autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
            rec = vae.decode(z).sample.float()
        post = type(post)(post.parameters.float())  # the KL term in fp32
        loss = F.mse_loss(rec, x) + float(c["kl_weight"]) * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(("vae", step, float(loss.item())))
        if ck.maybe_save(step, steps, [vae], opt, sched, gen, history, stop_after):
            return None
    ck.remove()
    vae.eval().requires_grad_(False)
    lat_mean, _ = _encode(vae, x_all, device)
    n_rec = min(256, len(x_all))
    with torch.no_grad():
        rec = vae.decode(lat_mean[:n_rec].to(device)).sample.cpu()
    rec_mse = float(F.mse_loss(rec, x_all[:n_rec]))
    if c["hflip"]:  # the scale of every latent the UNet trains on, flipped images' too
        lat_mean = torch.cat([lat_mean, _encode(vae, x_all.flip(-1), device)[0]])
    scaling = float(1.0 / lat_mean.std())
    vae.register_to_config(scaling_factor=scaling)
    log.info("VAE: reconstruction MSE %.4f; latent std %.3f -> scaling_factor %.4f", rec_mse, 1 / scaling, scaling)
    out = Path(out_dir)
    vae.to("cpu").save_pretrained(out / VAE_DIR, safe_serialization=True)
    torch.save(gen.get_state(), out / RNG_FILE)
    pd.DataFrame(history, columns=["phase", "step", "loss"]).to_csv(out / VAE_LOSS, index=False, float_format="%.6g")
    return {"classes": keep, "scaling_factor": scaling, "vae_reconstruction_mse": rec_mse, "images": len(x_all)}


def _encode(vae, x, device):
    """The posterior's mean and std of every image (as in textual inversion)."""
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            post = vae.encode(x[i:i + 256].to(device)).latent_dist
            means.append(post.mean.cpu())
            stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


def pretrain_unet(manifest_csv: str, classes_json: dict, vae_dir: str, out_dir: str, arch_cfg: dict, cfg: dict,
                  seed: int, device: torch.device | str = "cpu", loss_out: str | None = None,
                  resume: str | None = None, stop_after: int | None = None) -> dict | None:
    """Phase 2: with phase 1's VAE (vae_dir, from pretrain_vae), UNet and text
    encoder learn to denoise latents conditioned on "a photo of a <class
    name>", captions dropped for classifier-free guidance, an EMA of the
    weights saved. Writes the whole pipeline to out_dir (save_pretrained).
    resume, stop_after: as pretrain_vae's (the EMA's copies saved too)."""
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    device = torch.device(device)
    c, pipe, res, keep, man = _setup(manifest_csv, classes_json, arch_cfg, cfg, seed)
    vae_dir = Path(vae_dir)
    # phase 1's weights and latent scale into this pipeline's own VAE (the saved
    # config then names no intermediate folder)
    vae = pipe.vae
    try:
        vae.load_state_dict(load_file(str(vae_dir / VAE_DIR / "diffusion_pytorch_model.safetensors")))
        scaling = float(json.loads((vae_dir / VAE_DIR / "config.json").read_text())["scaling_factor"])
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise TibalanceError(f"{vae_dir / VAE_DIR}: not the VAE of this generator's pretraining "
                             f"({type(e).__name__}); delete it and rerun pretrain_vae") from e
    vae.register_to_config(scaling_factor=scaling)
    vae = vae.to(device).eval().requires_grad_(False)
    gen = torch.Generator()
    gen.set_state(torch.load(vae_dir / RNG_FILE, weights_only=True))
    history = [tuple(r) for r in pd.read_csv(vae_dir / VAE_LOSS).itertuples(index=False)]
    x_all = load_images(list(man["path"]), res)
    labels = [keep.index(lbl) for lbl in man["label"]]
    names = classes_json["names"]
    captions = [c["template"].format(names[k].lower()) for k in keep]
    bs = int(c["batch_size"])
    autocast = _autocast_factory(device, c)

    lat_mean, lat_std = _encode(vae, x_all, device)
    lat_labels = list(labels)
    if c["hflip"]:
        m2, s2 = _encode(vae, x_all.flip(-1), device)
        lat_mean, lat_std, lat_labels = torch.cat([lat_mean, m2]), torch.cat([lat_std, s2]), lat_labels * 2
    del x_all

    unet, te, tok = pipe.unet.to(device).train(), pipe.text_encoder.to(device), pipe.tokenizer
    if device.type == "cpu":
        # plain matmul-softmax attention: on CPU the backward of PyTorch's fused
        # (flash) attention is slower at these sizes. Only the training run's
        # modules: the saved pipeline keeps diffusers' default.
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    te.train(bool(c["train_text_encoder"])).requires_grad_(bool(c["train_text_encoder"]))
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ids_all = tok(captions + [""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
    empty = len(captions)
    cond_frozen = None
    if not c["train_text_encoder"]:
        with torch.no_grad():
            cond_frozen = te(ids_all)[0]
    params = list(unet.parameters()) + (list(te.parameters()) if c["train_text_encoder"] else [])
    opt = torch.optim.AdamW(params, lr=float(c["lr"]), weight_decay=1e-2, fused=True)
    steps = int(c["unet_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(int(c["warmup_steps"]), steps))
    ema = _EMA([unet, te], float(c["ema_decay"]))
    lab = torch.tensor(lat_labels)
    from .util import file_digest

    ck = _StepCheckpoint(resume, {"phase": "unet", "cfg": c, "arch": arch_cfg, "seed": seed, "keep": keep,
                                  "images": _images_key(man),
                                  "vae": file_digest(vae_dir / VAE_DIR / "diffusion_pytorch_model.safetensors")},
                         c.get("checkpoint_every", CHECKPOINT_EVERY))
    modules = [unet, te, *ema.shadow]
    start, saved = ck.restore(modules, opt, sched, gen)
    history = history + saved if start else history
    for step in tqdm(range(start + 1, steps + 1), desc="pretrain UNet", mininterval=5.0, initial=start,
                     total=steps):
        idx = torch.randint(0, len(lat_mean), (bs,), generator=gen)
        z = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)) * scaling
        z = z.to(device)
        noise = torch.randn(z.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (bs,), generator=gen).to(device)
        which = lab[idx].clone()
        drop = torch.rand(bs, generator=gen) < float(c["caption_dropout"])
        which[drop] = empty
        # the few distinct captions go through the text encoder once per step
        # (not once per image): the same gradients at a fraction of the cost
        with autocast():
            cond = (te(ids_all)[0] if c["train_text_encoder"] else cond_frozen)[which.to(device)]
            pred = unet(noise_sched.add_noise(z, noise, t), t, cond).sample.float()
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update(step)
        history.append(("unet", step, float(loss.item())))
        if ck.maybe_save(step, steps, modules, opt, sched, gen, [h for h in history if h[0] == "unet"], stop_after):
            return None
    ck.remove()

    pipe.unet, pipe.text_encoder = ema.shadow[0], ema.shadow[1]
    pipe.vae = vae
    pipe.to("cpu")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if loss_out:
        pd.DataFrame(history, columns=["phase", "step", "loss"]).to_csv(loss_out, index=False, float_format="%.6g")
    unet_losses = [h[2] for h in history if h[0] == "unet"]
    k = max(1, len(unet_losses) // 10)
    return {"classes": keep, "captions": captions, "scaling_factor": scaling,
            "unet_loss_first_10pct": float(np.mean(unet_losses[:k])) if unet_losses else None,
            "unet_loss_last_10pct": float(np.mean(unet_losses[-k:])) if unet_losses else None}


def pretrain(manifest_csv: str, classes_json: dict, out_dir: str, arch_cfg: dict, cfg: dict, seed: int,
             device: torch.device | str = "cpu", loss_out: str | None = None) -> dict:
    """Both phases one after the other (the workflow runs them as two jobs, the
    same computation): the VAE into a folder beside out_dir, then the pipeline."""
    vae_dir = Path(str(out_dir).rstrip("/") + "_vae")
    vae_dir.mkdir(parents=True, exist_ok=True)
    first = pretrain_vae(manifest_csv, classes_json, str(vae_dir), arch_cfg, cfg, seed, device)
    second = pretrain_unet(manifest_csv, classes_json, str(vae_dir), out_dir, arch_cfg, cfg, seed, device, loss_out)
    return {**first, **second}


@torch.no_grad()
def generator_quality(model: str, classifier: str, classes_json: dict, classes: list[str], template: str,
                      n_per_class: int, steps: int, guidance_scale: float, seed: int, device="cpu",
                      grid_out: str | None = None, batch_size: int = 64) -> pd.DataFrame:
    """How often the baseline classifier recognises the generator's images of each
    class: one row per class (n, accuracy, the class it is most often taken for)."""
    from .classifier import TrainedClassifier, eval_transform
    from .generator import load_pipeline
    from .seeds import contact_sheet

    pipe = load_pipeline(model, device=device)
    res = int(pipe.vae.config.sample_size)
    clf = TrainedClassifier.load(classifier, device=device)
    tf = eval_transform(clf.image_size)
    rows, grid = [], []
    for k, cls in enumerate(classes):
        prompt = template.format(classes_json["names"][cls].lower())
        images = []
        for i in range(0, n_per_class, batch_size):
            n = min(batch_size, n_per_class - i)
            gens = [torch.Generator().manual_seed(seed + 1000 * k + i + j) for j in range(n)]
            images += pipe([prompt] * n, num_inference_steps=steps, guidance_scale=guidance_scale,
                           height=res, width=res, generator=gens).images
        x = torch.stack([tf(im.convert("RGB")) for im in images]).to(device)
        pred = clf.model(x).argmax(1).cpu().numpy()
        names = [clf.classes[p] for p in pred]
        top = pd.Series(names).value_counts()
        rows.append({"class": cls, "prompt": prompt, "n": len(images),
                     "accuracy": float(np.mean([p == cls for p in names])),
                     "most_often": top.index[0], "most_often_share": float(top.iloc[0] / len(names))})
        grid += images[:8] + [None] * (8 - len(images[:8]))
    if grid_out:
        contact_sheet(grid, grid_out, tile=64, cols=8,
                      captions=[f"{r['class']} {r['accuracy']:.0%}" if j == 0 else "" for r in rows for j in range(8)])
    return pd.DataFrame(rows)
