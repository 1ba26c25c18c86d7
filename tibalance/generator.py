"""Stable Diffusion pipelines: load one (hub id or local save_pretrained folder),
or build the tiny offline one (real SD architecture classes, random weights,
the real CLIP BPE vocabulary)."""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path

from .defaults import TINY_DEFAULTS
from .util import TibalanceError, seed_everything

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_local(model: str) -> bool:
    """A local folder, as opposed to a hub id ('owner/name')."""
    return os.path.exists(model) or not HUB_ID.match(model) or model.startswith(("results/", "resources/"))


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
    replaced at the same path makes new images; a hub id as written. Hashing
    runs at ~1.4 GB/s (SD 1.5's fp32 files ~3 s, SDXL's ~10 s), once per job."""
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


# What a Stable Diffusion hub repo holds beyond one pipeline in fp32 safetensors
SKIP_FILES = ["*.ckpt", "*.bin", "*.msgpack", "*.onnx", "*.onnx_data", "*.fp16.*", "*non_ema*", "*.pb", "*.h5"]


def fetched_folder(repo_id: str) -> str:
    """Where the local rule fetch_generator puts a hub pipeline (the jobs open it offline)."""
    return "resources/generator/" + re.sub(r"[^A-Za-z0-9._-]+", "--", repo_id)


def fetch_pipeline(repo_id: str, out_dir: str, endpoint: str | None = None) -> None:
    """Download a hub pipeline's files (one fp32 safetensors copy per component)
    into out_dir: the login-node half of running compute jobs offline."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_dir=out_dir, ignore_patterns=SKIP_FILES, endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - network and hub failures come in many types
        raise TibalanceError(f"generator.model: could not fetch hub id {repo_id!r} into {out_dir} "
                             f"({type(e).__name__}); fetch it where there is internet, or set "
                             "generator.model to a local save_pretrained folder") from e
    check_model(out_dir)


def open_clip_vocab_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise TibalanceError(f"open-clip-torch ships no CLIP vocabulary at {path}")
    return path


def write_clip_tokenizer_files(out_dir: Path, bpe_path: Path | None = None) -> tuple[Path, Path]:
    """vocab.json + merges.txt of SD's CLIPTokenizer, from open_clip's BPE file.

    The 49,408 ids are laid out as in open_clip's SimpleTokenizer (and OpenAI
    CLIP): 256 byte tokens, the same with '</w>', 48,894 merges, then
    <|startoftext|> and <|endoftext|>."""
    from open_clip.tokenizer import bytes_to_unicode

    bpe_path = bpe_path or open_clip_vocab_path()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({v: i for i, v in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def clip_tokenizer(work_dir: Path):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(work_dir)
    tok = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    if len(tok) != 49408:
        raise TibalanceError(f"CLIP tokenizer built from {vocab_file} has {len(tok)} tokens, expected 49408")
    return tok




# generator.tiny.preset: an architecture's exact layer sizes (random weights, for
# timing rehearsals and benchmarks: its images mean nothing)
PRESETS = {
    # Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5's configs):
    # UNet 859.5M, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M, 512 px
    "sd15": {"resolution": 512, "unet_channels": [320, 640, 1280, 1280], "vae_channels": [128, 256, 512, 512],
             "text_hidden": 768, "text_layers": 12, "text_heads": 12, "attention_head_dim": 8,
             "latent_channels": 4, "layers_per_block": 2, "scaling_factor": 0.18215},
    # Stable Diffusion 2.1 768-v (stabilityai/stable-diffusion-2-1's configs): the same
    # UNet widths with linear projections and 5-20 heads of 64, an OpenCLIP ViT-H text
    # encoder (1024 wide, 23 layers: the penultimate of 24), v-prediction, 768 px
    "sd21": {"resolution": 768, "unet_channels": [320, 640, 1280, 1280], "vae_channels": [128, 256, 512, 512],
             "text_hidden": 1024, "text_layers": 23, "text_heads": 16, "attention_head_dim": [5, 10, 20, 20],
             "latent_channels": 4, "layers_per_block": 2, "scaling_factor": 0.18215, "family": "sd2"},
    # SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0's configs): UNet 2.57B with
    # three levels (1, 2, 10 transformer layers), cross-attention on both text encoders'
    # penultimate layers (CLIP ViT-L 768 + OpenCLIP ViT-bigG 1280, 32 layers), the pooled
    # bigG embedding and the size/crop micro-conditioning (6 x 256) added to the time
    # embedding, VAE scale 0.13025, 1024 px
    "sdxl": {"resolution": 1024, "unet_channels": [320, 640, 1280], "vae_channels": [128, 256, 512, 512],
             "text_hidden": 768, "text_layers": 12, "text_heads": 12, "text_2_hidden": 1280, "text_2_layers": 32,
             "text_2_heads": 20, "attention_head_dim": [5, 10, 20], "transformer_layers": [1, 2, 10],
             "addition_time_embed_dim": 256, "latent_channels": 4, "layers_per_block": 2,
             "scaling_factor": 0.13025, "family": "sdxl"},
}


TINY_FAMILIES = ("sd1", "sd2", "sdxl")  # generator.tiny.family


def architecture(cfg: dict | None = None) -> dict:
    """The sizes of the SD-architecture model build_tiny_pipeline makes: a
    preset's (generator.tiny.preset) or the tiny ones (TINY_DEFAULTS, cfg over them)."""
    cfg = dict(cfg or {})
    preset = cfg.pop("preset", None)
    if preset is None:
        out = {"layers_per_block": 1, **TINY_DEFAULTS, **cfg}
        if out.get("family", "sd1") not in TINY_FAMILIES:
            raise TibalanceError(f"generator.tiny.family: {out['family']!r} is not {', '.join(TINY_FAMILIES)}")
        return out
    if preset not in PRESETS:
        raise TibalanceError(f"generator.tiny.preset: unknown preset {preset!r} ({', '.join(PRESETS)})")
    if cfg:
        raise TibalanceError(f"generator.tiny.preset: {preset} fixes every size; remove generator.tiny."
                             f"{sorted(cfg)[0]}")
    return dict(PRESETS[preset])


def _text_encoder(hidden: int, layers: int, heads: int | None, act: str, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=int(heads or max(1, hidden // 16)), max_position_embeddings=77, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407, projection_dim=hidden, hidden_act=act)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_components(cfg: dict | None = None) -> dict:
    """The architecture's models, randomly initialised (at the current torch
    default device: `with torch.device("meta")` sizes them for free): text_encoder,
    vae, unet, and for SDXL's kind text_encoder_2 (with the pooled projection)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    c = architecture(cfg)
    fam = c.get("family", "sd1")
    hidden = int(c["text_hidden"])
    # SD 1.x: OpenAI CLIP's quick GELU; SD 2.x: OpenCLIP's GELU and linear projections in the
    # UNet; SDXL: both encoders (CLIP ViT-L and OpenCLIP), the UNet reads their concatenation
    out = {"text_encoder": _text_encoder(hidden, int(c["text_layers"]), c.get("text_heads"),
                                         "gelu" if fam == "sd2" else "quick_gelu")}
    cross = hidden
    extra: dict = {}
    if fam == "sdxl":
        hidden_2 = int(c.get("text_2_hidden", hidden))
        out["text_encoder_2"] = _text_encoder(hidden_2, int(c.get("text_2_layers", c["text_layers"])),
                                              c.get("text_2_heads"), "gelu", projection=True)
        cross = hidden + hidden_2
        time_dim = int(c.get("addition_time_embed_dim", 8))
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                     projection_class_embeddings_input_dim=6 * time_dim + hidden_2,
                     transformer_layers_per_block=c.get("transformer_layers", 1))
    layers = int(c["layers_per_block"])
    vae_ch = [int(x) for x in c["vae_channels"]]
    out["vae"] = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=int(c["latent_channels"]),
        down_block_types=["DownEncoderBlock2D"] * len(vae_ch), up_block_types=["UpDecoderBlock2D"] * len(vae_ch),
        block_out_channels=vae_ch, layers_per_block=layers, norm_num_groups=min(32, vae_ch[0]),
        sample_size=int(c["resolution"]), **({"scaling_factor": c["scaling_factor"]} if "scaling_factor" in c else {}))
    unet_ch = [int(x) for x in c["unet_channels"]]
    n = len(unet_ch)
    latent_size = int(c["resolution"]) // 2 ** (len(vae_ch) - 1)
    if fam == "sdxl":  # no attention at the widest level
        down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1)
        up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]
    else:  # none at the narrowest
        down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
        up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
    out["unet"] = UNet2DConditionModel(
        sample_size=latent_size, in_channels=int(c["latent_channels"]), out_channels=int(c["latent_channels"]),
        down_block_types=down, up_block_types=up, block_out_channels=unet_ch, layers_per_block=layers,
        cross_attention_dim=cross,
        attention_head_dim=(c["attention_head_dim"] if isinstance(c["attention_head_dim"], list)
                            else int(c["attention_head_dim"])),
        use_linear_projection=fam != "sd1", norm_num_groups=min(32, unet_ch[0]), **extra)
    return out


def build_tiny_pipeline(cfg: dict | None = None, seed: int = 0):
    """A Stable-Diffusion-architecture pipeline with random weights: real
    UNet2DConditionModel / AutoencoderKL / scheduler and CLIPTextModel(s) /
    CLIPTokenizer(s) with the real 49,408-token vocabulary; the tiny sizes, or a
    preset's (generator.tiny.preset: sd15 is SD 1.5's exact architecture). The
    family (generator.tiny.family) picks the kind: sd1 (PNDM, as SD 1.5), sd2
    (v-prediction DDIM, as SD 2.1 768-v), sdxl (two text encoders, Euler, as SDXL base)."""
    import tempfile

    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    seed_everything(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    parts = build_components(cfg)
    fam = architecture(cfg).get("family", "sd1")
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1)
    if fam == "sdxl":  # SDXL base's scheduler and its second tokenizer (OpenCLIP pads with '!')
        import copy

        tokenizer_2 = copy.deepcopy(tokenizer)
        tokenizer_2.pad_token = "!"
        scheduler = EulerDiscreteScheduler(**betas, interpolation_type="linear", timestep_spacing="leading",
                                           prediction_type="epsilon")
        return StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False, **parts)
    if fam == "sd2":  # SD 2.1 768-v's scheduler
        scheduler = DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False,
                                  prediction_type="v_prediction")
    else:
        scheduler = PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False)
    return StableDiffusionPipeline(tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False, **parts)


def build_tiny(out_dir: str, cfg: dict | None = None, seed: int = 0) -> None:
    pipe = build_tiny_pipeline(cfg, seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    log.info("tiny %s pipeline saved to %s", type(pipe).__name__, out_dir)


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
    save_pretrained folder or a hub id.

    Offline users of a hub id get a one-line error naming the setting."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    check_model(model)  # a local folder's family
    index = model_index(model)
    problem = None if index is None or is_local(model) else family_problem(index)  # a hub id's, from the cache
    if problem:
        raise TibalanceError(f"generator.model: hub id {model!r} {problem}")
    xl = FAMILY_OF.get((index or {}).get("_class_name")) == "sdxl"
    kwargs = {} if xl else dict(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
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


def channels_last(setting, device) -> bool:
    """Whether a stage's UNet runs in channels_last memory format (ti, lora,
    sampling .channels_last): auto (unset) on a GPU, where NHWC convolutions are
    the fast ones; not on a CPU (measured no faster there, and up to 30% slower
    under native bf16); true or false as set. The same computation either way,
    to rounding."""
    import torch

    if setting in (None, "auto"):
        return torch.device(device).type == "cuda"
    return bool(setting)


def set_attention(unet, setting, key: str) -> None:
    """The UNet's attention (ti, lora, sampling .attention): sdpa (unset: PyTorch's
    scaled_dot_product_attention, diffusers' default, fused kernels on a GPU) or
    plain (diffusers' AttnProcessor: the softmax of the product, materialised).
    The same computation to rounding."""
    if setting is None:
        return  # diffusers' own choice: SDPA wherever torch has it
    if setting == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0 as processor
    elif setting == "plain":
        from diffusers.models.attention_processor import AttnProcessor as processor
    else:
        raise TibalanceError(f"{key}: {setting!r} is not sdpa or plain")
    unet.set_attn_processor(processor())


def compiled(module, setting, key: str):
    """A stage's UNet under torch.compile (ti, lora, sampling .compile): false
    (unset) as is; true with the default backend (inductor: worth it on a GPU
    for a long job, its first step compiles for a minute or more); a backend's
    name (e.g. aot_eager, cudagraphs) with that backend. The same computation
    to rounding; the weights are shared with the module."""
    import torch

    if setting in (None, False):
        return module
    if setting is True:
        backend = "inductor"
    elif isinstance(setting, str) and setting:
        backend = setting
    else:
        raise TibalanceError(f"{key}: {setting!r} is not true, false or a torch.compile backend's name")
    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise TibalanceError(f"{key}: {backend!r} is not a torch.compile backend "
                             f"({', '.join(sorted(torch._dynamo.list_backends()))})")
    log.info("%s: the UNet under torch.compile (backend %s)", key, backend)
    return torch.compile(module, backend=backend)


def pipeline_dtypes(device, setting: str, key: str):
    """(weights, autocast) dtypes of a job that runs the pipeline (mixed_precision
    of ti, lora, sampling), from the precision it resolves to: on a GPU
    half-precision frozen weights under autocast in that dtype; on CPU fp32
    weights (None), with bf16 autocast only where bf16 is asked for (auto: fp32
    on every CPU, precision.PIPELINE_CPU_BF16 says why)."""
    import torch

    from .precision import resolve

    resolved = resolve(device, setting, key, allowed=("auto", "no", "fp16", "bf16"), cpu_auto="fp32")
    half = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[resolved]
    if torch.device(device).type == "cpu":
        return None, half
    return half, half
