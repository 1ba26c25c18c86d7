"""The generative stages' speed: textual inversion and LoRA (image-steps/s),
sampling and image-to-image (images/s), peak memory, and on a GPU the share
of its bf16 peak that a FLOP count says each reaches.

    python benchmarks/bench_generative.py                          # the tiny architecture on this machine (CI's form)
    python benchmarks/bench_generative.py --architecture sd15 \
        --ti-batch 4 8 --sample-batch 8 32 --sample-steps 25      # SD 1.5's (random weights) at 512 px: the GPU check
    python benchmarks/bench_generative.py --architecture sdxl \
        --ti-batch 4 --sample-batch 8 --sample-steps 25           # SDXL base's (random weights) at 1024 px
    python benchmarks/bench_generative.py --model path/or/hub-id   # a real pipeline

Architectures: tiny, tiny-sd2, tiny-sdxl (the tests' sizes, each family's kind),
sd15, sd21 (768 px, v-prediction), sdxl (SDXL base 1.0's exact sizes): the
cost of a family is the same numbers on its architecture.

Each stage runs through tibalance's own functions (adapt.fit, sampling); the
adaptations time their steps themselves (the first step, setup, evaluation
and preview apart), sampling is timed after a warm-up call. --json writes
every number (benchmarks/project_cost.py reads it).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tibalance.generator import native_resolution  # noqa: E402
from tibalance.inversion import train_textual_inversion  # noqa: E402
from tibalance.lora import train_lora  # noqa: E402
from tibalance.tiny import build_tiny

# --architecture: what build_tiny makes (generator.tiny)
ARCHITECTURES = {"tiny": {"resolution": 32}, "tiny-sd2": {"resolution": 32, "family": "sd2"},
                 "tiny-sdxl": {"resolution": 32, "family": "sdxl"}, "sd15": {"preset": "sd15"},
                 "sd21": {"preset": "sd21"}, "sdxl": {"preset": "sdxl"}}

# dense bf16 peak (TFLOP/s) by the name torch reports: the share-of-peak column
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def peaks(device: str) -> dict:
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.startswith("cuda"):
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        torch.cuda.reset_peak_memory_stats(device)
    return out


def unet_flops(model: str, device: str) -> dict:
    """FLOPs of one UNet forward at batch 1, and of a TI step's forward and
    backward to the text conditioning, the weights frozen as in TI
    (torch.utils.flop_counter)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").to(device).requires_grad_(False)
    lat = unet.config.sample_size  # the generator's own latent size (64 for SD 1.5's 512 px)
    x = torch.randn(1, unet.config.in_channels, lat, lat, device=device)
    t = torch.tensor([500], device=device)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, requires_grad=True)
    added = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL: the pooled embedding and 6 size/crop numbers
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        added = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, device=device),
                                       "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]], device=device)}}
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        unet(x, t, cond, **added)
    with FlopCounterMode(display=False) as step:
        unet(x, t, cond, **added).sample.float().pow(2).mean().backward()
    del unet
    return {"unet_forward_tflop": fwd.get_total_flops() / 1e12, "ti_step_tflop": step.get_total_flops() / 1e12}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--architecture", choices=list(ARCHITECTURES), default="tiny")
    ap.add_argument("--model", help="an SD folder or hub id instead of a built architecture")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=6, help="TI and LoRA steps per measurement")
    ap.add_argument("--ti-batch", type=int, nargs="+", default=[4])
    ap.add_argument("--lora-batch", type=int, default=4)
    ap.add_argument("--sample-batch", type=int, nargs="+", default=[8])
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--save-model", help="build the architecture into this folder and keep it (diffusers' example "
                                         "then runs on the same weights)")
    ap.add_argument("--json", help="write every number here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    tmp = Path(tempfile.mkdtemp())
    model = a.model
    if model is None:
        model = a.save_model or str(tmp / a.architecture)
        build_tiny(model, ARCHITECTURES[a.architecture])
    res = native_resolution(model)
    import random

    from tibalance.rehearsal import photo

    rng = random.Random(0)
    seeds = []
    for i in range(4):
        p = tmp / f"seed{i}.jpg"
        photo((200, 40, 40), 5, rng).save(p, quality=90)
        seeds.append(str(p))
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    from tibalance.generator import family

    out = {"model": a.model or f"{a.architecture} (random weights)", "family": family(model), "device": device,
           "gpu": gpu, "resolution": res, "torch": torch.__version__}
    print(f"{out['model']} at {res} px on {gpu or device}")
    out.update(unet_flops(model, device))
    peak = peak_tflops(device)
    peaks(device)

    common = dict(steps=a.steps, checkpoint_every=0, device=device, preview_images=1, preview_steps=1)
    rows = []

    def adapt_row(kind, bs, fn, **kw):
        r = fn(model, seeds, "bench", "bench", {**common, "batch_size": bs}, 0, **kw)
        sec = r["seconds"]
        ips = bs / sec["step_s"]
        row = {"stage": kind, "batch": bs, "image_steps_per_s": round(ips, 3), "s_per_step": round(sec["step_s"], 4),
               "fixed_s": round(sec["setup_s"] + sec["eval_s"] + sec["preview_s"], 2), **peaks(device)}
        if peak and kind == "ti":
            row["share_of_bf16_peak"] = round(ips * out["ti_step_tflop"] / peak, 4)
        rows.append(row)
        print(row)

    for bs in a.ti_batch:
        d = tmp / f"ti{bs}"
        adapt_row("ti", bs, train_textual_inversion, embeds_out=str(d / "e.safetensors"),
                  loss_out=str(d / "l.csv"), preview_out=str(d / "p.png"), resume_dir=str(d / "r"))
    d = tmp / "lora"
    adapt_row("lora", a.lora_batch, train_lora, out_dir=str(d / "w"), loss_out=str(d / "l.csv"),
              preview_out=str(d / "p.png"), resume_dir=str(d / "r"))

    from PIL import Image

    from tibalance.generator import img2img, load_pipeline
    from tibalance.runtime import pipeline_dtypes
    from tibalance.sampling import make_scheduler

    wdtype, amp = pipeline_dtypes(torch.device(device), "auto", "sampling.mixed_precision")
    pipe = load_pipeline(model, device=device, dtype=wdtype)
    pipe.scheduler = make_scheduler("dpmpp", pipe.scheduler.config)
    i2i = img2img(pipe)  # the family's
    start = Image.open(seeds[0]).convert("RGB").resize((res, res))
    for bs in a.sample_batch:
        for mode, call in (("sample", lambda n: pipe(["a photo of a flower"] * n, height=res, width=res,
                                                     num_inference_steps=a.sample_steps,
                                                     guidance_scale=a.guidance)),
                           ("i2i", lambda n: i2i(["a photo of a flower"] * n, image=[start] * n, strength=0.5,
                                                 num_inference_steps=a.sample_steps, guidance_scale=a.guidance))):
            with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=amp or torch.float32,
                                                 enabled=wdtype is None and amp is not None):
                call(min(bs, 2))  # warm-up
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                call(bs)
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            row = {"stage": mode, "batch": bs, "steps": a.sample_steps, "images_per_s": round(bs / dt, 3),
                   **({"strength": 0.5} if mode == "i2i" else {}), **peaks(device)}
            if peak and mode == "sample":
                row["share_of_bf16_peak"] = round(bs / dt * 2 * a.sample_steps * out["unet_forward_tflop"] / peak, 4)
            rows.append(row)
            print(row)
    out["rows"] = rows
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
