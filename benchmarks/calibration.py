"""The verdict's calibration table: false positives and power of "significant"
(tibalance.stats: t-test over runs, Holm over the family) against the number of
retraining seeds, from simulated studies (tibalance.calibration).

    python benchmarks/calibration.py [--studies 400] [--seeds 3 5 10]

Prints a markdown table for docs/design.md, the run (commit, machine) named.
Columns: the false-positive rate of one null comparison and of a family of six
null methods (any called significant: the family-wise rate Holm controls), the
image-level test's rate on the same null rows, and the power for two lifts
(one lifted method beside five null ones, so Holm adjusts over the family as
the verdict does), each with its Monte-Carlo standard error.
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
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--run-sd", type=float, default=0.35, help="each trained model's tilt, sd on the logit scale")
    ap.add_argument("--lifts", type=float, nargs=2, default=[0.3, 0.6], help="the lifted method's logit shifts")
    a = ap.parse_args()
    nulls = tuple(f"null{i}" for i in range(6))
    print(f"<!-- run -->{_run_name()}; {a.studies} simulated studies a cell, {a.images} test images, "
          f"per-run sd {a.run_sd} (logit)<!-- /run -->\n")
    head = ["seeds", "false positives: 1 comparison", "false positives: any of 6 (Holm)", "image-level test, same rows"]
    head += [f"power, logit +{x} (lift {{:.1f}} pts)" for x in a.lifts]
    lines = []
    for s in a.seeds:
        one = rates(a.studies, s, seed=1, images=a.images, run_sd=a.run_sd)
        fam = rates(a.studies, s, seed=2, images=a.images, run_sd=a.run_sd, methods=("baseline", *nulls))
        cells = [str(s), f"{one['significant']:.3f} ± {mc_error(one['significant'], a.studies):.3f}",
                 f"{fam['significant']:.3f} ± {mc_error(fam['significant'], a.studies):.3f}",
                 f"{fam['images']:.3f}"]
        for i, x in enumerate(a.lifts):
            r = rates(a.studies, s, seed=3 + i, images=a.images, run_sd=a.run_sd,
                      methods=("baseline", "lifted", *nulls[:5]), lift={"lifted": x})
            p = r["power"]["lifted"]
            cells.append(f"{p:.3f} ± {mc_error(p, a.studies):.3f}")
            head[4 + i] = head[4 + i].format(100 * r["lift"]["lifted"]) if "{" in head[4 + i] else head[4 + i]
        lines.append("| " + " | ".join(cells) + " |")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
