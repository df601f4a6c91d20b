from importlib import import_module

from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with workflow_job(sm):
    stages.select(sm.input.sweep, sm.output.selected)
