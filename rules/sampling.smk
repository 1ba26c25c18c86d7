rule sample:
    input:
        unpack(sample_inputs),
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        samples="results/samples/{method}/{cls}/samples.csv",
        meta="results/samples/{method}/{cls}/sample.meta.json",
    params:
        sampling=sampling_params,
        token=token_params,
        seed=class_seed,
        model=MODEL,
        # images live beside samples.csv but are not an output: a rerun keeps
        # the ones already made with the same settings
        image_dir="results/samples/{method}/{cls}/images",
    log:
        "logs/sample/{method}/{cls}.log",
    benchmark:
        "benchmarks/sample/{method}/{cls}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    conda:
        "../envs/diffusion.yaml"
    script:
        "../workflow/scripts/sample.py"


rule sample_grid:
    input:
        seeds="results/seeds/{cls}/seeds.csv",
        raw="results/samples/raw/{cls}/samples.csv",
        ti="results/samples/ti/{cls}/samples.csv",
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
        "benchmarks/sample_grid/{cls}.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/sample_grid.py"
