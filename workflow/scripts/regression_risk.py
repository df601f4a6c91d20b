from resmem.logs import workflow_job
from resmem.regression import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    stages.risk(sm.output.risk, sm.params.study)
