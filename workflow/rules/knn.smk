rule index:
    input:
        split="results/{experiment}/split.npz",
        embeddings="results/{experiment}/{model}/frac{fraction}/seed{seed}/embeddings.npz",
    output:
        index="results/{experiment}/{model}/frac{fraction}/seed{seed}/index.faiss",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/index.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/index.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=60,
    params:
        normalize=lambda w: experiment(w)["knn"]["normalize"],
        kind=lambda w: experiment(w)["knn"]["index"],
        nlist=lambda w: experiment(w)["knn"]["nlist"],
        pq_m=lambda w: experiment(w)["knn"]["pq_m"],
        pq_bits=lambda w: experiment(w)["knn"]["pq_bits"],
    script:
        "../scripts/index.py"


# One search at the largest k serves the whole grid: the sigma and temperature grids are no rerun triggers here.
rule neighbors:
    input:
        index="results/{experiment}/{model}/frac{fraction}/seed{seed}/index.faiss",
        embeddings="results/{experiment}/{model}/frac{fraction}/seed{seed}/embeddings.npz",
    output:
        neighbors="results/{experiment}/{model}/frac{fraction}/seed{seed}/neighbors.npz",
        report="results/{experiment}/{model}/frac{fraction}/seed{seed}/search.json",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/neighbors.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/neighbors.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=60,
    params:
        k_max=lambda w: max(experiment(w)["knn"]["k"]),
        normalize=lambda w: experiment(w)["knn"]["normalize"],
        query_chunk=lambda w: experiment(w)["knn"]["query_chunk"],
        nprobe=lambda w: experiment(w)["knn"]["nprobe"],
        recall_sample=lambda w: experiment(w)["knn"]["recall_sample"],
    script:
        "../scripts/neighbors.py"
