from resmem.lm import stages
from resmem.logs import workflow_job

sm = snakemake  # noqa: F821 (injected by Snakemake)
with workflow_job(sm):
    stages.corpus(sm.output.corpus, sm.output.meta, sm.params.corpus, sm.params.tokenizer_source)
