import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.retrain,
    method=snakemake.wildcards.method,
    seed=int(snakemake.wildcards.seed),
    manifest=snakemake.input.manifest,
    classes=snakemake.input.classes,
    weak_json=snakemake.input.weak,
    synthetic_csvs=list(snakemake.input.synthetic),
    clf_cfg=snakemake.params.classifier,
    retrain_cfg=snakemake.params.retrain,
    metrics_out=snakemake.output.metrics,
    meta=snakemake.output.meta,
    variant=snakemake.params.get("variant"),
    init_model=smk.single(snakemake.input.get("init")),
    frozen_cache=smk.single(snakemake.input.get("frozen")),
    predictions_out=snakemake.output.predictions,
)
