# One LoRA adapter per weak class and kind, beside its textual inversion (same
# inputs: the class's seed images and the generator). `ti_lora` also starts
# from the class's learned token (token + LoRA).
rule lora:
    input:
        unpack(lora_inputs),
        seeds="results/seeds/{cls}{rep}/seeds.csv",
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        weights="results/lora/{adapter}/{cls}{rep}/pytorch_lora_weights.safetensors",
        loss="results/lora/{adapter}/{cls}{rep}/loss.csv",
        preview=report(
            "results/lora/{adapter}/{cls}{rep}/preview.png",
            caption="../workflow/report/lora_preview.rst",
            category="3. Adaptation",
            subcategory="{cls}",
        ),
        meta="results/lora/{adapter}/{cls}{rep}/lora.meta.json",
    log:
        "logs/lora/{adapter}/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/lora/{adapter}/{cls}{rep}.tsv"
    priority: 30  # after the token (ti_lora trains on it), before the sampling and retraining runs
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=120,
    params:
        lora=lora_params,
        token=lora_token_params,
        seed=class_seed,
        model=MODEL,
        # not an output: kept when a job fails, so that its retry resumes
        resume_dir="results/lora/{adapter}/{cls}{rep}/resume",
    script:
        "../workflow/scripts/lora.py"


# Diff-II's concept (diff_ii.concept ti_shared_lora): one LoRA adapter shared by
# every class the study generates for, trained on all their seed images, each
# image's prompts with its own class's learned token (the tokens frozen). One
# job per replicate; each class's diff_ii inversions and samples read it.
rule lora_shared:
    input:
        unpack(lora_shared_inputs),
        classes="results/data/classes.json",
        generator=generator_files,
    output:
        weights="results/lora/ti_shared{rep}/pytorch_lora_weights.safetensors",
        loss="results/lora/ti_shared{rep}/loss.csv",
        preview=report(
            "results/lora/ti_shared{rep}/preview.png",
            caption="../workflow/report/lora_preview.rst",
            category="3. Adaptation",
            subcategory="shared",
        ),
        meta="results/lora/ti_shared{rep}/lora.meta.json",
    log:
        "logs/lora/ti_shared{rep}.log",
    benchmark:
        "results/benchmarks/lora/ti_shared{rep}.tsv"
    priority: 30
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=24000,
        runtime=120,
    params:
        lora=lora_shared_params,
        tokens=lora_shared_token_params,
        seed=lora_shared_seed,
        model=MODEL,
        resume_dir="results/lora/ti_shared{rep}/resume",
    script:
        "../workflow/scripts/lora_shared.py"
