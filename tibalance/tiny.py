"""The offline stand-in for Stable Diffusion: an SD-architecture pipeline
(real UNet2DConditionModel, AutoencoderKL, schedulers, CLIPTextModel(s)) with
random weights and the real CLIP BPE vocabulary (open-clip-torch's), in the
tiny sizes or an architecture's exact ones (the presets)."""
from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from .defaults import TINY_DEFAULTS
from .errors import TibalanceError
from .util import seed_everything

log = logging.getLogger(__name__)


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
