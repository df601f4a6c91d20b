from resmem import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    runs = [
        {"model": m, "seed": s, "selected": sel, "meta": meta, "sweep": sw}
        for (m, s), sel, meta, sw in zip(sm.params.runs, sm.input.selected, sm.input.meta, sm.input.sweep, strict=True)
    ]
    stages.aggregate(
        sm.wildcards.experiment, runs, dict(sm.output.items()), config=sm.config, repo_dir=sm.params.repo_dir
    )
