# Validation, class lists and the input/params functions of the DAG.
import os
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from tibalance.config import (
    canonical,
    check_class_names,
    check_freeze,
    check_generator_preset,
    check_lora,
    check_diff_ii,
    check_oracle_at,
    check_replicates,
    check_verdict,
    class_settings,
    format_validation_error,
    refill_count,
    replicate_dir,
    replicate_index,
    replicate_count,
    replicate_of,
)
from tibalance.data import oracle_absent_reason
from tibalance.sources import check_root, dataset_class_names
from tibalance.defaults import FILTER_DEFAULTS
from tibalance.fetch import (
    WEIGHTS_DIR,
    classifier_weights_file,
    dataset_marker,
    inception_weights_file,
    lpips_weights_file,
    weights_to_fetch,
)
from tibalance.generator import check_model, is_local, shipped_or_given
from tibalance.ship import SIDECAR as SHIPPED_SIDECAR
from tibalance.fetch import fetched_folder
from tibalance.defaults import (
    COTI_DEFAULTS,
    DEFERRED_METHODS,
    DIFF_II_DEFAULTS,
    FID_RELIABLE_IMAGES,
    FEEDBACK_DEFAULTS,
    GENIE_DEFAULTS,
    GENIE_MODES,
    LORA_DEFAULTS,
    MODES,
    PRETRAIN_DEFAULTS,
    PRETRAIN_VAE_KEYS,
    SAMPLING_DEFAULTS,
    SHARED_ADAPTER,
    TI_DEFAULTS,
    paper_split_ratio,
    uses,
)
from tibalance.rebalance import NOISE_DEFAULTS, noise_count
from tibalance.retrain import (
    MODE_OF,
    REFILLED,
    ablation_variants,
    parse_variant,
    study_modes,
)
from tibalance.util import TibalanceError, derive_seed, read_json

CONFIGFILE = (workflow.configfiles or ["config/config.yaml"])[-1]


def _fail(msg):
    # one line, no traceback: the run stops before any job starts
    sys.exit(f"tibalance: {msg}")


try:
    validate(config, "../config/schema.yaml")
except WorkflowError as e:
    err = e.__context__  # the jsonschema ValidationError validate() caught
    err = err if hasattr(err, "absolute_path") else None
    _fail(
        format_validation_error(err, CONFIGFILE)
        if err is not None
        else f"{CONFIGFILE}: {e}"
    )

# the Stable Diffusion pipeline: built offline (tiny) or a local folder / hub id;
# FETCH_REPO: the hub id fetch_generator downloads (None: nothing to fetch, no such rule)
FETCH_REPO = None
GIVEN_MODEL = shipped_or_given(config["generator"]["model"], workflow.basedir)
if config["generator"]["build"] == "tiny":
    MODEL = "results/generator/tiny_sd"
elif config["generator"]["build"] == "pretrain":
    MODEL = "results/generator/pretrained_sd"
elif is_local(GIVEN_MODEL):
    MODEL = GIVEN_MODEL
else:
    # a hub id: the local rule fetch_generator downloads it on the login node;
    # every job opens the folder, never the hub
    FETCH_REPO = config["generator"]["model"]
    MODEL = fetched_folder(FETCH_REPO)

# the pretraining sidecar generator_quality reads (the classes the generator
# learned): the one pretrain_generator writes, or the shipped folder's (the demo's
# generator, saved by `make demo-generator`); None: a generator not made by
# tibalance (SD): no quality table
if config["generator"]["build"] == "pretrain":
    LEARNED = "results/generator/pretrain_generator.meta.json"
elif config["generator"]["build"] == "none" and os.path.exists(
    f"{MODEL}/{SHIPPED_SIDECAR}"
):
    LEARNED = f"{MODEL}/{SHIPPED_SIDECAR}"
else:
    LEARNED = None

# downloads other than the generator's, done by local rules (rules/fetch.smk):
# torchvision's dataset download (data.download: true) and the weights files
DATASET_MARKER = dataset_marker(config["data"])
DATASET_FETCHED = [DATASET_MARKER] if DATASET_MARKER else []
WEIGHTS = weights_to_fetch(
    config
)  # {file name: URL}; {} when nothing is pretrained and FID uses no Inception

# the class-fidelity judge: a given checkpoint, one trained on images the study
# does not use (judge.train_per_class > 0), or none
JUDGE = config["judge"].get("model") or (
    "results/judge/model.pt" if config["judge"]["train_per_class"] else None
)
# the judge's pool per class (the oracle never takes those images), 0 when no judge is trained
JUDGE_POOL_PER_CLASS = (
    0 if config["judge"].get("model") else int(config["judge"]["train_per_class"])
)

try:
    if config["judge"].get("model") and not os.path.isfile(config["judge"]["model"]):
        raise TibalanceError(
            f"judge.model: judge checkpoint {config['judge']['model']} does not exist"
        )
    if config["generator"]["build"] == "none":
        check_model(GIVEN_MODEL)
    check_root(config["data"])
    check_class_names(config, dataset_class_names(config["data"]))
    check_lora(config)
    check_freeze(config)
    check_replicates(config)
    check_verdict(config)
    check_oracle_at(config)
    check_diff_ii(config)
    check_generator_preset(config)
except TibalanceError as e:
    _fail(f"{CONFIGFILE}: {e}")


SEED = config["seed"]
REPLICATES = replicate_count(config)
# what diff_ii samples on (the study's: it decides which token and adapters are
# made); auto: diff_ii_concept() resolves it once the weak classes are known
CONCEPT = {**DIFF_II_DEFAULTS, **(config.get("diff_ii") or {})}["concept"]
# what the genie modes' prompts name the weak class by (the study's: raw, ti, lora, ti_lora)
GENIE_CONCEPT = {**GENIE_DEFAULTS, **(config.get("genie") or {})}["concept"]

# real_oracle needs real images the study removed: elsewhere its row is absent,
# with the reason once on the terminal and under the summary table
ORACLE_ABSENT = (
    oracle_absent_reason(config["data"])
    if any(m.startswith("real_oracle") for m in config["retrain"]["methods"])
    else None
)
if ORACLE_ABSENT:
    print(f"tibalance: {ORACLE_ABSENT}", file=sys.stderr)
    config["retrain"]["methods"] = [
        m for m in config["retrain"]["methods"] if not m.startswith("real_oracle")
    ]

# whether any retraining method reads synthetic images: a study of baseline,
# oversample, noise and the re-weighting methods alone needs no generator, token,
# sampling, judge or FID
GENERATIVE = any(m in MODE_OF for m in config["retrain"]["methods"])
# sampling modes the study generates: raw and ti always (grids, FID) in a
# generative study; the real-image-guided and LoRA modes when their retraining
# method is part of the study
STUDY_MODES = study_modes(config["retrain"]["methods"])
# the per-class LoRA adapters those modes need (lora_i2i samples with the `lora`
# adapter; diff_ii with its concept's), and whether diff_ii samples with the one
# adapter the classes share (concept ti_shared_lora: rule lora_shared)
STUDY_ADAPTERS = sorted(
    {uses(m, CONCEPT, GENIE_CONCEPT)[1] for m in STUDY_MODES} - {None, SHARED_ADAPTER},
    key=["lora", "ti_lora"].index,
)
STUDY_SHARED = any(
    uses(m, CONCEPT, GENIE_CONCEPT)[1] == SHARED_ADAPTER for m in STUDY_MODES
)
# replicates k > 0 make only what a retraining run reads: the modes of the
# synthetic methods (oversample counts replicate 0's raw table: the count is the
# same), their adapters, and the token where a mode or adapter needs it
REP_MODES = [
    m
    for m in MODES
    if m in {MODE_OF[x] for x in config["retrain"]["methods"] if x in MODE_OF}
]
REP_ADAPTERS = [
    k
    for k in STUDY_ADAPTERS
    if k in {uses(m, CONCEPT, GENIE_CONCEPT)[1] for m in REP_MODES}
]
REP_SHARED = any(
    uses(m, CONCEPT, GENIE_CONCEPT)[1] == SHARED_ADAPTER for m in REP_MODES
)
REP_TOKEN = (
    any(uses(m, CONCEPT, GENIE_CONCEPT)[0] for m in REP_MODES)
    or "ti_lora" in REP_ADAPTERS
)
# a COTI token (rule coti) where a mode samples with it (coti; diff_ii on concept coti)
STUDY_COTI = any(uses(m, CONCEPT, GENIE_CONCEPT)[0] == "coti" for m in STUDY_MODES)
REP_COTI = any(uses(m, CONCEPT, GENIE_CONCEPT)[0] == "coti" for m in REP_MODES)


def _rep(wildcards):
    """The job's {rep} wildcard: empty for replicate 0, a rep<k> folder below the class's for replicate k."""
    return wildcards.get("rep", "") or ""


def section(name):
    """A config section as a params value: keys sorted, so that only a change of
    value (not of key order) reruns the jobs that use it."""
    return canonical(config[name])


# the retrain keys only some methods read: {key: those methods}
METHOD_KEYS = {
    "noise": ("noise", "noise_static"),
    "reweight": ("reweight", "drw", "cmo_drw"),
    "cmo": ("cmo", "cmo_drw"),
    "defer_epoch": ("noise", "drw", "cmo_drw", *DEFERRED_METHODS),
    "defer_sampler": DEFERRED_METHODS,
}


def retrain_section(wildcards):
    """The retrain section as a run sees it: without the methods and seeds lists
    (a run's method and seed are its wildcards), so that adding a method or a
    seed plans the new runs only, not every run again; a method's own settings
    (noise, reweight) only in its runs. oversample and noise_static (and
    deferred_oversample) get `refill`: {class: the images it is refilled with}, the count
    sampling makes for the class (images_wanted), from the data and the config,
    so they read no sample table and rerun only when that count changes."""
    own = {
        k: v
        for k, v in config["retrain"].items()
        if k not in ("methods", "seeds")
        and wildcards.method in METHOD_KEYS.get(k, (wildcards.method,))
    }
    if wildcards.method in REFILLED:
        own["refill"] = {c: images_wanted(c) for c in adapted_classes()}
    return canonical(own)


def noise_count_of(wildcards):
    """How many of the class's oversampled images are noise (retrain.noise.share of its count)."""
    share = {**NOISE_DEFAULTS, **(config["retrain"].get("noise") or {})}["share"]
    return noise_count(images_wanted(wildcards.cls), float(share))


def fid_metrics():
    """The metrics section as the FID jobs see it (without the tables' min_images
    and groups, and LPIPS' settings: rule lpips)."""
    return canonical(
        {
            k: v
            for k, v in config["metrics"].items()
            if k not in ("min_images", "groups") and not k.startswith("lpips")
        }
    )


def lpips_metrics():
    """LPIPS' settings as its jobs see them (metrics.lpips_*)."""
    return canonical(
        {k: v for k, v in config["metrics"].items() if k.startswith("lpips_")}
    )


def lpips_files(wildcards):
    """results/lpips/<class>.json per adapted class, with metrics.lpips on."""
    if not config["metrics"].get("lpips"):
        return []
    return expand("results/lpips/{cls}.json", cls=generated_classes())


def weak_classes():
    """Slugs of the weak classes, read from the analysis checkpoint's JSON."""
    return read_json(checkpoints.analyse_confusion.get().output.weak)["classes"]


def images_wanted(cls):
    """How many synthetic images the weak class gets (its sampling.n_images, from
    the train counts in classes.json)."""
    setting = _sampling_settings(cls)["n_images"]
    if isinstance(setting, int) and not isinstance(setting, bool):
        return setting  # a count: no need to read the counts
    # after the checkpoint (Snakemake defers this until it has run): classes.json,
    # its input, then exists, also when a target names the class's files directly
    checkpoints.analyse_confusion.get()
    counts = {
        c: v.get("train", 0)
        for c, v in read_json("results/data/classes.json")["counts"].items()
    }
    return refill_count(setting, cls, counts)


def adapted_classes():
    """The weak classes that get synthetic images. Only they get jobs beyond the
    seed selection (TI token, LoRA adapters, sampling, filtering, grid, FID,
    judge): a class already at its target gets 0 images, and those jobs would
    make or measure nothing (the tables say "0 images" for it)."""
    return [c for c in weak_classes() if images_wanted(c) > 0]


def _replicate_seed(wildcards, name):
    """The seed of `name` (a class, or the shared adapter); replicate k > 0 derives
    its own from it (replicate 0's is the one an R = 1 study has, so adding
    replicates reruns nothing of it)."""
    k = replicate_index(_rep(wildcards))
    return (
        derive_seed(SEED, name) if k == 0 else derive_seed(SEED, name, f"replicate{k}")
    )


def class_seed(wildcards):
    return _replicate_seed(wildcards, wildcards.cls)


def seeds_params(wildcards):
    """The class's seeds settings; a replicate k > 0 adds the seed of its draw of
    candidates (replicate 0 picks as an R = 1 study does)."""
    settings = class_settings(config, "seeds", wildcards.cls)
    if replicate_index(_rep(wildcards)):
        settings = {**settings, "replicate_seed": class_seed(wildcards)}
    return settings


def generator_files(wildcards):
    return [f"{MODEL}/model_index.json"] if is_local(MODEL) else []


def _ti_settings(cls):
    return canonical({**TI_DEFAULTS, **class_settings(config, "ti", cls)})


def ti_params(wildcards):
    return _ti_settings(wildcards.cls)


def _lora_settings(cls):
    return canonical({**LORA_DEFAULTS, **class_settings(config, "lora", cls)})


def lora_params(wildcards):
    return _lora_settings(wildcards.cls)


def _sampling_settings(cls):
    return canonical({**SAMPLING_DEFAULTS, **class_settings(config, "sampling", cls)})


def sampling_params(wildcards):
    return _sampling_settings(wildcards.cls)


def _filter_settings(cls):
    return {**FILTER_DEFAULTS, **class_settings(config, "filter", cls)}


def _genie_settings(cls):
    return {**GENIE_DEFAULTS, **class_settings(config, "genie", cls)}


def filter_params(wildcards):
    """The class's filter settings; the genie modes' method is genie.filter (none:
    their images sit on the class boundary, which an on-class filter would drop)."""
    f = _filter_settings(wildcards.cls)
    if wildcards.mode in GENIE_MODES:
        f["method"] = _genie_settings(wildcards.cls)["filter"]
    return canonical(f)


def _uses_train_features(cls):
    """Whether the class's filter compares synthetic images with the training images (knn)."""
    return _filter_settings(cls)["method"] == "knn"


def filter_features(wildcards):
    return (
        ["results/baseline/train_features.npz"]
        if _uses_train_features(wildcards.cls)
        else []
    )


def _token(cls):
    """What a job that uses the class's learned token needs of its inversion settings."""
    ti = _ti_settings(cls)
    return {
        "placeholder": ti["placeholder"].format(cls=cls),
        "num_vectors": ti["num_vectors"],
    }


def diff_ii_concept():
    """diff_ii.concept as the study runs it: auto is the paper's (the tokens with
    one LoRA the classes share) where more than one class gets images, the
    class's token alone where one does (after the checkpoint)."""
    if CONCEPT != "auto":
        return CONCEPT
    return "ti_shared_lora" if len(generated_classes()) > 1 else "ti"


def _embeds(cls, rep="", token="ti"):
    """The class's learned token: textual_inversion's, or coti's (token "coti")."""
    folder = "coti" if token == "coti" else "inversion"
    return f"results/{folder}/{cls}{rep}/learned_embeds.safetensors"


def _concept_params(mode, cls):
    """What sampling in a mode needs beside its inputs: the token's placeholder
    (ti, ti_i2i, ti_lora; diff_ii on a token), the words the lora adapter was
    trained with (lora, lora_i2i; diff_ii on it)."""
    token, adapter = uses(mode, diff_ii_concept(), GENIE_CONCEPT)
    if token:
        return _token(cls)
    if adapter == "lora":
        return {"lora_prompt_name": _lora_settings(cls)["prompt_name"]}
    return {}


def token_params(wildcards):
    return _concept_params(wildcards.mode, wildcards.cls)


def _concept_inputs(mode, cls, rep):
    """The token and adapter files a mode samples with (diff_ii: its concept's)."""
    token, adapter = uses(mode, diff_ii_concept(), GENIE_CONCEPT)
    inputs = {"embeds": _embeds(cls, rep, token)} if token else {}
    if adapter == SHARED_ADAPTER:
        inputs["lora"] = f"results/lora/{adapter}{rep}/pytorch_lora_weights.safetensors"
    elif adapter:
        inputs["lora"] = (
            f"results/lora/{adapter}/{cls}{rep}/pytorch_lora_weights.safetensors"
        )
    return inputs


def sample_inputs(wildcards):
    if images_wanted(wildcards.cls) == 0:
        return {}  # no images: no token, no adapter (none is trained for the class)
    rep = _rep(wildcards)
    inputs = _concept_inputs(wildcards.mode, wildcards.cls, rep)
    if wildcards.mode == "diff_ii":
        inputs["inversions"] = f"results/diff_ii/{wildcards.cls}{rep}/inversions.csv"
    # the genie modes' confusers: the baseline's val predictions; genie_ada's
    # levels and fg_i2i's guide: the baseline classifier
    if wildcards.mode in GENIE_MODES:
        inputs["predictions"] = "results/baseline/predictions.csv"
    if wildcards.mode in ("genie_ada", "fg_i2i"):
        inputs["baseline_model"] = "results/baseline/model.pt"
    return inputs


def _diff_ii_given(cls):
    return {**DIFF_II_DEFAULTS, **class_settings(config, "diff_ii", cls)}


def _diff_ii_settings(cls):
    """The class's diff_ii settings, split_ratio: auto resolved by the paper's
    rule from its real training images (after the checkpoint, as images_wanted)."""
    d = {**_diff_ii_given(cls), "concept": diff_ii_concept()}
    if d["split_ratio"] == "auto":
        checkpoints.analyse_confusion.get()
        shots = read_json("results/data/classes.json")["counts"][cls].get("train", 0)
        long_tailed = (config["data"].get("imbalance") or {}).get("type") == "long_tail"
        d["split_ratio"] = paper_split_ratio(shots, long_tailed)
    return canonical(d)


def mode_params(wildcards):
    """A mode's own settings, for its jobs only (so that an edit of them reruns no
    other mode's sampling): the class's diff_ii, feedback (fg_i2i) or genie settings."""
    if wildcards.mode == "diff_ii":
        return {"diff_ii": _diff_ii_settings(wildcards.cls)}
    if wildcards.mode == "fg_i2i":
        return {
            "feedback": canonical(
                {
                    **FEEDBACK_DEFAULTS,
                    **class_settings(config, "feedback", wildcards.cls),
                }
            )
        }
    if wildcards.mode in GENIE_MODES:
        g = _genie_settings(wildcards.cls)
        keys = (
            ("confusers", "concept", "level")
            if wildcards.mode == "genie"
            else ("confusers", "concept", "levels", "early_stop")
        )
        return {"genie": canonical({k: g[k] for k in keys})}
    return {}


# the sampling settings that shape an inversion (no scheduler, guidance, strength:
# those shape the denoising only)
INVERSION_SAMPLING_KEYS = (
    "steps",
    "resolution",
    "templates",
    "mixed_precision",
    "device",
    "attention",
    "channels_last",
    "compile",
)


def invert_sampling_params(wildcards):
    s = _sampling_settings(wildcards.cls)
    return canonical({k: s[k] for k in INVERSION_SAMPLING_KEYS if k in s})


def invert_diff_ii_params(wildcards):
    """The keys that shape an inversion: the concept (resolved) and the refinements."""
    d = _diff_ii_given(wildcards.cls)
    return canonical(
        {"concept": diff_ii_concept(), "inversion_refine": d["inversion_refine"]}
    )


def invert_token_params(wildcards):
    return _concept_params("diff_ii", wildcards.cls)


def invert_inputs(wildcards):
    return _concept_inputs("diff_ii", wildcards.cls, _rep(wildcards))


def coti_params(wildcards):
    return canonical({**COTI_DEFAULTS, **class_settings(config, "coti", wildcards.cls)})


def coti_sampling_params(wildcards):
    """The sampling settings the cycles' images are drawn with (not the count or
    the image-to-image strength: an edit of those reruns no coti job)."""
    s = _sampling_settings(wildcards.cls)
    return canonical({k: v for k, v in s.items() if k not in ("n_images", "strength")})


def neighbour_inputs(wildcards):
    """The class's learned tokens: TI's, and COTI's where the study makes it."""
    return {"ti": _embeds(wildcards.cls)} | (
        {"coti": _embeds(wildcards.cls, "", "coti")} if STUDY_COTI else {}
    )


def neighbour_files(wildcards):
    return expand("results/inversion/{cls}/neighbours.csv", cls=generated_classes())


def lora_inputs(wildcards):
    return (
        {"embeds": _embeds(wildcards.cls, _rep(wildcards))}
        if wildcards.adapter == "ti_lora"
        else {}
    )


def lora_token_params(wildcards):
    return _token(wildcards.cls) if wildcards.adapter == "ti_lora" else {}


def lora_shared_inputs(wildcards):
    """The shared adapter's: every generated class's seed list and token (of the replicate)."""
    rep = _rep(wildcards)
    out = {}
    for cls in generated_classes():
        out[f"seeds_{cls}"] = f"results/seeds/{cls}{rep}/seeds.csv"
        out[f"embeds_{cls}"] = _embeds(cls, rep)
    return out


def lora_shared_params(wildcards):
    """The study's lora section (one adapter: the classes' own lora settings do not reach it)."""
    return canonical({**LORA_DEFAULTS, **(config.get("lora") or {})})


def lora_shared_token_params(wildcards):
    return canonical({cls: _token(cls) for cls in generated_classes()})


def lora_shared_seed(wildcards):
    return _replicate_seed(wildcards, SHARED_ADAPTER)


def class_samples(wildcards):
    """{mode: sample table} of one class, for its grid and FID."""
    return {
        mode: f"results/samples/{mode}/{wildcards.cls}/samples.csv"
        for mode in STUDY_MODES
    }


def class_filtered(wildcards):
    """{mode: filtered sample table} of one class, for the judge."""
    return {
        mode: f"results/samples/{mode}/{wildcards.cls}/filtered.csv"
        for mode in STUDY_MODES
    }


def run_replicate(wildcards):
    """The replicate a retraining (or ablation) run trains on: its seed's
    position in retrain.seeds (ablation.seeds for an ablation run), mod R."""
    seeds = config["retrain"]["seeds"]
    if "variant" in wildcards.keys():
        seeds = config["ablation"].get("seeds") or seeds
    try:
        return replicate_of(int(wildcards.seed), seeds, REPLICATES)
    except TibalanceError as e:
        raise WorkflowError(f"{CONFIGFILE}: {e}")


def retrain_synthetic(wildcards):
    """Sample tables the method trains on: the filtered ones (their kept images)
    of the run's replicate; oversample: none (its count is retrain_section's
    refill); noise_static: its noise images; noise: none (fresh noise in the loop)."""
    if wildcards.method in ("oversample", "deferred_oversample", "noise"):
        return []
    if wildcards.method == "noise_static":
        return expand("results/noise/{cls}/images.csv", cls=adapted_classes())
    if wildcards.method == "real_oracle":
        return expand("results/oracle/{cls}/images.csv", cls=adapted_classes())
    oracle = (
        expand("results/oracle/{cls}/images.csv", cls=adapted_classes())
        if wildcards.method.startswith("real_oracle@")
        else []
    )  # cut to the mode's kept count
    mode = MODE_OF.get(wildcards.method)
    if mode is None:
        return []
    rep = replicate_dir(run_replicate(wildcards))
    return oracle + expand(
        "results/samples/{mode}/{cls}{rep}/filtered.csv",
        mode=mode,
        cls=adapted_classes(),
        rep=rep,
    )


def retrain_init(wildcards):
    """retrain.init: baseline -> every run fine-tunes the baseline classifier."""
    return (
        ["results/baseline/model.pt"]
        if config["retrain"].get("init", "scratch") == "baseline"
        else []
    )


def retrain_classifier(wildcards):
    """The baseline's recipe, with the retrain section's overrides (same for every method)."""
    return canonical(
        {**config["classifier"], **config["retrain"].get("classifier", {})}
    )


def uses_frozen_features():
    """Fine-tuning the baseline above frozen stages: their outputs come from the frozen_features job."""
    return config["retrain"].get(
        "init", "scratch"
    ) == "baseline" and retrain_classifier(None).get("freeze_below") not in (
        None,
        "stem",
    )


def retrain_refill_source(wildcards):
    """The confusion analysis's table for the runs whose `refill` param reads the
    weak classes (Snakemake wants a param that reads a checkpoint to have its
    output among the job's inputs); none for the other runs."""
    return ["results/analysis/per_class.csv"] if wildcards.method in REFILLED else []


def retrain_frozen(wildcards):
    return ["results/retrain/frozen_features.pt"] if uses_frozen_features() else []


def retrain_weights(wildcards):
    """The ImageNet weights a retraining run starts from (none when it fine-tunes the baseline)."""
    return (
        []
        if retrain_init(wildcards)
        else classifier_weights_file(retrain_classifier(wildcards))
    )


def retrain_runs(wildcards):
    return expand(
        "results/retrain/{method}/seed{seed}/metrics.json",
        method=config["retrain"]["methods"],
        seed=config["retrain"]["seeds"],
    )


def retrain_predictions(wildcards):
    """Every retraining run's per-image test predictions (the report's intervals and tests)."""
    return [
        p.replace("metrics.json", "predictions.csv") for p in retrain_runs(wildcards)
    ]


def ablation_cells():
    """(method, variant, seed) of every ablation run."""
    ab = config["ablation"]
    return [
        (m, v, s)
        for m in ab["methods"]
        for v in ablation_variants(ab["counts"])
        for s in ab.get("seeds") or config["retrain"]["seeds"]
    ]


def ablation_runs(wildcards):
    return [
        f"results/ablation/{m}/{v}/seed{s}/metrics.json" for m, v, s in ablation_cells()
    ]


def generated_classes():
    """The adapted classes where the study generates images (none without a
    generative method): the classes of the token, sampling, grid, FID and judge
    jobs."""
    return adapted_classes() if GENERATIVE else []


def fid_files(wildcards):
    return expand("results/fid/{cls}.json", cls=generated_classes())


def filtered_files(wildcards):
    return expand(
        "results/samples/{mode}/{cls}/filtered.csv",
        mode=STUDY_MODES,
        cls=adapted_classes(),
    )


def judge_files(wildcards):
    return expand("results/judge/{cls}.json", cls=generated_classes()) if JUDGE else []


def judge_train_classifier():
    """The judge's recipe: the classifier's, with the judge section's overrides."""
    return canonical({**config["classifier"], **config["judge"].get("classifier", {})})


def pretrain_params(wildcards):
    return canonical({**PRETRAIN_DEFAULTS, **config["generator"].get("pretrain", {})})


def after_generator(wildcards):
    """When the demo pretrains its generator, the judge's training and the shared
    feature jobs (train_features, frozen_features) run after it: an ordering,
    not a dependency (ancient() never reruns them for a new generator). On a few
    cores the baseline and the generator's VAE run side by side and the UNet then
    needs every core; a one-thread job that starts the moment a core frees up
    holds it (a fresh demo: a judge made the UNet wait 108 s, the two feature jobs
    26 s). After the generator they run among the many short jobs."""
    if config["generator"]["build"] == "pretrain" and GENERATIVE:
        return ancient("results/generator/pretrained_sd/model_index.json")
    return []


def pretrain_vae_params(wildcards):
    """Only the VAE phase's settings: an edit of the UNet's reruns the UNet job alone."""
    return {
        k: v for k, v in pretrain_params(wildcards).items() if k in PRETRAIN_VAE_KEYS
    }


def early_targets():
    """Outputs that need no weak class, asked for before the checkpoint so that
    their jobs run beside the baseline and the generator's pretraining (on a few
    cores, two jobs side by side) instead of after the confusion analysis."""
    out = []
    if not GENERATIVE:
        return out
    if LEARNED:
        out += [
            "results/tables/generator_quality.md",
            "results/generator/quality_samples.png",
        ]
    if (
        JUDGE == "results/judge/model.pt"
    ):  # a judge trained here (not a given checkpoint)
        out += [JUDGE]
    return out


def ti_loss_files(wildcards):
    return expand("results/inversion/{cls}/loss.csv", cls=generated_classes())


def ti_meta_files(wildcards):
    return expand(
        "results/inversion/{cls}/textual_inversion.meta.json", cls=generated_classes()
    )


def lora_loss_files(wildcards):
    return expand(
        "results/lora/{adapter}/{cls}/loss.csv",
        adapter=STUDY_ADAPTERS,
        cls=adapted_classes(),
    )


def lora_meta_files(wildcards):
    return expand(
        "results/lora/{adapter}/{cls}/lora.meta.json",
        adapter=STUDY_ADAPTERS,
        cls=adapted_classes(),
    )


def all_targets(wildcards):
    weak = weak_classes()
    return (
        [
            "results/tables/summary.md",
            "results/tables/per_class.md",
            "results/tables/cost.md",
        ]
        + ["results/analysis/per_class.csv", "results/analysis/confusion.png"]
        + expand("results/seeds/{cls}/contact_sheet.png", cls=weak)
        + expand("results/inversion/{cls}/preview.png", cls=generated_classes())
        + expand(
            "results/coti/{cls}/preview.png",
            cls=adapted_classes() if STUDY_COTI else [],
        )
        + expand(
            "results/lora/{adapter}/{cls}/preview.png",
            adapter=STUDY_ADAPTERS,
            cls=adapted_classes(),
        )
        + expand("results/samples/grid/{cls}.png", cls=generated_classes())
    )


def study_jobs(wildcards):
    """Every job of the study but the report and the cost table: its rule, weak
    class, mode or method, benchmark file, sidecar (None where it writes none)
    and `done`: an output that exists once the job has run (its sidecar, else
    its first output). The cost table waits for those, not for the benchmark
    files: a deleted benchmark file must never make a finished job rerun."""
    weak = weak_classes()
    jobs = []

    def add(name, cls=None, method=None, replicate=None, **wc):
        r = getattr(rules, name)
        wc = {
            **wc,
            **({"cls": cls} if cls else {}),
            **({"method": method} if method else {}),
        }
        if replicate is not None:
            wc["rep"] = replicate_dir(replicate)
        fill = lambda pattern: expand(pattern, **wc)[0] if wc else str(pattern)
        meta = r.output.get("meta") or r.output.get("sidecar")
        jobs.append(
            {
                "rule": name,
                "class": cls,
                "method": (
                    method if "variant" not in wc else f"{method} {wc['variant']}"
                ),
                "replicate": replicate,
                "benchmark": fill(r.benchmark),
                "meta": fill(meta) if meta else None,
                "done": fill(meta or r.output[0]),
            }
        )

    for name in ("prepare_data", "train_baseline", "analyse_confusion"):
        add(name)
    build = (
        config["generator"]["build"] if GENERATIVE else "none"
    )  # no generator without a generative method
    if build == "tiny":
        add("build_generator")
    elif build == "pretrain":
        add("pretrain_vae")
        add("pretrain_generator")
    if LEARNED and GENERATIVE:  # pretrained here or shipped
        add("generator_quality")
    adapted = generated_classes()
    for k in range(REPLICATES):
        if (
            adapted
            and (STUDY_SHARED if k == 0 else REP_SHARED)
            and diff_ii_concept() == "ti_shared_lora"
        ):
            add("lora_shared", replicate=k)
    for cls in weak:
        if cls not in adapted:
            add("select_seeds", cls, replicate=0)
            continue  # 0 images, or no generative method: its seeds only
        for k in range(REPLICATES):
            add("select_seeds", cls, replicate=k)
            if k == 0 or REP_TOKEN:
                add("textual_inversion", cls, replicate=k)
            if STUDY_COTI if k == 0 else REP_COTI:
                add("coti", cls, replicate=k)
            if k == 0:
                add("token_neighbours", cls)
            for adapter in STUDY_ADAPTERS if k == 0 else REP_ADAPTERS:
                add("lora", cls, adapter, replicate=k, adapter=adapter)
            for mode in STUDY_MODES if k == 0 else REP_MODES:
                if mode == "diff_ii":
                    add("invert", cls, mode, replicate=k)
                add("sample", cls, mode, replicate=k, mode=mode)
                add("filter_samples", cls, mode, replicate=k, mode=mode)
        add("sample_grid", cls)
        add("fid", cls)
        if config["metrics"].get("lpips"):
            add("lpips", cls)
    if any(_uses_train_features(cls) for cls in adapted) or (adapted and STUDY_COTI):
        add("train_features")
    if (
        GENERATIVE
        and config["judge"]["train_per_class"]
        and not config["judge"].get("model")
    ):
        add("judge_pool")
        add("train_judge")
    if JUDGE:
        for cls in adapted:
            add("judge", cls)
    if uses_frozen_features():
        add("frozen_features")
    if any(m.startswith("real_oracle") for m in config["retrain"]["methods"]):
        for cls in adapted_classes():
            add("oracle_images", cls, "real_oracle")
    if "noise_static" in config["retrain"]["methods"]:
        for cls in adapted_classes():
            add("noise_images", cls, "noise_static")
    for method in config["retrain"]["methods"]:
        for seed in config["retrain"]["seeds"]:
            add("retrain", None, method, seed=seed)
    for method, variant, seed in ablation_cells():
        add("retrain_ablation", None, method, variant=variant, seed=seed)
    return jobs


def cost_inputs(wildcards):
    return [j["done"] for j in study_jobs(wildcards)]
