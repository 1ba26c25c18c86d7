rule prepare_data:
    input:
        fetched=DATASET_FETCHED,  # fetch_dataset's marker when data.download: true
    output:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        skipped="results/data/skipped.csv",
        meta="results/data/prepare_data.meta.json",
    params:
        data=section("data"),
        seed=SEED,
        image_dir="results/data/images",
    log:
        "logs/prepare_data.log",
    benchmark:
        "benchmarks/prepare_data.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/prepare_data.py"
