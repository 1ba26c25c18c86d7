rule fid:
    input:
        unpack(class_samples),  # raw, ti (and the other modes of the study)
        manifest="results/data/manifest.csv",
        model="results/baseline/model.pt",
        inception=inception_weights_file(config["metrics"]),  # fetch_weights; [] without Inception
    output:
        fid="results/fid/{cls}.json",
        meta="results/fid/{cls}.meta.json",
    log:
        "logs/fid/{cls}.log",
    benchmark:
        "results/benchmarks/fid/{cls}.tsv"
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        metrics=fid_metrics(),  # min_images only marks the tables: not a reason to recompute
        cache_root="results/fid/cache",
    script:
        "../workflow/scripts/fid.py"


# A synthetic set's diversity in LPIPS (metrics.lpips; tibalance/perceptual.py):
# the mean distance between its kept images, per mode, beside FID.
rule lpips:
    input:
        unpack(class_filtered),  # the kept images of each mode
        alexnet=lpips_weights_file(config["metrics"]),  # fetch_weights; [] with metrics.lpips_weights
    output:
        lpips="results/lpips/{cls}.json",
        meta="results/lpips/{cls}.meta.json",
    log:
        "logs/lpips/{cls}.log",
    benchmark:
        "results/benchmarks/lpips/{cls}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        metrics=lpips_metrics(),
    script:
        "../workflow/scripts/lpips.py"


# The stages a fine-tuning run keeps frozen (retrain.classifier.freeze_below)
# give every run the same outputs for the same image: computed once for the test
# images and, with retrain.classifier.augment: flip, for both views of every
# training image (tibalance/frozen.py).
rule frozen_features:
    input:
        manifest="results/data/manifest.csv",
        model="results/baseline/model.pt",
        after=after_generator,  # ordering only, see after_generator
    output:
        features="results/retrain/frozen_features.pt",
        meta="results/retrain/frozen_features.meta.json",
    log:
        "logs/frozen_features.log",
    benchmark:
        "results/benchmarks/frozen_features.tsv"
    priority: 10  # before the retraining runs, after the chain token -> adapter -> samples
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        below=lambda wildcards: retrain_classifier(wildcards)["freeze_below"],
        augment=lambda wildcards: retrain_classifier(wildcards).get(
            "augment", "standard"
        ),
    script:
        "../workflow/scripts/frozen_features.py"


rule retrain:
    input:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        weak="results/analysis/weak_classes.json",
        synthetic=retrain_synthetic,
        refill=retrain_refill_source,
        init=retrain_init,
        weights=retrain_weights,
        frozen=retrain_frozen,
    output:
        metrics="results/retrain/{method}/seed{seed}/metrics.json",
        predictions="results/retrain/{method}/seed{seed}/predictions.csv",
        meta="results/retrain/{method}/seed{seed}/retrain.meta.json",
    log:
        "logs/retrain/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/retrain/{method}/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        classifier=retrain_classifier,
        retrain=retrain_section,
    script:
        "../workflow/scripts/retrain.py"


# The ablation (config `ablation`): the same retraining on the first N synthetic
# images and/or without the filter, reusing the study's samples.
rule retrain_ablation:
    input:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        weak="results/analysis/weak_classes.json",
        synthetic=retrain_synthetic,
        init=retrain_init,
        weights=retrain_weights,
        frozen=retrain_frozen,
    output:
        metrics="results/ablation/{method}/{variant}/seed{seed}/metrics.json",
        predictions="results/ablation/{method}/{variant}/seed{seed}/predictions.csv",
        meta="results/ablation/{method}/{variant}/seed{seed}/retrain.meta.json",
    log:
        "logs/retrain_ablation/{method}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/retrain_ablation/{method}/{variant}/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        classifier=retrain_classifier,
        retrain=retrain_section,
        variant=lambda wildcards: parse_variant(wildcards.variant),
    script:
        "../workflow/scripts/retrain.py"


rule report:
    input:
        runs=retrain_runs,
        predictions=retrain_predictions,
        ablation=ablation_runs,
        fids=fid_files,
        filtered=filtered_files,
        judges=judge_files,
        ti_losses=ti_loss_files,
        ti_metas=ti_meta_files,
        lora_losses=lora_loss_files,
        lora_metas=lora_meta_files,
        neighbours=neighbour_files,
        lpips=lpips_files,
        weak="results/analysis/weak_classes.json",
        classes="results/data/classes.json",
    output:
        summary_csv="results/tables/summary.csv",
        summary_md="results/tables/summary.md",
        summary_html=report(
            "results/tables/summary.html",
            caption="../workflow/report/summary.rst",
            category="5. Results",
        ),
        per_class_csv="results/tables/per_class.csv",
        per_class_md="results/tables/per_class.md",
        per_class_html=report(
            "results/tables/per_class.html",
            caption="../workflow/report/per_class_table.rst",
            category="5. Results",
        ),
        acc_plot=report(
            "results/plots/accuracy_change.png",
            caption="../workflow/report/accuracy_change.rst",
            category="5. Results",
        ),
        fid_plot=report(
            "results/plots/fid_raw_vs_ti.png",
            caption="../workflow/report/fid_plot.rst",
            category="5. Results",
        ),
        significance_csv="results/tables/significance.csv",
        significance_md="results/tables/significance.md",
        significance_html=report(
            "results/tables/significance.html",
            caption="../workflow/report/significance.rst",
            category="5. Results",
        ),
        verdict_md="results/tables/verdict.md",
        verdict_html=report(
            "results/tables/verdict.html",
            caption="../workflow/report/verdict.rst",
            category="5. Results",
        ),
        ablation_csv="results/tables/ablation.csv",
        ablation_md="results/tables/ablation.md",
        ablation_html=report(
            "results/tables/ablation.html",
            caption="../workflow/report/ablation.rst",
            category="5. Results",
        ),
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fid_min_images=config["metrics"].get("min_images", FID_RELIABLE_IMAGES),
        groups=config["metrics"].get("groups", {}),
        # the groups of classes get the verdict's rows (as with several weak classes)
        long_tail=(config["data"].get("imbalance") or {}).get("type") == "long_tail",
        seed=SEED,
        # the confirmatory family, declared before the run (null: the adaptations)
        primary=config["verdict"]["primary"],
        notes=[ORACLE_ABSENT] if ORACLE_ABSENT else [],
        # {retraining seed: the replicate it trained on}, for the verdict's ranking line
        replicate_of_seed={
            s: replicate_of(s, config["retrain"]["seeds"], REPLICATES)
            for s in config["retrain"]["seeds"]
        },
    script:
        "../workflow/scripts/report.py"


# What every job cost (wall, CPU, GPU seconds, peak memory), from the benchmark
# files Snakemake wrote for each one: per stage, weak class and method.
rule cost:
    input:
        cost_inputs,
        classes="results/data/classes.json",
    output:
        csv="results/tables/cost.csv",
        methods_csv="results/tables/cost_methods.csv",
        md="results/tables/cost.md",
        html=report(
            "results/tables/cost.html",
            caption="../workflow/report/cost.rst",
            category="5. Results",
        ),
    log:
        "logs/cost.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        jobs=study_jobs,
        methods=config["retrain"]["methods"],
        concept=lambda wildcards: diff_ii_concept(),
        genie=GENIE_CONCEPT,
    script:
        "../workflow/scripts/cost.py"
