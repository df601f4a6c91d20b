from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.datastore(
        sm.input.corpus,
        sm.input.model,
        sm.output.datastore,
        sm.output.report,
        sm.params.datastore,
        sm.params.eval_tokens,
        sm.params.amp,
        device=sm.config["device"],
        threads=sm.threads,
    )
