"""Small helpers shared by every stage: errors, seeds, deterministic files, sidecars."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

from .errors import TibalanceError  # noqa: F401 - re-exported: `from .util import TibalanceError` stays valid

_FOLD = {"æ": "ae", "ø": "o", "ß": "ss", "œ": "oe", "ð": "d", "þ": "th", "ł": "l", "đ": "d", "ı": "i"}


def slugify(name: str) -> str:
    """Map a class name (spaces, slashes, capitals, accents) to a safe wildcard value.

    'T-shirt/top' -> 't_shirt_top', 'sword lily' -> 'sword_lily', 'Löwenzahn' ->
    'lowenzahn'. A name with no Latin letter or digit at all (e.g. '日本') gets a
    stable slug from its text: 'class_' + 8 hex digits.
    """
    text = unicodedata.normalize("NFKD", str(name).lower())
    text = "".join(_FOLD.get(c, c) for c in text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    if not slug:
        if not str(name).strip():
            raise TibalanceError(f"class name {name!r} is empty")
        slug = "class_" + hashlib.sha1(str(name).encode()).hexdigest()[:8]
    return slug


def derive_seed(base_seed: int, *keys: Any) -> int:
    """A seed derived from the base seed and names (never positions).

    Adding a class to the weak list does not reseed the others.
    """
    text = ":".join([str(int(base_seed))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed every generator, and make torch pick deterministic kernels where it
    has them: with several threads, the demo generator's pretraining otherwise
    differed from run to run in the last digits (the same job on 2 CPU threads
    gave three different UNets in three runs), and so did everything after it.
    Ops without a deterministic kernel (some CUDA backward passes) warn instead
    of stopping the job."""
    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA init)
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(preference: str = "auto"):
    """'auto' -> cuda when present, else cpu. On a multi-GPU workstation the job's
    device comes from CUDA_VISIBLE_DEVICES (see tibalance.gpu)."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise TibalanceError(f"device {preference!r} requested but no CUDA GPU is visible; set device: auto or cpu")
    return torch.device(preference)


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed float formatting, trailing newline."""
    return json.dumps(_round_floats(obj), sort_keys=True, indent=2) + "\n"


def _round_floats(obj: Any, ndigits: int = 6) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{ndigits}g}")
    if isinstance(obj, dict):
        return {str(k): _round_floats(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round_floats(v, ndigits) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _round_floats(obj.item(), ndigits)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps_json(obj))
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def write_csv(df, path: str | os.PathLike, float_format: str = "%.6g") -> None:
    """Deterministic CSV (fixed float format, no index) written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
    os.replace(tmp, path)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_image_atomic(image, path: str | os.PathLike, **kw: Any) -> None:
    """image.save(path) through a temporary file in the same folder, renamed into
    place: a kill or a full disk leaves no truncated image that a later run
    would take as done (a run reuses any image file that exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format=kw.pop("format", None) or image.format or path.suffix.lstrip(".").upper().replace(
            "JPG", "JPEG"), **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(dumps_json(obj).encode()).hexdigest()[:16]


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process since it started (imports
    included) and of its finished children (data-loader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def code_version() -> str | None:
    """The checkout's commit ('+dirty' when tracked files differ from it), None
    outside a git checkout: the run a table came from, named in the docs."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


class Sidecar:
    """Collects what a job needs to be reproduced and writes it as JSON at the end."""

    def __init__(self, seed: int | None = None, **extra: Any):
        self.t0 = time.time()
        self.info: dict[str, Any] = {"seed": seed, **extra}

    def write(self, path: str | os.PathLike, **extra: Any) -> None:
        import torch

        info = dict(self.info)
        info.update(extra)
        versions = {"python": platform.python_version(), "torch": torch.__version__}
        for mod in ("torchvision", "diffusers", "transformers", "torch_fidelity", "numpy", "pandas"):
            m = sys.modules.get(mod)
            if m is not None:
                versions[mod] = getattr(m, "__version__", "?")
        info["versions"] = versions
        info["device"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        )
        info["host"] = platform.node()
        info["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0  # GPU-seconds = wall x gpus
        info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        info["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
        from .precision import run_record

        info.update(run_record())  # the CPU, threads and precision: what "the same numbers" needs alike
        info["code"] = code_version()
        info["wall_seconds"] = round(time.time() - self.t0, 3)
        info["cpu_seconds"] = round(process_cpu_seconds(), 3)
        write_json(path, info)


def _inline(text: str) -> str:
    import html

    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def markdown_to_html(md: str, title: str = "") -> str:
    """The project's own tables (headings, paragraphs, pipe tables) as a
    standalone HTML page: Snakemake's report shows HTML, and offers a .md file
    only as a download."""
    out, para, rows = [], [], []

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if rows:
            head, body = rows[0], [r for r in rows[2:]]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            if para:
                flush()
            rows.append([c.strip() for c in s[1:-1].split(" | ")])
        elif s.startswith("#"):
            flush()
            level = len(s) - len(s.lstrip("#"))
            out.append(f"<h{level}>{_inline(s[level:].strip())}</h{level}>")
        elif not s:
            flush()
        else:
            if rows:
                flush()
            para.append(s)
    flush()
    style = ("body{font-family:sans-serif;font-size:14px;margin:1em} table{border-collapse:collapse;margin:.5em 0}"
             " th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f2f2f2}"
             " td:first-child,th:first-child{text-align:left} code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_inline(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_markdown(path: str | os.PathLike, text: str, title: str = "") -> None:
    """A markdown table file and, beside it, the same as HTML (path with .html)."""
    path = Path(path)
    path.write_text(text)
    path.with_suffix(".html").write_text(markdown_to_html(text, title or path.stem))

