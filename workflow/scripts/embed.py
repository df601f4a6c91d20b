from resmem import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.embed(
        sm.input.split,
        sm.input.model,
        sm.output.embeddings,
        dataset=sm.params.dataset,
        batch_size=sm.params.batch_size,
        device=sm.config["device"],
        threads=sm.threads,
    )
