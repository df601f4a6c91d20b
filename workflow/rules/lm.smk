# Language-model experiments (lm_experiments): corpus → train → datastore → index → neighbors → sweep →
# select → aggregate, with one datastore per model and seed and the datastore-size study below it.


rule lm_corpus:
    output:
        corpus=f"{LM_CORPUS}.npz",
        meta=f"{LM_CORPUS}.json",
    log:
        f"{EXPERIMENT}/logs/corpus.{{tokenizer}}.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/corpus.{{tokenizer}}.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        **job_resources("lm_experiments", "lm_corpus"),
        mem_mb=lm_corpus_memory_mb,
    params:
        corpus=section("lm_experiments", "corpus"),
        tokenizer_source=tokenizer_source,
    script:
        "../scripts/lm_corpus.py"


rule lm_train:
    input:
        unpack(model_corpus),
        unpack(previous_segment("lm_experiments", LM_RUN)),
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
        **job_resources("lm_experiments", "lm_train", gpu=True),
        mem_mb=lm_model_memory_mb("train"),
    params:
        model=section("lm_experiments", "models/{model}"),
        train=section("lm_experiments", "train"),
        context=section("lm_experiments", "context"),
        eval_tokens=section("lm_experiments", "eval_tokens"),
    script:
        "../scripts/lm_train.py"


# A training longer than config requests.max_hours runs as segments of whole epochs (as train_segment).
use rule lm_train as lm_train_segment with:
    input:
        unpack(model_corpus),
        unpack(previous_segment("lm_experiments", LM_RUN)),
    output:
        segment=segment_file(LM_RUN),
    log:
        f"{LM_RUN}/logs/train_segment{{epoch}}.log",
    benchmark:
        f"{LM_RUN}/benchmarks/train_segment{{epoch}}.tsv"
    params:
        stop_epoch=stop_epoch,


rule lm_datastore:
    input:
        unpack(model_corpus),
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
        **job_resources("lm_experiments", "lm_datastore", gpu=True),
        mem_mb=lm_model_memory_mb("datastore"),
        disk_mb=lm_datastore_disk_mb,
    params:
        datastore=lm_datastore_settings,
        model=section("lm_experiments", "models/{model}"),
        eval_tokens=section("lm_experiments", "eval_tokens"),
        eval_stride=section("lm_experiments", "eval_stride"),
        amp=section("lm_experiments", "train/amp"),
    script:
        "../scripts/lm_datastore.py"


# Per test position, each method's prediction (and the base model's and kNN-LM's loss) at its selected point: the
# aggregate's block t-tests.
rule lm_predict:
    input:
        datastore=f"{LM_RUN}/datastore.npz",
        neighbors=f"{LM_STORE}/neighbors.npz",
        selected=f"{LM_STORE}/selected.json",
    output:
        predictions=f"{LM_STORE}/predictions.npz",
    log:
        f"{LM_STORE}/logs/predict.log",
    benchmark:
        f"{LM_STORE}/benchmarks/predict.tsv"
    wildcard_constraints:
        experiment=names_regex("lm_experiments"),
    group:
        "run_search"
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        **job_resources("lm_experiments", "lm_predict", gpu=True),
        mem_mb=stage_memory_mb(LANGUAGE_MODELS, "predict"),
    params:
        knn=settings("lm_experiments", "knn", "sweep_chunk_mb"),
    script:
        "../scripts/lm_predict.py"
