from importlib import import_module

from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
device = sm.params.device  # None: the kind's sweep runs on the CPU
with job_log(sm.log[0]), claim_gpu(device or "cpu"):
    on_device = {} if device is None else {"device": device}
    stages.sweep(sm.input.datastore, sm.input.neighbors, sm.output.sweep, sm.params.knn, **on_device)
