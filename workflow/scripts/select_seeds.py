import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.select_seeds,
    cls=snakemake.wildcards.cls,
    manifest=snakemake.input.manifest,
    model=snakemake.input.model,
    seeds_cfg=snakemake.params.seeds,
    seeds_out=snakemake.output.seeds,
    sheet_out=snakemake.output.sheet,
)
