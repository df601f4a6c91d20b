from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm), claim_gpu(sm.config["device"]):
    outputs = (sm.output.datastore, sm.output.report)
    sections = (sm.params.datastore, sm.params.eval_tokens, sm.params.eval_stride, sm.params.amp)
    stages.datastore(
        sm.input.corpus, sm.input.model, *outputs, *sections, sm.config["device"], sm.threads, sm.params.model
    )
