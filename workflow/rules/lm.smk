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
