import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.build_generator,
    tiny_cfg=snakemake.params.tiny,
    seed=snakemake.params.seed,
    out_dir=os.path.dirname(snakemake.output.model),  # the pipeline folder holding model_index.json
    meta=snakemake.output.meta,
)
