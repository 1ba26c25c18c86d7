#!/usr/bin/env python3
"""Time the README's commands the way a user meets them: run in a fresh clone,
install included.

    python3 benchmarks/time_make.py demo verdict    # make demo, then make verdict
    python3 benchmarks/time_make.py demo-lt         # make demo-lt (the long-tailed demo, in demo-lt/)
    python3 benchmarks/time_make.py test            # CI=true bash .ci/run (lint, then the suite)

Each target's wall time and exit status, the commit, the CPU (its model,
torch's capability, native bf16 or not: asked of the installed torch) and the
date go to results/benchmarks/times.json. `python -m tibalance.docs times
results/benchmarks/times.json` (in the checkout whose docs are updated) takes
them into docs/times.json, which the times in docs/performance.md and the
README are generated from. Uses only the standard library: it runs before the
install does.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"demo": ["make", "demo"], "verdict": ["make", "verdict"], "demo-lt": ["make", "demo-lt"],
            "test": ["bash", ".ci/run"]}


def machine() -> dict:
    """The CPU, as the project's sidecars record it (tibalance.precision.cpu_info)."""
    code = "import json; from tibalance.precision import cpu_info; print(json.dumps(cpu_info()))"
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"time_make: could not ask the installed torch for the CPU ({out.stderr.strip()[-200:]})")
    return json.loads(out.stdout)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", choices=sorted(COMMANDS))
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "times.json"))
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    runs = []
    for target in args.targets:
        env = {**os.environ, **({"CI": "true"} if target == "test" else {})}
        start = time.monotonic()
        rc = subprocess.run(COMMANDS[target], cwd=ROOT, env=env, stdin=subprocess.DEVNULL).returncode
        seconds = round(time.monotonic() - start, 1)
        print(f"time_make: {target}: {seconds:.0f} s, exit {rc}", file=sys.stderr)
        runs.append({"target": target, "seconds": seconds, "rc": rc})
        if rc != 0:
            break
    record = {"commit": commit + ("-dirty" if dirty else ""), "date": datetime.date.today().isoformat(),
              "cpu": machine(), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"time_make: wrote {args.out}", file=sys.stderr)
    return max(r["rc"] for r in runs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
