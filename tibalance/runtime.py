"""A generative job's run-time switches on the loaded pipeline (ti, lora,
sampling .channels_last, .attention, .compile, .mixed_precision): each the same
computation to rounding, chosen for speed on the device at hand."""
from __future__ import annotations

import logging

from .errors import TibalanceError

log = logging.getLogger(__name__)


def channels_last(setting, device) -> bool:
    """Whether a stage's UNet runs in channels_last memory format (ti, lora,
    sampling .channels_last): auto (unset) on a GPU, where NHWC convolutions are
    the fast ones; not on a CPU (no faster there, slower under native bf16:
    docs/performance.md); true or false as set. The same computation either way,
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
    on every CPU: docs/performance.md says why)."""
    import torch

    from .precision import resolve

    resolved = resolve(device, setting, key, allowed=("auto", "no", "fp16", "bf16"), cpu_auto="fp32")
    half = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[resolved]
    if torch.device(device).type == "cpu":
        return None, half
    return half, half
