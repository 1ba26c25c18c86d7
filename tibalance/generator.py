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
# handles: SD 1.x and SD 2.x (epsilon and v-prediction) are StableDiffusionPipeline.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
FAMILIES = "SD 1.x and SD 2.x (epsilon and v-prediction), as StableDiffusionPipeline"


def check_model(model: str, key: str = "generator.model") -> None:
    """One-line error when a local generator folder does not exist, or holds a
    pipeline family the stages do not handle (SDXL: not yet)."""
    if not is_local(model):
        return
    index = Path(model) / "model_index.json"
    if not index.is_file():
        what = "does not exist" if not os.path.exists(model) else "has no model_index.json (not a save_pretrained folder)"
        raise TibalanceError(f"{key}: generator folder {model} {what}")
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise TibalanceError(f"{key}: {index} is not readable JSON ({type(e).__name__})") from e
    if cls not in SUPPORTED_PIPELINES:
        raise TibalanceError(f"{key}: {model} is a {cls}; TI, LoRA and sampling support {FAMILIES}")


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
}


def architecture(cfg: dict | None = None) -> dict:
    """The sizes of the SD-architecture model build_tiny_pipeline makes: a
    preset's (generator.tiny.preset) or the tiny ones (TINY_DEFAULTS, cfg over them)."""
    cfg = dict(cfg or {})
    preset = cfg.pop("preset", None)
    if preset is None:
        out = {"layers_per_block": 1, **TINY_DEFAULTS, **cfg}
        if out.get("family", "sd1") not in ("sd1", "sd2"):
            raise TibalanceError(f"generator.tiny.family: {out['family']!r} is not sd1 or sd2")
        return out
    if preset not in PRESETS:
        raise TibalanceError(f"generator.tiny.preset: unknown preset {preset!r} ({', '.join(PRESETS)})")
    if cfg:
        raise TibalanceError(f"generator.tiny.preset: {preset} fixes every size; remove generator.tiny."
                             f"{sorted(cfg)[0]}")
    return dict(PRESETS[preset])


def build_components(cfg: dict | None = None):
    """(text_encoder, vae, unet) of the architecture, randomly initialised (at the
    current torch default device: `with torch.device("meta")` sizes them for free)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c = architecture(cfg)
    sd2 = c.get("family", "sd1") == "sd2"  # SD 2.x: OpenCLIP's GELU, linear projections in the UNet
    hidden = int(c["text_hidden"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=int(c["text_layers"]), num_attention_heads=int(c.get("text_heads") or max(1, hidden // 16)),
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=hidden, hidden_act="gelu" if sd2 else "quick_gelu"))
    layers = int(c["layers_per_block"])
    vae_ch = [int(x) for x in c["vae_channels"]]
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=int(c["latent_channels"]),
        down_block_types=["DownEncoderBlock2D"] * len(vae_ch), up_block_types=["UpDecoderBlock2D"] * len(vae_ch),
        block_out_channels=vae_ch, layers_per_block=layers, norm_num_groups=min(32, vae_ch[0]),
        sample_size=int(c["resolution"]), **({"scaling_factor": c["scaling_factor"]} if "scaling_factor" in c else {}))
    unet_ch = [int(x) for x in c["unet_channels"]]
    n = len(unet_ch)
    latent_size = int(c["resolution"]) // 2 ** (len(vae_ch) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=int(c["latent_channels"]), out_channels=int(c["latent_channels"]),
        down_block_types=["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
        block_out_channels=unet_ch, layers_per_block=layers, cross_attention_dim=hidden,
        attention_head_dim=(c["attention_head_dim"] if isinstance(c["attention_head_dim"], list)
                            else int(c["attention_head_dim"])),
        use_linear_projection=sd2, norm_num_groups=min(32, unet_ch[0]))
    return text_encoder, vae, unet


def build_tiny_pipeline(cfg: dict | None = None, seed: int = 0):
    """A Stable-Diffusion-architecture pipeline with random weights: real
    UNet2DConditionModel / AutoencoderKL / PNDM scheduler (SD 1.5's settings) and
    CLIPTextModel / CLIPTokenizer with the real 49,408-token vocabulary; the tiny
    sizes, or a preset's (generator.tiny.preset: sd15 is SD 1.5's exact architecture)."""
    import tempfile

    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    seed_everything(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(Path(tmp))
    text_encoder, vae, unet = build_components(cfg)
    if architecture(cfg).get("family", "sd1") == "sd2":  # SD 2.1 768-v's scheduler
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1, prediction_type="v_prediction")
    else:
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                                  set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_tiny(out_dir: str, cfg: dict | None = None, seed: int = 0) -> None:
    pipe = build_tiny_pipeline(cfg, seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    log.info("tiny SD pipeline saved to %s", out_dir)


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
    """StableDiffusionPipeline from a local save_pretrained folder or a hub id.

    Offline users of a hub id get a one-line error naming the setting."""
    from diffusers import StableDiffusionPipeline

    check_model(model)
    kwargs = dict(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, **kwargs)
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
