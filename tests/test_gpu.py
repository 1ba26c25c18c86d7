"""Each GPU job on a multi-GPU workstation takes a device of its own."""
import json
import subprocess
import sys
import time

from conftest import REPO

CLAIM = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from tibalance import gpu
t0 = time.time()
got = gpu.claim(1, lock_dir={lock_dir!r}, poll_seconds=0.1)
t1 = time.time()
print(json.dumps({{"got": got, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "t_claim": t1}}), flush=True)
time.sleep({hold})
print(json.dumps({{"t_exit": time.time()}}), flush=True)
"""


def _start(tmp_path, hold, env_devices="0,1"):
    code = CLAIM.format(repo=str(REPO), lock_dir=str(tmp_path / "locks"), hold=hold)
    env = {"CUDA_VISIBLE_DEVICES": env_devices, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def _lines(p):
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    return [json.loads(line) for line in out.splitlines()]


def test_concurrent_jobs_get_distinct_devices_and_a_third_waits(tmp_path):
    a = _start(tmp_path, hold=2.0)
    b = _start(tmp_path, hold=4.0)
    time.sleep(1.0)  # both hold their device now
    c = _start(tmp_path, hold=0.0)
    la, lb, lc = _lines(a), _lines(b), _lines(c)
    assert {la[0]["visible"], lb[0]["visible"]} == {"0", "1"}
    assert la[0]["got"] == [la[0]["visible"]]
    # the third job waited until the first one ended, then took its device
    assert lc[0]["t_claim"] >= la[1]["t_exit"]
    assert lc[0]["visible"] == la[0]["visible"]


def test_a_killed_job_frees_its_device(tmp_path):
    a = _start(tmp_path, hold=60.0, env_devices="3")
    first = json.loads(a.stdout.readline())
    assert first["visible"] == "3"
    a.kill()
    a.wait()
    b = _start(tmp_path, hold=0.0, env_devices="3")
    assert _lines(b)[0]["visible"] == "3"


def test_no_gpu_no_slurm_means_nothing_to_claim(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO))
    from tibalance import gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.claim(1, lock_dir=str(tmp_path)) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # the scheduler chose the job's GPU
    assert gpu.claim(1, lock_dir=str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []


def test_local_profile_gives_each_gpu_job_a_device(tiny_run, tmp_path):
    """Through the workflow (profiles/local, gpu=2, two visible devices): every
    GPU job claims one device before it starts and records it in its sidecar."""
    import os
    import shutil

    from conftest import snakemake

    wd0, _ = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may run in it
    weak = json.loads((wd / "results/analysis/weak_classes.json").read_text())["classes"]
    targets = [f"results/inversion/{c}/learned_embeds.safetensors" for c in weak]
    env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
    os.environ["TIBALANCE_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    try:
        snakemake(wd, "--workflow-profile", str(REPO / "profiles/local"), "--force", *targets)
    finally:
        os.environ.pop("TIBALANCE_GPU_LOCK_DIR")
        if env_before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_before
    for c in weak:
        meta = json.loads((wd / f"results/inversion/{c}/textual_inversion.meta.json").read_text())
        assert meta["cuda_visible_devices"] in {"0", "1"}
        assert f"GPU {meta['cuda_visible_devices']} claimed (of 0,1)" in (wd / f"logs/textual_inversion/{c}.log").read_text()
    assert sorted(f.name for f in (tmp_path / "locks").iterdir()) in (["gpu0.lock"], ["gpu0.lock", "gpu1.lock"])
