# Stylized regression studies (regression in the config): the risk table, then its figure and summary.


rule regression_risk:
    output:
        risk="results/{experiment}/risk.csv",
    log:
        "results/{experiment}/logs/regression_risk.log",
    benchmark:
        "results/{experiment}/benchmarks/regression_risk.tsv"
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
        study=lambda w: config["regression"][w.experiment],
    script:
        "../scripts/regression_risk.py"


rule regression_report:
    input:
        risk="results/{experiment}/risk.csv",
    output:
        png=report(
            "results/{experiment}/figures/risk_vs_n.png",
            caption="../report/regression_risk.rst",
            category="{experiment}",
            subcategory="figures",
            labels={"figure": "risk_vs_n"},
        ),
        pdf="results/{experiment}/figures/risk_vs_n.pdf",
        summary_md="results/{experiment}/summary.md",
        provenance="results/{experiment}/provenance.json",
    log:
        "results/{experiment}/logs/regression_report.log",
    wildcard_constraints:
        experiment=names_regex("regression"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        study=lambda w: config["regression"][w.experiment],
        repo_dir=str(REPO),
    script:
        "../scripts/regression_report.py"
