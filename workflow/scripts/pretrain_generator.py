import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.pretrain_generator,
    manifest=snakemake.input.manifest,
    classes=snakemake.input.classes,
    vae_meta=snakemake.input.vae_meta,
    tiny_cfg=snakemake.params.tiny,
    pretrain_cfg=snakemake.params.pretrain,
    seed=snakemake.params.seed,
    out_dir=os.path.dirname(snakemake.output.model),  # the pipeline folder holding model_index.json
    loss_out=snakemake.output.loss,
    meta=snakemake.output.meta,
)
