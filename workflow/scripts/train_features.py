import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.train_features,
    manifest=snakemake.input.manifest,
    model=snakemake.input.model,
    out=snakemake.output.features,
    meta=snakemake.output.meta,
)
