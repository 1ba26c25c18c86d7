"""One GPU of its own per job on a multi-GPU workstation.

Snakemake's `--resources gpu=N` bounds how many GPU jobs run at once but assigns
no device ids: without help every job would use cuda:0. Before a GPU job
touches CUDA, `claim()` takes an exclusive lock on a free device (one lock file
per device, `flock`, released by the kernel when the job's process ends, also
when it is killed) and narrows CUDA_VISIBLE_DEVICES to it.

The candidate devices are CUDA_VISIBLE_DEVICES when the user set it (the GPUs
the study may use), else every GPU `nvidia-smi` lists. Under SLURM the
scheduler already gave the job its own GPU(s): nothing to do.
"""
from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "TIBALANCE_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/tibalance-gpu-locks"

_held: list[int] = []  # lock fds kept open for the life of the process


def candidate_devices(env: dict | None = None) -> list[str]:
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _try_lock(path: str) -> int | None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim(n: int = 1, lock_dir: str | None = None, poll_seconds: float = 1.0) -> list[str] | None:
    """Lock `n` free devices and make them the only visible ones; wait while all
    are taken. Returns the devices, or None when there is nothing to choose
    (no GPU, n == 0, or a SLURM job)."""
    if n <= 0 or os.environ.get("SLURM_JOB_ID"):
        return None
    devices = candidate_devices()
    if not devices:
        return None
    n = min(n, len(devices))
    lock_dir = lock_dir or os.environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR)
    os.makedirs(lock_dir, exist_ok=True)
    waited = False
    while True:
        fds, got = [], []
        for dev in devices:
            fd = _try_lock(os.path.join(lock_dir, f"gpu{dev}.lock"))
            if fd is not None:
                fds.append(fd)
                got.append(dev)
                if len(got) == n:
                    break
        if len(got) == n:
            _held.extend(fds)
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(got)
            log.info("GPU %s claimed (of %s)", ",".join(got), ",".join(devices))
            return got
        for fd in fds:
            os.close(fd)  # closing releases the lock: never hold a partial set
        if not waited:
            log.info("all GPUs of %s are busy; waiting for one", ",".join(devices))
            waited = True
        time.sleep(poll_seconds)
