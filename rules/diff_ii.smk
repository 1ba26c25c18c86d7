# Diff-II's inversion pool: every real training image of a weak class
# DDIM-inverted under its concept (the token by default), one file per image
# beside the table (a killed job resumes); mode diff_ii samples from it.
rule invert:
    input:
        unpack(invert_inputs),
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        inversions="results/diff_ii/{cls}{rep}/inversions.csv",
        meta="results/diff_ii/{cls}{rep}/invert.meta.json",
    log:
        "logs/invert/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/invert/{cls}{rep}.tsv"
    priority: 20
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        sampling=invert_sampling_params,
        diff_ii=invert_diff_ii_params,
        token=invert_token_params,
        model=MODEL,
        # one file per image, not an output: a rerun keeps those made with the same settings
        inversion_dir="results/diff_ii/{cls}{rep}/inversions",
    script:
        "../workflow/scripts/invert.py"
