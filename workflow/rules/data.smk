rule split:
    output:
        split="results/{experiment}/split.npz",
    log:
        "results/{experiment}/logs/split.log",
    benchmark:
        "results/{experiment}/benchmarks/split.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(1000),
        runtime=10,
    params:
        dataset=lambda w: experiment(w)["dataset"],
    script:
        "../scripts/split.py"
