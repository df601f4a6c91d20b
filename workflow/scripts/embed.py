from resmem import stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.embed(
        sm.input.split,
        sm.input.model,
        sm.output.embeddings,
        dataset=sm.params.dataset,
        fraction=float(sm.wildcards.fraction),
        batch_size=sm.params.batch_size,
        amp=sm.params.amp,
        device=sm.config["device"],
        threads=sm.threads,
        num_workers=sm.params.num_workers,
    )
