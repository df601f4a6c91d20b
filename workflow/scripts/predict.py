from resmem.logs import job_log
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.predict(sm.input.embeddings, sm.input.neighbors, sm.input.selected, sm.output)
