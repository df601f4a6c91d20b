# The stages both kinds share, one rule each, instantiated per kind (KINDS in common.smk): index → neighbors →
# sweep → select → aggregate. An image run is a model × training fraction × seed, its datastore the embeddings
# of the training rows; a language-model run is a model × seed × datastore fraction, its datastore the keys of
# the training tokens. Each rule's script calls the kind's stage function of the rule's name.

for kind in KINDS:

    rule:
        name:
            f"{kind.prefix}index"
        input:
            unpack(kind.index_checks),
            datastore=kind.datastore,
        output:
            index=f"{kind.run}/index.faiss",
            rows=f"{kind.run}/rows.npz",
        log:
            f"{kind.run}/logs/index.log",
        benchmark:
            f"{kind.run}/benchmarks/index.tsv"
        wildcard_constraints:
            experiment=names_regex(kind.section),
        group:
            "run_search"
        conda:
            "../../envs/resmem.yaml"
        threads: 1
        resources:
            **job_resources(kind.section, f"{kind.prefix}index", gpu=True),
            mem_mb=stage_memory_mb(kind, "index"),
            disk_mb=stage_disk_mb(kind, "index"),
        params:
            stages=kind.stages,
            store_fraction=store_fraction,
            knn=settings(
                kind.section, "knn", "normalize", "index", "nlist", "pq_m", "pq_bits"
            ),
        script:
            "../scripts/index.py"

    # One search at the largest k serves the whole grid: the sigma, temperature and lambda grids are no rerun
    # triggers here.
    rule:
        name:
            f"{kind.prefix}neighbors"
        input:
            index=f"{kind.run}/index.faiss",
            rows=f"{kind.run}/rows.npz",
            datastore=kind.datastore,
        output:
            neighbors=f"{kind.run}/neighbors.npz",
            report=f"{kind.run}/search.json",
        log:
            f"{kind.run}/logs/neighbors.log",
        benchmark:
            f"{kind.run}/benchmarks/neighbors.tsv"
        wildcard_constraints:
            experiment=names_regex(kind.section),
        group:
            "run_search"
        conda:
            "../../envs/resmem.yaml"
        threads: 1
        resources:
            **job_resources(kind.section, f"{kind.prefix}neighbors", gpu=True),
            mem_mb=stage_memory_mb(kind, "neighbors"),
            disk_mb=stage_disk_mb(kind, "neighbors"),
        params:
            stages=kind.stages,
            knn=settings(
                kind.section,
                "knn",
                "k_max",
                "normalize",
                "query_chunk",
                "nprobe",
                "recall_sample",
            ),
        script:
            "../scripts/neighbors.py"

    rule:
        name:
            f"{kind.prefix}sweep"
        input:
            datastore=kind.datastore,
            neighbors=f"{kind.run}/neighbors.npz",
        output:
            sweep=f"{kind.run}/sweep.csv",
        log:
            f"{kind.run}/logs/sweep.log",
        benchmark:
            f"{kind.run}/benchmarks/sweep.tsv"
        wildcard_constraints:
            experiment=names_regex(kind.section),
        group:
            "run_search"
        conda:
            "../../envs/resmem.yaml"
        threads: 1  # the sweep engine's CPU threads: one runs more sweeps at once (raise with --set-threads)
        resources:
            **job_resources(kind.section, f"{kind.prefix}sweep", gpu=True),
            mem_mb=stage_memory_mb(kind, "sweep"),
        params:
            stages=kind.stages,
            knn=settings(kind.section, "knn", *kind.grid, "sweep_chunk_mb"),
        script:
            "../scripts/sweep.py"

    rule:
        name:
            f"{kind.prefix}select"
        input:
            sweep=f"{kind.run}/sweep.csv",
        output:
            selected=f"{kind.run}/selected.json",
        log:
            f"{kind.run}/logs/select.log",
        benchmark:
            f"{kind.run}/benchmarks/select.tsv"
        wildcard_constraints:
            experiment=names_regex(kind.section),
        group:
            "run_search"
        conda:
            "../../envs/resmem.yaml"
        threads: 1
        resources:
            **job_resources(kind.section, f"{kind.prefix}select", partition="gpu"),
            mem_mb=memory_mb(1000),
        params:
            stages=kind.stages,
        script:
            "../scripts/select.py"

    rule:
        name:
            f"{kind.prefix}aggregate"
        input:
            **{
                name: run_files(kind.section, path)
                for name, path in kind.run_files.items()
            },
            **kind.experiment_files,
            selected=run_files(kind.section, f"{kind.run}/selected.json"),
            sweep=run_files(kind.section, f"{kind.run}/sweep.csv"),
        output:
            **figure_outputs(kind.figures),
            **kind.tables,
            summary_csv=summary_table(kind.summary_caption),
            summary_md=f"{EXPERIMENT}/summary.md",
            provenance=f"{EXPERIMENT}/provenance.json",
        log:
            f"{EXPERIMENT}/logs/aggregate.log",
        benchmark:
            f"{EXPERIMENT}/benchmarks/aggregate.tsv"
        wildcard_constraints:
            experiment=names_regex(kind.section),
        conda:
            "../../envs/resmem.yaml"
        threads: 1
        resources:
            **job_resources(kind.section, f"{kind.prefix}aggregate"),
            mem_mb=memory_mb(2000),
        params:
            stages=kind.stages,
            runs=experiment_runs(kind.section),
            repo_dir=str(REPO),
            stats=section(kind.section, "stats"),
        script:
            "../scripts/aggregate.py"
