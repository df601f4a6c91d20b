from resmem.logs import workflow_job
from resmem.regression import stages

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    out = dict(sm.output.items())
    stages.report(sm.wildcards.experiment, sm.input.risk, out, sm.params.study, sm.config, sm.params.repo_dir)
