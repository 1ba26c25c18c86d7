import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.lora_shared,
    seeds_csvs={k[len("seeds_"):]: v for k, v in snakemake.input.items() if k.startswith("seeds_")},
    embeds={k[len("embeds_"):]: v for k, v in snakemake.input.items() if k.startswith("embeds_")},
    tokens=snakemake.params.tokens,
    model=snakemake.params.model,
    lora_cfg=snakemake.params.lora,
    seed=snakemake.params.seed,
    out_dir=os.path.dirname(snakemake.output.weights),
    loss_out=snakemake.output.loss,
    preview_out=snakemake.output.preview,
    resume_dir=snakemake.params.resume_dir,
    meta=snakemake.output.meta,
)
