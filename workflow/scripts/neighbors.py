from resmem.device import claim_gpu
from resmem.logs import job_log
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.neighbors(sm.input.index, sm.input.embeddings, dict(sm.output.items()), sm.params.knn, sm.config["device"])
