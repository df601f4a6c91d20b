from importlib import import_module

from resmem.logs import workflow_job
from resmem.stages import run_records

sm = snakemake  # noqa: F821 (injected by Snakemake)
stages = import_module(sm.params.stages)  # the kind's stage module
with workflow_job(sm):
    runs = run_records(sm.params.runs, sm.input)  # the inputs listed per run
    experiment_files = {name: path for name, path in sm.input.items() if isinstance(path, str)}
    out = dict(sm.output.items())
    stages.aggregate(
        sm.wildcards.experiment, runs, out, sm.config, sm.params.repo_dir, stats=sm.params.stats, **experiment_files
    )
