"""The GPU check's reduced form (the tiny architecture on CPU) runs as CI runs
it, so the script cannot rot; the cost projection's arithmetic by hand."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_checks_reduced_form_measures_every_generative_stage(tmp_path):
    env = dict(os.environ, PY=sys.executable, OUT=str(tmp_path), WHEELS=str(tmp_path / "no-wheels"))
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--reduced"], capture_output=True, text=True,
                       env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["device"] == "cpu" and bench["resolution"] == 32 and bench["unet_forward_tflop"] > 0
    assert bench["ti_step_tflop"] > bench["unet_forward_tflop"]  # forward and backward to the conditioning
    stages = {r["stage"]: r for r in bench["rows"]}
    assert set(stages) == {"ti", "lora", "sample", "i2i"}
    assert stages["ti"]["image_steps_per_s"] > 0 and stages["lora"]["s_per_step"] > 0
    assert stages["sample"]["images_per_s"] > 0 and stages["i2i"]["images_per_s"] > 0
    assert all(r["peak_rss_mib"] > 0 for r in bench["rows"])
    text = (tmp_path / "projection.md").read_text()
    assert "config.yaml, 10 weak class(es)" in text and "| textual_inversion | 1 |" in text
    assert "| sampling raw, ti, lora, ti_lora, diff_ii, coti | 6 |" in text and "CPU-hours" in text


def test_projection_arithmetic():
    from project_cost import project

    bench = {"rows": [{"stage": "ti", "batch": 4, "image_steps_per_s": 200.0, "fixed_s": 5.0},
                      {"stage": "ti", "batch": 8, "image_steps_per_s": 250.0, "fixed_s": 5.0},
                      {"stage": "lora", "batch": 4, "image_steps_per_s": 100.0, "fixed_s": 2.0},
                      {"stage": "sample", "batch": 32, "steps": 25, "images_per_s": 10.0},
                      {"stage": "i2i", "batch": 32, "steps": 25, "strength": 0.25, "images_per_s": 20.0}]}
    cfg = {"ti": {"steps": 1000, "batch_size": 4}, "lora": {"steps": 800, "batch_size": 4},
           "sampling": {"n_images": 100, "steps": 25, "strength": 0.5}, "analysis": {"k": 10}}
    rows = {r["stage"]: r for r in project(bench, cfg)}
    assert rows["textual_inversion"]["s_per_job"] == pytest.approx(1000 * 4 / 200 + 5)
    assert rows["lora (lora, ti_lora)"]["s_per_class"] == pytest.approx(2 * (800 * 4 / 100 + 2))
    assert rows["sampling raw, ti, lora, ti_lora, diff_ii, coti"]["s_per_class"] == pytest.approx(6 * 100 / 10)
    # coti's defaults: 3 cycles of 100 steps (TI's rate and fixed seconds) and 8 images drawn
    assert rows["coti"]["s_per_job"] == pytest.approx(3 * (100 * 4 / 200 + 5 + 8 * 1 / 10))
    assert rows["invert (diff_ii)"]["s_per_job"] == pytest.approx(10 * (1 / 10) / 2)  # no guidance: half an image
    assert rows["sampling ti_i2i, lora_i2i, fg_i2i"]["s_per_class"] == pytest.approx(3 * 100 * (0.5 / 0.25) / 20)
    # GeNIe: 100 images at 0.8 (genie), at 0.5 + 0.6 + 0.7 + 0.8 + 0.9 (genie_ada), from the i2i rate at 0.25
    assert rows["sampling genie"]["s_per_class"] == pytest.approx(100 * (0.8 / 0.25) / 20)
    assert rows["sampling genie_ada"]["s_per_class"] == pytest.approx(100 * (3.5 / 0.25) / 20)
    assert rows["textual_inversion"]["s_all"] == pytest.approx(10 * 25)
    # Diff-II's shared adapter (the default concept): one lora job for the 10 classes
    assert rows["lora_shared (diff_ii)"]["s_all"] == pytest.approx(800 * 4 / 100 + 2)
    assert "lora_shared (diff_ii)" not in {r["stage"] for r in project(bench, {**cfg, "diff_ii": {"concept": "ti"}})}
    assert project(bench, {**cfg, "replicates": 3}, classes=102)[0]["s_all"] == pytest.approx(102 * 3 * 25)
    every_run = {**cfg, "replicates": "seeds", "retrain": {"seeds": [0, 1, 2, 3, 4]}}  # one replicate a seed
    assert project(bench, every_run, classes=102)[0]["s_all"] == pytest.approx(102 * 5 * 25)


def test_the_reduced_form_takes_sdxls_kind_and_projects_on_its_config(tmp_path):
    """--architecture sdxl: the same stages measured on SDXL's kind (its tiny
    build on CPU here; SDXL base's sizes on the GPU), the projection read from
    config/config.yaml with config/flowers-sdxl.yaml over it."""
    env = dict(os.environ, PY=sys.executable, OUT=str(tmp_path), WHEELS=str(tmp_path / "no-wheels"))
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--architecture", "sdxl", "--reduced"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["family"] == "sdxl" and bench["model"] == "tiny-sdxl (random weights)"
    assert {r["stage"] for r in bench["rows"]} == {"ti", "lora", "sample", "i2i"}
    assert "config config.yaml + flowers-sdxl.yaml" in (tmp_path / "projection.md").read_text()
    bad = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--architecture", "sd3"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--architecture sd3 is not sd15, sd21 or sdxl" in bad.stderr


def test_project_cost_merges_its_configs_as_snakemake_does():
    from project_cost import merged

    base = {"ti": {"steps": 1000, "lr": 0.005}, "generator": {"model": "a/b"}, "seed": 0}
    assert merged(base, {"ti": {"steps": 500}, "generator": {"model": "c/d"}}) == {
        "ti": {"steps": 500, "lr": 0.005}, "generator": {"model": "c/d"}, "seed": 0}


def test_denoising_steps_per_kept_image_per_method():
    """The cost table's unet_steps_per_kept: a mode's sampling steps (text-to-image
    every step, image-to-image int(steps x strength), genie_ada every level)
    over the images its filter kept, summed over classes."""
    import pandas as pd

    from tibalance.cost import method_table, unet_steps

    assert unet_steps(["", "", ""], 10) == 30
    assert unet_steps([0.5, 0.25, 1.0], 10) == 5 + 2 + 10
    assert unet_steps([0.9, 0.9], 10, levels=[0.5, 0.6, 0.7, 0.8, 0.9]) == 2 * (5 + 6 + 7 + 8 + 9)
    jobs = pd.DataFrame([
        {"stage": "sample", "class": "a", "method": "ti_i2i", "unet_steps": 50},
        {"stage": "sample", "class": "b", "method": "ti_i2i", "unet_steps": 30},
        {"stage": "filter_samples", "class": "a", "method": "ti_i2i", "kept": 8},
        {"stage": "filter_samples", "class": "b", "method": "ti_i2i", "kept": 2},
        {"stage": "sample", "class": "a", "method": "genie_ada", "unet_steps": 350},
        {"stage": "filter_samples", "class": "a", "method": "genie_ada", "kept": 10}]).assign(
        wall_s=1.0, cpu_s=1.0, gpu_s=0.0)
    t = method_table(jobs, ["baseline", "ti_i2i", "oversample+ti_i2i", "genie_ada"]).set_index("method")
    assert t.loc["ti_i2i", "unet_steps_per_kept"] == pytest.approx(80 / 10)
    assert t.loc["oversample+ti_i2i", "unet_steps_per_kept"] == pytest.approx(8.0)  # the mode's images
    assert t.loc["genie_ada", "unet_steps_per_kept"] == pytest.approx(35.0)
    assert pd.isna(t.loc["baseline", "unet_steps_per_kept"])
