"""Sampling: synthetic images of a weak class, in one of these modes (and
GeNIe's `genie`, `genie_ada`: genie.py, from other classes' images):

- `raw`: text-to-image with the class's plain name (the raw-SD comparison row);
- `ti`: text-to-image with the learned token;
- `ti_i2i`: image-to-image from the class's real training images with the
  learned token (real-image-guided, as DA-Fusion): image i starts from real
  image i mod n, noised to `strength` of the schedule (a list of strengths:
  image i takes the (i mod length)-th), then denoised;
- `fg_i2i`: ti_i2i with the baseline classifier's feedback gradient added to
  the latents on the first steps (feedback.py);
- `lora`: text-to-image with the class's name and its LoRA adapter loaded;
- `lora_i2i`: image-to-image as ti_i2i, with the class's name and its LoRA adapter;
- `ti_lora`: text-to-image with the learned token and its token + LoRA adapter;
- `diff_ii`: Diff-II (diff_ii.py): DDIM from a random point on the circle
  through two of the class's real images' inversions, the first part of the
  steps under a prompt with a context suffix; on the token and the adapter
  the adapted classes share by default;
- `coti`: text-to-image with COTI's token.

One seed per image (derived from the base seed, class and image index, the same
for every mode so the rows are paired), batched, half precision on GPU, a
few-step scheduler. Resumable: images already written with the same settings
are kept and not generated again."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import refill_count
from .defaults import DIFF_II_DEFAULTS, GENIE_MODES, I2I_MODES, LORA_MODES, MODES, SAMPLING_DEFAULTS, TOKEN_MODES, uses  # noqa: F401 - part of this module's interface
from .generator import img2img, load_pipeline, model_digest, resolve_resolution
from .inversion import expand_placeholder, load_token
from .runtime import channels_last, compiled, pipeline_dtypes, set_attention
from .util import TibalanceError, derive_seed, file_digest, fingerprint, pick_device, write_csv

log = logging.getLogger(__name__)





def n_images_for(setting, cls: str, manifest: pd.DataFrame) -> int:
    """How many synthetic images class `cls` gets (see config.refill_count), from the manifest's train split."""
    counts = manifest[manifest["split"] == "train"].groupby("label").size()
    return refill_count(setting, cls, {str(k): int(v) for k, v in counts.items()})


def real_start_images(manifest: pd.DataFrame, cls: str) -> list[str]:
    """The class's real training images, in a fixed order: the i2i modes' starting points."""
    return sorted(manifest[(manifest["split"] == "train") & (manifest["label"] == cls)]["path"])


def load_start_image(path: str, resolution: int):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)


def make_scheduler(name: str, config):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    table = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "pndm": PNDMScheduler}
    if name not in table:
        raise TibalanceError(f"sampling.scheduler: unknown scheduler {name!r} (dpmpp, ddim, euler, pndm)")
    return table[name].from_config(config)


def image_seed(base_seed: int, cls: str, index: int) -> int:
    return derive_seed(base_seed, cls, "sample", index)


AUTO_BATCH_CPU = 8    # sampling.batch_size auto on a CPU: the default's batch
AUTO_BATCH_MAX = 64   # ... and the most it takes on a GPU


def batch_from_memory(free_bytes: int, per_image_bytes: int, headroom: float = 0.85,
                      most: int = AUTO_BATCH_MAX) -> int:
    """Images per pipeline call that fit in free_bytes at per_image_bytes each
    (a batch-1 call's peak: an upper bound, as it includes what does not grow
    with the batch), with headroom for the allocator; 1 to `most`."""
    return max(1, min(most, int(headroom * free_bytes) // max(1, int(per_image_bytes))))


def auto_batch_size(device, probe) -> int:
    """sampling.batch_size auto: on a GPU the batch that fits in its free memory,
    from one probing call of a single image (`probe()`, one step, its image
    discarded); on a CPU AUTO_BATCH_CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return AUTO_BATCH_CPU
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe()
    torch.cuda.synchronize(device)
    per_image = torch.cuda.max_memory_allocated(device) - base
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # the allocator's cache
    bs = batch_from_memory(free, per_image)
    log.info("sampling.batch_size auto: %d (%.2f GB a batch-1 call, %.1f GB free)", bs, per_image / 1e9, free / 1e9)
    return bs


def mode_pipeline(model: str, mode: str, s: dict, device, wdtype, embeds: str | None, placeholder: str | None,
                  lora: str | None, concept: str = "ti"):
    """The pipeline a sampling mode samples with: the generator with the class's
    token and/or LoRA adapter (fused), the configured scheduler (diff_ii: DDIM,
    the mirror of its inversions), the family's image-to-image pipeline for the
    real-image-guided modes, the switches."""
    token, adapter = uses(mode, concept, genie=concept)
    pipe = load_pipeline(model, device=device, dtype=wdtype)
    if channels_last(s.get("channels_last"), device):
        pipe.unet.to(memory_format=torch.channels_last)
    set_attention(pipe.unet, s.get("attention"), "sampling.attention")
    if token:
        load_token(pipe, embeds, placeholder)
    if adapter:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()  # merged into the weights: no per-layer adapter cost while sampling
    if mode == "diff_ii":
        from .diff_ii import ddim

        ddim(pipe)
    else:
        pipe.scheduler = make_scheduler(s["scheduler"], pipe.scheduler.config)
    if mode in I2I_MODES or mode in GENIE_MODES:
        pipe = img2img(pipe)  # the family's image-to-image pipeline, the same loaded weights
    pipe.unet = compiled(pipe.unet, s.get("compile"), "sampling.compile")
    return pipe


def subject_of(mode: str, cls: str, cls_name: str, s: dict, placeholder: str | None, num_vectors: int,
               lora_prompt_name: str | None, concept: str = "ti") -> str:
    """What the prompts name the class by: the learned token (its vectors spelled
    out), the words a `lora` adapter was trained with, or the class's name."""
    token, adapter = uses(mode, concept, genie=concept)
    if token:
        return expand_placeholder(placeholder, placeholder, num_vectors)
    if adapter == "lora":
        return lora_prompt_name or cls_name
    return s["prompt_name"] or cls_name


def check_inputs(mode: str, cls: str, n: int, embeds, lora, concept: str = "ti") -> None:
    if mode not in MODES:
        raise TibalanceError(f"sample: unknown mode {mode!r} ({', '.join(MODES)})")
    token, adapter = uses(mode, concept, genie=concept)
    if token and not embeds and n:  # a class that gets no images has no token (no inversion ran for it)
        raise TibalanceError(f"sample: mode {mode} for class {cls} needs learned embeddings")
    if adapter and not lora and n:
        raise TibalanceError(f"sample: mode {mode} for class {cls} needs its LoRA adapter")


def reuse_keys(s: dict, mode: str) -> list[str]:
    """The sampling settings that shape a mode's images (the reuse key's)."""
    keys = ["scheduler", "steps", "guidance_scale", "resolution", "negative_prompt"]
    keys += ["strength"] if mode in I2I_MODES else []
    # unset or auto: the fingerprints of images made before this setting existed hold
    # (auto is fp32 on every CPU); an explicit bf16 makes other images: its own mark
    keys += ["mixed_precision"] if s.get("mixed_precision", "auto") != "auto" else []
    keys += ["channels_last"] if s.get("channels_last", "auto") != "auto" else []
    keys += ["compile"] if s.get("compile") not in (None, False) else []
    keys += ["attention"] if s.get("attention", "sdpa") != "sdpa" else []
    return keys


def sample_class(model: str, mode: str, cls: str, cls_name: str, settings: dict, seed: int,
                 manifest: str, out_csv: str, image_dir: str, embeds: str | None = None,
                 placeholder: str | None = None, num_vectors: int = 1, lora: str | None = None,
                 lora_prompt_name: str | None = None, diff_ii: dict | None = None,
                 inversions: str | None = None, feedback: dict | None = None,
                 baseline_model: str | None = None) -> int:
    """Generate the class's images into image_dir and list them in out_csv.

    embeds: the learned token (ti, ti_i2i, ti_lora); lora: the adapter file
    (lora, lora_i2i, ti_lora), whose prompts name the class by lora_prompt_name
    if set; diff_ii: its settings and inversions: the class's inversion table
    (diff_ii.py); feedback: fg_i2i's settings and baseline_model the classifier
    that guides it (feedback.py). Returns how many images were newly generated."""
    if mode in GENIE_MODES:
        raise TibalanceError(f"sample: mode {mode} starts from other classes' images: genie.sample_genie makes it")
    s = {**SAMPLING_DEFAULTS, **(settings or {})}
    d = diff_ii_settings(diff_ii, lora) if mode == "diff_ii" else {}
    concept = d.get("concept", "ti")
    m = pd.read_csv(manifest, dtype=str)
    n = n_images_for(s["n_images"], cls, m)
    check_inputs(mode, cls, n, embeds, lora, concept)
    subject = subject_of(mode, cls, cls_name, s, placeholder, num_vectors, lora_prompt_name, concept)
    templates = list(s["templates"])
    prompts = [templates[i % len(templates)].format(subject) for i in range(n)]
    seeds = [image_seed(seed, cls, i) for i in range(n)]
    # unset: the generator's own size (and the same images as a value equal to it)
    res = s["resolution"] = resolve_resolution(s["resolution"], model, "sampling.resolution") if n else s["resolution"]
    strengths = s["strength"] if isinstance(s["strength"], (list, tuple)) else [s["strength"]]

    def strength_of(i: int) -> float:
        return float(strengths[i % len(strengths)])

    starts: list[str | None] = [None] * n
    if mode in I2I_MODES:
        real = real_start_images(m, cls)
        if not real and n:
            raise TibalanceError(f"sample: {mode} for class {cls} needs real training images; {manifest} has none")
        starts = [real[i % len(real)] for i in range(n)]
    plan = diff_ii_plan(inversions, d, seed, cls, n) if mode == "diff_ii" and n else None
    guide = feedback_guide(feedback, baseline_model, cls) if mode == "fg_i2i" and n else None

    # images already on disk are reused only when everything that shapes them is unchanged
    # (the mode is keyed "method", and so is samples.csv's column: the names images were made under)
    out = Path(image_dir)
    device = pick_device(s["device"])
    wdtype, amp_dtype = pipeline_dtypes(device, s.get("mixed_precision", "auto"), "sampling.mixed_precision")
    # the model's files, not only its path: a generator rebuilt in place makes new images
    fp = fingerprint({"model": model, "model_digest": model_digest(model) if n else None, "method": mode,
                      "subject": subject, "settings": {k: s[k] for k in reuse_keys(s, mode)},
                      "embeds": file_digest(embeds) if embeds else None, "seed": seed, "templates": templates,
                      **({"lora": file_digest(lora)} if lora else {}),
                      **({"diff_ii": plan["key"]} if plan else {}),
                      **({"feedback": {k: v for k, v in guide.items() if k != "guide"}} if guide else {}),
                      "starts": sorted(set(p for p in starts if p)) or None})
    paths = image_folder(out, fp, n)
    todo = [i for i in range(n) if not paths[i].exists()]
    log.info("class %s, %s: %d images wanted, %d on disk, %d to generate", cls, mode, n, n - len(todo), len(todo))
    if n == 0:
        log.info("class %s, %s: 0 images (the class is already at its target size)", cls, mode)
    if todo:
        # on a GPU the weights are half precision; on CPU they stay fp32 and bf16 runs under autocast
        autocast = wdtype is None and amp_dtype is not None
        pipe = mode_pipeline(model, mode, s, device, wdtype, embeds, placeholder, lora, concept)

        def generate(group: list[int], steps: int) -> list:
            """The images of `group` (one strength: image-to-image takes one a call), each from its own seed."""
            kw = dict(num_inference_steps=steps, guidance_scale=float(s["guidance_scale"]),
                      negative_prompt=[s["negative_prompt"]] * len(group) if s["negative_prompt"] else None,
                      generator=[torch.Generator().manual_seed(seeds[i]) for i in group])
            texts = [prompts[i] for i in group]
            if mode in I2I_MODES:
                kw.update(image=[load_start_image(starts[i], res) for i in group], strength=strength_of(group[0]))
            else:
                kw.update(height=res, width=res)
            if plan:
                texts = two_stage(pipe, plan, group, texts, steps, s["negative_prompt"] or None, kw)
            if guide:
                kw["callback_on_step_end"] = guide["guide"]
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                return pipe(texts, **kw).images

        if s["batch_size"] == "auto":  # probed with the first image, one step (image-to-image: at least one)
            probe_steps = max(1, math.ceil(1 / strength_of(todo[0]))) if mode in I2I_MODES else 1
            bs = auto_batch_size(device, lambda: generate(todo[:1], probe_steps))
        else:
            bs = int(s["batch_size"])
        bar = tqdm(total=len(todo), desc=f"sample {mode} {cls}", mininterval=2.0)
        for start in range(0, len(todo), bs):
            batch = todo[start:start + bs]
            groups = ([[i for i in batch if strength_of(i) == v] for v in dict.fromkeys(map(strength_of, batch))]
                      if mode in I2I_MODES else [batch])
            images = [im for group in groups for im in zip(group, generate(group, int(s["steps"])))]
            for i, im in sorted(images, key=lambda t: t[0]):
                tmp = paths[i].with_suffix(".tmp.png")
                im.save(tmp)
                tmp.replace(paths[i])  # a killed job leaves no half-written image
            bar.update(len(batch))
        bar.close()
    if plan:
        starts, strength_col = plan["starts"], plan["strengths"]
    else:
        strength_col = [strength_of(i) if mode in I2I_MODES else "" for i in range(n)]
    write_csv(pd.DataFrame({"index": range(n), "path": [str(p) for p in paths], "seed": seeds,
                            "prompt": prompts, "label": cls, "method": mode,
                            "start_image": [p or "" for p in starts], "strength": strength_col}), out_csv)
    return len(todo)


def image_folder(out: Path, fp: str, n: int) -> list[Path]:
    """A sample table's image folder, kept only while `fp` (the fingerprint of what
    shapes its images) holds, emptied otherwise; the paths of its n images (a
    smaller count leaves no image of a larger one)."""
    fp_file = out / "fingerprint.json"
    if out.exists() and (not fp_file.exists() or json.loads(fp_file.read_text()).get("fingerprint") != fp):
        log.info("settings changed: discarding the images in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    fp_file.write_text(json.dumps({"fingerprint": fp}) + "\n")
    paths = [out / f"{i:05d}.png" for i in range(n)]
    for stale in set(out.glob("*.png")) - set(paths):
        stale.unlink()
    return paths


def diff_ii_settings(diff_ii: dict | None, lora: str | None) -> dict:
    """diff_ii's settings with their defaults; concept auto (the workflow resolves
    it by the classes adapted) in a direct call: the shared adapter where one is
    given, the token alone where none is."""
    d = {**DIFF_II_DEFAULTS, **(diff_ii or {})}
    if d["concept"] == "auto":
        d["concept"] = "ti_shared_lora" if lora else "ti"
    return d


def feedback_guide(feedback: dict | None, baseline_model: str | None, cls: str) -> dict | None:
    """fg_i2i's guidance (feedback.Feedback) with what keys its images (its
    settings, the classifier's file); None at scale 0 (ti_i2i's images)."""
    from .defaults import FEEDBACK_DEFAULTS
    from .feedback import Feedback

    f = {**FEEDBACK_DEFAULTS, **(feedback or {})}
    if float(f["scale"]) == 0:
        return None
    if not baseline_model:
        raise TibalanceError(f"sample: fg_i2i for class {cls} needs the baseline classifier (feedback.scale "
                             f"{f['scale']})")
    from .classifier import TrainedClassifier

    clf = TrainedClassifier.load(baseline_model)
    clf.model.requires_grad_(False)
    if cls not in clf.classes:
        raise TibalanceError(f"sample: {baseline_model} does not know class {cls!r}")
    guide = Feedback(float(f["scale"]), float(f["share"]), f["criterion"], clf, clf.classes.index(cls))
    return {**f, "classifier": file_digest(baseline_model), "guide": guide}


def diff_ii_plan(inversions: str | None, d: dict, seed: int, cls: str, n: int) -> dict:
    """Each diff_ii image's start (two inversions and an angle, or noise) and
    suffix, drawn by its own seed; its reuse key (the inversions' files, the
    split and the suffixes)."""
    from .defaults import paper_split_ratio
    from .diff_ii import draw, load_pool, pair_seed, read_suffixes

    if not inversions:
        raise TibalanceError(f"sample: mode diff_ii for class {cls} needs its inversions")
    pool, images, files = load_pool(inversions)
    suffixes = read_suffixes(d)
    draws = [draw(pool, pair_seed(seed, cls, i), suffixes) for i in range(n)]
    split = d["split_ratio"]
    if split == "auto":  # the workflow resolves it per class; a direct call: the rule by the images inverted
        split = paper_split_ratio(len(images), long_tailed=False)
        log.info("diff_ii.split_ratio auto: %.1f (%d real images, not long-tailed)", split, len(images))
    return {"draws": draws, "split_ratio": float(split),
            "key": {"inversions": [file_digest(f) for f in files], "split_ratio": float(split),
                    "suffixes": suffixes, "concept": d["concept"]},
            "starts": [";".join(images[j] for j in x["pair"]) if x["pair"] else "" for x in draws],
            "strengths": [x["strength"] if x["strength"] is not None else "" for x in draws]}


def two_stage(pipe, plan: dict, group: list[int], texts: list[str], steps: int, negative, kw: dict) -> list[str]:
    """Diff-II's two-stage denoising for `group`: its start latents into kw, the
    prompts of the first stage returned (the plain ones with each image's
    suffix), and the step-end callback that swaps in the plain ones after the
    first stage's last step (none where a stage is empty)."""
    from .diff_ii import stage_steps, switch_prompt

    dtype = next(pipe.unet.parameters()).dtype
    kw["latents"] = torch.stack([plan["draws"][i]["latents"] for i in group]).to(dtype)
    first = stage_steps(steps, plan["split_ratio"])
    if first == 0:
        return texts
    suffixed = [f"{t} {plan['draws'][i]['suffix']}".strip() for t, i in zip(texts, group)]
    if first < steps:
        kw["callback_on_step_end"], kw["callback_on_step_end_tensor_inputs"] = switch_prompt(
            pipe, texts, negative, first)
    return suffixed


def invert_job(model: str, cls: str, cls_name: str, manifest: str, settings: dict, diff_ii: dict, out_csv: str,
               out_dir: str, embeds: str | None = None, placeholder: str | None = None, num_vectors: int = 1,
               lora: str | None = None, lora_prompt_name: str | None = None) -> dict:
    """Diff-II's inversion pool of a class (rule invert): every real training
    image DDIM-inverted under the first template naming the class by its
    concept, at the sampling's steps and size, on the pipeline diff_ii samples
    with. Writes the table of images and inversion files to out_csv."""
    from .diff_ii import invert_class, write_inversions

    s = {**SAMPLING_DEFAULTS, **(settings or {})}
    d = diff_ii_settings(diff_ii, lora)
    images = real_start_images(pd.read_csv(manifest, dtype=str), cls)
    if not images:
        raise TibalanceError(f"invert: class {cls} has no real training image in {manifest}")
    check_inputs("diff_ii", cls, len(images), embeds, lora, d["concept"])
    res = resolve_resolution(s["resolution"], model, "sampling.resolution")
    device = pick_device(s["device"])
    wdtype, _ = pipeline_dtypes(device, s.get("mixed_precision", "auto"), "sampling.mixed_precision")
    subject = subject_of("diff_ii", cls, cls_name, s, placeholder, num_vectors, lora_prompt_name, d["concept"])
    prompt = list(s["templates"])[0].format(subject)
    key = {"model": model, "model_digest": model_digest(model), "concept": d["concept"],
           "embeds": file_digest(embeds) if embeds else None, "lora": file_digest(lora) if lora else None,
           "settings": {k: s[k] for k in reuse_keys(s, "diff_ii") if k not in ("scheduler", "guidance_scale",
                                                                               "negative_prompt")}}
    pipe = mode_pipeline(model, "diff_ii", s, device, wdtype, embeds, placeholder, lora, d["concept"])
    files = invert_class(pipe, images, load_start_image, prompt, res, int(s["steps"]), out_dir, key, device,
                         int(d["inversion_refine"]))
    write_inversions(images, files, out_csv)
    return {"images": len(images), "prompt": prompt}
