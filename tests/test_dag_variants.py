"""The DAG under other settings, each from (a copy of) the tiny run or a run of
its own: replicated adaptations, a generator pretrained here, a dataset with the
names and flaws of a real one. A file of its own so that, under `make test`'s
two workers, these runs go beside test_workflow.py's instead of after them."""
import json
import shutil

import numpy as np
import pandas as pd
import yaml
from conftest import TINY, snakemake
from conftest import job_block as _job_block
from conftest import planned_jobs as _planned_jobs
from PIL import Image


def test_replicates_remake_each_adaptation_and_seed_k_trains_on_replicate_k(tiny_run, tmp_path):
    """replicates: 2 on (a copy of) the tiny run: replicate 1 of the adapted
    class's seed selection, token, adapter, sampling and filters, and the runs
    of seed 1 that read them - nothing of replicate 0, of the runs of seed 0, of
    baseline or oversample, or of the weak class that gets no images. Replicate 1's
    token, adapter and images are its own; seed 1's runs train on them; a one-class
    edit then plans that class's two replicates and what uses them."""
    wd0, _ = tiny_run
    wd = tmp_path / "rep"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may run in it
    cfg = yaml.safe_load(TINY.read_text())
    cfg["replicates"] = 2
    cfg["retrain"]["methods"] = ["baseline", "oversample", "ti", "lora_i2i"]  # a token row and an adapter row
    cfg["ablation"] = {"methods": []}
    edited = tmp_path / "replicates.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    cls, rep = "triangle", "rep=/rep1"
    adapted = ("triangle", "circle")  # the two classes that get images (square gets none)
    assert sorted(_planned_jobs(p.stdout + p.stderr)) == sorted([j for c in adapted for j in [
        ("select_seeds", f"cls={c}, {rep}"),
        ("textual_inversion", f"cls={c}, {rep}"),
        ("lora", f"adapter=lora, cls={c}, {rep}"),  # lora_i2i samples with the lora adapter
        ("sample", f"mode=ti, cls={c}, {rep}"),
        ("sample", f"mode=lora_i2i, cls={c}, {rep}"),
        ("filter_samples", f"mode=ti, cls={c}, {rep}"),
        ("filter_samples", f"mode=lora_i2i, cls={c}, {rep}"),
        # replicate 0's grid, FID and judge show the study's modes: fewer methods here, fewer rows
        ("sample_grid", f"cls={c}"), ("fid", f"cls={c}"), ("judge", f"cls={c}"),
        ("token_neighbours", f"cls={c}")]]  # the words nearest its tokens: without coti, the TI token's only
        + [("retrain", "method=ti, seed=1"), ("retrain", "method=lora_i2i, seed=1"),
           ("report", ""), ("cost", ""), ("all", "")]), p.stdout
    block = _job_block(p.stdout, "retrain")
    assert "results/samples/ti/triangle/rep1/filtered.csv" in block and "samples/ti/triangle/filtered.csv" not in block
    snakemake(wd, configfiles=[edited])
    res = wd / "results"
    seeds0, seeds1 = (pd.read_csv(res / f"seeds/{cls}{r}/seeds.csv") for r in ("", "/rep1"))
    assert sorted(seeds1["path"]) == sorted(seeds0["path"])  # 4 training images, 5 asked: both take them all
    import torch
    from safetensors.torch import load_file
    for f in ("inversion/triangle{}/learned_embeds.safetensors", "lora/lora/triangle{}/pytorch_lora_weights.safetensors"):
        a, b = load_file(res / f.format("")), load_file(res / f.format("/rep1"))
        assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a), f  # its own seed: its own weights
    for mode in ("ti", "lora_i2i"):
        s0, s1 = (pd.read_csv(res / f"samples/{mode}/{cls}{r}/samples.csv") for r in ("", "/rep1"))
        assert len(s0) == len(s1) == 4 and all("/rep1/images/" in q for q in s1["path"])
        assert not np.array_equal(np.asarray(Image.open(wd / s0["path"][0])), np.asarray(Image.open(wd / s1["path"][0])))
    cost = (res / "tables/cost.md").read_text()
    assert "## Per replicate" in cost and "| 1 | 14 |" in cost  # replicate 1's seven jobs of each class
    verdict = (res / "tables/verdict.md").read_text()
    assert "Ranking of the adaptations over 2 replicates" in verdict
    assert "Nothing to be done" in (lambda q: q.stdout + q.stderr)(snakemake(wd, "-n", configfiles=[edited]))
    # a one-class edit of the token: both replicates' tokens and what uses them
    cfg["classes"][cls] = {"ti": {"initializer": "shape", "steps": 4}}  # circle's own settings stay
    edited.write_text(yaml.safe_dump(cfg))
    jobs = _planned_jobs((lambda q: q.stdout + q.stderr)(snakemake(wd, "-n", configfiles=[edited])))
    assert sorted(jobs) == sorted(
        [(r, f"cls={cls}{x}") for r in ("textual_inversion",) for x in ("", f", {rep}")]
        + [(r, f"mode=ti, cls={cls}{x}") for r in ("sample", "filter_samples") for x in ("", f", {rep}")]
        + [("judge", f"cls={cls}"), ("sample_grid", f"cls={cls}"), ("fid", f"cls={cls}")]  # replicate 0's
        + [("token_neighbours", f"cls={cls}")]  # replicate 0's token's nearest words
        + [("retrain", "method=ti, seed=0"), ("retrain", "method=ti, seed=1"),
           ("report", ""), ("cost", ""), ("all", "")]), jobs
    # Diff-II's adapter the classes share, one a replicate: replicate 1's from their replicate-1 seeds and tokens
    cfg["retrain"]["methods"] = ["baseline", "diff_ii"]
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    assert ("lora_shared", rep) in set(_planned_jobs(p.stdout + p.stderr))
    shared = _job_block(p.stdout, "lora_shared")
    for c in adapted:
        assert f"results/seeds/{c}/rep1/seeds.csv" in shared
        assert f"results/inversion/{c}/rep1/learned_embeds.safetensors" in shared
    assert "results/lora/ti_shared/rep1/pytorch_lora_weights.safetensors" in shared


def test_replicates_beyond_the_seeds_stop_with_one_line(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["replicates"] = 3  # two retraining seeds
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "-n", configfiles=[bad], check=False)
    assert p.returncode != 0
    assert "replicates: 3 but retrain.seeds lists 2 seeds" in p.stderr and "Traceback" not in p.stderr


def test_pretrained_generator_through_the_dag(tiny_run, tmp_path):
    """generator.build: pretrain adds three jobs: pretraining (VAE, then UNet) on the majority
    classes (data already there: nothing upstream reruns) and the baseline's
    accuracy on its images; everything else of the run stays as it was."""
    import shutil

    wd0, _ = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may run in it
    cfg = yaml.safe_load(TINY.read_text())
    cfg["generator"] = {"build": "pretrain", "tiny": {"resolution": 32, "vae_channels": [16, 32]},
                        "pretrain": {"vae_steps": 20, "unet_steps": 30, "batch_size": 16,
                                     "quality_images": 4, "quality_steps": 2}}
    edited = tmp_path / "pretrain.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    target = "results/tables/generator_quality.md"
    p = snakemake(wd, "-n", target, configfiles=[edited])
    assert sorted(r for r, _ in _planned_jobs(p.stdout + p.stderr)) == ["generator_quality", "pretrain_generator",
                                                                      "pretrain_vae"]
    snakemake(wd, target, configfiles=[edited])
    q = pd.read_csv(wd / "results/tables/generator_quality.csv")
    learned = json.loads((wd / "results/generator/pretrain_generator.meta.json").read_text())["classes"]
    assert "triangle" not in learned  # the rare class (10% of its images) is unknown to it
    assert list(q["class"]) == learned + ["all (mean)"]
    assert q["accuracy"].between(0, 1).all() and (q["n"].iloc[:-1] == 4).all()
    assert (wd / "results/generator/pretrained_sd/model_index.json").exists()
    assert "Chance level" in (wd / target).read_text()
    # an edit of the UNet phase's settings reruns the UNet job, not the VAE's
    cfg["generator"]["pretrain"]["unet_steps"] = 31
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", target, configfiles=[edited])
    assert sorted(r for r, _ in _planned_jobs(p.stdout + p.stderr)) == ["generator_quality", "pretrain_generator"]


HELD_OUT = {"Sword Lily": "circle", "pink-primrose": "square", "Löwenzahn": "cross", "Rare One": "triangle"}


def test_held_out_style_dataset_goes_through_the_dag_with_display_names(tmp_path):
    """Class folders with spaces, capitals, a hyphen and a non-ASCII letter, one
    class with three images, one unreadable file: the whole DAG runs, and every
    table names the classes as their folders do (slugs only in paths)."""
    from tibalance.sources import draw_synthetic

    root = tmp_path / "flowers"
    rng = np.random.default_rng(0)
    for name, shape in HELD_OUT.items():
        (root / name).mkdir(parents=True)
        for i in range(3 if name == "Rare One" else 24):
            Image.fromarray(draw_synthetic(shape, rng, 32)).save(root / name / f"{i:02d}.png")
    (root / "Sword Lily" / "broken.png").write_bytes(b"\x89PNG not an image")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"] = {"source": "imagefolder", "root": str(root), "val_fraction": 0.25, "test_fraction": 0.25}
    cfg.pop("classes")  # the tiny study's per-class settings name its own classes
    cfg["analysis"] = {"strategy": "explicit", "classes": ["Rare One"]}  # one weak class: a short DAG
    cfg["retrain"] = {"methods": ["baseline", "lora"], "seeds": [0]}
    cfg["classifier"]["epochs"] = 2  # the weak class is named: the baseline's accuracy is not what is tested
    cfg["ablation"] = {"methods": []}
    cfg["judge"] = {"train_per_class": 0}
    config = tmp_path / "held_out.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    wd = tmp_path / "run"
    snakemake(wd, configfiles=[config])
    res = wd / "results"

    names = json.loads((res / "data/classes.json").read_text())["names"]
    assert names == {"sword_lily": "Sword Lily", "pink_primrose": "pink-primrose", "lowenzahn": "Löwenzahn",
                     "rare_one": "Rare One"}
    assert list(pd.read_csv(res / "data/skipped.csv").path) == [str(root / "Sword Lily" / "broken.png")]
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    assert weak == ["rare_one"]
    analysis = pd.read_csv(res / "analysis/per_class.csv")  # the baseline's per-class table
    assert list(analysis["class"]) == [names[s] for s in analysis["slug"]] and set(analysis["slug"]) == set(names)
    per_class = pd.read_csv(res / "tables/per_class.csv")
    assert sorted(per_class["class"]) == sorted(names[c] for c in weak)
    summary = pd.read_csv(res / "tables/summary.csv")
    assert list(summary.method) == ["baseline", "lora"]
    for cls in weak:
        assert f"acc_{names[cls]}_mean" in summary.columns and f"delta_{names[cls]}_mean" in summary.columns
    cost = pd.read_csv(res / "tables/cost.csv", keep_default_na=False)
    assert set(cost["class"]) - {""} == {names[c] for c in weak}
    for table in ("summary.md", "per_class.md", "cost.md"):
        text = (res / "tables" / table).read_text()
        assert "Rare One" in text and "rare_one" not in text, table
    assert (res / "lora/lora/rare_one/pytorch_lora_weights.safetensors").exists()  # slugs in paths


def test_no_weak_class_stops_at_the_analysis_with_one_line(tmp_path):
    """analysis.strategy threshold below every class (and no include): the run
    stops at the analysis with one line naming the setting, keeps what it
    computed (the baseline), and never starts an adaptation or retraining."""
    overlay = tmp_path / "none.yaml"
    overlay.write_text("analysis:\n  strategy: threshold\n  threshold: 0.0\n  include: []\n")
    wd = tmp_path / "wd"
    p = snakemake(wd, configfiles=[TINY, overlay], check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "tibalance: analysis: no class is weak under strategy 'threshold' on val (lowest f1: " in out, out[-3000:]
    assert (wd / "results/baseline/model.pt").exists()
    # nothing that reads the weak classes ran (frozen_features, which does not, may have)
    assert not list((wd / "results").glob("retrain/*/seed*/metrics.json"))
    assert not (wd / "results/inversion").exists() and not (wd / "results/seeds").exists()


def test_diff_ii_auto_shares_an_adapter_only_between_classes(tiny_run, tmp_path):
    """diff_ii.concept auto (the default): the tiny run's two adapted classes
    share one LoRA adapter (rule lora_shared ran, both classes' inversions read
    it); the same study with one class getting images samples on its token
    alone: no lora_shared job, its inversion and diff_ii samples remade on the
    token, nothing of the other modes."""
    wd0, _ = tiny_run
    assert (wd0 / "results/lora/ti_shared/pytorch_lora_weights.safetensors").exists()
    wd = tmp_path / "one"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    cfg = yaml.safe_load(TINY.read_text())
    cfg["classes"]["circle"] = {"sampling": {"n_images": 0}}  # circle gets no images: triangle alone is adapted
    edited = tmp_path / "one.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    jobs = _planned_jobs(p.stdout + p.stderr)
    assert not [j for j in jobs if j[0] == "lora_shared"]
    assert ("invert", "cls=triangle") in jobs and ("sample", "mode=diff_ii, cls=triangle") in jobs
    block = _job_block(p.stdout, "invert") + "\n" + _job_block(p.stdout, "sample")
    inputs = [line for line in block.splitlines() if line.strip().startswith("input:")]
    assert inputs and not [line for line in inputs if "ti_shared" in line]  # the token alone
    assert "'concept': 'ti'" in block  # its params say so (they were the shared adapter's)
    assert not [j for j in jobs if j[0] == "sample" and "cls=triangle" in j[1] and "diff_ii" not in j[1]]
