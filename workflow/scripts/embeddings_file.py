from resmem.logs import workflow_job
from resmem.vision import external

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    at = f"experiments.{sm.wildcards.experiment}.embeddings.{sm.wildcards.model}"  # the config key, for messages
    out = dict(sm.output.items())
    external.embeddings_from_file(sm.params.entry, out, at, sm.params.dataset, sm.config)
