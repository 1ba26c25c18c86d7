"""Downloads, done by local rules on the login node before the jobs that need
them (compute nodes have no internet): the dataset, the classifier's ImageNet
weights and the FID network's weights. and the generator's hub pipeline.

TIBALANCE_DOWNLOAD_MIRROR (e.g. http://mirror.example.org) replaces the scheme
and host of every weights URL, keeping the path: for sites whose login nodes
reach the internet only through a mirror (and for the tests' stand-in server)."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from .errors import TibalanceError
from .generator import check_model

log = logging.getLogger(__name__)

MIRROR = "TIBALANCE_DOWNLOAD_MIRROR"
WEIGHTS_DIR = "resources/weights"
DOWNLOADABLE = ("fashion_mnist", "cifar10", "flowers102")  # torchvision datasets with download=True


# written out, not imported: parsing the Snakefile must not import torch (every
# cluster job parses it); tests check them against torchvision's and torch-fidelity's
CLASSIFIER_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


# torchvision's AlexNet (IMAGENET1K_V1): LPIPS' backbone (metrics.lpips)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def inception_url() -> str:
    """torch-fidelity's Inception-v3 weights (the FID standard)."""
    return INCEPTION_URL


def classifier_url(arch: str) -> str:
    """torchvision's ImageNet weights of a classifier architecture."""
    if arch not in CLASSIFIER_URLS:
        raise TibalanceError(f"classifier.arch: unknown architecture {arch!r} (one of {sorted(CLASSIFIER_URLS)})")
    return CLASSIFIER_URLS[arch]


def file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def classifier_weights_file(recipe: dict) -> list[str]:
    """The fetched weights file a classifier recipe starts from ([] when not pretrained)."""
    return [f"{WEIGHTS_DIR}/{file_name(classifier_url(recipe['arch']))}"] if recipe.get("pretrained") else []


def inception_weights_file(metrics: dict) -> list[str]:
    """The fetched Inception weights ([] without `inception` or with metrics.inception_weights given)."""
    if "inception" in metrics.get("networks", []) and not metrics.get("inception_weights"):
        return [f"{WEIGHTS_DIR}/{file_name(inception_url())}"]
    return []


def lpips_weights_file(metrics: dict) -> list[str]:
    """The fetched AlexNet weights of LPIPS ([] without metrics.lpips or with metrics.lpips_weights given)."""
    if metrics.get("lpips") and not metrics.get("lpips_weights"):
        return [f"{WEIGHTS_DIR}/{file_name(ALEXNET_URL)}"]
    return []


def weights_to_fetch(config: dict) -> dict[str, str]:
    """{file name: URL} of the weights the study downloads: those of every classifier
    recipe with pretrained: true (baseline, retraining, a judge trained here),
    Inception's and LPIPS' AlexNet (the files the jobs' inputs name)."""
    recipes = [config["classifier"], {**config["classifier"], **config.get("retrain", {}).get("classifier", {})}]
    judge = config.get("judge", {})
    if judge.get("train_per_class") and not judge.get("model"):
        recipes.append({**config["classifier"], **judge.get("classifier", {})})
    urls = {classifier_url(r["arch"]) for r in recipes if r.get("pretrained")}
    urls |= {inception_url()} if inception_weights_file(config.get("metrics", {})) else set()
    urls |= {ALEXNET_URL} if lpips_weights_file(config.get("metrics", {})) else set()
    return {file_name(u): u for u in sorted(urls)}


def mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR, "").rstrip("/")
    return mirror + urlsplit(url).path if mirror else url


def fetch_url(url: str, out: str) -> None:
    """Download url (or its mirror) to out, atomically: a broken download leaves no file."""
    import torch

    src = mirrored(url)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.part"
    try:
        torch.hub.download_url_to_file(src, tmp, progress=False)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError, ...
        Path(tmp).unlink(missing_ok=True)
        raise TibalanceError(f"fetch_weights: could not download {src} to {out} ({type(e).__name__}: {e}); "
                             f"download it where there is internet and put it at {out}") from e
    os.replace(tmp, out)
    log.info("fetched %s -> %s (%d bytes)", src, out, Path(out).stat().st_size)


def dataset_marker(data_cfg: dict) -> str | None:
    """The file fetch_dataset writes when the study's dataset is downloaded by
    torchvision (data.download: true); None when nothing is to be fetched."""
    if data_cfg.get("download") and data_cfg.get("source") in DOWNLOADABLE and data_cfg.get("root"):
        return str(Path(data_cfg["root"]) / ".tibalance-fetched.json")
    return None


def fetch_dataset(data_cfg: dict, marker: str) -> None:
    """torchvision's download of every split the study reads into data.root;
    the jobs then open it with download: false."""
    from .sources import download_source

    source, root = data_cfg["source"], data_cfg["root"]
    download_source(source, root)
    files = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file() and p.name != Path(marker).name)
    Path(marker).write_text(json.dumps({"source": source, "root": str(root), "files": files}, indent=1) + "\n")
    log.info("%s: %d files under %s", source, len(files), root)


# What a Stable Diffusion hub repo holds beyond one pipeline in fp32 safetensors
SKIP_FILES = ["*.ckpt", "*.bin", "*.msgpack", "*.onnx", "*.onnx_data", "*.fp16.*", "*non_ema*", "*.pb", "*.h5"]


def fetched_folder(repo_id: str) -> str:
    """Where the local rule fetch_generator puts a hub pipeline (the jobs open it offline)."""
    return "resources/generator/" + re.sub(r"[^A-Za-z0-9._-]+", "--", repo_id)


def fetch_pipeline(repo_id: str, out_dir: str, endpoint: str | None = None) -> None:
    """Download a hub pipeline's files (one fp32 safetensors copy per component)
    into out_dir: the login-node half of running compute jobs offline."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_dir=out_dir, ignore_patterns=SKIP_FILES, endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - network and hub failures come in many types
        raise TibalanceError(f"generator.model: could not fetch hub id {repo_id!r} into {out_dir} "
                             f"({type(e).__name__}); fetch it where there is internet, or set "
                             "generator.model to a local save_pretrained folder") from e
    check_model(out_dir)
