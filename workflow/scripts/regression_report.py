from resmem import regression_stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    out = dict(sm.output.items())
    regression_stages.report(
        sm.wildcards.experiment, sm.input.risk, out, sm.params.study, config=sm.config, repo_dir=sm.params.repo_dir
    )
