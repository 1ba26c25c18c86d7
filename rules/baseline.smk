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
    params:
        classifier=section("classifier"),
        seed=SEED,
    log:
        "logs/train_baseline.log",
    benchmark:
        "results/benchmarks/train_baseline.tsv"
    threads: 8
    priority: 50  # with the generator's VAE, first: the seed selection and every token wait for it
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_baseline.py"
