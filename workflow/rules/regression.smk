# Stylized regression studies (regression in the config): the risk table, then its figure and summary.


rule regression_risk:
    output:
        risk=f"{EXPERIMENT}/risk.csv",
    log:
        f"{EXPERIMENT}/logs/regression_risk.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/regression_risk.tsv"
    wildcard_constraints:
        experiment=names_regex("regression"),
    conda:
        "../../envs/resmem.yaml"
    # Nearly all of the time is faiss's brute-force search, which uses every thread it is given.
    threads: 2
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        study=lookup(dpath="regression/{experiment}", within=config),
    script:
        "../scripts/regression_risk.py"


rule regression_report:
    input:
        risk=f"{EXPERIMENT}/risk.csv",
    output:
        png=report(
            f"{EXPERIMENT}/figures/risk_vs_n.png",
            caption="../report/regression_risk.rst",
            category="{experiment}",
            subcategory="figures",
            labels={"figure": "risk_vs_n"},
        ),
        pdf=f"{EXPERIMENT}/figures/risk_vs_n.pdf",
        summary_md=f"{EXPERIMENT}/summary.md",
        provenance=f"{EXPERIMENT}/provenance.json",
    log:
        f"{EXPERIMENT}/logs/regression_report.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/regression_report.tsv"
    wildcard_constraints:
        experiment=names_regex("regression"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        study=lookup(dpath="regression/{experiment}", within=config),
        repo_dir=str(REPO),
    script:
        "../scripts/regression_report.py"
