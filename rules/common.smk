# Validation, class lists and the input/params functions of the DAG.
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from tibalance.config import check_class_names, class_settings, format_validation_error
from tibalance.data import check_root, dataset_class_names
from tibalance.util import TibalanceError, derive_seed, read_json


CONFIGFILE = (workflow.configfiles or ["config/config.yaml"])[-1]


def _fail(msg):
    # one line, no traceback: the run stops before any job starts
    sys.exit(f"tibalance: {msg}")


try:
    validate(config, "../config/schema.yaml")
except WorkflowError as e:
    err = e.__context__  # the jsonschema ValidationError validate() caught
    err = err if hasattr(err, "absolute_path") else None
    _fail(format_validation_error(err, CONFIGFILE) if err is not None else f"{CONFIGFILE}: {e}")

try:
    check_root(config["data"])
    check_class_names(config, dataset_class_names(config["data"]))
except TibalanceError as e:
    _fail(f"{CONFIGFILE}: {e}")


wildcard_constraints:
    cls=r"[a-z0-9_]+",


SEED = config["seed"]


def weak_classes():
    """Slugs of the weak classes, read from the analysis checkpoint's JSON."""
    return read_json(checkpoints.analyse_confusion.get().output.weak)["classes"]


def class_seed(wildcards):
    return derive_seed(SEED, wildcards.cls)


def seeds_params(wildcards):
    return class_settings(config, "seeds", wildcards.cls)


def all_targets(wildcards):
    weak = weak_classes()
    return (
        ["results/analysis/per_class.csv", "results/analysis/confusion.png"]
        + expand("results/seeds/{cls}/contact_sheet.png", cls=weak)
    )
