from resmem.device import claim_gpu
from resmem.logs import workflow_job
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm), claim_gpu(sm.config["device"]):
    inputs = (sm.input.split, sm.input.model, sm.input.train_rows)
    sections = (sm.params.dataset, sm.params.train, sm.params.batch_size)
    images = sm.input.get("images")  # a folder dataset decoded into memory
    stages.embed(*inputs, sm.output.embeddings, *sections, sm.config["device"], sm.threads, images, sm.params.model)
