from resmem.logs import workflow_job
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    stages.predict(sm.input.embeddings, sm.input.neighbors, sm.input.selected, sm.output)
