from resmem import lm_stages
from resmem.device import claim_gpu
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]), claim_gpu(sm.config["device"]):
    lm_stages.train(
        sm.input.corpus,
        sm.input.corpus_meta,
        sm.output.model,
        sm.output.train_log,
        sm.output.meta,
        model_spec=sm.params.model,
        train_cfg=sm.params.train,
        context=sm.params.context,
        eval_tokens=sm.params.eval_tokens,
        seed=int(sm.wildcards.seed),
        device=sm.config["device"],
        threads=sm.threads,
        config=sm.config,
    )
