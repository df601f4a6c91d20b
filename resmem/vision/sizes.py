"""The sizes of an image run (`resmem.bounds.RunSizes`), for its jobs' requests and the planner: read from the
run's embeddings.npz (or the user's embeddings file) where it exists, else estimated from the config: the
dataset's pool sizes and the split's fractions, the model's feature width."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from resmem import io
from resmem.bounds import RunSizes, model_bytes, streamed_disk_bytes

# (train pool, test pool, classes) of the datasets whose sizes are fixed; digits' test split is carved from it.
POOLS = {"digits": (1797, 0, 10), "cifar100": (50_000, 10_000, 100), "imagenet": (1_281_167, 50_000, 1000)}
RESNET_WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
IN_MEMORY = ("digits", "cifar100")  # loaded as arrays; the others are class folders of image files
FOLDER_SPLITS = {"imagenet": ("train", "val"), "imagefolder": ("train", "test")}
# oneDNN's primitive caches and workspaces and the allocator's free lists: 130-420 MB measured beyond the counted
# terms, varying between two runs of the same job (bench/bench_model_memory.py)
TORCH_SCRATCH = 384 * 2**20
# embed's live activations, in units of the largest leaf output: 1.3-2.4 an image measured for ResNets and a ViT
# (bench/bench_model_memory.py, the growth between two batches)
EVAL_LIVE = 6
PREFETCH_BATCHES = 2  # torch DataLoader's prefetch_factor: float32 batches queued per worker
WORKER_BYTES = 200 * 10**6  # a DataLoader worker's own memory beside its batches (PIL, decoded JPEGs)
# One process decodes ~300 JPEGs of 500x375 px a second (ImageNet's size) and ~5,000 of 32 px, measured on a
# 2-core EPYC: up to 10,000 images one process takes seconds to half a minute.
IMAGES_PER_DECODE_PROCESS = 10_000
MAX_DECODE_PROCESSES = 8


def feature_width(spec: dict, classes: int, channels: int = 3) -> int:
    """The width of a model's features (the keys ResMem searches), from its spec: the architectures' own rule
    (tests/test_requests.py checks it against the built models), a timm model built on the meta device."""
    arch = spec["arch"]
    if arch == "small_cnn":
        return 2 * spec.get("width", 8)
    if arch == "cifar_resnet":
        return max(1, round(64 * spec.get("width_multiplier", 1.0)))
    if arch in RESNET_WIDTHS:
        return RESNET_WIDTHS[arch]
    net = _meta_model(json.dumps(spec, sort_keys=True), classes, channels).net
    # the width of forward_head(..., pre_logits=True): a pre-logits layer's where the model has one
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


@lru_cache
def _meta_model(spec_json: str, classes: int, channels: int):
    """The model of a spec built on the meta device: no weights allocated, none downloaded."""
    import torch

    from resmem.vision.models import build_model

    spec = json.loads(spec_json)
    with torch.device("meta"):
        return build_model({**spec, "pretrained": False} if "pretrained" in spec else spec, classes, channels)


@lru_cache
def _folder_pool(root: str, split: str) -> tuple[int, int]:
    """(images, classes) of a class-folder split: files one level below each class folder."""
    folder = Path(root) / split
    if not folder.is_dir():
        return 0, 0
    classes = [entry for entry in os.scandir(folder) if entry.is_dir()]
    return sum(sum(1 for f in os.scandir(c.path) if f.is_file()) for c in classes), len(classes)


def split_sizes(dataset: dict) -> tuple[int, int, int, int]:
    """(train, val, test, classes) of the config's split, as `resmem.vision.data.make_split` carves it."""
    name = dataset["name"]
    if name in POOLS:
        train_pool, test_pool, classes = POOLS[name]
    else:
        train_split, test_split = FOLDER_SPLITS[name]
        train_pool, classes = _folder_pool(str(dataset["root"]), train_split)
        test_pool, _ = _folder_pool(str(dataset["root"]), test_split)
    subsample = dataset.get("subsample") or {}
    if test_pool:
        train_pool = min(train_pool, (subsample.get("train") or train_pool) * classes)
        test_pool = min(test_pool, (subsample.get("test") or test_pool) * classes)
    else:
        test_pool = round(dataset["test_fraction"] * train_pool)
        train_pool -= test_pool
    val = round(dataset["val_fraction"] * train_pool)
    return train_pool - val, val, test_pool, classes


def decoded_bytes(dataset: dict) -> int:
    """The decode stage's uint8 array of a folder dataset (3·S² bytes an image, its train and test pools): what
    train and embed hold where the dataset is decoded into memory."""
    train, val, test, _ = split_sizes(dataset)
    return (train + val + test) * 3 * dataset["image_size"] ** 2


def decode_processes(dataset: dict) -> int:
    """The decode stage's processes (its job's threads): one per IMAGES_PER_DECODE_PROCESS images of the folder's
    split, at least one and at most MAX_DECODE_PROCESSES. A small folder decodes in the job's own process in
    seconds, beside other jobs, instead of holding every core while it does."""
    train, val, test, _ = split_sizes(dataset)
    return min(MAX_DECODE_PROCESSES, max(1, -(-(train + val + test) // IMAGES_PER_DECODE_PROCESS)))


def input_shape(dataset: dict) -> tuple[int, int]:
    """(channels, side) of the images the model sees."""
    if dataset["name"] == "digits":
        return 1, 8
    return 3, 32 if dataset["name"] == "cifar100" else dataset["image_size"]


def model_footprint(spec: dict, classes: int, channels: int, size: int) -> tuple[int, int, int]:
    """(parameters, activation values, largest activation) of one image through the model: the outputs of its
    leaf modules, summed and at their largest, counted in a forward pass on the meta device (no weights
    allocated, nothing computed or downloaded)."""
    return _footprint(json.dumps(spec, sort_keys=True), classes, channels, size)


@lru_cache
def _footprint(spec_json: str, classes: int, channels: int, size: int) -> tuple[int, int, int]:
    import torch

    net = _meta_model(spec_json, classes, channels).eval()
    outputs = []
    leaves = [m for m in net.modules() if not any(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out.numel())) for m in leaves]
    try:
        net(torch.zeros(1, channels, size, size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(p.numel() for p in net.parameters()), sum(outputs), max(outputs)


def model_memory_bytes(experiment: dict, model: str, stage: str, decoded: int = 0, on_gpu: bool = False) -> int:
    """train's or embed's peak host memory beyond the interpreter, from the model's footprint (`model_footprint`),
    the batch and the images held, all float32 (bench/bench_model_memory.py measures it on the CPU):
    - the network: train adds gradients and Adam's moments (16 bytes a parameter), and twice a batch's activation
      values (autograd keeps each layer's output or input for the backward pass, which adds their gradients);
      embed, the weights twice (the checkpoint as read and the network) and EVAL_LIVE of the largest activations
      a batch (the tensors alive at once: a residual block's input, branch and output; attention's q, k, v).
      `on_gpu` (device: cuda): all but the weights as built or read live in device memory instead;
    - four float32 copies of the input batch (loaded, scaled, augmented, normalized) and TORCH_SCRATCH;
    - the images: an in-memory dataset twice (loaded, and each split's rows copied out), a folder dataset's
      `decoded` array (memmapped) once, or, for files decoded on the fly, each DataLoader worker's prefetched
      batches and WORKER_BYTES."""
    dataset = experiment["dataset"]
    channels, size = input_shape(dataset)
    train, val, test, classes = split_sizes(dataset)
    parameters, values, largest = model_footprint(experiment["models"][model], classes, channels, size)
    batch = experiment[stage]["batch_size"]
    training = stage == "train" and experiment["train"]["epochs"] > 0
    network = model_bytes(parameters, training=False) * (2 if stage == "embed" else 1)
    if training and not on_gpu:
        network = model_bytes(parameters, training=True) + 2 * values * batch * 4
    elif not on_gpu:
        network += EVAL_LIVE * largest * batch * 4
    image = channels * size * size
    held = network + 4 * batch * image * 4 + TORCH_SCRATCH
    if dataset["name"] in IN_MEMORY:
        return held + 2 * (train + val + test) * image
    if decoded:
        return held + decoded
    workers = experiment["train"]["num_workers"]
    return held + workers * (PREFETCH_BATCHES * batch * image * 4 + WORKER_BYTES)


def run_sizes(experiment: dict, run: dict, datastore_path=None) -> RunSizes:
    """A run's sizes: from its datastore file where it exists (the job's own input, at run time), else from the
    user's embeddings file or the config (planning)."""
    k_max = max(experiment["knn"]["k"])
    source = datastore_path if datastore_path and Path(datastore_path).exists() else None
    if source is None and "embeddings" in experiment:
        source = experiment["embeddings"][run["model"]]["path"]
    if source is not None:
        shapes = {key: shape for key, (shape, _) in io.npz_shapes(
            source, ["train_emb", "test_emb", "test_logits"], optional=["val_emb"]).items()}  # fmt: skip
        n, dim = shapes["train_emb"]
        queries = shapes["test_emb"][0] + shapes.get("val_emb", (0,))[0]
        if "val_emb" not in shapes:  # the embeddings_file stage carves val from train
            val = round(experiment["dataset"]["val_fraction"] * n)
            n, queries = n - val, queries + val
        if source != datastore_path:  # the user's file: the run keeps a fraction of its training rows
            n = round(float(run["train_fraction"]) * n)
        return RunSizes(n, n, dim, queries, shapes["test_logits"][1], k_max)
    train, val, test, classes = split_sizes(experiment["dataset"])
    n = round(float(run["train_fraction"]) * train)
    channels, _ = input_shape(experiment["dataset"])
    dim = feature_width(experiment["models"][run["model"]], classes, channels)
    return RunSizes(n, n, dim, val + test, classes, k_max)


def embeddings_disk_bytes(sizes: RunSizes) -> int:
    """embeddings.npz as embed writes it: per split float32 embeddings and logits, int64 labels (and the
    training rows)."""
    width = sizes.dim + sizes.classes
    arrays = {"train": (sizes.datastore_rows, width, 4), "queries": (sizes.queries, width, 4),
              "labels": (sizes.datastore_rows + sizes.queries, 2, 8)}  # fmt: skip
    return streamed_disk_bytes(arrays)


def assumptions(experiment: dict) -> list[str]:
    """What the planner could not read and assumed: a dataset folder that is not there yet."""
    dataset = experiment["dataset"]
    if dataset["name"] in POOLS or "embeddings" in experiment or split_sizes(dataset)[0]:
        return []
    return [f"dataset.root {dataset['root']}: no class folders yet; the planned sizes are 0 until they exist"]


def forward_flops(spec: dict, classes: int, channels: int, size: int) -> float:
    """FLOPs of one forward pass of one image, counted with torch.utils.flop_counter on the meta device (nothing
    allocated, computed or downloaded)."""
    return _forward_flops(json.dumps(spec, sort_keys=True), classes, channels, size)


@lru_cache
def _forward_flops(spec_json: str, classes: int, channels: int, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = _meta_model(spec_json, classes, channels).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, channels, size, size, device="meta"))
    return float(counter.get_total_flops())


def streamed(experiment: dict) -> bool:
    """Whether train and embed decode image files every pass (a folder dataset not decoded into memory)."""
    dataset = experiment["dataset"]
    if dataset["name"] not in FOLDER_SPLITS:
        return False
    if dataset["cache"] == "none" or experiment["train"]["augment"] == "resized_crop_flip":
        return True
    return dataset["cache"] == "auto" and decoded_bytes(dataset) > dataset["cache_mb"] * 2**20


def train_threads(experiment: dict) -> int:
    """train's and embed's threads (their jobs' cpus_per_task): the loader workers of a streamed folder dataset and
    the job's own process, else one."""
    return experiment["train"]["num_workers"] + 1 if streamed(experiment) else 1


def network_threads(threads: int, recipe: dict, streamed_files: bool) -> int:
    """torch's threads in a train or embed job of `threads`: those beside its loader's worker processes where it
    streams image files (the job asks for one more than the workers, `train_threads`), so that the network computes
    the same whether its files are streamed or decoded into memory."""
    return max(1, threads - (recipe["num_workers"] if streamed_files else 0))


def sweep_flops(experiment: dict, sizes: RunSizes) -> float:
    """The image sweep engine's counted FLOPs (bench/bench_sweep.py): 2·Q·k_max·C per sigma and temperature."""
    knn = experiment["knn"]
    return 2.0 * sizes.queries * sizes.k_max * sizes.classes * len(knn["sigma"]) * len(knn["temperature"])


def job_seconds(rule: str, experiment: dict, run: dict, gpu: str | None) -> dict[str, float]:
    """The estimated seconds of one job of an image experiment's `rule` for `run` (its wildcards), term by term
    (`resmem.timing`), on the GPU class `gpu` (None: a job on the CPU). An epoch of a streamed folder dataset
    takes the slower of the network and its loader workers."""
    from resmem import timing

    dataset = experiment["dataset"]
    terms = {"startup": timing.startup_seconds(gpu)}
    if rule in ("split", "select", "aggregate"):
        return terms
    if rule == "decode":
        train, val, test, _ = split_sizes(dataset)
        terms["decode"] = timing.decode_seconds(train + val + test, decode_processes(dataset))
        return terms
    sizes = run_sizes(experiment, run)
    if rule in ("embed", "train"):
        channels, size = input_shape(dataset)
        spec = experiment["models"][run["model"]]
        flops = forward_flops(spec, sizes.classes, channels, size)
        small = "small_" if size <= 64 else ""
        workers = experiment["train"]["num_workers"] if streamed(experiment) else 0
        val = sizes.queries - split_sizes(dataset)[2]
        if rule == "train":
            epochs = experiment["train"]["epochs"]
            passes = {"train": (sizes.datastore_rows, 3, "train"), "val": (val, 1, "infer")}
        else:
            epochs = 1
            passes = {"embed": (sizes.datastore_rows + sizes.queries, 1, "infer")}
        for name, (images, count, work) in passes.items():
            compute = timing.network_seconds(flops, images, count, f"{small}conv_{work}", gpu)
            loading = timing.decode_seconds(images, workers) if streamed(experiment) else 0.0
            terms[name] = epochs * max(compute, loading)
        if rule == "embed":
            terms["write"] = timing.write_seconds(embeddings_disk_bytes(sizes))
        return terms
    if rule == "embeddings_file":
        terms["write"] = timing.write_seconds(embeddings_disk_bytes(sizes))
        return terms
    return {**terms, **timing.shared_stage_seconds(rule, sizes, experiment["knn"], gpu, sizes.dim * 4,
                                                   sweep_flops(experiment, sizes))}  # fmt: skip
