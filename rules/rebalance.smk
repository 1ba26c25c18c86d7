# The `noise_static` ablation's pure-noise images (OPeN's old form; `noise`
# itself draws fresh noise in the training loop): per weak class, the share of
# its oversampled images drawn once from the class's own pixel statistics.
rule noise_images:
    input:
        manifest="results/data/manifest.csv",
        # its count param reads the weak classes (the checkpoint's output)
        analysis="results/analysis/per_class.csv",
    output:
        images="results/noise/{cls}/images.csv",
        meta="results/noise/{cls}/noise_images.meta.json",
    log:
        "logs/noise_images/{cls}.log",
    benchmark:
        "results/benchmarks/noise_images/{cls}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        n=noise_count_of,
        seed=lambda wildcards: derive_seed(SEED, wildcards.cls, "noise"),
        # the images beside the table, not an output: the table lists them
        image_dir="results/noise/{cls}/images",
    script:
        "../workflow/scripts/noise_images.py"
