from resmem import lm_stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    lm_stages.sweep(
        sm.input.datastore,
        sm.input.neighbors,
        sm.output.sweep,
        ks=sm.params.k,
        sigmas=sm.params.sigma,
        temperatures=sm.params.temperature,
        lambdas=sm.params.lam,
        sweep_chunk_mb=sm.params.sweep_chunk_mb,
    )
