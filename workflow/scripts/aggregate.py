from resmem.logs import job_log
from resmem.stages import run_records
from resmem.vision import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    runs = run_records(sm.params.runs, sm.input)
    stages.aggregate(sm.wildcards.experiment, runs, dict(sm.output.items()), sm.config, sm.params.repo_dir)
