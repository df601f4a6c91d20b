from resmem import lm_stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    lm_stages.neighbours(
        sm.input.index,
        sm.input.datastore,
        sm.output.neighbors,
        sm.output.report,
        fraction=float(sm.wildcards.fraction),
        k_max=sm.params.k_max,
        normalize=sm.params.normalize,
        device=sm.config["device"],
        query_chunk=sm.params.query_chunk,
        nprobe=sm.params.nprobe,
        recall_sample=sm.params.recall_sample,
    )
