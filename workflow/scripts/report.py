import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk, stages

smk.run(
    snakemake,
    stages.report,
    runs=list(snakemake.input.runs),
    ablation=list(snakemake.input.ablation),
    fids=list(snakemake.input.fids),
    weak_json=snakemake.input.weak,
    ti_losses=list(snakemake.input.ti_losses),
    ti_metas=list(snakemake.input.ti_metas),
    lora_losses=list(snakemake.input.lora_losses),
    lora_metas=list(snakemake.input.lora_metas),
    neighbours=list(snakemake.input.neighbours),
    lpips=list(snakemake.input.lpips),
    filtered=list(snakemake.input.filtered),
    judges=list(snakemake.input.judges),
    fid_min_images=snakemake.params.fid_min_images,
    classes=snakemake.input.classes,
    predictions=list(snakemake.input.predictions),
    seed=snakemake.params.seed,
    notes=list(snakemake.params.notes),
    replicate_of_seed=dict(snakemake.params.replicate_of_seed),
    group_thresholds=dict(snakemake.params.groups),
    long_tail=bool(snakemake.params.long_tail),
    primary=None if snakemake.params.primary is None else list(snakemake.params.primary),
    **{k: snakemake.output[k] for k in ("summary_csv", "summary_md", "per_class_csv", "per_class_md", "acc_plot", "fid_plot",
                                                "ablation_csv", "ablation_md", "significance_csv", "significance_md", "verdict_md")},
)
