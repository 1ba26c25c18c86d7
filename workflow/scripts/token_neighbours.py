import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.token_neighbours,
    tokens={k: snakemake.input[k] for k in ("ti", "coti") if k in snakemake.input.keys()},
    model=snakemake.params.model,
    placeholder=snakemake.params.token["placeholder"],
    out_csv=snakemake.output[0],
)
