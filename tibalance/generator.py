"""Which Stable Diffusion pipeline a generator setting names (hub id or local
save_pretrained folder), its family and sizes, and loading it. Building the
tiny offline one is tiny.py's job, fetching a hub one fetch.py's, and the
pipeline's run-time switches runtime.py's."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .util import TibalanceError

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_local(model: str) -> bool:
    """A local folder, as opposed to a hub id ('owner/name')."""
    return os.path.exists(model) or not HUB_ID.match(model) or model.startswith(("results/", "resources/"))


def shipped_or_given(model: str, basedir: str) -> str:
    """generator.model as the jobs open it: a relative folder that the working
    directory lacks but the workflow's own folder has (the shipped demo
    generator, workflow/resources/demo_generator, for a run with --directory
    elsewhere) is the workflow's; anything else as given."""
    if os.path.isabs(model) or os.path.exists(model):
        return model
    shipped = os.path.join(basedir, model)
    return shipped if os.path.isdir(shipped) else model


# The pipeline classes (model_index.json's _class_name) every generative stage
# handles, and their family: SD 1.x and SD 2.x (epsilon and v-prediction) are
# StableDiffusionPipeline, SDXL (base) StableDiffusionXLPipeline; a folder saved
# from an image-to-image pipeline opens as its text-to-image sibling.
FAMILY_OF = {"StableDiffusionPipeline": "sd", "StableDiffusionImg2ImgPipeline": "sd",
             "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl"}
FAMILIES = ("SD 1.x and SD 2.x (epsilon and v-prediction) as StableDiffusionPipeline, "
            "SDXL base (two text encoders) as StableDiffusionXLPipeline")


def model_index(model: str) -> dict | None:
    """The pipeline's model_index.json: a local folder's, or a hub id's from the
    local HF cache (None where it is not there: offline before fetching)."""
    if is_local(model):
        index = Path(model) / "model_index.json"
        try:
            return json.loads(index.read_text())
        except (OSError, ValueError) as e:
            raise TibalanceError(f"generator.model: {index} is not readable JSON ({type(e).__name__})") from e
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model)
    except (OSError, ValueError):
        return None


def family_problem(index: dict) -> str | None:
    """Why the pipeline a model_index.json describes is not one the stages handle, or None."""
    cls = index.get("_class_name")
    if cls not in FAMILY_OF:
        return f"is a {cls}; TI, LoRA and sampling support {FAMILIES}"
    missing = [k for k in ("text_encoder", "tokenizer", "unet", "vae") + (("text_encoder_2", "tokenizer_2")
               if FAMILY_OF[cls] == "sdxl" else ()) if not (index.get(k) or [None, None])[-1]]
    if missing:  # e.g. SDXL's refiner: text_encoder_2 only
        return (f"is a {cls} without {', '.join(missing)} (an SDXL refiner?); TI, LoRA and sampling need "
                f"the family's every text encoder and tokenizer, its UNet and VAE")
    return None


def family(model: str) -> str:
    """The generator's family from its model_index.json: sd (SD 1.x, 2.x) or sdxl
    (sd where a hub id is not in the local cache: its load says more)."""
    index = model_index(model)
    return FAMILY_OF.get((index or {}).get("_class_name"), "sd")


def check_model(model: str, key: str = "generator.model") -> None:
    """One-line error when a local generator folder does not exist, or holds a
    pipeline family the stages do not handle (parse time: the Snakefile calls it)."""
    if not is_local(model):
        return
    index = Path(model) / "model_index.json"
    if not index.is_file():
        what = "does not exist" if not os.path.exists(model) else "has no model_index.json (not a save_pretrained folder)"
        raise TibalanceError(f"{key}: generator folder {model} {what}")
    problem = family_problem(model_index(model))
    if problem:
        raise TibalanceError(f"{key}: {model} {problem}")


_digests: dict = {}


def model_digest(model: str) -> str:
    """What the generator is, for the jobs' own reuse (sampling's images on disk,
    an adaptation's checkpoint): the digest of every file of a local folder
    (hidden ones, e.g. a download's .cache, aside), so a folder rebuilt or
    replaced at the same path makes new images; a hub id as written. Hashed
    once per job (a few seconds for SD's files: docs/performance.md)."""
    if not is_local(model) or not os.path.isdir(model):
        return model
    root = Path(model)
    files = sorted(f for f in root.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    key = (str(root.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _digests:
        from .util import file_digest, fingerprint

        _digests[key] = fingerprint([[str(f.relative_to(root)), file_digest(f)] for f in files])
    return _digests[key]


def prediction_type(model: str) -> str:
    """What the generator's UNet predicts (its scheduler's config): epsilon
    (SD 1.x, SD 2.x base) or v_prediction (SD 2.x 768-v). The training losses
    read the same value from the scheduler they build (adapt.fit)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.load_config(model, subfolder="scheduler").get("prediction_type", "epsilon")


def native_resolution(model: str) -> int:
    """The generator's own image size, as diffusers' pipelines take it when no
    size is given: the UNet's sample_size times the VAE's scale factor (2 per
    down block after the first): 512 for SD 1.5, 768 for SD 2.x, 32 for the demo's."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(model, subfolder="unet")
        vae = AutoencoderKL.load_config(model, subfolder="vae")
    except (OSError, ValueError) as e:
        raise TibalanceError(f"generator.model: {model} has no readable unet/vae config ({type(e).__name__})") from e
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


_told: set = set()


def resolve_resolution(setting, model: str, key: str) -> int:
    """A stage's image size: unset (None) is the generator's own; an explicit
    value that differs runs as asked, with one log line saying so."""
    native = native_resolution(model)
    if setting is None:
        return native
    if int(setting) != native and key not in _told:
        _told.add(key)
        log.warning("%s: %d px, the generator's own size is %d px (unset: its own)", key, int(setting), native)
    return int(setting)


def load_pipeline(model: str, device=None, dtype=None):
    """The text-to-image pipeline of the generator's family (model_index.json's
    class: StableDiffusionPipeline or StableDiffusionXLPipeline) from a local
    save_pretrained folder or a hub id, its weights in `dtype` (unset: float32,
    whatever the files hold: transformers would keep a float16 text encoder in
    float16, which the stages' CPU arithmetic and fp32 training do not expect).

    Offline users of a hub id get a one-line error naming the setting."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    check_model(model)  # a local folder's family
    index = model_index(model)
    problem = None if index is None or is_local(model) else family_problem(index)  # a hub id's, from the cache
    if problem:
        raise TibalanceError(f"generator.model: hub id {model!r} {problem}")
    xl = FAMILY_OF.get((index or {}).get("_class_name")) == "sdxl"
    kwargs = {} if xl else dict(safety_checker=None, requires_safety_checker=False)
    import torch

    kwargs["torch_dtype"] = torch.float32 if dtype is None else dtype
    try:
        pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:
        if is_local(model):
            raise TibalanceError(f"generator.model: {model} could not be loaded ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:160]})") from e
        raise TibalanceError(f"generator.model: hub id {model!r} could not be loaded (offline? not in the "
                             f"HF cache?); set generator.model to a local save_pretrained folder") from e
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def is_xl(pipe) -> bool:
    """Whether a loaded pipeline is SDXL's kind (two text encoders, added conditions)."""
    return getattr(pipe, "text_encoder_2", None) is not None


def img2img(pipe):
    """The family's image-to-image pipeline on the same loaded weights."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    out = (StableDiffusionXLImg2ImgPipeline if is_xl(pipe) else StableDiffusionImg2ImgPipeline)(**pipe.components)
    out.set_progress_bar_config(disable=True)
    return out


def text_pairs(pipe) -> list:
    """(tokenizer, text_encoder) of each text encoder the prompts go through: one
    (SD 1.x, 2.x) or two (SDXL: CLIP ViT-L, then OpenCLIP ViT-bigG)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if is_xl(pipe):
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs
