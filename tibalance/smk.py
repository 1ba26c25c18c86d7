"""The adapter every workflow/scripts/*.py uses: log to snakemake.log[0], call
one package function, turn a TibalanceError into a one-line message."""
from __future__ import annotations

import logging
import os
import sys

from .util import TibalanceError

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# every job but the fetch rules fails on its first network connection, naming
# what it tried (what a job needs was downloaded before it); 0 switches it off
NO_NETWORK = "TIBALANCE_NO_NETWORK"


def _rule_name(snakemake) -> str:
    return str(getattr(snakemake, "rule", "") or "job")


def forbid_network(job: str) -> None:
    """Make every TCP/UDP connection of this process fail with one line (Unix sockets stay allowed)."""
    import socket

    original = socket.socket.connect, socket.socket.connect_ex

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise TibalanceError(
                f"{job}: tried to reach {address[0]}:{address[1]}; jobs run offline, what they need is downloaded "
                f"before them by the fetch rules (fetch_dataset, fetch_weights, fetch_generator) on the login "
                f"node ({NO_NETWORK}=0 lets jobs connect)")
        return original[0](self, address, *args)

    def refuse_ex(self, address, *args):
        refuse(self, address)
        return original[1](self, address, *args)

    socket.socket.connect, socket.socket.connect_ex = refuse, refuse_ex


def run(snakemake, fn, online: bool = False, **kwargs) -> None:
    """Send stderr (and logging) to the job's log, then call fn(**kwargs).

    Jobs run with the hubs' offline switches set and any network connection
    refused (compute nodes have no internet: what a job needs was fetched by a
    local rule before it; TIBALANCE_NO_NETWORK=0 lifts the refusal); only the
    fetch rules pass online=True. A TibalanceError ends the job with its
    one-line message in the log and on the terminal; other errors keep their
    traceback in the log."""
    if not online:
        os.environ.update(OFFLINE)
        if os.environ.get(NO_NETWORK, "1") != "0":
            forbid_network(_rule_name(snakemake))
    log_path = snakemake.log[0] if len(snakemake.log) else None
    terminal = sys.stderr
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fh = open(log_path, "w", buffering=1)
        sys.stderr = fh
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _claim_resources(snakemake)
        fn(**_with_fetched(snakemake, kwargs))
    except TibalanceError as e:
        msg = f"tibalance: {e}"
        print(msg, file=sys.stderr)
        if sys.stderr is not terminal:
            print(msg, file=terminal)
        sys.exit(1)
    if _is_job_process(snakemake):
        _exit_now()


FAST_EXIT = "TIBALANCE_FAST_EXIT"


def _is_job_process(snakemake) -> bool:
    """Whether this is a Snakemake job's own process (its script object comes
    from snakemake; tests pass stand-ins and keep their interpreter)."""
    return type(snakemake).__module__.startswith("snakemake") and os.environ.get(FAST_EXIT, "1") != "0"


def _exit_now() -> None:
    """End a finished job without the interpreter's teardown: freeing torch's
    and torchvision's thousands of modules takes ~0.9 s a job (57 jobs in the
    demo). The job's files are written and closed; logs and streams are flushed
    here; device locks are file locks the kernel releases. TIBALANCE_FAST_EXIT=0
    keeps the normal exit."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def _claim_resources(snakemake) -> None:
    """Threads as Snakemake granted them; a GPU job takes a free device of its own."""
    threads = int(getattr(snakemake, "threads", 1) or 1)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover - every environment has torch
        pass
    ngpu = int(getattr(snakemake.resources, "gpu", 0) or 0)
    if ngpu:
        from . import gpu

        gpu.claim(ngpu)


def single(item) -> str | None:
    """An optional input given as a list of zero or one path: the path or None."""
    if not item:
        return None
    return item if isinstance(item, str) else list(item)[0]


def modes(namedlist) -> dict[str, str]:
    """{sampling mode: path} of the inputs named after a mode (raw, ti, …)."""
    from .sampling import MODES

    keys = set(namedlist.keys())
    return {m: namedlist[m] for m in MODES if m in keys}


def _with_fetched(snakemake, kwargs: dict) -> dict:
    """Files a fetch rule downloaded reach the job's settings through its input
    (the job scripts stay as they are, so an upgrade reruns nothing):
    `fetched` (fetch_dataset's marker): data.download off, the data is on disk;
    `weights`: the classifier recipe's ImageNet weights file; `inception`:
    the FID network's weights; `alexnet`: LPIPS' backbone."""
    inp = snakemake.input
    if "data_cfg" in kwargs and single(inp.get("fetched")):
        kwargs["data_cfg"] = {**kwargs["data_cfg"], "download": False}  # the job never downloads
    if "clf_cfg" in kwargs and single(inp.get("weights")):
        kwargs["clf_cfg"] = {**kwargs["clf_cfg"], "weights_file": single(inp.get("weights"))}
    if "metrics_cfg" in kwargs and single(inp.get("inception")):
        kwargs["metrics_cfg"] = {**kwargs["metrics_cfg"], "inception_weights": single(inp.get("inception"))}
    if "metrics_cfg" in kwargs and single(inp.get("alexnet")):
        kwargs["metrics_cfg"] = {**kwargs["metrics_cfg"], "lpips_weights": single(inp.get("alexnet"))}
    return kwargs
