# COTI: the class's TI token trained on in active cycles, the training pool
# grown each cycle by the best-scored candidates (its unused real training
# images and the token's own samples, scored in the baseline's feature space);
# mode coti samples with it (and diff_ii where diff_ii.concept is coti).
rule coti:
    input:
        seeds="results/seeds/{cls}{rep}/seeds.csv",
        embeds="results/inversion/{cls}{rep}/learned_embeds.safetensors",
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        model="results/baseline/model.pt",
        features="results/baseline/train_features.npz",  # the class's region (the filter's)
        generator=generator_files,
    output:
        embeds="results/coti/{cls}{rep}/learned_embeds.safetensors",
        cycles="results/coti/{cls}{rep}/cycles.csv",
        candidates="results/coti/{cls}{rep}/candidates.csv",
        preview=report(
            "results/coti/{cls}{rep}/preview.png",
            caption="../workflow/report/coti.rst",
            category="3. Adaptation",
            subcategory="{cls}",
        ),
        meta="results/coti/{cls}{rep}/coti.meta.json",
    log:
        "logs/coti/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/coti/{cls}{rep}.tsv"
    priority: 30
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=180,
    params:
        ti=ti_params,
        coti=coti_params,
        sampling=coti_sampling_params,
        seed=class_seed,
        model=MODEL,
        # each cycle's token, images and scores; not an output: a restarted job
        # resumes after its last finished cycle
        cycle_dir="results/coti/{cls}{rep}/cycles",
    script:
        "../workflow/scripts/coti.py"
