"""Measure textual inversion (steps/s) and sampling (images/s) and peak memory.

    python benchmarks/bench_generative.py                      # tiny offline SD on this machine
    python benchmarks/bench_generative.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --resolution 512 --ti-steps 50 --batch-size 4         # a real SD on a GPU

Prints one line per measurement; timing excludes model loading and warm-up.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tibalance.generator import build_tiny  # noqa: E402
from tibalance.inversion import train_textual_inversion  # noqa: E402
from tibalance.sampling import sample_class  # noqa: E402


def peak_memory() -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = f"peak RSS {rss:.0f} MiB"
    if torch.cuda.is_available():
        out += f", peak GPU {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="SD folder or hub id (default: build the tiny offline one)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--ti-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=10)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp())
    model = args.model
    if model is None:
        model = str(tmp / "tiny_sd")
        build_tiny(model, {"resolution": args.resolution})
    rng = np.random.default_rng(0)
    seeds = []
    for i in range(5):
        p = tmp / f"seed{i}.png"
        Image.fromarray(rng.integers(0, 255, (args.resolution, args.resolution, 3), dtype=np.uint8)).save(p)
        seeds.append(str(p))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {model}, device {device}, resolution {args.resolution}, batch {args.batch_size}")

    common = dict(resolution=args.resolution, batch_size=args.batch_size, preview_images=1, preview_steps=1,
                  checkpoint_every=0, augment_variants=4)
    # warm-up run (kernels, allocator), then the timed one; both include the one-off load
    t0 = time.perf_counter()
    train_textual_inversion(model, seeds, "bench", "bench", {**common, "steps": 2}, 0, str(tmp / "w.st"),
                            str(tmp / "w.csv"), str(tmp / "w.png"), str(tmp / "rw"))
    t_fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_textual_inversion(model, seeds, "bench", "bench", {**common, "steps": args.ti_steps + 2}, 0,
                            str(tmp / "e.st"), str(tmp / "l.csv"), str(tmp / "p.png"), str(tmp / "r"))
    t_ti = time.perf_counter() - t0 - t_fixed
    print(f"textual inversion: {args.ti_steps / t_ti:.2f} steps/s "
          f"({args.ti_steps} steps in {t_ti:.1f} s, load+setup {t_fixed:.1f} s); {peak_memory()}")

    manifest = tmp / "m.csv"
    manifest.write_text("path,label,split\nx,bench,train\n")
    s = {"n_images": args.images, "batch_size": args.batch_size, "steps": args.sample_steps,
         "resolution": args.resolution}
    sample_class(model, "raw", "bench", "bench", {**s, "n_images": args.batch_size}, 1, str(manifest),
                 str(tmp / "warm.csv"), str(tmp / "warm"))
    t0 = time.perf_counter()
    sample_class(model, "raw", "bench", "bench", s, 0, str(manifest), str(tmp / "s.csv"), str(tmp / "s"))
    t_s = time.perf_counter() - t0
    print(f"sampling: {args.images / t_s:.2f} images/s ({args.images} images, {args.sample_steps} steps, "
          f"incl. load); {peak_memory()}")


if __name__ == "__main__":
    main()
