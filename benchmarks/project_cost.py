"""What a study's generative stages will cost, from the generative benchmark's
numbers: GPU-hours (or CPU-hours, for a CPU benchmark) per stage for the
config's weak classes and for every class of the dataset (Flowers-102: 102).

    python benchmarks/project_cost.py BENCH_JSON [CONFIG ...] [--classes 102]

BENCH_JSON: `benchmarks/bench_generative.py --json` (the device and model it
ran on are printed with the result); CONFIG: a study config (default
config/config.yaml), or several merged in order as Snakemake merges its
--configfile list (config/config.yaml config/flowers-sdxl.yaml). Inputs read from it: ti.steps and ti.batch_size,
lora.steps and lora.batch_size (two adapters a class: lora, ti_lora; with
diff_ii.concept ti_shared_lora, the default's with more than one class, one
more for the study, shared by its classes: a k-th of a job a class),
sampling.n_images (an integer; a refill target needs the data, so give
--images), sampling.steps and sampling.strength (image-to-image runs
strength x steps: scaled from the benchmark's), coti (cycles x (steps at TI's
rate + its fixed seconds + the images drawn)), analysis.k and replicates;
genie at genie.level and genie_ada at each of genie.levels as image-to-image
at that strength; diff_ii's inversions are one UNet pass a step (no guidance: half a sampled
image's) for each of a class's --real-images. Each job also pays the
benchmark's measured fixed seconds (setup, evaluation, preview). Not counted:
the classifier trainings (benchmarks/bench_train.py), filter, judge, FID.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tibalance.defaults import (  # noqa: E402
    COTI_DEFAULTS,
    DIFF_II_DEFAULTS,
    GENIE_DEFAULTS,
    LORA_DEFAULTS,
    SAMPLING_DEFAULTS,
    TI_DEFAULTS,
)

# fg_i2i: ti_i2i's cost (its guided steps' VAE decoding and classifier gradient not counted)
T2I_MODES, I2I_MODES = ("raw", "ti", "lora", "ti_lora", "diff_ii", "coti"), ("ti_i2i", "lora_i2i", "fg_i2i")


def merged(base: dict, over: dict) -> dict:
    """over's keys over base's, section by section (Snakemake's merge of configfiles)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nearest(rows: list[dict], stage: str, batch: int) -> dict:
    cands = [r for r in rows if r["stage"] == stage]
    if not cands:
        raise SystemExit(f"project_cost: the benchmark has no {stage!r} row")
    return min(cands, key=lambda r: (abs(r["batch"] - batch), -r["batch"]))


def project(bench: dict, cfg: dict, classes: int | None = None, images: int | None = None,
            real_images: int = 10) -> list[dict]:
    """Seconds per stage for one weak class and for all of them (real_images: a
    weak class's real training images, which diff_ii inverts)."""
    ti = {**TI_DEFAULTS, **(cfg.get("ti") or {})}
    coti = {**COTI_DEFAULTS, **(cfg.get("coti") or {})}
    lora = {**LORA_DEFAULTS, **(cfg.get("lora") or {})}
    smp = {**SAMPLING_DEFAULTS, **(cfg.get("sampling") or {})}
    n = images if images is not None else smp["n_images"]
    if not isinstance(n, int):
        raise SystemExit(f"project_cost: sampling.n_images is {n!r}, a refill target; give --images N")
    k = classes or int((cfg.get("analysis") or {}).get("k", 1))
    reps = cfg.get("replicates", 1)  # `seeds`: one replicate per retraining seed
    if reps == "seeds":
        seeds = (cfg.get("retrain") or {}).get("seeds")
        if not seeds:
            raise SystemExit("project_cost: replicates: seeds needs the config's retrain.seeds")
        reps = len(seeds)
    reps = int(reps)
    rows = bench["rows"]
    strength = smp["strength"] if not isinstance(smp["strength"], list) else max(smp["strength"])
    out = []
    r = r_ti = nearest(rows, "ti", int(ti["batch_size"]))
    out.append(("textual_inversion", 1, int(ti["steps"]) * int(ti["batch_size"]) / r["image_steps_per_s"]
                + r["fixed_s"], f"{ti['steps']} steps x {ti['batch_size']} at {r['image_steps_per_s']} image-steps/s"))
    r = nearest(rows, "lora", int(lora["batch_size"]))
    out.append(("lora (lora, ti_lora)", 2, int(lora["steps"]) * int(lora["batch_size"]) / r["image_steps_per_s"]
                + r["fixed_s"], f"{lora['steps']} steps x {lora['batch_size']} at {r['image_steps_per_s']}"))
    lora_job = int(lora["steps"]) * int(lora["batch_size"]) / r["image_steps_per_s"] + r["fixed_s"]
    concept = {**DIFF_II_DEFAULTS, **(cfg.get("diff_ii") or {})}["concept"]
    if concept == "ti_shared_lora" or concept == "auto" and k > 1:
        out.append(("lora_shared (diff_ii)", 1 / k, lora_job, f"one job for the {k} classes, as a lora job"))
    per_ti_step = int(ti["batch_size"]) / r_ti["image_steps_per_s"]
    t2i = max((x for x in rows if x["stage"] == "sample"), key=lambda x: x["images_per_s"])
    t2i_image = int(smp["steps"]) / t2i["steps"] / t2i["images_per_s"]
    out.append(("coti", 1, int(coti["cycles"]) * (int(coti["steps"]) * per_ti_step + r_ti["fixed_s"]
                                                  + int(coti["generated"]) * t2i_image),
                f"{coti['cycles']} cycles x ({coti['steps']} steps + {coti['generated']} images)"))
    out.append(("invert (diff_ii)", 1, real_images * t2i_image / 2,
                f"{real_images} real images, {smp['steps']} steps, one UNet pass a step"))
    for stage, modes in (("sample", T2I_MODES), ("i2i", I2I_MODES)):
        r = max((x for x in rows if x["stage"] == stage), key=lambda x: x["images_per_s"])
        # image-to-image runs strength x steps: scaled from the benchmark's strength
        scale = float(strength) / float(r["strength"]) if stage == "i2i" else 1.0
        per_image = scale * int(smp["steps"]) / r["steps"] / r["images_per_s"]
        out.append((f"sampling {', '.join(modes)}", len(modes), n * per_image,
                    f"{n} images, {smp['steps']} steps (x{scale:g}) at {r['images_per_s']} images/s "
                    f"({r['steps']} steps, batch {r['batch']})"))
    # GeNIe: image-to-image at its level (genie), at every level of its list (genie_ada)
    genie = {**GENIE_DEFAULTS, **(cfg.get("genie") or {})}
    r = max((x for x in rows if x["stage"] == "i2i"), key=lambda x: x["images_per_s"])
    per_step = int(smp["steps"]) / r["steps"] / r["images_per_s"] / float(r["strength"])  # an image at level 1
    for mode, levels in (("genie", [genie["level"]]), ("genie_ada", genie["levels"])):
        out.append((f"sampling {mode}", 1, n * per_step * sum(float(x) for x in levels),
                    f"{n} images at levels {', '.join(f'{float(x):g}' for x in levels)}"))
    return [{"stage": s, "jobs_per_class": j, "s_per_job": sec, "s_per_class": j * sec * reps,
             "s_all": j * sec * reps * k, "basis": basis, "classes": k, "replicates": reps}
            for s, j, sec, basis in out]


def markdown(bench: dict, rows: list[dict], cfg_name: str) -> str:
    unit = "GPU" if bench.get("gpu") else "CPU"
    lines = [f"Projection from {bench['model']} at {bench['resolution']} px on {bench.get('gpu') or bench['device']} "
             f"(torch {bench['torch']}), config {cfg_name}, {rows[0]['classes']} weak class(es), "
             f"{rows[0]['replicates']} replicate(s):", "",
             f"| stage | jobs a class | s a job | {unit}-hours, all classes | basis |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['jobs_per_class']:.3g} | {r['s_per_job']:.1f} | {r['s_all'] / 3600:.3f} | "
                     f"{r['basis']} |")
    lines.append(f"| all | | | {sum(r['s_all'] for r in rows) / 3600:.3f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json")
    ap.add_argument("config", nargs="*", default=[str(REPO / "config" / "config.yaml")])
    ap.add_argument("--classes", type=int, help="weak classes to adapt (default: the config's analysis.k)")
    ap.add_argument("--images", type=int, help="images per mode and class (default: sampling.n_images)")
    ap.add_argument("--real-images", type=int, default=10, help="a weak class's real training images (default 10)")
    a = ap.parse_args(argv)
    bench = json.loads(Path(a.bench_json).read_text())
    cfg: dict = {}
    for path in a.config:
        cfg = merged(cfg, yaml.safe_load(Path(path).read_text()) or {})
    text = markdown(bench, project(bench, cfg, a.classes, a.images, a.real_images), " + ".join(Path(c).name for c in a.config))
    print(text)
    return text


if __name__ == "__main__":
    main()
