# Language-model experiments (lm_experiments): corpus → train → datastore → index → neighbors → sweep →
# select → aggregate, with one datastore per model and seed and the datastore-size study below it.


rule lm_corpus:
    output:
        corpus=f"{EXPERIMENT}/corpus.npz",
        meta=f"{EXPERIMENT}/corpus.json",
    log:
        f"{EXPERIMENT}/logs/corpus.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/corpus.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        runtime=60,
    params:
        corpus=section("lm_experiments", "corpus"),
    script:
        "../scripts/lm_corpus.py"


rule lm_train:
    input:
        corpus=f"{EXPERIMENT}/corpus.npz",
        corpus_meta=f"{EXPERIMENT}/corpus.json",
    output:
        model=f"{LM_RUN}/model.pt",
        train_log=f"{LM_RUN}/train_log.csv",
        meta=f"{LM_RUN}/train_meta.json",
    log:
        f"{LM_RUN}/logs/train.log",
    benchmark:
        f"{LM_RUN}/benchmarks/train.tsv"
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
        model=section("lm_experiments", "models/{model}"),
        train=section("lm_experiments", "train"),
        context=section("lm_experiments", "context"),
        eval_tokens=section("lm_experiments", "eval_tokens"),
    script:
        "../scripts/lm_train.py"


rule lm_datastore:
    input:
        corpus=f"{EXPERIMENT}/corpus.npz",
        model=f"{LM_RUN}/model.pt",
    output:
        datastore=f"{LM_RUN}/datastore.npz",
        report=f"{LM_RUN}/datastore.json",
    log:
        f"{LM_RUN}/logs/datastore.log",
    benchmark:
        f"{LM_RUN}/benchmarks/datastore.tsv"
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
        datastore=settings(
            "lm_experiments", "datastore", "stride", "max_tokens", "batch_size"
        ),
        eval_tokens=section("lm_experiments", "eval_tokens"),
        amp=section("lm_experiments", "train/amp"),
    script:
        "../scripts/lm_datastore.py"


rule lm_index:
    input:
        datastore=f"{LM_RUN}/datastore.npz",
    output:
        index=f"{LM_STORE}/index.faiss",
        rows=f"{LM_STORE}/rows.npz",
    log:
        f"{LM_STORE}/logs/index.log",
    benchmark:
        f"{LM_STORE}/benchmarks/index.tsv"
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
        knn=settings(
            "lm_experiments", "knn", "normalize", "index", "nlist", "pq_m", "pq_bits"
        ),
    script:
        "../scripts/lm_index.py"


# One search at the largest k serves the whole grid of ResMem and kNN-LM.
rule lm_neighbors:
    input:
        index=f"{LM_STORE}/index.faiss",
        rows=f"{LM_STORE}/rows.npz",
        datastore=f"{LM_RUN}/datastore.npz",
    output:
        neighbors=f"{LM_STORE}/neighbors.npz",
        report=f"{LM_STORE}/search.json",
    log:
        f"{LM_STORE}/logs/neighbors.log",
    benchmark:
        f"{LM_STORE}/benchmarks/neighbors.tsv"
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
        knn=settings(
            "lm_experiments",
            "knn",
            "k_max",
            "normalize",
            "query_chunk",
            "nprobe",
            "recall_sample",
        ),
    script:
        "../scripts/lm_neighbors.py"


rule lm_sweep:
    input:
        datastore=f"{LM_RUN}/datastore.npz",
        neighbors=f"{LM_STORE}/neighbors.npz",
    output:
        sweep=f"{LM_STORE}/sweep.csv",
    log:
        f"{LM_STORE}/logs/sweep.log",
    benchmark:
        f"{LM_STORE}/benchmarks/sweep.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=60,
    params:
        knn=settings(
            "lm_experiments",
            "knn",
            "k",
            "sigma",
            "temperature",
            "lam",
            "sweep_chunk_mb",
        ),
    script:
        "../scripts/lm_sweep.py"


rule lm_select:
    input:
        sweep=f"{LM_STORE}/sweep.csv",
    output:
        selected=f"{LM_STORE}/selected.json",
    log:
        f"{LM_STORE}/logs/select.log",
    benchmark:
        f"{LM_STORE}/benchmarks/select.tsv"
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
        corpus_meta=f"{EXPERIMENT}/corpus.json",
        selected=run_files("lm_experiments", f"{LM_STORE}/selected.json"),
        search=run_files("lm_experiments", f"{LM_STORE}/search.json"),
        sweep=run_files("lm_experiments", f"{LM_STORE}/sweep.csv"),
        meta=run_files("lm_experiments", f"{LM_RUN}/train_meta.json"),
    output:
        **figure_outputs(LM_FIGURES),
        summary_csv=summary_table("../report/lm_summary.rst"),
        summary_md=f"{EXPERIMENT}/summary.md",
        provenance=f"{EXPERIMENT}/provenance.json",
    log:
        f"{EXPERIMENT}/logs/aggregate.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/aggregate.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        runs=experiment_runs("lm_experiments"),
        repo_dir=str(REPO),
    script:
        "../scripts/lm_aggregate.py"
