rule embed:
    input:
        split="results/{experiment}/split.npz",
        model="results/{experiment}/{model}/seed{seed}/model.pt",
    output:
        embeddings="results/{experiment}/{model}/seed{seed}/embeddings.npz",
    log:
        "results/{experiment}/{model}/seed{seed}/logs/embed.log",
    benchmark:
        "results/{experiment}/{model}/seed{seed}/benchmarks/embed.tsv"
    conda:
        "../../envs/resmem.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=lambda w: experiment(w)["dataset"],
        batch_size=lambda w: experiment(w)["embed"]["batch_size"],
    script:
        "../scripts/embed.py"
