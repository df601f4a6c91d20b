from resmem.device import claim_gpu
from resmem.logs import job_log
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.embed(
        sm.input.split,
        sm.input.model,
        sm.input.train_rows,
        sm.output.embeddings,
        sm.params.dataset,
        sm.params.train,
        sm.params.batch_size,
        device=sm.config["device"],
        threads=sm.threads,
    )
