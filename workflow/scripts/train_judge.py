import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.train_judge,
    pool_csv=snakemake.input.pool,
    manifest=snakemake.input.manifest,
    classes=snakemake.input.classes,
    clf_cfg=snakemake.params.classifier,
    seed=snakemake.params.seed,
    model_out=snakemake.output.model,
    metrics_out=snakemake.output.metrics,
    meta=snakemake.output.meta,
)
