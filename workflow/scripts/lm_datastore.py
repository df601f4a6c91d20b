from resmem import lm_stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    lm_stages.datastore(
        sm.input.corpus,
        sm.input.model,
        sm.output.datastore,
        sm.output.report,
        stride=sm.params.stride,
        max_tokens=sm.params.max_tokens,
        eval_tokens=sm.params.eval_tokens,
        batch_size=sm.params.batch_size,
        amp=sm.params.amp,
        device=sm.config["device"],
        threads=sm.threads,
    )
