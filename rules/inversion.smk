rule textual_inversion:
    input:
        seeds="results/seeds/{cls}{rep}/seeds.csv",
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        embeds="results/inversion/{cls}{rep}/learned_embeds.safetensors",
        loss="results/inversion/{cls}{rep}/loss.csv",
        preview=report(
            "results/inversion/{cls}{rep}/preview.png",
            caption="../workflow/report/preview.rst",
            category="3. Adaptation",
            subcategory="{cls}",
        ),
        meta="results/inversion/{cls}{rep}/textual_inversion.meta.json",
    log:
        "logs/textual_inversion/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/textual_inversion/{cls}{rep}.tsv"
    # the study's critical path after the generator: the token gates its sampling
    # modes, the ti_lora adapter and their retraining runs, so it goes first
    priority: 40
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=120,
    params:
        ti=ti_params,
        seed=class_seed,
        model=MODEL,
        # not an output: Snakemake would delete it when a job fails, and a
        # restarted job must find it to resume
        resume_dir="results/inversion/{cls}{rep}/resume",
    script:
        "../workflow/scripts/textual_inversion.py"


# The vocabulary tokens nearest each learned token (the TI token, and COTI's
# where the study makes it), per text encoder: the per-class table's words.
rule token_neighbours:
    input:
        unpack(neighbour_inputs),
        generator=generator_files,
    output:
        "results/inversion/{cls}/neighbours.csv",
    log:
        "logs/token_neighbours/{cls}.log",
    benchmark:
        "results/benchmarks/token_neighbours/{cls}.tsv"
    conda:
        "../envs/diffusion.yaml"
    resources:
        mem_mb=8000,
        runtime=10,
    params:
        token=lambda wildcards: _token(wildcards.cls),
        model=MODEL,
    script:
        "../workflow/scripts/token_neighbours.py"
