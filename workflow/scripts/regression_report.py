from resmem.logs import job_log
from resmem.regression import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    out = dict(sm.output.items())
    stages.report(sm.wildcards.experiment, sm.input.risk, out, sm.params.study, sm.config, sm.params.repo_dir)
