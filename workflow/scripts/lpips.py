import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.lpips,
    cls=snakemake.wildcards.cls,
    filtered_csvs=smk.modes(snakemake.input),
    metrics_cfg=snakemake.params.metrics,
    out_json=snakemake.output.lpips,
    meta=snakemake.output.meta,
)
