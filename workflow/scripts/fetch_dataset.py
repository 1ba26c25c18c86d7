import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk
from tibalance.fetch import fetch_dataset

smk.run(snakemake, fetch_dataset, online=True, data_cfg=snakemake.params.data, marker=snakemake.output.marker)
