"""The sizes of a language-model run (`resmem.bounds.RunSizes`) and of its model, for its jobs' requests and the
planner: read from the run's datastore.npz or the corpus's .npz where they exist, else estimated from the
config: the corpus's byte budgets (or its known size), the stride and token budget, the model's width and
vocabulary (for a Hugging Face model, its config.json and weight headers in the local cache)."""

from __future__ import annotations

import json
import math
import sysconfig
from functools import lru_cache
from pathlib import Path

from resmem import io
from resmem.artifacts import SPLITS
from resmem.bounds import RunSizes, model_bytes, streamed_disk_bytes
from resmem.lm.text_files import corpus_files
from resmem.lm.tokenizers import TOKENIZE_CHUNK_BYTES

# Bytes of the corpora whose size is fixed (the raw text, before tokenizing); c4 always has byte budgets.
CORPUS_BYTES = {"wikitext103": {"train": 539_000_000, "val": 1_140_000, "test": 1_290_000}}
TOKENS_PER_BYTE = {"bytes": 1.0, "bpe": 0.22, "model": 0.22}  # GPT-2 BPE: 117M tokens of WikiText-103's 539 MB
# Bytes a token while a batch is tokenized (measured, tests/test_corpus_memory.py and resmem.lm.tokenizers): the
# byte tokenizer's text and int32 ids; a BPE's ids, offsets and strings, ~290 for one long text, ~100 a document.
TOKEN_BYTES = {"bytes": 8, "bpe": 300, "model": 300}
# Tokenizing, bytes of text a second on one core (assumed: the byte tokenizer is a copy; a BPE, Hugging Face's
# tokenizers library, ~1M tokens/s at ~4.5 bytes a token)
TOKENIZE_BYTES_PER_SECOND = {"bytes": 200e6, "bpe": 4.5e6, "model": 4.5e6}
LONGEST_DOCUMENT = 64 * 2**20  # a file or an article is held whole while it is read (a single file: in pieces)
ASSUMED_HF = {"hidden": 1024, "vocab": 50_257, "parameters": 355_000_000}  # a model not yet in the cache


def path_bytes(corpus: dict, root: Path, kind: str = "text") -> int:
    """The bytes of a file, or of the files of a folder that the corpus stage reads (its include, exclude and
    pruned folders; `resmem.lm.text_files.corpus_files`); 0 for a path not there (yet)."""
    if root.is_file():
        return root.stat().st_size
    if not root.is_dir():
        return 0
    return sum((root / rel).stat().st_size for rel in corpus_files(corpus, root, kind))


def split_path_bytes(corpus: dict) -> dict[str, int]:
    """Bytes per split of a text corpus with per-split paths (corpus.path = {train, val, test})."""
    paths = corpus["path"]
    return {s: path_bytes(corpus, Path(str(paths[s])).expanduser()) if paths.get(s) else 0 for s in SPLITS}


def source_bytes(corpus: dict) -> int:
    """The bytes of a stdlib or text corpus's files (all splits together)."""
    kind = corpus["name"]
    if isinstance(corpus.get("path"), dict):
        return sum(split_path_bytes(corpus).values())
    root = Path(sysconfig.get_paths()["stdlib"]) if kind == "stdlib" else Path(str(corpus["path"])).expanduser()
    return path_bytes(corpus, root, kind)


def corpus_bytes(corpus: dict) -> dict[str, int]:
    """Bytes of text per split: the budget where set, else the source's size split by the config's fractions
    (per-split paths: each split's own files, capped by its budget)."""
    budgets = corpus.get("max_bytes") or {}
    if corpus["name"] in CORPUS_BYTES:
        known = CORPUS_BYTES[corpus["name"]]
    elif isinstance(corpus.get("path"), dict):
        known = split_path_bytes(corpus)
    elif corpus["name"] == "c4" or all(budgets.get(s) for s in SPLITS):  # c4 always has a budget for every split
        known = {s: budgets.get(s) or 0 for s in SPLITS}
    else:
        total = source_bytes(corpus)
        val, test = corpus.get("val_fraction", 0.1), corpus.get("test_fraction", 0.1)
        known = {"train": round(total * (1 - val - test)), "val": round(total * val), "test": round(total * test)}
    return {s: min(known[s], budgets.get(s) or known[s]) for s in SPLITS}


def corpus_memory_bytes(experiment: dict) -> int:
    """The corpus stage's peak beyond the interpreter: one tokenize batch of TOKENIZE_CHUNK_BYTES of text at up
    to a token a byte, and the longest document; whatever the corpus's size."""
    return TOKENIZE_CHUNK_BYTES * TOKEN_BYTES[experiment["corpus"]["tokenizer"]] + LONGEST_DOCUMENT


def split_tokens(experiment: dict, corpus_path=None) -> dict[str, int]:
    """Tokens per split: from the corpus file where it exists, else bytes × tokens per byte."""
    if corpus_path and Path(corpus_path).exists():
        arrays = io.load_npz(corpus_path, [f"{s}_tokens" for s in SPLITS], mmap=True)
        return {s: len(arrays[f"{s}_tokens"]) for s in SPLITS}
    per_byte = TOKENS_PER_BYTE[experiment["corpus"]["tokenizer"]]
    return {s: round(b * per_byte) for s, b in corpus_bytes(experiment["corpus"]).items()}


@lru_cache
def hf_shape(source: str, revision: str | None) -> dict | None:
    """(hidden, vocab, parameters) of a cached Hugging Face model: its config.json, and its parameters counted
    from the safetensors header (a sharded model's index, or a .bin file, by its bytes at 2 a parameter: an
    overestimate for float32 weights); None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name):
        if Path(source).expanduser().is_dir():
            path = Path(source).expanduser() / name
            return path if path.exists() else None
        found = try_to_load_from_cache(source, name, revision=revision)
        return Path(found) if isinstance(found, str) else None

    config_file = cached("config.json")
    if config_file is None:
        return None
    config = json.loads(config_file.read_text())
    hidden = config.get("hidden_size") or config.get("n_embd")
    weights, sharded, binary = (cached(n) for n in ("model.safetensors", "model.safetensors.index.json",
                                                    "pytorch_model.bin"))  # fmt: skip
    if weights is not None:
        with open(weights, "rb") as f:
            header = json.loads(f.read(min(int.from_bytes(f.read(8), "little"), 100 * 2**20)))  # at most 100 MiB
        parameters = sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    elif sharded is not None:
        parameters = json.loads(sharded.read_text())["metadata"]["total_size"] // 2
    else:
        parameters = binary.stat().st_size // 2 if binary else ASSUMED_HF["parameters"]
    return {"hidden": int(hidden), "vocab": int(config["vocab_size"]), "parameters": parameters}


def gpt_parameters(spec: dict, vocab: int, context: int) -> int:
    """Parameters of our own GPT (`resmem.lm.model.GPT`): embeddings, per block 12·d² + 13·d, a final norm;
    the output layer is tied to the token embedding."""
    d = spec.get("n_embd", 64)
    return (vocab + context) * d + spec.get("n_layer", 2) * (12 * d * d + 13 * d) + 2 * d


def assumptions(experiment: dict) -> list[str]:
    """What the planner could not read and assumed: Hugging Face models not in the local cache."""
    missing = [
        m for m, spec in experiment["models"].items() if "hf" in spec and not hf_shape(spec["hf"], spec.get("revision"))
    ]
    if not missing:
        return []
    return [f"{', '.join(missing)}: not in the Hugging Face cache; planned at width {ASSUMED_HF['hidden']:,}, "
            f"vocabulary {ASSUMED_HF['vocab']:,} and {ASSUMED_HF['parameters']:,} parameters"]  # fmt: skip


def model_shape(experiment: dict, model: str) -> dict:
    """{hidden, vocab, parameters} of one of the experiment's models (ASSUMED_HF's for an uncached HF model)."""
    spec = experiment["models"][model]
    if "hf" in spec:
        return hf_shape(spec["hf"], spec.get("revision")) or ASSUMED_HF
    vocab = 256 if experiment["corpus"]["tokenizer"] == "bytes" else 50_257
    return {"hidden": spec.get("n_embd", 64), "vocab": vocab,
            "parameters": gpt_parameters(spec, vocab, experiment["context"])}  # fmt: skip


def datastore_rows(experiment: dict, tokens: dict[str, int]) -> dict[str, int]:
    """Entries per split (`resmem.lm.model.datastore_positions`): every stride-th training position up to
    max_tokens, and up to eval_tokens val and test positions."""
    store = experiment["datastore"]
    train = -(-max(tokens["train"] - 1, 0) // store["stride"])
    query = {s: min(max(tokens[s] - 1, 0), experiment["eval_tokens"]) for s in ("val", "test")}
    return {"train": min(train, store["max_tokens"] or train), **query}


def run_sizes(experiment: dict, run: dict, datastore_path=None, corpus_path=None) -> RunSizes:
    """A run's sizes: from its datastore where it exists (at run time), else from the corpus and the config."""
    k_max = max(experiment["knn"]["k"])
    fraction = float(run["store_fraction"])
    if datastore_path and Path(datastore_path).exists():
        arrays = io.load_npz(datastore_path, ["train_keys", "val_keys", "test_keys", "head_weight"], mmap=True)
        n, dim = arrays["train_keys"].shape
        vocab, hidden = arrays["head_weight"].shape
        queries = len(arrays["val_keys"]) + len(arrays["test_keys"])
        return RunSizes(n, max(1, round(fraction * n)), dim, queries, vocab, k_max,
                        hidden, query_logits=False)  # fmt: skip
    rows = datastore_rows(experiment, split_tokens(experiment, corpus_path))
    shape = model_shape(experiment, run["model"])
    n = rows["train"]
    return RunSizes(n, max(1, round(fraction * n)), shape["hidden"], rows["val"] + rows["test"], shape["vocab"],
                    k_max, shape["hidden"], query_logits=False)  # fmt: skip


def datastore_disk_bytes(sizes: RunSizes, key: str, train_hidden: bool = True) -> int:
    """datastore.npz as lm_datastore writes it: float16 training keys, float32 query keys, the final hidden states
    beside keys of another layer (`key`; the training positions' only with `train_hidden`), int64 next tokens and
    positions, the float32 output layer."""
    n, q, d, h = sizes.datastore_rows, sizes.queries, sizes.dim, sizes.hidden
    arrays = {"train_keys": (n, d, 2), "query_keys": (q, d, 4), "next_pos": (n + q, 2, 8),
              "head": (sizes.classes, h + 1, 4)}  # fmt: skip
    if key != "final_hidden":
        arrays["query_hidden"] = (q, h, 4)
        if train_hidden:
            arrays["train_hidden"] = (n, h, 2)
    return streamed_disk_bytes(arrays)


def model_memory_bytes(experiment: dict, model: str, batch_windows: int, training: bool, on_gpu: bool = False) -> int:
    """lm_train's or lm_datastore's peak host memory beyond the interpreter (an estimate, not a bound): the model
    in float32 (training: with gradients and Adam's moments), twice for a Hugging Face model (its loaded weights
    and their float32 copy), and one batch of windows' activations at about 16 float32 values per position and
    hidden unit (attention, the 4·h MLP, the captured states), three times that while training (the backward
    pass). `on_gpu` (device: cuda): the host holds the weights as loaded and a batch's captured states (two
    float32 values per position and hidden unit); the rest lives in device memory."""
    shape = model_shape(experiment, model)
    copies = 2 if "hf" in experiment["models"][model] else 1
    positions = batch_windows * experiment["context"] * shape["hidden"]
    if on_gpu:
        return copies * model_bytes(shape["parameters"], training=False) + positions * 2 * 4
    return copies * model_bytes(shape["parameters"], training) + positions * 16 * 4 * (3 if training else 1)


def forward_flops_per_token(experiment: dict, model: str) -> float:
    """FLOPs of one token's forward pass: 2 a parameter and 4·n_layer·context·d for attention over the context
    (nanoGPT's estimate_mfu, a third of its 6·N + 12·L·H·Q·T training FLOPs); for a Hugging Face model the layers
    are not read, so its attention is left out (under 10 % for GPT-2 models at context 1,024)."""
    shape, spec = model_shape(experiment, model), experiment["models"][model]
    flops = 2.0 * shape["parameters"]
    if "hf" not in spec:
        flops += 4.0 * spec.get("n_layer", 2) * experiment["context"] * shape["hidden"]
    return flops


def windows_run(tokens: int, kept: int, context: int, stride: int) -> tuple[int, int]:
    """(windows, tokens fed) of a split's datastore pass: windows of `context` tokens every `stride`, of which
    those holding a kept position run; `kept` positions thinned evenly over the split reach min(windows, kept)."""
    windows = max(1, -(-max(tokens - 1, 0) // stride))
    ran = min(windows, kept)
    return ran, ran * min(context, max(tokens - 1, 1))


def sweep_flops(experiment: dict, sizes: RunSizes) -> float:
    """The token sweep engine's counted FLOPs: each query's ResMem neighbours' logits (V·h multiply-adds each, at
    the largest resmem_k), then per sigma and temperature the residual-weighted sums over the vocabulary, and
    kNN-LM's k_max neighbours per tau and lambda."""
    knn = experiment["knn"]
    resmem_k = max(knn.get("resmem_k") or knn["k"])
    per_query = 2.0 * resmem_k * sizes.classes * sizes.hidden * len(knn["temperature"])
    per_query += 2.0 * resmem_k * sizes.classes * len(knn["sigma"]) * len(knn["temperature"])
    per_query += 2.0 * sizes.k_max * len(knn["tau"]) * len(knn["lam"])
    return per_query * sizes.queries


def job_seconds(rule: str, experiment: dict, run: dict, gpu: str | None) -> dict[str, float]:
    """The estimated seconds of one job of a language-model experiment's `rule` for `run` (its wildcards), term by
    term (`resmem.timing`), on the GPU class `gpu` (None: a job on the CPU): training 3 forward passes per training
    token and epoch; the datastore a forward pass over every window that holds a kept position (with the thinned
    positions of a large corpus: every window); the shared stages from the run's sizes."""
    from resmem import timing

    terms = {"startup": timing.startup_seconds(gpu)}
    tokens = split_tokens(experiment)
    if rule == "lm_corpus":
        tokenizer = experiment["corpus"]["tokenizer"]
        terms["tokenize"] = sum(corpus_bytes(experiment["corpus"]).values()) / TOKENIZE_BYTES_PER_SECOND[tokenizer]
        return terms
    if rule in ("lm_select", "lm_aggregate"):
        return terms
    if rule in ("lm_train", "lm_datastore"):
        model = run["model"]
        flops = forward_flops_per_token(experiment, model)
        context = experiment["context"]
        if rule == "lm_train":
            spec = experiment["models"][model]
            epochs = spec.get("epochs", experiment["train"]["epochs"])
            terms["train"] = timing.network_seconds(flops, tokens["train"] * epochs, 3, "transformer_train", gpu)
            evaluated = min(tokens["val"], experiment["eval_tokens"]) * (1 + epochs)
            terms["val"] = timing.network_seconds(flops, evaluated, 1, "transformer_infer", gpu)
            return terms
        rows = datastore_rows(experiment, tokens)
        store = experiment["datastore"]
        stride = experiment["eval_stride"] or context  # every split's windows (resmem.lm.stages.datastore)
        fed = sum(windows_run(tokens[s], rows[s], context, stride)[1] for s in SPLITS)
        terms["forward"] = timing.network_seconds(flops, fed, 1, "transformer_infer", gpu)
        sizes = run_sizes(experiment, {**run, "store_fraction": 1})
        terms["write"] = timing.write_seconds(datastore_disk_bytes(sizes, store["key"]))
        return terms
    sizes = run_sizes(experiment, run)
    return {**terms, **timing.shared_stage_seconds(rule, sizes, experiment["knn"], gpu, sizes.dim * 2,
                                                   sweep_flops(experiment, sizes))}  # fmt: skip
