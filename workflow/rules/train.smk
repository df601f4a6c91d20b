rule train:
    input:
        split="results/{experiment}/split.npz",
    output:
        model="results/{experiment}/{model}/frac{fraction}/seed{seed}/model.pt",
        train_log="results/{experiment}/{model}/frac{fraction}/seed{seed}/train_log.csv",
        meta="results/{experiment}/{model}/frac{fraction}/seed{seed}/train_meta.json",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/train.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/train.tsv"
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
        dataset=lambda w: experiment(w)["dataset"],
        model=lambda w: experiment(w)["models"][w.model],
        train=lambda w: experiment(w)["train"],
    script:
        "../scripts/train.py"
