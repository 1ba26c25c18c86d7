import os
import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk
from tibalance.fetch import fetch_pipeline

smk.run(
    snakemake,
    fetch_pipeline,
    online=True,
    repo_id=snakemake.params.repo,
    out_dir=os.path.dirname(snakemake.output.model),  # the pipeline folder holding model_index.json
    endpoint=os.environ.get("TIBALANCE_HF_ENDPOINT"),  # tests: a stand-in hub on the loopback address
)
