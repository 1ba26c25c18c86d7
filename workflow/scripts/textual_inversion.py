import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.textual_inversion,
    cls=snakemake.wildcards.cls,
    classes=snakemake.input.classes,
    seeds_csv=snakemake.input.seeds,
    model=snakemake.params.model,
    ti_cfg=snakemake.params.ti,
    seed=snakemake.params.seed,
    embeds_out=snakemake.output.embeds,
    loss_out=snakemake.output.loss,
    preview_out=snakemake.output.preview,
    resume_dir=snakemake.params.resume_dir,
    meta=snakemake.output.meta,
)
