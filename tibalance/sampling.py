"""Sampling: synthetic images of a weak class, with the learned token (`ti`) or
with the class's plain name (`raw`, the raw-SD comparison row).

One seed per image (derived from the base seed, class and image index, the same
for raw and ti so the rows are paired), batched, half precision on GPU, a
few-step scheduler. Resumable: images already written with the same settings
are kept and not generated again."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .generator import half_dtype, load_pipeline
from .inversion import expand_placeholder
from .util import TibalanceError, derive_seed, file_digest, fingerprint, pick_device, write_csv

log = logging.getLogger(__name__)

SAMPLING_DEFAULTS = {
    "n_images": 100,          # an integer, or "median": bring the class up to the median class size
    "batch_size": 8,
    "scheduler": "dpmpp",     # dpmpp (DPM-Solver++) | ddim | euler | pndm
    "steps": 25,
    "guidance_scale": 7.5,
    "resolution": 512,
    "templates": ["a photo of a {}"],
    "negative_prompt": "",
    "prompt_name": None,      # raw prompts use this instead of the class name (e.g. sword lily -> gladiolus)
    "device": "auto",
}


def n_images_for(setting, cls: str, manifest: pd.DataFrame) -> int:
    """Absolute count, or 'median': the median train class size minus the class's own."""
    if isinstance(setting, int):
        return setting
    if setting == "median":
        counts = manifest[manifest["split"] == "train"].groupby("label").size()
        return max(0, int(np.median(counts.to_numpy())) - int(counts.get(cls, 0)))
    raise TibalanceError(f"sampling.n_images: {setting!r} for class {cls} is neither an integer nor 'median'")


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


def sample_class(model: str, method: str, cls: str, cls_name: str, settings: dict, seed: int,
                 manifest: str, out_csv: str, image_dir: str, embeds: str | None = None,
                 placeholder: str | None = None, num_vectors: int = 1) -> int:
    """Generate the class's images into image_dir and list them in out_csv.

    Returns how many images were newly generated."""
    s = {**SAMPLING_DEFAULTS, **(settings or {})}
    m = pd.read_csv(manifest, dtype=str)
    n = n_images_for(s["n_images"], cls, m)
    if method == "ti":
        if not embeds:
            raise TibalanceError(f"sample: method ti for class {cls} needs learned embeddings")
        subject = expand_placeholder(placeholder, placeholder, num_vectors)
    elif method == "raw":
        subject = s["prompt_name"] or cls_name
    else:
        raise TibalanceError(f"sample: unknown method {method!r} (ti or raw)")
    templates = list(s["templates"])
    prompts = [templates[i % len(templates)].format(subject) for i in range(n)]
    seeds = [image_seed(seed, cls, i) for i in range(n)]

    # images already on disk are reused only when everything that shapes them is unchanged
    out = Path(image_dir)
    fp_settings = {k: s[k] for k in ("scheduler", "steps", "guidance_scale", "resolution", "negative_prompt")}
    fp = fingerprint({"model": model, "method": method, "subject": subject, "settings": fp_settings,
                      "embeds": file_digest(embeds) if embeds else None, "seed": seed, "templates": templates})
    fp_file = out / "fingerprint.json"
    if out.exists() and (not fp_file.exists() or json.loads(fp_file.read_text()).get("fingerprint") != fp):
        log.info("settings changed: discarding the images in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    fp_file.write_text(json.dumps({"fingerprint": fp}) + "\n")

    paths = [out / f"{i:05d}.png" for i in range(n)]
    todo = [i for i in range(n) if not paths[i].exists()]
    log.info("class %s, %s: %d images wanted, %d on disk, %d to generate", cls, method, n, n - len(todo), len(todo))
    if todo:
        device = pick_device(s["device"])
        dtype = half_dtype(device)
        pipe = load_pipeline(model, device=device, dtype=dtype)
        if method == "ti":
            pipe.load_textual_inversion(embeds, token=placeholder)
        pipe.scheduler = make_scheduler(s["scheduler"], pipe.scheduler.config)
        res = int(s["resolution"])
        bs = int(s["batch_size"])
        bar = tqdm(total=len(todo), desc=f"sample {method} {cls}", mininterval=2.0)
        for start in range(0, len(todo), bs):
            batch = todo[start:start + bs]
            with torch.no_grad():
                images = pipe([prompts[i] for i in batch], height=res, width=res,
                              num_inference_steps=int(s["steps"]), guidance_scale=float(s["guidance_scale"]),
                              negative_prompt=[s["negative_prompt"]] * len(batch) if s["negative_prompt"] else None,
                              generator=[torch.Generator().manual_seed(seeds[i]) for i in batch]).images
            for i, im in zip(batch, images):
                tmp = paths[i].with_suffix(".tmp.png")
                im.save(tmp)
                tmp.replace(paths[i])  # a killed job leaves no half-written image
            bar.update(len(batch))
        bar.close()
    write_csv(pd.DataFrame({"index": range(n), "path": [str(p) for p in paths], "seed": seeds,
                            "prompt": prompts, "label": cls, "method": method}), out_csv)
    return len(todo)
