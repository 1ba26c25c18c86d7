# Downloads happen here, in local rules (the main process: on a cluster, the
# login node, which has internet) before the jobs that open the files; every
# job runs with the hubs' offline switches. A rule exists only when there is
# something to download (the demo and local folders plan none). The
# generator's hub pipeline: fetch_generator (rules/generator.smk).
if DATASET_MARKER:

    # torchvision's download of the dataset into data.root (data.download: true)
    rule fetch_dataset:
        output:
            marker=DATASET_MARKER,
        log:
            "logs/fetch_dataset.log",
        localrule: True
        conda:
            "../envs/torch.yaml"
        params:
            data=section("data"),
        script:
            "../workflow/scripts/fetch_dataset.py"


if WEIGHTS:

    # the classifier's ImageNet weights (classifier.pretrained) and FID's Inception
    rule fetch_weights:
        output:
            f"{WEIGHTS_DIR}/{{file}}",
        log:
            "logs/fetch_weights/{file}.log",
        wildcard_constraints:
            file="|".join(re.escape(f) for f in WEIGHTS),
        localrule: True
        conda:
            "../envs/torch.yaml"
        params:
            url=lambda wildcards: WEIGHTS[wildcards.file],
        script:
            "../workflow/scripts/fetch_weights.py"
