# Image experiments (experiments in the config): split → train → embed → index → neighbors → sweep → select →
# confidence → aggregate, one run per model × training fraction × seed.


rule split:
    output:
        split=f"{EXPERIMENT}/split.npz",
    log:
        f"{EXPERIMENT}/logs/split.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/split.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(1000),
        runtime=10,
    params:
        dataset=section("experiments", "dataset"),
    script:
        "../scripts/split.py"


rule train:
    input:
        split=f"{EXPERIMENT}/split.npz",
    output:
        model=f"{VISION_RUN}/model.pt",
        train_log=f"{VISION_RUN}/train_log.csv",
        meta=f"{VISION_RUN}/train_meta.json",
        train_rows=f"{VISION_RUN}/train_rows.npz",
    log:
        f"{VISION_RUN}/logs/train.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/train.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(4000),
        gpu=gpu_request,
        runtime=120,
    params:
        dataset=section("experiments", "dataset"),
        model=section("experiments", "models/{model}"),
        train=section("experiments", "train"),
    script:
        "../scripts/train.py"


rule embed:
    input:
        split=f"{EXPERIMENT}/split.npz",
        model=f"{VISION_RUN}/model.pt",
        train_rows=f"{VISION_RUN}/train_rows.npz",
    output:
        embeddings=f"{VISION_RUN}/embeddings.npz",
    log:
        f"{VISION_RUN}/logs/embed.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/embed.tsv"
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
        dataset=section("experiments", "dataset"),
        train=settings("experiments", "train", "amp", "num_workers"),
        batch_size=section("experiments", "embed/batch_size"),
    script:
        "../scripts/embed.py"


rule index:
    input:
        embeddings=f"{VISION_RUN}/embeddings.npz",
        split=f"{EXPERIMENT}/split.npz",
        train_rows=f"{VISION_RUN}/train_rows.npz",
    output:
        index=f"{VISION_RUN}/index.faiss",
    log:
        f"{VISION_RUN}/logs/index.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/index.tsv"
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
        knn=settings(
            "experiments", "knn", "normalize", "index", "nlist", "pq_m", "pq_bits"
        ),
    script:
        "../scripts/index.py"


# One search at the largest k serves the whole grid: the sigma and temperature grids are no rerun triggers here.
rule neighbors:
    input:
        index=f"{VISION_RUN}/index.faiss",
        embeddings=f"{VISION_RUN}/embeddings.npz",
    output:
        neighbors=f"{VISION_RUN}/neighbors.npz",
        report=f"{VISION_RUN}/search.json",
    log:
        f"{VISION_RUN}/logs/neighbors.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/neighbors.tsv"
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
        knn=settings(
            "experiments",
            "knn",
            "k_max",
            "normalize",
            "query_chunk",
            "nprobe",
            "recall_sample",
        ),
    script:
        "../scripts/neighbors.py"


rule sweep:
    input:
        embeddings=f"{VISION_RUN}/embeddings.npz",
        neighbors=f"{VISION_RUN}/neighbors.npz",
    output:
        sweep=f"{VISION_RUN}/sweep.csv",
    log:
        f"{VISION_RUN}/logs/sweep.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/sweep.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=sweep_memory_mb("experiments"),
        runtime=60,
    params:
        knn=settings(
            "experiments", "knn", "k", "sigma", "temperature", "sweep_chunk_mb"
        ),
    script:
        "../scripts/sweep.py"


rule select:
    input:
        sweep=f"{VISION_RUN}/sweep.csv",
    output:
        selected=f"{VISION_RUN}/selected.json",
    log:
        f"{VISION_RUN}/logs/select.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/select.tsv"
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
        embeddings=f"{VISION_RUN}/embeddings.npz",
        neighbors=f"{VISION_RUN}/neighbors.npz",
        selected=f"{VISION_RUN}/selected.json",
    output:
        confidence=f"{VISION_RUN}/confidence.csv",
    log:
        f"{VISION_RUN}/logs/confidence.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/confidence.tsv"
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


rule aggregate:
    input:
        selected=run_files("experiments", f"{VISION_RUN}/selected.json"),
        meta=run_files("experiments", f"{VISION_RUN}/train_meta.json"),
        sweep=run_files("experiments", f"{VISION_RUN}/sweep.csv"),
        confidence=run_files("experiments", f"{VISION_RUN}/confidence.csv"),
    output:
        **figure_outputs(FIGURES),
        summary_csv=summary_table("../report/summary.rst"),
        summary_md=f"{EXPERIMENT}/summary.md",
        summary_tex=f"{EXPERIMENT}/summary.tex",
        provenance=f"{EXPERIMENT}/provenance.json",
    log:
        f"{EXPERIMENT}/logs/aggregate.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/aggregate.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=memory_mb(2000),
        runtime=10,
    params:
        runs=experiment_runs("experiments"),
        repo_dir=str(REPO),
    script:
        "../scripts/aggregate.py"
