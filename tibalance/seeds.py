"""Stage 4: pick the N real images a class is learned from — diverse among the
ones the baseline recognises best (greedy k-center on penultimate features)."""
from __future__ import annotations

import logging
import math

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def kcenter_greedy(features: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Greedy k-center: start at `first`, then repeatedly add the point farthest
    from everything chosen so far. Returns k distinct indices (all, if fewer)."""
    n = len(features)
    if k >= n:
        return [first] + [i for i in range(n) if i != first]
    feats = np.asarray(features, dtype=np.float64)
    chosen = [first]
    dist = np.linalg.norm(feats - feats[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:  # duplicates left: fill deterministically
            nxt = next(i for i in range(n) if i not in chosen)
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[nxt], axis=1))
    return chosen


def select_seed_indices(features: np.ndarray, confidence: np.ndarray, n: int,
                        candidate_fraction: float = 0.5, replicate_seed: int | None = None) -> tuple[list[int], str]:
    """Indices of the seed images and a note.

    Candidates are the images whose true-class probability is in the top
    `candidate_fraction` (at least n of them); among them, greedy k-center
    starting from the most confident image picks n diverse ones.

    A replicate (replicate_seed given) picks the same way among a random half of
    the candidates (at least n), drawn with that seed: another good, diverse set,
    so that the replicates' spread covers the choice of seed images. Where only
    n candidates exist, every replicate gets them."""
    total = len(features)
    if total == 0:
        return [], "no training images"
    if total <= n:
        order = list(np.argsort(-confidence, kind="mergesort"))
        return [int(i) for i in order], f"only {total} training images (< {n} asked): took them all"
    n_cand = min(total, max(n, int(math.ceil(total * candidate_fraction))))
    order = np.argsort(-confidence, kind="mergesort")[:n_cand]
    note = f"{n} of {n_cand} best-recognised of {total} training images"
    if replicate_seed is not None:
        keep = max(n, int(math.ceil(n_cand / 2)))
        drawn = np.random.default_rng(replicate_seed).choice(n_cand, size=keep, replace=False)
        order = order[np.sort(drawn)]  # still most confident first
        note += f" (replicate: among a random {keep} of them)"
    picked = kcenter_greedy(features[order], n, first=0)
    return [int(order[i]) for i in picked], note


def contact_sheet(paths: list, out_png: str, tile: int = 128, cols: int | None = None,
                  captions: list[str] | None = None) -> None:
    """A grid of images given as paths or PIL images; None leaves a cell empty."""
    from pathlib import Path

    from PIL import ImageDraw

    cols = cols or max(1, min(len(paths), 8))
    rows = max(1, math.ceil(len(paths) / cols))
    cap_h = 14 if captions else 0
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, p in enumerate(paths):
        if p is None:  # an empty cell
            continue
        if isinstance(p, Image.Image):
            im = p.convert("RGB").resize((tile, tile), Image.BICUBIC)
        else:
            with Image.open(p) as raw:
                im = raw.convert("RGB").resize((tile, tile), Image.BICUBIC)
        x, y = (i % cols) * tile, (i // cols) * (tile + cap_h)
        sheet.paste(im, (x, y))
        if captions:
            draw.text((x + 2, y + tile + 1), captions[i][:22], fill="black")
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
