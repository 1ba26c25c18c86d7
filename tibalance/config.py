"""Config checks that run when the DAG is parsed, and the per-class settings merge.

Everything here raises TibalanceError with one line naming the key at fault."""
from __future__ import annotations

import copy
import re
import statistics

from .util import TibalanceError, slugify

# settings sections that a class may override under `classes: <class>:`
PER_CLASS_SECTIONS = ("seeds", "ti", "lora", "sampling", "filter")


def format_validation_error(err, configfile: str) -> str:
    """One line from a jsonschema ValidationError: file, dotted key, problem."""
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", err.message)
        names = re.findall(r"'([^']+)'", err.message.split("(")[-1]) if not extra else extra
        key = ".".join(filter(None, [path, names[0] if names else "?"]))
        return f"{configfile}: unknown key '{key}'"
    if err.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        key = ".".join(filter(None, [path, missing[0] if missing else "?"]))
        return f"{configfile}: missing key '{key}'"
    return f"{configfile}: key '{path or '<top>'}': {err.message}"


def yaml_problem(path: str) -> str | None:
    """'<file>:<line>:<column>: not valid YAML: <problem>' for a file PyYAML cannot read, else None."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        return f"{where}: not valid YAML: {e.problem or e.context}"
    except yaml.YAMLError as e:
        return f"{path}: not valid YAML: {e}"
    return None


def canonical(obj):
    """The same settings with dict keys sorted, recursively.

    Snakemake compares params by repr(): without this, reordering keys in a
    config file (or a YAML round trip) would rerun jobs whose settings did not change."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def class_settings(config: dict, section: str, cls: str) -> dict:
    """The global `section` settings with class `cls`'s overrides merged in.

    Only this class's entry is read, so editing another class changes nothing here."""
    per_class = normalised_classes(config).get(cls, {})
    return canonical(deep_merge(config.get(section, {}) or {}, per_class.get(section, {}) or {}))


def refill_count(setting, cls: str, train_counts: dict[str, int]) -> int:
    """How many synthetic images class `cls` gets (sampling.n_images).

    An integer is a count. 'median', 'max' or {'fill_to': N} is a target: the
    class is refilled to the median / largest train class size (or N), so a
    class already at the target gets 0 images. train_counts: train images per class."""
    if isinstance(setting, bool):
        raise TibalanceError(f"sampling.n_images: {setting!r} for class {cls} is not a count or a target")
    if isinstance(setting, int):
        return setting
    sizes = [int(v) for v in train_counts.values()]
    if setting == "median":
        target = int(statistics.median(sizes)) if sizes else 0
    elif setting == "max":
        target = max(sizes, default=0)
    elif isinstance(setting, dict) and isinstance(setting.get("fill_to"), int):
        target = int(setting["fill_to"])
    else:
        raise TibalanceError(f"sampling.n_images: {setting!r} for class {cls} is neither an integer nor "
                             "'median', 'max' or {fill_to: N}")
    return max(0, target - int(train_counts.get(cls, 0)))


def normalised_classes(config: dict) -> dict:
    """`classes:` keyed by slug (users may write 'sword lily' or 'sword_lily')."""
    return {slugify(k): v or {} for k, v in (config.get("classes") or {}).items()}


TEXT_ENCODER_LORA_PEFT = (0, 22)  # transformers 5 loads text-encoder adapters only with peft >= 0.22


def text_encoder_lora_problem() -> str | None:
    """Why text-encoder LoRA cannot run in this environment, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("peft")
    except PackageNotFoundError:
        return "peft is not installed"
    parts = tuple(int(x) for x in re.findall(r"\d+", v)[:2])
    if parts < TEXT_ENCODER_LORA_PEFT:
        return (f"needs peft >= {'.'.join(map(str, TEXT_ENCODER_LORA_PEFT))} (transformers' text-encoder adapters); "
                f"this environment has peft {v}")
    return None


def check_lora(config: dict) -> None:
    """lora.train_text_encoder (global or a class's) must be runnable here."""
    keys = [("lora.train_text_encoder", config.get("lora") or {})]
    keys += [(f"classes.{c}.lora.train_text_encoder", (v or {}).get("lora") or {})
             for c, v in (config.get("classes") or {}).items()]
    for key, section in keys:
        if section.get("train_text_encoder"):
            problem = text_encoder_lora_problem()
            if problem:
                raise TibalanceError(f"{key}: {problem}")


def check_diff_ii(config: dict) -> None:
    """diff_ii.concept is the study's (it decides which token and adapters are
    trained for every class), so no class may set its own; a suffix file must
    be readable where diff_ii samples."""
    from pathlib import Path

    for c, v in (config.get("classes") or {}).items():
        if "concept" in ((v or {}).get("diff_ii") or {}):
            raise TibalanceError(f"classes.{c}.diff_ii.concept: the concept is the whole study's; set diff_ii.concept")
    methods = (config.get("retrain") or {}).get("methods") or []
    if not any(m.endswith("diff_ii") for m in methods):
        return
    sections = [("diff_ii", config.get("diff_ii") or {})]
    sections += [(f"classes.{c}.diff_ii", (v or {}).get("diff_ii") or {}) for c, v in (config.get("classes") or {}).items()]
    for key, section in sections:
        path = section.get("suffix_file")
        if path and not Path(path).is_file():
            raise TibalanceError(f"{key}.suffix_file: {path} does not exist")


def replicate_count(config: dict) -> int:
    """R, the replicates of each weak class's adaptation (`replicates`: an
    integer, or `seeds` for one per retraining seed)."""
    r = config.get("replicates", 1)
    return len(config["retrain"]["seeds"]) if r == "seeds" else int(r)


def check_replicates(config: dict) -> None:
    """replicates: R repeats each weak class's adaptation; retraining seed k reads
    replicate k mod R. R must divide the seed count: a replicate no seed reads
    would be made for nothing, and replicates read by unequal numbers of seeds
    make unequal units."""
    r, seeds = replicate_count(config), config["retrain"]["seeds"]  # the schema's defaults filled in
    if r > len(seeds):
        raise TibalanceError(f"replicates: {r} but retrain.seeds lists {len(seeds)} seeds; retraining seed k reads "
                             f"replicate k, so at most {len(seeds)} replicates are used")
    if len(seeds) % r:
        raise TibalanceError(f"replicates: {r} does not divide the {len(seeds)} seeds of retrain.seeds (seed k reads "
                             f"replicate k mod {r}, so the replicates would be read by unequal numbers of runs); "
                             f"use replicates: seeds (every run its own replicate) or list a multiple of {r} seeds")


def check_verdict(config: dict) -> None:
    """verdict.primary: the declared methods must be retraining methods the study runs, and not baseline."""
    primary = (config.get("verdict") or {}).get("primary")
    methods = config["retrain"]["methods"]
    for m in primary or []:
        if m == "baseline" or m not in methods:
            raise TibalanceError(f"verdict.primary: {m!r} " + ("is the reference every method is compared with"
                                 if m == "baseline" else f"is not in retrain.methods {list(methods)}"))


def check_oracle_at(config: dict) -> None:
    """real_oracle@<method> cuts the oracle to the count <method> kept: that
    method must be part of the study (its samples and filter set the count)."""
    methods = config["retrain"]["methods"]
    for m in methods:
        if m.startswith("real_oracle@") and m.split("@", 1)[1] not in methods:
            raise TibalanceError(f"retrain.methods: {m} takes the count {m.split('@', 1)[1]} kept, which is not "
                                 f"in retrain.methods; add it or drop {m}")


def check_generator_preset(config: dict) -> None:
    """generator.tiny.preset (an architecture's exact sizes, random weights) is
    for timing: built (generator.build: tiny), never pretrained here."""
    gen = config["generator"]
    tiny = gen.get("tiny") or {}
    preset = tiny.get("preset")
    from .tiny import architecture

    architecture(tiny)  # an unknown preset or family, or a size beside a preset: one line
    if tiny.get("family", "sd1") != "sd1" and gen["build"] != "tiny":
        raise TibalanceError(f"generator.tiny.family: {tiny['family']} is built with random weights "
                             f"(generator.build: tiny); generator.build is {gen['build']} (its pretraining is "
                             f"SD 1.x's, epsilon-prediction)")
    if preset is not None and gen["build"] != "tiny":
        raise TibalanceError(f"generator.tiny.preset: {preset} is a random-weight architecture for timing "
                             f"(generator.build: tiny); generator.build is {gen['build']}")


def replicate_of(seed: int, seeds: list[int], replicates: int) -> int:
    """The replicate a retraining run with this seed trains on: the seed's
    position in its list, mod R (R = 1: always replicate 0)."""
    if replicates <= 1:
        return 0
    if seed not in seeds:
        raise TibalanceError(f"retrain seed {seed} is not in the seeds list {list(seeds)}: with replicates: "
                             f"{replicates} its replicate is its position there")
    return list(seeds).index(seed) % replicates


def replicate_dir(k: int) -> str:
    """The {rep} wildcard of replicate k: '' for replicate 0 (the study's own
    files, where they are with R = 1), '/rep<k>' for the others."""
    return "" if k == 0 else f"/rep{k}"


def replicate_index(rep: str) -> int:
    """The inverse of replicate_dir."""
    return 0 if not rep else int(rep.removeprefix("/rep"))


def check_freeze(config: dict) -> None:
    """classifier.freeze_below keeps stages at their starting weights: the
    baseline needs ImageNet weights for it, a retraining run those or the baseline."""
    base = config.get("classifier") or {}
    retrain = config.get("retrain") or {}
    recipes = [("classifier", base, bool(base.get("pretrained")))]
    merged = {**base, **(retrain.get("classifier") or {})}
    recipes.append(("retrain.classifier", merged,
                    retrain.get("init") == "baseline" or bool(merged.get("pretrained"))))
    for key, recipe, has_start in recipes:
        below = recipe.get("freeze_below")
        if below and below != "stem" and not has_start:
            raise TibalanceError(f"{key}.freeze_below: {below!r} would freeze randomly initialised weights; it needs "
                                 + ("classifier.pretrained: true" if key == "classifier"
                                    else "retrain.init: baseline (or classifier.pretrained: true)"))


def check_class_names(config: dict, known_names: list[str]) -> None:
    """Every class named in the config must exist in the dataset."""
    known = {slugify(n) for n in known_names}

    def need(name, key):
        if slugify(name) not in known:
            raise TibalanceError(f"{key}: unknown class {name!r} (not in data.source {config['data']['source']})")

    an = config.get("analysis", {})
    for key in ("classes", "include", "exclude"):
        for n in an.get(key) or []:
            need(n, f"analysis.{key}")
    if an.get("strategy") == "explicit" and not an.get("classes"):
        raise TibalanceError("analysis.classes: strategy 'explicit' needs a non-empty class list")
    for n in (config.get("data", {}).get("imbalance", {}) or {}).get("fractions", {}) or {}:
        need(n, "data.imbalance.fractions")
    for n in (config.get("classes") or {}):
        need(n, "classes")
    excl = ((config.get("generator") or {}).get("pretrain") or {}).get("exclude", "auto")
    if excl != "auto":
        for n in excl:
            need(n, "generator.pretrain.exclude")
