from resmem import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    files = zip(sm.input.selected, sm.input.meta, sm.input.sweep, sm.input.confidence, strict=True)
    runs = [
        {
            "model": m,
            "train_fraction": float(f),
            "seed": s,
            "selected": sel,
            "meta": meta,
            "sweep": sweep,
            "confidence": conf,
        }
        for (m, f, s), (sel, meta, sweep, conf) in zip(sm.params.runs, files, strict=True)
    ]
    out = dict(sm.output.items())
    stages.aggregate(sm.wildcards.experiment, runs, out, config=sm.config, repo_dir=sm.params.repo_dir)
