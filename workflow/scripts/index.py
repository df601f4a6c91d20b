from resmem.device import claim_gpu
from resmem.logs import job_log
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    inputs = (sm.input.embeddings, sm.input.split, sm.input.train_rows)
    stages.index(*inputs, sm.output.index, sm.params.knn, sm.config["device"])
