import os

# Threads that wait on an OpenMP barrier sleep rather than spin (torch, faiss): the shared runs (tests/shared_runs.py)
# share the cores with the tests, and a spinning thread burns the core the thread it waits for needs. Set before
# torch is imported, so it holds here too; the processes the tests start inherit it. It changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml

from resmem.plan import job_listing
from tests.shared_runs import Plan

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
NETWORK_GUARD = Path(__file__).resolve().parent / "network_guard"  # its sitecustomize.py guards child processes
RUNNING: set[subprocess.Popen] = set()  # the snakemake processes now running


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """No test reaches another machine (tests/network_guard/sitecustomize.py): connections and name lookups of
    anything but loopback raise NetworkBlocked in this process, and, with the guard's folder first on PYTHONPATH,
    in every process the tests start (snakemake() and plain subprocesses take os.environ)."""
    from tests.network_guard.sitecustomize import install

    uninstall, before = install(), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(NETWORK_GUARD), *([before] if before else [])])
    yield
    uninstall()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="session", autouse=True)
def slurm_tools_without_a_controller(tmp_path_factory):
    """Where SLURM's client tools are installed but no controller answers, every snakemake process waits about 10 s
    at start: Snakemake imports its SLURM executor plugin, which asks `scontrol show config` (timeout 10 s) for a
    help text and takes the failure as "unknown". The answer does not change within a session, so once one real
    try (in the background, while the first tests run) has failed, an `scontrol` that fails at once, as the real
    one did, goes first on PATH for every process the tests start after it. Where scontrol is not installed, or a
    controller answers (.ci/run starts one), nothing changes. Yields what waits for the try and returns the PATH
    it leads to (for the shared runs' processes, tests/shared_runs.py)."""
    import shutil
    import threading

    before, scontrol = os.environ["PATH"], shutil.which("scontrol")
    if scontrol is None:
        yield lambda: before
        return
    folder = tmp_path_factory.mktemp("no_slurm_controller")
    (folder / "scontrol").write_text("#!/bin/sh\necho 'scontrol: no SLURM controller answered' >&2\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    lock, session, failing = threading.Lock(), {"running": True}, os.pathsep.join([str(folder), before])

    def probe():
        try:
            subprocess.run([scontrol, "show", "config"], capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
            with lock:
                session["path"] = failing
                if session["running"]:
                    os.environ["PATH"] = failing

    thread = threading.Thread(target=probe, name="scontrol probe", daemon=True)
    thread.start()

    def path_after_the_probe():
        thread.join()
        return session.get("path", before)

    yield path_after_the_probe
    with lock:
        session["running"] = False
        os.environ["PATH"] = before


def snakemake(workdir, *args, configfile=None, check=True, env=None, environ=None):
    """Run the repository's workflow in `workdir` (results land there), with `env` added to the environment
    (`environ`, or this process's), returning the CompletedProcess."""
    # Targets first: options such as --configfile and --forcerun take every word after them.
    cmd = [*SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = {**(os.environ if environ is None else environ), "PYTHONHASHSEED": "0", **(env or {})}
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as job:
        RUNNING.add(job)  # a session that ends early (-x, a failed fixture) stops the runs still going
        try:
            stdout, stderr = job.communicate()
        finally:
            RUNNING.discard(job)
    proc = subprocess.CompletedProcess(cmd, job.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_config(path, edit=None, base="smoke.yaml"):
    """A copy of config/<base> with `edit(config)` applied, written to `path`."""
    config = yaml.safe_load((REPO / "config" / base).read_text())
    if edit is not None:
        edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def job_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [each job's resources as {name: value}]} from the job listing of a dry run."""
    jobs = {}
    for job in job_listing(output):
        jobs.setdefault(job["rule"], []).append(job["resources"])
    return jobs


def gpu_requests(output: str) -> dict[str, set[bool]]:
    """{rule: {whether a job asked for a GPU}} from the job listing of a dry run."""
    return {rule: {job.get("gpu") == "1" for job in jobs} for rule, jobs in job_resources(output).items()}


# The session's shared runs (tests/shared_runs.py): each plan(workdir, request) writes a run's inputs and returns
# its Snakemake calls and what makes the fixture's value of their CompletedProcesses. Each name is a session
# fixture; its runs start in the background as soon as the tests are collected, in the order defined below.
SHARED_RUNS = {}


def shared_run(plan):
    """Registers `plan` and returns the session fixture of its name, which waits for the run and returns its value."""
    SHARED_RUNS[plan.__name__] = plan

    def fixture(shared_runs):
        return shared_runs.result(plan.__name__)

    fixture.__doc__ = plan.__doc__
    return pytest.fixture(fixture, scope="session", name=plan.__name__)


SHARED_RUN_ORDER = pytest.StashKey[list]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs
def pytest_collection_modifyitems(config, items):
    """The shared runs the tests read are queued in the order they are defined here (the longest first); the tests
    that read one go after the others, ordered by the last run they wait for (in their order otherwise), so each
    runs as soon as its runs are made, while the next run is being made."""
    reads = {item: [name for name in getattr(item, "fixturenames", ()) if name in SHARED_RUNS] for item in items}
    order = [name for name in SHARED_RUNS if any(name in names for names in reads.values())]
    config.stash[SHARED_RUN_ORDER] = order
    items.sort(key=lambda item: max((order.index(name) + 1 for name in reads[item]), default=0))  # stable


@pytest.fixture(scope="session", autouse=True)
def shared_runs(request, no_network, slurm_tools_without_a_controller):
    """Starts the shared runs the collected tests read, in the background, before the first test; stops them at
    the end of the session."""
    from tests.shared_runs import SharedRuns

    environ = dict(os.environ)  # with the network guard on PYTHONPATH; no test has run yet
    runs = SharedRuns(SHARED_RUNS, request, lambda: {**environ, "PATH": slurm_tools_without_a_controller()})
    for name in request.config.stash.get(SHARED_RUN_ORDER, []):
        runs.start(name)
    yield runs
    runs.close()
    for job in list(RUNNING):  # a session ended early (-x, an interrupt): Snakemake stops its jobs on SIGTERM
        job.terminate()


@shared_run
def folder_run(workdir, request):
    """The image experiments on files and the statistics over seeds (tests/runs.py), run once for the session."""
    from tests.runs import folder_config

    config = folder_config(workdir)

    def read(procs):
        import pandas as pd

        names = yaml.safe_load(config.read_text())["experiments"]
        summaries = {name: pd.read_csv(workdir / "results" / name / "summary.csv") for name in names}
        return {"workdir": workdir, "config": config, "summaries": summaries, "proc": procs[0]}

    return Plan([partial(snakemake, workdir, configfile=config)], read)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{kind: folder} of tiny Hugging Face models (tests/hf_tiny.py), built once for the session."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tests.hf_tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("hf"))


@shared_run
def lm_run(workdir, request):
    """The language-model experiments (tests/runs.py) run once for the session: lm_smoke, and hf_tiny on the tiny
    Hugging Face models where transformers is installed (`hf` says whether)."""
    from tests.runs import lm_config

    try:
        hf_models = request.getfixturevalue("tiny_models")
    except pytest.skip.Exception:
        hf_models = None
    config = lm_config(workdir / "lm.yaml", hf_models)
    return Plan([partial(snakemake, workdir, configfile=config)], lambda procs: {
        "workdir": workdir, "config": config, "results": workdir / "results" / "lm_smoke", "proc": procs[0],
        "hf": workdir / "results" / "hf_tiny" if hf_models is not None else None})  # fmt: skip


def smoke_config(workdir):
    """config/smoke.yaml on the CPU (device: cpu, where the config says auto) on any machine: its tests compare
    the runs byte for byte with other CPU runs."""
    return write_config(workdir / "smoke.yaml", lambda c: c.update(device="cpu"))


@shared_run
def smoke_run(workdir, request):
    """The workflow on config/smoke.yaml (smoke_config), run once for the whole session."""
    config = smoke_config(workdir)
    return Plan([partial(snakemake, workdir, configfile=config)], lambda procs: {
        "workdir": workdir, "config": config, "results": workdir / "results" / "smoke", "proc": procs[0]})  # fmt: skip


@shared_run
def avx2_smoke_run(workdir, request):
    """The smoke run again (smoke_config), on this machine made to behave like an AVX2-only CPU: every library
    limited, glibc too (resmem.device.AVX2_CPU_EMULATION). The workdir (its results under results/)."""
    from resmem.device import AVX2_CPU_EMULATION, cpu_flags

    config = smoke_config(workdir)
    pinned = {"avx2", "fma"} <= cpu_flags()  # elsewhere the test skips: a CPU without AVX2 pins nothing
    calls = [partial(snakemake, workdir, configfile=config, env=AVX2_CPU_EMULATION)] if pinned else []
    return Plan(calls, lambda procs: workdir)


@shared_run
def gpu_dry_runs(workdir, request):
    """{device switch: gpu_requests} of two dry runs, device auto and device cpu (one simulated GPU), of one config
    holding the image and regression experiments of config/smoke.yaml and the language-model experiment lm_smoke
    (tests/runs.py), in an empty folder: every job planned."""
    from tests.runs import LM_SMOKE

    config = write_config(workdir / "both.yaml", lambda c: c.update(lm_experiments={"lm_smoke": LM_SMOKE}))
    devices = ("auto", "cpu")
    simulated = {"RESMEM_SIMULATED_GPUS": "1"}  # device auto asks for a GPU where one is visible
    calls = [partial(snakemake, workdir, "-n", "--config", f"device={d}", configfile=config, env=simulated)
             for d in devices]  # fmt: skip
    return Plan(calls, lambda procs: {d: gpu_requests(p.stdout) for d, p in zip(devices, procs, strict=True)})


PAPER_CONFIGS = ("cifar100", "imagenet", "lm", "wikitext103_gpt2")


@shared_run
def paper_dry_run(workdir, request):
    """{paper config: {rule: planned jobs}} from one dry run of config/paper/*.yaml named together (--configfile
    with four files: Snakemake merges them; every experiment keeps its own results folder, so a config's jobs are
    those with its experiments' wildcard, plus its own `all`)."""
    files = {name: REPO / "config" / "paper" / f"{name}.yaml" for name in PAPER_CONFIGS}

    def planned_per_config(procs):
        from collections import Counter

        from resmem.plan import planned_jobs

        jobs = job_listing(procs[0].stdout)
        planned = {}
        for name, path in files.items():
            config = yaml.safe_load(path.read_text())
            experiments = {*config.get("experiments", {}), *config.get("lm_experiments", {})}
            counts = Counter(job["rule"] for job in jobs if job["wildcards"].get("experiment") in experiments)
            planned[name] = {**counts, "all": 1}
        # Every planned job is one config's, but the one `all` they share.
        assert len(jobs) == sum(sum(p.values()) for p in planned.values()) - len(files) + 1
        assert sum(planned_jobs(procs[0].stdout).values()) == len(jobs)
        return planned

    return Plan([partial(snakemake, workdir, "-n", "--configfile", *map(str, files.values()))], planned_per_config)


def paired_p_by_hand(b: int, c: int) -> float:
    """The p-value of resmem.stats.paired_gain from its definition: with 25 or more discordant examples McNemar's
    chi-square (b − c)²/(b + c) on 1 degree of freedom (= Tango's score test at 0); with fewer McNemar's mid-p
    2·(P(X ≤ min) − ½·P(X = min)), X ~ Binomial(b + c, 1/2), in exact fractions."""
    from fractions import Fraction
    from math import comb

    from scipy.stats import chi2

    d = b + c
    if d >= 25:
        return 1.0 if b == c else float(chi2.sf((b - c) ** 2 / d, 1))
    if d == 0:
        return 1.0
    low = min(b, c)
    tail = sum(Fraction(comb(d, i), 2**d) for i in range(low + 1)) - Fraction(comb(d, low), 2 ** (d + 1))
    return float(min(Fraction(1), 2 * tail))


def holm_by_hand(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values by the textbook loop: the i-th smallest of m times (m − i), at most 1, never below
    the one before it; NaN entries left out of m and kept NaN."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    adjusted, running = [float("nan")] * len(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


# How the selection breaks a tie on val, parameter by parameter: toward less memory, a smoother kernel, a sharper
# base distribution, less interpolation (docs/method.md, docs/workflow.md).
TIE_GOES_TO = {"k": "smaller", "sigma": "larger", "tau": "larger", "temperature": "smaller", "lam": "smaller"}
TIE_SYMBOL = {"k": "k", "sigma": "σ", "tau": "τ", "temperature": "T", "lam": "λ"}


def selected_by_hand(sweep, method: str, parameters, metric: str = "accuracy", higher_is_better: bool = True):
    """A method's selected point written out in plain Python on a sweep table's rows, for comparing with
    selected.json: the val row of the best `metric` (highest accuracy, lowest perplexity), a tie going to the
    smaller k, then the larger σ (or τ), then the smaller T, then the smaller λ (in the order of `parameters`);
    the test value at that point, the best test value anywhere on the method's grid, the base model's values (its
    k = 0 rows) and the gain (test value − the base model's)."""
    rows = [row for row in sweep.to_dict("records") if row["method"] == method]
    val = [row for row in rows if row["split"] == "val"]
    best_value = (max if higher_is_better else min)(row[metric] for row in val)
    tied = [row for row in val if row[metric] == best_value]
    best = min(tied, key=lambda row: tuple(row[p] if TIE_GOES_TO[p] == "smaller" else -row[p] for p in parameters))
    at_best = [row for row in rows if row["split"] == "test" and all(row[p] == best[p] for p in parameters)]
    assert len(at_best) == 1, (method, best)
    base = {row["split"]: row[metric] for row in sweep.to_dict("records") if row["method"] == "base"}
    test_values = [row[metric] for row in rows if row["split"] == "test"]
    ties = ", then ".join(f"{TIE_GOES_TO[p]} {TIE_SYMBOL[p]}" for p in parameters)
    return {
        **{p: int(best[p]) if p == "k" else float(best[p]) for p in parameters},
        f"val_{metric}": best_value,
        f"test_{metric}": at_best[0][metric],
        f"best_test_{metric}": (max if higher_is_better else min)(test_values),
        f"base_val_{metric}": base["val"],
        f"base_test_{metric}": base["test"],
        "gain": at_best[0][metric] - base["test"],
        "rule": f"{'best' if higher_is_better else 'lowest'} val {metric}; ties: {ties}",
    }


def confidence_bins_by_hand(logits, labels, resmem, bins: int = 10) -> dict[str, list[int]]:
    """Per equal-width bin of the base model's confidence (its largest softmax probability, in float64; a bin
    holds [lo, hi), the last one 1 too): how many test examples, how many the base model (argmax of the logits)
    and ResMem (`resmem`, its predicted classes) get right."""
    import numpy as np

    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    confidence = (p / p.sum(axis=1, keepdims=True)).max(axis=1)
    base = np.asarray(logits).argmax(axis=1)
    table = {"count": [0] * bins, "base_correct": [0] * bins, "resmem_correct": [0] * bins}
    for c, y, b, r in zip(confidence, labels, base, resmem, strict=True):
        i = min(sum(c >= j / bins for j in range(1, bins)), bins - 1)
        table["count"][i] += 1
        table["base_correct"][i] += int(b == y)
        table["resmem_correct"][i] += int(r == y)
    return table


# Student's t quantile t_{0.975, 1}: with one degree of freedom the t distribution is Cauchy's, whose quantile is
# tan(π (p − 1/2)); scipy.stats.t.ppf(0.975, 1) = 12.706204736174704.
T_975_ONE_DF = 12.706204736174704


def two_seed_statistics(a: float, b: float) -> dict[str, float]:
    """Mean, standard deviation (ddof 1, as resmem.stats.t_interval documents) and Student's 95 % t-interval of
    the mean of two values, by hand: std = |a − b| / √2, half-width = t_{0.975, 1} · std / √2."""
    import math

    assert math.isclose(math.tan(math.pi * 0.475), T_975_ONE_DF, rel_tol=1e-13)
    mean = (a + b) / 2
    std = math.sqrt((a - mean) ** 2 + (b - mean) ** 2)  # / (n − 1) = 1
    half = T_975_ONE_DF * std / math.sqrt(2)
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half}


def seeds_and_examples_by_hand(differences) -> dict[str, float]:
    """The mean of S seeds × n shared test examples' paired differences with its 95 % interval and p-value, by
    the two-way analysis of variance with one observation per cell: the mean squares of seeds, examples and
    residual from their sums of squares; the mean's error variance (MS_seeds + max(MS_examples − MS_residual, 0))
    / (S·n), Student's t with S − 1 degrees of freedom."""
    import math

    import numpy as np
    from scipy.stats import t

    d = np.asarray(differences, dtype=np.float64)
    seeds, n = d.shape
    grand, seed_means, example_means = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seeds = n * sum((m - grand) ** 2 for m in seed_means) / (seeds - 1)
    ms_examples = seeds * sum((m - grand) ** 2 for m in example_means) / (n - 1)
    residual = sum((d[s, i] - seed_means[s] - example_means[i] + grand) ** 2 for s in range(seeds) for i in range(n))
    ms_residual = residual / ((seeds - 1) * (n - 1))
    se = math.sqrt((ms_seeds + max(ms_examples - ms_residual, 0.0)) / (seeds * n))
    half = float(t.ppf(0.975, seeds - 1)) * se
    p = float(2 * t.sf(abs(grand) / se, seeds - 1))
    return {"mean": float(grand), "low": float(grand - half), "high": float(grand + half), "p": p}


def resmem_by_hand(train_emb, train_logits, train_y, query_emb, query_logits, k, sigma, temperature):
    """ResMem's scores (Algorithm 1 of the paper) written out per query in float64, sharing no code with resmem:
    scikit-learn's brute-force neighbours, scipy's softmax, a loop over the neighbours."""
    import numpy as np
    from scipy.special import softmax as scipy_softmax
    from sklearn.neighbors import NearestNeighbors

    n_classes = train_logits.shape[1]
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(np.float64(train_emb))
    dist, idx = nn.kneighbors(np.float64(query_emb))
    scores = np.zeros((len(query_emb), n_classes))
    for q in range(len(query_emb)):
        memory = np.zeros(n_classes)
        for w, j in zip(scipy_softmax(-dist[q] / sigma), idx[q], strict=True):
            memory += w * (np.eye(n_classes)[train_y[j]] - scipy_softmax(np.float64(train_logits[j]) / temperature))
        scores[q] = scipy_softmax(np.float64(query_logits[q]) / temperature) + memory
    return scores
