import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.judge,
    cls=snakemake.wildcards.cls,
    judge_model=snakemake.input.judge,
    manifest=snakemake.input.manifest,
    filtered_csvs=smk.modes(snakemake.input),
    out_json=snakemake.output[0],
)
