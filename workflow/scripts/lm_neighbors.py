from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.neighbors(
        sm.input.index,
        sm.input.rows,
        sm.input.datastore,
        dict(sm.output.items()),
        float(sm.wildcards.store_fraction),
        sm.params.knn,
        sm.config["device"],
    )
