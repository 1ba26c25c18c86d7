"""The DAG through a real SLURM controller (Debian's slurm-wlm), via the
executor plugin and profiles/slurm — the way a user sends it to a cluster.

Runs wherever a single-node SLURM can be started (root, slurm-wlm and munge
installed); on CI (CI=true) it must run, so a missing SLURM fails there."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import slurm_cluster
import yaml
from conftest import REPO, TINY, snakemake

PROFILE = REPO / "profiles" / "slurm"
# what a cluster without accounting needs; the rest comes from the profile
SLURM_ARGS = ["--workflow-profile", str(PROFILE), "--slurm-no-account", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", "--max-threads", "1"]
LOCAL_RULES = {"all", "analyse_confusion", "sample_grid", "report", "cost"}
GPU_RULES = {"textual_inversion", "coti", "lora", "invert", "sample", "train_baseline", "retrain", "retrain_ablation", "fid",
             "train_judge"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM test must run on CI: {why}")
        pytest.skip(why)
    c = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


def _jobs(log: str):
    """{snakemake jobid: rule} and {snakemake jobid: SLURM job id} from a run's output."""
    rules, slurm = {}, {}
    current = None
    for line in log.splitlines():
        m = re.match(r"^(local)?(rule|checkpoint) (\w+):$", line)
        if m:
            current = (m.group(3), bool(m.group(1)))
            continue
        m = re.match(r"^\s+jobid: (\d+)$", line)
        if m and current:
            rules[m.group(1)] = current
            current = None
            continue
        m = re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", line)
        if m:
            slurm.setdefault(m.group(1), []).append(m.group(2))
    return rules, slurm


# A short chain of the tiny DAG through sbatch, on a copy of the local tiny run
# that lost one mode's samples of the rare class, one retraining run on them and
# the class's grid: the sampling job and the run (GPU rules), the filter (CPU)
# and the grid (a local rule). The scancel test then sends a textual inversion,
# the requeue test a retraining run. What the remade files hold is compared
# byte for byte with the local run's.
MODE, CLS = "ti_i2i", "triangle"
SLURM_TARGETS = [f"results/retrain/{MODE}/seed0/metrics.json", f"results/samples/grid/{CLS}.png"]
REMADE = [f"results/samples/{MODE}/{CLS}", f"results/retrain/{MODE}/seed0"]


@pytest.fixture(scope="module")
def slurm_run(cluster, tiny_run, tmp_path_factory):
    wd0, _ = tiny_run
    wd = tmp_path_factory.mktemp("tiny_slurm") / "run"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may read it
    for gone in REMADE:
        shutil.rmtree(wd / gone)
    (wd / SLURM_TARGETS[1]).unlink()
    p = snakemake(wd, *SLURM_ARGS, *SLURM_TARGETS, cores=None)
    return wd, p


def test_every_non_local_job_goes_through_sbatch(cluster, slurm_run):
    wd, p = slurm_run
    rules, slurm = _jobs(p.stdout + p.stderr)
    assert sorted(r for r, _ in rules.values()) == ["filter_samples", "retrain", "sample", "sample_grid"]
    for jobid, (rule, local) in rules.items():
        if rule in LOCAL_RULES:
            assert local and jobid not in slurm, f"{rule} should run in the main process"
            continue
        assert jobid in slurm, f"job {jobid} ({rule}) was not submitted through sbatch"
        for sid in slurm[jobid]:
            _assert_submitted(cluster.job(sid), rule)
    # the jobs themselves ran inside SLURM: their sidecars name the SLURM job
    submitted = {sid for sids in slurm.values() for sid in sids}
    metas = [m for gone in REMADE for m in (wd / gone).rglob("*.meta.json")]
    assert len(metas) == 3  # sample, filter_samples, retrain
    for meta in metas:
        assert yaml.safe_load(meta.read_text())["slurm_job_id"] in submitted, meta


def _assert_submitted(rec: dict, rule: str, state: str = "COMPLETED") -> None:
    """A SLURM job record of `rule`: named for it, finished, requeue-able, a GPU
    asked for exactly when the rule needs one (profiles/slurm)."""
    assert rec["Comment"].startswith(f"rule_{rule}"), rec["Comment"]
    assert rec["JobState"] == state, (rule, rec["JobState"])
    assert rec["Requeue"] == "1", f"{rule}: not requeue-able (the profile's --requeue)"
    gres = rec.get("TresPerJob", "")
    if rule in GPU_RULES:
        assert "gpu:1" in gres, f"{rule} asked for no GPU: {gres!r}"
    else:
        assert "gpu" not in gres, f"{rule} asked for a GPU: {gres!r}"


# deterministic outputs: the same on a workstation and on the cluster
COMPARED = [f"samples/{MODE}/{CLS}/samples.csv", f"samples/{MODE}/{CLS}/filtered.csv",
            f"samples/{MODE}/{CLS}/images/*", f"retrain/{MODE}/seed0/metrics.json",
            f"retrain/{MODE}/seed0/predictions.csv"]


def test_results_match_a_local_run(slurm_run, tiny_run):
    wd, _ = slurm_run
    local, _ = tiny_run
    n = 0
    for pattern in COMPARED:
        there = sorted(p.relative_to(wd / "results") for p in (wd / "results").glob(pattern))
        assert there, pattern
        for rel in there:
            assert (local / "results" / rel).read_bytes() == (wd / "results" / rel).read_bytes(), f"{rel} differs"
            n += 1
    assert n >= 8


def _checkpoint_step(path: Path):
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    except Exception:  # being written
        return None


def test_scancelled_inversion_resumes_from_its_checkpoint(cluster, slurm_run, tmp_path):
    wd, _ = slurm_run
    cls = "triangle"
    overlay = tmp_path / "longer_ti.yaml"
    overlay.write_text(yaml.safe_dump({"classes": {cls: {"ti": {"steps": 100, "checkpoint_every": 5}}}}))
    target = f"results/inversion/{cls}/learned_embeds.safetensors"
    ckpt = wd / "results" / "inversion" / cls / "resume" / "checkpoint.pt"
    args = [*SLURM_ARGS, "--retries", "0", target]

    result = {}
    t = threading.Thread(target=lambda: result.update(
        p=snakemake(wd, *args, configfiles=(TINY, overlay), cores=None, check=False)))
    t.start()
    deadline = time.time() + 300
    step = None
    while time.time() < deadline and step is None:
        time.sleep(0.5)
        if ckpt.exists():
            step = _checkpoint_step(ckpt)
    assert step is not None, "no checkpoint appeared"
    running = [j for j, state, comment in cluster.queue() if comment.startswith("rule_textual_inversion")]
    assert len(running) == 1, cluster.queue()
    cluster.scancel(running[0])
    t.join(timeout=300)
    p = result["p"]
    assert p.returncode != 0, "the cancelled job should fail the run"
    assert cluster.job(running[0])["JobState"] == "CANCELLED"
    _assert_submitted(cluster.job(running[0]), "textual_inversion", "CANCELLED")  # a GPU rule's request, as the others'

    killed_at = _checkpoint_step(ckpt)
    assert killed_at is not None and 5 <= killed_at < 100
    assert not (wd / target).exists()

    p = snakemake(wd, *args, configfiles=(TINY, overlay), cores=None)
    meta = yaml.safe_load((wd / "results" / "inversion" / cls / "textual_inversion.meta.json").read_text())
    assert meta["resumed_from_step"] >= killed_at > 0
    assert meta["steps"] == 100
    log = (wd / "logs" / "textual_inversion" / f"{cls}.log").read_text()
    assert f"at step {meta['resumed_from_step']}" in log
    loss = pd.read_csv(wd / "results" / "inversion" / cls / "loss.csv")
    assert list(loss["step"]) == list(range(1, 101))
    assert not ckpt.exists()  # finished: removed


def test_a_requeued_retraining_run_goes_on_from_its_epoch_checkpoint(cluster, slurm_run, tmp_path):
    """SLURM requeues a retraining run (what a preemption or a node failure does
    with the profile's --requeue) after it saved an epoch: the same SLURM job
    runs again, Snakemake waits for it without resubmitting (retries 0) and the
    run resumes after its saved epoch (that a resumed run ends at the weights of
    one never stopped: test_classifier)."""
    wd, _ = slurm_run
    overlay = tmp_path / "longer_retrain.yaml"
    overlay.write_text(yaml.safe_dump({"retrain": {"classifier": {"epochs": 20}}}))
    target = "results/retrain/baseline/seed0/metrics.json"
    ckpt = wd / "results" / "retrain" / "baseline" / "seed0" / "resume" / "checkpoint.pt"
    args = [*SLURM_ARGS, "--retries", "0", target]
    result = {}
    t = threading.Thread(target=lambda: result.update(
        p=snakemake(wd, *args, configfiles=(TINY, overlay), cores=None, check=False)))
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.2)
    assert ckpt.exists(), "no epoch checkpoint appeared"
    running = [j for j, state, comment in cluster.queue() if comment.startswith("rule_retrain")]
    assert len(running) == 1, cluster.queue()
    cluster.requeue(running[0])
    t.join(timeout=600)
    p = result["p"]
    assert p.returncode == 0, p.stderr[-3000:]
    rules, slurm = _jobs(p.stdout + p.stderr)
    (jobid,) = [j for j, (rule, _) in rules.items() if rule == "retrain"]
    assert slurm[jobid] == [running[0]]  # one submission: SLURM ran it again, not Snakemake
    assert int(cluster.job(running[0])["Restarts"]) >= 1
    _assert_submitted(cluster.job(running[0]), "retrain")
    log = (wd / "logs" / "retrain" / "baseline" / "seed0.log").read_text()
    assert "resuming from" in log and "after epoch" in log, log[-2000:]
    assert (wd / target).exists() and not ckpt.exists()


def test_dry_run_of_the_real_config_lists_gpu_requests(tmp_path):
    """`snakemake --workflow-profile profiles/slurm -n` on config/config.yaml:
    before the weak classes are known the baseline is the GPU job; once the
    confusion checkpoint is resolved the TI, LoRA and sampling jobs show theirs."""
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--workflow-profile", str(PROFILE), "-n"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = _dry_run_jobs(p.stdout + p.stderr)
    assert "gpu=1" in jobs["train_baseline"][0]
    assert "gpu" not in jobs["prepare_data"][0]
    # the dataset and the ImageNet weights are downloaded by local rules before
    # the jobs that read them (data.download: true, classifier.pretrained: true)
    out = p.stdout + p.stderr
    marker, resnet = "resources/flowers102/.tibalance-fetched.json", "resources/weights/resnet50-11ad3fa6.pth"
    assert re.search(r"^(?:local)?rule fetch_dataset:\n    output: " + re.escape(marker), out, re.M)
    assert re.search(r"^(?:local)?rule fetch_weights:\n    output: " + re.escape(resnet), out, re.M)
    assert marker in _job_inputs(out, "prepare_data")[0] and resnet in _job_inputs(out, "train_baseline")[0]
    assert all("gpu" not in r for r in jobs.get("fetch_dataset", []) + jobs.get("fetch_weights", []))
    fetch_rules = (REPO / "rules" / "fetch.smk").read_text()
    for rule in ("fetch_dataset", "fetch_weights"):
        block = re.search(rf"^    rule {rule}:\n((?:        .*\n)+)", fetch_rules, re.M)
        assert block and "localrule: True" in block[1], rule

    # resolve the checkpoint as a finished analysis would have left it
    weak = ["sword_lily", "pink_primrose"]
    res = tmp_path / "results"
    files = {"data/manifest.csv": "path,label,split\n", "data/classes.json": "{}", "data/skipped.csv": "path,reason\n",
             "data/prepare_data.meta.json": "{}", "baseline/model.pt": "", "baseline/predictions.csv": "",
             "baseline/metrics.json": "{}", "baseline/train_baseline.meta.json": "{}",
             "analysis/per_class.csv": "", "analysis/per_class.md": "", "analysis/per_class.html": "",
             "analysis/confusion.png": "",
             "analysis/weak_classes.json": json.dumps({"classes": weak})}
    fetched = {marker: "{}", resnet: ""}
    for i, (rel, text) in enumerate([(tmp_path / k, v) for k, v in fetched.items()] +
                                    [(res / k, v) for k, v in files.items()]):
        rel.parent.mkdir(parents=True, exist_ok=True)
        rel.write_text(text)
        os.utime(rel, (1e9 + i, 1e9 + i))  # in DAG order: nothing upstream is newer
    # (no benchmark files: the cost table reads them where they exist, never reruns a job for one)
    # these files have no Snakemake provenance records: judge them by mtime
    p = subprocess.run(cmd + ["--rerun-triggers", "mtime"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = _dry_run_jobs(p.stdout + p.stderr)
    assert len(jobs["textual_inversion"]) == len(weak)
    # one sampling job per weak class and mode: raw prompts, the token, and the
    # real-image-guided and LoRA modes where a retraining method uses them
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    extra = [m for m in ("ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti") if m in cfg["retrain"]["methods"]]
    modes = ["raw", "ti"] + extra
    assert len(jobs["sample"]) == len(modes) * len(weak)
    assert len(jobs["filter_samples"]) == len(modes) * len(weak)
    # one LoRA job per weak class and adapter kind (lora: the class name; ti_lora: on its token)
    kinds = {"lora": "lora", "lora_i2i": "lora", "ti_lora": "ti_lora"}
    kinds = {kinds[m] for m in extra if m in kinds}
    assert kinds, "config/config.yaml's study has no LoRA method"
    assert len(jobs.get("lora", [])) == len(kinds) * len(weak)
    # diff_ii's inversions: one job per weak class, on a GPU
    assert len(jobs.get("invert", [])) == ("diff_ii" in extra) * len(weak)
    assert len(jobs.get("coti", [])) == ("coti" in extra) * len(weak)  # COTI's token: one job per weak class
    # the hub pipeline is fetched once, before the jobs that open it, asking for no
    # GPU; the Snakefile declares it local (the main process: a login node with internet)
    out = p.stdout + p.stderr
    assert len(re.findall(r"^(local)?rule fetch_generator:$", out, re.M)) == 1
    fetch = re.search(r"^(?:local)?rule fetch_generator:\n    output: (\S+)", out, re.M)[1]
    assert fetch.startswith("resources/generator/") and fetch.endswith("/model_index.json")
    ti_inputs = re.findall(r"^(?:local)?rule textual_inversion:\n    input: (.*)$", out, re.M)
    assert len(ti_inputs) == len(weak) and all(fetch in i for i in ti_inputs)
    assert "fetch_generator" not in jobs or all("gpu" not in r for r in jobs["fetch_generator"])
    fetch_rule = re.search(r"^    rule fetch_generator:\n((?:        .*\n)+)", (REPO / "rules" / "generator.smk").read_text(), re.M)
    assert fetch_rule and "localrule: True" in fetch_rule[1]
    for rule in ("textual_inversion", "lora", "invert", "coti", "sample", "retrain", "fid"):
        assert all("gpu=1" in r for r in jobs[rule]), rule
    # FID's Inception weights: fetched once, an input of every FID job
    inception = "resources/weights/weights-inception-2015-12-05-6726825d.pth"
    assert re.findall(r"^(?:local)?rule fetch_weights:\n    output: (\S+)", out, re.M) == [inception]
    assert len(_job_inputs(out, "fid")) == len(weak) and all(inception in i for i in _job_inputs(out, "fid"))
    assert all("gpu" not in r for r in jobs["select_seeds"])
    assert "train_baseline" not in jobs and "prepare_data" not in jobs


def _job_inputs(text: str, rule: str) -> list[str]:
    """The input line of every job of `rule` in a dry run's output."""
    return re.findall(rf"^(?:local)?(?:rule|checkpoint) {rule}:\n    input: (.*)$", text, re.M)


def _dry_run_jobs(text: str) -> dict[str, list[str]]:
    """{rule: [resources line of each job]} from a dry run's output."""
    jobs, rule = {}, None
    for line in text.splitlines():
        m = re.match(r"^(local)?(rule|checkpoint) (\w+):$", line)
        if m:
            rule = m.group(3)
        elif rule and line.strip().startswith("resources:"):
            jobs.setdefault(rule, []).append(line)
            rule = None
    return jobs
