"""An edit reruns exactly what depends on it (#49): for each per-class section
(tibalance.scope.EDITS), an edit for one of the finished tiny run's two adapted
classes plans exactly the jobs that tibalance.scope's table derives - the
class's jobs that read the section, all that read theirs, the runs of the
methods that train on them, the tables - no job of the other classes (but the
diff_ii jobs of each, where the edit reaches the adapter the classes share:
`diff_ii.concept: ti_shared_lora`, the default) and no run of a method that
reads none of them. The table is the one
docs/outputs.md's "What an edit reruns" is generated from."""
import pytest
import yaml
from conftest import TINY, planned_jobs, snakemake

from tibalance.defaults import DIFF_II_DEFAULTS
from tibalance.retrain import REFILLED, ablation_variants, study_modes
from tibalance.scope import EDITS, Study, rerun

CFG = yaml.safe_load(TINY.read_text())
ADAPTED = ["triangle", "circle"]  # square, the third weak class, gets no images


def _study() -> Study:
    methods = CFG["retrain"]["methods"]
    return Study(modes=tuple(study_modes(methods)), methods=tuple(methods),
                 ablation=tuple(CFG["ablation"]["methods"]),
                 concept={**DIFF_II_DEFAULTS, **(CFG.get("diff_ii") or {})}["concept"],
                 judge=CFG["judge"]["train_per_class"] > 0)


def expected(section: str, key: str, cls: str) -> list[tuple[str, str]]:
    """The dry run's (rule, wildcards) for each job the table says the edit
    reruns (a job of every class: that job of each adapted class)."""
    out = set()  # a class's own job and the same job of every class: one job
    for job in rerun(section, key, _study()):
        for c in (ADAPTED if len(job) == 3 else [cls]):
            out.update(_wildcards(*job[:2], c))
    return sorted(out)


def _wildcards(rule: str, kind, cls: str) -> list[tuple[str, str]]:
    seeds, ab = CFG["retrain"]["seeds"], CFG["ablation"]
    if rule in ("sample", "filter_samples"):
        return [(rule, f"mode={kind}, cls={cls}")]
    if rule == "lora":
        return [(rule, f"adapter={kind}, cls={cls}")]
    if rule == "retrain":
        return [(rule, f"method={kind}, seed={s}") for s in seeds]
    if rule == "retrain_ablation":
        return [(rule, f"method={kind}, variant={v}, seed={s}")
                for v in ablation_variants(ab["counts"]) for s in ab["seeds"]]
    if rule in ("lora_shared", "report", "cost", "all"):
        return [(rule, "")]
    return [(rule, f"cls={cls}")]


def _plan(wd, tmp_path, cls: str, section: str, key: str, value) -> list[tuple[str, str]]:
    cfg = yaml.safe_load(TINY.read_text())
    own = cfg.setdefault("classes", {}).setdefault(cls, {})
    own.setdefault(section, {})[key] = value
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", configfiles=[edited])
    return sorted(planned_jobs(p.stdout + p.stderr))


def test_the_tiny_run_has_two_adapted_classes(tiny_run):
    wd, _ = tiny_run
    for cls in ADAPTED:
        assert (wd / f"results/inversion/{cls}/learned_embeds.safetensors").exists(), cls
    assert not (wd / "results/inversion/square").exists()


# each section edited for one class, the two classes in turn
CASES = [(ADAPTED[i % 2], *edit) for i, edit in enumerate(EDITS)]


@pytest.mark.parametrize("cls,section,key,value", CASES, ids=[f"{c}-{s}.{k}" for c, s, k, _ in CASES])
def test_an_edit_of_one_class_plans_exactly_what_reads_it(tiny_run, tmp_path, cls, section, key, value):
    wd, _ = tiny_run
    jobs = _plan(wd, tmp_path, cls, section, key, value)
    assert jobs == expected(section, key, cls), (section, key, cls)
    others = [c for c in ("triangle", "circle", "square") if c != cls]
    theirs = [j for j in jobs if any(f"cls={o}" in j[1] for o in others)]
    if ("lora_shared", "") in jobs:  # the shared adapter: the other class's diff_ii jobs and what reads them
        assert theirs and all(r in ("invert", "fid", "sample_grid", "judge") or "mode=diff_ii" in w for r, w in theirs)
    else:
        assert not theirs  # no job of another class
    assert (section == "ti") == (("lora_shared", "") in jobs)  # only the token reaches it
    runs = {w.split(",")[0].removeprefix("method=") for r, w in jobs if r == "retrain"}
    assert not runs & {"baseline", "oversample", "noise", "reweight", "drw", "cmo", *REFILLED}  # nothing without images


def test_the_refill_count_is_a_tracked_param_of_oversample_and_noise_static(tiny_run, tmp_path):
    """sampling.n_images of one class: the runs that refill with real images
    (oversample, deferred_oversample, noise_static) rerun, as the table says,
    with every mode's samples of that class; not baseline, OPeN (its noise is
    drawn in the loop, by the class counts) or the re-weighting runs."""
    wd, _ = tiny_run
    jobs = _plan(wd, tmp_path, "triangle", "sampling", "n_images", {"fill_to": 9})
    runs = {w.split(",")[0].removeprefix("method=") for r, w in jobs if r == "retrain"}
    assert {m for m in REFILLED if m in CFG["retrain"]["methods"]} <= runs
    assert not runs & {"baseline", "noise", "reweight", "drw", "cmo"}
    assert not [j for j in jobs if "cls=circle" in j[1] or "cls=square" in j[1]]
    assert {("sample", f"mode={m}, cls=triangle") for m in study_modes(CFG["retrain"]["methods"])} <= set(jobs)


def test_an_edit_of_a_class_that_gets_no_images_plans_nothing(tiny_run, tmp_path):
    wd, _ = tiny_run
    assert _plan(wd, tmp_path, "square", "ti", "steps", 4) == []  # no token is trained for it
