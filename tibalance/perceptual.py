"""A synthetic set's diversity in LPIPS (Zhang et al., CVPR 2018), as Diff-II
reports it beside faithfulness: the mean LPIPS distance over every pair of the
set's kept images (0: all the same image).

The `lpips` package gives the network and its learned linear weights (v0.1,
shipped inside the package); its AlexNet backbone's ImageNet weights are
torchvision's file, fetched on the login node (rule fetch_weights, like the
classifier's and Inception's) or named by metrics.lpips_weights, and loaded
here: no job downloads anything.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from .util import TibalanceError

# torchvision's alexnet.features index -> the lpips slice holding it
_SLICE_OF = {**dict.fromkeys(range(0, 2), 1), **dict.fromkeys(range(2, 5), 2), **dict.fromkeys(range(5, 8), 3),
             **dict.fromkeys(range(8, 10), 4), **dict.fromkeys(range(10, 12), 5)}
LPIPS_DEFAULTS = {"lpips_images": 48, "lpips_size": 128}


def backbone_state(alexnet_state: dict) -> dict:
    """torchvision's AlexNet state dict as the LPIPS network's `net.slice<k>.<i>` entries."""
    out = {}
    for key, value in alexnet_state.items():
        parts = key.split(".")
        if parts[0] != "features" or len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) not in _SLICE_OF:
            continue  # the classifier head: LPIPS uses the convolutions only
        i = int(parts[1])
        out[f"net.slice{_SLICE_OF[i]}.{i}.{parts[2]}"] = value
    return out


def load_lpips(alexnet_file: str):
    """The LPIPS (AlexNet, v0.1) network in eval mode: the package's linear
    weights, the backbone from `alexnet_file` (torchvision's AlexNet weights)."""
    import lpips
    import torch

    with warnings.catch_warnings():  # lpips builds torchvision's alexnet with the old `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    try:
        state = torch.load(alexnet_file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a missing, broken or foreign file
        raise TibalanceError(f"{alexnet_file}: not torchvision's AlexNet weights ({type(e).__name__}: {e})") from e
    mapped = backbone_state(state) if isinstance(state, dict) else {}
    own = model.state_dict()
    if set(mapped) != {k for k in own if k.startswith("net.")} or any(v.shape != own[k].shape
                                                                      for k, v in mapped.items()):
        raise TibalanceError(f"{alexnet_file}: not torchvision's AlexNet weights (metrics.lpips_weights or the "
                             f"fetched alexnet file): its convolutions do not match LPIPS' AlexNet")
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def load_images(paths: list[str], size: int):
    """[N, 3, size, size] in [-1, 1] (LPIPS' input range), RGB, resized bicubic."""
    import torch
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def lpips_diversity(paths: list[str], model, max_images: int = 48, size: int = 128) -> float | None:
    """Mean LPIPS over every pair of the first `max_images` images (their table's
    order: the same images whatever else changes); None under two images.

    The same distance as model(a, b) (the package's forward, v0.1, not spatial),
    but each image's unit-normalised AlexNet features are computed once and the
    pairs compared from them: N network passes instead of N(N-1)."""
    import lpips
    import torch

    paths = list(paths)[:max_images]
    if len(paths) < 2:
        return None
    with torch.no_grad():
        feats = [lpips.normalize_tensor(f) for f in model.net.forward(model.scaling_layer(load_images(paths, size)))]
        pairs = list(itertools.combinations(range(len(paths)), 2))
        total = 0.0
        for k in range(0, len(pairs), 128):
            a, b = (list(v) for v in zip(*pairs[k:k + 128]))
            total += float(sum(lpips.spatial_average(lin((f[a] - f[b]) ** 2), keepdim=True)
                               for lin, f in zip(model.lins, feats)).sum())
    return total / len(pairs)


def set_diversity(filtered_csvs: dict[str, str], alexnet_file: str, max_images: int, size: int) -> list[dict]:
    """Per sampling mode ({mode: filtered.csv}): the LPIPS diversity of its kept images."""
    import pandas as pd

    from .filtering import kept_mask

    model = load_lpips(alexnet_file)
    rows = []
    for mode, csv in filtered_csvs.items():
        t = pd.read_csv(csv, dtype={"path": str})
        kept = list(t[kept_mask(t)]["path"]) if len(t) else []
        rows.append({"mode": mode, "lpips": lpips_diversity(kept, model, max_images, size),
                     "n_kept": len(kept), "n_used": min(len(kept), max_images)})
    return rows
