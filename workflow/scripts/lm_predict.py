import torch

from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm), claim_gpu(sm.config["device"]):
    torch.set_num_threads(sm.threads)
    inputs = (sm.input.datastore, sm.input.neighbors, sm.input.selected)
    stages.predict(*inputs, sm.output.predictions, sm.params.knn, sm.config["device"])
