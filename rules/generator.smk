# Only when generator.build is 'tiny': the offline Stable-Diffusion stand-in.
rule build_generator:
    output:
        model="results/generator/tiny_sd/model_index.json",
        meta="results/generator/build_generator.meta.json",
    params:
        tiny=canonical(config["generator"]["tiny"]),
        seed=SEED,
        out_dir="results/generator/tiny_sd",
    log:
        "logs/build_generator.log",
    benchmark:
        "benchmarks/build_generator.tsv"
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/diffusion.yaml"
    script:
        "../workflow/scripts/build_generator.py"
