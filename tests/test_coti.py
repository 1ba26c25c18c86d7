"""COTI: the scores and the selection rule, the pool growing by the best-scored
candidates each cycle, no test or judge image read, a killed job resuming to
the same token bit for bit."""
import math

import numpy as np
import pandas as pd
import PIL.Image
import pytest
from conftest import random_images
from tiny_jobs import run_ti

from tibalance.classifier import TrainedClassifier, build_model
from tibalance.coti import indicator, on_class, scores, select, train_coti
from tibalance.util import TibalanceError

COTI = {"cycles": 2, "per_cycle": 2, "generated": 2, "steps": 2}
SAMPLING = {"steps": 2, "resolution": 32, "batch_size": 2}


def test_scores_weights_and_indicator_are_the_papers():
    pool = np.array([[1.0, 0.0], [0.0, 1.0]])
    feats = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    s_aes, s_con = scores(np.array([0.2, 0.5, 1.0]), feats, pool)
    assert np.allclose(s_aes, [2, 5, 10])
    # the least cosine to the pool (Eq. 8): orthogonal to one pool image -> 0; 45 degrees to both; opposite -> 0
    assert np.allclose(s_con, [0, 10 / math.sqrt(2), 0])
    assert indicator(10, 10) == pytest.approx(10) and indicator(0, 7) == 0
    assert indicator(5, 5) == pytest.approx(10 * math.sin(math.pi / 4) ** 2)
    cands = pd.DataFrame({"path": ["a", "b", "c", "d"], "source": "real",
                          "s_aes": [8.0, 2.0, 5.0, 5.0], "s_con": [1.0, 9.0, 5.0, 5.0]})
    # gamma_aes 8 (the token's images look like the class): the concept score weighs 4x the other
    out = select(cands, 8.0, 2.0, 2, frozen=False)
    assert np.allclose(out["s_int"], 0.2 * cands["s_aes"] + 0.8 * cands["s_con"])
    assert list(out["rank"]) == [3, 0, 1, 2]  # c and d tie: by path
    assert list(out["chosen"]) == [False, True, True, False]
    # the other way round the same candidates rank the other way
    assert list(select(cands, 2.0, 8.0, 1, frozen=False)["chosen"]) == [True, False, False, False]
    assert not select(cands, 8.0, 2.0, 2, frozen=True)["chosen"].any()  # a frozen pool takes none
    with pytest.raises(TibalanceError, match="pool is empty"):
        scores(np.ones(1), np.ones((1, 2)), np.zeros((0, 2)))
    # the quality stand-in: the filter's k-NN on-class score, a real image's distance to itself left out
    own, other = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), np.array([[-1.0, 0.0]])
    q = on_class(np.array([[1.0, 0.0], [1.0, 0.0]]), own, other, 1, [0, None])
    d_own = 1 - 1 / math.sqrt(2)  # row 0 is own[0]: its nearest other own image is own[1], at 45 degrees
    assert q[0] == pytest.approx(2 / (d_own + 2)) and q[1] == pytest.approx(1.0)  # row 1: distance 0 to own[0]
    assert on_class(np.array([[-1.0, 0.0]]), own, other, 1, [None])[0] == pytest.approx(0.0)


@pytest.fixture
def coti_class(tiny_sd, tmp_path):
    """A class with 3 seed images, 4 more real training images, a val, a test and
    a judge-pool image (the last three never to be read), a baseline classifier
    (random weights) and its TI token."""
    real = random_images(tmp_path, 7, 28, prefix="train", seed=1)
    held = random_images(tmp_path, 3, 28, prefix="held", seed=2)
    other = random_images(tmp_path, 2, 28, prefix="other", seed=3)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": real + held[:2] + other, "label": ["ankle_boot"] * 9 + ["bag"] * 2,
                  "split": ["train"] * 7 + ["val", "test", "train", "train"]}).to_csv(manifest, index=False)
    seeds = tmp_path / "seeds.csv"
    pd.DataFrame({"path": real[:3]}).to_csv(seeds, index=False)
    clf = tmp_path / "model.pt"
    TrainedClassifier(build_model("resnet18", 2), ["ankle_boot", "bag"], "resnet18", 32).save(str(clf))
    run_ti(tiny_sd, real[:3], tmp_path / "ti")
    return {"manifest": str(manifest), "seeds": str(seeds), "classifier": str(clf), "real": real, "other": other,
            "never": held, "ti": str(tmp_path / "ti" / "e.safetensors")}


def _run(tiny_sd, c, out, coti=COTI, **kw):
    return train_coti(tiny_sd, "ankle_boot", "Ankle boot", c["manifest"], c["seeds"], c["ti"], c["classifier"],
                      {"batch_size": 2, "augment_variants": 2, "preview_images": 2, "preview_steps": 2,
                       "checkpoint_every": 2, "lr": 0.05}, coti, SAMPLING, 7, str(out / "cycles"),
                      str(out / "e.safetensors"), str(out / "cycles.csv"), str(out / "candidates.csv"),
                      str(out / "preview.png"), **kw)


def test_each_cycle_adds_its_best_candidates_reads_no_held_out_image_and_resumes_bit_for_bit(
        tiny_sd, coti_class, tmp_path, monkeypatch):
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    out = tmp_path / "whole"
    result = _run(tiny_sd, coti_class, out)
    assert not set(opened) & set(coti_class["never"])  # no val, test or judge image
    assert set(opened) & set(coti_class["real"][3:])  # the unused real ones were scored

    cycles = pd.read_csv(out / "cycles.csv")
    cands = pd.read_csv(out / "candidates.csv")
    assert list(cycles["cycle"]) == [0, 1, 2] and cycles["pool"].iloc[0] == 3
    pool = set(pd.read_csv(coti_class["seeds"])["path"])
    for _, row in cycles.iloc[1:].iterrows():
        t = cands[cands["cycle"] == row["cycle"]]
        assert not set(t["path"]) & pool  # nothing already in the pool is a candidate
        # the token's own images are scored (the gammas) but are no candidates: the real pool is, the class's
        # unused training images and the other class's, labels ignored
        gen = t[t["source"] == "generated"]
        assert len(gen) == COTI["generated"] and not gen["candidate"].any() and not gen["chosen"].any()
        assert set(t[t["source"] == "real"]["path"]) == set(coti_class["real"][3:]) - pool
        assert set(t[t["source"] == "pool"]["path"]) == set(coti_class["other"]) - pool
        assert t[t["source"] != "generated"]["candidate"].all() and row["candidates"] == len(t) - len(gen)
        t = t[t["candidate"]]
        best = set(t.sort_values(["s_int", "path"], ascending=[False, True])["path"].iloc[:COTI["per_cycle"]])
        if row["frozen"]:
            assert row["added"] == 0 and not t["chosen"].any()
        else:
            assert set(t[t["chosen"]]["path"]) == best and row["added"] == COTI["per_cycle"]
        assert row["pool"] == row["pool_before"] + row["added"] == len(pool) + row["added"]
        pool |= set(t[t["chosen"]]["path"])
        # gamma: the mean scores of the token's own images; phi from them (Eq. 12)
        g = gen
        assert row["gamma_aes"] == pytest.approx(g["s_aes"].mean(), rel=1e-5)
        assert row["phi"] == pytest.approx(indicator(row["gamma_aes"], row["gamma_con"]), rel=1e-5)
    assert not cycles["frozen"].iloc[1]  # the first cycle has no phi before it: it always selects
    assert result["pool"] == len(pool) == cycles["pool"].iloc[-1]
    assert (out / "e.safetensors").read_bytes() == (out / "cycles" / "cycle_2" / "learned_embeds.safetensors"
                                                    ).read_bytes() != open(coti_class["ti"], "rb").read()

    # killed after cycle 1, and again inside cycle 2 (its folder begun): the same token, bit for bit
    killed = tmp_path / "killed"
    assert _run(tiny_sd, coti_class, killed, stop_after=1) == {"stopped_after_cycle": 1}
    assert not (killed / "e.safetensors").exists()
    first = killed / "cycles" / "cycle_1" / "learned_embeds.safetensors"
    stamp = first.stat().st_mtime_ns
    (killed / "cycles" / "cycle_2" / "generated").mkdir(parents=True)
    assert _run(tiny_sd, coti_class, killed)["resumed_after_cycle"] == 1
    assert first.stat().st_mtime_ns == stamp  # cycle 1 not redone
    assert (killed / "e.safetensors").read_bytes() == (out / "e.safetensors").read_bytes()
    for name in ("cycles.csv", "candidates.csv"):  # the generated images' paths name their run's folder
        assert (killed / name).read_text().replace(str(killed), str(out)) == (out / name).read_text(), name


def test_a_pool_folder_is_the_candidates_and_self_training_adds_the_tokens_samples(tiny_sd, coti_class, tmp_path):
    """coti.pool: the folder's images (not the study's) are the candidates;
    coti.self_training: the token's own samples are candidates too."""
    folder = tmp_path / "unlabelled"
    (folder / "sub").mkdir(parents=True)
    extra = random_images(folder, 2, 28, prefix="u", seed=4) + random_images(folder / "sub", 1, 28, seed=5)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pooled"
    _run(tiny_sd, coti_class, out, coti={**COTI, "pool": str(folder), "self_training": True})
    cands = pd.read_csv(out / "candidates.csv")
    first = cands[cands["cycle"] == 1]
    assert set(first[first["source"] == "pool"]["path"]) == set(extra)
    assert set(first["source"]) == {"pool", "generated"} and first["candidate"].all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TibalanceError, match="coti.pool: .*empty holds no image"):
        _run(tiny_sd, coti_class, tmp_path / "none", coti={**COTI, "pool": str(tmp_path / "empty")})
