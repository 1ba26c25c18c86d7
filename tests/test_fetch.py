"""Downloads happen in local rules (the login node); the jobs run offline.
Tested against a stand-in hub on the loopback address serving the tiny pipeline."""
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, snakemake
from hub_stand_in import serve, serve_static
from snakemake.iocontainers import Namedlist

from tibalance import smk
from tibalance.classifier import build_model
from tibalance.fetch import (
    MIRROR,
    classifier_url,
    dataset_marker,
    fetch_dataset,
    fetch_pipeline,
    fetch_url,
    fetched_folder,
    file_name,
    inception_url,
    weights_to_fetch,
)
from tibalance.generator import load_pipeline
from tibalance.util import TibalanceError


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A download mirror on the loopback address holding resnet18's ImageNet
    weights file (random weights of the right shapes) at torchvision's path."""
    from urllib.parse import urlsplit

    import torch
    from torchvision.models import resnet18

    folder = tmp_path_factory.mktemp("mirror")
    path = folder / urlsplit(classifier_url("resnet18")).path.lstrip("/")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    state = resnet18(num_classes=1000).state_dict()
    torch.save(state, path)
    server, url = serve_static(folder)
    yield url, state
    server.shutdown()


@pytest.fixture(scope="module")
def hub(tiny_sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(tiny_sd, folder)
    (folder / "v1-5-pruned.ckpt").write_bytes(b"a single-file checkpoint the pipeline does not need")
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"an fp16 copy")
    server, url = serve(folder, "owner/tiny-sd")
    yield url
    server.shutdown()


def test_fetch_downloads_one_pipeline_that_loads(hub, tmp_path):
    out = tmp_path / "sd"
    fetch_pipeline("owner/tiny-sd", str(out), endpoint=hub)
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (out / "v1-5-pruned.ckpt").exists() and not list(out.rglob("*.fp16.*"))  # only what it loads
    load_pipeline(str(out))
    assert fetched_folder("stable-diffusion-v1-5/stable-diffusion-v1-5") == \
        "resources/generator/stable-diffusion-v1-5--stable-diffusion-v1-5"
    with pytest.raises(TibalanceError, match=r"generator.model: could not fetch hub id 'owner/nope'"):
        fetch_pipeline("owner/nope", str(tmp_path / "nope"), endpoint=hub)


def test_a_hub_generator_is_fetched_by_a_local_rule_and_jobs_run_offline(hub, mirror, tmp_path, monkeypatch):
    """generator.model a hub id and an ImageNet-pretrained classifier: the local
    rules fetch_generator and fetch_weights download them from the stand-ins;
    every other job runs with TIBALANCE_NO_NETWORK (any connection fails, the
    loopback address included) and the hubs' offline switches, so the baseline,
    the seed selection and the inversion would fail had they touched the network."""
    monkeypatch.setenv("TIBALANCE_HF_ENDPOINT", hub)
    monkeypatch.setenv(MIRROR, mirror[0])
    monkeypatch.setenv(smk.NO_NETWORK, "1")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["generator"] = {"model": "owner/tiny-sd"}
    cfg["classifier"]["pretrained"] = True
    cfg["classifier"]["epochs"] = 1  # what is tested is where the weights come from, not the accuracy
    cfg["analysis"] = {"strategy": "explicit", "classes": ["triangle"]}
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "run"
    p = snakemake(wd, "results/inversion/triangle/learned_embeds.safetensors", configfiles=[config])
    out = p.stdout + p.stderr
    assert "localrule fetch_generator:" in out and "localrule fetch_weights:" in out
    weights = wd / "resources/weights" / file_name(classifier_url("resnet18"))
    assert weights.is_file()
    assert f"ImageNet weights of resnet18 from {weights.relative_to(wd)}" in (wd / "logs/train_baseline.log").read_text()
    assert (wd / "resources/generator/owner--tiny-sd/model_index.json").is_file()
    log = (wd / "logs/textual_inversion/triangle.log").read_text()
    assert "steps" in log
    meta = json.loads((wd / "results/inversion/triangle/textual_inversion.meta.json").read_text())
    assert meta["steps"] == 6


def test_the_weights_urls_are_torchvisions_and_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from tibalance.classifier import ARCHS

    assert {a: classifier_url(a) for a in ARCHS} == {a: w.url for a, (_, w) in ARCHS.items()}
    assert inception_url() == URL_INCEPTION_V3


def test_weights_to_fetch_names_what_the_study_downloads():
    real = yaml.safe_load((TINY.parents[2] / "config" / "config.yaml").read_text())
    got = weights_to_fetch({**real, "judge": {"train_per_class": 0}})
    assert set(got) == {"resnet50-11ad3fa6.pth", "weights-inception-2015-12-05-6726825d.pth"}
    assert all(file_name(u) == f for f, u in got.items())
    demo = yaml.safe_load((TINY.parents[2] / "config" / "demo.yaml").read_text())
    assert weights_to_fetch({**demo, "judge": {"train_per_class": 500}}) == {}  # nothing to download
    # a judge recipe of its own that starts from ImageNet (resnet18) adds its file
    judged = {**demo, "judge": {"train_per_class": 500, "classifier": {"pretrained": True}}}
    assert set(weights_to_fetch(judged)) == {file_name(classifier_url("resnet18"))}
    # a local Inception file given in the config is not downloaded
    assert weights_to_fetch({**demo, "metrics": {"networks": ["inception"], "inception_weights": "/x.pth"}}) == {}
    assert dataset_marker(real["data"]) == "resources/flowers102/.tibalance-fetched.json"
    assert dataset_marker(demo["data"]) is None


def test_fetch_weights_downloads_from_a_mirror_and_the_classifier_starts_from_them(mirror, tmp_path, monkeypatch):
    url, state = mirror
    monkeypatch.setenv(MIRROR, url)
    out = tmp_path / "resources/weights" / file_name(classifier_url("resnet18"))
    fetch_url(classifier_url("resnet18"), str(out))
    model = build_model("resnet18", 3, pretrained=True, weights_file=str(out))
    assert torch_equal(model.conv1.weight, state["conv1.weight"]) and model.fc.out_features == 3
    # a file that is not there: one line naming the URL and where to put it, no partial file
    bad = tmp_path / "resources/weights/resnet50-11ad3fa6.pth"
    with pytest.raises(TibalanceError, match=r"fetch_weights: could not download http://127\.0\.0\.1:\d+/models/resnet50"):
        fetch_url(classifier_url("resnet50"), str(bad))
    assert not bad.exists() and not list(bad.parent.glob("*.part"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(TibalanceError, match=r"junk.pth: not the ImageNet weights of resnet18"):
        build_model("resnet18", 3, pretrained=True, weights_file=str(junk))


def torch_equal(a, b):
    import torch

    return torch.equal(a.detach(), b)


def _fake_job(tmp_path, **inputs):
    """What smk.run needs of a Snakemake job object."""
    from types import SimpleNamespace

    return SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="sample",
                           resources=SimpleNamespace(gpu=0), input=Namedlist(fromdict=inputs))


def _isolate(monkeypatch):
    """smk.run changes the process (socket guard, stderr, the hubs' offline
    switches, logging): put everything back after the test."""
    import socket
    import sys

    from tibalance.smk import OFFLINE

    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)
    monkeypatch.setattr(socket.socket, "connect_ex", socket.socket.connect_ex)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    for k in OFFLINE:
        monkeypatch.delenv(k, raising=False)


def test_a_job_that_touches_the_network_stops_with_one_line(mirror, tmp_path, monkeypatch):
    """Every job but the fetch rules fails on its first connection attempt (the
    loopback address included), naming the job; TIBALANCE_NO_NETWORK=0 lifts that."""
    import urllib.request

    url, _ = mirror
    _isolate(monkeypatch)
    monkeypatch.delenv(smk.NO_NETWORK, raising=False)  # the default
    with pytest.raises(SystemExit):
        smk.run(_fake_job(tmp_path), lambda: urllib.request.urlopen(url + "/").read())
    assert "tibalance: sample: tried to reach 127.0.0.1:" in (tmp_path / "job.log").read_text()


def test_no_network_0_lets_jobs_connect(mirror, tmp_path, monkeypatch):
    import urllib.request

    url, _ = mirror
    _isolate(monkeypatch)
    monkeypatch.setenv(smk.NO_NETWORK, "0")
    seen = []
    smk.run(_fake_job(tmp_path), lambda: seen.append(urllib.request.urlopen(url + "/models/resnet18-f37072fd.pth").status))
    assert seen == [200]


def test_fetch_rules_may_reach_the_network(mirror, tmp_path, monkeypatch):
    url, _ = mirror
    _isolate(monkeypatch)
    monkeypatch.setenv(smk.NO_NETWORK, "1")
    monkeypatch.setenv(MIRROR, url)
    out = tmp_path / "w.pth"
    smk.run(_fake_job(tmp_path), fetch_url, online=True, url=classifier_url("resnet18"), out=str(out))
    assert out.stat().st_size > 1_000_000


def test_fetched_files_reach_the_job_settings(tmp_path, monkeypatch):
    """The fetch rules' outputs, named in a job's input, switch its settings: the
    dataset on disk (no download in the job), the classifier's and Inception's weights."""
    _isolate(monkeypatch)
    got = {}
    job = _fake_job(tmp_path, fetched="root/.tibalance-fetched.json", weights="w.pth", inception="i.pth")
    smk.run(job, lambda **kw: got.update(kw), data_cfg={"download": True}, clf_cfg={"arch": "resnet50"},
            metrics_cfg={"networks": ["inception"]})
    assert got == {"data_cfg": {"download": False}, "clf_cfg": {"arch": "resnet50", "weights_file": "w.pth"},
                   "metrics_cfg": {"networks": ["inception"], "inception_weights": "i.pth"}}
    got.clear()
    smk.run(_fake_job(tmp_path), lambda **kw: got.update(kw), data_cfg={"download": True})
    assert got == {"data_cfg": {"download": True}}  # nothing fetched: the settings as they are


def test_fetch_dataset_finds_a_filled_root_and_writes_its_marker(tmp_path):
    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path / "fmnist"
    shutil.copytree(src, root)
    cfg = {"source": "fashion_mnist", "root": str(root), "download": True}
    marker = dataset_marker(cfg)
    fetch_dataset(cfg, marker)  # the idx files are there: nothing is downloaded
    listed = json.loads(Path(marker).read_text())
    assert listed["source"] == "fashion_mnist" and "train-images-idx3-ubyte.gz" in listed["files"]


_JOB = """
import atexit, logging, sys
from pathlib import Path
from types import SimpleNamespace
from tibalance import smk
from tibalance.util import TibalanceError

class Snakemake(SimpleNamespace):  # as a job's script object: its class comes from snakemake
    pass

Snakemake.__module__ = "snakemake.iocontainers"
out = Path(sys.argv[1])
job = Snakemake(log=[str(out / "job.log")], threads=1, rule="sample", resources=SimpleNamespace(gpu=0), input={})

def work(fail=False):
    atexit.register(lambda: (out / "teardown").write_text("ran"))
    (out / "result.txt").write_text("done")
    logging.getLogger("tibalance.test").info("the last log line")
    print("a progress line", file=sys.stderr)
    if fail:
        raise TibalanceError("broken input")

smk.run(job, work, fail=sys.argv[2] == "fail")
"""


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_finished_job_skips_the_interpreter_teardown_and_keeps_its_files(tmp_path, fast):
    """A job's process ends right after its work (os._exit after flushing: the
    teardown of torch's modules costs ~0.9 s a job) with status 0, its files and
    log complete; TIBALANCE_FAST_EXIT=0 exits normally; a failed job still
    exits 1 with its one-line message."""
    import subprocess
    import sys

    env = {**os.environ, "TIBALANCE_FAST_EXIT": fast}
    p = subprocess.run([sys.executable, "-c", _JOB, str(tmp_path), "ok"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "result.txt").read_text() == "done"
    log = (tmp_path / "job.log").read_text()
    assert "the last log line" in log and "a progress line" in log
    assert (tmp_path / "teardown").exists() == (fast == "0")
    p = subprocess.run([sys.executable, "-c", _JOB, str(tmp_path), "fail"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "tibalance: broken input" in p.stderr
