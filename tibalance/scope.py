"""What an edit of one class's settings reruns, as one table: which rules read
which per-class section (and which of its keys), and which rules read which
rules' outputs. The rerun-scope test derives from it the jobs a dry run must
plan after each edit (tests/test_rerun_scope.py); docs/outputs.md's "What an
edit reruns" is generated from it (`python -m tibalance.docs config`).

A job is (rule, kind): kind is the sampling mode of `sample` and
`filter_samples`, the adapter of `lora`, the method of `retrain` and
`retrain_ablation`, None for the rules with one job a class (or a study).
Diff-II's shared adapter (concept ti_shared_lora) reads every class's token,
so an edit that reaches it reaches every class's diff_ii jobs: those are
(rule, kind, EVERY), a job of each adapted class."""
from __future__ import annotations

from dataclasses import dataclass

from .defaults import MODES, uses
from .retrain import MODE_OF, REFILLED

ALL = None  # every key of the section
EVERY = "every class"  # a job's third field: the job of each adapted class, not only the edited one's

# which rules' params read which per-class section: {section: [(rule, kind or
# "*" (every kind the class has), the keys read (ALL) or ("but", keys): all
# but those)]}. The sampling settings reach the inversion only through the
# keys that shape it (the denoising's scheduler, guidance and strength do not).
READS: dict[str, list[tuple[str, str | None, object]]] = {
    "ti": [("textual_inversion", None, ALL)],
    "lora": [("lora", "*", ALL)],
    "sampling": [("sample", "*", ALL), ("coti", None, ("but", ("n_images", "strength"))),
                 ("invert", None, ("steps", "resolution", "templates", "mixed_precision", "device", "attention",
                                   "channels_last", "compile")),
                 # the refill count: the runs that refill with real images, the class's noise images
                 ("retrain", "refilled", ("n_images",)), ("noise_images", None, ("n_images",))],
    "filter": [("filter_samples", "*", ALL)],
    "diff_ii": [("sample", "diff_ii", ALL), ("invert", None, ("concept", "inversion_refine"))],
    "coti": [("coti", None, ALL)],
    "feedback": [("sample", "fg_i2i", ALL)],
    "genie": [("sample", "genie", ("but", ("levels", "early_stop", "filter"))),
              ("sample", "genie_ada", ("but", ("level", "filter"))),
              ("filter_samples", "genie", ("filter",)), ("filter_samples", "genie_ada", ("filter",))],
}

# one edit of each section (section, key, value), each a key some rule reads:
# the edits the rerun-scope test makes, and with sampling.n_images (whose reach
# into the noise images depends on rounding their share) the rows of the docs'
# table
EDITS: list[tuple[str, str, object]] = [
    ("ti", "steps", 4),
    ("lora", "rank", 2),
    ("sampling", "guidance_scale", 5.0),
    ("filter", "quantile", 0.5),
    ("diff_ii", "split_ratio", 0.9),
    ("coti", "per_cycle", 1),
    ("genie", "confusers", 2),
    ("feedback", "scale", 0.2),
]
DOC_EDITS = [*EDITS[:3], ("sampling", "n_images", None), *EDITS[3:]]

# the per-class rules that read every mode's images of the class (its FID and
# grid: all it sampled) or every mode's kept images (its judge; lpips where
# metrics.lpips is on), and the study-wide ones that read every run and job
SAMPLE_READERS = ("fid", "sample_grid")
FILTER_READERS = ("judge", "lpips")
CLASS_READERS = (*SAMPLE_READERS, *FILTER_READERS)
TABLES = ("report", "cost")
# the rules with a job a class (the rest: one a study, or one a method)
CLASS_RULES = ("textual_inversion", "lora", "coti", "invert", "token_neighbours", "sample", "filter_samples",
               *CLASS_READERS, "noise_images")


@dataclass(frozen=True)
class Study:
    """What a study makes of one adapted class: the modes sampled, the adapters,
    the token jobs, the retraining and ablation methods, diff_ii's concept."""
    modes: tuple[str, ...]
    methods: tuple[str, ...]
    ablation: tuple[str, ...] = ()
    concept: str = "ti"
    genie: str = "raw"
    judge: bool = True
    lpips: bool = False

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(a for a in ("lora", "ti_lora") if a in {uses(m, self.concept, self.genie)[1] for m in self.modes})

    @property
    def shared(self) -> bool:
        """Whether diff_ii samples with the adapter the classes share (rule lora_shared)."""
        return "diff_ii" in self.modes and self.concept in ("ti_shared_lora", "auto")  # auto: several classes

    @property
    def coti(self) -> bool:
        return any(uses(m, self.concept, self.genie)[0] == "coti" for m in self.modes)


def readers(job: tuple, s: Study) -> list[tuple]:
    """The jobs that read `job`'s outputs in study `s` (one class; a job of every
    class reaches every class's readers)."""
    if len(job) == 3:
        return [(r, k, EVERY) if r in CLASS_RULES else (r, k) for r, k in readers(job[:2], s)]
    rule, kind = job
    token_modes = lambda token: [m for m in s.modes if uses(m, s.concept, s.genie)[0] == token]  # noqa: E731
    if rule == "textual_inversion":
        out = [("sample", m) for m in token_modes("ti")] + [("token_neighbours", None)]
        out += [("lora", "ti_lora")] if "ti_lora" in s.adapters else []
        out += [("coti", None)] if s.coti else []
        out += [("lora_shared", None)] if s.shared else []
        return out + ([("invert", None)] if "diff_ii" in s.modes and s.concept in ("ti", "ti_shared_lora", "auto") else [])
    if rule == "lora_shared":
        return [("invert", None, EVERY), ("sample", "diff_ii", EVERY)]
    if rule == "coti":
        out = [("sample", m) for m in token_modes("coti")] + [("token_neighbours", None)]
        return out + ([("invert", None)] if "diff_ii" in s.modes and s.concept == "coti" else [])
    if rule == "lora":
        return [("sample", m) for m in s.modes if uses(m, s.concept, s.genie)[1] == kind]
    if rule == "invert":
        return [("sample", "diff_ii")]
    if rule == "sample":
        return [("filter_samples", kind)] + [(r, None) for r in SAMPLE_READERS]
    if rule == "filter_samples":
        out = [(r, None) for r in FILTER_READERS if getattr(s, r)]
        out += [("retrain", m) for m in s.methods if MODE_OF.get(m) == kind]
        return out + [("retrain_ablation", m) for m in s.ablation if MODE_OF.get(m) == kind]
    if rule == "noise_images":
        return [("retrain", m) for m in s.methods if m == "noise_static"]
    if rule in (*CLASS_READERS, "token_neighbours", "retrain", "retrain_ablation"):
        return [(r, None) for r in TABLES]
    if rule in TABLES:
        return [("all", None)]
    if rule == "all":
        return []
    raise KeyError(f"scope: no readers known for rule {rule!r}")


def _reads_key(keys, key: str) -> bool:
    if keys is ALL:
        return True
    if keys[0] == "but":
        return key not in keys[1]
    return key in keys


def direct(section: str, key: str, s: Study) -> list[tuple[str, str | None]]:
    """The class's jobs whose params read `section.key`."""
    out = []
    for rule, kind, keys in READS[section]:
        if not _reads_key(keys, key):
            continue
        if rule == "coti" and not s.coti or rule == "invert" and "diff_ii" not in s.modes:
            continue
        if rule == "noise_images" and "noise_static" not in s.methods:
            continue
        kinds = {"sample": s.modes, "filter_samples": s.modes, "lora": s.adapters,
                 "retrain": [m for m in s.methods if m in REFILLED]}.get(rule, (None,))
        out += [(rule, k) for k in kinds if kind in ("*", None, "refilled") or k == kind]
    return out


def rerun(section: str, key: str, s: Study) -> set[tuple[str, str | None]]:
    """Every job an edit of one class's `section.key` reruns: the jobs that read
    it, and all that read theirs."""
    todo, seen = direct(section, key, s), set()
    while todo:
        job = todo.pop()
        if job not in seen:
            seen.add(job)
            todo += readers(job, s)
    return seen


ORDER = ["textual_inversion", "lora", "lora_shared", "coti", "invert", "token_neighbours", "sample", "filter_samples",
         *CLASS_READERS, "noise_images", "retrain", "retrain_ablation", *TABLES, "all"]


def _kinds(kinds: set, every: tuple, what: str) -> str:
    return f"every {what}" if set(every) <= kinds else ", ".join(f"`{k}`" for k in every if k in kinds)


def markdown() -> str:
    """docs/outputs.md's table: for each edit of one class's settings, the jobs
    of that class it reruns and the retraining runs (of every mode and method
    of the registry; a study reruns those of them it has)."""
    from .defaults import DIFF_II_DEFAULTS

    s = Study(modes=MODES, methods=tuple(MODE_OF) + REFILLED, ablation=tuple(MODE_OF),
              concept=DIFF_II_DEFAULTS["concept"])
    lines = ["| a class's edit | reruns, of that class | and the runs of |", "| --- | --- | --- |"]

    def cells_of(jobs) -> list[str]:
        by = {}
        for rule, kind in jobs:
            by.setdefault(rule, set()).add(kind)
        cells = []
        for rule in [r for r in ORDER if r in by]:
            if rule in ("retrain", "retrain_ablation", *TABLES, "all"):
                continue
            if rule in ("sample", "filter_samples"):
                cells.append(f"`{rule}` ({_kinds(by[rule], MODES, 'mode')})")
            elif rule == "lora":
                cells.append(f"`lora` ({_kinds(by[rule], ('lora', 'ti_lora'), 'adapter')})")
            else:
                cells.append(f"`{rule}`")
        return cells

    for section, key, _ in DOC_EDITS:
        jobs = rerun(section, key, s)
        cells = cells_of({j for j in jobs if len(j) == 2})
        every = cells_of({j[:2] for j in jobs if len(j) == 3})
        if every:
            cells.append("and of every adapted class (`diff_ii.concept: ti_shared_lora`, the default's where "
                         "more than one class gets images): "
                         + ", ".join(every))
        modes = sorted({j[1] for j in jobs if j[0] == "filter_samples"}, key=MODES.index)
        runs = [f"the methods (and ablation cells) on the images of {_kinds(set(modes), MODES, 'mode')}"
                if modes else ""]
        refilled = [m for m in REFILLED if ("retrain", m) in jobs]
        runs += [f"{', '.join(f'`{m}`' for m in refilled)} (the refill count)"] if refilled else []
        lines.append(f"| `{section}.{key}` | {', '.join(cells)} | {'; '.join(r for r in runs if r)}; the tables |")
    return "\n".join(lines) + "\n"
