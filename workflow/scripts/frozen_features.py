import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.frozen_features,
    manifest=snakemake.input.manifest,
    model=snakemake.input.model,
    below=snakemake.params.below,
    augment=snakemake.params.augment,
    out=snakemake.output.features,
    meta=snakemake.output.meta,
)
