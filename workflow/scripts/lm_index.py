from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    fraction = float(sm.wildcards.store_fraction)
    stages.index(sm.input.datastore, dict(sm.output.items()), fraction, sm.params.knn, sm.config["device"])
