from resmem import lm_stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    lm_stages.index(
        sm.input.datastore,
        sm.output.index,
        fraction=float(sm.wildcards.fraction),
        normalize=sm.params.normalize,
        kind=sm.params.kind,
        nlist=sm.params.nlist,
        pq_m=sm.params.pq_m,
        pq_bits=sm.params.pq_bits,
        device=sm.config["device"],
    )
