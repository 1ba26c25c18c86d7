"""The real Snakemake DAG on the tiny config: contents of the outputs, no-op
rerun, and one-line errors for bad configs."""
import json

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import FMNIST, REPO, TINY, snakemake


def _bad_config(tmp_path, edit):
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["data"].update(colour="red"), "bad.yaml: unknown key 'data.colour'"),
    (lambda c: c.update(clasifier={}), "bad.yaml: unknown key 'clasifier'"),
    (lambda c: c["classifier"].update(epochs="many"), "bad.yaml: key 'classifier.epochs': 'many' is not of type 'integer'"),
    (lambda c: c["data"].update(source="imagefolder", root="/no/such/folder"),
     "data.root: imagefolder root /no/such/folder does not exist"),
    (lambda c: c["analysis"].update(strategy="explicit", classes=["circle", "hexagon"]),
     "analysis.classes: unknown class 'hexagon'"),
    (lambda c: c.update(classes={"pentagon": {"seeds": {"n": 3}}}), "classes: unknown class 'pentagon'"),
])
def test_bad_config_stops_with_one_line(tmp_path, edit, message):
    p = snakemake(tmp_path, "-n", configfiles=[_bad_config(tmp_path, edit)], check=False)
    assert p.returncode != 0
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert not (tmp_path / "results").exists()


def test_tiny_dag_outputs(tiny_run):
    wd, _ = tiny_run
    res = wd / "results"
    m = pd.read_csv(res / "data/manifest.csv")
    train = m[m.split == "train"].groupby("label").size().to_dict()
    assert train == {"circle": 40, "square": 40, "triangle": 4, "cross": 40} or train == {
        "circle": 40, "cross": 40, "square": 40, "triangle": 4}
    assert (m[m.split == "test"].groupby("label").size() == 12).all()
    assert all((wd / p).is_file() for p in m.path)

    metrics = json.loads((res / "baseline/metrics.json").read_text())
    pred = pd.read_csv(res / "baseline/predictions.csv")
    for split in ("val", "test"):
        sub = pred[pred.split == split]
        assert metrics[split]["n"] == len(sub) == 48
        assert metrics[split]["accuracy"] == pytest.approx((sub.label == sub.pred).mean(), abs=1e-6)
    assert metrics["test"]["accuracy"] > 0.5  # well above chance (0.25)

    per_class = pd.read_csv(res / "analysis/per_class.csv").set_index("class")
    val = pred[pred.split == "val"]
    for cls, row in per_class.iterrows():
        assert row["support"] == 12
        assert row["accuracy"] == pytest.approx((val[val.label == cls].pred == cls).mean(), abs=1e-6)
    weak = json.loads((res / "analysis/weak_classes.json").read_text())
    assert "triangle" in weak["classes"]  # the rare class (included explicitly, and usually the weakest)
    assert per_class["weak"].to_dict() == {c: c in weak["classes"] for c in per_class.index}
    assert Image.open(res / "analysis/confusion.png").size[0] > 100

    for cls in weak["classes"]:
        seeds = pd.read_csv(res / f"seeds/{cls}/seeds.csv")
        cls_train = set(m[(m.split == "train") & (m.label == cls)].path)
        assert set(seeds.path) <= cls_train and seeds.path.is_unique
        assert len(seeds) == min(5, len(cls_train))
        assert list(seeds.prob_true) == sorted(seeds.prob_true, reverse=True)[:1] + list(seeds.prob_true[1:])
        sheet = Image.open(res / f"seeds/{cls}/contact_sheet.png")
        assert sheet.size[0] == 128 * len(seeds)
    log = (wd / "logs/select_seeds/triangle.log").read_text()
    assert "only 4 training images (< 5 asked): took them all" in log


def test_second_run_has_nothing_to_do(tiny_run):
    wd, _ = tiny_run
    p = snakemake(wd)
    assert "Nothing to be done" in p.stdout + p.stderr


@pytest.mark.skipif(not FMNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_demo_config_finds_the_rare_class(tmp_path):
    """config/demo.yaml as shipped (Fashion-MNIST, shirt cut to 1%), shrunk by an
    overlay so it runs in a minute: the weak classes include shirt."""
    overlay = tmp_path / "small.yaml"
    overlay.write_text(yaml.safe_dump({
        "data": {"max_per_class": {"train": 300, "val": 60, "test": 60}},
        "classifier": {"epochs": 4},
    }))
    snakemake(tmp_path, "results/analysis/weak_classes.json",
              configfiles=[REPO / "config/demo.yaml", overlay])
    m = pd.read_csv(tmp_path / "results/data/manifest.csv")
    train = m[m.split == "train"].groupby("label").size()
    assert train["shirt"] == 3 and train["coat"] == 300  # 1% of the capped 300
    weak = json.loads((tmp_path / "results/analysis/weak_classes.json").read_text())["classes"]
    assert "shirt" in weak
