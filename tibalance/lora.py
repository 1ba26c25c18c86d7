"""LoRA: low-rank adapters on the UNet's attention projections (and optionally
the text encoder's), learned from a class's seed images through `peft` as
diffusers uses it - the second user of the adaptation skeleton (`adapt.fit`).

Two kinds, one job each per weak class:
- `lora`: the prompts name the class ("a photo of a shirt"), as DataDream does;
- `ti_lora`: the prompts use the class's learned TI token, loaded and kept
  frozen (token + LoRA, as Diff-Mix does).
And one adapter shared by every adapted class (`train_shared_lora`, Diff-II's
concept): the seed images of all of them, each image's prompts with its own
class's learned token, every token loaded and frozen.

The adapter is saved with the family's `save_lora_weights` (StableDiffusionPipeline's,
StableDiffusionXLPipeline's: pytorch_lora_weights.safetensors, rank/alpha in its
metadata), the format `load_lora_weights` reads."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .adapt import Adaptation, fit
from .config import text_encoder_lora_problem
from .defaults import LORA_DEFAULTS  # noqa: F401 - part of this module's interface
from .inversion import expand_placeholder
from .util import TibalanceError, file_digest

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class LoraAdaptation(Adaptation):
    """Adapters on the frozen UNet (and text encoder): only their A/B matrices train."""

    label = "LoRA"
    config_key = "lora"

    def __init__(self, settings: dict, subject: str, out_dir: str, tokens=(), subjects: list[str] | None = None):
        """tokens: (embeds file, placeholder) of each learned token the prompts
        use (loaded, frozen); subjects: per seed image (a shared adapter)."""
        self.s, self.subject, self.out_dir = settings, subject, out_dir
        self.tokens, self.subjects = list(tokens), subjects
        self.trains_text_encoder = bool(settings["train_text_encoder"])

    def _config(self, targets):
        from peft import LoraConfig

        return LoraConfig(r=int(self.s["rank"]), lora_alpha=float(self.s["alpha"]), init_lora_weights="gaussian",
                          target_modules=list(targets))

    def prepare(self, pipe, device):
        from .generator import text_pairs
        from .inversion import load_token

        encoders = [te for _, te in text_pairs(pipe)]
        for embeds, placeholder in self.tokens:
            load_token(pipe, embeds, placeholder)  # the learned tokens, frozen
        if self.tokens:
            for te in encoders:
                te.requires_grad_(False)
        self.pipe_class, self.unet, self.encoders = type(pipe), pipe.unet, encoders
        pipe.unet.add_adapter(self._config(self.s["target_modules"]))
        if self.trains_text_encoder:  # every text encoder (SDXL: both, as diffusers' SDXL LoRA training)
            problem = text_encoder_lora_problem()
            if problem:
                raise TibalanceError(f"lora.train_text_encoder: {problem}")
            for te in encoders:
                te.add_adapter(self._config(TEXT_ENCODER_TARGETS))
        mods = [pipe.unet] + (encoders if self.trains_text_encoder else [])
        self.params = [p for m in mods for p in m.parameters() if p.requires_grad]
        if not self.params:
            raise TibalanceError(f"lora.target_modules: {self.s['target_modules']} match no UNet layer")
        return self.params

    def state(self, opt):
        return {"params": [p.detach().cpu().clone() for p in self.params], "opt": opt.state_dict()}

    def load_state(self, ck, opt):
        with torch.no_grad():
            for p, v in zip(self.params, ck["params"], strict=True):
                p.copy_(v.to(p.device, p.dtype))
        opt.load_state_dict(ck["opt"])

    def save(self):
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(m):
            return convert_state_dict_to_diffusers({k: v.detach().float().cpu().contiguous()
                                                    for k, v in get_peft_model_state_dict(m).items()})

        kw = {}
        if self.trains_text_encoder:  # text_encoder_lora_layers, and SDXL's text_encoder_2_lora_layers
            for i, te in enumerate(self.encoders):
                name = "text_encoder" + ("" if i == 0 else f"_{i + 1}")
                kw[f"{name}_lora_layers"] = layers(te)
                kw[f"{name}_lora_adapter_metadata"] = te.peft_config["default"].to_dict()
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        # the family's own writer (StableDiffusionPipeline's or StableDiffusionXLPipeline's)
        self.pipe_class.save_lora_weights(
            self.out_dir, unet_lora_layers=layers(self.unet),
            unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(), safe_serialization=True, **kw)


def lora_subject(kind: str, cls_name: str, prompt_name: str | None = None, placeholder: str | None = None,
                 num_vectors: int = 1) -> str:
    """What the prompts say for the class: its name (lora) or its learned token (ti_lora)."""
    if kind == "ti_lora":
        return expand_placeholder(placeholder, placeholder, num_vectors)
    return prompt_name or cls_name


def train_lora(model: str, seed_paths: list[str], cls: str, cls_name: str, settings: dict, seed: int,
               out_dir: str, loss_out: str, preview_out: str, resume_dir: str, kind: str = "lora",
               embeds: str | None = None, placeholder: str | None = None, num_vectors: int = 1,
               stop_after: int | None = None, return_pipeline: bool = False) -> dict:
    """Learn the class's adapter from seed_paths; writes out_dir/pytorch_lora_weights.safetensors,
    a loss CSV and a preview grid. kind 'ti_lora' needs the class's learned
    embeddings (embeds, placeholder, num_vectors)."""
    s = {**LORA_DEFAULTS, **(settings or {})}
    if kind not in ("lora", "ti_lora"):
        raise TibalanceError(f"lora: unknown kind {kind!r} (lora, ti_lora)")
    if kind == "ti_lora" and not (embeds and placeholder):
        raise TibalanceError(f"lora: ti_lora for class {cls} needs the class's learned token (embeds)")
    if not seed_paths:
        raise TibalanceError(f"lora: class {cls!r} has an empty seed list")
    subject = lora_subject(kind, cls_name, s["prompt_name"], placeholder, num_vectors)
    identity = {"cls": cls, "name": cls_name, "kind": kind, "subject": subject,
                "embeds": file_digest(embeds) if kind == "ti_lora" else None}
    ad = LoraAdaptation(s, subject, out_dir, [(embeds, placeholder)] if kind == "ti_lora" else [])
    return fit(model, seed_paths, cls, s, seed, ad, identity, loss_out, preview_out, resume_dir,
               stop_after, return_pipeline)


def train_shared_lora(model: str, seeds: dict[str, list[str]], tokens: dict[str, dict], settings: dict,
                      seed: int, out_dir: str, loss_out: str, preview_out: str, resume_dir: str,
                      stop_after: int | None = None, return_pipeline: bool = False) -> dict:
    """One adapter for every class in `seeds` ({class: its seed images}), each
    image's prompts with its class's learned token (tokens: {class: {embeds,
    placeholder, num_vectors}}), the tokens frozen: Diff-II's concept (its
    tokens and one LoRA shared by the classes). Writes what train_lora writes."""
    s = {**LORA_DEFAULTS, **(settings or {})}
    missing = [c for c in seeds if c not in tokens]
    if not seeds or missing:
        raise TibalanceError(f"lora_shared: class {missing[0]!r} has no learned token" if missing
                             else "lora_shared: no class to adapt")
    paths, subjects = [], []
    for cls in sorted(seeds):
        if not seeds[cls]:
            raise TibalanceError(f"lora_shared: class {cls!r} has an empty seed list")
        t = tokens[cls]
        paths += list(seeds[cls])
        subjects += [lora_subject("ti_lora", cls, placeholder=t["placeholder"],
                                  num_vectors=int(t.get("num_vectors", 1)))] * len(seeds[cls])
    identity = {"kind": "ti_shared_lora", "classes": sorted(seeds),
                "embeds": {c: file_digest(tokens[c]["embeds"]) for c in sorted(seeds)}, "subjects": subjects}
    ad = LoraAdaptation(s, subjects[0], out_dir, [(tokens[c]["embeds"], tokens[c]["placeholder"])
                                                  for c in sorted(seeds)], subjects)
    return fit(model, paths, "+".join(sorted(seeds)), s, seed, ad, identity, loss_out, preview_out, resume_dir,
               stop_after, return_pipeline)
