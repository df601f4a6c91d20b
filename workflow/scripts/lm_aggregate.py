from resmem.lm import stages
from resmem.logs import job_log
from resmem.stages import run_records

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    runs = run_records(sm.params.runs, sm.input)
    out = dict(sm.output.items())
    stages.aggregate(sm.wildcards.experiment, runs, out, sm.input.corpus_meta, sm.config, sm.params.repo_dir)
