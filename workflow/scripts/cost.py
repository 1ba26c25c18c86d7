import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.cost,
    jobs=list(snakemake.params.jobs),
    methods=list(snakemake.params.methods),
    out_csv=snakemake.output.csv,
    methods_csv=snakemake.output.methods_csv,
    out_md=snakemake.output.md,
    classes=snakemake.input.classes,
    concept=snakemake.params.concept,
    genie=snakemake.params.genie,
)
