import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.filter_samples,
    cls=snakemake.wildcards.cls,
    samples_csv=snakemake.input.samples,
    manifest=snakemake.input.manifest,
    model=snakemake.input.model,
    features=smk.single(snakemake.input.get("features")),
    filter_cfg=snakemake.params.filter,
    out_csv=snakemake.output.filtered,
    meta=snakemake.output.meta,
)
