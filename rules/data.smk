rule prepare_data:
    input:
        fetched=DATASET_FETCHED,  # fetch_dataset's marker when data.download: true
    output:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        skipped="results/data/skipped.csv",
        meta="results/data/prepare_data.meta.json",
    log:
        "logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=section("data"),
        seed=SEED,
        image_dir="results/data/images",
    script:
        "../workflow/scripts/prepare_data.py"


# The real-image oracle (method real_oracle): a weak class refilled with real
# training-split images the study itself removed (the imbalance first, then the
# caps' leftovers), as many as its synthetic sets hold; never a test or val image
# and none of the judge's pool. Only where the study removed images (data.imbalance).
rule oracle_images:
    input:
        fetched=DATASET_FETCHED,
        manifest="results/data/manifest.csv",  # its train counts set the count
    output:
        images="results/oracle/{cls}/images.csv",
        meta="results/oracle/{cls}/oracle_images.meta.json",
    log:
        "logs/oracle_images/{cls}.log",
    benchmark:
        "results/benchmarks/oracle_images/{cls}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=section("data"),
        seed=SEED,
        n=lambda wildcards: images_wanted(wildcards.cls),
        judge_per_class=JUDGE_POOL_PER_CLASS,
        image_dir="results/oracle/images",
    script:
        "../workflow/scripts/oracle_images.py"
