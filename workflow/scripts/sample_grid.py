import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.sample_grid,
    cls=snakemake.wildcards.cls,
    seeds_csv=snakemake.input.seeds,
    sample_csvs=smk.modes(snakemake.input),
    out_png=snakemake.output[0],
)
