from resmem.logs import workflow_job
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    at = f"experiments.{sm.wildcards.experiment}"  # the config key, for messages
    stages.decode(sm.output.images, sm.params.dataset, sm.params.augment, sm.threads, at)
