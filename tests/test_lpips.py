"""LPIPS diversity of a synthetic set (metrics.lpips, rule lpips): the AlexNet
backbone loaded from torchvision's weights file, the distances the lpips
package's network gives, and the rule in the DAG. No ImageNet weights exist
offline: a seeded random AlexNet saved in torchvision's format stands in (its
distances mean nothing; what is tested is which numbers go where)."""
import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, planned_jobs, snakemake
from PIL import Image

from tibalance import stages
from tibalance.fetch import ALEXNET_URL, file_name, weights_to_fetch
from tibalance.perceptual import load_images, load_lpips, lpips_diversity
from tibalance.util import TibalanceError


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    from torchvision.models import alexnet

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / file_name(ALEXNET_URL)
    state = alexnet().state_dict()
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five distinct 40 px RGB images (noise of different seeds)."""
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(5):
        a = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    return paths


def test_the_backbone_is_torchvisions_alexnet_file(alexnet_file):
    path, state = alexnet_file
    model = load_lpips(str(path))
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv, i in zip(convs, (0, 3, 6, 8, 10)):  # alexnet.features' convolutions, in order
        assert torch.equal(conv.weight, state[f"features.{i}.weight"])
        assert torch.equal(conv.bias, state[f"features.{i}.bias"])


def test_a_wrong_weights_file_is_one_line_naming_it(tmp_path):
    from torchvision.models import resnet18

    other = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), other)
    with pytest.raises(TibalanceError, match=r"resnet18\.pth: not torchvision's AlexNet weights"):
        load_lpips(str(other))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(TibalanceError, match=r"junk\.pth: not torchvision's AlexNet weights"):
        load_lpips(str(junk))


def test_identical_images_have_diversity_0_and_the_mean_is_over_every_pair(alexnet_file, images):
    model = load_lpips(str(alexnet_file[0]))
    assert lpips_diversity([images[0]] * 4, model, size=64) == 0.0
    assert lpips_diversity(images[:1], model) is None  # one image: no pair
    x = load_images(images, 64)
    with torch.no_grad():
        by_hand = [float(model(x[i:i + 1], x[j:j + 1])) for i, j in itertools.combinations(range(5), 2)]
    assert min(by_hand) > 0
    assert lpips_diversity(images, model, size=64) == pytest.approx(np.mean(by_hand), rel=1e-5)
    # the first max_images only (the table's order): the first pair's distance
    assert lpips_diversity(images, model, max_images=2, size=64) == pytest.approx(by_hand[0], rel=1e-5)


def test_the_stage_reads_the_kept_images_only(alexnet_file, images, tmp_path):
    table = pd.DataFrame({"path": images[:3] + images[3:], "kept": [True, True, True, False, False]})
    table.to_csv(tmp_path / "filtered.csv", index=False)
    same = pd.DataFrame({"path": [images[0], images[0], images[4]], "kept": [True, True, False]})
    same.to_csv(tmp_path / "same.csv", index=False)
    out = tmp_path / "lpips.json"
    stages.lpips("c", {"ti": str(tmp_path / "filtered.csv"), "raw": str(tmp_path / "same.csv")},
                 {"lpips_weights": str(alexnet_file[0]), "lpips_size": 64}, str(out), str(tmp_path / "m.json"))
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    model = load_lpips(str(alexnet_file[0]))
    assert rows["ti"]["lpips"] == pytest.approx(lpips_diversity(images[:3], model, size=64), rel=1e-6)
    assert rows["ti"]["n_kept"] == 3 and rows["raw"]["lpips"] == 0.0 and rows["raw"]["n_kept"] == 2
    with pytest.raises(TibalanceError, match="metrics.lpips: no AlexNet weights file"):
        stages.lpips("c", {}, {}, str(out), str(tmp_path / "m.json"))


def test_lpips_is_fetched_only_when_on_and_not_given():
    demo = yaml.safe_load((TINY.parents[2] / "config" / "demo.yaml").read_text())
    assert weights_to_fetch(demo) == {}
    on = {**demo, "metrics": {**demo.get("metrics", {}), "lpips": True}}
    assert weights_to_fetch(on) == {file_name(ALEXNET_URL): ALEXNET_URL}
    assert weights_to_fetch({**on, "metrics": {**on["metrics"], "lpips_weights": "/a.pth"}}) == {}


def test_metrics_lpips_adds_one_job_per_class_and_its_column(tiny_run, tmp_path, alexnet_file):
    """On (a copy of) the tiny run: metrics.lpips plans the login-node download
    of AlexNet (dry run: nothing leaves the machine), or with the file given, the
    lpips job per adapted class and the tables - not FID, whose settings did not
    change. The per-class table gets lpips_<mode> from the jobs' files."""
    wd0, _ = tiny_run
    wd = tmp_path / "lp"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    cfg = yaml.safe_load(TINY.read_text())
    cfg.setdefault("metrics", {})["lpips"] = True
    edited = tmp_path / "lpips.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    assert ("fetch_weights", f"file={file_name(ALEXNET_URL)}") in planned_jobs(p.stdout + p.stderr)
    cfg["metrics"]["lpips_weights"] = str(alexnet_file[0])
    cfg["metrics"]["lpips_size"] = 32
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    classes = json.loads((wd / "results/analysis/weak_classes.json").read_text())["classes"]
    adapted = [c for c in classes if (wd / f"results/fid/{c}.json").exists()]
    assert adapted
    assert sorted(planned_jobs(p.stdout + p.stderr)) == sorted(
        [("lpips", f"cls={c}") for c in adapted] + [("report", ""), ("cost", ""), ("all", "")]), p.stdout
    snakemake(wd, configfiles=[edited])
    per_class = pd.read_csv(wd / "results/tables/per_class.csv")
    names = json.loads((wd / "results/data/classes.json").read_text())["names"]
    for c in adapted:
        rows = json.loads((wd / f"results/lpips/{c}.json").read_text())["rows"]
        made = {f.parent.parent.name for f in (wd / "results/samples").glob(f"*/{c}/filtered.csv")}
        assert {r["mode"] for r in rows} == made  # every mode of the study
        row = per_class[per_class["class"] == names.get(c, c)].iloc[0]
        for r in rows:  # the tiny k-NN filter keeps no image: no pair, no value; genie_ada's (none) keeps all
            if r["mode"] == "genie_ada":
                assert r["n_kept"] >= 2 and 0 <= r["lpips"] <= 1
                assert float(row[f"lpips_{r['mode']}"]) == pytest.approx(r["lpips"], abs=1e-3)
            else:
                assert r["lpips"] is None and r["n_kept"] < 2 and pd.isna(row[f"lpips_{r['mode']}"])
    assert "Nothing to be done" in (lambda q: q.stdout + q.stderr)(snakemake(wd, "-n", configfiles=[edited]))
    # a value in a class's file reaches its row (the file newer than the tables: the report reruns)
    c = adapted[0]
    got = json.loads((wd / f"results/lpips/{c}.json").read_text())
    got["rows"][0]["lpips"] = 0.123
    (wd / f"results/lpips/{c}.json").write_text(json.dumps(got))
    p = snakemake(wd, configfiles=[edited])
    per_class = pd.read_csv(wd / "results/tables/per_class.csv")
    row = per_class[per_class["class"] == names.get(c, c)].iloc[0]
    assert float(row[f"lpips_{got['rows'][0]['mode']}"]) == pytest.approx(0.123)
    assert "Nothing to be done" in (lambda q: q.stdout + q.stderr)(snakemake(wd, "-n", configfiles=[edited]))
