from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.sweep(sm.input.datastore, sm.input.neighbors, sm.output.sweep, sm.params.knn)
