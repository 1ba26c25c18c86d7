"""The image folder of `make rehearsal`: JPEG photographs' sizes and format
(about 500 x 500-700 px, as Flowers-102's), drawn here, so that the real
study's shapes (ResNet-50 at 224 px, SD 1.5 at 512 px) run offline.

Each class is a colour and a petal count on a textured background, with
noise: a classifier can learn something from a few of them, which is all a
timing rehearsal needs of its images.

    python -m tibalance.rehearsal OUT_DIR [--per-class N]
"""
from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from .util import save_image_atomic

CLASSES = {  # name: (petal colour, petals)
    "red_poppy": ((200, 30, 30), 4),
    "blue_iris": ((60, 70, 200), 3),
    "sunflower": ((230, 190, 20), 13),
    "white_lily": ((235, 235, 225), 6),
}


def photo(colour, petals: int, rng: random.Random):
    """One ~500 x 500-700 px RGB image of a flower-like shape."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    w, h = (500, rng.randint(500, 700)) if rng.random() < 0.5 else (rng.randint(500, 700), 500)
    nrng = np.random.default_rng(rng.randrange(2**32))
    ground = np.array([rng.randint(20, 90), rng.randint(60, 140), rng.randint(20, 80)], dtype=np.float32)
    img = np.clip(ground + nrng.normal(0, 25, (h, w, 3)), 0, 255).astype("uint8")
    im = Image.fromarray(img).filter(ImageFilter.GaussianBlur(2))
    d = ImageDraw.Draw(im)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    r = min(w, h) * rng.uniform(0.2, 0.32)
    turn = rng.uniform(0, 2 * math.pi)
    for k in range(petals):
        a = turn + 2 * math.pi * k / petals
        px, py = cx + r * 0.6 * math.cos(a), cy + r * 0.6 * math.sin(a)
        pr = r * (0.45 if petals < 8 else 0.25)
        d.ellipse([px - pr, py - pr, px + pr, py + pr],
                  fill=tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in colour))
    d.ellipse([cx - r * 0.2, cy - r * 0.2, cx + r * 0.2, cy + r * 0.2], fill=(90, 60, 20))
    return im


def make_photo_folder(out_dir: str, per_class: int = 20, seed: int = 0) -> list[str]:
    """out_dir/<class>/<i>.jpg for the four classes; returns the paths. An
    existing complete folder is kept as it is."""
    out, paths = Path(out_dir), []
    rng = random.Random(seed)
    for name, (colour, petals) in CLASSES.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = out / name / f"{i:03d}.jpg"
            im = photo(colour, petals, rng)  # drawn even when kept: the same rng stream either way
            if not p.exists():
                save_image_atomic(im, p, quality=90)
            paths.append(str(p))
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    paths = make_photo_folder(a.out_dir, a.per_class, a.seed)
    print(f"{len(paths)} JPEGs in {a.out_dir} ({len(CLASSES)} classes)")


if __name__ == "__main__":
    main()
