# Image experiments (experiments in the config): split → train → embed → index → neighbors → sweep → select →
# predict → aggregate, one run per model × training fraction × seed.


rule split:
    output:
        split=f"{EXPERIMENT}/split.npz",
    log:
        f"{EXPERIMENT}/logs/split.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/split.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments", imported=False),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        **job_resources("experiments", "split"),
        mem_mb=memory_mb(1000),
    params:
        dataset=section("experiments", "dataset"),
    script:
        "../scripts/split.py"


# Folder datasets that fit in memory are decoded once; train and embed then read them from there.
rule decode:
    output:
        images=DECODED_IMAGES,
    log:
        f"{EXPERIMENT}/logs/decode.log",
    benchmark:
        f"{EXPERIMENT}/benchmarks/decode.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments", imported=False),
    conda:
        "../../envs/resmem.yaml"
    threads: decode_threads  # decoding processes: one per 10,000 images, at most 8
    resources:
        **job_resources("experiments", "decode"),
        mem_mb=memory_mb(2000),
    params:
        dataset=section("experiments", "dataset"),
        augment=section("experiments", "train/augment"),
    script:
        "../scripts/decode.py"


rule train:
    input:
        unpack(decoded_images),
        unpack(previous_segment("experiments", VISION_RUN)),
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
        experiment=names_regex("experiments", imported=False),
    conda:
        "../../envs/resmem.yaml"
    threads: image_loader_threads  # the loader workers of streamed image files and the job itself
    resources:
        **job_resources("experiments", "train", gpu=True),
        mem_mb=image_model_memory_mb("train"),
    params:
        dataset=section("experiments", "dataset"),
        model=section("experiments", "models/{model}"),
        train=section("experiments", "train"),
    script:
        "../scripts/train.py"


rule embed:
    input:
        unpack(decoded_images),
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
        experiment=names_regex("experiments", imported=False),
    conda:
        "../../envs/resmem.yaml"
    threads: image_loader_threads  # the loader workers of streamed image files and the job itself
    resources:
        **job_resources("experiments", "embed", gpu=True),
        mem_mb=image_model_memory_mb("embed"),
        disk_mb=embeddings_disk_mb,
    params:
        dataset=section("experiments", "dataset"),
        model=section("experiments", "models/{model}"),
        train=settings("experiments", "train", "augment", "amp", "num_workers"),
        batch_size=section("experiments", "embed/batch_size"),
    script:
        "../scripts/embed.py"


# A training longer than config requests.max_hours runs as segments of whole epochs, each from the checkpoint the
# previous one ended with (train's own input "resume"), each under the cap.
use rule train as train_segment with:
    input:
        unpack(decoded_images),
        unpack(previous_segment("experiments", VISION_RUN)),
        split=f"{EXPERIMENT}/split.npz",
    output:
        segment=segment_file(VISION_RUN),
    log:
        f"{VISION_RUN}/logs/train_segment{{epoch}}.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/train_segment{{epoch}}.tsv"
    params:
        stop_epoch=stop_epoch,


# Embeddings computed elsewhere (`embeddings:`) enter the DAG here, in place of train and embed.
rule embeddings_file:
    input:
        embeddings=lookup(
            dpath="experiments/{experiment}/embeddings/{model}/path", within=config
        ),
    output:
        embeddings=f"{VISION_RUN}/embeddings.npz",
        meta=f"{VISION_RUN}/train_meta.json",
    log:
        f"{VISION_RUN}/logs/embeddings_file.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/embeddings_file.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments", imported=True),
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        **job_resources("experiments", "embeddings_file"),
        mem_mb=memory_mb(2000),
        disk_mb=embeddings_disk_mb,
    params:
        entry=section("experiments", "embeddings/{model}"),
        dataset=section("experiments", "dataset"),
    script:
        "../scripts/embeddings_file.py"


# Each method's test predictions at its selected point: the aggregate's paired tests, and the confidence bins.
rule predict:
    input:
        embeddings=f"{VISION_RUN}/embeddings.npz",
        neighbors=f"{VISION_RUN}/neighbors.npz",
        selected=f"{VISION_RUN}/selected.json",
    output:
        predictions=f"{VISION_RUN}/predictions.npz",
        confidence=f"{VISION_RUN}/confidence.csv",
    log:
        f"{VISION_RUN}/logs/predict.log",
    benchmark:
        f"{VISION_RUN}/benchmarks/predict.tsv"
    wildcard_constraints:
        experiment=names_regex("experiments"),
    group:
        "run_search"
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        **job_resources("experiments", "predict", partition="gpu"),
        mem_mb=stage_memory_mb(IMAGES, "predict", "embeddings"),
    script:
        "../scripts/predict.py"
