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


def gpu_hours(experiment: dict, tflops: float, tflops_small: float = 0.0) -> dict[str, float]:
    """Estimated GPU hours per rule of a language-model experiment (`resmem.plan`): 2 FLOPs a parameter and
    token forward (the attention over the context adds 2·n_layer·context·d, counted for our GPTs), training 3
    forward passes per training token and epoch, the datastore one per kept position and query, the exact search
    2·d·N·Q per datastore fraction; at `tflops` sustained TFLOP/s (`tflops_small` is the images' rate for small
    pictures, unused here)."""
    rate = tflops * 1e12 * 3600
    tokens = split_tokens(experiment)
    rows = datastore_rows(experiment, tokens)
    hours = {"lm_train": 0.0, "lm_datastore": 0.0, "lm_neighbors": 0.0}
    for model, spec in experiment["models"].items():
        shape = model_shape(experiment, model)
        per_token = 2 * shape["parameters"]
        if "hf" not in spec:
            per_token += 2 * spec.get("n_layer", 2) * experiment["context"] * shape["hidden"]
        seeds = len(experiment["seeds"])
        epochs = spec.get("epochs", experiment["train"]["epochs"])
        hours["lm_train"] += seeds * 3 * per_token * tokens["train"] * epochs / rate
        hours["lm_datastore"] += seeds * per_token * sum(rows.values()) / rate
        queries = rows["val"] + rows["test"]
        for fraction in experiment["datastore"]["fractions"]:
            hours["lm_neighbors"] += seeds * 2 * shape["hidden"] * fraction * rows["train"] * queries / rate
    return hours
