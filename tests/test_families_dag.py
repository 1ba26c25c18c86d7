"""The tiny DAG's generative stages on the other generator families (issue #26):
SD 2.x's kind (v-prediction) and SDXL's, each from a copy of the tiny run with
only generator.tiny.family changed: the full DAG's plan, then the family's own
jobs (every mode of the class that gets images, and one run on its images).
A file of its own so that, under `make test`'s two workers, these runs go
beside the others."""
import json
import shutil

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, planned_jobs, snakemake
from PIL import Image
from safetensors.torch import load_file

# what the generator's change reaches; the data, baseline, analysis, seeds,
# judge and the runs without synthetic images stay as they are
GENERATIVE = {"build_generator", "textual_inversion", "coti", "token_neighbours", "lora", "lora_shared", "invert", "sample", "filter_samples", "fid", "sample_grid",
              "judge", "retrain", "retrain_ablation", "cost", "report", "all"}


# the family's own jobs: every generative stage of the class that gets images
# (its grid reads every mode's samples) and one retraining run on its images;
# the tables over them are the sd1 tiny run's code (test_workflow)
TARGETS = ["results/samples/grid/triangle.png", "results/retrain/ti_i2i/seed0/metrics.json"]


@pytest.mark.parametrize("fam", ["sd2", "sdxl"])
def test_the_family_runs_every_generative_stage(fam, tiny_run, tmp_path):
    wd0, _ = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may run in it
    cfg = yaml.safe_load(TINY.read_text())
    cfg["generator"]["tiny"]["family"] = fam
    cfg["retrain"]["seeds"] = [0]  # the family's runs once (seed 1's stay from the copy, unread)
    edited = tmp_path / f"{fam}.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    planned = planned_jobs(p.stdout + p.stderr)
    assert {r for r, _ in planned} <= GENERATIVE and "build_generator" in {r for r, _ in planned}
    retrained = sorted(w for r, w in planned if r == "retrain")
    assert "method=baseline, seed=0" not in retrained and "method=real_oracle, seed=0" not in retrained
    snakemake(wd, *TARGETS, configfiles=[edited])

    res = wd / "results"
    index = json.loads((res / "generator/tiny_sd/model_index.json").read_text())
    scheduler = json.loads((res / "generator/tiny_sd/scheduler/scheduler_config.json").read_text())
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    adapted = [c for c in weak if (res / f"inversion/{c}/learned_embeds.safetensors").exists()]
    assert sorted(adapted) == ["circle", "triangle"]  # the classes that get images (square is at its target size)
    embeds = load_file(res / "inversion/triangle/learned_embeds.safetensors")
    if fam == "sdxl":
        assert index["_class_name"] == "StableDiffusionXLPipeline" and index["text_encoder_2"][1]
        assert sorted(embeds) == ["clip_g", "clip_l"]  # one vector set per text encoder
    else:
        assert index["_class_name"] == "StableDiffusionPipeline"
        assert scheduler["prediction_type"] == "v_prediction" and list(embeds) == ["<triangle>"]
    for kind in ("lora", "ti_lora"):
        assert (res / f"lora/{kind}/triangle/pytorch_lora_weights.safetensors").stat().st_size > 0
    coti = load_file(res / "coti/triangle/learned_embeds.safetensors")  # COTI's token, on the family's encoders
    assert sorted(coti) == sorted(embeds) and any(not torch.equal(coti[k], embeds[k]) for k in coti)
    for mode in ("raw", "ti", "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie_ada", "fg_i2i"):
        samples = pd.read_csv(res / f"samples/{mode}/triangle/samples.csv")
        assert len(samples) == 4
        assert all(Image.open(wd / f).size == (32, 32) for f in samples["path"])  # the model's own size
        # the family's images, not the copied run's
        assert any(Image.open(wd / f).tobytes() != Image.open(wd0 / f).tobytes() for f in samples["path"])

    # a run trains on the family's images
    metrics = json.loads((res / "retrain/ti_i2i/seed0/metrics.json").read_text())
    assert (res / "retrain/ti_i2i/seed0/metrics.json").stat().st_mtime > (wd0 / "results/retrain/ti_i2i/seed0/metrics.json").stat().st_mtime
    assert 0 <= metrics["accuracy"] <= 1
    inversions = pd.read_csv(res / "diff_ii/triangle/inversions.csv")  # made anew under the family's token
    assert all((wd / f).read_bytes() != (wd0 / f).read_bytes() for f in inversions["inversion"])
