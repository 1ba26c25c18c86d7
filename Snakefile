# tibalance: is a weak class helped by Textual-Inversion images?
# Table of contents only; the helpers live in rules/common.smk.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# the real study, unless --configfile names another: configs are not merged,
# so nothing of the Flowers-102 study leaks into the demo or a user's study
if not workflow.overwrite_configfiles:
    DEFAULT_CONFIG = os.path.join(workflow.basedir, "config", "config.yaml")
    # one line naming the file and the line, not Snakemake's "not valid JSON or YAML"
    sys.path.insert(0, workflow.basedir)
    from tibalance.config import yaml_problem

    if yaml_problem(DEFAULT_CONFIG):
        sys.exit(f"tibalance: {yaml_problem(DEFAULT_CONFIG)}")

    configfile: DEFAULT_CONFIG


report: "workflow/report/workflow.rst"


# cheap aggregation jobs run in the main process, also on a cluster (and
# fetch_generator, which says so itself: it exists only when there is a hub id)
localrules:
    all,
    analyse_confusion,
    sample_grid,
    report,
    cost,


include: "rules/common.smk"


wildcard_constraints:
    cls=r"[a-z0-9_]+",
    rep=r"(/rep[1-9][0-9]*)?",  # replicate k > 0 of a class's adaptation (replicates: R); empty for replicate 0
    mode=r"ti_i2i|ti_lora|ti|lora_i2i|lora|raw|diff_ii|coti|genie_ada|genie|fg_i2i",
    method=r"(oversample\+|real_oracle@|deferred_)?(ti_i2i|ti_lora|ti|lora_i2i|lora|raw_sd|diff_ii|coti|genie_ada|genie|fg_i2i)|(deferred_)?oversample|noise_static|noise|raw|baseline|reweight|drw|cmo_drw|cmo|real_oracle",
    adapter=r"lora|ti_lora",
    seed=r"\d+",
    variant=r"(n\d+|balanced)-(filter|nofilter)",


include: "rules/fetch.smk"
include: "rules/data.smk"
include: "rules/baseline.smk"
include: "rules/analysis.smk"
include: "rules/seeds.smk"
include: "rules/generator.smk"
include: "rules/inversion.smk"
include: "rules/lora.smk"
include: "rules/coti.smk"
include: "rules/diff_ii.smk"
include: "rules/sampling.smk"
include: "rules/judge.smk"
include: "rules/rebalance.smk"
include: "rules/evaluation.smk"


rule all:
    default_target: True
    input:
        early_targets(),  # before the checkpoint: pretraining and the judge start beside the baseline
        all_targets,
