import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.noise_images,
    cls=snakemake.wildcards.cls,
    manifest=snakemake.input.manifest,
    n=snakemake.params.n,
    seed=snakemake.params.seed,
    image_dir=snakemake.params.image_dir,
    out_csv=snakemake.output.images,
    meta=snakemake.output.meta,
)
