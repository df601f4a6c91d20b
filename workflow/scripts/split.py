from resmem import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.split(sm.output.split, sm.params.dataset)
