from importlib import import_module

from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with job_log(sm.log[0]):
    stages.sweep(sm.input.datastore, sm.input.neighbors, sm.output.sweep, sm.params.knn)
