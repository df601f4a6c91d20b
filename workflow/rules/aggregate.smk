rule aggregate:
    input:
        selected=run_files("selected.json"),
        meta=run_files("train_meta.json"),
        sweep=run_files("sweep.csv"),
        confidence=run_files("confidence.csv"),
    output:
        **{
            f"{fig}_png": report(
                f"results/{{experiment}}/figures/{fig}.png",
                caption=f"../report/{fig}.rst",
                category="{experiment}",
                subcategory="figures",
                labels={"figure": fig},
            )
            for fig in FIGURES
        },
        **{f"{fig}_pdf": f"results/{{experiment}}/figures/{fig}.pdf" for fig in FIGURES},
        summary_csv=report(
            "results/{experiment}/summary.csv",
            caption="../report/summary.rst",
            category="{experiment}",
            subcategory="tables",
            labels={"table": "summary (per run)"},
        ),
        summary_md="results/{experiment}/summary.md",
        summary_tex="results/{experiment}/summary.tex",
        provenance="results/{experiment}/provenance.json",
    log:
        "results/{experiment}/logs/aggregate.log",
    benchmark:
        "results/{experiment}/benchmarks/aggregate.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        runs=lambda w: runs(w.experiment),
        repo_dir=str(REPO),
    script:
        "../scripts/aggregate.py"
