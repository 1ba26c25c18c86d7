import sys

sys.path.insert(0, snakemake.scriptdir + "/../..")  # the tibalance package, also inside conda envs
from tibalance import smk
from tibalance.fetch import fetch_url

smk.run(snakemake, fetch_url, online=True, url=snakemake.params.url, out=snakemake.output[0])
