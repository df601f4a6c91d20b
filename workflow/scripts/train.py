from resmem.device import claim_gpu
from resmem.logs import workflow_job
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm), claim_gpu(sm.config["device"]):
    stages.train(
        sm.input.split,
        dict(sm.output.items()),
        sm.params.dataset,
        sm.params.model,
        sm.params.train,
        train_fraction=float(sm.wildcards.train_fraction),
        seed=int(sm.wildcards.seed),
        device=sm.config["device"],
        threads=sm.threads,
        config=sm.config,
        resume=sm.input.get("resume"),  # a segmented training's previous segment
        stop_epoch=sm.params.get("stop_epoch"),  # a segment's last epoch
        images_path=sm.input.get("images"),  # a folder dataset decoded into memory
    )
