import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.prepare_data,
    data_cfg=snakemake.params.data,
    seed=snakemake.params.seed,
    manifest=snakemake.output.manifest,
    classes=snakemake.output.classes,
    skipped=snakemake.output.skipped,
    image_dir=snakemake.params.image_dir,
    meta=snakemake.output.meta,
)
