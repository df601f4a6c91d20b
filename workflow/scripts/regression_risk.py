from resmem.logs import job_log
from resmem.regression import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.risk(sm.output.risk, sm.params.study)
