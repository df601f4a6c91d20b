from resmem.logs import workflow_job
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    stages.split(sm.output.split, sm.params.dataset)
