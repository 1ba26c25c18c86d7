"""The real Snakemake DAG on the tiny config: contents of the outputs, no-op
rerun, and one-line errors for bad configs."""
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import FMNIST, REPO, SNAKEMAKE, TINY, snakemake
from conftest import job_block as _job_block
from conftest import planned_jobs as _planned_jobs
from PIL import Image


def _wanted(cls: str, n_train) -> int:
    """The images the tiny run samples for a weak class: refilled to sampling.n_images'
    fill_to (8), circle to its own (42)."""
    cfg = yaml.safe_load(TINY.read_text())
    own = (cfg.get("classes") or {}).get(cls, {}).get("sampling", {}).get("n_images")
    return max(0, int((own or cfg["sampling"]["n_images"])["fill_to"]) - int(n_train))

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
    (lambda c: c.update(classes={"circle": {"ti": {"stepz": 3}}}), "bad.yaml: unknown key 'classes.circle.ti.stepz'"),
    (lambda c: c.update(generator={"model": "/no/such/sd"}),
     "generator.model: generator folder /no/such/sd does not exist"),
])
def test_bad_config_stops_with_one_line(tmp_path, edit, message):
    p = snakemake(tmp_path, "-n", configfiles=[_bad_config(tmp_path, edit)], check=False)
    assert p.returncode != 0
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert not (tmp_path / "results").exists()


def test_default_config_that_is_not_yaml_names_file_and_line(tmp_path):
    """config/config.yaml (read by the Snakefile) with a YAML error: one line
    with the file, line and column. (A file given with --configfile is read by
    Snakemake's CLI before any workflow code runs: its own message.)"""
    import shutil

    from tibalance.config import yaml_problem

    wf = tmp_path / "wf"
    wf.mkdir()
    for part in ("Snakefile", "rules", "workflow", "config", "tibalance"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, wf / part)
    (wf / "config/config.yaml").write_text("seed: 0\ndata:\n  source: flowers102\n   download: [true\n")
    p = subprocess.run([SNAKEMAKE, "-s", str(wf / "Snakefile"), "-d", str(tmp_path / "run"), "-n"],
                       capture_output=True, text=True)
    err = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("tibalance:")]
    assert p.returncode != 0 and err == [
        f"tibalance: {wf / 'config/config.yaml'}:4:12: not valid YAML: mapping values are not allowed here"], p.stderr
    assert yaml_problem(str(REPO / "config/config.yaml")) is None


def test_lint_is_clean(tmp_path):
    p = snakemake(tmp_path, "--lint", cores=None, check=False)
    assert p.returncode == 0 and "Congratulations" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]


def test_given_configfile_replaces_the_default_one(tmp_path):
    """In the repo layout config/config.yaml exists; --configfile must not be merged with it."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text((REPO / "config/config.yaml").read_text())
    p = snakemake(tmp_path, "-n", configfiles=[TINY], check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "extended by additional config" not in p.stdout + p.stderr


def test_tiny_dag_outputs(tiny_run):
    wd, _ = tiny_run
    res = wd / "results"
    m = pd.read_csv(res / "data/manifest.csv")
    train = m[m.split == "train"].groupby("label").size().to_dict()
    assert train == {"circle": 40, "square": 40, "triangle": 4, "cross": 40}
    assert (m[m.split == "test"].groupby("label").size() == 12).all()
    assert all((wd / p).is_file() for p in m.path)

    metrics = json.loads((res / "baseline/metrics.json").read_text())
    pred = pd.read_csv(res / "baseline/predictions.csv")
    for split in ("val", "test"):
        sub = pred[pred.split == split]
        assert metrics[split]["n"] == len(sub) == 48
        assert metrics[split]["accuracy"] == pytest.approx((sub.label == sub.pred).mean(), abs=1e-6)
    assert metrics["test"]["accuracy"] > 0.5  # well above chance (0.25)

    per_class = pd.read_csv(res / "analysis/per_class.csv").set_index("slug")
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


def test_tiny_dag_inversion_and_sampling(tiny_run):
    """The tiny config sets no resolution for TI, LoRA or sampling: each runs at
    the 32-px generator's own size (not SD 1.5's 512)."""
    from safetensors.torch import load_file

    wd, _ = tiny_run
    res = wd / "results"
    m = pd.read_csv(res / "data/manifest.csv")
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    target = {c: 42 if c == "circle" else 8 for c in weak}  # circle's own sampling.n_images: fill_to 42
    wanted = {c: max(0, target[c] - int(((m.split == "train") & (m.label == c)).sum())) for c in weak}
    assert wanted == {"triangle": 4, "circle": 2, "square": 0}  # both kinds of weak class are in the tiny run
    at_target = [c for c in weak if wanted[c] == 0]
    for cls in weak:
        if cls in at_target:  # it gets 0 images: no token, adapter, samples, grid, FID or judge job
            assert not (res / f"inversion/{cls}").exists() and not list(res.glob(f"lora/*/{cls}"))
            assert not (wd / f"logs/textual_inversion/{cls}.log").exists()
            assert not list(res.glob(f"samples/*/{cls}")) and not list(wd.glob(f"logs/sample/*/{cls}.log"))
            assert not list(res.glob(f"*/{cls}.json")) and not (res / f"samples/grid/{cls}.png").exists()
            assert (res / f"seeds/{cls}/contact_sheet.png").exists()  # its seeds are still shown
            continue
        emb = load_file(res / f"inversion/{cls}/learned_embeds.safetensors")
        assert list(emb) == [f"<{cls}>"] and emb[f"<{cls}>"].shape == (1, 32)
        loss = pd.read_csv(res / f"inversion/{cls}/loss.csv")
        assert list(loss.step) == list(range(1, 7))
        ti_meta = json.loads((res / f"inversion/{cls}/textual_inversion.meta.json").read_text())
        assert ti_meta["steps"] == 6 and ti_meta["resolution"] == 32
        for kind in ("lora", "ti_lora"):  # adapters, in diffusers' LoRA format
            w = load_file(res / f"lora/{kind}/{cls}/pytorch_lora_weights.safetensors")
            assert w and all(k.startswith("unet.") for k in w)
            assert list(pd.read_csv(res / f"lora/{kind}/{cls}/loss.csv").step) == list(range(1, 7))
            meta = json.loads((res / f"lora/{kind}/{cls}/lora.meta.json").read_text())
            assert meta["steps"] == 6 and meta["eval_loss_end"] < meta["eval_loss_start"] and meta["resolution"] == 32
        for method, subject in (("ti", f"<{cls}>"), ("raw", cls), ("ti_i2i", f"<{cls}>"), ("lora", cls),
                                ("lora_i2i", cls), ("ti_lora", f"<{cls}>"), ("diff_ii", f"<{cls}>"),
                                ("coti", f"<{cls}>")):
            table = pd.read_csv(res / f"samples/{method}/{cls}/samples.csv")
            assert len(table) == wanted[cls]  # refilled to its target: a class at it gets none
            assert set(table.label) <= {cls}
            assert all(p.endswith(subject) for p in table.prompt)
            for p in table.path:
                assert Image.open(wd / p).size == (32, 32)
            if method.endswith("_i2i"):  # each starts from one of the class's real training images
                real = set(m[(m.split == "train") & (m.label == cls)].path)
                assert set(table.start_image) <= real and (len(table) == 0 or len(set(table.start_image)) > 1)
            if method == "diff_ii":  # split_ratio auto: the paper's rule (0.3 at 4 shots, 0.1 at 40)
                side = json.loads((res / f"samples/diff_ii/{cls}/sample.meta.json").read_text())
                assert side["split_ratio"] == {"triangle": 0.3, "circle": 0.1}[cls]
            if method == "diff_ii":  # each from two of the class's real images' inversions
                real = set(m[(m.split == "train") & (m.label == cls)].path)
                pairs = [p.split(";") for p in table.start_image]
                assert all(len(p) == 2 and p[0] != p[1] and set(p) <= real for p in pairs)
        # coti: cycle 0 is the TI token on the seeds; each cycle adds its 2 best candidates of the real pool
        # (the class's unused training images - triangle has none, all 4 are seeds - and the other classes',
        # labels ignored; the token's own samples are scored, not candidates), its token the last cycle's
        cycles = pd.read_csv(res / f"coti/{cls}/cycles.csv")
        seeds = pd.read_csv(res / f"seeds/{cls}/seeds.csv")
        assert list(cycles.cycle) == [0, 1, 2] and cycles["pool"].iloc[0] == len(seeds)
        assert list(cycles["added"].iloc[1:]) == [0 if f else 2 for f in cycles["frozen"].iloc[1:]]
        cands = pd.read_csv(res / f"coti/{cls}/candidates.csv")
        gen = cands[cands.source == "generated"]
        assert len(gen) == 4 and not gen.candidate.any() and not gen.chosen.any()
        assert set(cands.source) == ({"generated", "pool"} if cls == "triangle" else {"generated", "real", "pool"})
        train = m[m.split == "train"]
        assert set(cands[cands.source == "real"].path) <= set(train[train.label == cls].path) - set(seeds.path)
        assert set(cands[cands.source == "pool"].path) <= set(train[train.label != cls].path)  # never val or test
        assert (res / f"coti/{cls}/learned_embeds.safetensors").read_bytes() == (
            res / f"coti/{cls}/cycles/cycle_2/learned_embeds.safetensors").read_bytes()
        # the words nearest each token (seed 000), closest first, in the per-class table
        near = pd.read_csv(res / f"inversion/{cls}/neighbours.csv", keep_default_na=False)
        assert set(near.token) == {"ti", "coti"} and len(near) == 10
        for token, grp in near.groupby("token"):
            assert list(grp["rank"]) == list(range(5)) and grp.cosine.is_monotonic_decreasing
        cells = pd.read_csv(res / "tables/per_class.csv", dtype=str, keep_default_na=False).set_index("class")
        for token, column in (("ti", "ti_nearest_words"), ("coti", "coti_nearest_words")):
            rows = near[near.token == token]
            assert cells.loc[cls, column] == ", ".join(f"{w} {c:.2f}" for w, c in zip(rows.word, rows.cosine))
        # each mode's kept images' diversity (mean pairwise cosine distance, the filter's feature space)
        for mode in ("raw", "ti", "diff_ii", "coti"):
            meta = json.loads((res / f"samples/{mode}/{cls}/filter.meta.json").read_text())
            assert meta["diversity_kept"] is None or 0 <= meta["diversity_kept"] <= 2
            if meta["diversity_kept"] is not None:
                assert float(cells.loc[cls, f"div_{mode}"]) == pytest.approx(meta["diversity_kept"], rel=1e-4)
        inv = pd.read_csv(res / f"diff_ii/{cls}/inversions.csv")
        assert sorted(inv.image) == sorted(m[(m.split == "train") & (m.label == cls)].path)
        assert all((wd / f).exists() for f in inv.inversion)
        assert Image.open(res / f"samples/grid/{cls}.png").size == (8 * 128, 11 * 142)  # real + 10 modes


def test_tables_match_the_per_seed_runs(tiny_run):
    import numpy as np

    wd, _ = tiny_run
    res = wd / "results"
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    summary = pd.read_csv(res / "tables/summary.csv").set_index("method")
    assert list(summary.index) == ["baseline", "oversample", "noise", "noise_static", "reweight", "drw", "cmo",
                                   "real_oracle", "real_oracle@ti_i2i", "raw_sd", "ti",
                                   "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie_ada",
                                   "fg_i2i", "oversample+ti_i2i", "oversample+diff_ii", "deferred_oversample"]
    runs = {(meth, s): json.loads((res / f"retrain/{meth}/seed{s}/metrics.json").read_text())
            for meth in summary.index for s in (0, 1)}
    base_counts = runs["baseline", 0]["train_counts"]
    for method in summary.index:
        acc = [runs[method, s]["accuracy"] for s in (0, 1)]
        assert summary.loc[method, "accuracy_mean"] == pytest.approx(np.mean(acc), abs=1e-5)
        assert summary.loc[method, "accuracy_std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-5)
        assert summary.loc[method, "seeds"] == 2
        for cls in weak:  # each weak class's accuracy, e.g. the rare class's, per method
            per_seed = [runs[method, s]["per_class_accuracy"][cls] for s in (0, 1)]
            assert summary.loc[method, f"acc_{cls}_mean"] == pytest.approx(np.mean(per_seed), abs=1e-5)
            # the paired difference to baseline, seed by seed
            d = [per_seed[s] - runs["baseline", s]["per_class_accuracy"][cls] for s in (0, 1)]
            if method == "baseline":
                assert np.isnan(summary.loc[method, f"delta_{cls}_mean"])
                continue
            assert summary.loc[method, f"delta_{cls}_mean"] == pytest.approx(np.mean(d), abs=1e-5)
            assert summary.loc[method, f"delta_{cls}_std"] == pytest.approx(np.std(d, ddof=1), abs=1e-5)
            assert summary.loc[method, f"improved_{cls}"] == f"{sum(x > 0 for x in d)}/2"
        counts = runs[method, 0]["train_counts"]
        for cls in weak:  # mix 'add': the kept synthetic images (oversample: the balanced count) on top
            if method in ("noise", "reweight", "drw", "cmo"):  # the real images, noised, weighted or mixed (their own test)
                assert counts == base_counts
                continue
            kind = {"raw_sd": "raw", "oversample": "raw", "noise_static": "raw", "deferred_oversample": "raw",
                    "baseline": None,
                    "real_oracle": None,
                    "real_oracle@ti_i2i": None, "oversample+ti_i2i": "ti_i2i",
                    "oversample+diff_ii": "diff_ii"}.get(method, method)
            if kind is None:  # real_oracle: its own test
                continue
            if not (res / f"samples/{kind}/{cls}").exists():  # a class at its target: 0 images, no table
                assert counts[cls] == base_counts[cls]
                continue
            filtered = pd.read_csv(res / f"samples/{kind}/{cls}/filtered.csv")
            if filtered.score.notna().any():  # a filter that scores (genie_ada's none keeps all, unscored)
                assert list(filtered.kept) == list(filtered.score >= filtered.cutoff)
            else:
                assert filtered.kept.all()
            refilled = method in ("oversample", "noise_static", "deferred_oversample") or method.startswith("oversample")
            added = len(filtered) if refilled else int(filtered.kept.sum())
            assert counts[cls] == base_counts[cls] + added  # oversample+: the same count, some swapped
            if method.startswith("oversample+"):
                assert runs[method, 0]["swap_p"] == 0.5
                assert runs[method, 0]["swappable"] == (counts[cls] if filtered.kept.any() else 0)
    per_class = pd.read_csv(res / "tables/per_class.csv").set_index("class")
    cells = pd.read_csv(res / "tables/per_class.csv", dtype=str, keep_default_na=False).set_index("class")
    assert sorted(per_class.index) == sorted(weak)
    n_train = pd.read_csv(res / "data/manifest.csv").query("split == 'train'").groupby("label").size()
    modes = ("raw", "ti", "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie_ada", "fg_i2i")
    for cls in weak:
        n = _wanted(cls, n_train[cls])
        if n == 0:  # a class at its target: no sampling, filter, judge or FID job ran; the tables say so
            assert not (res / f"fid/{cls}.json").exists() and not (res / f"judge/{cls}.json").exists()
            for kind in modes:
                assert cells.loc[cls, f"n_{kind}"] == "0" and cells.loc[cls, f"kept_{kind}"] == "0/0 (0 images)"
                assert cells.loc[cls, f"judge_{kind}"] == "(0 images)" and cells.loc[cls, f"judge_{kind}_kept"] == ""
                assert cells.loc[cls, f"fid_{kind}_classifier"] == cells.loc[cls, f"kid_{kind}_classifier"] == "n/a"
                assert cells.loc[cls, f"n_{kind}_classifier"] == "0 images"
            assert cells.loc[cls, "judge_real_val"] == "n/a (0 images)"
            for col in ("ti_loss_first10pct", "ti_eval_loss_end", "lora_loss_last10pct", "ti_lora_eval_loss_end"):
                assert cells.loc[cls, col] == "n/a (0 images)"
            continue
        fid = json.loads((res / f"fid/{cls}.json").read_text())["rows"]
        assert {(r["method"], r["network"]) for r in fid} == {(m, "classifier") for m in modes}
        for kind in modes:
            assert per_class.loc[cls, f"n_{kind}_classifier"] == f"{n} vs 12"  # the class's val images, never test
            f = next(r for r in fid if r["method"] == kind)
            # 4 vs 12 images: below the tables' minimum (100), so marked
            assert cells.loc[cls, f"fid_{kind}_classifier"] == f"{f['fid']:.4f} (few)"
            assert cells.loc[cls, f"kid_{kind}_classifier"] == f"{f['kid_mean']:.4f} (few)"
            kept = pd.read_csv(res / f"samples/{kind}/{cls}/filtered.csv").kept
            assert per_class.loc[cls, f"kept_{kind}"] == f"{int(kept.sum())}/{n} ({kept.sum() / n:.2f})"
            judge = json.loads((res / f"judge/{cls}.json").read_text())[kind]
            assert judge["n"] == n and judge["share"] is not None
            assert float(per_class.loc[cls, f"judge_{kind}"]) == pytest.approx(judge["share"], abs=1e-4)
        # (a loss column holds "n/a (0 images)" for the class at its target, so it is read as text)
        loss = pd.read_csv(res / f"inversion/{cls}/loss.csv")["loss"]  # 6 steps: first and last 10% = 1 step
        assert float(per_class.loc[cls, "ti_loss_first10pct"]) == pytest.approx(loss.iloc[0], rel=1e-4)
        assert float(per_class.loc[cls, "ti_loss_last10pct"]) == pytest.approx(loss.iloc[-1], rel=1e-4)
        meta = json.loads((res / f"inversion/{cls}/textual_inversion.meta.json").read_text())
        assert float(per_class.loc[cls, "ti_eval_loss_start"]) == pytest.approx(meta["eval_loss_start"], rel=1e-4)
        assert float(per_class.loc[cls, "ti_eval_loss_end"]) == pytest.approx(meta["eval_loss_end"], rel=1e-4)
        for kind in ("lora", "ti_lora"):
            loss = pd.read_csv(res / f"lora/{kind}/{cls}/loss.csv")["loss"]
            assert float(per_class.loc[cls, f"{kind}_loss_last10pct"]) == pytest.approx(loss.iloc[-1], rel=1e-4)
            meta = json.loads((res / f"lora/{kind}/{cls}/lora.meta.json").read_text())
            assert float(per_class.loc[cls, f"{kind}_eval_loss_end"]) == pytest.approx(meta["eval_loss_end"], rel=1e-4)
    md = (res / "tables/summary.md").read_text()
    assert "± " in md and all(m in md for m in ("baseline", "oversample", "raw_sd", "ti", "ti_i2i", "lora", "lora_i2i",
                                                "ti_lora", "delta_"))
    assert Image.open(res / "plots/accuracy_change.png").size[0] > 100


def test_intervals_and_p_values_match_an_independent_computation(tiny_run):
    """The significance table recomputed from the runs' per-image prediction
    files: per seed the class's accuracy difference and the t-test by hand;
    the declared family (the adaptations, on the weak class that gets images,
    whether or not a method's filter kept any) decided by the graphical procedure on those p-values, each decision
    agreeing with its interval; every other row descriptive, its unadjusted
    95% interval by hand, never significant; a class that gets no synthetic
    image has no confirmatory row; the verdict's highest lift is never the
    yardstick."""
    from scipy.stats import t as student_t

    from tibalance.family import baseline_then_oversample, graphical
    from tibalance.stats import ADAPTATIONS

    wd, _ = tiny_run
    res = wd / "results"
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    names = json.loads((res / "data/classes.json").read_text())["names"]
    summary = pd.read_csv(res / "tables/summary.csv").set_index("method")
    methods, seeds = list(summary.index), [0, 1]

    def correct(method, seed, cls):
        t = pd.read_csv(res / f"retrain/{method}/seed{seed}/predictions.csv").query("label == @cls")
        return t.sort_values("path").eval("pred == label").astype(int).to_numpy()

    raw, d_of = {}, {}
    for cls in weak:
        for ref in ("baseline", "oversample"):
            for m in [m for m in methods if m not in (ref, "baseline") and not (ref == "oversample" and "@" in m)]:
                d = d_of[(cls, m, ref)] = np.array([(correct(m, s, cls) - correct(ref, s, cls)).mean() for s in seeds])
                if np.ptp(d) == 0:
                    raw[(cls, m, ref)] = 1.0 if d[0] == 0 else 0.5  # the sign-flip over 2 units
                else:
                    raw[(cls, m, ref)] = 2 * student_t.sf(abs(d.mean()) / (d.std(ddof=1) / np.sqrt(2)), 1)
    sig = pd.read_csv(res / "tables/significance.csv")
    n_train = pd.read_csv(res / "data/manifest.csv").query("split == 'train'").groupby("label").size()
    adapted = [c for c in weak if _wanted(c, n_train[c]) > 0]
    untouched = [names[c] for c in weak if _wanted(c, n_train[c]) == 0]
    assert adapted and untouched
    declared = [(m, c) for c in adapted for m in methods if m in ADAPTATIONS]
    hyps, graph = baseline_then_oversample(declared, {k: True for k in declared})
    adjusted, reject, _ = graphical([raw[(c, m, ref)] for (m, c), ref in hyps], graph, 0.05)
    by = sig.set_index(["class", "method", "reference"])
    for ((m, c), ref), a, rej in zip(hyps, adjusted, reject):
        row = by.loc[(names[c], m, ref)]
        assert row["role"] == "confirmatory" and row["p_adj"] == pytest.approx(a, abs=5e-6), (c, m, ref)
        assert bool(row["significant"]) == rej
        assert summary.loc[m, f"p_{names[c]}" if ref == "baseline" else f"p_over_{names[c]}"] == pytest.approx(
            a, abs=5e-6)
    assert (sig["role"] == "confirmatory").sum() == len(hyps)
    for r in sig.itertuples():
        cls = next((c for c in weak if names[c] == r._1), None)
        if cls is None:  # a group of classes: descriptive
            assert r.role == "descriptive" and not r.significant and "group" in r._1, r
            continue
        assert r.units == 2 and r.seeds == 2 and r.p == pytest.approx(raw[(cls, r.method, r.reference)], abs=5e-6)
        if r.role == "confirmatory" and np.isfinite(r.level):
            assert bool(r.significant) == (r.low > 0 or r.high < 0), r
        if r.role == "descriptive":
            d = d_of[(cls, r.method, r.reference)]
            assert not r.significant and r.level == 0.95
            if np.ptp(d) > 0:  # the t interval, cut to the attainable lift [-acc_ref, 1 - acc_ref]
                half = student_t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
                acc_ref = np.mean([correct(r.reference, s, cls).mean() for s in seeds])
                assert r.low == pytest.approx(max(d.mean() - half, -acc_ref), abs=5e-6)
                assert r.high == pytest.approx(min(d.mean() + half, 1 - acc_ref), abs=5e-6)
    assert (sig[sig["class"].isin(untouched)]["role"] == "descriptive").all()
    verdict = (res / "tables/verdict.md").read_text()
    for name in sig["class"].unique():  # the CSV keeps 6 digits
        rows = sig[(sig["class"] == name) & (sig["reference"] == "baseline")
                   & ~sig["method"].str.startswith("real_oracle")]  # the yardsticks, real_oracle@<method> too
        best = rows[rows["lift"] == rows["lift"].max()]["method"]
        line = next(x for x in verdict.split(f"### {name}")[1].splitlines() if x.startswith("- Highest lift"))
        assert all(f"`{m}`" in line for m in best), (line, list(best))
        assert "`real_oracle`" not in line


def test_real_oracle_trains_on_held_back_real_training_images_only(tiny_run):
    """real_oracle refills each adapted weak class with real images the study left
    out of its training split (the imbalance's first): none of them is one of the
    study's train, val or test images or one of the judge's pool (by file name in the
    source array and by pixels), and its runs train on exactly those on top of the
    real images; the other rows report their share of its lift."""
    import hashlib

    wd, _ = tiny_run
    res = wd / "results"
    m = pd.read_csv(res / "data/manifest.csv")
    pool = pd.read_csv(res / "judge/pool.csv")
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    pixels = lambda p: hashlib.sha256(np.asarray(Image.open(wd / p)).tobytes()).hexdigest()  # noqa: E731
    taken = {pixels(p) for p in list(m.path) + list(pool.path)}
    # the tiny study's synthetic source draws an array per split: a file's folder names its array
    index = lambda p: tuple(p.split("/")[-3:])  # noqa: E731 - (array, class, index)
    train_array = {index(p) for p in list(m.path) + list(pool.path)}
    n_train = m.query("split == 'train'").groupby("label").size()
    base = json.loads((res / "retrain/baseline/seed0/metrics.json").read_text())["train_counts"]
    checked = 0
    for cls in weak:
        f = res / f"oracle/{cls}/images.csv"
        if not f.exists():
            continue
        o = pd.read_csv(f)
        if int(n_train[cls]) == base[cls] == 40:  # circle: the imbalance removed none, the judge holds the rest
            assert len(o) <= _wanted(cls, n_train[cls])
            continue
        assert len(o) == _wanted(cls, n_train[cls]) and (o.label == cls).all()  # the synthetic sets' count
        assert all("/train/" in p for p in o.path)
        assert not {index(p) for p in o.path} & train_array
        assert not {pixels(p) for p in o.path} & taken
        assert list(o.source) == sorted(o.source, key=["imbalance", "caps"].index)
        assert (o.source == "imbalance").any()  # the images the imbalance removed come first
        for seed in (0, 1):
            counts = json.loads((res / f"retrain/real_oracle/seed{seed}/metrics.json").read_text())["train_counts"]
            assert counts[cls] == base[cls] + len(o)
            assert {c: v for c, v in counts.items() if c != cls} == {c: v for c, v in base.items() if c != cls}
            # real_oracle@ti_i2i: the same real images, cut to as many as ti_i2i kept of the class
            at = json.loads((res / f"retrain/real_oracle@ti_i2i/seed{seed}/metrics.json").read_text())["train_counts"]
            ti = json.loads((res / f"retrain/ti_i2i/seed{seed}/metrics.json").read_text())["train_counts"]
            assert at[cls] == ti[cls] < counts[cls] or at[cls] == ti[cls] == counts[cls]
        checked += 1
    assert checked
    summary = pd.read_csv(res / "tables/summary.csv").set_index("method")
    names = json.loads((res / "data/classes.json").read_text())["names"]
    for cls in weak:
        col = f"oracle_share_{names[cls]}"
        for method, oracle in (("oversample", "real_oracle"), ("ti_i2i", "real_oracle@ti_i2i")):
            ref = summary.loc[oracle, f"delta_{names[cls]}_mean"]  # ti_i2i: the oracle at its own count
            want = summary.loc[method, f"delta_{names[cls]}_mean"] / ref if ref > 0 else float("nan")
            assert summary.loc[method, col] == pytest.approx(want, abs=1e-4, nan_ok=True)


def test_the_rebalancing_rows_train_as_their_settings_say(tiny_run):
    """noise (OPeN): the real images, from the deferral epoch (1 of 2: 0.8 of
    the epochs, floored) every class drawn equally often and a draw of class c
    noise with probability 1/3 x (1 - n_c / n_max) (its frozen stages run live);
    noise_static: the oversample count, a third of the added images its
    pure-noise images (rule noise_images); reweight: the real images, the
    effective-number weights of their counts from the first epoch; drw: the
    same from epoch 1; deferred_oversample: oversample's set, its added images
    held back until epoch 1; cmo: the real images, mixed at the paper's
    settings (its frozen stages run live too: the DAG finishing is the test of
    those paths)."""
    import numpy as np

    from tibalance.rebalance import class_weights

    wd, _ = tiny_run
    res = wd / "results"
    runs = {m: json.loads((res / f"retrain/{m}/seed0/metrics.json").read_text())
            for m in ("baseline", "oversample", "noise", "noise_static", "reweight", "drw", "deferred_oversample",
                      "cmo")}
    order = json.loads((res / "data/classes.json").read_text())["classes"]
    counts = {}
    for cls in ("triangle", "circle"):  # the two classes refilled (square is at its target)
        noise = pd.read_csv(res / f"noise/{cls}/images.csv")
        raw = pd.read_csv(res / f"samples/raw/{cls}/samples.csv")
        assert len(noise) == round(len(raw) / 3)
        counts[cls] = len(noise)
    assert runs["noise_static"]["noise_images"] == counts
    assert runs["noise_static"]["train_counts"] == runs["oversample"]["train_counts"]
    n = runs["noise"]
    base = runs["baseline"]["train_counts"]
    assert n["train_counts"] == base and "noise_images" not in n
    assert n["noise"]["from_epoch"] == 1 and n["hold_until"] == 1 and n["balanced"] is True
    top = max(base.values())
    assert n["noise"]["p"] == pytest.approx({c: (1 - base[c] / top) / 3 for c in order})
    assert n["noise"]["p"]["triangle"] == max(n["noise"]["p"].values()) > 0  # the rarest is noised most
    d = runs["deferred_oversample"]
    assert d["train_counts"] == runs["oversample"]["train_counts"]
    assert runs["cmo"]["cmo"] == {"p": 0.5, "beta": 1.0, "start_epoch": 0, "end_epochs": 0}
    assert runs["cmo"]["cmo_epochs"] == [1] and "class_weights" not in runs["cmo"]  # the window the tiny run opens
    assert runs["cmo"]["train_counts"] == runs["baseline"]["train_counts"]
    assert d["balanced"] is True  # from the deferral every class drawn equally often (retrain.defer_sampler)
    assert d["hold_until"] == 1 and d["held_images"] == sum(runs["oversample"]["train_counts"].values()) - sum(
        runs["baseline"]["train_counts"].values())
    for method, start in (("reweight", 0), ("drw", 1)):
        r = runs[method]
        assert r["train_counts"] == runs["baseline"]["train_counts"] and r["weight_from_epoch"] == start
        assert np.allclose(r["class_weights"], class_weights(r["train_counts"], order))
        assert r["class_weights"][order.index("triangle")] == max(r["class_weights"])  # the rarest weighs most


def test_real_oracle_absent_without_removed_images(tmp_path):
    """A study whose imbalance removed nothing has no real_oracle row: no job plans
    one, and one line says why."""
    overlay = tmp_path / "none.yaml"
    overlay.write_text("data:\n  imbalance: {type: none}\n")
    p = snakemake(tmp_path, "-n", configfiles=[TINY, overlay])
    assert "real_oracle: absent, the study removed no real images (data.imbalance.type none)" in p.stderr
    assert not [j for j in _planned_jobs(p.stdout + p.stderr) if "real_oracle" in j[1]]
    p = snakemake(tmp_path, "-n", configfiles=[TINY])  # its imbalance removed images: the row is there
    assert "real_oracle: absent" not in p.stderr


def test_ablation_runs_and_table(tiny_run):
    """Each ablation cell trains on the first N images of the balanced set and/or
    all of them regardless of the filter; its table row matches its runs."""
    wd, _ = tiny_run
    res = wd / "results"
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]
    base = json.loads((res / "retrain/baseline/seed0/metrics.json").read_text())
    table = pd.read_csv(res / "tables/ablation.csv", dtype={"synthetic": str})
    assert sorted(zip(table.synthetic, table["filter"])) == sorted(
        [("2", "on"), ("2", "off"), ("balanced", "off"), ("balanced", "on")])
    for variant, limit, use_filter in (("n2-filter", 2, True), ("n2-nofilter", 2, False),
                                       ("balanced-nofilter", None, False)):
        run = json.loads((res / f"ablation/ti_i2i/{variant}/seed0/metrics.json").read_text())
        assert run["variant"] == {"name": variant, "limit": limit, "filter": use_filter}
        row = table[(table.synthetic == (str(limit) if limit else "balanced"))
                    & (table["filter"] == ("on" if use_filter else "off"))].iloc[0]
        for cls in weak:
            table_csv = res / f"samples/ti_i2i/{cls}/filtered.csv"  # none for a class at its target (0 images)
            f = pd.read_csv(table_csv).iloc[:limit] if table_csv.exists() else pd.DataFrame({"kept": []})
            added = int(f.kept.sum()) if use_filter else len(f)
            assert run["train_counts"][cls] == base["train_counts"][cls] + added == row[f"n_{cls}"]
            assert row[f"delta_{cls}_mean"] == pytest.approx(
                run["per_class_accuracy"][cls] - base["per_class_accuracy"][cls], abs=1e-5)


def test_judge_learns_only_from_images_the_study_does_not_use(tiny_run):
    wd, _ = tiny_run
    res = wd / "results"
    m = pd.read_csv(res / "data/manifest.csv")
    pool = pd.read_csv(res / "judge/pool.csv")
    # none of the study's train, val or test images: the pool's files live in their own folder, so compare
    # what they are: the index into the source's train array (the file name) and the pixels
    import hashlib

    # the tiny study's synthetic source draws an array per split: a file's folder names its array
    index = lambda p: tuple(p.split("/")[-3:])  # noqa: E731 - (array, class, index)
    assert not {index(p) for p in pool.path} & {index(p) for p in m.path}
    pixels = lambda p: hashlib.sha256(np.asarray(Image.open(wd / p)).tobytes()).hexdigest()  # noqa: E731
    assert not {pixels(p) for p in pool.path} & {pixels(p) for p in m.path}
    assert all("/test/" not in p for p in pool.path)
    assert pool.groupby("label").size().max() <= 20 and set(pool.label) == set(m.label)
    metrics = json.loads((res / "judge/metrics.json").read_text())
    assert metrics["train_counts"] == pool.groupby("label").size().to_dict()
    assert 0 <= metrics["val_accuracy"] <= 1


def test_cost_table_sums_the_benchmark_files(tiny_run):
    """Every job of the study has a row; the per-stage and per-method sums are
    those of the benchmark files Snakemake wrote; on CPU no GPU-seconds."""
    wd, _ = tiny_run
    res = wd / "results"
    weak = json.loads((res / "analysis/weak_classes.json").read_text())["classes"]

    def wall(rel):
        return float(pd.read_csv(wd / "results" / "benchmarks" / rel, sep="\t")["s"].iloc[0])

    t = pd.read_csv(res / "tables/cost.csv", keep_default_na=False)
    row = lambda stage, cls="", method="": t[(t.stage == stage) & (t["class"] == cls) & (t.method == method)].iloc[0]
    assert row("train_baseline").wall_s == pytest.approx(wall("train_baseline.tsv"), abs=1e-6)
    # CPU seconds: the job's own count from its sidecar (Snakemake's sampled one misses a job's tail)
    meta = json.loads((res / "baseline/train_baseline.meta.json").read_text())
    assert row("train_baseline").cpu_s == pytest.approx(meta["cpu_seconds"], abs=1e-6)
    assert meta["cpu_seconds"] > 1.0  # 8 epochs take more (imports too, where the job is not a warm fork)
    m_ = pd.read_csv(res / "data/manifest.csv")
    adapted = [c for c in weak if _wanted(c, ((m_.split == "train") & (m_.label == c)).sum()) > 0]  # others: 0
    for cls in adapted:
        assert row("textual_inversion", cls).wall_s == pytest.approx(wall(f"textual_inversion/{cls}.tsv"), abs=1e-6)
        for kind in ("lora", "ti_lora"):
            assert row("lora", cls, kind).wall_s == pytest.approx(wall(f"lora/{kind}/{cls}.tsv"), abs=1e-6)
    for cls in adapted:
        assert row("invert", cls, "diff_ii").wall_s == pytest.approx(wall(f"invert/{cls}.tsv"), abs=1e-6)
        assert row("coti", cls).wall_s == pytest.approx(wall(f"coti/{cls}.tsv"), abs=1e-6)
        for mode in ("raw", "ti", "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie_ada", "fg_i2i"):
            assert row("sample", cls, mode).wall_s == pytest.approx(wall(f"sample/{mode}/{cls}.tsv"), abs=1e-6)
    r = row("retrain", "", "ti")
    assert r.jobs == 2 and r.wall_s == pytest.approx(wall("retrain/ti/seed0.tsv") + wall("retrain/ti/seed1.tsv"))
    assert len(t[t.stage == "retrain_ablation"]) == 3
    total = t[t.stage == "total"].iloc[0]
    # per weak class its seeds; where it gets images TI, COTI, their nearest words, 2 LoRA, diff_ii's
    # inversions, 10 modes x (sample, filter), grid, FID, judge, real_oracle's images and noise_static's; 22
    # methods x 2 seeds; the training images' features for the knn filters (once); the frozen stages' outputs
    # for the retraining runs (once); Diff-II's shared adapter (once)
    assert total.jobs == t[t.stage != "total"].jobs.sum() == (4 + 2 + len(weak) + len(adapted) * 31 + 44 + 3
                                                              + bool(adapted) + 1 + 1)
    assert row("lora_shared").jobs == 1 and row("lora_shared").wall_s == pytest.approx(wall("lora/ti_shared.tsv"))
    # the denoising steps per kept image: genie_ada's (its filter keeps all) from its tables, each image at
    # both its levels (2 steps: 1 at 0.5, 2 at 1.0); ti_i2i's (1 step an image) where its filter kept any
    from tibalance.cost import unet_steps

    methods = pd.read_csv(res / "tables/cost_methods.csv").set_index("method")
    cfg = yaml.safe_load(TINY.read_text())
    for mode, levels in (("genie_ada", cfg["genie"]["levels"]), ("ti_i2i", None)):
        made = sum(unet_steps(pd.read_csv(res / f"samples/{mode}/{c}/samples.csv").strength, cfg["sampling"]["steps"],
                              levels) for c in adapted)
        kept = sum(int(pd.read_csv(res / f"samples/{mode}/{c}/filtered.csv").kept.sum()) for c in adapted)
        assert made > 0
        if kept:
            assert methods.loc[mode, "unet_steps_per_kept"] == pytest.approx(made / kept)
        else:
            assert pd.isna(methods.loc[mode, "unet_steps_per_kept"])
    assert methods.loc["genie_ada", "unet_steps_per_kept"] == pytest.approx(3.0)
    assert row("oracle_images", adapted[0], "real_oracle").jobs == 1
    assert row("frozen_features", "", "").jobs == 1
    assert row("train_features").jobs == 1
    for stage in ("textual_inversion", "sample", "filter_samples", "fid", "judge"):
        assert set(t[t.stage == stage]["class"]) == set(adapted)  # those classes' jobs, no others
    assert total.wall_s == pytest.approx(t[t.stage != "total"].wall_s.sum())
    assert (t.gpu_s == 0).all()  # this machine has no GPU (and every job has its benchmark file)

    m = pd.read_csv(res / "tables/cost_methods.csv").set_index("method")
    assert list(m.index) == yaml.safe_load(TINY.read_text())["retrain"]["methods"]  # in the config's order
    assert m.loc["real_oracle", "synthetic_wall_s"] == pytest.approx(
        sum(wall(f"oracle_images/{cls}.tsv") for cls in adapted))
    ti = sum(wall(f"select_seeds/{cls}.tsv") for cls in weak) + sum(wall(f"textual_inversion/{cls}.tsv") for cls in adapted) + sum(
        wall(f"{stage}/ti/{cls}.tsv") for cls in adapted for stage in ("sample", "filter_samples"))
    assert m.loc["ti", "synthetic_wall_s"] == pytest.approx(ti)
    assert m.loc["baseline", "synthetic_wall_s"] == 0 and m.loc["ti", "retrain_runs"] == 2
    assert m.loc["ti", "total_wall_s"] == pytest.approx(ti + r.wall_s)
    # token + LoRA: the seeds, the token and the adapter on top of it, its images
    ti_lora = sum(wall(f"select_seeds/{cls}.tsv") for cls in weak) + sum(
        wall(f"textual_inversion/{cls}.tsv") + wall(f"lora/ti_lora/{cls}.tsv") for cls in adapted) + sum(
        wall(f"{stage}/ti_lora/{cls}.tsv") for cls in adapted for stage in ("sample", "filter_samples"))
    assert m.loc["ti_lora", "synthetic_wall_s"] == pytest.approx(ti_lora)
    lora_i2i = sum(wall(f"select_seeds/{cls}.tsv") for cls in weak) + sum(wall(f"lora/lora/{cls}.tsv") for cls in adapted) + sum(
        wall(f"{stage}/lora_i2i/{cls}.tsv") for cls in adapted for stage in ("sample", "filter_samples"))
    assert m.loc["lora_i2i", "synthetic_wall_s"] == pytest.approx(lora_i2i)  # its adapter is lora's
    md = (res / "tables/cost.md").read_text()
    assert "textual_inversion" in md and "Per method" in md


def test_a_deleted_benchmark_file_reruns_nothing(tiny_run, tmp_path):
    """The cost table reads the benchmark files but waits for the jobs' outputs:
    without a benchmark file nothing is recomputed, and the table says so."""
    import shutil

    wd0, _ = tiny_run
    wd = tmp_path / "run"
    shutil.copytree(wd0, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))  # shared: another worker may run in it
    (wd / "results/benchmarks/train_baseline.tsv").unlink()
    p = snakemake(wd, "-n")
    assert "Nothing to be done" in p.stdout + p.stderr
    snakemake(wd, "--forcerun", "cost", "results/tables/cost.md")
    t = pd.read_csv(wd / "results/tables/cost.csv", keep_default_na=False)
    assert t[t.stage == "train_baseline"].wall_s.iloc[0] == ""
    assert "1 job(s) have no benchmark file" in (wd / "results/tables/cost.md").read_text()


def test_snakemake_report(tiny_run):
    from tibalance.util import _inline

    wd, _ = tiny_run
    snakemake(wd, "--report", str(wd / "report.html"), cores=1)
    html = (wd / "report.html").read_text(errors="replace")
    # the report shows HTML and images (a .md or .csv file it offers only as a download)
    for name in ("summary.html", "per_class.html", "cost.html", "ablation.html", "accuracy_change.png",
                 "fid_raw_vs_ti.png", "confusion.png"):
        assert name in html
    for table in ("tables/summary", "tables/per_class", "tables/cost", "analysis/per_class"):
        md, page = (wd / f"results/{table}.md").read_text(), (wd / f"results/{table}.html").read_text()
        rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
        n_tables = sum(line.startswith("| ---") for line in md.splitlines())
        assert page.count("<tr>") == len(rows) and page.count("<table>") == n_tables > 0, table
        first = rows[1].strip("| ").split(" | ")[0]  # the first cell of the first data row, as the page shows it
        assert f"<td>{_inline(first)}</td>" in page, table  # as the page renders it (code, bold, escapes)


def _plan_edit(tiny_run, tmp_path, edit) -> tuple[list, str]:
    """The jobs (and the dry run's output) the tiny config plans on the tiny
    run's folder once `edit` (a function of the config dict) has changed it."""
    wd, _ = tiny_run
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    return _planned_jobs(p.stdout + p.stderr), p.stdout + p.stderr


def test_forcing_the_report_plans_with_the_params_that_read_the_weak_classes(tiny_run):
    """`--forcerun report` on the finished tiny run: a dry run plans the report
    and nothing upstream of it; the params that read the checkpoint (the refill
    count of oversample and noise, the noise images' count) have its output
    among their inputs, so Snakemake does not refuse the DAG."""
    wd, _ = tiny_run
    p = snakemake(wd, "-n", "--forcerun", "report")
    jobs = {r for r, _ in _planned_jobs(p.stdout + p.stderr)}
    assert "report" in jobs and jobs <= {"report", "all"} and "WorkflowError" not in p.stderr, jobs


def test_a_study_without_a_generative_method_plans_no_generator(tiny_run, tmp_path):
    """retrain.methods [baseline, oversample, noise, noise_static] on a copy of
    the tiny run holding only its data, baseline and confusion analysis: the
    DAG plans the seeds, noise_static's noise images, the runs and the tables,
    and no generator, token,
    adapter, sampling, filter, judge, grid or FID job."""
    import shutil

    wd0, _ = tiny_run
    wd = tmp_path / "nogen"
    keep = ("data", "baseline", "analysis")
    shutil.copytree(wd0, wd, symlinks=True, ignore=lambda d, names: (
        [n for n in names if n not in keep] if d == str(wd0 / "results") else
        ["locks"] if d == str(wd0 / ".snakemake") else []))
    cfg = yaml.safe_load(TINY.read_text())
    cfg["retrain"]["methods"] = ["baseline", "oversample", "noise", "noise_static"]
    cfg["ablation"] = {"methods": []}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    rules = {r for r, _ in _planned_jobs(p.stdout + p.stderr)}
    generative = {"build_generator", "pretrain_vae", "pretrain_generator", "generator_quality", "textual_inversion",
                  "coti", "lora", "invert", "sample", "filter_samples", "judge", "train_judge", "judge_pool",
                  "sample_grid", "fid", "token_neighbours"}
    assert not rules & generative, sorted(rules & generative)
    assert {"retrain", "noise_images", "report", "cost"} <= rules, sorted(rules)


def test_diff_ii_on_the_coti_token_inverts_and_samples_under_it(tiny_run, tmp_path):
    """diff_ii.concept: coti: the class's inversions and diff_ii images are
    made under its COTI token (coti's output an input of both), nothing else
    of the study changes."""
    jobs, out = _plan_edit(tiny_run, tmp_path, lambda cfg: cfg.update(diff_ii={"concept": "coti"}))
    adapted = ("triangle", "circle")  # the two classes that get images
    assert sorted(jobs) == sorted(
        [j for cls in adapted for j in [
            ("invert", f"cls={cls}"), ("sample", f"mode=diff_ii, cls={cls}"),
            ("filter_samples", f"mode=diff_ii, cls={cls}"), ("judge", f"cls={cls}"), ("sample_grid", f"cls={cls}"),
            ("fid", f"cls={cls}")]]
        + [("retrain", f"method={m}, seed={s}") for m in ("diff_ii", "oversample+diff_ii") for s in (0, 1)]
        + [("report", ""), ("cost", ""), ("all", "")]), jobs
    for rule in ("invert", "sample"):
        block = _job_block(out, rule)
        for cls in adapted:
            assert f"results/coti/{cls}/learned_embeds.safetensors" in block, block
            assert f"results/inversion/{cls}/learned_embeds.safetensors" not in block, block


def test_training_from_scratch_retrains_every_run_without_the_baseline(tiny_run, tmp_path):
    """The tiny config fine-tunes the baseline (retrain.init: baseline, as the
    demo); init: scratch plans every retraining and ablation run again, now
    without the baseline classifier as an input, and nothing upstream of them."""
    wd, _ = tiny_run
    p = snakemake(wd, "-n", "--forceall", "results/retrain/ti/seed0/metrics.json")
    assert "results/baseline/model.pt" in _job_block(p.stdout, "retrain")  # the tiny run's runs start from it
    cfg = yaml.safe_load(TINY.read_text())
    cfg["retrain"]["init"] = "scratch"
    cfg["retrain"]["classifier"] = {"epochs": 8}
    edited = tmp_path / "scratch.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    rules = sorted({r for r, _ in _planned_jobs(p.stdout + p.stderr)})
    assert rules == ["all", "cost", "report", "retrain", "retrain_ablation"]
    assert len(_planned_jobs(p.stdout + p.stderr)) == 44 + 3 + 3  # 22 methods x 2 seeds, 3 ablation runs
    for rule in ("retrain", "retrain_ablation"):
        assert "results/baseline/model.pt" not in _job_block(p.stdout, rule)


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
        "data": {"max_per_class": {"train": 200, "val": 40, "test": 40}},
        "classifier": {"epochs": 3},
    }))
    snakemake(tmp_path, "results/analysis/weak_classes.json",
              configfiles=[REPO / "config/demo.yaml", overlay])
    m = pd.read_csv(tmp_path / "results/data/manifest.csv")
    train = m[m.split == "train"].groupby("label").size()
    assert train["shirt"] == 2 and train["coat"] == 200  # 1% of the capped 200
    weak = json.loads((tmp_path / "results/analysis/weak_classes.json").read_text())["classes"]
    assert "shirt" in weak
