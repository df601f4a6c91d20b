# Language-model experiments (lm_experiments): corpus → train → datastore → index → neighbours → sweep →
# select → aggregate, with one datastore per model and seed and the datastore-size study below it.


rule lm_corpus:
    output:
        corpus="results/{experiment}/corpus.npz",
        meta="results/{experiment}/corpus.json",
    log:
        "results/{experiment}/logs/corpus.log",
    benchmark:
        "results/{experiment}/benchmarks/corpus.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
    params:
        corpus=lambda w: lm_experiment(w)["corpus"],
    script:
        "../scripts/lm_corpus.py"


rule lm_train:
    input:
        corpus="results/{experiment}/corpus.npz",
        corpus_meta="results/{experiment}/corpus.json",
    output:
        model="results/{experiment}/{model}/seed{seed}/model.pt",
        train_log="results/{experiment}/{model}/seed{seed}/train_log.csv",
        meta="results/{experiment}/{model}/seed{seed}/train_meta.json",
    log:
        "results/{experiment}/{model}/seed{seed}/logs/train.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/benchmarks/train.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=240,
    params:
        model=lambda w: lm_experiment(w)["models"][w.model],
        train=lambda w: lm_experiment(w)["train"],
        context=lambda w: lm_experiment(w)["context"],
        eval_tokens=lambda w: lm_experiment(w)["eval_tokens"],
    script:
        "../scripts/lm_train.py"


rule lm_datastore:
    input:
        corpus="results/{experiment}/corpus.npz",
        model="results/{experiment}/{model}/seed{seed}/model.pt",
    output:
        datastore="results/{experiment}/{model}/seed{seed}/datastore.npz",
        report="results/{experiment}/{model}/seed{seed}/datastore.json",
    log:
        "results/{experiment}/{model}/seed{seed}/logs/datastore.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/benchmarks/datastore.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=120,
    params:
        stride=lambda w: lm_experiment(w)["datastore"]["stride"],
        max_tokens=lambda w: lm_experiment(w)["datastore"]["max_tokens"],
        batch_size=lambda w: lm_experiment(w)["datastore"]["batch_size"],
        eval_tokens=lambda w: lm_experiment(w)["eval_tokens"],
        amp=lambda w: lm_experiment(w)["train"]["amp"],
    script:
        "../scripts/lm_datastore.py"


rule lm_index:
    input:
        datastore="results/{experiment}/{model}/seed{seed}/datastore.npz",
    output:
        index="results/{experiment}/{model}/seed{seed}/store{fraction}/index.faiss",
    log:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/logs/index.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/benchmarks/index.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=60,
    params:
        normalize=lambda w: lm_experiment(w)["knn"]["normalize"],
        kind=lambda w: lm_experiment(w)["knn"]["index"],
        nlist=lambda w: lm_experiment(w)["knn"]["nlist"],
        pq_m=lambda w: lm_experiment(w)["knn"]["pq_m"],
        pq_bits=lambda w: lm_experiment(w)["knn"]["pq_bits"],
    script:
        "../scripts/lm_index.py"


# One search at the largest k serves the whole grid of ResMem and kNN-LM.
rule lm_neighbors:
    input:
        index="results/{experiment}/{model}/seed{seed}/store{fraction}/index.faiss",
        datastore="results/{experiment}/{model}/seed{seed}/datastore.npz",
    output:
        neighbors="results/{experiment}/{model}/seed{seed}/store{fraction}/neighbors.npz",
        report="results/{experiment}/{model}/seed{seed}/store{fraction}/search.json",
    log:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/logs/neighbors.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/benchmarks/neighbors.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=60,
    params:
        k_max=lambda w: max(lm_experiment(w)["knn"]["k"]),
        normalize=lambda w: lm_experiment(w)["knn"]["normalize"],
        query_chunk=lambda w: lm_experiment(w)["knn"]["query_chunk"],
        nprobe=lambda w: lm_experiment(w)["knn"]["nprobe"],
        recall_sample=lambda w: lm_experiment(w)["knn"]["recall_sample"],
    script:
        "../scripts/lm_neighbors.py"


rule lm_sweep:
    input:
        datastore="results/{experiment}/{model}/seed{seed}/datastore.npz",
        neighbors="results/{experiment}/{model}/seed{seed}/store{fraction}/neighbors.npz",
    output:
        sweep="results/{experiment}/{model}/seed{seed}/store{fraction}/sweep.csv",
    log:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/logs/sweep.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/benchmarks/sweep.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=60,
    params:
        k=lambda w: lm_experiment(w)["knn"]["k"],
        sigma=lambda w: lm_experiment(w)["knn"]["sigma"],
        temperature=lambda w: lm_experiment(w)["knn"]["temperature"],
        lam=lambda w: lm_experiment(w)["knn"]["lam"],
        sweep_chunk_mb=lambda w: lm_experiment(w)["knn"]["sweep_chunk_mb"],
    script:
        "../scripts/lm_sweep.py"


rule lm_select:
    input:
        sweep="results/{experiment}/{model}/seed{seed}/store{fraction}/sweep.csv",
    output:
        selected="results/{experiment}/{model}/seed{seed}/store{fraction}/selected.json",
    log:
        "results/{experiment}/{model}/seed{seed}/store{fraction}/logs/select.log",
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(1000),
        runtime=10,
    script:
        "../scripts/lm_select.py"


rule lm_aggregate:
    input:
        corpus_meta="results/{experiment}/corpus.json",
        selected=lm_run_files("selected.json"),
        search=lm_run_files("search.json"),
        sweep=lm_run_files("sweep.csv"),
        meta=lm_model_files("train_meta.json"),
    output:
        **{
            f"{fig}_png": report(
                f"results/{{experiment}}/figures/{fig}.png",
                caption=f"../report/{fig}.rst",
                category="{experiment}",
                subcategory="figures",
                labels={"figure": fig},
            )
            for fig in LM_FIGURES
        },
        **{
            f"{fig}_pdf": f"results/{{experiment}}/figures/{fig}.pdf"
            for fig in LM_FIGURES
        },
        summary_csv=report(
            "results/{experiment}/summary.csv",
            caption="../report/lm_summary.rst",
            category="{experiment}",
            subcategory="tables",
            labels={"table": "summary (per run)"},
        ),
        summary_md="results/{experiment}/summary.md",
        provenance="results/{experiment}/provenance.json",
    log:
        "results/{experiment}/logs/aggregate.log",
    benchmark:
        "results/{experiment}/benchmarks/aggregate.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        runs=lambda w: lm_runs(w.experiment),
        repo_dir=str(REPO),
    script:
        "../scripts/lm_aggregate.py"
