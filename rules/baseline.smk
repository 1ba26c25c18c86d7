rule train_baseline:
    input:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        weights=classifier_weights_file(config["classifier"]),  # fetch_weights; [] unless pretrained
    output:
        model="results/baseline/model.pt",
        predictions="results/baseline/predictions.csv",
        metrics="results/baseline/metrics.json",
        meta="results/baseline/train_baseline.meta.json",
    log:
        "logs/train_baseline.log",
    benchmark:
        "results/benchmarks/train_baseline.tsv"
    priority: 50  # with the generator's VAE, first: the seed selection and every token wait for it
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        classifier=section("classifier"),
        seed=SEED,
    script:
        "../workflow/scripts/train_baseline.py"
