# Class fidelity: a judge classifier that takes no part in the study says
# which class each synthetic set shows. Only when config `judge` names a
# checkpoint (judge.model) or asks for one to be trained (train_per_class > 0).


# Images the study does not use (left out by the caps and the imbalance; never
# the test split), up to train_per_class per class.
rule judge_pool:
    input:
        fetched=DATASET_FETCHED,
    output:
        pool="results/judge/pool.csv",
    log:
        "logs/judge_pool.log",
    benchmark:
        "results/benchmarks/judge_pool.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        data=section("data"),
        seed=SEED,
        per_class=config["judge"]["train_per_class"],
        image_dir="results/judge/images",
    script:
        "../workflow/scripts/judge_pool.py"


rule train_judge:
    input:
        pool="results/judge/pool.csv",
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        weights=classifier_weights_file(judge_train_classifier()),
        after=after_generator,  # ordering only (ancient: never a rerun trigger), see after_generator
    output:
        model="results/judge/model.pt",
        metrics="results/judge/metrics.json",
        meta="results/judge/train_judge.meta.json",
    log:
        "logs/train_judge.log",
    benchmark:
        "results/benchmarks/train_judge.tsv"
    priority: 5  # before the retraining runs: the judge's tables wait for it
    conda:
        "../envs/torch.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        classifier=judge_train_classifier(),
        seed=derive_seed(SEED, "judge"),
    script:
        "../workflow/scripts/train_judge.py"


rule judge:
    input:
        unpack(class_filtered),  # raw, ti (and the other modes of the study), with the filter's kept flags
        judge=JUDGE or [],
        manifest="results/data/manifest.csv",
    output:
        "results/judge/{cls}.json",
    log:
        "logs/judge/{cls}.log",
    benchmark:
        "results/benchmarks/judge/{cls}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/judge.py"
