from resmem import lm_stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    files = zip(sm.input.selected, sm.input.search, sm.input.sweep, sm.input.meta, strict=True)
    runs = [
        {
            "model": model,
            "seed": seed,
            "datastore_fraction": float(fraction),
            "selected": selected,
            "search": search,
            "sweep": sweep,
            "meta": meta,
        }
        for (model, seed, fraction), (selected, search, sweep, meta) in zip(sm.params.runs, files, strict=True)
    ]
    out = dict(sm.output.items())
    lm_stages.aggregate(
        sm.wildcards.experiment, runs, out, sm.input.corpus_meta, config=sm.config, repo_dir=sm.params.repo_dir
    )
