"""How long a job runs on a named GPU class: the planner's time model (`python -m resmem.plan`) and the source of
every rule's SLURM `runtime`, `cpus_per_task` and training segments (workflow/rules/common.smk).

A job's estimate is the sum of what it runs, each term from counted work and a rate with its source:

- networks: FLOPs counted on the meta device (`torch.utils.flop_counter`; training = 3 forward passes) at a share
  of the GPU's dense bf16 peak, calibrated per GPU class on published anchors (ANCHORS; docs/scale.md shows the
  planner beside each anchor); images streamed from files are decoded at DECODE_PER_CORE images/s per loader
  worker (bench/bench_timing.py), and an epoch takes the slower of the GPU and the loaders;
- faiss: IVF k-means (`index.train`), PQ training and the add as FLOPs at a share of the GPU's float32 peak; the
  flat search as 2·N·d·Q FLOPs; an IVF search as its coarse quantizer plus the codes of nprobe lists read at a
  share of the memory bandwidth; the exact re-ranking of IVF-PQ neighbours as the pages of their rows read from
  disk at DISK_RANDOM_GBS; the recall check as a brute-force scan (on the GPU) and a sequential read of the keys;
- the sweep engine: its counted FLOPs at the share of matmul throughput it reaches (bench/bench_sweep.py);
- every job: a process start-up (bench/bench_timing.py) and CUDA's, and its output written at DISK_WRITE_GBS.

Requests follow with a margin: `runtime` = the estimate × TIME_MARGIN (at least MIN_RUNTIME_MINUTES), and a job
whose request would exceed the wall-time cap (config `requests.max_hours`, 24 h by default) runs as segments that
each stay under it (training: whole epochs, resumed from the last segment's checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    label: str
    bf16_tflops: float  # dense tensor-core peak (no sparsity)
    fp32_tflops: float  # CUDA-core float32 peak: faiss's kernels and GEMMs, the sweep engine
    memory_gbs: float  # HBM bandwidth, GB/s


# Peak figures from NVIDIA's data sheets (A100: "NVIDIA A100 Tensor Core GPU" datasheet, SXM4 80 GB; H100: "NVIDIA
# H100 Tensor Core GPU" datasheet, SXM5; dense, i.e. half the quoted with-sparsity tensor figures).
GPUS = {
    "a100": Gpu("NVIDIA A100 SXM4 80GB", bf16_tflops=312.0, fp32_tflops=19.5, memory_gbs=2039.0),
    "h100": Gpu("NVIDIA H100 SXM5 80GB", bf16_tflops=989.0, fp32_tflops=67.0, memory_gbs=3350.0),
}

# Shares of the bf16 peak that a kind of network work sustains, per GPU class (model FLOPs utilization): fitted on
# the anchors marked "calibrates" in ANCHORS, checked on the others (docs/scale.md). No PyTorch anchor was found
# for an H100 or for CIFAR-sized images; those entries are derived as their comments say.
MFU = {
    "conv_train": {"a100": 0.194, "h100": 0.122},  # h100: assumed twice the A100's images/s
    "conv_infer": {"a100": 0.085, "h100": 0.054},  # the same
    # images of 64 px or less (CIFAR ResNets), bound by memory and kernel launches: assumed an eighth of the above
    "small_conv_train": {"a100": 0.025, "h100": 0.016},
    "small_conv_infer": {"a100": 0.011, "h100": 0.007},
    # h100: nanoGPT's A100 share × llm.c's H100/A100 ratio (0.49 for GPT-2 1558M on H100 / 0.60 for 124M on A100)
    "transformer_train": {"a100": 0.298, "h100": 0.242},
    "transformer_infer": {"a100": 0.298, "h100": 0.242},  # assumed: the training share (forward passes only)
}
FAISS_FP32_SHARE = 0.5  # faiss's GEMM-based k-means, add and flat search: half the float32 peak (ANCHORS)
IVF_SCAN_SHARE = 0.25  # an IVF list scan: a quarter of the memory bandwidth (gathers, heaps, small lists)
# The sweep engine reaches 2.8 % of float32 matmul throughput on the CPU (bench/bench_sweep.py --engine-only: 4.0 of
# 144 GFLOP/s); not yet measured on a GPU, so the same share of its float32 peak is assumed there.
SWEEP_FP32_SHARE = 0.028
# Measured on the 2-core EPYC by bench/bench_timing.py (bench/results/bench_timing.json):
DECODE_PER_CORE = 350.0  # 500x375 JPEGs/s through RandomResizedCrop(224) + flip + ToTensor, one loader worker
STARTUP_SECONDS = 3.0  # a fresh interpreter importing torch, faiss and the stage modules
CPU_SCAN_GFLOPS = 9.0  # faiss.knn on one CPU thread
CPU_NETWORK_GFLOPS = 50.0  # assumed: a network's forward and backward passes on a job's CPU (device: cpu)
CPU_MATMUL_GFLOPS = 144.0  # float32 matmul of the 2-core EPYC (bench/bench_sweep.py's machine record)
CPU_MEMORY_GBS = 20.0  # assumed: a CPU's memory bandwidth for an IVF scan without a GPU
CUDA_STARTUP_SECONDS = 20.0  # assumed: CUDA context, cuDNN/cuBLAS handles, the first kernels' autotuning
# Storage, assumed for a cluster's scratch file system (a local NVMe disk is faster):
DISK_READ_GBS = 1.0  # sequential reads
DISK_RANDOM_GBS = 0.25  # random 4 KiB page reads (~60,000 IOPS)
DISK_WRITE_GBS = 1.0
PAGE_BYTES = 4096

TIME_MARGIN = 1.5  # a request is the estimate times this
MIN_RUNTIME_MINUTES = 10  # and at least this (queueing for a node, a slow file system)
DEFAULT_GPU = "a100"  # the slower class: requests planned for it are long enough on an H100


@dataclass(frozen=True)
class Anchor:
    """A published throughput and the work it measured, for the planner to estimate the same work."""

    name: str
    hardware: str
    peak_tflops: float  # the hardware's peak for this work (bf16 tensor cores, or float32 for faiss)
    share: float  # the planner's share of that peak for this work (MFU, FAISS_FP32_SHARE)
    flops_per_item: float  # counted FLOPs of one item (an image's training step, a token's, a k-means iteration)
    published: float  # items per second
    unit: str
    role: str  # "calibrates" (the share is fitted to it) or "checks" (held out)
    source: str

    def planned(self) -> float:
        """The planner's items per second on the anchor's work."""
        return self.share * self.peak_tflops * 1e12 / self.flops_per_item


# FLOPs counted by torch.utils.flop_counter at 224 px (tests/test_timing.py recounts them): ResNet-50 8.18 G a
# forward pass, timm's resnext101_32x4d 15.94 G, seresnext101_32x4d 15.95 G; training 3 forward passes. GPT-2 124M:
# nanoGPT's 6·N + 12·L·H·Q·T = 857 MFLOP a training token at context 1,024.
DLE = "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/"
A100 = "1x A100 80GB"
ANCHORS = [
    Anchor("ResNet-50 v1.5 training, AMP, batch 256", A100, 312.0, MFU["conv_train"]["a100"], 3 * 8.18e9, 2470,
           "images/s", "calibrates", DLE + "resnet50v1.5/README.md (DGX A100 training performance, 1 GPU)"),
    Anchor("ResNeXt101-32x4d training, AMP, batch 128", A100, 312.0, MFU["conv_train"]["a100"], 3 * 15.94e9, 1211,
           "images/s", "checks", DLE + "resnext101-32x4d/README.md (DGX A100 training performance, 1 GPU)"),
    Anchor("SE-ResNeXt101-32x4d training, AMP, batch 128", A100, 312.0, MFU["conv_train"]["a100"], 3 * 15.95e9,
           855, "images/s", "checks", DLE + "se-resnext101-32x4d/README.md (DGX A100 training performance, 1 GPU)"),
    Anchor("ResNet-50 v1.5 inference, AMP, batch 256", "1x A100 40GB", 312.0, MFU["conv_infer"]["a100"], 8.18e9,
           3229, "images/s", "calibrates", "NVIDIA DeepLearningExamples, TensorFlow/Classification/ConvNets/"
           "resnet50v1.5/README.md (no PyTorch A100 inference table is published)"),
    Anchor("GPT-2 124M training (nanoGPT: 300B tokens in about 4 days)", "8x A100 40GB, per GPU", 312.0,
           MFU["transformer_train"]["a100"], 857e6, 300e9 / (4 * 86400 * 8), "tokens/s", "calibrates",
           "karpathy/nanoGPT README.md and config/train_gpt2.py"),
    Anchor("faiss k-means, n = 1M, d = 256, 20,000 centroids, 25 iterations in 55 s", "1x P100 (float32 9.3 TFLOP/s)",
           9.3, FAISS_FP32_SHARE, 2 * 1e6 * 20_000 * 256, 25 / 55, "iterations/s", "calibrates",
           "facebookresearch/faiss wiki, Low-level benchmarks"),
    Anchor("faiss k-means, n = 5M, d = 128, 20,000 centroids, 20 iterations in 109 s", "1x P100-PCIe", 9.3,
           FAISS_FP32_SHARE, 2 * 5e6 * 20_000 * 128, 20 / 109.14, "iterations/s", "checks",
           "facebookresearch/faiss wiki, GPU k-means example"),
]  # fmt: skip
ANCHOR_GOAL = 0.25  # the planner within 25 % of each anchor


def network_seconds(flops_per_item: float, items: float, passes: int, work: str, gpu: str | None) -> float:
    """Seconds of `items` forward passes (× `passes`) of `flops_per_item` at the work's MFU on `gpu`, or at
    CPU_NETWORK_GFLOPS on the CPU (gpu None)."""
    rate = MFU[work][gpu] * GPUS[gpu].bf16_tflops * 1e12 if gpu else CPU_NETWORK_GFLOPS * 1e9
    return flops_per_item * items * passes / rate


def decode_seconds(images: float, workers: int) -> float:
    """Decoding `images` JPEGs in `workers` loader processes (the job's own process when there are none)."""
    return images / (DECODE_PER_CORE * max(1, workers))


def faiss_seconds(flops: float, gpu: str | None, cpus: int = 1) -> float:
    """GEMM-bound faiss work (k-means, add, flat search, brute-force scans): on the GPU at FAISS_FP32_SHARE of its
    float32 peak, on `cpus` CPU threads at CPU_SCAN_GFLOPS each without one."""
    if gpu is None:
        return flops / (CPU_SCAN_GFLOPS * 1e9 * cpus)
    return flops / (FAISS_FP32_SHARE * GPUS[gpu].fp32_tflops * 1e12)


def kmeans_flops(n: int, d: int, nlist: int, index: str, pq_m: int, pq_bits: int) -> float:
    """FLOPs of an IVF index's training: 10 k-means iterations (faiss's IVF default) over min(N, 256·nlist) vectors
    against nlist centroids, and for IVF-PQ 25 iterations per sub-quantizer over at most 256·2^bits of them."""
    if index == "flat":
        return 0.0
    flops = 2.0 * min(n, 256 * nlist) * nlist * d * 10
    if index == "ivfpq":
        centroids = 2**pq_bits
        flops += 2.0 * min(n, 256 * centroids) * centroids * d * 25
    return flops


def add_flops(n: int, d: int, nlist: int, index: str, pq_bits: int) -> float:
    """FLOPs of adding N vectors: each assigned to its list (2·nlist·d), and for IVF-PQ encoded (2·2^bits·d)."""
    if index == "flat":
        return 0.0
    return 2.0 * n * d * (nlist + (2**pq_bits if index == "ivfpq" else 0))


def search_seconds(n: int, d: int, q: int, k: int, knn: dict, gpu: str | None, key_bytes: int) -> dict[str, float]:
    """The neighbors stage's terms: the search, the exact re-ranking of IVF-PQ neighbours (the rows' pages read
    from the memmapped datastore) and the recall check (a brute-force scan over every key, which also reads them);
    `key_bytes`: a datastore key's bytes (d·2 for float16 keys)."""
    index = knn["index"]
    nlist = knn["nlist"] or max(1, int(4 * n**0.5))
    terms = {}
    if index == "flat":
        terms["search"] = faiss_seconds(2.0 * n * d * q, gpu)
    else:
        code = d * 4 if index == "ivf" else -(-knn["pq_m"] * knn["pq_bits"] // 8)
        scanned = q * min(knn["nprobe"], nlist) * (n / nlist) * (code + 8)
        bandwidth = (GPUS[gpu].memory_gbs if gpu else CPU_MEMORY_GBS) * 1e9 * IVF_SCAN_SHARE
        terms["search"] = faiss_seconds(2.0 * q * nlist * d, gpu) + scanned / bandwidth
    if index == "ivfpq":
        pages = q * k * max(1, -(-key_bytes // PAGE_BYTES))
        terms["rerank_io"] = pages * PAGE_BYTES / (DISK_RANDOM_GBS * 1e9)
    if index != "flat":
        sample = min(knn["recall_sample"], q)
        terms["recall"] = faiss_seconds(2.0 * n * d * sample, gpu) + n * key_bytes / (DISK_READ_GBS * 1e9)
    return terms


def sweep_seconds(flops: float, gpu: str | None) -> float:
    """The sweep engine's counted FLOPs at SWEEP_FP32_SHARE of the float32 peak (on the CPU: of its matmul rate)."""
    peak = GPUS[gpu].fp32_tflops * 1e12 if gpu else CPU_MATMUL_GFLOPS * 1e9
    return flops / (SWEEP_FP32_SHARE * peak)


def startup_seconds(gpu: str | None) -> float:
    """Every job's start-up: the interpreter and its imports, and CUDA's on a GPU."""
    return STARTUP_SECONDS + (CUDA_STARTUP_SECONDS if gpu else 0.0)


def write_seconds(nbytes: float) -> float:
    """Writing a job's output."""
    return nbytes / (DISK_WRITE_GBS * 1e9)


@dataclass(frozen=True)
class Requests:
    """What the planner derives from a job's estimate: its SLURM runtime (minutes, one segment's) and segments."""

    runtime_minutes: int
    segments: int


def requests_for(seconds: float, max_hours: float, splittable: int = 1) -> Requests:
    """The runtime a job asks for: its estimate × TIME_MARGIN in whole minutes, at least MIN_RUNTIME_MINUTES. A job
    of `splittable` > 1 equal parts (training epochs) whose request exceeds `max_hours` runs as the fewest segments
    of whole parts (`segment_ends`) that each stay under it, every segment asking for the longest one's share; one
    part longer than the cap cannot be split further and keeps its request (the planner flags it)."""
    cap = max_hours * 60
    floor = min(MIN_RUNTIME_MINUTES, math.floor(cap)) or 1
    wanted = max(floor, math.ceil(seconds * TIME_MARGIN / 60))
    if wanted <= cap or splittable <= 1:
        return Requests(wanted, 1)
    per_part = wanted / splittable
    segments = next((s for s in range(2, splittable + 1) if math.ceil(splittable / s) * per_part <= cap), splittable)
    ends = segment_ends(splittable, segments)
    longest = max(b - a for a, b in zip([0, *ends[:-1]], ends, strict=True))
    return Requests(max(floor, math.ceil(longest * per_part)), segments)


def segment_ends(parts: int, segments: int) -> list[int]:
    """The parts (epochs) after which each of `segments` segments ends, as evenly as whole parts allow."""
    return [round(i * parts / segments) for i in range(1, segments + 1)]


def training_segment_ends(seconds: float, max_hours: float, epochs: int) -> list[int]:
    """The epochs after which the segments of a training estimated at `seconds` end (`requests_for`,
    `segment_ends`): [epochs] when it fits under `max_hours` in one job."""
    return segment_ends(epochs, requests_for(seconds, max_hours, epochs).segments)


def segment_seconds(terms: dict[str, float], parts: int, first: int, last: int) -> float:
    """A segment's share of a job's estimate `terms`: its start-up, and of the rest parts first+1 .. last of `parts`."""
    startup = terms.get("startup", 0.0)
    return startup + (sum(terms.values()) - startup) * (last - first) / max(1, parts)


def shared_stage_seconds(
    rule: str, sizes, knn: dict, gpu: str | None, key_bytes: int, sweep: float
) -> dict[str, float]:
    """The terms of a shared stage's job (`resmem.bounds.RunSizes` `sizes`, the experiment's knn section; the rule
    may carry a kind's prefix, lm_): index (k-means, add, the keys read and the index written), neighbors
    (`search_seconds`), sweep (`sweep` FLOPs through the engine) and predict (the engine at one grid point for
    each of three methods)."""
    from resmem.bounds import index_bytes

    stage = rule.removeprefix("lm_")
    n, d = sizes.index_rows, sizes.dim
    nlist = knn["nlist"] or max(1, int(4 * n**0.5))
    if stage == "index":
        flops = kmeans_flops(n, d, nlist, knn["index"], knn["pq_m"], knn["pq_bits"])
        flops += add_flops(n, d, nlist, knn["index"], knn["pq_bits"])
        read = n * key_bytes / (DISK_READ_GBS * 1e9)
        return {"index": faiss_seconds(flops, gpu), "read": read, "write": write_seconds(index_bytes(sizes, knn))}
    if stage == "neighbors":
        written = write_seconds(sizes.queries * sizes.k_max * 12)
        return {**search_seconds(n, d, sizes.queries, sizes.k_max, knn, gpu, key_bytes), "write": written}
    if stage == "sweep":
        return {"sweep": sweep_seconds(sweep, gpu)}
    if stage == "predict":
        grid = len(knn["sigma"]) * len(knn["temperature"])
        return {"predict": sweep_seconds(3 * sweep / max(1, grid), gpu)}
    return {}
