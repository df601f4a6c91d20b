from resmem import regression_stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    regression_stages.risk(sm.output.risk, sm.params.study)
