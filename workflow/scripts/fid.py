import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.fid,
    cls=snakemake.wildcards.cls,
    manifest=snakemake.input.manifest,
    model=snakemake.input.model,
    sample_csvs=smk.modes(snakemake.input),
    metrics_cfg=snakemake.params.metrics,
    out_json=snakemake.output.fid,
    meta=snakemake.output.meta,
    cache_root=snakemake.params.cache_root,
)
