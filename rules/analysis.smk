checkpoint analyse_confusion:
    input:
        predictions="results/baseline/predictions.csv",
        classes="results/data/classes.json",
    output:
        per_class="results/analysis/per_class.csv",
        per_class_md="results/analysis/per_class.md",
        per_class_html=report(  # the report shows HTML (a .md or .csv only as a download)
            "results/analysis/per_class.html",
            caption="../workflow/report/per_class.rst",
            category="1. Baseline",
        ),
        confusion=report(
            "results/analysis/confusion.png",
            caption="../workflow/report/confusion.rst",
            category="1. Baseline",
        ),
        weak="results/analysis/weak_classes.json",
    log:
        "logs/analyse_confusion.log",
    benchmark:
        "results/benchmarks/analyse_confusion.tsv"
    priority: 55  # 3 s: the seeds and every token wait for it (else after the generator's UNet)
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        analysis=section("analysis"),
    script:
        "../workflow/scripts/analyse_confusion.py"
