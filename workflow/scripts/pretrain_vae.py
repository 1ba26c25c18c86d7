import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.pretrain_vae,
    manifest=snakemake.input.manifest,
    classes=snakemake.input.classes,
    tiny_cfg=snakemake.params.tiny,
    vae_cfg=snakemake.params.pretrain,
    seed=snakemake.params.seed,
    out_dir=os.path.dirname(os.path.dirname(snakemake.output.vae)),  # results/generator/pretrain_vae
    meta=snakemake.output.meta,
)
