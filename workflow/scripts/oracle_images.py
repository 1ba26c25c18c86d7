import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.oracle_images,
    data_cfg=snakemake.params.data,
    seed=snakemake.params.seed,
    cls=snakemake.wildcards.cls,
    n=snakemake.params.n,
    judge_per_class=snakemake.params.judge_per_class,
    out_csv=snakemake.output.images,
    image_dir=snakemake.params.image_dir,
    meta=snakemake.output.meta,
)
