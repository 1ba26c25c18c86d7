import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.lora,
    cls=snakemake.wildcards.cls,
    kind=snakemake.wildcards.adapter,
    classes=snakemake.input.classes,
    seeds_csv=snakemake.input.seeds,
    model=snakemake.params.model,
    lora_cfg=snakemake.params.lora,
    seed=snakemake.params.seed,
    out_dir=os.path.dirname(snakemake.output.weights),
    loss_out=snakemake.output.loss,
    preview_out=snakemake.output.preview,
    resume_dir=snakemake.params.resume_dir,
    meta=snakemake.output.meta,
    embeds=snakemake.input.get("embeds"),
    **snakemake.params.token,
)
