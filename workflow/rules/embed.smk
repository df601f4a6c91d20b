rule embed:
    input:
        split="results/{experiment}/split.npz",
        model="results/{experiment}/{model}/frac{fraction}/seed{seed}/model.pt",
    output:
        embeddings="results/{experiment}/{model}/frac{fraction}/seed{seed}/embeddings.npz",
    log:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/logs/embed.log",
    benchmark:
        "results/{experiment}/{model}/frac{fraction}/seed{seed}/benchmarks/embed.tsv"
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
        dataset=lambda w: experiment(w)["dataset"],
        batch_size=lambda w: experiment(w)["embed"]["batch_size"],
        amp=lambda w: experiment(w)["train"]["amp"],
        num_workers=lambda w: experiment(w)["train"]["num_workers"],
    script:
        "../scripts/embed.py"
