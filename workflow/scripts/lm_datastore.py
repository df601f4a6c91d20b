from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    outputs = (sm.output.datastore, sm.output.report)
    sections = (sm.params.datastore, sm.params.eval_tokens, sm.params.eval_stride, sm.params.amp)
    stages.datastore(
        sm.input.corpus, sm.input.model, *outputs, *sections, sm.config["device"], sm.threads, sm.params.model
    )
