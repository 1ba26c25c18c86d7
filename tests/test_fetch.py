"""Downloads happen in local rules (the login node); the jobs run offline.
Tested against a stand-in hub on the loopback address serving the tiny pipeline."""
import json
import shutil

import pytest
import yaml

from conftest import TINY, snakemake
from hub_stand_in import serve
from tibalance.generator import fetch_pipeline, fetched_folder, load_pipeline
from tibalance.util import TibalanceError


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


def test_a_hub_generator_is_fetched_by_a_local_rule_and_jobs_run_offline(hub, tmp_path, monkeypatch):
    """generator.model a hub id: fetch_generator (main process) downloads it from
    the stand-in; the inversion opens the folder with the hubs' offline switches
    set, so it would fail had it tried the hub."""
    monkeypatch.setenv("TIBALANCE_HF_ENDPOINT", hub)
    cfg = yaml.safe_load(TINY.read_text())
    cfg["generator"] = {"model": "owner/tiny-sd"}
    cfg["analysis"] = {"strategy": "explicit", "classes": ["triangle"]}
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "run"
    p = snakemake(wd, "results/inversion/triangle/learned_embeds.safetensors", configfiles=[config])
    out = p.stdout + p.stderr
    assert "localrule fetch_generator:" in out
    assert (wd / "resources/generator/owner--tiny-sd/model_index.json").is_file()
    log = (wd / "logs/textual_inversion/triangle.log").read_text()
    assert "steps" in log
    meta = json.loads((wd / "results/inversion/triangle/textual_inversion.meta.json").read_text())
    assert meta["steps"] == 6
