import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.judge_pool,
    data_cfg=snakemake.params.data,
    seed=snakemake.params.seed,
    per_class=snakemake.params.per_class,
    out_csv=snakemake.output.pool,
    image_dir=snakemake.params.image_dir,
)
