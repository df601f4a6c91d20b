from importlib import import_module

from resmem.device import claim_gpu
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with workflow_job(sm), claim_gpu(sm.config["device"]):
    checks = {name: path for name, path in sm.input.items() if name != "datastore"}
    out = dict(sm.output.items())
    stages.index(sm.input.datastore, out, sm.params.knn, sm.config["device"], sm.params.store_fraction, **checks)
