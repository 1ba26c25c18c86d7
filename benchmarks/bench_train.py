"""Classifier training throughput (images/s) and demo-generator pretraining
speed (steps/s), for this checkout and, side by side, another git revision.

    python benchmarks/bench_train.py                    # this checkout
    python benchmarks/bench_train.py --against HEAD~3   # and HEAD~3, same data, same machine
    python benchmarks/bench_train.py --input memory     # the tensor input pipeline
    python benchmarks/bench_train.py --side-by-side 2   # and two trainings at once, one thread each
    python benchmarks/bench_train.py --mixed-precision bf16 --against HEAD   # bf16 autocast vs fp32
    python benchmarks/bench_train.py --freeze-below layer4 --against HEAD~1  # fine-tuning layer4 + head
    python benchmarks/bench_train.py --pretrain-precision bf16 --against HEAD~1  # the generator under bf16

Measures the demo's recipe (ResNet-18 at 32 px, batch 128; the demo generator's
architecture, batch 64) on Fashion-MNIST-sized images (Debian's idx files when
installed, else random 28x28 images). Times exclude imports, model building and
the first (warm-up) batches. A revision is benchmarked from a temporary
`git worktree` in a subprocess, so both columns run the same script.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_images(out: Path, n: int) -> tuple[list[str], list[str]]:
    """n 28x28 grey images as PNG files (Fashion-MNIST's first n when available), 10 classes."""
    import gzip

    import numpy as np
    from PIL import Image

    idx = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if idx.exists():
        with gzip.open(idx) as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    else:
        x = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i, img in enumerate(x):
        p = out / f"{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
        labels.append(f"c{i % 10}")
    return paths, labels


def bench_classifier(paths, labels, epochs: int, threads: int, input_: str = "files", precision: str = "",
                     freeze_below: str = "") -> dict:
    import torch

    try:  # the training recipe's module (older checkouts, run with --against, kept it in classifier)
        from tibalance import training as C
    except ImportError:
        from tibalance import classifier as C

    torch.set_num_threads(threads)
    classes = sorted(set(labels))
    cfg = {"arch": "resnet18", "pretrained": False, "image_size": 32, "batch_size": 128, "lr": 0.05,
           "epochs": 1, "device": "cpu", "input": input_, **({"mixed_precision": precision} if precision else {})}
    flags = [i % 10 == 0 for i in range(len(paths))]  # a tenth with the oversample method's heavy augmentation
    start = C.train_classifier(paths[:256], labels[:256], classes, cfg, seed=0)  # warm-up
    init = None
    if freeze_below:  # fine-tuning (retrain.init: baseline) from the warm-up's weights
        init = str(Path(tempfile.mkdtemp()) / "start.pt")
        start.save(init)
        cfg["freeze_below"] = freeze_below
    t0 = time.perf_counter()
    C.train_classifier(paths, labels, classes, {**cfg, "epochs": epochs}, seed=0, augment_flags=flags, init=init)
    dt = time.perf_counter() - t0
    return {"classifier_images_per_s": round(epochs * len(paths) / dt, 1), "classifier_seconds": round(dt, 2)}


def bench_pretrain(paths, labels, vae_steps: int, unet_steps: int, threads: int, precision: str = "") -> dict:
    import pandas as pd
    import torch

    from tibalance import pretrain as P

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        pd.DataFrame({"path": paths, "label": labels, "split": "train"}).to_csv(manifest, index=False)
        classes = sorted(set(labels))
        cj = {"classes": classes, "names": {c: c for c in classes}, "counts": {c: {"train": labels.count(c)} for c in classes}}
        arch = {"resolution": 32, "vae_channels": [16, 32, 32], "unet_channels": [64, 128], "text_hidden": 64}
        cfg = {"batch_size": 64, "exclude": [], **({"mixed_precision": precision} if precision else {})}
        times = {}
        # a warm-up run, then runs that differ from the "base" one only in one
        # phase's step count: building, encoding and saving cancel out
        for name, steps in (("warm", (2, 2)), ("base", (1, 1)), ("vae", (1 + vae_steps, 1)),
                            ("unet", (1, 1 + unet_steps))):
            t0 = time.perf_counter()
            P.pretrain(str(manifest), cj, str(Path(tmp) / name), arch,
                       {**cfg, "vae_steps": steps[0], "unet_steps": steps[1]}, seed=0)
            times[name] = time.perf_counter() - t0
        unet_s = times["unet"] - times["base"]
        vae_s = times["vae"] - times["base"]
    return {"pretrain_vae_steps_per_s": round(vae_steps / max(vae_s, 1e-9), 2),
            "pretrain_unet_steps_per_s": round(unet_steps / max(unet_s, 1e-9), 2)}


def bench_side_by_side(paths, labels, epochs: int, threads: int, input_: str, jobs: int, precision: str = "",
                       freeze_below: str = "") -> dict:
    """`jobs` classifier trainings at once, threads // jobs threads each (profiles/cpu
    runs jobs with one thread, side by side): the images/s of all of them together."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    each = max(1, threads // jobs)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
        runs = list(ex.map(bench_classifier, *zip(*[(paths, labels, epochs, each, input_, precision,
                                                     freeze_below)] * jobs)))
    dt = time.perf_counter() - t0  # warm-ups and start-up included, as for real jobs
    return {f"side_by_side_{jobs}x{each}_images_per_s": round(jobs * epochs * len(paths) / dt, 1),
            "side_by_side_slowest_run_s": max(r["classifier_seconds"] for r in runs)}


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = make_images(Path(tmp) / "img", args.images)
        out = {}
        out.update(bench_classifier(paths, labels, args.epochs, args.threads, args.input, args.mixed_precision,
                                    args.freeze_below))
        if args.side_by_side > 1:
            out.update(bench_side_by_side(paths, labels, args.epochs, args.threads, args.input, args.side_by_side,
                                          args.mixed_precision, args.freeze_below))
        out.update(bench_pretrain(paths, labels, args.vae_steps, args.unet_steps, args.threads,
                                  args.pretrain_precision))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="a git revision to benchmark beside this checkout")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=40)
    ap.add_argument("--unet-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--input", choices=["files", "memory"], default="files",
                    help="classifier.input: per-image PIL (files) or tensor batches (memory)")
    ap.add_argument("--mixed-precision", choices=["", "no", "bf16"], default="",
                    help="classifier.mixed_precision (unset: the revision's default, fp32 on CPU)")
    ap.add_argument("--freeze-below", default="",
                    help="classifier.freeze_below: fine-tune (from the warm-up's weights) with the stages below it fixed")
    ap.add_argument("--pretrain-precision", choices=["", "no", "bf16"], default="",
                    help="generator.pretrain.mixed_precision (unset: fp32)")
    ap.add_argument("--side-by-side", type=int, default=1,
                    help="also train this many classifiers at once, threads/N threads each (profiles/cpu)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one run, result as JSON (subprocess use)
    args = ap.parse_args()
    sys.path.insert(0, os.environ.get("TIBALANCE_SRC", str(REPO)))
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.json:
        print(json.dumps(measure(args)))
        return

    columns = {}
    revs = [("this checkout", REPO)]
    tmp = None
    if args.against:
        tmp = Path(tempfile.mkdtemp()) / "rev"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tmp), args.against],
                       check=True, capture_output=True)
        revs.insert(0, (args.against, tmp))
    try:
        settings = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("against", "json")]
        for name, src in revs:
            cmd = [sys.executable, __file__, "--json", *settings]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TIBALANCE_SRC": str(src)})
            if p.returncode:
                sys.exit(f"benchmark of {name} failed:\n{p.stderr[-3000:]}")
            columns[name] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp)], capture_output=True)
    keys = list(next(iter(columns.values())))
    print(f"{args.images} images, {args.epochs} epochs; pretraining {args.vae_steps} VAE + {args.unet_steps} UNet "
          f"steps; {args.threads} threads")
    print(f"{'':32}" + "".join(f"{n:>18}" for n in columns))
    for k in keys:
        print(f"{k:32}" + "".join(f"{columns[n].get(k, float('nan')):>18}" for n in columns))


if __name__ == "__main__":
    main()
