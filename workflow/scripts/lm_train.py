from resmem.device import claim_gpu
from resmem.lm import stages
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm), claim_gpu(sm.config["device"]):
    stages.train(
        sm.input.corpus,
        sm.input.corpus_meta,
        dict(sm.output.items()),
        sm.params.model,
        sm.params.train,
        sm.params.context,
        sm.params.eval_tokens,
        seed=int(sm.wildcards.seed),
        device=sm.config["device"],
        threads=sm.threads,
        config=sm.config,
        resume=sm.input.get("resume"),  # a segmented training's previous segment
        stop_epoch=sm.params.get("stop_epoch"),  # a segment's last epoch
    )
