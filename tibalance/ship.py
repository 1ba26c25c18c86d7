"""The demo's shipped generator: the pipeline `pretrain_vae` + `pretrain_generator`
make, saved into the repository once (resources/demo_generator), as a real user
has Stable Diffusion's weights downloaded rather than trained on their machine.

`make demo-generator` runs the two pretraining jobs of config/demo.yaml and then
this module, which writes the folder with diffusers' and transformers'
`save_pretrained` (safetensors; float16 weights: half the bytes; every stage loads
them into its own precision) and a sidecar, `tibalance.json`, naming the commit,
command and CPU that made it and the classes it learned (what
`generator_quality` measures it on).

    python -m tibalance.ship results/generator/pretrained_sd \\
        results/generator/pretrain_generator.meta.json resources/demo_generator
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .util import read_json, write_json

SIDECAR = "tibalance.json"


def ship(src: str, meta: str, dst: str, command: str, dtype: str = "float16") -> dict:
    """Save the pipeline folder `src` (with its pretraining sidecar `meta`) as `dst`
    in `dtype`; returns the sidecar written beside it."""
    import torch

    from .generator import load_pipeline

    pipe = load_pipeline(src, dtype=getattr(torch, dtype))
    out = Path(dst)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    made = read_json(meta)
    info = {
        "made_by": {"command": command, "commit": made.get("code"), "cpu": made.get("cpu"),
                    "cpu_capability": made.get("cpu_capability"), "native_bf16": made.get("cpu_native_bf16"),
                    "precision": made.get("precision"), "wall_seconds": made.get("wall_seconds")},
        "weights": dtype,
        # what generator_quality reads: the classes it learned and their captions
        "classes": made["classes"],
        "captions": made.get("captions"),
        "pretrain": {k: made[k] for k in ("images", "scaling_factor", "kind") if k in made},
    }
    write_json(out / SIDECAR, info)
    return info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="the pretrained pipeline folder (results/generator/pretrained_sd)")
    ap.add_argument("meta", help="its pretraining sidecar (results/generator/pretrain_generator.meta.json)")
    ap.add_argument("dst", help="the shipped folder (resources/demo_generator)")
    ap.add_argument("--command", default="make demo-generator", help="the command that made it, for the sidecar")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    a = ap.parse_args(argv)
    info = ship(a.src, a.meta, a.dst, a.command, a.dtype)
    size = sum(p.stat().st_size for p in Path(a.dst).rglob("*") if p.is_file())
    print(f"{a.dst}: {size / 1e6:.1f} MB ({a.dtype}), made by {info['made_by']['commit']} on {info['made_by']['cpu']}")


if __name__ == "__main__":
    main()
