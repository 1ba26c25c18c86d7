import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.analyse_confusion,
    predictions=snakemake.input.predictions,
    classes=snakemake.input.classes,
    analysis_cfg=snakemake.params.analysis,
    per_class_out=snakemake.output.per_class,
    confusion_out=snakemake.output.confusion,
    weak_out=snakemake.output.weak,
)
