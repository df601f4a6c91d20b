rule aggregate:
    input:
        selected=run_files("selected.json"),
        meta=run_files("train_meta.json"),
        sweep=run_files("sweep.csv"),
        confidence=run_files("confidence.csv"),
    output:
        **{
            f"{fig}_{ext}": f"results/{{experiment}}/figures/{fig}.{ext}"
            for fig in FIGURES
            for ext in ("png", "pdf")
        },
        summary_csv="results/{experiment}/summary.csv",
        summary_md="results/{experiment}/summary.md",
        summary_tex="results/{experiment}/summary.tex",
        provenance="results/{experiment}/provenance.json",
    log:
        "results/{experiment}/logs/aggregate.log",
    benchmark:
        "results/{experiment}/benchmarks/aggregate.tsv"
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=lambda w: runs(w.experiment),
        repo_dir=str(REPO),
    script:
        "../scripts/aggregate.py"
