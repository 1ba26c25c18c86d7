"""The demo's shipped generator (workflow/resources/demo_generator): what
tibalance.ship writes, that the stages open it in fp32, and that the demo's DAG
reads it instead of pretraining one."""
import json
import re
import subprocess

import pytest
import torch
from conftest import FMNIST, REPO, job_block, planned_jobs, snakemake
from safetensors import safe_open

from tibalance.generator import load_pipeline, shipped_or_given
from tibalance.ship import SIDECAR, ship

SHIPPED = REPO / "workflow" / "resources" / "demo_generator"
DEMO_LEARNED = ["t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag", "ankle_boot"]


def _dtypes(folder):
    out = set()
    for f in folder.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            out |= {st.get_slice(k).get_dtype() for k in st.keys()}
    return out


def test_ship_writes_half_precision_that_loads_as_fp32(tiny_sd, tmp_path):
    meta = tmp_path / "pretrain_generator.meta.json"
    meta.write_text(json.dumps({"code": "abc1234", "cpu": "Test CPU", "cpu_capability": "AVX2", "cpu_native_bf16": False,
                                "classes": ["circle", "square"], "captions": ["a photo of a circle", "a photo of a square"],
                                "images": 80, "wall_seconds": 1.5}))
    out = tmp_path / "shipped"
    ship(tiny_sd, str(meta), str(out), "make demo-generator")
    assert _dtypes(out) == {"F16"}  # every weight file half precision
    side = json.loads((out / SIDECAR).read_text())
    assert side["made_by"]["commit"] == "abc1234" and side["made_by"]["cpu"] == "Test CPU"
    assert side["made_by"]["command"] == "make demo-generator" and side["classes"] == ["circle", "square"]
    a, b = load_pipeline(tiny_sd), load_pipeline(str(out))
    for name in ("unet", "vae", "text_encoder"):
        pa, pb = dict(getattr(a, name).named_parameters()), dict(getattr(b, name).named_parameters())
        assert pa.keys() == pb.keys()
        for k in pa:  # loaded in fp32 (not transformers' saved dtype), equal to the original rounded to fp16
            assert pb[k].dtype == torch.float32, (name, k)
            assert torch.equal(pb[k], pa[k].half().float()), (name, k)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped generator")
def test_the_shipped_demo_generator_names_how_it_was_made():
    side = json.loads((SHIPPED / SIDECAR).read_text())
    made = side["made_by"]
    assert made["command"] == "make demo-generator"
    assert re.fullmatch(r"[0-9a-f]{7,40}", made["commit"]) and made["cpu"] and made["cpu_capability"]
    if (REPO / ".git").exists():  # a commit of this repository's history
        assert subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", made["commit"] + "^{commit}"]).returncode == 0
    assert side["classes"] == DEMO_LEARNED  # never shirt, the demo's rare class
    assert _dtypes(SHIPPED) == {"F16"}
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 20e6
    pipe = load_pipeline(str(SHIPPED))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.unet.config.sample_size * 4 == 32
    assert pipe.tokenizer.vocab_size == 49408  # the real CLIP vocabulary


def test_a_relative_generator_folder_falls_back_to_the_workflows_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert shipped_or_given("mine", str(REPO)) == "mine"  # the working directory's first
    assert shipped_or_given("workflow/resources/demo_generator", str(REPO)) == str(SHIPPED)
    assert shipped_or_given("owner/name", str(REPO)) == "owner/name"  # a hub id stays one


@pytest.mark.skipif(not FMNIST.exists() or not SHIPPED.exists(), reason="no Fashion-MNIST or no shipped generator")
def test_the_demo_reads_the_shipped_generator_and_pretrains_nothing(tmp_path):
    """config/demo.yaml from another working directory (as make demo-lt runs):
    no pretraining or building job; the generator's quality is measured on the
    shipped folder with the classes its sidecar says it learned."""
    p = snakemake(tmp_path, "-n", configfiles=[REPO / "config/demo.yaml"])
    rules = {r for r, _ in planned_jobs(p.stdout + p.stderr)}
    assert "generator_quality" in rules and "train_baseline" in rules
    assert not rules & {"pretrain_vae", "pretrain_generator", "build_generator"}
    block = job_block(p.stdout, "generator_quality")
    assert f"{SHIPPED}/model_index.json" in block and f"{SHIPPED}/{SIDECAR}" in block
    # make demo-generator's overlay: the two pretraining jobs, measured the same way
    p = snakemake(tmp_path, "-n", "results/tables/generator_quality.md",
                  configfiles=[REPO / "config/demo.yaml", REPO / "config/demo-generator.yaml"])
    rules = {r for r, _ in planned_jobs(p.stdout + p.stderr)}
    assert {"pretrain_vae", "pretrain_generator", "generator_quality"} <= rules
    assert "results/generator/pretrained_sd/model_index.json" in job_block(p.stdout, "generator_quality")
