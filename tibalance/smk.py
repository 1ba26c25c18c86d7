"""The adapter every workflow/scripts/*.py uses: log to snakemake.log[0], call
one package function, turn a TibalanceError into a one-line message."""
from __future__ import annotations

import logging
import os
import sys

from .util import TibalanceError


def run(snakemake, fn, **kwargs) -> None:
    """Send stderr (and logging) to the job's log, then call fn(**kwargs).

    A TibalanceError ends the job with its one-line message in the log and on
    the terminal; other errors keep their traceback in the log."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    terminal = sys.stderr
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fh = open(log_path, "w", buffering=1)
        sys.stderr = fh
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fn(**kwargs)
    except TibalanceError as e:
        msg = f"tibalance: {e}"
        print(msg, file=sys.stderr)
        if sys.stderr is not terminal:
            print(msg, file=terminal)
        sys.exit(1)
