rule sweep:
    input:
        embeddings="results/{experiment}/{model}/frac{fraction}/seed{seed}/embeddings.npz",
        neighbors="results/{experiment}/{model}/frac{fraction}/seed{seed}/neighbors.npz",
    output:
        sweep="results/{experiment}/{model}/frac{fraction}/seed{seed}/sweep.csv",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/sweep.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/sweep.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=lambda w, attempt: (1000 + 3 * experiment(w)["knn"]["sweep_chunk_mb"])
        * attempt,
        runtime=60,
    params:
        k=lambda w: experiment(w)["knn"]["k"],
        sigma=lambda w: experiment(w)["knn"]["sigma"],
        temperature=lambda w: experiment(w)["knn"]["temperature"],
        sweep_chunk_mb=lambda w: experiment(w)["knn"]["sweep_chunk_mb"],
    script:
        "../scripts/sweep.py"


rule select:
    input:
        sweep="results/{experiment}/{model}/frac{fraction}/seed{seed}/sweep.csv",
    output:
        selected="results/{experiment}/{model}/frac{fraction}/seed{seed}/selected.json",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/select.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/select.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(500),
        runtime=5,
    script:
        "../scripts/select.py"


rule confidence:
    input:
        embeddings="results/{experiment}/{model}/frac{fraction}/seed{seed}/embeddings.npz",
        neighbors="results/{experiment}/{model}/frac{fraction}/seed{seed}/neighbors.npz",
        selected="results/{experiment}/{model}/frac{fraction}/seed{seed}/selected.json",
    output:
        confidence="results/{experiment}/{model}/frac{fraction}/seed{seed}/confidence.csv",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/confidence.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/confidence.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    script:
        "../scripts/confidence.py"
