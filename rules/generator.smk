# Only when generator.model is a hub id (and nothing is built): the pipeline's
# files, fetched in the main process (on a cluster: the login node, which has
# internet) before any job that opens it.
if FETCH_REPO:

    rule fetch_generator:
        output:
            model=f"{MODEL}/model_index.json",
        log:
            "logs/fetch_generator.log",
        localrule: True
        conda:
            "../envs/diffusion.yaml"
        params:
            repo=FETCH_REPO,
        script:
            "../workflow/scripts/fetch_generator.py"


# Only when generator.build is 'tiny': the offline Stable-Diffusion stand-in.
rule build_generator:
    output:
        model="results/generator/tiny_sd/model_index.json",
        meta="results/generator/build_generator.meta.json",
    log:
        "logs/build_generator.log",
    benchmark:
        "results/benchmarks/build_generator.tsv"
    conda:
        "../envs/diffusion.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        tiny=canonical(config["generator"]["tiny"]),
        seed=SEED,
    script:
        "../workflow/scripts/build_generator.py"


# Only when generator.build is 'pretrain': the offline demo's generator learns
# the dataset's majority classes (a miniature of SD knowing the common classes),
# in two jobs: the VAE (it needs nothing of the baseline's and runs beside it on
# a CPU), then the UNet and text encoder on its latents (every generative job
# waits for this one: it keeps all cores).
rule pretrain_vae:
    input:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
    output:
        vae="results/generator/pretrain_vae/vae/config.json",
        meta="results/generator/pretrain_vae.meta.json",
    log:
        "logs/pretrain_vae.log",
    benchmark:
        "results/benchmarks/pretrain_vae.tsv"
    priority: 50  # with the baseline, first: the UNet waits for it
    conda:
        "../envs/diffusion.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        tiny=canonical(config["generator"]["tiny"]),
        pretrain=pretrain_vae_params,
        seed=SEED,
    script:
        "../workflow/scripts/pretrain_vae.py"


rule pretrain_generator:
    input:
        manifest="results/data/manifest.csv",
        classes="results/data/classes.json",
        vae="results/generator/pretrain_vae/vae/config.json",
        vae_meta="results/generator/pretrain_vae.meta.json",
    output:
        model="results/generator/pretrained_sd/model_index.json",
        loss="results/generator/pretrain_loss.csv",
        meta="results/generator/pretrain_generator.meta.json",
    log:
        "logs/pretrain_generator.log",
    benchmark:
        "results/benchmarks/pretrain_generator.tsv"
    priority: 50
    conda:
        "../envs/diffusion.yaml"
    threads: 8
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        tiny=canonical(config["generator"]["tiny"]),
        pretrain=pretrain_params,
        seed=SEED,
    script:
        "../workflow/scripts/pretrain_generator.py"


# How often the baseline classifier recognises the images of each class it
# learned of a generator tibalance pretrained (here, or the demo's shipped one):
# its quality, measured rather than assumed.
rule generator_quality:
    input:
        generator=f"{MODEL}/model_index.json",
        model="results/baseline/model.pt",
        classes="results/data/classes.json",
        meta=LEARNED or [],
    output:
        csv="results/tables/generator_quality.csv",
        md="results/tables/generator_quality.md",
        html=report(
            "results/tables/generator_quality.html",
            caption="../workflow/report/generator_quality.rst",
            category="6. Generator",
        ),
        grid=report(
            "results/generator/quality_samples.png",
            caption="../workflow/report/generator_samples.rst",
            category="6. Generator",
        ),
        sidecar="results/generator/generator_quality.meta.json",
    log:
        "logs/generator_quality.log",
    benchmark:
        "results/benchmarks/generator_quality.tsv"
    # before the retraining runs: nothing but the cost table waits for it, but left
    # to the end it ran alone on one core (70 s of an AVX2 demo's tail)
    priority: 1
    conda:
        "../envs/diffusion.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        pretrain=pretrain_params,
        seed=SEED,
    script:
        "../workflow/scripts/generator_quality.py"
