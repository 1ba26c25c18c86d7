import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.sample,
    cls=snakemake.wildcards.cls,
    mode=snakemake.wildcards.mode,
    classes=snakemake.input.classes,
    manifest=snakemake.input.manifest,
    model=snakemake.params.model,
    sampling_cfg=snakemake.params.sampling,
    seed=snakemake.params.seed,
    out_csv=snakemake.output.samples,
    image_dir=snakemake.params.image_dir,
    meta=snakemake.output.meta,
    embeds=snakemake.input.get("embeds"),
    lora=snakemake.input.get("lora"),
    inversions=snakemake.input.get("inversions"),
    **{k: snakemake.input[k] for k in ("baseline_model", "predictions") if k in snakemake.input.keys()},
    **snakemake.params.token,
    **snakemake.params.own,
)
