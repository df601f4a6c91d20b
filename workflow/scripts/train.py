from resmem import stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    stages.train(
        sm.input.split,
        sm.output.model,
        sm.output.train_log,
        sm.output.meta,
        dataset=sm.params.dataset,
        model_spec=sm.params.model,
        train_cfg=sm.params.train,
        fraction=float(sm.wildcards.fraction),
        seed=int(sm.wildcards.seed),
        device=sm.config["device"],
        threads=sm.threads,
        config=sm.config,
    )
