import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.invert,
    cls=snakemake.wildcards.cls,
    classes=snakemake.input.classes,
    manifest=snakemake.input.manifest,
    model=snakemake.params.model,
    sampling_cfg=snakemake.params.sampling,
    diff_ii_cfg=snakemake.params.diff_ii,
    out_csv=snakemake.output.inversions,
    out_dir=snakemake.params.inversion_dir,
    meta=snakemake.output.meta,
    embeds=snakemake.input.get("embeds"),
    lora=snakemake.input.get("lora"),
    **snakemake.params.token,
)
