from resmem.logs import job_log
from resmem.vision import external

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    at = f"experiments.{sm.wildcards.experiment}.embeddings.{sm.wildcards.model}"  # the config key, for messages
    out = dict(sm.output.items())
    external.embeddings_from_file(sm.params.entry, out, at, sm.params.dataset, sm.config)
