from resmem.lm import stages
from resmem.logs import job_log

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0]):
    stages.corpus(sm.output.corpus, sm.output.meta, sm.params.corpus, sm.params.tokenizer_source)
