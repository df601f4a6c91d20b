import os

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# A config file named on the command line replaces the offline default instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/vision.smk"
include: "workflow/rules/lm.smk"
include: "workflow/rules/shared.smk"
include: "workflow/rules/regression.smk"


# On a cluster, the summary and its figures are made where snakemake runs.
localrules:
    all,
    aggregate,
    lm_aggregate,
    regression_report,


rule all:
    default_target: True
    input:
        final_outputs(),
