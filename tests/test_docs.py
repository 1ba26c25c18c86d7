"""The docs stay true: the configuration reference is the schema's, and the docs
name only rules, methods, modes and config keys the code has, and miss none."""
import ast
import json
import re
from pathlib import Path

import pytest

from tibalance import docs
from tibalance.defaults import (
    COMBINED_METHODS,
    DEFERRED_METHODS,
    FILTER_METHODS,
    METHODS,
    MODES,
    ORACLE_AT_METHODS,
    SYNTHETIC_METHODS,
)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "config" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = {p for p, _ in docs.schema_keys() if "." not in p}
FILE_SUFFIXES = (".json", ".csv", ".md", ".png", ".pt", ".yaml", ".npz", ".safetensors", ".html", ".py", ".tsv")


def test_the_configuration_reference_is_generated_from_the_schema():
    """config/README.md is what `make docs` writes (every schema key, its
    default and description), and every key has a description."""
    assert docs.undocumented() == []
    assert (ROOT / "config" / "README.md").read_text() == docs.config_reference(), \
        "config/README.md is stale: run `make docs`"
    text = (ROOT / "config" / "README.md").read_text()
    for path, _ in docs.schema_keys():
        assert f"`{path}`" in text, path


def test_the_schema_lists_the_registrys_names():
    schema = docs.load_schema()
    props = schema["properties"]
    assert tuple(props["retrain"]["properties"]["methods"]["items"]["enum"]) == METHODS
    # the default: every method but the combined ones (oversample+<method>), which a study opts into
    # the default: every method but those a study opts into: the combined ones (oversample+<method>) and the
    # yardstick at a method's count (real_oracle@<method>)
    assert tuple(props["retrain"]["properties"]["methods"]["default"]) == tuple(
        m for m in METHODS if m not in COMBINED_METHODS + ORACLE_AT_METHODS + DEFERRED_METHODS)
    assert tuple(props["ablation"]["properties"]["methods"]["items"]["enum"]) == SYNTHETIC_METHODS
    assert tuple(schema["$defs"]["filter"]["properties"]["method"]["enum"]) == FILTER_METHODS


def _vocabulary() -> set[str]:
    """Every identifier the project's code, rules, schema and Makefile define or use."""
    names = set()
    for f in [*ROOT.glob("tibalance/*.py"), *ROOT.glob("workflow/scripts/*.py"), *ROOT.glob("benchmarks/*.py"),
              *ROOT.glob("tests/*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            for field in ("id", "name", "attr", "arg"):
                if isinstance(getattr(node, field, None), str):
                    names.add(getattr(node, field))
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
    for f in [*ROOT.glob("rules/*.smk"), ROOT / "Snakefile", ROOT / "Makefile", *ROOT.glob("profiles/*/*.yaml"),
              ROOT / "config" / "schema.yaml", *ROOT.glob("config/*.yaml")]:
        names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", f.read_text()))
    return names


def _backticked(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks: commands, not names
    return re.findall(r"`([^`\n]+)`", text)


def _key_path(token: str) -> str:
    """classes.<any class>.<section>.<key> -> <section>.<key>: the schema's path."""
    parts = token.split(".")
    if parts[0] == "classes" and len(parts) >= 2:
        return "classes.<name>" if len(parts) == 2 else ".".join(parts[2:])
    return token


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_doc_names_only_what_the_code_has(page):
    """A backticked dotted config key must be a schema key; a backticked
    snake_case name (a rule, method, mode, key, function) must be one the code has."""
    keys = {p for p, _ in docs.schema_keys()}
    vocabulary = _vocabulary() | keys | set(docs.rule_names())
    unknown = []
    for token in _backticked(page.read_text()):
        token = token.strip()
        dotted = re.fullmatch(r"[a-z_]+(\.([a-z0-9_]+|<name>))+", token)  # keys are lower case
        if dotted and token.split(".")[0] in SECTIONS and not token.endswith(FILE_SUFFIXES):
            if _key_path(token) not in keys:
                unknown.append(token)
        elif re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", token) and token not in vocabulary:
            unknown.append(token)
    assert not unknown, f"{page.name} names what the code does not have: {sorted(set(unknown))}"


def test_the_docs_miss_no_rule_method_or_mode():
    outputs = (ROOT / "docs" / "outputs.md").read_text()
    listed = re.findall(r"^\| `(\w+)` \|", outputs.split("## What lands")[0], flags=re.M)
    assert sorted(listed) == docs.rule_names(), "docs/outputs.md's job table and rules/*.smk differ"
    readme = set(_backticked((ROOT / "README.md").read_text()))
    # the README names those as `oversample+<method>` and `real_oracle@<method>`
    single = set(METHODS) - set(COMBINED_METHODS) - set(ORACLE_AT_METHODS) - set(DEFERRED_METHODS)
    assert single <= readme and {"oversample+<method>", "real_oracle@<method>", "deferred_<method>"} <= readme
    assert set(MODES) - {"raw"} <= readme and "raw" in readme
    demo = set(_backticked((ROOT / "docs" / "demo.md").read_text()))
    assert single <= demo and set(MODES) <= demo
    cluster = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(r"<!-- gpu-rules -->(.*?)<!-- /gpu-rules -->", cluster, flags=re.S).group(1)
    assert sorted(re.findall(r"`(\w+)`", block)) == docs.gpu_rules(), "docs/cluster.md's GPU rules are stale"


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text.split()) <= 2000
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("make demo"))
    assert first < 20 and lines[first + 1].startswith("make test")  # the two commands on the first screen
    assert "**tibalance** is" in "\n".join(lines[:first])  # what the tool is, before any command or time
    assert not re.search(r"\b[0-9a-f]{7,40}\b", "\n".join(lines[:25])), "a commit hash on the first screen"
    for link in [u for u in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in u]:
        assert (ROOT / link).exists(), link


def test_make_verdict_is_the_demo_with_every_run_its_own_replicate():
    """`make verdict` layers config/demo-replicates.yaml on config/demo.yaml the
    way Snakemake merges --configfile overlays: every run its own replicate
    (R = the demo's 5 seeds: every declared row has 5 units), the family the
    demo declares (verdict.primary, among the demo's methods) run with
    baseline, oversample and the yardsticks at the declared methods' counts,
    and every other setting the demo's own (so nothing of `make demo`'s
    replicate 0 reruns)."""
    import copy

    import yaml
    from snakemake.utils import update_config

    from tibalance.config import check_replicates, check_verdict, replicate_count

    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    merged = copy.deepcopy(demo)
    update_config(merged, yaml.safe_load((ROOT / "config" / "demo-replicates.yaml").read_text()))
    declared = demo["verdict"]["primary"]
    assert set(declared) <= set(demo["retrain"]["methods"]) and len(declared) >= 1
    methods = set(merged["retrain"]["methods"])
    assert {"baseline", "oversample", *declared, *(f"real_oracle@{m}" for m in declared)} <= methods
    assert methods <= set(METHODS)
    assert merged["replicates"] == "seeds" and "replicates" not in demo
    assert replicate_count(merged) == len(demo["retrain"]["seeds"]) >= 5
    check_replicates(merged)
    check_verdict(merged)
    assert {k: v for k, v in merged["retrain"].items() if k != "methods"} == {
        k: v for k, v in demo["retrain"].items() if k != "methods"}
    assert {k: v for k, v in merged.items() if k not in ("retrain", "replicates")} == {
        k: v for k, v in demo.items() if k != "retrain"}


def test_replicates_and_the_declared_family_are_checked_in_one_line():
    """replicates must divide the seeds (equal units) and `seeds` means one per
    seed; verdict.primary names methods the study runs, never baseline."""
    from tibalance.config import check_replicates, check_verdict, replicate_count
    from tibalance.util import TibalanceError

    cfg = {"replicates": 3, "retrain": {"seeds": [0, 1, 2, 3, 4], "methods": ["baseline", "oversample", "ti"]}}
    with pytest.raises(TibalanceError, match=r"replicates: 3 does not divide the 5 seeds of retrain.seeds"):
        check_replicates(cfg)
    check_replicates({**cfg, "replicates": 5})
    assert replicate_count({**cfg, "replicates": "seeds"}) == 5 and replicate_count({**cfg, "replicates": 1}) == 1
    for bad, why in ((["lora"], "'lora' is not in retrain.methods"), (["baseline"], "'baseline' is the reference")):
        with pytest.raises(TibalanceError, match=f"verdict.primary: {why}"):
            check_verdict({**cfg, "verdict": {"primary": bad}})
    check_verdict({**cfg, "verdict": {"primary": ["ti"]}})
    check_verdict({**cfg, "verdict": {"primary": None}})


def test_no_rule_writes_its_benchmark_beside_the_benchmark_scripts():
    """Snakemake's per-job benchmark files are outputs: under results/, never in benchmarks/ (the scripts)."""
    found = [(f.name, line.strip()) for f in ROOT.glob("rules/*.smk") for line in f.read_text().splitlines()
             if re.match(r'\s*"benchmarks/', line)]
    assert not found, found
    assert sum(line.strip().startswith('"results/benchmarks/') for f in ROOT.glob("rules/*.smk")
               for line in f.read_text().splitlines()) >= 20  # every rule's, moved (not dropped)


def test_the_times_are_generated_from_the_recorded_runs():
    """docs/times.json is what the README's and performance.md's times say
    (`python -m tibalance.docs times` wrote them), and a new timed run replaces
    the record of its command on its kind of CPU only, a failed one nothing."""
    records = json.loads(docs.TIMES.read_text())
    assert docs.times_table(records) in docs.PERF_DOC.read_text()
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- times -->\n")[1].split("\n<!-- /times -->")[0]
    assert " ".join(block.split()) == docs.times_sentence(records)
    xeon = {"model": "Intel(R) Xeon(R) Processor", "capability": "AVX512", "native_bf16": True}
    avx2 = {"model": "AMD EPYC 7B13", "capability": "AVX2", "native_bf16": False}
    old = [{"target": "demo", "seconds": 1800, "commit": "a", "date": "d", "cpu": xeon},
           {"target": "demo", "seconds": 2000, "commit": "a", "date": "d", "cpu": avx2}]
    new = docs.merge_times(old, {"commit": "b", "date": "e", "cpu": xeon, "runs": [
        {"target": "demo", "seconds": 1500.4, "rc": 0}, {"target": "verdict", "seconds": 9, "rc": 2}]})
    assert sorted((r["cpu"]["capability"], r["seconds"], r["commit"]) for r in new) == [
        ("AVX2", 2000, "a"), ("AVX512", 1500.4, "b")]
    table = docs.times_table(new).splitlines()
    assert table[2].startswith("| Intel Xeon, AVX512, bf16 native | 25 min 0 s | not measured | not measured |")
    assert table[3].startswith("| AMD EPYC 7B13, AVX2, bf16 emulated | 33 min 20 s |")
    assert "about 25 minutes on Intel Xeon (AVX512, bf16 native) and about 33 minutes on AMD EPYC 7B13" in \
        docs.times_sentence(new)
    # an AMD EPYC with AVX512 and native bf16 is its own row: the Xeon's stays
    genoa = {"model": "AMD EPYC", "capability": "AVX512", "native_bf16": True}
    both = docs.merge_times(new, {"commit": "c", "date": "f", "cpu": genoa,
                                  "runs": [{"target": "demo", "seconds": 1320, "rc": 0}]})
    assert sorted((docs.cpu_name(r["cpu"]), r["seconds"]) for r in both) == [
        ("AMD EPYC", 1320), ("AMD EPYC 7B13", 2000), ("Intel Xeon", 1500.4)]
    rows = docs.times_table(both).splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| AMD EPYC, AVX512, bf16 native", "22 min 0 s"],
                                                  ["| Intel Xeon, AVX512, bf16 native", "25 min 0 s"],
                                                  ["| AMD EPYC 7B13, AVX2, bf16 emulated", "33 min 20 s"]]
