"""Jobs ask for the memory their data needs: the requests of index, neighbors and sweep follow the datastore's
size (a dry run of two experiments that differ only in it), and the planning-time sizes they are computed from match
the models and files they describe."""

import copy

import numpy as np
import pytest
import torch
import yaml

from resmem import io
from resmem.config import load
from resmem.lm.model import build_lm
from resmem.lm.sizes import corpus_bytes, gpt_parameters
from resmem.lm.sizes import run_sizes as lm_run_sizes
from resmem.plan import job_listing, markdown, plan
from resmem.vision.models import build_model
from resmem.vision.sizes import feature_width, model_footprint
from resmem.vision.sizes import run_sizes as vision_run_sizes
from tests.conftest import REPO, snakemake, write_config
from tests.test_data import make_image_folders


def lm_only(*train_bytes):
    """The default's stdlib_lm as one experiment lm<bytes> per training-text budget, one model, no token budget."""

    def edit(config):
        default = config["lm_experiments"].pop("stdlib_lm")
        for size in train_bytes:
            experiment = copy.deepcopy(default)
            experiment["corpus"]["max_bytes"]["train"] = size
            experiment["datastore"]["max_tokens"] = None
            experiment["models"] = {"gpt_l1_d96": {"n_layer": 1, "n_head": 2, "n_embd": 96}}
            experiment["datastore"]["fractions"] = [1.0]
            config["lm_experiments"][f"lm{size}"] = experiment
        config["experiments"], config["regression"] = {}, {}

    return edit


def requested_mb(workdir, *train_bytes):
    """{budget: {rule: its job's mem_mb}} from one dry run of the experiments of `lm_only`."""
    config = write_config(workdir / "lm.yaml", lm_only(*train_bytes), base="config.yaml")
    jobs = job_listing(snakemake(workdir, "-n", configfile=config).stdout)
    rules = ("lm_index", "lm_neighbors", "lm_sweep", "lm_predict")
    found = {size: {job["rule"]: int(job["resources"]["mem_mb"]) for job in jobs
                    if job["rule"] in rules and job["wildcards"].get("experiment") == f"lm{size}"}
             for size in train_bytes}  # fmt: skip
    assert all(sorted(requests) == sorted(rules) for requests in found.values()), found
    return found


def test_requests_follow_the_datastore_size_in_a_dry_run(tmp_path):
    """Byte tokens, stride 1, no token budget: the datastore has one row per training byte. A flat index holds
    N × 96 float32 values, 384 bytes a row; while it is built the array grows by reallocation (old and new side by
    side: 768 bytes) beside the row numbers (8); the search holds the index and the row numbers once (392); the
    sweep holds the Q × k neighbours and its chunk budgets, none of which depend on N. So 8 MB more text asks the
    index for 1.25 × 8e6 × 776 bytes = 7,760 MB more (1.25: the allocator's slack), the search for 3,920 MB, the
    sweep for 0."""
    small, large = requested_mb(tmp_path, 2_000_000, 10_000_000).values()
    assert abs(large["lm_index"] - small["lm_index"] - 1.25 * 8e6 * 776 / 1e6) <= 100
    assert abs(large["lm_neighbors"] - small["lm_neighbors"] - 1.25 * 8e6 * 392 / 1e6) <= 100
    assert large["lm_sweep"] == small["lm_sweep"] and large["lm_predict"] == small["lm_predict"]
    assert small["lm_index"] >= 1.25 * 2e6 * 776 / 1e6  # the index alone, before the interpreter


@pytest.mark.parametrize(
    "spec",
    [{"arch": "small_cnn", "width": 3}, {"arch": "cifar_resnet", "depth": 8, "width_multiplier": 0.5},
     {"arch": "resnet18"}, {"arch": "resnet50"}, {"arch": "timm", "name": "resnet10t"},
     {"arch": "timm", "name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 48,
      "num_heads": 2}],
)  # fmt: skip
def test_planned_feature_width_is_the_built_models(spec):
    model = build_model(spec, 7, 3).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 32, 32)).shape[1] == feature_width(spec, 7, 3)


def test_planned_gpt_parameters_are_the_built_models():
    spec = {"n_layer": 3, "n_head": 4, "n_embd": 48}
    model = build_lm(spec, 300, 40)
    assert sum(p.numel() for p in model.parameters()) == gpt_parameters(spec, 300, 40)


def test_sizes_come_from_the_datastore_once_it_exists(tmp_path):
    """At run time the request reads the job's own input: the rows, width and queries of the file, not the
    config's estimate."""
    experiment = load(REPO / "config" / "config.yaml")["lm_experiments"]["stdlib_lm"]
    arrays = {"train_keys": np.zeros((5000, 24), np.float16), "val_keys": np.zeros((30, 24), np.float32),
              "test_keys": np.zeros((40, 24), np.float32), "head_weight": np.zeros((256, 24), np.float32)}  # fmt: skip
    io.save_npz(tmp_path / "datastore.npz", **arrays)
    sizes = lm_run_sizes(experiment, {"model": "gpt_l1_d32", "store_fraction": "0.5"}, tmp_path / "datastore.npz")
    assert (sizes.datastore_rows, sizes.index_rows, sizes.dim) == (5000, 2500, 24)
    assert (sizes.queries, sizes.classes, sizes.k_max) == (70, 256, 64)
    planned = lm_run_sizes(experiment, {"model": "gpt_l1_d32", "store_fraction": "0.5"}, tmp_path / "none.npz")
    assert (planned.datastore_rows, planned.dim, planned.queries) == (200_000, 32, 20_000)  # max_tokens, eval_tokens


def test_image_sizes_follow_the_split(tmp_path):
    experiment = load(REPO / "config" / "smoke.yaml")["experiments"]["smoke"]
    sizes = vision_run_sizes(experiment, {"model": "cnn_w4", "train_fraction": "0.5"})
    test = round(0.25 * 1797)
    val = round(0.2 * (1797 - test))
    assert (sizes.datastore_rows, sizes.queries, sizes.dim, sizes.classes) == (
        round(0.5 * (1797 - test - val)),
        val + test,
        8,
        10,
    )


def test_decode_takes_one_process_per_ten_thousand_images(monkeypatch):
    """The decode job's threads (its processes): ⌈images / 10,000⌉ from 1 to 8, by hand; one for a folder not
    there yet (a dry run without data) and for the digits rendered as JPEGs (1,797 images)."""
    from resmem.vision import sizes

    dataset = {"name": "imagefolder", "root": "nowhere", "image_size": 32, "test_fraction": 0.25, "val_fraction": 0.2}
    assert sizes.decode_processes(dataset) == 1
    for images, processes in ((1_797, 1), (10_000, 1), (10_001, 2), (45_000, 5), (80_001, 8), (1_331_167, 8)):
        monkeypatch.setattr(sizes, "split_sizes", lambda dataset, n=images: (n - 700, 500, 200, 10))
        assert sizes.decode_processes(dataset) == processes, images


def test_planner_lists_every_rule_with_its_requests_and_the_submissions():
    """The planner's table comes from the workflow's own dry run: the smoke config's 4 runs give 4 index jobs of
    the request the rule computes, and 30 cluster jobs one a step become 14 submissions with each run's 5-step
    search chain as one job (tests/test_slurm.py counts the same 14 on a real controller)."""
    report = plan(REPO / "config" / "smoke.yaml")
    lines = markdown(report)
    table = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    assert table["index"][:2] == ["4", "900"]  # the interpreter with faiss (bounds.BASE_MB) and a tiny datastore
    assert table["train"][0] == "4" and table["split"][0] == "1"
    assert table["train"][6] == "" and table["select"][6] == ""  # device auto on a machine without a GPU
    assert {job["runtime"] for job in report["rules"]["train"]["jobs"]} == {10}  # seconds of work: the floor
    assert any("30 submissions one a step, 14 with each run's search chain as one job" in line for line in lines)


def test_planned_corpus_bytes_count_the_files_the_corpus_stage_reads(tmp_path):
    """A folder of text: the planned bytes are those of the files the corpus lists (its .git folder pruned, an
    excluded file left out), split by the config's fractions; budgets cap each split."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "objects").write_bytes(b"x" * 5000)
    (tmp_path / "a.txt").write_bytes(b"a" * 600)
    (tmp_path / "b.txt").write_bytes(b"b" * 400)
    (tmp_path / "skip.log").write_bytes(b"c" * 9000)
    corpus = {"name": "text", "path": str(tmp_path), "exclude": ["*.log"], "val_fraction": 0.1, "test_fraction": 0.2}
    assert corpus_bytes(corpus) == {"train": 700, "val": 100, "test": 200}
    assert corpus_bytes({**corpus, "max_bytes": {"train": 50}}) == {"train": 50, "val": 100, "test": 200}


def test_model_footprint_counts_a_small_cnn_by_hand():
    """SmallCNN of width w on 1×8×8 digits, C classes, leaf outputs per image: conv, norm and ReLU of w·64 values
    each, the pool's w·16, conv, norm and ReLU of 2w·16, the global pool's and the flatten's 2w, the head's C: 308w
    + C in all, the largest w·64. Parameters: 9w + 2w (conv and norm), 9·w·2w + 4w, and the head's 2w·C + C."""
    w, c = 5, 10
    parameters, values, largest = model_footprint({"arch": "small_cnn", "width": w}, c, 1, 8)
    assert (values, largest) == (308 * w + c, 64 * w)
    assert parameters == 9 * w + 2 * w + 18 * w * w + 4 * w + 2 * w * c + c
    assert parameters == sum(p.numel() for p in build_model({"arch": "small_cnn", "width": w}, c, 1).parameters())


def digits_batches(config):
    """Two digits experiments that differ only in their train and embed batches: 64 and 100,064."""
    base = config["experiments"].pop("smoke")
    base["models"] = {"cnn": {"arch": "small_cnn", "width": 4}}
    base["train_fractions"] = [1.0]
    for name, batch in (("small", 64), ("large", 100_064)):
        config["experiments"][name] = {**base, "train": {**base["train"], "batch_size": batch},
                                       "embed": {"batch_size": batch}}  # fmt: skip
    config["regression"] = {}


def folder_experiments(root) -> dict:
    """Four folder experiments at 2,048 px (images written under `root`): decoded into memory with 10 + 4 and
    20 + 8 images a class, streamed from the files by 2 and by 4 DataLoader workers."""
    experiments = {}
    for name, per_class, cache, workers in (
        ("memory_small", (10, 4), "memory", 2),
        ("memory_large", (20, 8), "memory", 2),
        ("streamed_2", (10, 4), "none", 2),
        ("streamed_4", (10, 4), "none", 4),
    ):
        make_image_folders(root / name, per_class=per_class)
        dataset = {"name": "imagefolder", "root": str(root / name), "image_size": 2048, "cache": cache}
        experiments[name] = {"dataset": dataset, "models": {"cnn": {"arch": "small_cnn", "width": 2}},
                             "train": {"augment": "flip", "num_workers": workers}, "knn": {"k": [1, 2]}}  # fmt: skip
    return experiments


@pytest.fixture(scope="module")
def cpu_jobs(tmp_path_factory):
    """The job listing of one dry run, device cpu, of the experiments of `digits_batches` and of
    `folder_experiments` together."""
    workdir = tmp_path_factory.mktemp("cpu_requests")

    def edit(config):
        digits_batches(config)
        config["device"] = "cpu"
        config["experiments"].update(folder_experiments(workdir))

    return job_listing(snakemake(workdir, "-n", configfile=write_config(workdir / "cpu.yaml", edit)).stdout)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_train_and_embed_requests_follow_the_batch_in_a_dry_run(request, tmp_path, device):
    """SmallCNN of width 4 on 8×8 digits (by hand above: 1,242 activation values an image, the largest 256; an
    input of 64 values): 100,000 images more a batch add, for train, twice the activations and four float32 copies
    of the input, 100,000 × (2·1,242·4 + 4·64·4) bytes = 1,096 MB, and for embed six of the largest activations
    and the input copies, 100,000 × (6·256·4 + 1,024) = 717 MB; ×1.25 for the allocator's slack. With device: cuda
    the activations are on the GPU: only the input copies, 102.4 MB, stay on the host."""
    if device == "cpu":
        jobs = request.getfixturevalue("cpu_jobs")  # shared with the folder experiments' test below
    else:
        path = write_config(tmp_path / "batches.yaml", digits_batches)
        config = yaml.safe_load(path.read_text())
        config["device"] = device
        path.write_text(yaml.safe_dump(config))
        jobs = job_listing(snakemake(tmp_path, "-n", configfile=path).stdout)
    per_image = {"train": 2 * 1242 * 4 + 1024, "embed": 6 * 256 * 4 + 1024} if device == "cpu" else {}
    for rule in ("train", "embed"):
        batches = [job for job in jobs if job["rule"] == rule and job["wildcards"]["experiment"] in ("small", "large")]
        small, large = sorted(int(job["resources"]["mem_mb"]) for job in batches)
        expected = 1.25 * 100_000 * per_image.get(rule, 1024) / 1e6
        assert abs(large - small - expected) <= 100, (rule, small, large, expected)


def test_train_and_embed_ask_for_the_images_they_hold(cpu_jobs):
    """Folder datasets at 2,048 px (3 × 2,048² bytes an image): decoded into memory, 42 images more (3 classes ×
    (10 train + 4 test)) ask train and embed for 42 × 12.58 MB = 528 MB more (660 MB with the slack); streamed
    from the files, two DataLoader workers more ask for their two prefetched float32 batches of 64 and 200 MB
    each, 2 × (2 × 64 × 50.3 MB + 200 MB) = 13.28 GB (16.6 GB with the slack). (`folder_experiments`, planned
    with the digits experiments: `cpu_jobs`.)"""
    jobs = cpu_jobs
    for rule in ("train", "embed"):
        mb = {job["wildcards"]["experiment"]: int(job["resources"]["mem_mb"]) for job in jobs if job["rule"] == rule}
        assert abs(mb["memory_large"] - mb["memory_small"] - 1.25 * 42 * 3 * 2048**2 / 1e6) <= 100
        batch = 64 if rule == "train" else 1024
        workers_mb = 2 * (2 * batch * 3 * 2048**2 * 4 + 200e6) * 1.25 / 1e6
        assert abs(mb["streamed_4"] - mb["streamed_2"] - workers_mb) <= 100
