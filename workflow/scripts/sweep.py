from importlib import import_module

import torch

from resmem.device import claim_gpu
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with workflow_job(sm), claim_gpu(sm.config["device"]):
    torch.set_num_threads(sm.threads)  # the sweep engine's CPU threads: the job's
    stages.sweep(sm.input.datastore, sm.input.neighbors, sm.output.sweep, sm.params.knn, sm.config["device"])
