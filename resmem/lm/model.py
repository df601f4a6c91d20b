"""The base language models and the token datastore: decoder-only transformers trained here (nanoGPT-style
`GPT`) or loaded from Hugging Face (`CausalLM`), their token batches, and the states the datastore keeps.

The models train with the same `resmem.train.train` as the image models (checkpoints, resume, progress):
a `TokenWindows` loader yields (inputs, targets) of shape (batch, context) and the loss is taken over every
position. The datastore and the val/test queries score each position once in sliding windows
(`sliding_windows`: `context` tokens, `eval_stride` new ones per window); a position's entry is captured by hooks
on the model (`datastore_entries`): the final hidden state fed to the output layer, from which ResMem's residuals
are recomputed, and the search key (that same state, or the input of the last feed-forward block).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resmem.config import ConfigError
from resmem.lm.hf import require_transformers

INIT_STD = 0.02  # GPT-2's initialization of embeddings and linear weights
MLP_RATIO = 4  # hidden width of each block's MLP, in multiples of the model width


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention and MLP, each added to the residual stream."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_attn = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln_mlp = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, MLP_RATIO * n_embd), nn.GELU(), nn.Linear(MLP_RATIO * n_embd, n_embd)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """Token and position embeddings, `n_layer` blocks, a final LayerNorm and an output layer tied to the token
    embedding (no bias): logits = W h, with h = `hidden(tokens)` the datastore key."""

    def __init__(self, vocab_size: int, context: int, n_layer: int = 2, n_head: int = 4, n_embd: int = 64):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(context, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_final = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual projections are scaled down with depth so that the stream's variance stays put (GPT-2).
                scale = 1 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 1.0
                nn.init.normal_(p, std=INIT_STD * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def decoder_layers(self) -> nn.ModuleList:
        return self.blocks


class CausalLM(nn.Module):
    """A Hugging Face causal LM (`resmem.lm.hf`) with the interface of `GPT`: forward(tokens) → logits (batch,
    positions, vocabulary), `get_output_embeddings()` and `decoder_layers()`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)  # 0: no limit known

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def decoder_layers(self) -> nn.ModuleList:
        """GPT-2's h, GPT-NeoX's and Llama's layers: the base model's ModuleList with one entry per layer."""
        n = self.model.config.num_hidden_layers
        for module in self.model.base_model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return module
        raise ConfigError(
            f"datastore.key: {type(self.model).__name__} has no list of {n} decoder layers; use key final_hidden"
        )


def output_layer(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a language model's output layer as float32 numpy arrays: logits = h @ W.T + b (b = 0 without
    a bias)."""
    head = model.get_output_embeddings()
    weight = head.weight.detach().float().cpu().numpy()
    bias = np.zeros(len(weight), np.float32) if head.bias is None else head.bias.detach().float().cpu().numpy()
    return weight, bias


def hf_commit(model: nn.Module) -> str | None:
    """The hub commit a Hugging Face model's weights were loaded from (None for a folder or a model built here)."""
    return getattr(model.model.config, "_commit_hash", None) if isinstance(model, CausalLM) else None


def check_fits(model: nn.Module, vocab_size: int, context: int, spec: dict) -> None:
    """The corpus's token ids are ones the model predicts, and its windows fit the model's positions."""
    rows = model.get_output_embeddings().weight.shape[0]
    if vocab_size > rows:
        raise ConfigError(
            f"corpus.tokenizer: the corpus has {vocab_size} token ids but the model {spec} predicts {rows}; "
            "tokenize with the model's own tokenizer (corpus.tokenizer: model)"
        )
    if isinstance(model, CausalLM) and model.context and context > model.context:
        raise ConfigError(
            f"context: windows of {context} tokens exceed the {model.context} positions of {spec['hf']!r}; "
            f"set context to at most {model.context}"
        )


def build_lm(spec: dict, vocab_size: int, context: int) -> nn.Module:
    """The network of a model spec: a Hugging Face model with its own weights (`hf`), or a new `GPT`."""
    if "hf" in spec:
        return load_causal_lm(spec)
    return GPT(vocab_size, context, spec["n_layer"], spec["n_head"], spec["n_embd"])


def load_causal_lm(spec: dict) -> CausalLM:
    """The Hugging Face model of an hf spec in float32, from its folder or the hub cache only: jobs never
    download (the workflow fetched it before any job)."""
    transformers = require_transformers(f"models: {spec['hf']}")
    try:
        # Never the repository's own code; safetensors where it has them, else .bin read as data only (weights_only)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            spec["hf"], revision=spec.get("revision"), local_files_only=True, dtype=torch.float32,
            trust_remote_code=False,
        )  # fmt: skip
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met a pickled object, and ran nothing
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[-1] if lines else type(exc).__name__)
        raise ConfigError(
            f"models: the weights of {spec['hf']!r} hold pickled objects other than tensors ({reason}); they "
            "were refused unread, since loading them could run code: use safetensors weights (save_pretrained's "
            "default) from a source you trust"
        ) from None
    except (OSError, ValueError, EOFError, RuntimeError) as exc:
        raise ConfigError(
            f"models: cannot load the Hugging Face causal LM {spec['hf']!r} ({exc}); run the workflow where it "
            "can fetch it (or `python -m resmem.lm.hf CONFIG`), or give hf a folder written by save_pretrained"
        ) from exc
    if getattr(model.config, "is_encoder_decoder", False) or model.get_output_embeddings() is None:
        raise ConfigError(f"models: {spec['hf']!r} is not a decoder-only model with an output layer")
    return CausalLM(model)


class TokenWindows:
    """Batches of windows of a 1-D token array: inputs tokens[s : s+context], targets shifted by one.

    Evaluation windows start at 0, context, 2·context, …; a training epoch (given a seed) shifts them all by a
    random offset below `context` and shuffles them, so that every position sees every context length."""

    memory_format = torch.contiguous_format  # what resmem.train expects of a loader

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, device: torch.device):
        self.tokens = tokens  # int32, possibly a memmap of billions of tokens: only batches are read and widened
        self.context, self.batch_size, self.device = context, batch_size, device

    def windows(self, offset: int = 0) -> int:
        return max(0, (len(self.tokens) - 1 - offset) // self.context)

    def __len__(self) -> int:
        return self.windows()

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = starts.numpy()[:, None] + np.arange(self.context + 1)
        chunk = torch.from_numpy(self.tokens[rows].astype(np.int64)).to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def epoch(self, seed: int | None = None, drop_single: bool = False):
        offset, generator = 0, None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            offset = int(torch.randint(self.context, (1,), generator=generator))
        starts = offset + self.context * torch.arange(self.windows(offset))
        if generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator)]
        for i in range(0, len(starts), self.batch_size):
            yield self.batch(starts[i : i + self.batch_size])


KEYS = ("final_hidden", "last_ffn_input")  # datastore.key
POSITION_CHUNK = 1 << 20  # positions whose windows are looked up at once by `datastore_entries`


@dataclass(frozen=True)
class Windows:
    """The sliding windows that score every position of a token array once (the kNN-LM protocol, as the
    transformers perplexity guide): window w feeds tokens[starts[w] : ends[w]] (at most `context` tokens) and
    scores positions scored[w] .. ends[w] - 1, those whose next token the previous window did not predict; the
    positions before them in the window are context. Position p's key and prediction are the model's state at p
    in its window, and its target is token p + 1."""

    starts: np.ndarray
    scored: np.ndarray
    ends: np.ndarray

    def of(self, positions: np.ndarray) -> np.ndarray:
        """The window that scores each position."""
        return np.searchsorted(self.scored, positions, side="right") - 1


def sliding_windows(n_tokens: int, context: int, stride: int | None = None) -> Windows:
    """Windows of `context` tokens every `stride` tokens (default: `context`, windows side by side) up to the
    last position with a next token. With context C and stride S they are transformers' strided evaluation with
    max_length C + 1 (a window's last token there is only a target) and the same stride, so the mean loss over
    all positions equals its perplexity's log."""
    stride = stride or context
    if stride > context:
        raise ConfigError(f"eval_stride ({stride}) is larger than context ({context}): tokens would go unscored")
    last = max(n_tokens - 1, 0)  # positions 0 .. last - 1 have a next token
    starts = np.arange(0, max(last, 1), stride, dtype=np.int64)
    ends = np.minimum(starts + context, last)
    keep = int(np.searchsorted(ends, last)) + 1  # up to the first window that reaches the end
    starts, ends = starts[:keep], ends[:keep]
    scored = np.maximum(np.concatenate([[0], ends[:-1]]), starts)
    return Windows(starts, scored, ends)


def datastore_positions(n_tokens: int, stride: int = 1, budget: int | None = None) -> np.ndarray:
    """Sorted positions p whose next token p+1 the datastore (or a query split) holds: every `stride`-th
    position, thinned evenly to at most `budget` positions."""
    usable = max(n_tokens - 1, 0)
    count = -(-usable // stride)  # positions 0, stride, 2·stride, … below usable
    if budget is None or count <= budget:
        return np.arange(0, usable, stride, dtype=np.int64)
    # Thinned without materializing all `count` positions (billions for a large corpus).
    return stride * np.unique(np.linspace(0, count - 1, budget).round().astype(np.int64))


class _OutputLayerReached(Exception):
    """Raised by the hook on the output layer: the keys are captured, the V-wide logits are never computed."""


def key_modules(model: nn.Module, key: str) -> dict[str, nn.Module]:
    """The modules whose input is captured: "hidden" = the output layer's (the final hidden state, from which
    ResMem's residuals are recomputed) and, for key last_ffn_input, "key" = the last decoder layer's
    feed-forward block's (kNN-LM's key, knn-transformers' `last_ffn_input`)."""
    if key not in KEYS:
        raise ConfigError(f"datastore.key: {key!r} is not one of {list(KEYS)}")
    modules = {"hidden": model.get_output_embeddings()}
    if key == "last_ffn_input":
        last = model.decoder_layers()[-1]
        if not isinstance(getattr(last, "mlp", None), nn.Module):
            raise ConfigError(f"datastore.key: last_ffn_input: {type(last).__name__} has no mlp; use final_hidden")
        modules["key"] = last.mlp
    return modules


@torch.inference_mode()
def capture_inputs(model: nn.Module, tokens: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The inputs of `modules` (named) in a forward pass over `tokens`, which stops at the output layer."""
    captured = {}

    def hook(name):
        def store(module, args):
            captured[name] = args[0]
            if name == "hidden":
                raise _OutputLayerReached

        return store

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    try:
        model(tokens)
    except _OutputLayerReached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


@torch.inference_mode()
def datastore_entries(
    model: nn.Module,
    tokens: np.ndarray,
    positions: np.ndarray,
    windows: Windows,
    batch_size: int,
    device,
    key: str = "final_hidden",
    amp: bool = False,
):
    """Yield ({"hidden": final hidden states, "key": the search keys where they differ}, next tokens) numpy
    blocks (float32, int64) for the sorted `positions`, in order: each position's states in the window that
    scores it (`sliding_windows`) and the token that follows it. Only windows that score a wanted position are
    run; their lookup goes POSITION_CHUNK positions at a time, so memory stays bounded for a 100M-token split (a
    window that straddles two chunks is run once for each)."""
    device = torch.device(device)
    model.to(device).eval()
    modules = key_modules(model, key)
    for chunk_start in range(0, len(positions), POSITION_CHUNK):
        chunk = positions[chunk_start : chunk_start + POSITION_CHUNK]
        window_of = windows.of(chunk)
        wanted_windows = np.unique(window_of)
        for i in range(0, len(wanted_windows), batch_size):
            batch = wanted_windows[i : i + batch_size]
            lo, hi = np.searchsorted(window_of, [batch[0], batch[-1] + 1])
            starts, ends = windows.starts[batch], windows.ends[batch]
            # Windows are padded on the right (the last may be short): causal attention keeps it from the rest.
            width = int((ends - starts).max())
            rows = np.minimum(starts[:, None] + np.arange(width), ends[:, None] - 1)
            x = torch.from_numpy(tokens[rows].astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                states = capture_inputs(model, x, modules)
            wanted, their_windows = chunk[lo:hi], window_of[lo:hi]
            flat = torch.from_numpy(
                np.searchsorted(batch, their_windows) * width + wanted - windows.starts[their_windows]
            )
            yield (
                {name: state.flatten(0, 1)[flat.to(device)].float().cpu().numpy() for name, state in states.items()},
                np.asarray(tokens[wanted + 1], dtype=np.int64),
            )
