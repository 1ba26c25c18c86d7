rule select_seeds:
    input:
        manifest="results/data/manifest.csv",
        model="results/baseline/model.pt",
    output:
        seeds="results/seeds/{cls}{rep}/seeds.csv",
        sheet=report(
            "results/seeds/{cls}{rep}/contact_sheet.png",
            caption="../workflow/report/seeds.rst",
            category="2. Seeds",
            subcategory="{cls}",
        ),
    log:
        "logs/select_seeds/{cls}{rep}.log",
    benchmark:
        "results/benchmarks/select_seeds/{cls}{rep}.tsv"
    priority: 55  # its class's token waits for it: a few seconds before the generator's UNet, not after
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        seeds=seeds_params,
    script:
        "../workflow/scripts/select_seeds.py"
