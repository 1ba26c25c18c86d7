"""The verdict's calibration table: the declared family's error and power
(tibalance.stats, tibalance.family: t-test over units, the graphical
procedure over the declared rows) in the design the workflow runs, from
simulated studies (tibalance.calibration).

    python benchmarks/calibration.py [--studies 400] [--replicates 3 5 10]

Prints a markdown table for docs/design.md, the run (commit, machine) named.
Each study: baseline, oversample and three declared adaptations (ti, lora,
ti_i2i), every run its own replicate (R seeds on R replicates; the last row
two seeds per replicate), a replicate spread shared by the adaptations
(correlation 0.5) on top of each run's. Columns: the family-wise error under
the complete null (no method lifts) and under a partial null (ti lifts, lora
and ti_i2i do not: errors on their rows only), ti's power against baseline
and against oversample there, and the image-level test's rate on the null
rows; each rate with its Monte-Carlo standard error.
"""
from __future__ import annotations

import argparse
import platform
import subprocess

from tibalance.calibration import mc_error, rates


def _run_name() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - outside a checkout
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"commit {commit}, {cpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--replicates", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--run-sd", type=float, default=0.35, help="each trained model's tilt, sd on the logit scale")
    ap.add_argument("--replicate-sd", type=float, default=0.3, help="each replicate's tilt, sd on the logit scale")
    ap.add_argument("--lift", type=float, default=0.6, help="ti's logit shift in the partial null")
    a = ap.parse_args()
    methods = ("baseline", "oversample", "ti", "lora", "ti_i2i")
    print(f"<!-- run -->{_run_name()}; {a.studies} simulated studies a cell, {a.images} test images, "
          f"per-run sd {a.run_sd}, per-replicate sd {a.replicate_sd} (logit, correlation 0.5 across the "
          f"adaptations); declared: ti, lora, ti_i2i<!-- /run -->\n")
    head = ["replicates x seeds each", "family-wise error, complete null", "family-wise error, partial null",
            "power vs baseline (ti, lift {:.1f} pts)", "power vs oversample", "image-level test, null rows"]
    lines = []
    designs = [(r, 1) for r in a.replicates] + [(min(a.replicates), 2)]
    for reps, per in designs:
        kw = dict(images=a.images, run_sd=a.run_sd, methods=methods, replicates=reps, replicate_sd=a.replicate_sd,
                  replicate_corr=0.5)
        null = rates(a.studies, reps * per, seed=1, **kw)
        part = rates(a.studies, reps * per, seed=2, lift={"ti": a.lift}, **kw)
        head[3] = head[3].format(100 * part["lift"]["ti"]) if "{" in head[3] else head[3]
        cells = [f"{reps} x {per}"]
        for v in (null["fwer"], part["fwer"], part["power"]["ti"], part["power_over"]["ti"]):
            cells.append(f"{v:.3f} ± {mc_error(v, a.studies):.3f}")
        cells.append(f"{null['images']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
