import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.generator_quality,
    model=os.path.dirname(snakemake.input.generator),  # the pipeline folder
    classifier=snakemake.input.model,
    classes=snakemake.input.classes,
    pretrain_meta=snakemake.input.meta,
    pretrain_cfg=snakemake.params.pretrain,
    seed=snakemake.params.seed,
    out_csv=snakemake.output.csv,
    out_md=snakemake.output.md,
    grid_png=snakemake.output.grid,
    meta=snakemake.output.sidecar,
)
