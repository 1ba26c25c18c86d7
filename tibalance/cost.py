"""What the study cost: per stage, weak class and method, from the benchmark
files Snakemake writes for every job (wall and CPU seconds, peak memory) and
the jobs' sidecars (whether a GPU ran it: GPU-seconds = wall x GPUs held)."""
from __future__ import annotations

import math
import os

import pandas as pd

from .defaults import SHARED_ADAPTER, uses
from .retrain import MODE_OF
from .util import read_json


def method_stages(method: str, concept: str = "ti", genie: str = "raw") -> dict[str, str | None]:
    """The jobs a retraining method adds to the shared ones (data, baseline,
    analysis, generator, FID, judge, grids): {stage: the sampling mode (LoRA: the
    adapter) its jobs must have, or None for all of the stage's jobs}; its
    retraining runs aside. concept: diff_ii's (diff_ii.concept); genie: the genie modes' (genie.concept)."""
    if method.startswith("real_oracle"):  # its held-back real images (@<method>: that method's samples are its)
        return {"oracle_images": None}
    if method == "noise_static":  # its pure-noise images
        return {"noise_images": None}
    mode = MODE_OF.get(method)
    if mode is None:  # baseline, oversample, reweight, drw: real images only
        return {}
    token, adapter = uses(mode, concept, genie)
    seeds = {"select_seeds": None} if token or adapter else {}
    inversions = {"invert": mode} if mode == "diff_ii" else {}
    coti = {"coti": None} if token == "coti" else {}  # COTI goes on from the TI token
    lora = {"lora_shared": None} if adapter == SHARED_ADAPTER else {"lora": adapter} if adapter else {}
    return {**seeds, **({"textual_inversion": None} if token else {}), **coti,
            **lora, **inversions, "sample": mode, "filter_samples": mode}


def unet_steps(strengths, steps: int, levels=None) -> int:
    """The denoising steps a sample table's images took: text-to-image (strength
    '' or NaN) `steps` each; image-to-image min(int(steps x strength), steps)
    each, as diffusers' img2img runs them; with `levels` (genie_ada) every level
    of each image."""
    def one(v) -> int:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return int(steps)
        return int(steps) if math.isnan(v) else min(int(int(steps) * v), int(steps))

    if levels is not None:
        return len(list(strengths)) * sum(one(v) for v in levels)
    return sum(one(v) for v in strengths)


def read_benchmark(path: str) -> dict:
    """One job's benchmark file: wall and CPU seconds, peak RSS (MiB); the mean
    over its lines where Snakemake repeated the job (benchmark repeats). A
    missing file (deleted, or a job run before benchmarks were kept) gives NaN."""
    if not os.path.exists(path):
        return {"wall_s": float("nan"), "cpu_s": float("nan"), "max_rss_mib": float("nan")}
    t = pd.read_csv(path, sep="\t")
    t = t.apply(pd.to_numeric, errors="coerce")

    def col(name):
        v = t[name].mean() if name in t.columns and len(t) else float("nan")
        return float(v)

    return {"wall_s": col("s"), "cpu_s": col("cpu_time"), "max_rss_mib": col("max_rss")}


def job_rows(jobs: list[dict]) -> pd.DataFrame:
    """jobs: {rule, class, method, benchmark, meta (or None)} -> one row per job."""
    rows = []
    for j in jobs:
        b = read_benchmark(j["benchmark"])
        m = read_json(j["meta"]) if j.get("meta") and os.path.exists(j["meta"]) else {}
        gpus = int(m.get("gpus") or 0)
        if m.get("cpu_seconds") is not None and not math.isnan(b["wall_s"]):
            # the job's own count (getrusage at its end): Snakemake samples CPU time every
            # 30 s after a job's first 30 and so misses up to its last 30 s
            b["cpu_s"] = float(m["cpu_seconds"])
        rows.append({"stage": j["rule"], "class": j.get("class") or "", "method": j.get("method") or "",
                     "replicate": j.get("replicate"), **b, "gpu_s": b["wall_s"] * gpus,
                     "precision": precision_word(m), "cpu": cpu_word(m),
                     "unet_steps": m.get("unet_steps", float("nan")), "kept": m.get("kept", float("nan"))})
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


# unet_steps: a sample job's denoising steps (its sidecar's); kept: a filter job's kept images
JOB_COLUMNS = ["stage", "class", "method", "replicate", "wall_s", "cpu_s", "max_rss_mib", "gpu_s", "precision", "cpu",
               "unet_steps", "kept"]


def precision_word(meta: dict) -> str:
    """What a job computed in, from its sidecar: bf16, fp32, fp16 (several: joined
    with +); 'bf16 (emulated)' on a CPU without native bf16; '' for a job that
    resolved no precision (data, tables) or has no sidecar."""
    vals = sorted(set((meta.get("precision") or {}).values()))
    word = "+".join(vals)
    return f"{word} (emulated)" if word and meta.get("bf16_emulated") else word


def cpu_word(meta: dict) -> str:
    """The CPU kind a job ran on: model, torch's capability, native bf16 or not."""
    if not meta.get("cpu_capability"):
        return ""
    bf16 = "native bf16" if meta.get("cpu_native_bf16") else "no native bf16"
    return f"{meta.get('cpu', '?')} ({meta['cpu_capability']}, {bf16})"


def _join(values) -> str:
    return "/".join(sorted(set(v for v in values if v)))


def stage_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per stage, weak class and mode/method (seeds summed): jobs, seconds, peak
    memory, and the precision its jobs computed in."""
    if not len(jobs):
        return pd.DataFrame(columns=["stage", "class", "method", "jobs", "wall_s", "cpu_s", "gpu_s", "max_rss_mib",
                                     "precision"])
    order = {s: i for i, s in enumerate(dict.fromkeys(jobs["stage"]))}
    g = jobs.groupby(["stage", "class", "method"], sort=False, dropna=False)
    total_ = lambda s: s.sum(min_count=1)  # noqa: E731 - blank, not 0, where no job has a benchmark file
    t = g.agg(jobs=("wall_s", "size"), wall_s=("wall_s", total_), cpu_s=("cpu_s", total_), gpu_s=("gpu_s", total_),
              max_rss_mib=("max_rss_mib", "max"), precision=("precision", _join)).reset_index()
    t["_o"] = t["stage"].map(order)
    t = t.sort_values(["_o", "class", "method"], kind="stable").drop(columns="_o").reset_index(drop=True)
    total = {"stage": "total", "class": "", "method": "", "jobs": int(t["jobs"].sum()), "wall_s": t["wall_s"].sum(),
             "cpu_s": t["cpu_s"].sum(), "gpu_s": t["gpu_s"].sum(), "max_rss_mib": t["max_rss_mib"].max(),
             "precision": _join(jobs["precision"])}
    return pd.concat([t, pd.DataFrame([total])], ignore_index=True)


def method_table(jobs: pd.DataFrame, methods: list[str], concept: str = "ti", genie: str = "raw") -> pd.DataFrame:
    """Per retraining method: what producing its synthetic images cost per weak
    class (seeds, inversion, sampling, filtering) and its retraining runs, in
    wall/CPU/GPU seconds — the price of a row beside the shared stages; for a
    method on a sampling mode, its mode's denoising steps per kept image
    (`unet_steps_per_kept`: sampling's only, not an inversion's or a token's)."""
    rows = []
    for method in methods:
        synthetic = pd.Series(False, index=jobs.index)
        stages = method_stages(method, concept, genie)
        for stage, mode in stages.items():
            synthetic |= (jobs["stage"] == stage) & (jobs["method"] == mode if mode else True)
        parts = {"synthetic": synthetic, "retrain": (jobs["stage"] == "retrain") & (jobs["method"] == method)}
        row = {"method": method}
        for part, sel in parts.items():
            for k in ("wall_s", "cpu_s", "gpu_s"):
                row[f"{part}_{k}"] = float(jobs.loc[sel, k].sum())
        row["retrain_runs"] = int(parts["retrain"].sum())
        row["total_wall_s"] = row["synthetic_wall_s"] + row["retrain_wall_s"]
        row["total_gpu_s"] = row["synthetic_gpu_s"] + row["retrain_gpu_s"]
        mode = stages.get("sample")
        steps = pd.to_numeric(jobs.loc[(jobs["stage"] == "sample") & (jobs["method"] == mode), "unet_steps"])
        kept = pd.to_numeric(jobs.loc[(jobs["stage"] == "filter_samples") & (jobs["method"] == mode), "kept"])
        row["unet_steps_per_kept"] = (float(steps.sum() / kept.sum()) if mode and kept.sum() > 0
                                      and steps.notna().any() else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def replicate_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per replicate of the adaptation (replicates: R > 1): its jobs (seed
    selection, token, adapters, sampling, filtering of every adapted class) and
    their seconds — what one more replicate costs. Empty with one replicate."""
    rep = pd.to_numeric(jobs["replicate"], errors="coerce")
    if not (rep > 0).any():
        return pd.DataFrame(columns=["replicate", "jobs", "wall_s", "cpu_s", "gpu_s"])
    t = jobs.assign(replicate=rep).dropna(subset=["replicate"]).groupby("replicate").agg(
        jobs=("wall_s", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), gpu_s=("gpu_s", "sum"))
    t = t.reset_index()
    t["replicate"] = t["replicate"].astype(int)
    t["jobs"] = t["jobs"].astype(int)
    return t


def _num(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def machine_lines(jobs: pd.DataFrame) -> str:
    """The CPU kind(s) the jobs ran on, and one line where any bf16 ran emulated."""
    out = ""
    cpus = [c for c in dict.fromkeys(jobs["cpu"]) if c]
    if cpus:
        out += "CPU: " + "; ".join(cpus) + ". The same numbers to the last digit need the same CPU kind, " \
               "threads and precision (each job's sidecar records them).\n\n"
    emulated = jobs[jobs["precision"].str.contains("emulated", na=False)]
    if len(emulated):
        from .precision import EMULATED_SLOWDOWN

        out += (f"**{len(emulated)} job(s) computed in bf16 on a CPU without native bf16** (emulated; measured: "
                f"{EMULATED_SLOWDOWN}): stages {', '.join(dict.fromkeys(emulated['stage']))}. "
                f"`mixed_precision: auto` picks fp32 on such a CPU.\n\n")
    return out


def markdown(stages: pd.DataFrame, methods: pd.DataFrame, missing: int = 0, jobs: pd.DataFrame | None = None,
             replicates: pd.DataFrame | None = None) -> str:
    def table(df):
        cols = list(df.columns)
        lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
        for _, r in df.astype(object).iterrows():  # object: a row of numbers only keeps its ints
            lines.append("| " + " | ".join(_num(r[c], 0 if c == "max_rss_mib" else 1) for c in cols) + " |")
        return "\n".join(lines)

    total = stages[stages["stage"] == "total"]
    head = ""
    if len(total):
        t = total.iloc[0]
        head = (f"All {int(t['jobs'])} jobs: {t['wall_s'] / 60:.1f} min of job wall time "
                f"({t['cpu_s'] / 60:.1f} CPU min, {t['gpu_s'] / 60:.1f} GPU min), peak memory "
                f"{_num(t['max_rss_mib'], 0)} MiB. Jobs that ran side by side overlap in wall time. CPU seconds: "
                f"the job's own count where its sidecar has one (imports included), else Snakemake's.\n\n")
        if missing:
            head += f"{missing} job(s) have no benchmark file (deleted?): not counted, blank below.\n\n"
        if jobs is not None:
            head += machine_lines(jobs)
    return ("# What the study cost\n\n" + head
            + "## Per method: the jobs a row adds to the shared ones\n\n"
            + "`synthetic`: seed selection, inversion, sampling and filtering of every weak class "
            + "the method needs; `retrain`: its runs over all seeds. Seconds.\n\n"
            + table(methods) + "\n\n"
            + ("## Per replicate: what one replicate of the adaptation costs\n\n"
               "The seed selection, token, adapters, sampling and filtering of every adapted class under one "
               "replicate's seeds (replicate 0 also makes the modes only the grids and FID use). Seconds.\n\n"
               + table(replicates) + "\n\n" if replicates is not None and len(replicates) else "")
            + "## Per stage, weak class and mode or method (seeds summed)\n\n"
            + "Seconds; peak memory in MiB (resident set of the largest job).\n\n" + table(stages) + "\n")
