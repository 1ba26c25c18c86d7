"""Which precision a job computes in: one rule for every stage that has a
`mixed_precision` setting (classifier and judge, the generator's pretraining,
textual inversion, LoRA, sampling).

- `auto` (the default): on a GPU what each stage always did there (bf16
  autocast for the classifiers and the pretraining; half-precision frozen
  weights, bf16 where the GPU has it, else fp16, for TI, LoRA and sampling); on
  a CPU bf16 autocast for the classifiers and the pretraining only where the
  CPU computes bf16 natively (AVX512-BF16 or AMX, and torch allowed to use
  them), fp32 on every other CPU; fp32 on every CPU for TI, LoRA and sampling
  (the pipeline's bf16 autocast was slower than fp32 even with native bf16:
  docs/performance.md).
- `bf16`: bf16 also on a CPU without native support; it runs, emulated, and
  the job's log says so once.
- `no`: fp32. `fp16`: half-precision weights on a GPU (TI, LoRA, sampling).

Every resolution is remembered for the process, so the job's sidecar records
the precision it really ran in beside the CPU it ran on (`run_record`).
"""
from __future__ import annotations

import functools
import logging
import os
import platform

from .errors import TibalanceError

log = logging.getLogger(__name__)

# What a user is told when bf16 is emulated (the figures: docs/performance.md, "Two kinds of CPU")
EMULATED_SLOWDOWN = "several times slower than fp32: docs/performance.md"

_resolved: dict[str, str] = {}
_warned: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """The CPU as torch sees it: model name, torch's vector capability (which
    ATEN_CPU_CAPABILITY may lower), whether it computes bf16 natively, threads."""
    import torch

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    capability = str(torch.backends.cpu.get_cpu_capability())
    return {"model": model or "unknown", "capability": capability, "native_bf16": _native_bf16(capability)}


def _native_bf16(capability: str) -> bool:
    """bf16 arithmetic in hardware: the CPU has AVX512-BF16 or AMX (torch's
    cpuinfo), and neither ATen (ATEN_CPU_CAPABILITY) nor oneDNN
    (ONEDNN_MAX_CPU_ISA) was capped below AVX-512 for this process."""
    import torch

    try:
        hw = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: no claim of native bf16
        return False
    return hw and onednn and capability.upper().startswith("AVX512")


def cpu_has_native_bf16() -> bool:
    return bool(cpu_info()["native_bf16"])


def resolve(device, setting: str | None, key: str, allowed=("auto", "no", "bf16"), cpu_auto: str = "native") -> str:
    """The precision a stage runs in: 'bf16' or 'fp32', or on a GPU for the
    stages with half-precision weights ('fp16' allowed) also 'fp16'.

    key names the setting in errors and warnings (e.g. 'classifier.mixed_precision').
    cpu_auto: what auto is on a CPU: 'native' (bf16 where the CPU computes it
    natively: the classifiers, the pretraining) or 'fp32' (the pipeline stages,
    TI, LoRA and sampling, where bf16 autocast measured slower on both CPU kinds)."""
    import torch

    setting = "auto" if setting is None else setting
    if setting not in allowed:
        raise TibalanceError(f"{key}: {setting!r} is not one of {', '.join(allowed)}")
    kind = torch.device(device).type
    if setting == "no":
        out = "fp32"
    elif kind == "cuda":
        if setting == "auto":
            # the classifiers and the pretraining: bf16 autocast; the stages with
            # half-precision weights: bf16 where the GPU has it, else fp16
            out = "bf16" if "fp16" not in allowed or torch.cuda.is_bf16_supported() else "fp16"
        else:
            out = setting
    elif kind == "cpu":
        if setting == "auto":
            out = "bf16" if cpu_auto == "native" and cpu_has_native_bf16() else "fp32"
        elif setting == "fp16":
            out = "fp32"  # half-precision weights are a GPU setting: fp32 on CPU, as always
        else:  # bf16
            out = "bf16"
            if not cpu_has_native_bf16() and key not in _warned:
                _warned.add(key)
                info = cpu_info()
                log.warning("%s: bf16 on a CPU without native bf16 (%s, %s) is emulated: measured %s; "
                            "auto would pick fp32 here", key, info["model"], info["capability"], EMULATED_SLOWDOWN)
    else:  # mps and others: fp32 unless asked
        out = "fp32" if setting == "auto" else setting
    _resolved[key] = out
    return out


def autocast_bf16(device, setting: str | None, key: str) -> bool:
    """Whether a classifier or pretraining job computes under bf16 autocast."""
    return resolve(device, setting, key) == "bf16"


def run_record() -> dict:
    """What a job's sidecar records of how it computed: the CPU, torch's
    threads and every precision the job resolved (key -> bf16/fp16/fp32), and
    whether any bf16 ran emulated. Two runs give the same numbers to the last
    digit only where these agree (and the versions)."""
    import torch

    info = dict(cpu_info())
    on_gpu = torch.cuda.is_available()
    emulated = (not on_gpu and not info["native_bf16"] and "bf16" in _resolved.values())
    return {"cpu": info["model"], "cpu_capability": info["capability"], "cpu_native_bf16": info["native_bf16"],
            "torch_threads": torch.get_num_threads(), "precision": dict(sorted(_resolved.items())),
            "bf16_emulated": emulated,
            "cpu_isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                             if os.environ.get(k)}}

