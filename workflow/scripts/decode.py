from resmem.logs import job_log
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    at = f"experiments.{sm.wildcards.experiment}"  # the config key, for messages
    stages.decode(sm.output.images, sm.params.dataset, sm.params.augment, sm.threads, at)
