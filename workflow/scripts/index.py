from resmem import stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.index(
        sm.input.embeddings,
        sm.input.split,
        sm.output.index,
        normalize=sm.params.normalize,
        device=sm.config["device"],
        kind=sm.params.kind,
        nlist=sm.params.nlist,
        pq_m=sm.params.pq_m,
        pq_bits=sm.params.pq_bits,
    )
