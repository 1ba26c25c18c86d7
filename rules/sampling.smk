rule sample:
    input:
        unpack(sample_inputs),
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        samples="results/samples/{mode}/{cls}{rep}/samples.csv",
        meta="results/samples/{mode}/{cls}{rep}/sample.meta.json",
    log:
        "logs/sample/{mode}/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/sample/{mode}/{cls}{rep}.tsv"
    priority: 20  # before the retraining runs: they wait for these images
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        sampling=sampling_params,
        token=token_params,
        own=mode_params,
        seed=class_seed,
        model=MODEL,
        # images live beside samples.csv but are not an output: a rerun keeps
        # the ones already made with the same settings
        image_dir="results/samples/{mode}/{cls}{rep}/images",
    script:
        "../workflow/scripts/sample.py"


rule sample_grid:
    input:
        unpack(class_samples),  # raw, ti (and the other modes of the study): one row each
        seeds="results/seeds/{cls}/seeds.csv",
    output:
        report(
            "results/samples/grid/{cls}.png",
            caption="../workflow/report/grid.rst",
            category="4. Samples",
            subcategory="{cls}",
        ),
    log:
        "logs/sample_grid/{cls}.log",
    benchmark:
        "results/benchmarks/sample_grid/{cls}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow/scripts/sample_grid.py"


# A score and a kept flag for every synthetic image, from the study's training
# images only (never val or test); retraining uses the kept ones.
# The baseline's features of the study's training images, once for every
# filter job that compares synthetic images with them (knn).
rule train_features:
    input:
        manifest="results/data/manifest.csv",
        model="results/baseline/model.pt",
        after=after_generator,  # ordering only, see after_generator
    output:
        features="results/baseline/train_features.npz",
        meta="results/baseline/train_features.meta.json",
    log:
        "logs/train_features.log",
    benchmark:
        "results/benchmarks/train_features.tsv"
    priority: 20
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow/scripts/train_features.py"


rule filter_samples:
    input:
        samples="results/samples/{mode}/{cls}{rep}/samples.csv",
        manifest="results/data/manifest.csv",
        model="results/baseline/model.pt",
        features=filter_features,
    output:
        filtered="results/samples/{mode}/{cls}{rep}/filtered.csv",
        meta="results/samples/{mode}/{cls}{rep}/filter.meta.json",
    log:
        "logs/filter_samples/{mode}/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/filter_samples/{mode}/{cls}{rep}.tsv"
    priority: 20
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        filter=filter_params,
    script:
        "../workflow/scripts/filter_samples.py"
