import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.coti,
    cls=snakemake.wildcards.cls,
    classes=snakemake.input.classes,
    manifest=snakemake.input.manifest,
    seeds_csv=snakemake.input.seeds,
    ti_embeds=snakemake.input.embeds,
    classifier=snakemake.input.model,
    features=snakemake.input.features,
    model=snakemake.params.model,
    ti_cfg=snakemake.params.ti,
    coti_cfg=snakemake.params.coti,
    sampling_cfg=snakemake.params.sampling,
    seed=snakemake.params.seed,
    cycle_dir=snakemake.params.cycle_dir,
    embeds_out=snakemake.output.embeds,
    cycles_out=snakemake.output.cycles,
    candidates_out=snakemake.output.candidates,
    preview_out=snakemake.output.preview,
    meta=snakemake.output.meta,
)
