from importlib import import_module

from resmem.device import claim_gpu
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with workflow_job(sm), claim_gpu(sm.config["device"]):
    files = (sm.input.index, sm.input.rows, sm.input.datastore)
    stages.neighbors(*files, dict(sm.output.items()), sm.params.knn, sm.config["device"])
